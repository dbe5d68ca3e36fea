/**
 * The CPU kernels over the kernel memory (quant.wat: the quantized formats and the dense bf16, f16
 * and f32), one thread: GB/s of weight bytes for one activation row (decode: a ~64 MiB weight matrix
 * streamed from memory) and GFLOP/s for 64 rows (prefill, with the workspace the backend passes),
 * per weight format, with K = 4096. The machine may be shared, so each cell is the best of several
 * runs, timed in CPU time.
 *
 *   npx tsc -p tsconfig.json && node dist/bench/quant-cpu.js [--kinds q4_k,q8_0,bf16] [--seconds 1] [--mib 64] [--js]
 *
 * --js also times quant-dot.ts (the JavaScript fallback) on a small matrix.
 */
import { dotRows } from "../src/backend/cpu/quant-dot.js";
import { QUANT_KERNELS, type QuantKind, quantWasmModule, WasmQuant } from "../src/backend/cpu/wasm-quant.js";
import { f32ToBf16Bits, f32ToF16Bits } from "../src/backend/dtype.js";
import { flag, machine, numFlag, rng } from "./common.js";

const kinds = flag("kinds", Object.keys(QUANT_KERNELS).join(",")).split(",") as QuantKind[];
const seconds = numFlag("seconds", 1);
const mib = numFlag("mib", 64);
const withJs = process.argv.includes("--js");
const K = 4096;
const PREFILL_ROWS = 64;
const PREFILL_N = 1024;

const mod = quantWasmModule();
if (!mod.module) throw new Error(`quant.wat is not available: ${mod.reason}`);

const weightBytes = mib * 2 ** 20;
const mem = new WebAssembly.Memory({ initial: Math.ceil((weightBytes + 12 * 2 ** 20) / 65536), maximum: 65536, shared: true });
const wq = new WasmQuant(mod.module, mem);
const u8 = new Uint8Array(mem.buffer);
const r = rng(1);
for (let i = 0; i < weightBytes; i += 4) new DataView(mem.buffer).setUint32(i, (r() * 2 ** 32) >>> 0, true);

const X = weightBytes;
const XQ = X + PREFILL_ROWS * K * 4;
const SCALES = XQ + PREFILL_ROWS * 8 * K;
const OUT = SCALES + 4 * 65536;
const WORK = OUT + 4 * 65536;
const f32 = new Float32Array(mem.buffer);
for (let i = 0; i < PREFILL_ROWS * K; i++) f32[X / 4 + i] = r() * 2 - 1;
for (let i = 0; i < 65536; i++) f32[SCALES / 4 + i] = 0.01;

/** Sane scales in every block of `rows` rows (random bytes elsewhere): no inf/NaN or subnormal f16. */
function fixScales(kind: QuantKind, rows: number): void {
  const { blockBytes, blockSize } = QUANT_KERNELS[kind];
  if (kind === "bf16" || kind === "f16" || kind === "f32") {
    // Dense weights: random values of a weight's size (random bits would be NaN, inf or subnormal now and then).
    const dv = new DataView(mem.buffer);
    for (let i = 0; i < rows * K; i++) {
      const v = (r() * 2 - 1) * 0.05;
      if (kind === "f32") dv.setFloat32(4 * i, v, true);
      else dv.setUint16(2 * i, kind === "bf16" ? f32ToBf16Bits(v) : f32ToF16Bits(v), true);
    }
    return;
  }
  const half = f32ToF16Bits(0.01);
  const put = (o: number) => {
    u8[o] = half & 0xff;
    u8[o + 1] = half >> 8;
  };
  for (let b = 0; b < (rows * K) / blockSize; b++) {
    const o = b * blockBytes;
    if (kind === "q6_k") put(o + 208);
    else if (kind === "mxfp4") u8[o] = 120;
    else if (kind !== "int8" && kind !== "fp8") {
      put(o);
      if (kind === "q4_1" || kind === "q5_1" || kind === "q4_k" || kind === "q5_k") put(o + 2);
    }
  }
}

/** Best milliseconds of one call, in this process's CPU time (immune to being descheduled on a busy machine). */
function best(call: () => void): number {
  call();
  let ms = Infinity;
  const until = performance.now() + seconds * 1000;
  for (let i = 0; i < 3 || performance.now() < until; i++) {
    const reps = ms < 1 ? 10 : 1;
    const t0 = process.cpuUsage();
    for (let k = 0; k < reps; k++) call();
    const t = process.cpuUsage(t0);
    ms = Math.min(ms, (t.user + t.system) / 1000 / reps);
  }
  return ms;
}

console.log(`${machine()}; one thread; K = ${K}; decode: ${mib} MiB of weights, prefill: ${PREFILL_ROWS} rows × ${PREFILL_N} outputs`);
console.log("kind    decode GB/s  (ms, rows)     no workspace   prefill GFLOP/s  quantize µs/row" + (withJs ? "   js decode GB/s" : ""));
for (const kind of kinds) {
  const spec = QUANT_KERNELS[kind];
  const blocks = K / spec.blockSize;
  const rowBytes = blocks * spec.blockBytes;
  const xrb = blocks * spec.actBlockBytes;
  const n = Math.floor(weightBytes / rowBytes / 4) * 4;
  fixScales(kind, n);
  for (let i = 0; i < PREFILL_ROWS; i++) wq.quantize(kind, X + 4 * i * K, K, XQ + i * xrb);
  const qms = best(() => wq.quantize(kind, X, K, XQ));
  const dms = best(() => wq.mm(kind, 0, rowBytes, n, XQ, xrb, 1, blocks, OUT, n, SCALES, WORK));
  const tms = best(() => wq.mm(kind, 0, rowBytes, n, XQ, xrb, 1, blocks, OUT, n, SCALES));
  // With a workspace, as the backend calls it (the dense kinds decode each four weight rows there once).
  const pms = best(() => wq.mm(kind, 0, rowBytes, PREFILL_N, XQ, xrb, PREFILL_ROWS, blocks, OUT, PREFILL_N, SCALES, WORK));
  let js = "";
  if (withJs) {
    const jn = 256;
    const out = new Float32Array(jn);
    const sc = new Float32Array(jn).fill(0.01);
    const jms = best(() => dotRows(kind, u8, 0, rowBytes, jn, u8, XQ, xrb, 1, blocks, out, 0, jn, sc));
    js = `   ${((jn * rowBytes) / jms / 1e6).toFixed(2).padStart(8)}`;
  }
  console.log(
    `${kind.padEnd(6)} ${((n * rowBytes) / dms / 1e6).toFixed(2).padStart(8)}     (${dms.toFixed(2)}, ${n})`.padEnd(34) +
      `${((n * rowBytes) / tms / 1e6).toFixed(2).padStart(8)}` +
      `${((2 * PREFILL_N * K * PREFILL_ROWS) / pms / 1e6).toFixed(2).padStart(14)}` +
      `${(qms * 1000).toFixed(1).padStart(16)}${js}`,
  );
}
