// The CPU backend's wasm SIMD matrix product (src/backend/cpu/linear.wat): values against an f64
// reference, and the determinism the engine's batch-invariance relies on, bit for bit: an output
// element must not depend on how many rows the call has, where its row sits among them, which
// slice of the output features a thread computes, or which kernel path (4x2 tile, odd row,
// single-row bf16) it falls in. Dense weight matrices in the kernel memory go through quant.wat's
// dense kernels instead (test/cpu-quant-wasm.test.ts): the same bits, checked here through the
// backend, with weights in and out of the kernel memory.
import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { CpuBackend } from "../src/backend/cpu/cpu-backend.js";
import { type LinearArgs, linearRange, Scratch, type WeightKind } from "../src/backend/cpu/kernels.js";
import { ThreadPool } from "../src/backend/cpu/pool.js";
import { linearWasmModule } from "../src/backend/cpu/wasm-linear.js";
import { f16ToF32Table, f32ToBf16Bits, f32ToF16Bits } from "../src/backend/dtype.js";
import type { Tensor } from "../src/backend/tensor.js";
import { gaussian as randn, Rng } from "./helpers/random.js";

const KINDS: readonly WeightKind[] = ["bf16", "f16", "f32"];

const lin = linearWasmModule();
const wasm = new Scratch(lin.module);

interface Problem {
  kind: WeightKind;
  rows: number;
  K: number;
  N: number;
  /** Extra elements at the end of each row (a strided view) and before the first one. */
  pad: number;
  x: Float32Array;
  /** Raw weights as stored (u16 bits or f32), row stride K + pad, offset pad. */
  w: Float32Array | Uint16Array;
  /** The same weights decoded, [N, K] dense. */
  wf: Float64Array;
  bias: Float32Array | null;
}

function makeProblem(rng: Rng, kind: WeightKind, rows: number, K: number, N: number, pad: number, withBias: boolean): Problem {
  const xs = K + pad;
  const x = new Float32Array(pad + rows * xs).map(() => randn(rng));
  const wf = new Float64Array(N * K);
  const w = kind === "f32" ? new Float32Array(pad + N * xs) : new Uint16Array(pad + N * xs);
  const t = f16ToF32Table();
  for (let n = 0; n < N; n++) {
    for (let k = 0; k < K; k++) {
      const v = randn(rng) * 0.1;
      const i = pad + n * xs + k;
      if (kind === "f32") {
        w[i] = v;
        wf[n * K + k] = w[i]!;
      } else if (kind === "bf16") {
        w[i] = f32ToBf16Bits(v);
        wf[n * K + k] = new Float32Array(new Uint32Array([w[i]! << 16]).buffer)[0]!;
      } else {
        w[i] = f32ToF16Bits(v);
        wf[n * K + k] = t[w[i]!]!;
      }
    }
  }
  const bias = withBias ? new Float32Array(pad + N).map(() => randn(rng)) : null;
  return { kind, rows, K, N, pad, x, w, wf, bias };
}

/** Arguments for rows [r0, r0 + rows) of the problem, writing into `out` (row stride N + pad). */
function args(p: Problem, out: Float32Array, r0 = 0, rows = p.rows): LinearArgs {
  const s = p.K + p.pad;
  return {
    out: { data: out, offset: p.pad, stride: p.N + p.pad },
    x: { data: p.x, offset: p.pad + r0 * s, stride: s },
    rows,
    inFeatures: p.K,
    w: { data: p.w, offset: p.pad, stride: s },
    wKind: p.kind,
    bias: p.bias ? { data: p.bias, offset: p.pad } : null,
  };
}

function newOut(p: Problem, rows = p.rows): Float32Array {
  return new Float32Array(p.pad + rows * (p.N + p.pad)).fill(NaN);
}

function outRow(p: Problem, out: Float32Array, m: number): Float32Array {
  const o = p.pad + m * (p.N + p.pad);
  return out.slice(o, o + p.N);
}

function assertBitEqual(a: Float32Array, b: Float32Array, what: string): void {
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < a.length; i++) {
    if (ua[i] !== ub[i]) assert.fail(`${what}: element ${i} differs: ${a[i]} vs ${b[i]}`);
  }
}

function checkAgainstReference(p: Problem, out: Float32Array, what: string): void {
  const s = p.K + p.pad;
  for (let m = 0; m < p.rows; m++) {
    for (let n = 0; n < p.N; n++) {
      let ref = 0;
      let mag = 0;
      for (let k = 0; k < p.K; k++) {
        const v = p.x[p.pad + m * s + k]! * p.wf[n * p.K + k]!;
        ref += v;
        mag += Math.abs(v);
      }
      const b = p.bias ? p.bias[p.pad + n]! : 0;
      ref += b;
      mag += Math.abs(b);
      const got = out[p.pad + m * (p.N + p.pad) + n]!;
      // f32 sums in lanes of about K/4 terms: well within 1e-5 of the magnitude summed.
      if (!(Math.abs(got - ref) <= 1e-5 * mag + 1e-30)) assert.fail(`${what}: [${m}, ${n}] = ${got}, reference ${ref} (magnitude ${mag})`);
    }
  }
}

const problemSpace = (rng: Rng) => {
  const Ks = [1, 3, 4, 7, 8, 13, 31, 64, 100, 257];
  const Ns = [1, 3, 4, 5, 17, 66, 131];
  const pick = <T>(a: readonly T[]) => a[Math.floor(rng.next() * a.length)]!;
  return { K: pick(Ks), N: pick(Ns), rows: 1 + Math.floor(rng.next() * 70), pad: pick([0, 0, 3]), bias: rng.next() < 0.5 };
};

describe("CPU linear, wasm SIMD", () => {
  it("is the implementation used on this runtime", () => {
    assert.equal(lin.impl, "wasm-simd", lin.reason);
    const pool = new ThreadPool(1);
    assert.equal(pool.linearImpl, "wasm-simd");
    pool.dispose();
  });

  it("matches an f64 reference over random shapes, strides, biases and weight dtypes", () => {
    const rng = new Rng(1);
    for (let trial = 0; trial < 60; trial++) {
      const kind = KINDS[trial % 3]!;
      const s = problemSpace(rng);
      const p = makeProblem(rng, kind, s.rows, s.K, s.N, s.pad, s.bias);
      const out = newOut(p);
      linearRange(args(p, out), 0, p.N, wasm);
      checkAgainstReference(p, out, `${kind} rows ${s.rows} K ${s.K} N ${s.N} pad ${s.pad} bias ${s.bias}`);
    }
  });

  it("gives each element the same bits whatever the rows of the call, the row's place and the feature slice", () => {
    const rng = new Rng(2);
    for (let trial = 0; trial < 30; trial++) {
      const kind = KINDS[trial % 3]!;
      const s = problemSpace(rng);
      const rows = Math.max(s.rows, 5);
      const p = makeProblem(rng, kind, rows, s.K, s.N, s.pad, s.bias);
      const what = `${kind} rows ${rows} K ${s.K} N ${s.N}`;
      const full = newOut(p);
      linearRange(args(p, full), 0, p.N, wasm);
      // Each row alone (the single-row paths), and rows taken in windows that shift the pairing.
      for (let m = 0; m < rows; m++) {
        const one = newOut(p, 1);
        linearRange(args(p, one, m, 1), 0, p.N, wasm);
        assertBitEqual(outRow(p, one, 0), outRow(p, full, m), `${what}: row ${m} alone`);
      }
      for (const [r0, r] of [
        [1, rows - 1],
        [1, 2],
        [2, 3],
        [rows - 3, 3],
      ] as const) {
        const part = newOut(p, r);
        linearRange(args(p, part, r0, r), 0, p.N, wasm);
        for (let m = 0; m < r; m++)
          assertBitEqual(outRow(p, part, m), outRow(p, full, r0 + m), `${what}: row ${r0 + m} of ${r} from ${r0}`);
      }
      // Output features split at aligned and unaligned points, as threads would get them.
      for (const cut of [4, Math.floor(p.N / 2), p.N - 1, 1].filter((c) => c > 0 && c < p.N)) {
        const sliced = newOut(p);
        linearRange(args(p, sliced), 0, cut, wasm);
        linearRange(args(p, sliced), cut, p.N, wasm);
        assertBitEqual(sliced, full, `${what}: features split at ${cut}`);
      }
    }
  });

  it("splits a long prefill (over 8 MiB of x) into passes without changing a bit", () => {
    const rng = new Rng(4);
    const p = makeProblem(rng, "bf16", 1100, 2051, 6, 1, true);
    const full = newOut(p);
    linearRange(args(p, full), 0, p.N, wasm);
    checkAgainstReference(p, full, "1100 x 2051");
    for (const m of [0, 1021, 1022, 1099]) {
      const one = newOut(p, 1);
      linearRange(args(p, one, m, 1), 0, p.N, wasm);
      assertBitEqual(outRow(p, one, 0), outRow(p, full, m), `row ${m} alone`);
    }
  });

  it("decodes every f16 value exactly, subnormals, infinities and NaNs included", () => {
    const N = 65536;
    const w = new Uint16Array(N).map((_, i) => i);
    const out = new Float32Array(N);
    // K = 1 and x = 1: out[n] = (w[n] · 1 + 0) + (0 + 0), the decoded weight itself.
    linearRange(
      {
        out: { data: out, offset: 0, stride: N },
        x: { data: new Float32Array([1]), offset: 0, stride: 1 },
        rows: 1,
        inFeatures: 1,
        w: { data: w, offset: 0, stride: 1 },
        wKind: "f16",
        bias: null,
      },
      0,
      N,
      wasm,
    );
    const t = f16ToF32Table();
    for (let i = 0; i < N; i++) {
      const want = t[i]!;
      if (Number.isNaN(want)) assert.ok(Number.isNaN(out[i]), `f16 ${i.toString(16)}: ${out[i]}, want NaN`);
      else assert.equal(out[i], want === 0 ? 0 : want, `f16 ${i.toString(16)}`);
    }
  });

  describe("through the CPU backend's two threads", () => {
    const backend = new CpuBackend({ threads: 2 });
    const jsPool = new ThreadPool(2, { linear: "js" });
    after(() => {
      backend.dispose();
      jsPool.dispose();
    });

    for (const kind of KINDS) {
      it(`${kind}: rows 1 and 37 agree bit for bit, and with the JavaScript kernel within tolerance`, () => {
        const rng = new Rng(3);
        const K = 200;
        const N = 1030;
        const R = 37;
        const x = backend.alloc([R, K], "f32", "activations", "x");
        const xs = new Float32Array(R * K).map(() => randn(rng));
        backend.write(x, xs);
        const w = backend.alloc([N, K], kind, "weights", "w");
        backend.write(
          w,
          Array.from({ length: N * K }, () => randn(rng) * 0.1),
        );
        const bias = backend.alloc([N], "f32", "weights", "b");
        backend.write(
          bias,
          Array.from({ length: N }, () => randn(rng)),
        );
        const outAll = backend.alloc([R, N], "f32", "activations", "out");
        backend.linear(outAll, x, w, bias);
        const all = backend.read(outAll);
        const x1 = backend.alloc([1, K], "f32", "activations", "x1");
        const out1 = backend.alloc([1, N], "f32", "activations", "out1");
        for (const m of [0, 17, R - 1]) {
          backend.write(x1, xs.subarray(m * K, (m + 1) * K));
          backend.linear(out1, x1, w, bias);
          assertBitEqual(backend.read(out1), all.subarray(m * N, (m + 1) * N), `${kind} row ${m} alone vs in ${R}`);
        }
        // The JavaScript kernel (f64 sums) on the same storages: the two agree to f32 rounding.
        const outJs = backend.alloc([R, N], "f32", "activations", "outJs");
        const st = (t: typeof x) => t.storage as unknown as { f32: Float32Array; u16: Uint16Array };
        jsPool.run(
          {
            kind: "linear",
            args: {
              out: { data: st(outJs).f32, offset: outJs.offset, stride: N },
              x: { data: st(x).f32, offset: x.offset, stride: K },
              rows: R,
              inFeatures: K,
              w: { data: kind === "f32" ? st(w).f32 : st(w).u16, offset: w.offset, stride: K },
              wKind: kind,
              bias: { data: st(bias).f32, offset: bias.offset },
            },
          },
          N,
          4,
        );
        const js = backend.read(outJs);
        for (let i = 0; i < js.length; i++) {
          const tol = 1e-5 * (1 + Math.abs(js[i]!));
          if (!(Math.abs(js[i]! - all[i]!) <= tol)) assert.fail(`${kind} element ${i}: wasm ${all[i]} vs js ${js[i]}`);
        }
        for (const t of [x, w, bias, outAll, x1, out1, outJs]) backend.free(t.storage);
      });
    }
  });

  describe("dense weights in the kernel memory (quant.wat's dense kernels, read in place)", () => {
    const resident = new CpuBackend({ threads: 2 });
    // A kernel memory too small for any dense weight beside its reserve: every weight in a plain buffer, read by linear.wat.
    const plain = new CpuBackend({ threads: 2, kernelMemoryBytes: 64 << 10 });
    after(() => {
      resident.dispose();
      plain.dispose();
    });
    const address = (t: Tensor) => (t.storage as unknown as { address?: number }).address;

    /** x [R, K] · w [N, K]ᵀ + bias on `b`, the weights and biases given as values; returns the output and the weight. */
    function product(
      b: CpuBackend,
      kind: WeightKind,
      xs: Float32Array,
      ws: number[],
      bs: number[] | null,
      R: number,
      K: number,
      N: number,
    ) {
      const x = b.alloc([R, K], "f32", "activations", "x");
      b.write(x, xs);
      const w = b.alloc([N, K], kind, "weights", "w");
      b.write(w, ws);
      const bias = bs ? b.alloc([N], "f32", "weights", "b") : undefined;
      if (bias) b.write(bias, bs!);
      const out = b.alloc([R, N], "f32", "activations", "out");
      b.linear(out, x, w, bias);
      const values = b.read(out);
      for (const t of [x, out, ...(bias ? [bias] : [])]) b.free(t.storage);
      return { values, w };
    }

    for (const kind of KINDS) {
      it(`${kind}: in the kernel memory, the same bits as linear.wat, alone or in a batch`, () => {
        const rng = new Rng(5);
        const K = 256;
        const N = 1030;
        const R = 37;
        const xs = new Float32Array(R * K).map(() => randn(rng));
        const ws = Array.from({ length: N * K }, () => randn(rng) * 0.1);
        const bs = Array.from({ length: N }, () => randn(rng));
        const a = product(resident, kind, xs, ws, bs, R, K, N);
        const p = product(plain, kind, xs, ws, bs, R, K, N);
        assert.notEqual(address(a.w), undefined, "placed in the kernel memory");
        assert.equal(address(p.w), undefined, "in a plain buffer");
        assertBitEqual(a.values, p.values, `${kind}: kernel memory vs linear.wat`);
        for (const m of [0, 17, R - 1]) {
          const one = product(resident, kind, xs.slice(m * K, (m + 1) * K), ws, bs, 1, K, N);
          assertBitEqual(one.values, a.values.subarray(m * N, (m + 1) * N), `${kind} row ${m} alone vs in ${R}`);
          resident.free(one.w.storage);
        }
        resident.free(a.w.storage);
        plain.free(p.w.storage);
      });
    }

    it("a prefill longer than one staging pass: the same bits row by row", () => {
      const rng = new Rng(6);
      const K = 4096;
      const N = 8;
      const R = 1100; // 16 MiB of staging holds 1024 rows of 4096 f32
      const xs = new Float32Array(R * K).map(() => randn(rng));
      const ws = Array.from({ length: N * K }, () => randn(rng) * 0.1);
      const all = product(resident, "bf16", xs, ws, null, R, K, N);
      for (const m of [0, 1023, 1024, R - 1]) {
        const one = product(resident, "bf16", xs.slice(m * K, (m + 1) * K), ws, null, 1, K, N);
        assertBitEqual(one.values, all.values.subarray(m * N, (m + 1) * N), `row ${m}`);
        resident.free(one.w.storage);
      }
      resident.free(all.w.storage);
    });

    it("dense weights leave the kernel memory for a quantized one that needs the room, and compute the same", () => {
      const b = new CpuBackend({ threads: 2, kernelMemoryBytes: 4 << 20 });
      try {
        const rng = new Rng(7);
        const K = 1024;
        const xs = new Float32Array(3 * K).map(() => randn(rng));
        const x = b.alloc([3, K], "f32", "activations", "x");
        b.write(x, xs);
        const small = b.alloc([256, K], "bf16", "weights", "small"); // 512 KiB
        const big = b.alloc([512, K], "bf16", "weights", "big"); // 1 MiB
        for (const w of [small, big])
          b.write(
            w,
            Array.from({ length: w.numel }, () => randn(rng) * 0.1),
          );
        assert.notEqual(address(small), undefined);
        assert.notEqual(address(big), undefined);
        const run = (w: Tensor) => {
          const out = b.alloc([3, w.shape[0]!], "f32", "activations", "out");
          b.linear(out, x, w);
          const v = b.read(out);
          b.free(out.storage);
          return v;
        };
        const before = run(big);
        const bigBytes = b.readBytes(big);
        // About 3 MiB of Q8_0: only fits once the larger dense weight has moved out.
        const q = b.alloc([2890, K], "q8_0", "weights", "q");
        assert.notEqual(address(q), undefined);
        assert.equal(address(big), undefined, "the largest dense weight moved to a plain buffer");
        assert.notEqual(address(small), undefined, "the other one stayed");
        assert.deepEqual(b.readBytes(big), bigBytes, "with its bytes");
        assertBitEqual(run(big), before, "and its products");
        for (const t of [x, small, big, q]) b.free(t.storage);
      } finally {
        b.dispose();
      }
    });
  });
});
