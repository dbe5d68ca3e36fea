#!/usr/bin/env python3
"""Golden logits from Hugging Face transformers for Tokamak's tiny random-weight models.

    node dist/scripts/gpu/make-golden-models.js /tmp/golden-models
    python3 scripts/gpu/golden_logits.py /tmp/golden-models [--out test/fixtures/golden] [--device auto|cuda|cpu] [--only llama,qwen3]

Each folder under the models folder is a Hugging Face model with a prompts.json beside its
config.json (written by scripts/gpu/make-golden-models.ts from test/helpers/golden-models.ts).
Every model is loaded with AutoModelForCausalLM in float32 with eager attention, and for each
prompt the script records the greedy continuation and, at every step of it, the top-k logits and
a few statistics of the whole row. test/golden-logits.test.ts compares Tokamak's CPU forward pass
against these files.

The output is deterministic: the weights come from fixed seeds, TF32 is off, and the JSON holds no
timestamps. It records the SHA-256 of config.json and the weight files, so the test can tell the
fixture belongs to the very weights it regenerates.
"""

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time

FORMAT = "tokamak-golden-logits/1"
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "test", "fixtures", "golden")

# Before torch is imported: cuBLAS is deterministic only with a fixed workspace configuration,
# and nothing may try to reach the Hub (the GPU host has no network).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def log(message):
    print(f"[golden] {message}", file=sys.stderr, flush=True)


def is_hashed_model_file(name):
    """The same rule as isHashedModelFile in test/helpers/golden-models.ts."""
    return name == "config.json" or name.endswith(".safetensors") or name == "model.safetensors.index.json"


def file_hashes(model_dir):
    out = {}
    for name in sorted(os.listdir(model_dir)):
        if is_hashed_model_file(name):
            h = hashlib.sha256()
            with open(os.path.join(model_dir, name), "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            out[name] = h.hexdigest()
    return out


def version_tuple(v):
    parts = []
    for p in v.split(".")[:3]:
        digits = "".join(c for c in p if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def setup_torch():
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False  # TF32 would round the matmul inputs to 10 mantissa bits
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(0)  # nothing random is drawn in eval mode; fixed anyway
    return torch


def load_model(torch, transformers, model_dir, device):
    # transformers 4.56 renamed torch_dtype to dtype; older versions only know torch_dtype.
    dtype_key = "dtype" if version_tuple(transformers.__version__) >= (4, 56) else "torch_dtype"
    kwargs = {dtype_key: torch.float32, "attn_implementation": "eager", "local_files_only": True, "output_loading_info": True}
    loaded = transformers.AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    model, info = loaded if isinstance(loaded, tuple) else (loaded, {})
    # A weight transformers did not find is random-initialised: the goldens would then describe a
    # different model than the file. Tied models legitimately miss lm_head.weight.
    missing = [k for k in info.get("missing_keys", []) if k != "lm_head.weight"]
    unexpected = list(info.get("unexpected_keys", []))
    mismatched = list(info.get("mismatched_keys", []))
    if missing or unexpected or mismatched:
        raise RuntimeError(f"{model_dir}: weights did not load cleanly: missing {missing}, unexpected {unexpected}, mismatched {mismatched}")
    return model.to(device).eval()


def summarize(torch, row, k):
    values, ids = torch.topk(row, k)  # sorted, largest first
    r = row.double()
    return {
        "top_ids": [int(i) for i in ids.tolist()],
        "top_values": [float(v) for v in values.tolist()],
        "mean": float(r.mean().item()),
        "std": float(r.std(correction=0).item()),
        "min": float(r.min().item()),
        "max": float(r.max().item()),
        "logsumexp": float(torch.logsumexp(r, 0).item()),
    }


def run_prompt(torch, model, ids, steps, k, device):
    """Greedy decoding through the KV cache, the way a serving engine runs it, summarising each step's logits."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids], device=device), use_cache=True)
        rows, summaries, greedy = [], [], []
        for i in range(steps):
            row = out.logits[0, -1].float()
            rows.append(row)
            s = summarize(torch, row, k)
            summaries.append(s)
            greedy.append(s["top_ids"][0])
            if i + 1 == steps:
                break
            nxt = torch.tensor([[greedy[-1]]], device=device)
            out = model(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True)
        # The same positions again in one pass without the cache: how far two of PyTorch's own
        # paths on this device differ, a floor for the tolerance the test may use.
        full = model(input_ids=torch.tensor([ids + greedy[:-1]], device=device), use_cache=False).logits[0, len(ids) - 1 :].float()
        cached = torch.stack(rows)
        scale = max(1.0, float(cached.abs().max().item()))
        self_noise = float((full - cached).abs().max().item()) / scale
    return {"ids": list(ids), "greedy": greedy, "steps": summaries}, self_noise


def dumps(value, indent=0):
    """JSON with nested objects indented and lists of numbers on one line: readable, and diffs stay small."""
    pad = "  " * indent
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f'{pad}  {json.dumps(k)}: {dumps(v, indent + 1)}' for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        items = [f"{pad}  {dumps(v, indent + 1)}" for v in value]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"non-finite value {value} in the fixture")
    return json.dumps(value, allow_nan=False)


def golden_for(torch, transformers, model_dir, device, producer):
    with open(os.path.join(model_dir, "prompts.json")) as f:
        spec = json.load(f)
    if spec.get("format") != FORMAT:
        raise RuntimeError(f"{model_dir}/prompts.json has format {spec.get('format')!r}; expected {FORMAT!r} (rebuild the bundle and make the models again)")
    model = load_model(torch, transformers, model_dir, device)
    prompts, noise = [], 0.0
    for ids in spec["prompts"]:
        p, n = run_prompt(torch, model, ids, int(spec["steps"]), int(spec["top_k"]), device)
        prompts.append(p)
        noise = max(noise, n)
    del model
    return {
        "format": FORMAT,
        "name": spec["name"],
        "options": spec["options"],
        "files": file_hashes(model_dir),
        "top_k": int(spec["top_k"]),
        "steps": int(spec["steps"]),
        "producer": {**producer, "cache_vs_full_max_rel_diff": noise},
        "prompts": prompts,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", help="folder of model folders, each with a prompts.json (make-golden-models.js writes it)")
    ap.add_argument("--out", default=DEFAULT_OUT, help="where <name>.json goes (default: test/fixtures/golden)")
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    ap.add_argument("--only", default="", help="comma-separated model names")
    args = ap.parse_args()

    try:
        torch = setup_torch()
        import transformers
    except ImportError as e:
        log(f"cannot import torch/transformers ({e}): run this on a machine with PyTorch and transformers installed")
        return 2
    transformers.logging.set_verbosity_error()  # the tiny configs' out-of-vocabulary EOS ids make it warn
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cuda" and not torch.cuda.is_available():
        log("--device cuda, but torch sees no CUDA device")
        return 2
    producer = {
        "script": "scripts/gpu/golden_logits.py",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or platform.machine(),
        "cuda": torch.version.cuda if device == "cuda" else None,
        "dtype": "float32",
        "attn_implementation": "eager",
        "tf32": False,
    }
    log(f"torch {torch.__version__}, transformers {transformers.__version__}, device {producer['device_name']}")

    if not os.path.isdir(args.models):
        log(f"{args.models} is not a folder; make the models first: node dist/scripts/gpu/make-golden-models.js {args.models}")
        return 2
    names = sorted(d for d in os.listdir(args.models) if os.path.isfile(os.path.join(args.models, d, "prompts.json")))
    wanted = [n for n in args.only.split(",") if n]
    if wanted:
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            log(f"--only: no model folder named {', '.join(unknown)} in {args.models}")
            return 2
        names = [n for n in names if n in wanted]
    if not names:
        log(f"no model folders with a prompts.json in {args.models}")
        return 2

    os.makedirs(args.out, exist_ok=True)
    failed = []
    for name in names:
        start = time.time()
        try:
            fixture = golden_for(torch, transformers, os.path.join(args.models, name), device, producer)
        except Exception as e:  # one model that transformers cannot load must not cost the others
            log(f"{name}: FAILED: {type(e).__name__}: {e}")
            failed.append(name)
            continue
        path = os.path.join(args.out, f"{name}.json")
        with open(path, "w") as f:
            f.write(dumps(fixture) + "\n")
        greedy = fixture["prompts"][-1]["greedy"][:8]
        noise = fixture["producer"]["cache_vs_full_max_rel_diff"]
        log(f"{name}: wrote {path} in {time.time() - start:.1f} s (greedy {greedy}…, cache vs full pass {noise:.1e} of scale)")
    if failed:
        log(f"{len(failed)} of {len(names)} models failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
