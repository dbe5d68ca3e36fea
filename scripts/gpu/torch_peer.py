"""The peer's figures on the same GPU, for bench/cuda.ts to be read against: torch.matmul
bf16 TFLOP/s at 4096^3 and device-to-device copy bandwidth. Prints JSON (and writes it to
argv[1] when given)."""
import json
import sys
import time

import torch


def timed(fn, iters):
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / iters


n = 4096
a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda}
out["torch_matmul_bf16_4096_tflops"] = 2 * n**3 / timed(lambda: a @ b.T, 50) / 1e12
src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
dst = torch.empty_like(src)
out["torch_copy_bandwidth_gbps"] = 2 * src.numel() / timed(lambda: dst.copy_(src), 10) / 1e9
print(json.dumps(out, indent=2))
if len(sys.argv) > 1:
    with open(sys.argv[1], "w") as f:
        json.dump(out, f, indent=2)
