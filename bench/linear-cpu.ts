/**
 * The CPU backend's matrix product, JavaScript kernel vs wasm SIMD kernel, through CpuBackend.linear
 * on its thread pool: GFLOP/s at decode shapes (1 row: the vocabulary projection and an MLP-sized
 * one) and a prefill shape. The machine may be shared, so each cell is the best of several runs.
 *
 *   npm run bench:linear -- [--threads 2] [--dtypes bf16,f16,f32] [--seconds 1] [--impls js,wasm]
 */
import { CpuBackend } from "../src/backend/cpu/cpu-backend.js";
import type { DType } from "../src/backend/dtype.js";
import { flag, machine, numFlag, rng, saveResult } from "./common.js";

const threads = numFlag("threads", 2);
const dtypes = flag("dtypes", "bf16").split(",") as DType[];
const seconds = numFlag("seconds", 1);
const impls = flag("impls", "js,wasm").split(",");
for (const i of impls) if (i !== "js" && i !== "wasm") throw new Error(`--impls takes js and/or wasm, got "${i}"`);

const shapes = [
  { name: "decode lm_head", rows: 1, K: 512, N: 151936 },
  { name: "decode mlp", rows: 1, K: 512, N: 1536 },
  { name: "prefill mlp", rows: 128, K: 512, N: 1536 },
];

/** Best milliseconds of one call, over at least 3 calls and `seconds` of calls. */
function bestMs(call: () => void): number {
  call(); // warm-up: wasm memory growth, JIT
  let best = Infinity;
  const until = performance.now() + seconds * 1000;
  for (let i = 0; i < 3 || performance.now() < until; i++) {
    const t0 = performance.now();
    call();
    best = Math.min(best, performance.now() - t0);
  }
  return best;
}

interface Row {
  shape: string;
  dtype: DType;
  rows: number;
  K: number;
  N: number;
  impl: string;
  ms: number;
  gflops: number;
}

const results: Row[] = [];
const r = rng(7);
for (const impl of impls) {
  // The pool reads this when it is built: the kernel is chosen per backend.
  process.env.TOKAMAK_CPU_LINEAR = impl;
  const backend = new CpuBackend({ threads });
  const used = backend.pool.linearImpl;
  if (impl === "wasm" && used !== "wasm-simd")
    console.log(`wasm asked for, but linear runs in JavaScript: ${backend.pool.linearFallbackReason}`);
  for (const dtype of dtypes) {
    for (const s of shapes) {
      const x = backend.alloc([s.rows, s.K], "f32", "activations", "x");
      backend.write(
        x,
        Array.from({ length: s.rows * s.K }, () => r() - 0.5),
      );
      const w = backend.alloc([s.N, s.K], dtype, "weights", "w");
      // Random bits are enough for timing; keep them finite and small (no NaN or subnormal slow paths).
      const vals = new Float32Array(s.N * s.K);
      for (let i = 0; i < vals.length; i++) vals[i] = (r() - 0.5) * 0.1;
      backend.write(w, vals);
      const out = backend.alloc([s.rows, s.N], "f32", "activations", "out");
      const ms = bestMs(() => backend.linear(out, x, w));
      const gflops = (2 * s.rows * s.K * s.N) / (ms * 1e6);
      results.push({
        shape: s.name,
        dtype,
        rows: s.rows,
        K: s.K,
        N: s.N,
        impl: used,
        ms: Number(ms.toFixed(3)),
        gflops: Number(gflops.toFixed(2)),
      });
      for (const t of [x, w, out]) backend.free(t.storage);
    }
  }
  backend.dispose();
}
delete process.env.TOKAMAK_CPU_LINEAR;

console.log(`linear on the CPU backend, ${threads} threads, best of runs over ${seconds} s each`);
console.log(
  [
    "shape".padEnd(16),
    "dtype",
    "rows".padStart(5),
    "K".padStart(5),
    "N".padStart(7),
    ...impls.flatMap((i) => [`${i} ms`.padStart(10), `${i} GFLOP/s`.padStart(14)]),
    "speedup".padStart(8),
  ].join("  "),
);
for (const dtype of dtypes) {
  for (const s of shapes) {
    const cells = impls.map((i) =>
      results.find((x) => x.shape === s.name && x.dtype === dtype && x.impl === (i === "wasm" ? "wasm-simd" : "js")),
    );
    const [a, b] = cells;
    const speedup = a && b ? `${(a.ms / b.ms).toFixed(1)}x` : "";
    console.log(
      [
        s.name.padEnd(16),
        dtype.padEnd(5),
        String(s.rows).padStart(5),
        String(s.K).padStart(5),
        String(s.N).padStart(7),
        ...cells.flatMap((c) => [(c ? c.ms.toFixed(2) : "-").padStart(10), (c ? c.gflops.toFixed(2) : "-").padStart(14)]),
        speedup.padStart(8),
      ].join("  "),
    );
  }
}
console.log(`on ${machine()}`);
console.log(`saved ${saveResult("linear-cpu", { threads, results })}`);
