/**
 * How an op becomes a dispatch. A kernel names its tensors (read or written), its scalar parameters and
 * its WGSL body; this module turns that into bindings, a pipeline and a bind group, all cached:
 *
 * - Tensors that share a storage (views of one activation arena, q/k/v of a fused projection, an
 *   in-place norm) share one binding, because WebGPU forbids a writable binding that aliases another.
 *   The binding is a window of the buffer aligned to the device's offset alignment that covers all of
 *   them; each tensor's element offset inside the window is a parameter, so every view works.
 * - Element access goes through generated helpers, `ld_NAME(i) -> f32` and `st_NAME(i, v)`, specialised
 *   for the tensor's dtype: f32 and f16 arrays as they are, bf16 (and f16 without `shader-f16`) as
 *   packed u32 pairs, i32 as i32; block-quantized weights as raw u32 words (`wd_NAME(word)`).
 * - Scalar parameters live in one uniform buffer per submission, one 256-byte slot per dispatch,
 *   bound with a dynamic offset: the bind group depends only on the buffers, so it is built once.
 * - Workgroup counts past the per-dimension limit are folded into two dimensions; bodies see one
 *   linear `wid`.
 * - Pipelines are keyed by the op's own key plus everything generated here (dtypes, aliasing, workgroup
 *   size, features), so a pipeline is compiled once per adapter and shape class.
 */
import { type DType, elementType } from "../dtype.js";
import type { Tensor } from "../tensor.js";
import type { WebGpuContext } from "./context.js";

export type ParamType = "u32" | "i32" | "f32";

export interface KernelTensor {
  t: Tensor;
  write?: boolean;
  /** Bind as raw u32 words whatever the dtype (block formats always are). */
  raw?: boolean;
}

export interface KernelSpec {
  /** The op's name, for timings and errors. */
  name: string;
  /** Everything `body` and `decls` depend on beyond the tensors' dtypes (shapes baked in, variants). */
  key: string;
  tensors: Record<string, KernelTensor>;
  params: Record<string, [ParamType, number]>;
  workgroupSize: number;
  workgroups: number;
  /** Module-scope WGSL: workgroup arrays, functions, constants. */
  decls?: string;
  /** The entry point's body. In scope: `wid` (linear workgroup id), `lid` (local index), `p` (parameters). */
  body: string;
}

/** A buffer the backend owns: its id keys the bind-group cache. */
export interface GpuBuffer {
  id: number;
  buffer: GPUBuffer;
  size: number;
}

interface Group {
  buf: GpuBuffer;
  names: string[];
  write: boolean;
  dtype: DType;
  raw: boolean;
  /** Byte window [start, end) of the buffer bound. */
  start: number;
  end: number;
}

interface Compiled {
  pipeline: GPUComputePipeline;
  layout: GPUBindGroupLayout;
}

const PARAM_SLOT = 256;
const PARAM_SLOTS = 2048;

/** Element-index extent of a view: [first, last] relative to its storage. */
export function extent(t: Tensor): [number, number] {
  let last = t.offset;
  for (let i = 0; i < t.shape.length; i++) last += (t.shape[i]! - 1) * t.strides[i]!;
  return [t.offset, t.numel === 0 ? t.offset : last];
}

/** Byte window [start, end) a tensor's elements occupy in its storage. */
export function byteWindow(t: Tensor): [number, number] {
  const e = elementType(t.dtype);
  if (e.kind === "block" || e.kind === "channel") return [t.byteOffset, t.byteOffset + t.byteLength];
  const [first, last] = extent(t);
  return [first * e.blockBytes, (last + 1) * e.blockBytes];
}

/** Dense types are addressed by element; block and per-channel formats by byte. */
function isDense(dtype: DType): boolean {
  const k = elementType(dtype).kind;
  return k === "float" || k === "int";
}

function bytesOf(dtype: DType): number {
  const e = elementType(dtype);
  return e.kind === "float" || e.kind === "int" ? e.blockBytes : 1;
}

/** The WGSL array element type a binding of `dtype` is declared with. */
function arrayType(dtype: DType, raw: boolean, hasF16: boolean): string {
  if (raw) return "u32";
  switch (dtype) {
    case "f32":
      return "f32";
    case "f16":
      return hasF16 ? "f16" : "u32";
    case "i32":
      return "i32";
    default:
      return "u32";
  }
}

export class KernelRunner {
  private readonly device: GPUDevice;
  private pipelines = new Map<string, Compiled>();
  private bindGroups = new Map<string, GPUBindGroup>();
  private groupsOfBuffer = new Map<number, Set<string>>();
  private readonly params: GPUBuffer;
  private readonly paramHost = new ArrayBuffer(PARAM_SLOT * PARAM_SLOTS);
  private paramSlots = 0;
  private encoder: GPUCommandEncoder | null = null;
  private pass: GPUComputePassEncoder | null = null;
  /** Dispatches since the context was made (for tests and the benchmark). */
  dispatches = 0;
  /** Submissions since the context was made: one per engine step when nothing forces a flush. */
  submits = 0;
  /** When set, each dispatch gets its own pass with timestamps; the benchmark reads them. */
  profiler: Profiler | null = null;

  constructor(readonly ctx: WebGpuContext) {
    this.device = ctx.device;
    this.params = this.device.createBuffer({
      label: "kernel parameters",
      size: PARAM_SLOT * PARAM_SLOTS,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    });
  }

  get pending(): boolean {
    return this.encoder !== null;
  }

  /** The encoder of the current submission (opened on demand); a copy must end the compute pass first. */
  commandEncoder(): GPUCommandEncoder {
    this.endPass();
    this.encoder ??= this.device.createCommandEncoder();
    return this.encoder;
  }

  private endPass(): void {
    this.pass?.end();
    this.pass = null;
  }

  /** Submit everything encoded so far, its parameters written first. */
  flush(): void {
    if (!this.encoder) return;
    this.endPass();
    if (this.paramSlots > 0) this.device.queue.writeBuffer(this.params, 0, this.paramHost, 0, this.paramSlots * PARAM_SLOT);
    this.profiler?.resolve(this.encoder);
    this.device.queue.submit([this.encoder.finish()]);
    this.encoder = null;
    this.paramSlots = 0;
    this.submits++;
  }

  /** A buffer is going away: drop the bind groups that name it. */
  forget(buf: GpuBuffer): void {
    const keys = this.groupsOfBuffer.get(buf.id);
    if (!keys) return;
    for (const k of keys) this.bindGroups.delete(k);
    this.groupsOfBuffer.delete(buf.id);
  }

  dispose(): void {
    this.params.destroy();
    this.pipelines.clear();
    this.bindGroups.clear();
  }

  dispatch(spec: KernelSpec): void {
    if (spec.workgroups <= 0) return;
    const groups = this.groupTensors(spec);
    const compiled = this.compile(spec, groups);
    const bindGroup = this.bindGroup(spec, groups, compiled);
    if (this.paramSlots === PARAM_SLOTS || this.profiler?.full) this.flush();
    const slot = this.paramSlots++;
    this.writeParams(spec, groups, slot);
    const maxDim = this.ctx.limits.maxComputeWorkgroupsPerDimension;
    const x = Math.min(spec.workgroups, maxDim);
    const y = Math.ceil(spec.workgroups / x);
    if (y > maxDim) throw new RangeError(`${spec.name}: ${spec.workgroups} workgroups exceed ${maxDim}² on this adapter`);
    const encoder = this.encoder ?? (this.encoder = this.device.createCommandEncoder());
    let pass: GPUComputePassEncoder;
    if (this.profiler) {
      this.endPass();
      pass = encoder.beginComputePass({ timestampWrites: this.profiler.next(spec.name) });
    } else {
      pass = this.pass ?? (this.pass = encoder.beginComputePass());
    }
    pass.setPipeline(compiled.pipeline);
    pass.setBindGroup(0, bindGroup, [slot * PARAM_SLOT]);
    pass.dispatchWorkgroups(x, y);
    if (this.profiler) pass.end();
    this.dispatches++;
  }

  /**
   * One binding per tensor, merged where windows of one buffer overlap (writable bindings may not alias),
   * so views far apart in a large arena bind small windows each. Past the adapter's binding count, every
   * buffer gets one binding over all its tensors.
   */
  private groupTensors(spec: KernelSpec): Group[] {
    const align = this.ctx.limits.minStorageBufferOffsetAlignment;
    const single: (Group & { order: number })[] = Object.entries(spec.tensors).map(([name, kt], order) => {
      const [s, e] = byteWindow(kt.t);
      const start = s - (s % align);
      const buf = kt.t.storage.handle as GpuBuffer;
      const end = Math.max(start + 4, Math.min(buf.size, Math.ceil(e / 4) * 4));
      const raw = kt.raw === true || !isDense(kt.t.dtype);
      return { buf, names: [name], write: kt.write === true, dtype: kt.t.dtype, raw, start, end, order };
    });
    const merge = (into: Group, g: Group) => {
      if (into.dtype !== g.dtype || into.raw !== g.raw) {
        throw new Error(
          `${spec.name}: tensors ${into.names[0]} (${into.dtype}) and ${g.names[0]} (${g.dtype}) share a storage in different dtypes`,
        );
      }
      into.names.push(...g.names);
      into.write ||= g.write;
      into.start = Math.min(into.start, g.start);
      into.end = Math.max(into.end, g.end);
    };
    const byBuffer = (overlapOnly: boolean) => {
      const out: (Group & { order: number })[] = [];
      for (const g of [...single].sort((x, y) => x.buf.id - y.buf.id || x.start - y.start)) {
        const last = out[out.length - 1];
        if (last && last.buf === g.buf && (!overlapOnly || g.start < last.end)) {
          merge(last, g);
          last.order = Math.min(last.order, g.order);
        } else out.push({ ...g, names: [...g.names] });
      }
      return out.sort((x, y) => x.order - y.order);
    };
    let groups: Group[] = byBuffer(true);
    if (groups.length > this.ctx.limits.maxStorageBuffersPerShaderStage) groups = byBuffer(false);
    if (groups.length > this.ctx.limits.maxStorageBuffersPerShaderStage)
      throw new RangeError(
        `${spec.name}: ${groups.length} storage bindings, beyond the adapter's ${this.ctx.limits.maxStorageBuffersPerShaderStage}`,
      );
    // Usage is tracked per buffer: a read-only binding beside a writable one of the same buffer is invalid.
    const written = new Set(groups.filter((g) => g.write).map((g) => g.buf));
    for (const g of groups) g.write ||= written.has(g.buf);
    const maxBinding = this.ctx.limits.maxStorageBufferBindingSize;
    for (const g of groups) {
      if (g.end - g.start > maxBinding) {
        throw new RangeError(
          `${spec.name}: ${g.names.join(", ")} span ${g.end - g.start} bytes, beyond this adapter's maxStorageBufferBindingSize ${maxBinding}`,
        );
      }
    }
    return groups;
  }

  private pipelineKey(spec: KernelSpec, groups: Group[]): string {
    const g = groups.map((x) => `${x.names.join("+")}:${x.dtype}${x.raw ? "r" : ""}${x.write ? "w" : ""}`).join(",");
    const p = Object.entries(spec.params)
      .map(([n, [t]]) => `${n}:${t}`)
      .join(",");
    return `${spec.name}|${spec.key}|${g}|${p}|wg${spec.workgroupSize}`;
  }

  private compile(spec: KernelSpec, groups: Group[]): Compiled {
    const key = this.pipelineKey(spec, groups);
    const hit = this.pipelines.get(key);
    if (hit) return hit;
    const code = this.wgsl(spec, groups);
    const module = this.device.createShaderModule({ label: spec.name, code });
    const layout = this.device.createBindGroupLayout({
      label: spec.name,
      entries: [
        ...groups.map((g, i) => ({
          binding: i,
          visibility: GPUShaderStage.COMPUTE,
          buffer: { type: (g.write ? "storage" : "read-only-storage") as GPUBufferBindingType },
        })),
        {
          binding: groups.length,
          visibility: GPUShaderStage.COMPUTE,
          buffer: { type: "uniform" as GPUBufferBindingType, hasDynamicOffset: true },
        },
      ],
    });
    const pipeline = this.device.createComputePipeline({
      label: spec.name,
      layout: this.device.createPipelineLayout({ bindGroupLayouts: [layout] }),
      compute: { module, entryPoint: "main" },
    });
    const compiled = { pipeline, layout };
    this.pipelines.set(key, compiled);
    return compiled;
  }

  /** The generated module: enables, bindings, the parameter struct, access helpers, then the op's code. */
  wgsl(spec: KernelSpec, groups: Group[]): string {
    const { hasF16 } = this.ctx;
    const lines: string[] = [];
    if (hasF16) lines.push("enable f16;");
    if (this.ctx.hasSubgroups && /subgroup/.test(spec.body + (spec.decls ?? ""))) lines.push("enable subgroups;");
    const fields: string[] = [];
    groups.forEach((g, i) => {
      const ty = arrayType(g.dtype, g.raw, hasF16);
      lines.push(`@group(0) @binding(${i}) var<storage, ${g.write ? "read_write" : "read"}> b${i}: array<${ty}>;`);
      for (const n of g.names) fields.push(`off_${n}: u32`);
    });
    for (const [n, [t]] of Object.entries(spec.params)) fields.push(`${n}: ${t}`);
    lines.push(`struct Params { ${fields.join(", ")}, n_wg: u32 }`);
    lines.push(`@group(0) @binding(${groups.length}) var<uniform> p: Params;`);
    groups.forEach((g, i) => {
      for (const n of g.names) lines.push(...accessors(n, `b${i}`, g.dtype, g.raw, hasF16, spec.tensors[n]!.write === true));
    });
    if (spec.decls) lines.push(spec.decls);
    lines.push(
      `@compute @workgroup_size(${spec.workgroupSize})`,
      "fn main(@builtin(workgroup_id) wg3: vec3<u32>, @builtin(num_workgroups) nwg3: vec3<u32>, @builtin(local_invocation_index) lid: u32) {",
      "  let wid = wg3.x + wg3.y * nwg3.x;",
      "  if (wid >= p.n_wg) { return; }",
      spec.body,
      "}",
    );
    return lines.join("\n");
  }

  private bindGroup(spec: KernelSpec, groups: Group[], compiled: Compiled): GPUBindGroup {
    const key = `${this.pipelineKey(spec, groups)}#${groups.map((g) => `${g.buf.id}@${g.start}+${g.end - g.start}`).join(",")}`;
    const hit = this.bindGroups.get(key);
    if (hit) return hit;
    const bg = this.device.createBindGroup({
      label: spec.name,
      layout: compiled.layout,
      entries: [
        ...groups.map((g, i) => ({ binding: i, resource: { buffer: g.buf.buffer, offset: g.start, size: g.end - g.start } })),
        { binding: groups.length, resource: { buffer: this.params, offset: 0, size: PARAM_SLOT } },
      ],
    });
    this.bindGroups.set(key, bg);
    for (const g of groups) {
      let s = this.groupsOfBuffer.get(g.buf.id);
      if (!s) this.groupsOfBuffer.set(g.buf.id, (s = new Set()));
      s.add(key);
    }
    return bg;
  }

  private writeParams(spec: KernelSpec, groups: Group[], slot: number): void {
    const u = new Uint32Array(this.paramHost, slot * PARAM_SLOT, PARAM_SLOT / 4);
    const i = new Int32Array(this.paramHost, slot * PARAM_SLOT, PARAM_SLOT / 4);
    const f = new Float32Array(this.paramHost, slot * PARAM_SLOT, PARAM_SLOT / 4);
    let w = 0;
    for (const g of groups) {
      for (const n of g.names) {
        const t = spec.tensors[n]!.t;
        // Block and per-channel formats are addressed in bytes, float and integer types in elements.
        u[w++] = (t.byteOffset - g.start) / bytesOf(t.dtype);
      }
    }
    for (const [n, [ty, v]] of Object.entries(spec.params)) {
      if (w >= PARAM_SLOT / 4 - 1) throw new RangeError(`${spec.name}: too many parameters`);
      if (ty === "f32") f[w++] = v;
      else if (ty === "i32") i[w++] = v;
      else {
        if (!(v >= 0 && v <= 0xffffffff && Number.isInteger(v))) throw new RangeError(`${spec.name}: parameter ${n} = ${v} is not a u32`);
        u[w++] = v;
      }
    }
    u[w] = spec.workgroups;
  }
}

/** `ld_NAME(i) -> f32|i32` and, for written tensors, `st_NAME(i, v)`; `wd_NAME(word) -> u32` for raw ones. */
function accessors(n: string, b: string, dtype: DType, raw: boolean, hasF16: boolean, write: boolean): string[] {
  const o = `p.off_${n}`;
  const dense = isDense(dtype);
  if (raw || !dense) {
    // Raw: the offset is in bytes (block formats) or elements of 2 bytes (bf16 / f16 read as words).
    const out = [`fn wd_${n}(w: u32) -> u32 { return ${b}[w]; }`];
    if (dtype === "f16" || dtype === "bf16") out.push(...halfAccessors(n, b, dtype, o, false));
    out.push(`fn base_${n}() -> u32 { return ${o}; }`);
    if (write) out.push(`fn stw_${n}(w: u32, v: u32) { ${b}[w] = v; }`);
    return out;
  }
  switch (dtype) {
    case "f32":
      return [
        `fn ld_${n}(i: u32) -> f32 { return ${b}[${o} + i]; }`,
        ...(write ? [`fn st_${n}(i: u32, v: f32) { ${b}[${o} + i] = v; }`] : []),
      ];
    case "i32":
      return [
        `fn ld_${n}(i: u32) -> i32 { return ${b}[${o} + i]; }`,
        ...(write ? [`fn st_${n}(i: u32, v: i32) { ${b}[${o} + i] = v; }`] : []),
      ];
    case "f16":
      if (hasF16) {
        return [
          `fn ld_${n}(i: u32) -> f32 { return f32(${b}[${o} + i]); }`,
          ...(write ? [`fn st_${n}(i: u32, v: f32) { ${b}[${o} + i] = f16(clamp(v, -65504.0, 65504.0)); }`] : []),
        ];
      }
      return halfAccessors(n, b, dtype, o, write);
    default:
      return halfAccessors(n, b, dtype, o, write);
  }
}

/** 16-bit floats read from packed u32 words: bf16 by a shift, f16 by unpack2x16float. */
function halfAccessors(n: string, b: string, dtype: DType, o: string, write: boolean): string[] {
  if (write) throw new Error(`a ${dtype} tensor (${n}) cannot be written by a WebGPU kernel without shader-f16`);
  const word = `${b}[(${o} + i) >> 1u]`;
  const sh = `(((${o} + i) & 1u) * 16u)`;
  if (dtype === "bf16") return [`fn ld_${n}(i: u32) -> f32 { return bitcast<f32>(((${word} >> ${sh}) & 0xffffu) << 16u); }`];
  return [`fn ld_${n}(i: u32) -> f32 { return unpack2x16float(${word} >> ${sh}).x; }`];
}

/** Per-kernel GPU time from timestamp queries, one pair per dispatch. */
export class Profiler {
  private querySet: GPUQuerySet;
  private resolveBuf: GPUBuffer;
  private names: string[] = [];
  private readbacks: { buf: GPUBuffer; names: string[] }[] = [];
  /** Total nanoseconds and count per kernel name. */
  readonly totals = new Map<string, { ns: number; count: number }>();

  constructor(
    private readonly device: GPUDevice,
    private readonly capacity = 2048,
  ) {
    this.querySet = device.createQuerySet({ type: "timestamp", count: 2 * capacity });
    this.resolveBuf = device.createBuffer({ size: 16 * capacity, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC });
  }

  get full(): boolean {
    return this.names.length >= this.capacity;
  }

  next(name: string): GPUComputePassTimestampWrites {
    if (this.names.length >= this.capacity) throw new RangeError(`profiler: more than ${this.capacity} dispatches in one submission`);
    const i = this.names.length;
    this.names.push(name);
    return { querySet: this.querySet, beginningOfPassWriteIndex: 2 * i, endOfPassWriteIndex: 2 * i + 1 };
  }

  resolve(encoder: GPUCommandEncoder): void {
    const n = this.names.length;
    if (n === 0) return;
    encoder.resolveQuerySet(this.querySet, 0, 2 * n, this.resolveBuf, 0);
    const buf = this.device.createBuffer({ size: 16 * n, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    encoder.copyBufferToBuffer(this.resolveBuf, 0, buf, 0, 16 * n);
    this.readbacks.push({ buf, names: this.names });
    this.names = [];
  }

  /** Read every resolved submission's timestamps into `totals`. */
  async collect(): Promise<void> {
    const pending = this.readbacks;
    this.readbacks = [];
    for (const { buf, names } of pending) {
      await buf.mapAsync(GPUMapMode.READ);
      const t = new BigUint64Array(buf.getMappedRange());
      names.forEach((name, i) => {
        const ns = Number(t[2 * i + 1]! - t[2 * i]!);
        const e = this.totals.get(name) ?? { ns: 0, count: 0 };
        e.ns += Math.max(0, ns);
        e.count++;
        this.totals.set(name, e);
      });
      buf.unmap();
      buf.destroy();
    }
  }

  dispose(): void {
    this.querySet.destroy();
    this.resolveBuf.destroy();
  }
}
