import { availableParallelism } from "node:os";
import { MessageChannel, type MessagePort, receiveMessageOnPort, Worker } from "node:worker_threads";
import { type AttentionArgs, attentionRange, type LinearArgs, linearRange, Scratch } from "./kernels.js";
import type { QuantLinearArgs } from "./quant-linear.js";
import { type RowwiseArgs, rowwiseRange } from "./rowwise.js";
import { PLAN_STRIDE, planAttention, wasmAttentionFits } from "./wasm-attention.js";
import { type LinearModule, wasmModules } from "./wasm-linear.js";

/** A parallel kernel call: the kernel name and its arguments (typed arrays over SharedArrayBuffers are shared, not copied). */
export type Task =
  | { kind: "linear"; args: LinearArgs }
  | { kind: "qlinear"; args: QuantLinearArgs }
  | { kind: "rows"; args: RowwiseArgs }
  | { kind: "attention"; args: AttentionArgs };

export interface TaskMessage {
  task: Task;
  start: number;
  end: number;
}

// Control words in the shared Int32Array: one wake counter per worker, then these.
const PENDING = 0;
const FAILED = 1;
const HEADER = 2;

export function runTask(task: Task, start: number, end: number, scratch: Scratch): void {
  if (task.kind === "linear") linearRange(task.args, start, end, scratch);
  else if (task.kind === "qlinear") scratch.quant().run(task.args, start, end);
  else if (task.kind === "rows") rowwiseRange(task.args, start, end);
  else attentionRange(task.args, start, end, scratch);
}

/**
 * A fixed set of worker threads that each take a slice of a kernel call while
 * the calling thread does its own slice, then blocks until all are done.
 * Dispatch is synchronous: a message per worker, read on the other side with
 * receiveMessageOnPort after an Atomics wake, so no event loop turn is needed.
 */
export interface ThreadPoolOptions {
  /**
   * Matrix-product implementation: "wasm" (WebAssembly SIMD, falling back to JavaScript where
   * unavailable) or "js". Default: $TOKAMAK_CPU_LINEAR if set to one of them, else "wasm".
   */
  linear?: "wasm" | "js";
  /** Attention implementation, likewise; default: $TOKAMAK_CPU_ATTENTION if "js" or "wasm", else "wasm". */
  attention?: "wasm" | "js";
  /** The shared memory the quantized-weight kernels read in place (see kernel-memory.ts). */
  kernelMemory?: WebAssembly.Memory;
}

export class ThreadPool {
  readonly threads: number;
  /** What runs linear: "wasm-simd" or "js" (benchmarks print it; see linearFallbackReason). */
  readonly linearImpl: LinearModule["impl"];
  /** Why linear runs in JavaScript ("" when it runs in wasm). */
  readonly linearFallbackReason: string;
  /** What runs attention: "wasm-simd" or "js" (for head dims not a multiple of 4, always js). */
  readonly attentionImpl: LinearModule["impl"];
  /** Why attention runs in JavaScript ("" when it runs in wasm). */
  readonly attentionFallbackReason: string;
  /** What runs the quantized-weight products: "wasm-simd" or "js". */
  readonly quantImpl: LinearModule["impl"];
  private workers: Worker[] = [];
  private ports: MessagePort[] = [];
  private errorPorts: MessagePort[] = [];
  private ctrl: Int32Array;
  private scratch: Scratch;

  constructor(threads = availableParallelism(), opts: ThreadPoolOptions = {}) {
    this.threads = Math.max(1, Math.floor(threads));
    const env = process.env.TOKAMAK_CPU_LINEAR;
    const want = opts.linear ?? (env === "js" || env === "wasm" ? env : "wasm");
    const attEnv = process.env.TOKAMAK_CPU_ATTENTION;
    const wantAtt = opts.attention ?? (attEnv === "js" || attEnv === "wasm" ? attEnv : "wasm");
    // Both modules in one call, so that they are assembled concurrently (see wasmModules).
    const files = [...(want === "wasm" ? ["linear.wat", "quant.wat"] : []), ...(wantAtt === "wasm" ? ["attention.wat"] : [])];
    const modules = wasmModules(files);
    const wasm = (file: string) => modules[files.indexOf(file)]!;
    const linear: LinearModule =
      want === "wasm" ? wasm("linear.wat") : { module: null, impl: "js", reason: opts.linear ? "asked for" : "TOKAMAK_CPU_LINEAR=js" };
    this.linearImpl = linear.impl;
    this.linearFallbackReason = linear.reason;
    const attention: LinearModule =
      wantAtt === "wasm"
        ? wasm("attention.wat")
        : { module: null, impl: "js", reason: opts.attention ? "asked for" : "TOKAMAK_CPU_ATTENTION=js" };
    this.attentionImpl = attention.impl;
    this.attentionFallbackReason = attention.reason;
    const quant = want === "wasm" ? wasm("quant.wat") : linear;
    this.quantImpl = quant.impl;
    const kernelMemory = opts.kernelMemory ?? new WebAssembly.Memory({ initial: 1, maximum: 1, shared: true });
    this.scratch = new Scratch(linear.module, attention.module, { memory: kernelMemory, module: quant.module, slot: 0 });
    const helpers = this.threads - 1;
    this.ctrl = new Int32Array(new SharedArrayBuffer(4 * (HEADER + helpers)));
    for (let i = 0; i < helpers; i++) {
      const tasks = new MessageChannel();
      const errors = new MessageChannel();
      const worker = new Worker(new URL("./worker.js", import.meta.url), {
        // The compiled Module is cloned, not recompiled: each worker only instantiates it.
        workerData: {
          ctrl: this.ctrl,
          index: HEADER + i,
          tasks: tasks.port2,
          errors: errors.port2,
          linearModule: linear.module,
          attentionModule: attention.module,
          quantModule: quant.module,
          kernelMemory,
          slot: i + 1,
        },
        transferList: [tasks.port2, errors.port2],
      });
      worker.unref();
      this.workers.push(worker);
      this.ports.push(tasks.port1);
      this.errorPorts.push(errors.port1);
    }
  }

  /** The calling thread's kernels and scratch. */
  get local(): Scratch {
    return this.scratch;
  }

  /** Run `task` over work items [0, total), split into contiguous slices whose starts are multiples of `align`. */
  run(task: Task, total: number, align = 1): void {
    if (task.kind === "attention" && this.attentionImpl === "wasm-simd" && !task.args.plan && wasmAttentionFits(task.args.headDim)) {
      // The wasm kernel's items are blocks of query rows (see planAttention), not the
      // (query row, KV head) pairs the caller counted: plan them once here for all threads.
      const plan = planAttention(task.args);
      task = { kind: "attention", args: { ...task.args, plan } };
      total = plan.length / PLAN_STRIDE;
    }
    const helpers = this.workers.length;
    const units = Math.ceil(total / align);
    if (helpers === 0 || units < 2) {
      runTask(task, 0, total, this.scratch);
      return;
    }
    const parts = Math.min(this.threads, units);
    const bounds = (p: number) => Math.min(total, Math.round((units * p) / parts) * align);
    Atomics.store(this.ctrl, PENDING, parts - 1);
    for (let p = 1; p < parts; p++) {
      const msg: TaskMessage = { task, start: bounds(p), end: bounds(p + 1) };
      this.ports[p - 1]!.postMessage(msg);
      Atomics.add(this.ctrl, HEADER + p - 1, 1);
      Atomics.notify(this.ctrl, HEADER + p - 1);
    }
    let mainError: unknown;
    try {
      runTask(task, 0, bounds(1), this.scratch);
    } catch (err) {
      mainError = err;
    }
    for (;;) {
      const pending = Atomics.load(this.ctrl, PENDING);
      if (pending === 0) break;
      Atomics.wait(this.ctrl, PENDING, pending);
    }
    if (mainError) throw mainError;
    if (Atomics.load(this.ctrl, FAILED)) {
      Atomics.store(this.ctrl, FAILED, 0);
      const messages = this.errorPorts.map((p) => receiveMessageOnPort(p)?.message).filter(Boolean);
      throw new Error(`CPU worker failed: ${messages.join("; ")}`);
    }
  }

  dispose(): void {
    for (const w of this.workers) void w.terminate();
    for (const p of [...this.ports, ...this.errorPorts]) p.close();
    this.workers = [];
  }
}
