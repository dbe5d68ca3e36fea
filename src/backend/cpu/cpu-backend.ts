import { cpus, freemem, totalmem } from "node:os";
import { MemoryLedger, type MemoryReport, type MemoryStats } from "../allocator.js";
import type { AllocOptions, AttentionMetadata, Backend, BackendCapabilities, KvScales, RopeTable } from "../backend.js";
import { f32ToFp8e4m3, fp8e4m3Table } from "../../quant/fp8.js";
import {
  type DType,
  denseDType,
  elementType,
  encodeFloats,
  f16ToF32Table,
  isBlockType,
  isFloatType,
  isQuantType,
  tensorBytes,
} from "../dtype.js";
import { KernelMemory } from "./kernel-memory.js";
import { type RowGeometry, type RowwiseArgs, rowwiseRange } from "./rowwise.js";

/** Rows from which the row-wise ops are split across the threads. */
const ROWWISE_PARALLEL_ROWS = 16;
import type { QuantLinearArgs } from "./quant-linear.js";
import { QUANT_KERNELS, type QuantKind, workspaceBytes } from "./wasm-quant.js";
import { blockCodec } from "../../quant/ggml-quants.js";
import { type MemoryTag, type Storage, Tensor } from "../tensor.js";
import type { AttentionArgs, LinearArgs, Mat, WeightKind } from "./kernels.js";
import { ThreadPool } from "./pool.js";
import { settled } from "../settled.js";
import type { SampleOutput, SampleRow } from "../sampling.js";
import { type RowKernels, sampleRows } from "./sample.js";
import { type LinearModule, wasmModule } from "./wasm-linear.js";

interface CpuStorage extends Storage {
  readonly handle: SharedArrayBuffer;
  /**
   * Byte address in the kernel memory for storages placed there (quantized weights and their scales,
   * dense weight matrices that fit), else undefined: the storage is all of `handle`.
   */
  readonly address?: number;
  /** The logits live in a shared wasm memory, so sample.wat reads them where they are. */
  readonly wasm?: WebAssembly.Memory;
  readonly f32: Float32Array;
  readonly u16: Uint16Array;
  readonly i32: Int32Array;
}

export interface CpuBackendOptions {
  /** Threads for matrix products and attention (default: all cores). */
  threads?: number;
  /** The most the kernel memory holds (default and maximum: wasm32's 4 GiB; smaller in tests of what happens when it is full). */
  kernelMemoryBytes?: number;
}

/** Dense weight encodings that quant.wat's kernels read in place (as QUANT_KERNELS kinds of the same names). */
type DenseWeight = "bf16" | "f16" | "f32";
const isDenseWeight = (dtype: DType): dtype is DenseWeight => dtype === "bf16" || dtype === "f16" || dtype === "f32";

/**
 * Kernel memory that dense weights leave free (256 MiB, or a quarter of a smaller limit): activation
 * staging and per-thread tiles must fit beside the weights (quantized weights, which can go nowhere
 * else, may take it; see allocResident).
 */
const denseReserve = (limit: number) => Math.min(256 * 2 ** 20, limit / 4);

/** Activation rows per quantLinear pass are bounded so that their staging stays this small (longer prefills run in passes). */
const STAGING_PASS_BYTES = 16 * 2 ** 20;

/**
 * The reference backend: TypeScript kernels computing in f32, matrix products
 * and attention split across worker threads over SharedArrayBuffer storages.
 * Weights stay in their file dtype (bf16/f16/f32 or quantized) and are decoded on the fly;
 * weight matrices live in the kernel memory (kernel-memory.ts), where every thread's
 * quant.wat kernels read them in place (dense ones that do not fit stay in plain buffers,
 * read by linear.wat).
 */
export class CpuBackend implements Backend {
  readonly name = "cpu";
  readonly activationDType: DType = "f32";
  readonly pool: ThreadPool;
  readonly kernelMemory: KernelMemory;
  private ledger = new MemoryLedger();
  /** Dense weights placed in the kernel memory: they move out to plain buffers when a quantized weight needs the room. */
  private denseResident = new Set<CpuStorage>();
  /** Decoded blocks of an fp8 KV cache for one attention call (grown on demand). */
  private fp8Staging: { k: Tensor; v: Tensor; table: Tensor } | undefined;
  /** Staging for the activations of quantized products, in the kernel memory (grown on demand). */
  private quantWorkspace: { address: number; bytes: number } | undefined;

  constructor(opts: CpuBackendOptions = {}) {
    this.kernelMemory = new KernelMemory(opts.kernelMemoryBytes);
    this.pool = new ThreadPool(opts.threads, { kernelMemory: this.kernelMemory.memory });
  }

  get threads(): number {
    return this.pool.threads;
  }

  get capabilities(): BackendCapabilities {
    return { hostMemory: true, anyWeightDType: true, threads: this.pool.threads, kvCacheDTypes: ["fp8_e4m3"], syncReadback: true };
  }

  // ---------------------------------------------------------------- memory

  alloc(shape: readonly number[], dtype: DType, tag: MemoryTag, label: string, opts: AllocOptions = {}): Tensor {
    const numel = shape.reduce((a, b) => a * b, 1);
    // Round up to 4 bytes so every storage can be viewed as f32/i32 too.
    const bytes = Math.ceil(tensorBytes(dtype, numel) / 4) * 4;
    // Quantized weights (and what their kernels read beside them) go to the kernel memory; an fp8 KV cache does not.
    if ((isQuantType(dtype) && tag === "weights") || opts.kernelResident) return this.allocResident(shape, dtype, tag, label, bytes);
    // Dense weight matrices too, in whole blocks of 16 columns, where quant.wat's kernels run and while they fit beside the reserve.
    if (tag === "weights" && shape.length === 2 && shape[1]! % 16 === 0 && isDenseWeight(dtype) && this.pool.quantImpl === "wasm-simd") {
      const address = this.kernelMemory.alloc(bytes, denseReserve(this.kernelMemory.limitBytes));
      if (address !== undefined) {
        const t = this.residentTensor(address, shape, dtype, tag, label, bytes);
        this.denseResident.add(st(t));
        return t;
      }
    }
    if (bytes >= 2 ** 32) {
      throw new RangeError(
        `CPU backend: "${label}" needs ${bytes} bytes in one buffer; a single buffer must stay under 4 GiB (lower the KV cache size or the batch limits)`,
      );
    }
    // Only the sampling input: a wasm memory's buffer costs more to post to the pool's threads than a plain one.
    const wasm = opts.samplingInput && sampleModule().module ? wasmMemory(bytes) : undefined;
    const sab = wasm ? (wasm.buffer as unknown as SharedArrayBuffer) : new SharedArrayBuffer(bytes);
    const storage: CpuStorage = {
      id: this.ledger.newId(),
      bytes,
      tag,
      label,
      handle: sab,
      wasm,
      f32: new Float32Array(sab),
      u16: new Uint16Array(sab),
      i32: new Int32Array(sab),
    };
    this.ledger.add(storage);
    return new Tensor(storage, dtype, shape);
  }

  /**
   * A storage inside the kernel memory, where the quantized kernels of every thread read it in place.
   * While it does not fit, the activation staging is given up (the next product allocates it again)
   * and then dense weights placed there move out to plain buffers, largest first.
   */
  private allocResident(shape: readonly number[], dtype: DType, tag: MemoryTag, label: string, bytes: number): Tensor {
    let address = this.kernelMemory.alloc(bytes);
    if (address === undefined && this.quantWorkspace) {
      this.kernelMemory.release(this.quantWorkspace.address);
      this.quantWorkspace = undefined;
      address = this.kernelMemory.alloc(bytes);
    }
    while (address === undefined && this.denseResident.size > 0) {
      let largest: CpuStorage | undefined;
      for (const s of this.denseResident) if (!largest || s.bytes > largest.bytes) largest = s;
      this.evictDense(largest!);
      address = this.kernelMemory.alloc(bytes);
    }
    if (address === undefined) {
      throw new RangeError(
        `CPU backend: "${label}" (${bytes} bytes) does not fit in the kernel memory beside ${this.kernelMemory.usedBytes} bytes already there; ` +
          `quantized weights must fit in ${this.kernelMemory.limitBytes === 2 ** 32 ? "4 GiB" : `${this.kernelMemory.limitBytes} bytes`} on this backend`,
      );
    }
    return this.residentTensor(address, shape, dtype, tag, label, bytes);
  }

  private residentTensor(address: number, shape: readonly number[], dtype: DType, tag: MemoryTag, label: string, bytes: number): Tensor {
    const sab = this.kernelMemory.buffer;
    const storage: CpuStorage = {
      id: this.ledger.newId(),
      bytes,
      tag,
      label,
      handle: sab,
      address,
      f32: new Float32Array(sab, address, bytes / 4),
      u16: new Uint16Array(sab, address, bytes / 2),
      i32: new Int32Array(sab, address, bytes / 4),
    };
    this.ledger.add(storage);
    return new Tensor(storage, dtype, shape);
  }

  /**
   * Move a dense weight out of the kernel memory into a plain buffer (the storage object stays, so
   * every tensor over it follows; linear() reads it with linear.wat from then on).
   */
  private evictDense(s: CpuStorage): void {
    this.denseResident.delete(s);
    const sab = new SharedArrayBuffer(s.bytes);
    new Uint8Array(sab).set(new Uint8Array(this.kernelMemory.buffer, s.address!, s.bytes));
    this.kernelMemory.release(s.address!);
    const moved: Pick<CpuStorage, "handle" | "address" | "f32" | "u16" | "i32"> = {
      handle: sab,
      address: undefined,
      f32: new Float32Array(sab),
      u16: new Uint16Array(sab),
      i32: new Int32Array(sab),
    };
    Object.assign(s, moved);
  }

  free(storage: Storage): void {
    this.ledger.remove(storage);
    const address = (storage as CpuStorage).address;
    this.denseResident.delete(storage as CpuStorage);
    if (address !== undefined) this.kernelMemory.release(address);
  }

  memoryStats(): MemoryStats {
    return this.ledger.stats();
  }

  memoryReport(): MemoryReport {
    return {
      stats: this.ledger.stats(),
      allocations: this.ledger.storages().map((s) => ({ tag: s.tag, label: s.label, bytes: s.bytes })),
      device: { name: `CPU (${cpus().length} cores)`, totalBytes: totalmem(), freeBytes: freemem() },
    };
  }

  writeBytes(dst: Tensor, bytes: Uint8Array): void {
    const need = dst.byteLength;
    if (!dst.isContiguous || bytes.byteLength !== need) {
      throw new Error(`writeBytes: ${bytes.byteLength} bytes into ${dst} (needs ${need}, contiguous)`);
    }
    const s = st(dst);
    new Uint8Array(s.handle, (s.address ?? 0) + dst.byteOffset, need).set(bytes);
  }

  write(dst: Tensor, values: ArrayLike<number>): void {
    if (values.length !== dst.numel) throw new Error(`write: ${values.length} values into ${dst}`);
    if (dst.dtype === "f32") st(dst).f32.set(values, dst.offset);
    else if (dst.dtype === "i32") st(dst).i32.set(values, dst.offset);
    else this.writeBytes(dst, encodeFloats(values, denseDType(dst.dtype, "write")));
  }

  readAsync(src: Tensor): Promise<Float32Array> {
    return settled(() => this.read(src));
  }

  sampleAsync(logits: Tensor, rows: readonly SampleRow[]): Promise<SampleOutput> {
    return settled(() => this.sample(logits, rows));
  }

  read(src: Tensor): Float32Array {
    const out = new Float32Array(src.numel);
    const s = st(src);
    if (src.isContiguous && src.dtype !== "f16") {
      // The common case (logits every step): one bulk copy or decode, no index walk.
      const end = src.offset + src.numel;
      if (src.dtype === "f32") out.set(s.f32.subarray(src.offset, end));
      else if (src.dtype === "i32") out.set(s.i32.subarray(src.offset, end));
      else {
        const bits = new Uint32Array(out.buffer);
        for (let i = 0, o = src.offset; o < end; i++, o++) bits[i] = s.u16[o]! << 16;
      }
      return out;
    }
    const shape = src.shape;
    // Walk every index so strided views read correctly.
    const idx = new Array<number>(shape.length).fill(0);
    const t = src.dtype === "f16" ? f16ToF32Table() : undefined;
    const u32 = new Uint32Array(1);
    const f32v = new Float32Array(u32.buffer);
    for (let i = 0; i < out.length; i++) {
      let o = src.offset;
      for (let d = 0; d < shape.length; d++) o += idx[d]! * src.strides[d]!;
      if (src.dtype === "f32") out[i] = s.f32[o]!;
      else if (src.dtype === "i32") out[i] = s.i32[o]!;
      else if (src.dtype === "f16") out[i] = t![s.u16[o]!]!;
      else {
        u32[0] = s.u16[o]! << 16;
        out[i] = f32v[0]!;
      }
      for (let d = shape.length - 1; d >= 0; d--) {
        if (++idx[d]! < shape[d]!) break;
        idx[d] = 0;
      }
    }
    return out;
  }

  // ---------------------------------------------------------------- ops

  sample(logits: Tensor, rows: readonly SampleRow[]): SampleOutput {
    if (logits.dtype !== "f32" || logits.shape.length !== 2 || logits.strides[1] !== 1 || logits.shape[0]! < rows.length) {
      throw new Error(`sample: expected f32 logits [>= ${rows.length}, vocab] with contiguous rows, got ${logits}`);
    }
    const s = st(logits);
    return sampleRows(s.f32, logits.offset, logits.rowStride, logits.shape[1]!, rows, s.wasm ? rowKernels(s.wasm) : undefined);
  }

  embedding(out: Tensor, ids: Tensor, table: Tensor): void {
    const [vocab, hidden] = table.shape as [number, number];
    const T = ids.numel;
    expectShape("embedding out", out, [T, hidden]);
    const idArr = st(ids).i32;
    const o = st(out).f32;
    const decodeRow = rowDecoder(table);
    for (let t = 0; t < T; t++) {
      const id = idArr[ids.offset + t]!;
      if (id < 0 || id >= vocab) throw new RangeError(`embedding: token id ${id} outside the vocabulary [0, ${vocab})`);
      decodeRow(table.offset + id * table.rowStride, hidden, o, out.offset + t * out.rowStride);
    }
  }

  rmsNorm(out: Tensor, x: Tensor, weight: Tensor, eps: number, residual?: Tensor): void {
    const D = weight.numel;
    const rows = rowGeometry(x, D);
    const outRows = rowGeometry(out, D);
    const resRows = residual ? rowGeometry(residual, D) : null;
    if (rows.count !== outRows.count || (resRows && resRows.count !== rows.count)) {
      throw new Error(`rmsNorm: shapes differ: x ${x}, out ${out}${residual ? `, residual ${residual}` : ""}`);
    }
    const w = f32Weights(weight);
    const args: RowwiseArgs = {
      op: "rmsnorm",
      x: st(x).f32,
      xRows: rows,
      out: st(out).f32,
      outRows,
      residual: residual ? st(residual).f32 : null,
      resRows,
      w: w.data,
      wOffset: w.offset,
      D,
      eps,
    };
    this.runRows(args, rows.count);
  }

  /** Row-wise ops: across the threads for a prefill's many rows, on this thread for a few (a wake-up costs more). */
  private runRows(args: RowwiseArgs, rows: number): void {
    if (rows >= ROWWISE_PARALLEL_ROWS) this.pool.run({ kind: "rows", args }, rows);
    else rowwiseRange(args, 0, rows);
  }

  linear(out: Tensor, x: Tensor, weight: Tensor, bias?: Tensor, scale?: Tensor): void {
    const [N, K] = weight.shape as [number, number];
    const M = x.shape[0]!;
    expectShape("linear x", x, [M, K]);
    expectShape("linear out", out, [M, N]);
    // Quantized weights, and dense ones in the kernel memory (in whole blocks of 16 columns): quant.wat in place.
    if (isQuantType(weight.dtype) || (isDenseWeight(weight.dtype) && st(weight).address !== undefined && K % 16 === 0)) {
      this.quantLinear(out, x, weight, bias, scale);
      return;
    }
    const args: LinearArgs = {
      out: mat(out, st(out).f32),
      x: mat(x, st(x).f32),
      rows: M,
      inFeatures: K,
      w: mat(weight, weight.dtype === "f32" ? st(weight).f32 : st(weight).u16),
      wKind: weightKind(weight),
      bias: bias ? f32Weights(bias) : null,
    };
    if (bias) expectShape("linear bias", bias, [N]);
    this.pool.run({ kind: "linear", args }, N, 4);
  }

  /**
   * linear() over a weight in the kernel memory (see quant-linear.ts): x is copied into the kernel
   * memory and quantized there once (f32 activations: copied only), then the threads read the weight
   * in place. Long prefills go in passes of rows, which bounds the staging.
   */
  private quantLinear(out: Tensor, x: Tensor, weight: Tensor, bias: Tensor | undefined, scale: Tensor | undefined): void {
    const [N, K] = weight.shape as [number, number];
    const M = x.shape[0]!;
    const kind = quantKind(weight.dtype);
    const kernel = QUANT_KERNELS[kind];
    const ws = st(weight);
    if (ws.address === undefined) throw new Error(`linear: ${weight} is not in the kernel memory`);
    if (kernel.rowScales !== (scale !== undefined))
      throw new Error(`linear: ${weight.dtype} weights ${kernel.rowScales ? "need" : "take no"} a scale tensor`);
    if (scale && (scale.dtype !== "f32" || scale.numel !== N || st(scale).address === undefined)) {
      throw new Error(`linear: the scales of ${weight} must be f32 [${N}] in the kernel memory, got ${scale}`);
    }
    if (bias) expectShape("linear bias", bias, [N]);
    if (K % kernel.blockSize !== 0 || (kernel.activation === "q8_k" && K % 256 !== 0)) {
      throw new Error(`linear: ${K} input features are not whole blocks of ${weight.dtype}`);
    }
    const blocks = K / kernel.blockSize;
    const xqRowBytes = blocks * kernel.actBlockBytes;
    const direct = kernel.activation === "f32";
    // f32 activations are copied straight into place; the others are staged as f32, then quantized.
    const stagedRowBytes = direct ? 0 : K * 4;
    const passRows = Math.max(1, Math.floor(STAGING_PASS_BYTES / (stagedRowBytes + xqRowBytes)));
    const outMat = mat(out, st(out).f32);
    for (let r0 = 0; r0 < M; r0 += passRows) {
      const rows = Math.min(passRows, M - r0);
      // A decode reads each weight once: long tiles amortize the per-call cost; a prefill keeps its tile in cache.
      const tileRows = rows <= 4 ? 1024 : 64;
      const workBytes = Math.ceil(workspaceBytes(kind, blocks, rows) / 64) * 64;
      const tileBytes = Math.ceil((rows * tileRows * 4) / 64) * 64 + workBytes;
      const stagedBytes = rows * stagedRowBytes;
      const xqBytes = Math.ceil((rows * xqRowBytes) / 64) * 64;
      const base = this.workspace(stagedBytes + xqBytes + this.pool.threads * tileBytes);
      const staged = base;
      const xq = base + stagedBytes;
      // x rows into the kernel memory, then into the activation format, once for all threads.
      const mem = new Float32Array(this.kernelMemory.buffer);
      const xs = st(x).f32;
      for (let m = 0; m < rows; m++) {
        const src = x.offset + (r0 + m) * x.rowStride;
        mem.set(xs.subarray(src, src + K), direct ? xq / 4 + m * K : staged / 4 + m * K);
      }
      if (!direct) {
        const local = this.pool.local.quant();
        for (let m = 0; m < rows; m++) local.quantize(kind, staged + m * K * 4, K, xq + m * xqRowBytes);
      }
      const args: QuantLinearArgs = {
        kind,
        w: ws.address + weight.byteOffset,
        wRowBytes: tensorBytes(weight.dtype, weight.rowStride),
        xq,
        xqRowBytes,
        rows,
        blocks,
        tiles: xq + xqBytes,
        tileBytes,
        workBytes,
        tileRows,
        scale: scale ? st(scale).address! + scale.byteOffset : 0,
        out: { ...outMat, offset: outMat.offset + r0 * outMat.stride },
        bias: bias ? f32Weights(bias) : null,
      };
      this.pool.run({ kind: "qlinear", args }, N, 4);
    }
  }

  /**
   * An fp8 KV cache's blocks referenced by `meta`'s block tables, decoded (times their scale) into f32
   * staging caches, with the block tables renumbered to point into them.
   */
  private stageFp8Blocks(
    kCache: Tensor,
    vCache: Tensor,
    meta: AttentionMetadata,
    scales: KvScales,
  ): { k: Tensor; v: Tensor; meta: AttentionMetadata } {
    const [, blockSize, Hkv, D] = kCache.shape as [number, number, number, number];
    const bt = st(meta.blockTables).i32;
    const lens = st(meta.seqLens).i32;
    const stride = meta.blockTables.rowStride;
    const remap = new Map<number, number>();
    const table = new Int32Array(meta.numSeqs * stride).fill(-1);
    for (let s = 0; s < meta.numSeqs; s++) {
      const used = Math.ceil(lens[meta.seqLens.offset + s]! / blockSize);
      for (let j = 0; j < used; j++) {
        const block = bt[meta.blockTables.offset + s * stride + j]!;
        let local = remap.get(block);
        if (local === undefined) remap.set(block, (local = remap.size));
        table[s * stride + j] = local;
      }
    }
    const blockElems = blockSize * Hkv * D;
    const need = Math.max(1, remap.size) * blockElems;
    if (!this.fp8Staging || this.fp8Staging.k.numel < need) {
      if (this.fp8Staging) for (const t of Object.values(this.fp8Staging)) this.free(t.storage);
      const n = Math.max(need, 2 * (this.fp8Staging?.k.numel ?? 0));
      this.fp8Staging = {
        k: this.alloc([n], "f32", "workspace", "fp8 KV staging (keys)"),
        v: this.alloc([n], "f32", "workspace", "fp8 KV staging (values)"),
        table: this.alloc([table.length], "i32", "workspace", "fp8 KV staging (block tables)"),
      };
    }
    if (this.fp8Staging.table.numel < table.length) {
      this.free(this.fp8Staging.table.storage);
      this.fp8Staging.table = this.alloc([table.length], "i32", "workspace", "fp8 KV staging (block tables)");
    }
    const lut = fp8e4m3Table();
    const decode = (cache: Tensor, dst: Tensor, scale: number) => {
      const src = new Uint8Array(st(cache).handle, cache.byteOffset, cache.byteLength);
      const out = st(dst).f32;
      for (const [block, local] of remap) {
        const s0 = block * blockElems;
        const d0 = local * blockElems;
        for (let i = 0; i < blockElems; i++) out[d0 + i] = lut[src[s0 + i]!]! * scale;
      }
    };
    decode(kCache, this.fp8Staging.k, scales.k);
    decode(vCache, this.fp8Staging.v, scales.v);
    st(this.fp8Staging.table).i32.set(table, 0);
    const shape = [Math.max(1, remap.size), blockSize, Hkv, D];
    const blockTables = new Tensor(this.fp8Staging.table.storage, "i32", [meta.numSeqs, stride]);
    return {
      k: new Tensor(this.fp8Staging.k.storage, "f32", shape),
      v: new Tensor(this.fp8Staging.v.storage, "f32", shape),
      meta: { ...meta, blockTables },
    };
  }

  /** `bytes` of kernel memory for quantLinear's staging, reused across calls and grown when too small. */
  private workspace(bytes: number): number {
    const have = this.quantWorkspace;
    if (have && have.bytes >= bytes) return have.address;
    if (have) this.kernelMemory.release(have.address);
    const size = Math.max(bytes, (have?.bytes ?? 0) * 2);
    const address = this.kernelMemory.alloc(size);
    if (address === undefined) throw new RangeError(`CPU backend: no room in the kernel memory for ${size} bytes of activation staging`);
    this.quantWorkspace = { address, bytes: size };
    return address;
  }

  ropeAndCacheWrite(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    positions: Tensor,
    rope: RopeTable,
    slotMapping: Tensor,
    kCache: Tensor,
    vCache: Tensor,
    kvScales: KvScales = { k: 1, v: 1 },
  ): void {
    const T = positions.numel;
    const fp8 = kCache.dtype === "fp8_e4m3";
    if (fp8 !== (vCache.dtype === "fp8_e4m3") || (!fp8 && (kCache.dtype !== "f32" || vCache.dtype !== "f32"))) {
      throw new Error(`ropeAndCacheWrite: caches ${kCache} and ${vCache}; expected both f32 or both fp8_e4m3`);
    }
    const [, , Hkv, D] = kCache.shape as [number, number, number, number];
    const half = rope.rotaryDim / 2;
    const pos = st(positions).i32;
    const cos = st(rope.cos).f32;
    const sin = st(rope.sin).f32;
    const slots = st(slotMapping).i32;
    const rotate = (t: Tensor, heads: number, ti: number, p: number) => {
      const data = st(t).f32;
      for (let h = 0; h < heads; h++) {
        const base = t.offset + ti * t.strides[0]! + h * t.strides[1]!;
        for (let i = 0; i < half; i++) {
          const c = cos[rope.cos.offset + p * half + i]!;
          const s = sin[rope.sin.offset + p * half + i]!;
          const x1 = data[base + i]!;
          const x2 = data[base + i + half]!;
          data[base + i] = x1 * c - x2 * s;
          data[base + i + half] = x2 * c + x1 * s;
        }
      }
    };
    const kc = st(kCache).f32;
    const vc = st(vCache).f32;
    const ks = st(k).f32;
    const vs = st(v).f32;
    for (let t = 0; t < T; t++) {
      const p = pos[positions.offset + t]!;
      if (p < 0 || p >= rope.maxPositions) throw new RangeError(`rope: position ${p} outside [0, ${rope.maxPositions})`);
      rotate(q, q.shape[1]!, t, p);
      rotate(k, Hkv, t, p);
      const slot = slots[slotMapping.offset + t]!;
      if (slot < 0) continue;
      if (fp8) {
        writeFp8Rows(k, t, Hkv, D, kCache, slot, kvScales.k);
        writeFp8Rows(v, t, Hkv, D, vCache, slot, kvScales.v);
        continue;
      }
      for (let h = 0; h < Hkv; h++) {
        const co = (slot * Hkv + h) * D;
        const ko = k.offset + t * k.strides[0]! + h * k.strides[1]!;
        const vo = v.offset + t * v.strides[0]! + h * v.strides[1]!;
        kc.set(ks.subarray(ko, ko + D), kCache.offset + co);
        vc.set(vs.subarray(vo, vo + D), vCache.offset + co);
      }
    }
  }

  pagedAttention(
    out: Tensor,
    q: Tensor,
    kCache: Tensor,
    vCache: Tensor,
    meta: AttentionMetadata,
    scale: number,
    kvScales?: KvScales,
  ): void {
    const [T, Hq, D] = q.shape as [number, number, number];
    const [, blockSize, Hkv] = kCache.shape as [number, number, number, number];
    if (Hq % Hkv !== 0) throw new Error(`pagedAttention: ${Hq} query heads is not a multiple of ${Hkv} KV heads`);
    expectShape("pagedAttention out", out, [T, Hq, D]);
    if (kCache.dtype === "fp8_e4m3") {
      // The blocks this batch reads, decoded to f32 once, then the f32 kernels over them.
      const staged = this.stageFp8Blocks(kCache, vCache, meta, kvScales ?? { k: 1, v: 1 });
      this.pagedAttention(out, q, staged.k, staged.v, staged.meta, scale);
      return;
    }
    const args: AttentionArgs = {
      out: st(out).f32,
      outOffset: out.offset,
      outStrides: [out.strides[0]!, out.strides[1]!],
      q: st(q).f32,
      qOffset: q.offset,
      qStrides: [q.strides[0]!, q.strides[1]!],
      kCache: st(kCache).f32,
      kOffset: kCache.offset,
      vCache: st(vCache).f32,
      vOffset: vCache.offset,
      blockSize,
      numHeads: Hq,
      numKvHeads: Hkv,
      headDim: D,
      queryStartLoc: st(meta.queryStartLoc).i32,
      qslOffset: meta.queryStartLoc.offset,
      seqLens: st(meta.seqLens).i32,
      seqLensOffset: meta.seqLens.offset,
      blockTables: st(meta.blockTables).i32,
      btOffset: meta.blockTables.offset,
      btStride: meta.blockTables.rowStride,
      numSeqs: meta.numSeqs,
      scale,
    };
    this.pool.run({ kind: "attention", args }, T * Hkv);
  }

  siluAndMul(out: Tensor, x: Tensor): void {
    const [T, I] = out.shape as [number, number];
    expectShape("siluAndMul x", x, [T, 2 * I]);
    const args: RowwiseArgs = {
      op: "silu",
      x: st(x).f32,
      xOffset: x.offset,
      xStride: x.rowStride,
      out: st(out).f32,
      outOffset: out.offset,
      outStride: out.rowStride,
      I,
    };
    this.runRows(args, T);
  }

  gatherRows(out: Tensor, x: Tensor, indices: Tensor): void {
    const R = indices.numel;
    const F = x.shape[1]!;
    expectShape("gatherRows out", out, [R, F]);
    const xs = st(x).f32;
    const os = st(out).f32;
    const idx = st(indices).i32;
    for (let r = 0; r < R; r++) {
      const i = idx[indices.offset + r]!;
      if (i < 0 || i >= x.shape[0]!) throw new RangeError(`gatherRows: index ${i} outside [0, ${x.shape[0]})`);
      const xo = x.offset + i * x.rowStride;
      os.set(xs.subarray(xo, xo + F), out.offset + r * out.rowStride);
    }
  }

  synchronize(): void {}

  dispose(): void {
    this.pool.dispose();
  }

  /** The raw bytes of a contiguous tensor (any encoding). */
  readBytes(src: Tensor): Uint8Array {
    const s = st(src);
    return new Uint8Array(s.handle, (s.address ?? 0) + src.byteOffset, src.byteLength).slice();
  }
}

/** Token t's K or V rows [hkv, d] of `src`, divided by `scale`, as e4m3 bytes into cache slot `slot`. */
function writeFp8Rows(src: Tensor, t: number, heads: number, D: number, cache: Tensor, slot: number, scale: number): void {
  const data = st(src).f32;
  const out = new Uint8Array(st(cache).handle, cache.byteOffset, cache.byteLength);
  const inv = 1 / scale;
  for (let h = 0; h < heads; h++) {
    const so = src.offset + t * src.strides[0]! + h * src.strides[1]!;
    const co = (slot * heads + h) * D;
    for (let d = 0; d < D; d++) out[co + d] = f32ToFp8e4m3(data[so + d]! * inv);
  }
}

/** A shared wasm memory of at least `bytes` (whole 64 KiB pages). */
function wasmMemory(bytes: number): WebAssembly.Memory | undefined {
  const pages = Math.max(1, Math.ceil(bytes / 65536));
  if (pages > 65536) return undefined;
  return new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true });
}

let sampleWasm: LinearModule | undefined;
function sampleModule(): LinearModule {
  sampleWasm ??= wasmModule("sample.wat");
  return sampleWasm;
}

const kernelsByMemory = new WeakMap<WebAssembly.Memory, RowKernels>();

/** sample.wat instantiated over `mem` (once per memory). */
function rowKernels(mem: WebAssembly.Memory): RowKernels {
  let k = kernelsByMemory.get(mem);
  if (!k) {
    const ex = new WebAssembly.Instance(sampleModule().module!, { env: { mem } }).exports as unknown as {
      rowmax(p: number, n: number): number;
      argmax(p: number, n: number): number;
    };
    k = { rowmax: (offset, n) => ex.rowmax(offset * 4, n), argmax: (offset, n) => ex.argmax(offset * 4, n) };
    kernelsByMemory.set(mem, k);
  }
  return k;
}

/** The kernel family computing with weights of `dtype` (the dense bf16, f16 and f32 included: same names). */
function quantKind(dtype: DType): QuantKind {
  if (dtype === "fp8_e4m3") return "fp8";
  if (!(dtype in QUANT_KERNELS)) throw new Error(`linear: no CPU kernel for ${dtype} weights`);
  return dtype as QuantKind;
}

function st(t: Tensor): CpuStorage {
  return t.storage as CpuStorage;
}

function mat<A>(t: Tensor, data: A): Mat<A> {
  return { data, offset: t.offset, stride: t.rowStride };
}

function weightKind(t: Tensor): WeightKind {
  if (!isFloatType(t.dtype)) throw new Error(`linear: weight ${t} must be a float tensor`);
  return t.dtype;
}

/** Small 1-D parameters (norm weights, biases) are kept in f32 by the loader on this backend. */
function f32Weights(t: Tensor): { data: Float32Array; offset: number } {
  if (t.dtype !== "f32") throw new Error(`CPU backend expects f32 norm weights and biases, got ${t}`);
  return { data: st(t).f32, offset: t.offset };
}

function expectShape(what: string, t: Tensor, shape: number[]): void {
  const got = t.shape.reduce((a, b) => a * b, 1);
  const want = shape.reduce((a, b) => a * b, 1);
  if (t.shape[0] !== shape[0] || got !== want) throw new Error(`${what}: expected shape [${shape}], got [${t.shape}]`);
}

/** Rows of length D of a 2-D [r, D] or 3-D [r, h, D] view, as row geometry (see rowwise.ts). */
function rowGeometry(t: Tensor, D: number): RowGeometry & { count: number } {
  if (t.shape[t.shape.length - 1] !== D) throw new Error(`expected last dimension ${D}, got ${t}`);
  if (t.shape.length === 2) return { count: t.shape[0]!, offset: t.offset, s0: t.strides[0]!, s1: 0, heads: 1 };
  if (t.shape.length === 3)
    return { count: t.shape[0]! * t.shape[1]!, offset: t.offset, s0: t.strides[0]!, s1: t.strides[1]!, heads: t.shape[1]! };
  throw new Error(`expected a 2-D or 3-D tensor, got ${t}`);
}

/** A function copying `n` elements of `table` (any float dtype) into f32 `dst` at `dOff`. */
function rowDecoder(table: Tensor): (src: number, n: number, dst: Float32Array, dOff: number) => void {
  const s = st(table);
  if (table.dtype === "f32") return (src, n, dst, dOff) => dst.set(s.f32.subarray(src, src + n), dOff);
  if (table.dtype === "bf16") {
    return (src, n, dst, dOff) => {
      const u = new Uint32Array(dst.buffer, dst.byteOffset + dOff * 4, n);
      for (let i = 0; i < n; i++) u[i] = s.u16[src + i]! << 16;
    };
  }
  if (table.dtype === "f16") {
    const tab = f16ToF32Table();
    return (src, n, dst, dOff) => {
      for (let i = 0; i < n; i++) dst[dOff + i] = tab[s.u16[src + i]!]!;
    };
  }
  if (isBlockType(table.dtype)) {
    // GGUF tables are often quantized (Q4_K_M keeps token_embd in Q4_K or Q6_K): decode the rows gathered.
    const codec = blockCodec(elementType(table.dtype).ggmlName!);
    const bytes = new Uint8Array(s.handle, s.address ?? 0, s.bytes);
    return (src, n, dst, dOff) => codec.dequantize(bytes, tensorBytes(table.dtype, src), dst, dOff, n);
  }
  throw new Error(`embedding table ${table} must be a float tensor`);
}
