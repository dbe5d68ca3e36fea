// The CUDA backend: the Backend op set on an NVIDIA GPU through the driver API, NVRTC and cuBLASLt.
//
// - One primary context (shared with anything else in the process that uses the runtime API) and
//   one non-blocking stream. Every op, copy and memset is issued on that stream, so stream order
//   alone makes it safe to hand a freed block to the next allocation at once (the caching
//   allocator keeps no per-stream pools). Every driver call must come from the thread that
//   created the backend: the context is bound to that OS thread.
// - Kernels (kernels/*.cu, described by kernels/manifest.ts) are compiled by NVRTC for this GPU
//   the first time an op needs an instantiation (dtype, head size, ...), one instantiation per
//   program so nothing unused is compiled, kept in memory and in the on-disk cache
//   (compile-cache.ts). Compilation and module loading cannot happen during CUDA graph capture:
//   run a step eagerly before capturing it.
// - Each loaded kernel owns one pre-packed kernelParams buffer (ffi/kernel-args.ts); a launch
//   updates its values in place (cuLaunchKernel copies them) and allocates nothing native.
// - Linear layers go to cuBLASLt (linear-gemm.ts) with a 32 MiB workspace tagged "workspace";
//   paged attention uses the same buffer for its split-KV partials (same stream: never both at once).
// - No op allocates or synchronises with the host: a decode step can be captured into a graph.
//   write/read/synchronize are the only host synchronisation points.
//
// Validation happens on the host with the shapes and dtypes only: the kernels never read
// indices back, so a token id, row index or position out of range is not reported as the CPU
// backend reports it. The kernels write zeros (embedding, gatherRows) or skip the rotation
// (RoPE) instead of reading out of bounds; the engine validates those values before a step.
import { type MemoryReport, type MemoryStats } from "../allocator.js";
import type { AttentionMetadata, Backend, BackendCapabilities, RopeTable } from "../backend.js";
import { decodeFloats, denseDType, type DType, dtypeBytes, encodeFloats, isFloatType } from "../dtype.js";
import { type MemoryTag, type Storage, Tensor } from "../tensor.js";
import { settled } from "../settled.js";
import type { SampleOutput, SampleRow } from "../sampling.js";
import { sampleRows } from "../cpu/sample.js";
import { KernelCache, nvrtcCompiler } from "./compile-cache.js";
import { DeviceAllocator, type DeviceAllocatorStats, type DeviceStorage, driverMemory } from "./device-allocator.js";
import { type CudaDeviceSummary, type SelectDeviceOptions, selectDevice } from "./device.js";
import { CublasLt, type LtHandle } from "./ffi/cublaslt.js";
import { type Context, CudaDriver, DevicePtr, type Func, type Module, type Stream, CU_STREAM_NON_BLOCKING } from "./ffi/driver.js";
import { KernelArgs, type KernelArgValue } from "./ffi/kernel-args.js";
import { Nvrtc } from "./ffi/nvrtc.js";
import {
  BIAS_ADD,
  EMBEDDING,
  GATHER_ROWS,
  KERNEL_NVRTC_OPTIONS,
  type KernelDType,
  type KernelSpec,
  PAGED_ATTENTION,
  PAGED_ATTENTION_COMBINE,
  pagedAttentionPlan,
  RMS_NORM,
  RMS_NORM_WARP,
  ROPE_CACHE_WRITE,
  SILU_AND_MUL,
  type TemplateArgs,
  kernelProgram,
  nameExpression,
} from "./kernels/manifest.js";
import { LinearGemm } from "./linear-gemm.js";

/** The dtypes activations and the KV cache can be kept in. */
export type CudaActivationDType = "bf16" | "f16" | "f32";

export interface CudaBackendOptions extends SelectDeviceOptions {
  /** Device ordinal (default 0). */
  device?: number;
  /** Activation and KV-cache dtype (default bf16). */
  activationDType?: CudaActivationDType;
  /** Scratch for cuBLASLt and split-KV attention (default 32 MiB, what Hopper GEMMs want). */
  workspaceBytes?: number;
  /** Folder of the compiled-kernel cache (default defaultKernelCacheDir()). */
  kernelCacheDir?: string;
  /** Told about kernel-cache problems and library version mismatches (default console.warn). */
  onWarning?: (message: string) => void;
}

export const DEFAULT_WORKSPACE_BYTES = 32 << 20;
/** rms_norm_warp (one warp per row) is the faster kernel up to this row length. */
const WARP_NORM_MAX_DIM = 256;
/** paged_attention's HEAD_DIM limit (static shared memory). */
const MAX_HEAD_DIM = 128;

interface LoadedKernel {
  readonly expr: string;
  readonly spec: KernelSpec;
  readonly func: Func;
  readonly args: KernelArgs;
}

/** Everything create() sets up, in the order dispose() undoes it backwards. */
interface CudaParts {
  driver: CudaDriver;
  nvrtc: Nvrtc;
  lt: CublasLt;
  summary: CudaDeviceSummary;
  context: Context;
  stream: Stream;
  ltHandle: LtHandle;
  allocator: DeviceAllocator;
  workspace: DeviceStorage;
  cache: KernelCache;
  activationDType: CudaActivationDType;
}

export class CudaBackend implements Backend {
  readonly name = "cuda";
  readonly capabilities: BackendCapabilities = {
    hostMemory: false,
    anyWeightDType: false,
    threads: 1,
    kvCacheDTypes: [],
    syncReadback: true,
  };
  readonly activationDType: DType;
  /** The GPU in use, as device selection described it. */
  readonly device: CudaDeviceSummary;

  private readonly driver: CudaDriver;
  private readonly lt: CublasLt;
  private readonly context: Context;
  private readonly stream: Stream;
  private readonly ltHandle: LtHandle;
  private readonly allocator: DeviceAllocator;
  private readonly workspace: DeviceStorage;
  private readonly cache: KernelCache;
  private readonly gemm: LinearGemm;
  private readonly kernels = new Map<string, LoadedKernel>();
  private readonly modules: Module[] = [];
  private readonly programs = new Map<string, ReturnType<typeof kernelProgram>>();
  private disposed = false;

  private constructor(p: CudaParts) {
    this.driver = p.driver;
    this.lt = p.lt;
    this.device = p.summary;
    this.context = p.context;
    this.stream = p.stream;
    this.ltHandle = p.ltHandle;
    this.allocator = p.allocator;
    this.workspace = p.workspace;
    this.cache = p.cache;
    this.activationDType = p.activationDType;
    this.gemm = new LinearGemm(p.lt, p.ltHandle, p.workspace.handle);
  }

  /**
   * Opens the GPU the way `--device cuda` does: selectDevice("cuda") finds the driver, a GPU,
   * NVRTC and cuBLASLt, and throws DeviceUnavailableError saying what is missing otherwise.
   */
  static create(options: CudaBackendOptions = {}): CudaBackend {
    const activationDType = options.activationDType ?? "bf16";
    if (!["bf16", "f16", "f32"].includes(activationDType)) {
      throw new Error(`CudaBackend: activationDType "${activationDType}" is not supported; expected bf16, f16 or f32`);
    }
    const workspaceBytes = options.workspaceBytes ?? DEFAULT_WORKSPACE_BYTES;
    if (!Number.isSafeInteger(workspaceBytes) || workspaceBytes < 1 << 20) {
      throw new RangeError(`CudaBackend: workspaceBytes ${workspaceBytes}; expected an integer of at least 1 MiB`);
    }
    const selection = selectDevice("cuda", options);
    const ordinal = options.device ?? 0;
    const summary = selection.devices?.[ordinal];
    if (!summary) {
      throw new Error(
        `CudaBackend: device ${ordinal} does not exist; expected an ordinal below ${selection.devices?.length ?? 0} (${selection.reason})`,
      );
    }
    const warn = options.onWarning ?? ((m: string) => console.warn(m));
    for (const w of selection.warnings ?? []) warn(w);
    const libs = selection.libraries ?? {};
    const driver = CudaDriver.load({ ...options, path: libs.cuda });
    driver.init();
    const nvrtc = Nvrtc.load({ ...options, path: libs.nvrtc });
    const lt = CublasLt.load({ ...options, path: libs.cublasLt });

    // Undo what was set up so far if a later step fails, so a failed create leaks nothing.
    const undo: (() => void)[] = [];
    try {
      const context = driver.retainPrimaryContext(ordinal);
      undo.push(() => driver.releasePrimaryContext(context));
      const stream = driver.streamCreate(CU_STREAM_NON_BLOCKING);
      undo.push(() => driver.streamDestroy(stream));
      const ltHandle = lt.create();
      undo.push(() => lt.destroy(ltHandle));
      const allocator = new DeviceAllocator(driverMemory(driver), { deviceName: `${summary.name} (device ${ordinal})` });
      undo.push(() => allocator.releaseAll());
      const workspace = allocator.allocate(workspaceBytes, "workspace", "cuBLASLt and split-KV attention workspace");
      const cache = new KernelCache({ compiler: nvrtcCompiler(nvrtc), dir: options.kernelCacheDir, onWarning: warn });
      return new CudaBackend({ driver, nvrtc, lt, summary, context, stream, ltHandle, allocator, workspace, cache, activationDType });
    } catch (err) {
      for (const fn of undo.reverse()) {
        try {
          fn();
        } catch {
          // keep the original error
        }
      }
      throw err;
    }
  }

  // ---------------------------------------------------------------- memory

  /** Allocations are zero-filled (on the stream), as the CPU backend's are. */
  alloc(shape: readonly number[], dtype: DType, tag: MemoryTag, label: string): Tensor {
    this.checkLive();
    for (const d of shape) {
      if (!Number.isSafeInteger(d) || d < 0)
        throw new RangeError(`alloc "${label}": shape [${shape}]; expected non-negative integer sizes`);
    }
    const numel = shape.reduce((a, b) => a * b, 1);
    const storage = this.allocator.allocate(numel * dtypeBytes(dtype), tag, label);
    if (storage.bytes > 0) this.driver.memsetD8Async(storage.handle, 0, storage.bytes, this.stream);
    return new Tensor(storage, dtype, shape);
  }

  free(storage: Storage): void {
    this.checkLive();
    this.allocator.free(storage);
  }

  writeBytes(dst: Tensor, bytes: Uint8Array): void {
    this.checkLive();
    const need = dst.numel * dtypeBytes(dst.dtype);
    if (!dst.isContiguous || bytes.byteLength !== need) {
      throw new Error(`writeBytes: ${bytes.byteLength} bytes into ${dst}; expected ${need} bytes into a contiguous tensor`);
    }
    if (need === 0) return;
    this.driver.memcpyHtoDAsync(devicePtr(dst).offset(dst.byteOffset, need), bytes, need, this.stream);
    // Pageable source memory: wait so the caller may reuse `bytes` and later reads see the data.
    this.driver.streamSynchronize(this.stream);
  }

  write(dst: Tensor, values: ArrayLike<number>): void {
    if (values.length !== dst.numel) throw new Error(`write: ${values.length} values into ${dst}; expected ${dst.numel}`);
    this.writeBytes(dst, encodeFloats(values, denseDType(dst.dtype, "write")));
  }

  /**
   * Sampling on the host over logits copied back: the CUDA sampling kernels (the same processors, draws
   * and truncation as sample.ts) are the GPU issue's work; until they have run on a device this keeps the
   * CUDA path's results identical to the CPU's.
   */
  sample(logits: Tensor, rows: readonly SampleRow[]): SampleOutput {
    const V = logits.shape[1]!;
    const host = this.read(logits.rows(0, rows.length));
    return sampleRows(host, 0, V, V, rows);
  }

  /** Copies the span the view covers (strided views included) and picks its elements on the host. */
  readAsync(src: Tensor): Promise<Float32Array> {
    return settled(() => this.read(src));
  }

  sampleAsync(logits: Tensor, rows: readonly SampleRow[]): Promise<SampleOutput> {
    return settled(() => this.sample(logits, rows));
  }

  read(src: Tensor): Float32Array {
    this.checkLive();
    const n = src.numel;
    if (n === 0) return new Float32Array(0);
    let span = 1;
    for (let d = 0; d < src.shape.length; d++) {
      if (src.strides[d]! < 0) throw new Error(`read: ${src} has a negative stride; expected non-negative strides`);
      span += (src.shape[d]! - 1) * src.strides[d]!;
    }
    const elem = dtypeBytes(src.dtype);
    const bytes = new Uint8Array(span * elem);
    this.driver.memcpyDtoHAsync(bytes, devicePtr(src).offset(src.byteOffset, bytes.byteLength), bytes.byteLength, this.stream);
    this.driver.streamSynchronize(this.stream);
    const all = decodeFloats(bytes, denseDType(src.dtype, "read"), span);
    if (src.isContiguous) return all.length === n ? all : all.slice(0, n);
    const out = new Float32Array(n);
    const idx = new Array<number>(src.shape.length).fill(0);
    for (let i = 0; i < n; i++) {
      let o = 0;
      for (let d = 0; d < idx.length; d++) o += idx[d]! * src.strides[d]!;
      out[i] = all[o]!;
      for (let d = idx.length - 1; d >= 0; d--) {
        if (++idx[d]! < src.shape[d]!) break;
        idx[d] = 0;
      }
    }
    return out;
  }

  memoryStats(): MemoryStats {
    return this.allocator.memoryStats();
  }

  memoryReport(): MemoryReport {
    const info = this.driver.memGetInfo();
    return {
      stats: this.allocator.memoryStats(),
      allocations: this.allocator.storages().map((s) => ({ tag: s.tag, label: s.label, bytes: s.bytes })),
      device: { name: `${this.device.name} (device ${this.device.ordinal})`, totalBytes: info.total, freeBytes: info.free },
    };
  }

  /** The caching allocator's own figures: reserved vs allocated, peaks, cache size. */
  allocatorStats(): DeviceAllocatorStats {
    return this.allocator.stats();
  }

  /** Returns cached, wholly free segments to the device (e.g. after a profiling pass). */
  emptyCache(): number {
    this.synchronize();
    return this.allocator.emptyCache();
  }

  // ---------------------------------------------------------------- ops

  embedding(out: Tensor, ids: Tensor, table: Tensor): void {
    const [vocab, hidden] = dims2("embedding table", table);
    const T = ids.numel;
    expectIndices("embedding ids", ids);
    expectRows("embedding out", out, T, hidden);
    if (T === 0) return;
    const tmpl = { TO: floatType("embedding out", out), TT: floatType("embedding table", table) };
    this.launch(EMBEDDING, tmpl, { numTokens: T }, [addr(out), out.rowStride, addr(ids), addr(table), table.rowStride, hidden, vocab, T]);
  }

  rmsNorm(out: Tensor, x: Tensor, weight: Tensor, eps: number, residual?: Tensor): void {
    const D = weight.numel;
    expectVector("rmsNorm weight", weight, D);
    const xr = normRows("rmsNorm x", x, D);
    const or = normRows("rmsNorm out", out, D);
    const rr = residual ? normRows("rmsNorm residual", residual, D) : null;
    if (or.rows !== xr.rows || or.heads !== xr.heads || (rr && (rr.rows !== xr.rows || rr.heads !== xr.heads))) {
      throw new Error(`rmsNorm: shapes differ: x ${x}, out ${out}${residual ? `, residual ${residual}` : ""}; expected the same rows`);
    }
    const T = floatType("rmsNorm x", x);
    sameDType("rmsNorm", T, out, residual);
    if (xr.rows === 0) return;
    const spec = D <= WARP_NORM_MAX_DIM ? RMS_NORM_WARP : RMS_NORM;
    this.launch(spec, { T, W: floatType("rmsNorm weight", weight) }, { numRows: xr.rows, dim: D }, [
      addr(out),
      or.strideT,
      or.strideH,
      addr(x),
      xr.strideT,
      xr.strideH,
      residual ? addr(residual) : 0n,
      rr ? rr.strideT : 0,
      rr ? rr.strideH : 0,
      addr(weight),
      xr.rows,
      xr.heads,
      D,
      eps,
    ]);
  }

  linear(out: Tensor, x: Tensor, weight: Tensor, bias?: Tensor): void {
    const [N, K] = dims2("linear weight", weight);
    const [M] = dims2("linear x", x);
    expectRows("linear x", x, M, K);
    expectRows("linear out", out, M, N);
    const dtype = floatType("linear x", x);
    sameDType("linear", dtype, out);
    if (weight.dtype !== dtype) {
      throw new Error(
        `linear: weight ${weight} is ${weight.dtype} but the activations are ${dtype}; the CUDA backend multiplies in one dtype, ` +
          `so load weights in the activation dtype (--dtype ${dtype})`,
      );
    }
    if (bias) expectVector("linear bias", bias, N);
    if (M === 0) return;
    // The epilogue takes a bias in the output dtype; any other bias dtype is added by bias_add afterwards.
    const fused = bias !== undefined && bias.dtype === dtype;
    this.gemm.run(
      {
        dtype,
        m: M,
        n: N,
        k: K,
        out: addr(out),
        outStride: out.rowStride,
        x: addr(x),
        xStride: x.rowStride,
        w: addr(weight),
        wStride: weight.rowStride,
        bias: fused ? addr(bias) : null,
      },
      this.stream,
    );
    if (bias && !fused) {
      this.launch(BIAS_ADD, { T: dtype, W: floatType("linear bias", bias) }, { numRows: M, cols: N }, [
        addr(out),
        out.rowStride,
        addr(bias),
        M,
        N,
      ]);
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
  ): void {
    const [, , Hkv, D] = cacheDims("ropeAndCacheWrite kCache", kCache);
    expectSameShape("ropeAndCacheWrite vCache", vCache, kCache);
    const T = positions.numel;
    expectIndices("ropeAndCacheWrite positions", positions);
    expectIndices("ropeAndCacheWrite slotMapping", slotMapping, T);
    const [, Hq] = heads3("ropeAndCacheWrite q", q, T, undefined, D);
    heads3("ropeAndCacheWrite k", k, T, Hkv, D);
    heads3("ropeAndCacheWrite v", v, T, Hkv, D);
    const dtype = floatType("ropeAndCacheWrite q", q);
    sameDType("ropeAndCacheWrite", dtype, k, v, kCache, vCache);
    const half = rope.rotaryDim / 2;
    if (!Number.isInteger(half) || half <= 0 || rope.rotaryDim > D) {
      throw new Error(`ropeAndCacheWrite: rotaryDim ${rope.rotaryDim}; expected an even number of at most the head size ${D}`);
    }
    for (const [name, t] of [
      ["cos", rope.cos],
      ["sin", rope.sin],
    ] as const) {
      if (t.dtype !== "f32" || !t.isContiguous || t.numel < rope.maxPositions * half) {
        throw new Error(`ropeAndCacheWrite: rope.${name} is ${t}; expected a contiguous f32 [${rope.maxPositions}, ${half}] table`);
      }
    }
    if (T === 0) return;
    this.launch(ROPE_CACHE_WRITE, { T: dtype }, { numTokens: T, numHeads: Hq, numKvHeads: Hkv, rotDim: rope.rotaryDim }, [
      addr(q),
      q.strides[0]!,
      q.strides[1]!,
      addr(k),
      k.strides[0]!,
      k.strides[1]!,
      addr(v),
      v.strides[0]!,
      v.strides[1]!,
      addr(positions),
      addr(rope.cos),
      addr(rope.sin),
      rope.rotaryDim,
      rope.maxPositions,
      addr(slotMapping),
      addr(kCache),
      addr(vCache),
      T,
      Hq,
      Hkv,
      D,
    ]);
  }

  pagedAttention(out: Tensor, q: Tensor, kCache: Tensor, vCache: Tensor, meta: AttentionMetadata, scale: number): void {
    const [, blockSize, Hkv, D] = cacheDims("pagedAttention kCache", kCache);
    expectSameShape("pagedAttention vCache", vCache, kCache);
    const T = q.shape[0] ?? 0;
    const [, Hq] = heads3("pagedAttention q", q, T, undefined, D);
    heads3("pagedAttention out", out, T, Hq, D);
    if (Hq % Hkv !== 0) throw new Error(`pagedAttention: ${Hq} query heads is not a multiple of ${Hkv} KV heads`);
    if (D % 8 !== 0 || D > MAX_HEAD_DIM) throw new Error(`pagedAttention: head size ${D}; expected a multiple of 8 up to ${MAX_HEAD_DIM}`);
    const dtype = floatType("pagedAttention q", q);
    sameDType("pagedAttention", dtype, out, kCache, vCache);
    for (const [name, t] of [
      ["kCache", kCache],
      ["vCache", vCache],
    ] as const) {
      if (addr(t) % 16n !== 0n) throw new Error(`pagedAttention: ${name} ${t} starts at an address not 16-byte aligned`);
    }
    const S = meta.numSeqs;
    expectIndices("pagedAttention queryStartLoc", meta.queryStartLoc, S + 1);
    expectIndices("pagedAttention seqLens", meta.seqLens, S);
    const bt = meta.blockTables;
    if (bt.dtype !== "i32" || bt.shape.length !== 2 || bt.shape[0]! < S || (bt.shape[1]! > 1 && bt.strides[1] !== 1)) {
      throw new Error(`pagedAttention: blockTables is ${bt}; expected i32 [numSeqs ≥ ${S}, maxBlocks] with contiguous rows`);
    }
    if (T === 0 || S === 0) return;
    // Tiling is a performance choice only (any plan is correct). The longest query is not known on
    // the host without reading queryStartLoc back; T − S + 1 bounds it when each sequence has a row.
    const plan = pagedAttentionPlan({
      numTokens: T,
      numSeqs: S,
      numHeads: Hq,
      numKvHeads: Hkv,
      headDim: D,
      maxQueryLen: Math.max(1, T - S + 1),
      maxSeqLen: meta.maxSeqLen,
      numSms: this.device.multiprocessorCount,
    });
    // Split-KV partials live in the shared workspace: use fewer splits rather than allocate.
    const perSplit = T * Hq * (D + 1) * 4 + 256;
    const numSplits = Math.max(1, Math.min(plan.numSplits, Math.floor(this.workspace.bytes / perSplit)));
    const ws = this.workspace.handle.address;
    const partialOut = numSplits > 1 ? ws : 0n;
    const partialLse = numSplits > 1 ? ws + BigInt(alignUp(numSplits * T * Hq * D * 4, 256)) : 0n;
    const tmpl = { T: dtype, HEAD_DIM: D, QPW: plan.qpw };
    this.launch(PAGED_ATTENTION, tmpl, { numTokens: T, numSeqs: S, numHeads: Hq, numKvHeads: Hkv, numSplits }, [
      addr(out),
      out.strides[0]!,
      out.strides[1]!,
      addr(q),
      q.strides[0]!,
      q.strides[1]!,
      addr(kCache),
      addr(vCache),
      addr(meta.queryStartLoc),
      addr(meta.seqLens),
      addr(bt),
      bt.rowStride,
      S,
      Hq,
      Hkv,
      blockSize,
      scale,
      partialOut,
      partialLse,
      T,
    ]);
    if (numSplits > 1) {
      this.launch(PAGED_ATTENTION_COMBINE, { T: dtype }, { numTokens: T, numHeads: Hq, headDim: D }, [
        addr(out),
        out.strides[0]!,
        out.strides[1]!,
        partialOut,
        partialLse,
        addr(meta.queryStartLoc),
        S,
        T,
        Hq,
        D,
        numSplits,
      ]);
    }
  }

  siluAndMul(out: Tensor, x: Tensor): void {
    const [T, I] = dims2("siluAndMul out", out);
    expectRows("siluAndMul x", x, T, 2 * I);
    const dtype = floatType("siluAndMul x", x);
    sameDType("siluAndMul", dtype, out);
    if (T === 0 || I === 0) return;
    this.launch(SILU_AND_MUL, { T: dtype }, { numRows: T, inter: I }, [addr(out), out.rowStride, addr(x), x.rowStride, T, I]);
  }

  gatherRows(out: Tensor, x: Tensor, indices: Tensor): void {
    const R = indices.numel;
    const [rows, F] = dims2("gatherRows x", x);
    expectIndices("gatherRows indices", indices);
    expectRows("gatherRows out", out, R, F);
    const dtype = floatType("gatherRows x", x);
    sameDType("gatherRows", dtype, out);
    if (R === 0) return;
    this.launch(GATHER_ROWS, { T: dtype }, { numRows: R }, [addr(out), out.rowStride, addr(x), x.rowStride, addr(indices), R, rows, F]);
  }

  synchronize(): void {
    this.checkLive();
    this.driver.streamSynchronize(this.stream);
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    // Finish queued work before freeing what it uses; then undo create() in reverse.
    this.driver.setCurrent(this.context);
    this.driver.streamSynchronize(this.stream);
    this.gemm.dispose();
    for (const m of this.modules) this.driver.moduleUnload(m);
    this.modules.length = 0;
    this.kernels.clear();
    this.allocator.releaseAll();
    this.lt.destroy(this.ltHandle);
    this.driver.streamDestroy(this.stream);
    this.driver.releasePrimaryContext(this.context);
  }

  // ---------------------------------------------------------------- kernels

  /**
   * Compiles (or loads from the cache) one instantiation the first time it is used. Each
   * instantiation is its own NVRTC program so only what is used is ever compiled.
   */
  private kernel(spec: KernelSpec, template: TemplateArgs): LoadedKernel {
    const expr = nameExpression(spec, template);
    const known = this.kernels.get(expr);
    if (known) return known;
    let program = this.programs.get(spec.file);
    if (!program) {
      program = kernelProgram(spec.file);
      this.programs.set(spec.file, program);
    }
    const compiled = this.cache.get(program.source, {
      name: spec.file,
      arch: this.device.compileTarget,
      options: KERNEL_NVRTC_OPTIONS,
      headers: program.headers,
      nameExpressions: [expr],
    });
    const symbol = compiled.loweredNames[expr];
    if (!symbol) throw new Error(`compiling ${spec.file} for ${this.device.compileTarget} gave no symbol for ${expr}`);
    const module = this.driver.moduleLoadData(compiled.image, `${expr} (${compiled.kind} for ${compiled.arch})`);
    this.modules.push(module);
    const loaded: LoadedKernel = {
      expr,
      spec,
      func: this.driver.moduleGetFunction(module, symbol),
      args: new KernelArgs(spec.args.map((a) => a.type)),
    };
    this.kernels.set(expr, loaded);
    return loaded;
  }

  /** Packs `values` (in the manifest's argument order) into the kernel's reused kernelParams and launches it on the stream. */
  private launch(
    spec: KernelSpec,
    template: TemplateArgs,
    sizes: Readonly<Record<string, number>>,
    values: readonly KernelArgValue[],
  ): void {
    this.checkLive();
    const k = this.kernel(spec, template);
    if (values.length !== spec.args.length) {
      throw new Error(
        `${k.expr}: ${values.length} arguments packed; the manifest lists ${spec.args.length} (${spec.args.map((a) => a.name).join(", ")})`,
      );
    }
    for (const name of spec.launchSizes) {
      if (!Number.isInteger(sizes[name]) || sizes[name]! <= 0)
        throw new Error(`${k.expr}: launch size ${name} = ${sizes[name]}; expected a positive integer`);
    }
    const { grid, block, sharedBytes } = spec.launch(sizes as Record<string, number>, template);
    k.args.setAll(values);
    this.driver.launch(k.func, grid, block, sharedBytes, this.stream, k.args);
  }

  private checkLive(): void {
    if (this.disposed) throw new Error("CudaBackend: used after dispose()");
  }
}

// ---------------------------------------------------------------- tensor checks

function devicePtr(t: Tensor): DevicePtr {
  const h = t.storage.handle;
  if (!(h instanceof DevicePtr))
    throw new Error(`${t} does not live on a CUDA device (storage "${t.storage.label}"); expected a CudaBackend tensor`);
  return h;
}

/** Device address of a tensor's first element. */
function addr(t: Tensor): bigint {
  return devicePtr(t).address + BigInt(t.byteOffset);
}

function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

function floatType(what: string, t: Tensor): KernelDType {
  if (!isFloatType(t.dtype)) throw new Error(`${what}: ${t} is ${t.dtype}; expected a float tensor (f32, f16 or bf16)`);
  return t.dtype;
}

function sameDType(op: string, dtype: DType, ...tensors: (Tensor | undefined)[]): void {
  for (const t of tensors) {
    if (t && t.dtype !== dtype) throw new Error(`${op}: ${t} is ${t.dtype}; expected ${dtype} like the op's input`);
  }
}

function dims2(what: string, t: Tensor): [number, number] {
  if (t.shape.length !== 2) throw new Error(`${what}: expected a 2-D tensor, got ${t}`);
  if (t.shape[1]! > 1 && t.strides[1] !== 1)
    throw new Error(`${what}: ${t} has strides [${t.strides}]; expected a contiguous last dimension`);
  return [t.shape[0]!, t.shape[1]!];
}

/** A 2-D [rows, cols] view with a contiguous last dimension. */
function expectRows(what: string, t: Tensor, rows: number, cols: number): void {
  const [r, c] = dims2(what, t);
  if (r !== rows || c !== cols) throw new Error(`${what}: expected shape [${rows}, ${cols}], got [${t.shape}]`);
}

function expectVector(what: string, t: Tensor, n: number): void {
  if (t.numel !== n || !t.isContiguous) throw new Error(`${what}: expected a contiguous tensor of ${n} elements, got ${t}`);
}

/** A contiguous i32 tensor of `count` elements (any count when omitted). */
function expectIndices(what: string, t: Tensor, count?: number): void {
  if (t.dtype !== "i32" || !t.isContiguous || (count !== undefined && t.numel < count)) {
    throw new Error(`${what}: expected a contiguous i32 tensor${count !== undefined ? ` of ${count} elements` : ""}, got ${t}`);
  }
}

/** A 3-D [tokens, heads, headDim] view with a contiguous last dimension; returns [tokens, heads]. */
function heads3(what: string, t: Tensor, tokens: number, heads: number | undefined, headDim: number): [number, number] {
  const ok =
    t.shape.length === 3 &&
    t.shape[0] === tokens &&
    (heads === undefined || t.shape[1] === heads) &&
    t.shape[2] === headDim &&
    t.strides[2] === 1;
  if (!ok)
    throw new Error(
      `${what}: expected [${tokens}, ${heads ?? "heads"}, ${headDim}] with a contiguous last dimension, got ${t} strides [${t.strides}]`,
    );
  return [t.shape[0]!, t.shape[1]!];
}

function cacheDims(what: string, t: Tensor): [number, number, number, number] {
  if (t.shape.length !== 4 || !t.isContiguous)
    throw new Error(`${what}: expected a contiguous [blocks, blockSize, kvHeads, headDim] cache, got ${t}`);
  return t.shape as unknown as [number, number, number, number];
}

function expectSameShape(what: string, t: Tensor, like: Tensor): void {
  if (t.shape.length !== like.shape.length || t.shape.some((d, i) => d !== like.shape[i]) || !t.isContiguous) {
    throw new Error(`${what}: expected a contiguous tensor of shape [${like.shape}], got ${t}`);
  }
}

/** The rows of a 2-D [t, D] or 3-D [t, h, D] view, as the rms_norm kernels address them. */
function normRows(what: string, t: Tensor, D: number): { rows: number; heads: number; strideT: number; strideH: number } {
  const last = t.shape.length - 1;
  if ((t.shape.length !== 2 && t.shape.length !== 3) || t.shape[last] !== D || (D > 1 && t.strides[last] !== 1)) {
    throw new Error(`${what}: expected a 2-D or 3-D tensor with contiguous last dimension ${D}, got ${t} strides [${t.strides}]`);
  }
  if (t.shape.length === 2) return { rows: t.shape[0]!, heads: 1, strideT: t.strides[0]!, strideH: 0 };
  return { rows: t.shape[0]! * t.shape[1]!, heads: t.shape[1]!, strideT: t.strides[0]!, strideH: t.strides[1]! };
}
