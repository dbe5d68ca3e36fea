/**
 * The CUDA backend's first figures, on the GPU it finds (issue 5's "measure and report"):
 * kernel compile time cold (empty cache) and cached (second backend, same cache folder), a
 * bf16 cuBLASLt GEMM's TFLOP/s at M = N = K = 4096 through CudaBackend.linear, device copy
 * bandwidth, and batch-1 decode tokens/s of a Llama-3.2-1B-shaped random-weight bf16 model
 * (optional: --e2e-model DIR, written beforehand by scripts/make-test-model or the bundle).
 *
 *   node dist/bench/cuda.js [--e2e-model DIR] [--out FILE.json]
 *
 * torch.matmul's figure on the same GPU comes from scripts/gpu/torch_peer.py, run beside it.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CudaBackend } from "../src/backend/cuda/cuda-backend.js";
import { Generator } from "../src/engine/generator.js";
import { flag } from "./common.js";

const result: Record<string, unknown> = { date: new Date().toISOString() };
const say = (k: string, v: unknown) => {
  result[k] = v;
  console.log(`${k}: ${typeof v === "number" ? v.toFixed(3) : JSON.stringify(v)}`);
};

const cacheDir = mkdtempSync(join(tmpdir(), "tokamak-kcache-"));
try {
  // Cold: the first op of each kind compiles its kernel file with NVRTC.
  let t = performance.now();
  const b = CudaBackend.create({ kernelCacheDir: cacheDir });
  const warm = (be: CudaBackend) => {
    const x = be.alloc([64, 256], "bf16", "activations", "x");
    const w = be.alloc([256], "bf16", "weights", "w");
    const o = be.alloc([64, 256], "bf16", "activations", "o");
    be.rmsNorm(o, x, w, 1e-6);
    const g = be.alloc([64, 512], "bf16", "activations", "g");
    be.siluAndMul(o, g);
    be.synchronize();
    for (const s of [x, w, o, g]) be.free(s.storage);
  };
  warm(b);
  say("compile_cold_ms (backend create + rms_norm + silu_and_mul)", performance.now() - t);
  b.dispose();
  t = performance.now();
  const b2 = CudaBackend.create({ kernelCacheDir: cacheDir });
  warm(b2);
  say("compile_cached_ms (same, cubins from the disk cache)", performance.now() - t);

  // GEMM: out[M, N] = x[M, K] · W[N, K]ᵀ in bf16, f32 accumulation.
  const n = 4096;
  const x = b2.alloc([n, n], "bf16", "activations", "gemm x");
  const w = b2.alloc([n, n], "bf16", "weights", "gemm w");
  const o = b2.alloc([n, n], "bf16", "activations", "gemm out");
  for (let i = 0; i < 3; i++) b2.linear(o, x, w);
  b2.synchronize();
  const iters = 50;
  t = performance.now();
  for (let i = 0; i < iters; i++) b2.linear(o, x, w);
  b2.synchronize();
  const sec = (performance.now() - t) / 1000 / iters;
  say("gemm_bf16_4096_tflops", (2 * n ** 3) / sec / 1e12);

  // Device copy bandwidth: a 1 GiB device-to-device copy through gatherRows (read + write).
  const rows = 1 << 18;
  const src = b2.alloc([rows, 2048], "bf16", "activations", "copy src");
  const dst = b2.alloc([rows, 2048], "bf16", "activations", "copy dst");
  const idx = b2.alloc([rows], "i32", "activations", "copy idx");
  b2.write(
    idx,
    Array.from({ length: rows }, (_, i) => i),
  );
  b2.gatherRows(dst, src, idx);
  b2.synchronize();
  t = performance.now();
  for (let i = 0; i < 10; i++) b2.gatherRows(dst, src, idx);
  b2.synchronize();
  say("copy_bandwidth_gbps (gatherRows, read+write)", (2 * rows * 2048 * 2 * 10) / ((performance.now() - t) / 1000) / 1e9);
  for (const s of [x, w, o, src, dst, idx]) b2.free(s.storage);

  const e2e = flag("e2e-model", "");
  if (e2e) {
    const gen = Generator.open(e2e, b2, { maxModelLen: 512, dtype: "bf16" });
    const prompt = Array.from({ length: 16 }, (_, i) => 1000 + i);
    gen.generate(prompt, { maxTokens: 8 });
    const r = gen.generate(prompt, { maxTokens: 128 });
    say("e2e_batch1_decode_tokens_per_s", (r.tokens.length - 1) / (r.decodeMs / 1000));
    say("e2e_weight_bytes", b2.memoryStats().byTag.weights);
    gen.close();
  }
  b2.dispose();
} finally {
  rmSync(cacheDir, { recursive: true, force: true });
}
const out = flag("out", "");
if (out) writeFileSync(out, JSON.stringify(result, null, 2) + "\n");
