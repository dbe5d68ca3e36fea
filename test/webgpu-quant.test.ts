/**
 * The WebGPU block-format kernels (src/backend/webgpu/quant-linear.ts) against two references:
 *
 * - an f64 dot product over the codec's dequantized weights (dequantizeRows): the kernel multiplies the
 *   same f32 weights in f32, so only f32 rounding separates them (tight tolerance);
 * - the CPU backend, which quantizes activations to q8_0 / q8_K before its integer dots: its error is
 *   that quantization's, bounded from the data below (loose tolerance).
 *
 * Then a tiny Llama quantized to Q8_0 and to Q4_K_M (q4_k with q6_k) decodes greedily on both backends.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { Backend } from "../src/backend/backend.js";
import { CpuBackend } from "../src/backend/cpu/cpu-backend.js";
import { type DType, f32ToF16Bits, f16ToF32Table } from "../src/backend/dtype.js";
import type { Tensor } from "../src/backend/tensor.js";
import { createWebGpuBackend, probeWebGpu } from "../src/backend/webgpu/node-gpu.js";
import type { WebGpuBackend } from "../src/backend/webgpu/webgpu-backend.js";
import { convertHfToGguf } from "../src/convert/hf-to-gguf.js";
import { Generator } from "../src/engine/generator.js";
import { dequantizeRows, type GgmlBlockType, quantizeRows } from "../src/quant/ggml-quants.js";
import { writeQuantTinyModel } from "./helpers/quant-models.js";
import { gaussian, Rng } from "./helpers/random.js";
import { webGpuSkip } from "./helpers/webgpu.js";

const probe = await probeWebGpu(true);

const TYPES: { dtype: DType; ggml: GgmlBlockType; actBlock: number }[] = [
  // actBlock: the block the CPU quantizes activations in for this weight type (q8_0: 32, q8_K: 256).
  { dtype: "q8_0", ggml: "Q8_0", actBlock: 32 },
  { dtype: "q4_0", ggml: "Q4_0", actBlock: 32 },
  { dtype: "q4_k", ggml: "Q4_K", actBlock: 256 },
  { dtype: "q5_k", ggml: "Q5_K", actBlock: 256 },
  { dtype: "q6_k", ggml: "Q6_K", actBlock: 256 },
];

const f16 = (v: number) => f16ToF32Table()[f32ToF16Bits(v)]!;

/** Random values with a spread of magnitudes across rows (so the scales differ block to block). */
function values(rng: Rng, n: number, rowLen: number, round16: boolean): Float32Array {
  const out = new Float32Array(n);
  let amp = 1;
  for (let i = 0; i < n; i++) {
    if (i % rowLen === 0) amp = 0.2 + 2 * rng.next();
    out[i] = amp * gaussian(rng);
    if (round16) out[i] = f16(out[i]!);
  }
  return out;
}

interface Case {
  M: number;
  K: number;
  N: number;
  bias: boolean;
  /** Rows of a larger weight skipped before the view (a weight slice whose first byte is anywhere). */
  rowSkip: number;
}

interface Inputs {
  x: Float32Array;
  w: Uint8Array;
  wq: Float32Array;
  bias?: Float32Array;
  /** Padding of x's row stride and out's leading columns. */
  xPad: number;
  outCol: number;
  outCols: number;
}

/** Run `out = x · Wᵀ (+ bias)` on a backend with x strided, W a row view, out a column view; read out back. */
async function runLinear(b: Backend, act: DType, dtype: DType, c: Case, inp: Inputs): Promise<Float32Array> {
  const { M, K, N } = c;
  const xs = b.alloc([M, K + inp.xPad], act, "activations", "x");
  const xHost = new Float32Array(M * (K + inp.xPad));
  for (let m = 0; m < M; m++) xHost.set(inp.x.subarray(m * K, (m + 1) * K), m * (K + inp.xPad) + inp.xPad);
  b.write(xs, xHost);
  const x = xs.cols(inp.xPad, K);
  const wAll = b.alloc([N + c.rowSkip, K], dtype, "weights", "w");
  b.writeBytes(wAll, inp.w);
  const w: Tensor = wAll.rows(c.rowSkip, N);
  let bias: Tensor | undefined;
  if (inp.bias) {
    bias = b.alloc([N], act, "weights", "bias");
    b.write(bias, inp.bias);
  }
  const outAll = b.alloc([M, inp.outCols], act, "activations", "out");
  const out = outAll.cols(inp.outCol, N);
  b.linear(out, x, w, bias);
  const got = await b.readAsync(out);
  for (const t of [xs, wAll, outAll, ...(bias ? [bias] : [])]) b.free(t.storage);
  return got;
}

function makeInputs(rng: Rng, ggml: GgmlBlockType, c: Case, round16: boolean): Inputs {
  const { M, K, N } = c;
  const rows = N + c.rowSkip;
  const w = quantizeRows(values(rng, rows * K, K, false), rows, K, ggml);
  const wq = dequantizeRows(w, rows, K, ggml).subarray(c.rowSkip * K);
  const x = values(rng, M * K, K, round16);
  const bias = c.bias ? values(rng, N, N, round16) : undefined;
  return { x, w, wq, bias, xPad: 3, outCol: 5, outCols: N + 9 };
}

/**
 * GPU vs the f64 reference: f32 accumulation of ≤ 2048 terms in ≤ 64 sequential steps and a 5-level tree
 * errs by far less than 1e-5 of Σ|x·w|; an f16 output adds half an f16 ulp (2⁻¹¹ relative).
 */
function checkExact(label: string, got: Float32Array, c: Case, inp: Inputs, half: boolean): void {
  const { M, K, N } = c;
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let ref = inp.bias?.[n] ?? 0;
      let mag = Math.abs(ref);
      for (let k = 0; k < K; k++) {
        const p = inp.x[m * K + k]! * inp.wq[n * K + k]!;
        ref += p;
        mag += Math.abs(p);
      }
      const tol = 1e-5 * mag + (half ? 2 ** -11 * Math.abs(ref) : 0) + 1e-6;
      const v = got[m * N + n]!;
      if (!(Math.abs(v - ref) <= tol)) assert.fail(`${label}: out[${m}, ${n}] = ${v}, reference ${ref} (tolerance ${tol})`);
    }
  }
}

/**
 * GPU vs CPU: the CPU rounds x to a grid of step amax/127 per activation block (error uniform within
 * ±step/2, variance step²/12, independent across elements) and stores the q8_0 scale as f16 (2⁻¹¹ relative,
 * one error per block). 8 standard deviations of the first plus the worst case of the second.
 */
function checkCpu(label: string, got: Float32Array, cpu: Float32Array, c: Case, inp: Inputs, actBlock: number, half: boolean): void {
  const { M, K, N } = c;
  for (let m = 0; m < M; m++) {
    const step = new Float64Array(K / actBlock);
    for (let k = 0; k < K; k++)
      step[Math.floor(k / actBlock)] = Math.max(step[Math.floor(k / actBlock)]!, Math.abs(inp.x[m * K + k]!) / 127);
    for (let n = 0; n < N; n++) {
      let variance = 0;
      let scaleErr = 0;
      let mag = 0;
      for (let b = 0; b < K / actBlock; b++) {
        let part = 0;
        for (let k = b * actBlock; k < (b + 1) * actBlock; k++) {
          const w = inp.wq[n * K + k]!;
          variance += (w * w * step[b]! * step[b]!) / 12;
          part += w * inp.x[m * K + k]!;
          mag += Math.abs(w * inp.x[m * K + k]!);
        }
        scaleErr += Math.abs(part);
      }
      const v = got[m * N + n]!;
      const tol = 8 * Math.sqrt(variance) + 2 ** -11 * scaleErr + 2e-5 * mag + (half ? 2 ** -11 * Math.abs(v) : 0) + 1e-5;
      const want = cpu[m * N + n]!;
      if (!(Math.abs(v - want) <= tol)) assert.fail(`${label}: out[${m}, ${n}] = ${v}, CPU ${want} (tolerance ${tol})`);
    }
  }
}

describe("WebGPU block-quantized linear against the codec and the CPU backend", { skip: webGpuSkip(probe) }, () => {
  const cpu = new CpuBackend({ threads: 2 });
  after(() => cpu.dispose());
  for (const act of ["f32", "f16"] as const) {
    describe(`${act} activations`, () => {
      let gpu: WebGpuBackend;
      before(async () => {
        gpu = await createWebGpuBackend({ activationDType: act }, probe);
      });
      after(() => gpu?.dispose());

      for (const { dtype, ggml, actBlock } of TYPES) {
        it(`${dtype}: M = 1, 3, 8 and 17 (two row groups), K = 256 and 512 (+160 for 32-element blocks), with and without bias`, async () => {
          const rng = new Rng(dtype.length * 1000 + (act === "f16" ? 7 : 0) + dtype.charCodeAt(1));
          const Ks = actBlock === 32 ? [160, 256, 512] : [256, 512];
          let i = 0;
          for (const M of [1, 3, 8, 17]) {
            for (const K of Ks) {
              // N = 37 leaves 5 rows in the last group of 8 and a part tile of 64; 70 spans nine.
              const c: Case = { M, K, N: M === 17 && K === 512 ? 70 : 37, bias: i % 2 === 1, rowSkip: i % 3 === 2 ? 3 : 0 };
              i++;
              const inp = makeInputs(rng, ggml, c, act === "f16");
              const label = `${dtype} ${act} M=${M} K=${K} N=${c.N}${c.bias ? " +bias" : ""}${c.rowSkip ? ` rows+${c.rowSkip}` : ""}`;
              const got = await runLinear(gpu, act, dtype, c, inp);
              checkExact(label, got, c, inp, act === "f16");
              const want = await runLinear(cpu, "f32", dtype, c, inp);
              checkCpu(label, got, want, c, inp, actBlock, act === "f16");
            }
          }
        });
      }

      it("a quantized embedding table is dequantized row by row (q4_k)", async () => {
        const rng = new Rng(11);
        const V = 9;
        const H = 512;
        const bytes = quantizeRows(values(rng, V * H, H, false), V, H, "Q4_K");
        const ref = dequantizeRows(bytes, V, H, "Q4_K");
        const table = gpu.alloc([V, H], "q4_k", "weights", "table");
        gpu.writeBytes(table, bytes);
        const ids = gpu.alloc([4], "i32", "workspace", "ids");
        gpu.write(ids, [3, 0, 8, 3]);
        const out = gpu.alloc([4, H], act, "activations", "out");
        gpu.embedding(out, ids, table);
        const got = await gpu.readAsync(out);
        [3, 0, 8, 3].forEach((id, t) => {
          for (let c = 0; c < H; c++) {
            const want = act === "f16" ? f16(ref[id * H + c]!) : ref[id * H + c]!;
            assert.ok(Math.abs(got[t * H + c]! - want) <= 1e-6 * Math.abs(want) + 1e-7, `row ${t} col ${c}: ${got[t * H + c]} vs ${want}`);
          }
        });
      });
    });
  }
});

describe("WebGPU greedy decoding of GGUF models matches the CPU", { skip: webGpuSkip(probe) }, () => {
  const root = mkdtempSync(join(tmpdir(), "tokamak-webgpu-quant-"));
  after(() => rmSync(root, { recursive: true, force: true }));

  /** Greedy tokens and each step's logits, through the real loader, the paged KV cache and the model runner. */
  async function greedy(path: string, b: Backend, prompt: number[], steps: number): Promise<{ tokens: number[]; logits: Float32Array[] }> {
    const gen = Generator.open(path, b, { maxModelLen: 64 });
    try {
      const r = await gen.generateAsync(prompt, { maxTokens: steps, returnLogits: true });
      return { tokens: r.tokens, logits: r.logits! };
    } finally {
      gen.close();
    }
  }

  for (const outType of ["q8_0", "q4_k_m"] as const) {
    it(`${outType}: 16 greedy tokens equal the CPU's`, async () => {
      const dir = writeQuantTinyModel(root, "llama", 4);
      const path = join(root, `${outType}.gguf`);
      convertHfToGguf(dir, path, { outType });
      const prompt = [1, 17, 300, 1999, 42, 7];
      const cpu = new CpuBackend({ threads: 2 });
      const gpu = await createWebGpuBackend({}, probe);
      try {
        const want = await greedy(path, cpu, prompt, 16);
        const got = await greedy(path, gpu, prompt, 16);
        // Where the CPU's top two logits are closer than the activation-quantization noise, a tie may break
        // either way; report the step with both gaps if they differ.
        for (let i = 0; i < want.tokens.length; i++) {
          if (got.tokens[i] === want.tokens[i]) continue;
          const row = want.logits[i]!;
          assert.fail(
            `${outType}: step ${i}: webgpu ${got.tokens[i]} vs cpu ${want.tokens[i]} (cpu logits ${row[got.tokens[i]!]} vs ${row[want.tokens[i]!]}); ` +
              `webgpu ${got.tokens.join(",")} cpu ${want.tokens.join(",")}`,
          );
        }
      } finally {
        gpu.dispose();
        cpu.dispose();
      }
    });
  }
});
