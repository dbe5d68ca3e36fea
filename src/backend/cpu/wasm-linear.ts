/**
 * linearRange with WebAssembly SIMD (kernels in linear.wat). A wasm instance can only read its
 * own memory, and tensor storages are SharedArrayBuffers of the backend allocator, so operands
 * are copied in: the x rows once per call, then the weights a tile of rows at a time (raw
 * bf16/f16 decoded to f32 in wasm, f32 as is), and each output tile is copied back out.
 * One instance (and memory, grown on demand) per thread: see Scratch in kernels.ts.
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { MessageChannel, receiveMessageOnPort, Worker } from "node:worker_threads";
import type { LinearArgs } from "./kernels.js";

/** Which implementation runs the matrix products, and why when it is the fallback. */
export interface LinearModule {
  module: WebAssembly.Module | null;
  /** "wasm-simd" or "js" */
  impl: "wasm-simd" | "js";
  /** Why JavaScript is used; empty for wasm. */
  reason: string;
}

// (module (func (result v128) (v128.const i32x4 0 0 0 0))): validates only where SIMD is on.
const SIMD_PROBE = new Uint8Array([
  0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 22, 1, 20, 0, 253, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
  0, 11,
]);

const cached = new Map<string, LinearModule>();

/**
 * The compiled kernels, assembled from linear.wat on first use and kept for the process (the
 * Module is cloneable, so pool workers get it in workerData instead of assembling again), or
 * null with the reason when wasm SIMD or the assembler is not available.
 */
export function linearWasmModule(): LinearModule {
  return wasmModule("linear.wat");
}

/** Any of this directory's .wat kernels (linear.wat, attention.wat), as linearWasmModule() describes. */
export function wasmModule(file: string): LinearModule {
  return wasmModules([file])[0]!;
}

/**
 * Several .wat kernels at once: those not yet cached are assembled in concurrent helper workers,
 * so that a pool wanting both linear.wat and attention.wat waits for one assembler start-up
 * (wabt's own initialization is most of the time), not two in a row.
 */
export function wasmModules(files: readonly string[]): LinearModule[] {
  const js = (reason: string): LinearModule => ({ module: null, impl: "js", reason });
  const simd = typeof WebAssembly === "object" && WebAssembly.validate(SIMD_PROBE);
  const started = new Map<string, (() => Uint8Array<ArrayBuffer>) | Error>();
  for (const file of files) {
    if (cached.has(file) || started.has(file) || !simd) continue;
    try {
      started.set(file, assembleStart(file, readFileSync(watPath(file), "utf8")));
    } catch (err) {
      started.set(file, err as Error);
    }
  }
  for (const [file, wait] of started) {
    let result: LinearModule;
    try {
      if (wait instanceof Error) throw wait;
      result = { module: new WebAssembly.Module(wait()), impl: "wasm-simd", reason: "" };
    } catch (err) {
      result = js(`${file} could not be assembled: ${(err as Error).message}`);
    }
    cached.set(file, result);
  }
  return files.map((f) => cached.get(f) ?? js("this runtime has no WebAssembly SIMD"));
}

/** `file` beside this module, or in the repository's src/ when running from dist/ (the bundle keeps src/'s non-TypeScript files). */
function watPath(file: string): string {
  const here = import.meta.dirname;
  const fromDist = join(here, "..", "..", "..", "..", "src", "backend", "cpu");
  for (const dir of [here, fromDist]) if (existsSync(join(dir, file))) return join(dir, file);
  throw new Error(`${file} not found in ${here} or ${fromDist}`);
}

/**
 * Start wabt in a helper worker; the returned function blocks until it answers: wabt starts
 * asynchronously, the backend is built synchronously.
 */
function assembleStart(name: string, source: string): () => Uint8Array<ArrayBuffer> {
  const signal = new Int32Array(new SharedArrayBuffer(4));
  const { port1, port2 } = new MessageChannel();
  const worker = new Worker(new URL("./wat-worker.js", import.meta.url), {
    workerData: { name, source, signal, port: port2 },
    transferList: [port2],
  });
  return () => {
    try {
      if (Atomics.wait(signal, 0, 0, 30_000) === "timed-out") throw new Error("the assembler worker did not answer in 30 s");
      const reply = receiveMessageOnPort(port1)?.message as { bytes?: Uint8Array<ArrayBuffer>; error?: string } | undefined;
      if (!reply?.bytes) throw new Error(reply?.error ?? "the assembler worker sent nothing");
      return reply.bytes;
    } finally {
      void worker.terminate();
      port1.close();
    }
  };
}

interface Exports {
  mem: WebAssembly.Memory;
  cvt_bf16(src: number, dst: number, n: number): void;
  cvt_f16(src: number, dst: number, n: number): void;
  mm_f32(x: number, m: number, k: number, w: number, n: number, out: number, bias: number): void;
  mm1_bf16(x: number, k: number, w: number, n: number, out: number, bias: number): void;
}

/** f32 weight tile size: rows of W decoded per step, kept in L1/L2 while every x row passes over them. */
const TILE_BYTES = 64 * 1024;
/** Raw bf16 tile size for a single x row, where each weight is used once: large, to amortize the per-tile calls. */
const DECODE_TILE_BYTES = 128 * 1024;
/** x rows per pass over a weight tile, so that they stay in L2 with it. */
const XBLOCK_BYTES = 128 * 1024;
/** At most this much of x is copied in at once (longer prefills go in passes). */
const X_PASS_BYTES = 8 * 1024 * 1024;
/** Below this many outputs per row a plain loop copies a tile row back faster than subarray + set. */
const SET_MIN = 16;

const roundUp = (v: number, m: number) => Math.ceil(v / m) * m;

/** One thread's instance of the kernels. */
export class WasmLinear {
  private readonly ex: Exports;
  private u16: Uint16Array;
  private f32: Float32Array;

  constructor(module: WebAssembly.Module) {
    this.ex = new WebAssembly.Instance(module, {}).exports as unknown as Exports;
    this.u16 = new Uint16Array(this.ex.mem.buffer);
    this.f32 = new Float32Array(this.ex.mem.buffer);
  }

  private reserve(bytes: number): void {
    const have = this.ex.mem.buffer.byteLength;
    if (bytes <= have) return;
    this.ex.mem.grow(Math.ceil((bytes - have) / 65536));
    this.u16 = new Uint16Array(this.ex.mem.buffer);
    this.f32 = new Float32Array(this.ex.mem.buffer);
  }

  /** out[m, n] = Σ_k x[m, k] · w[n, k] (+ bias[n]) for n in [n0, n1): linearRange's contract. */
  run(a: LinearArgs, n0: number, n1: number): void {
    const M = a.rows;
    const width = n1 - n0;
    if (M <= 0 || width <= 0) return;
    const K = a.inFeatures;
    // Rows padded with zeros to a multiple of 8 (the kernels' step): 0 · 0 adds nothing.
    const K8 = roundUp(K, 8);
    const passRows = Math.max(1, Math.floor(X_PASS_BYTES / Math.max(1, K8 * 4)));
    if (M > passRows) {
      // A long prefill in passes of rows, so that this thread's memory (never shrunk) stays
      // bounded; each pass copies the weights again, which is cheap beside its arithmetic.
      for (let r0 = 0; r0 < M; r0 += passRows) {
        const rows = Math.min(passRows, M - r0);
        const x = { ...a.x, offset: a.x.offset + r0 * a.x.stride };
        const out = { ...a.out, offset: a.out.offset + r0 * a.out.stride };
        this.run({ ...a, x, out, rows }, n0, n1);
      }
      return;
    }
    const kind = a.wKind;
    const decode = M === 1 && kind === "bf16";
    const rowBytes = K8 * (decode ? 2 : 4);
    const maxRows = roundUp(width, 4);
    const nc =
      rowBytes === 0 ? maxRows : Math.min(maxRows, Math.max(4, Math.floor((decode ? DECODE_TILE_BYTES : TILE_BYTES) / rowBytes / 4) * 4));
    const mb = K8 === 0 ? M : Math.max(2, Math.floor(XBLOCK_BYTES / (K8 * 4) / 2) * 2);

    // Layout (bytes; all 16-aligned): [64 unused: 0 means "no bias"] x | bias | raw tile | f32 tile | out tile
    const xOff = 64;
    const biasOff = xOff + M * K8 * 4;
    const rawOff = biasOff + (a.bias ? maxRows * 4 : 0);
    const wOff = rawOff + (kind === "f32" ? 0 : nc * K8 * 2);
    const outOff = wOff + (decode ? 0 : nc * K8 * 4);
    this.reserve(outOff + M * nc * 4);
    const f32 = this.f32;

    // x rows, once for all tiles.
    const xd = a.x.data;
    if (a.x.stride === K && K8 === K) {
      f32.set(xd.subarray(a.x.offset, a.x.offset + M * K), xOff / 4);
    } else {
      for (let m = 0; m < M; m++) {
        const s = a.x.offset + m * a.x.stride;
        const d = xOff / 4 + m * K8;
        f32.set(xd.subarray(s, s + K), d);
        f32.fill(0, d + K, d + K8);
      }
    }
    if (a.bias) f32.set(a.bias.data.subarray(a.bias.offset + n0, a.bias.offset + n1), biasOff / 4);

    const dst = kind === "f32" ? f32 : this.u16;
    const dstOff = kind === "f32" ? wOff / 4 : rawOff / 2;
    const w = a.w.data;
    const out = a.out.data;
    for (let n = n0; n < n1; n += nc) {
      const cn = Math.min(nc, n1 - n);
      const cnp = roundUp(cn, 4);
      // The weight rows [n, n + cn), padded to K8 columns and to cnp rows with zeros.
      const src = a.w.offset + n * a.w.stride;
      if (a.w.stride === K && K8 === K) {
        dst.set(w.subarray(src, src + cn * K), dstOff);
      } else {
        for (let j = 0; j < cn; j++) {
          const s = src + j * a.w.stride;
          const d = dstOff + j * K8;
          dst.set(w.subarray(s, s + K), d);
          dst.fill(0, d + K, d + K8);
        }
      }
      if (cnp > cn) dst.fill(0, dstOff + cn * K8, dstOff + cnp * K8);
      const bias = a.bias ? biasOff + (n - n0) * 4 : 0;

      if (decode) {
        this.ex.mm1_bf16(xOff, K8, rawOff, cnp, outOff, bias);
      } else {
        if (kind === "bf16") this.ex.cvt_bf16(rawOff, wOff, cnp * K8);
        else if (kind === "f16") this.ex.cvt_f16(rawOff, wOff, cnp * K8);
        for (let m = 0; m < M; m += mb) {
          this.ex.mm_f32(xOff + m * K8 * 4, Math.min(mb, M - m), K8, wOff, cnp, outOff + m * cnp * 4, bias);
        }
      }

      // The output tile [M, cnp] back into out's rows.
      for (let m = 0; m < M; m++) {
        const s = outOff / 4 + m * cnp;
        const d = a.out.offset + m * a.out.stride + n;
        if (cn >= SET_MIN) out.set(f32.subarray(s, s + cn), d);
        else for (let j = 0; j < cn; j++) out[d + j] = f32[s + j]!;
      }
    }
  }
}
