/**
 * The WebGPU backend: every op of the backend set as a WGSL kernel on any adapter (Vulkan, Metal, D3D12;
 * lavapipe in CI), tensors in GPU buffers, ops encoded into one command encoder that is submitted when the
 * host needs something back (a step's sampled tokens) or writes into a buffer a queued op reads. Reads are
 * asynchronous (`readAsync`, `sampleAsync`): WebGPU has no way to wait for the GPU on the calling thread.
 *
 * Only the WebGPU API is used, so a browser's device works as well as Dawn's Node.js binding.
 */
import type { MemoryReport, MemoryStats } from "../allocator.js";
import { MemoryLedger } from "../allocator.js";
import type { AllocOptions, AttentionMetadata, Backend, BackendCapabilities, KvScales, RopeTable } from "../backend.js";
import { type DType, decodeFloats, type DenseDType, elementType, encodeFloats, isFloatType, tensorBytes } from "../dtype.js";
import type { SampleOutput, SampleRow } from "../sampling.js";
import { type MemoryTag, type Storage, Tensor } from "../tensor.js";
import { adapterName, type WebGpuContext } from "./context.js";
import { byteWindow, extent, type GpuBuffer, KernelRunner, type KernelSpec, Profiler } from "./kernels.js";
import {
  denseLinearSpec,
  embeddingSpec,
  gatherRowsSpec,
  pagedAttentionSpec,
  patchWordsSpec,
  rmsNormSpec,
  ropeCacheSpec,
  siluAndMulSpec,
} from "./ops.js";
import { WebGpuSampler } from "./sample.js";
import { quantEmbeddingSpec, quantLinearSpec, WEBGPU_QUANT_TYPES } from "./quant-linear.js";

export interface WebGpuBackendOptions {
  /** f32 (default) or f16 (needs shader-f16): activations and the KV cache. */
  activationDType?: "f32" | "f16";
  /** What the memory report gives as the device's size (WebGPU exposes none): e.g. the host's RAM for a software adapter. */
  memoryHint?: { totalBytes: number; freeBytes: () => number };
}

export class WebGpuBackend implements Backend {
  readonly name: string;
  readonly capabilities: BackendCapabilities;
  readonly activationDType: DType;
  readonly kernels: KernelRunner;
  private readonly device: GPUDevice;
  private readonly ledger = new MemoryLedger();
  private readonly sampler: WebGpuSampler;
  private error: Error | null = null;
  private disposed = false;

  constructor(
    readonly ctx: WebGpuContext,
    private readonly opts: WebGpuBackendOptions = {},
  ) {
    const act = opts.activationDType ?? "f32";
    if (act === "f16" && !ctx.hasF16) {
      throw new Error(`--dtype float16 on WebGPU needs the shader-f16 feature, which ${adapterName(ctx.adapter)} lacks; use float32`);
    }
    this.activationDType = act;
    this.device = ctx.device;
    this.name = "webgpu";
    this.capabilities = {
      // WebGPU reports no memory size: the KV cache gets a fixed budget (--kv-cache-memory), as on the CPU.
      hostMemory: true,
      anyWeightDType: true,
      threads: 1,
      kvCacheDTypes: [],
      syncReadback: false,
      weightDType: (file: DType, use: "matrix" | "table") => this.weightDType(file, use),
    };
    this.kernels = new KernelRunner(ctx);
    this.sampler = new WebGpuSampler(this);
    this.device.addEventListener("uncapturederror", (e) => {
      this.error ??= new Error(`webgpu: ${(e as GPUUncapturedErrorEvent).error.message}`);
    });
    void this.device.lost.then((info) => {
      if (!this.disposed) this.error ??= new Error(`webgpu: device lost (${info.reason}): ${info.message}`);
    });
  }

  get adapterName(): string {
    return adapterName(this.ctx.adapter);
  }

  /**
   * The stored type of a weight kept as `file`: floats stay (bf16 is read in place), as do the block formats
   * with kernels (matrices, embedding tables, the LM head); other formats become f16 (f32 without shader-f16).
   */
  weightDType(file: DType, _use: "matrix" | "table"): DType {
    if (isFloatType(file) || WEBGPU_QUANT_TYPES.includes(file)) return file;
    return this.ctx.hasF16 ? "f16" : "f32";
  }

  // ---------------------------------------------------------------- memory

  alloc(shape: readonly number[], dtype: DType, tag: MemoryTag, label: string, _opts?: AllocOptions): Tensor {
    this.check();
    const numel = shape.reduce((a, b) => a * b, 1);
    const bytes = Math.max(16, Math.ceil(tensorBytes(dtype, numel) / 16) * 16);
    if (bytes > this.ctx.limits.maxBufferSize) {
      throw new RangeError(
        `webgpu: "${label}" needs ${bytes} bytes, beyond this adapter's maxBufferSize ${this.ctx.limits.maxBufferSize} (${this.adapterName})`,
      );
    }
    const buffer = this.device.createBuffer({
      label,
      size: bytes,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
    });
    const id = this.ledger.newId();
    const handle: GpuBuffer = { id, buffer, size: bytes };
    const storage: Storage = { id, bytes, tag, label, handle };
    this.ledger.add(storage);
    return new Tensor(storage, dtype, shape);
  }

  free(storage: Storage): void {
    this.ledger.remove(storage);
    const h = storage.handle as GpuBuffer;
    // Queued work may still read the buffer: destroy it once what is encoded has been submitted.
    this.kernels.flush();
    this.kernels.forget(h);
    h.buffer.destroy();
  }

  writeBytes(dst: Tensor, bytes: Uint8Array): void {
    this.check();
    if (!dst.isContiguous) throw new Error(`webgpu: writeBytes into a non-contiguous tensor ${dst}`);
    if (bytes.byteLength !== dst.byteLength) throw new RangeError(`webgpu: ${bytes.byteLength} bytes for ${dst} of ${dst.byteLength}`);
    if (bytes.byteLength === 0) return;
    // queue.writeBuffer runs before anything encoded but not yet submitted: submit first, so order holds.
    this.kernels.flush();
    const buf = (dst.storage.handle as GpuBuffer).buffer;
    let start = dst.byteOffset;
    let end = start + bytes.byteLength;
    const head = start % 4;
    const tail = end % 4;
    if (head === 0 && tail === 0) {
      this.device.queue.writeBuffer(buf, start, bytes as Uint8Array<ArrayBuffer>);
      return;
    }
    // 16-bit elements at an odd position: write the whole words inside, patch the two half-words on a kernel.
    const patches: [number, number, number][] = [];
    const firstWord = Math.floor(start / 4);
    let src = 0;
    if (head !== 0) {
      patches.push([0, 0xffff0000, ((bytes[0]! | (bytes[1]! << 8)) << 16) >>> 0]);
      start += 2;
      src += 2;
    }
    if (tail !== 0 && end > start) {
      const n = bytes.byteLength;
      patches.push([Math.floor((end - 2) / 4) - firstWord, 0x0000ffff, bytes[n - 2]! | (bytes[n - 1]! << 8)]);
      end -= 2;
    }
    if (end > start) this.device.queue.writeBuffer(buf, start, bytes as Uint8Array<ArrayBuffer>, src, end - start);
    const lastWord = Math.floor((dst.byteOffset + bytes.byteLength - 1) / 4);
    const words = new Tensor(dst.storage, "i32", [lastWord - firstWord + 1], firstWord);
    this.kernels.dispatch(patchWordsSpec(words, patches));
  }

  write(dst: Tensor, values: ArrayLike<number>): void {
    const e = elementType(dst.dtype);
    if (e.kind !== "float" && e.kind !== "int") throw new Error(`webgpu: write() of numbers into ${dst.dtype} ${dst}; use writeBytes`);
    if (values.length !== dst.numel) throw new RangeError(`webgpu: ${values.length} values for ${dst} of ${dst.numel}`);
    this.writeBytes(dst, encodeFloats(values, dst.dtype as DenseDType));
  }

  read(src: Tensor): Float32Array {
    throw new Error(`webgpu: ${src} cannot be read synchronously (WebGPU reads back asynchronously); use readAsync`);
  }

  /** Copy a tensor's window to a mappable buffer behind everything queued, and decode it (any strides). */
  async readAsync(src: Tensor): Promise<Float32Array> {
    this.check();
    const raw = await this.readRaw(src.storage, ...byteWindow(src));
    return decodeView(src, raw.bytes, raw.start);
  }

  /** Raw bytes [start, end) of a storage (widened to whole words), after all queued work. */
  async readRaw(storage: Storage, start: number, end: number): Promise<{ bytes: Uint8Array; start: number }> {
    const s = start - (start % 4);
    const e = Math.min(storage.bytes, Math.ceil(end / 4) * 4);
    const size = Math.max(4, e - s);
    const staging = this.device.createBuffer({ size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    this.kernels.commandEncoder().copyBufferToBuffer((storage.handle as GpuBuffer).buffer, s, staging, 0, size);
    this.kernels.flush();
    try {
      await staging.mapAsync(GPUMapMode.READ);
      this.check();
      return { bytes: new Uint8Array(staging.getMappedRange().slice(0)), start: s };
    } finally {
      staging.destroy();
    }
  }

  memoryStats(): MemoryStats {
    return this.ledger.stats();
  }

  memoryReport(): MemoryReport {
    const hint = this.opts.memoryHint;
    return {
      stats: this.ledger.stats(),
      allocations: this.ledger.storages().map((s) => ({ tag: s.tag, label: s.label, bytes: s.bytes })),
      device: { name: `webgpu: ${this.adapterName}`, totalBytes: hint?.totalBytes ?? 0, freeBytes: hint?.freeBytes() ?? 0 },
    };
  }

  // ---------------------------------------------------------------- ops

  private run(spec: KernelSpec): void {
    this.check();
    this.kernels.dispatch(spec);
  }

  embedding(out: Tensor, ids: Tensor, table: Tensor): void {
    const quant = WEBGPU_QUANT_TYPES.includes(table.dtype);
    for (const [r0, rows] of this.rowSlices(table)) {
      const t = table.rows(r0, rows);
      this.run(quant ? quantEmbeddingSpec(out, ids, t, r0) : embeddingSpec(out, ids, t, r0));
    }
  }

  rmsNorm(out: Tensor, x: Tensor, weight: Tensor, eps: number, residual?: Tensor): void {
    this.run(rmsNormSpec(out, x, weight, eps, residual));
  }

  linear(out: Tensor, x: Tensor, weight: Tensor, bias?: Tensor, scale?: Tensor): void {
    const K = x.shape[1]!;
    if (weight.shape[1] !== K || out.shape[1] !== weight.shape[0] || out.shape[0] !== x.shape[0]) {
      throw new RangeError(`webgpu linear: x [${x.shape}] · W [${weight.shape}]ᵀ into out [${out.shape}] do not agree`);
    }
    if (scale) throw new Error(`webgpu linear: ${weight.dtype} weights with per-channel scales have no WebGPU kernel yet`);
    const dense = isFloatType(weight.dtype);
    if (!dense && !WEBGPU_QUANT_TYPES.includes(weight.dtype)) {
      throw new Error(
        `webgpu linear: no kernel for ${weight.dtype} weights (${weight.storage.label}); expected ${["f32", "f16", "bf16", ...WEBGPU_QUANT_TYPES].join(", ")}`,
      );
    }
    for (const [n0, rows] of this.rowSlices(weight)) {
      const w = weight.rows(n0, rows);
      this.run(dense ? denseLinearSpec(out, x, w, n0, bias) : quantLinearSpec(out, x, w, n0, bias));
    }
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
    kvScales?: KvScales,
  ): void {
    if (kCache.dtype !== this.activationDType && kvScales)
      throw new Error(`webgpu: no ${kCache.dtype} KV cache kernels; use --kv-cache-dtype auto`);
    this.run(ropeCacheSpec(q, k, v, positions, rope, slotMapping, kCache, vCache));
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
    if (kvScales && kCache.dtype !== this.activationDType)
      throw new Error(`webgpu: no ${kCache.dtype} KV cache kernels; use --kv-cache-dtype auto`);
    this.run(pagedAttentionSpec(out, q, kCache, vCache, meta, scale));
  }

  siluAndMul(out: Tensor, x: Tensor): void {
    this.run(siluAndMulSpec(out, x));
  }

  gatherRows(out: Tensor, x: Tensor, indices: Tensor): void {
    this.run(gatherRowsSpec(out, x, indices));
  }

  sample(): SampleOutput {
    throw new Error("webgpu: sampling reads token ids back asynchronously; use sampleAsync");
  }

  sampleAsync(logits: Tensor, rows: readonly SampleRow[]): Promise<SampleOutput> {
    this.check();
    return this.sampler.sample(logits, rows);
  }

  /** Submit what is queued (the GPU runs it; nothing waits). */
  synchronize(): void {
    this.kernels.flush();
  }

  /** Resolves once everything submitted so far has run. */
  async finish(): Promise<void> {
    this.kernels.flush();
    await this.device.queue.onSubmittedWorkDone();
    this.check();
  }

  /** Time every dispatch from now on with timestamp queries (the benchmark's per-kernel table). */
  startProfiling(): Profiler {
    if (!this.ctx.hasTimestamps) throw new Error(`webgpu: ${this.adapterName} has no timestamp-query feature`);
    this.kernels.flush();
    this.kernels.profiler ??= new Profiler(this.device);
    return this.kernels.profiler;
  }

  stopProfiling(): void {
    this.kernels.flush();
    this.kernels.profiler = null;
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.kernels.flush();
    this.sampler.dispose();
    for (const s of this.ledger.storages()) (s.handle as GpuBuffer).buffer.destroy();
    this.kernels.dispose();
    this.device.destroy();
  }

  /** An error WebGPU reported asynchronously (validation, out of memory, device loss) surfaces once, at the next call. */
  private check(): void {
    if (this.disposed) throw new Error("webgpu: the backend was disposed");
    const err = this.error;
    if (err) {
      this.error = null;
      throw err;
    }
  }

  /** Row ranges of a matrix small enough for one storage binding each (large LM heads and embedding tables are split). */
  private rowSlices(t: Tensor): [number, number][] {
    const rows = t.shape[0]!;
    const rowBytes = Math.max(1, tensorBytes(t.dtype, t.rowStride));
    const limit = this.ctx.limits.maxStorageBufferBindingSize - this.ctx.limits.minStorageBufferOffsetAlignment - 4;
    const per = Math.max(1, Math.floor(limit / rowBytes));
    if (per >= rows) return [[0, rows]];
    const out: [number, number][] = [];
    for (let r = 0; r < rows; r += per) out.push([r, Math.min(per, rows - r)]);
    return out;
  }
}

/** The elements of a view as f32, from the raw bytes of its window (which start at byte `start` of the storage). */
export function decodeView(t: Tensor, bytes: Uint8Array, start: number): Float32Array {
  const dtype = t.dtype as DenseDType;
  const eb = elementType(dtype).blockBytes;
  const [first, last] = extent(t);
  const span = last - first + 1;
  const at = first * eb - start;
  const all = decodeFloats(bytes.subarray(at, at + span * eb), dtype, span);
  if (t.isContiguous) return all.subarray(0, t.numel);
  const out = new Float32Array(t.numel);
  const idx = new Array<number>(t.shape.length).fill(0);
  for (let i = 0; i < t.numel; i++) {
    let off = 0;
    for (let d = 0; d < idx.length; d++) off += idx[d]! * t.strides[d]!;
    out[i] = all[off]!;
    for (let d = idx.length - 1; d >= 0; d--) {
      if (++idx[d]! < t.shape[d]!) break;
      idx[d] = 0;
    }
  }
  return out;
}
