/** Messages between the async engine client (main thread) and the engine worker thread. */
import type { MemoryReport } from "../backend/allocator.js";
import type { AddRequest, EngineConfig, EngineSnapshot, EngineStats, RequestOutput } from "./engine-core.js";
import type { EngineOptions } from "./llm.js";
import type { SamplingParams } from "./sampling-params.js";

export interface WorkerInit {
  modelDir: string;
  options: Omit<EngineOptions, "onProgress">;
  /** Run the engine on a model that costs nothing (config and tokenizer only, no weights): for measuring the engine and server themselves. */
  stubModel?: boolean;
  /** The stub's milliseconds per step (a timer, as a device would take): for load tests of routers and autoscalers. */
  stubStepMs?: number;
}

/** What the client learns about the loaded model and engine once the worker is ready. */
export interface EngineInfo {
  modelDir: string;
  architecture: string;
  maxModelLen: number;
  vocabSize: number;
  eosTokenIds: number[];
  /** From generation_config.json: the request defaults the model's authors chose. */
  samplingDefaults: Partial<SamplingParams>;
  config: EngineConfig;
  backend: string;
  /** Which device --device picked and why, for the start-up banner. */
  device: string;
  threads: number;
  /** Bytes of one token's K and V over all layers. */
  kvBytesPerToken: number;
  weightBytes: number;
  /** The activation arena: bytes with buffer reuse (what is allocated) and what the buffers would take without it. */
  arena: { bytes: number; unsharedBytes: number };
  /** Whether this engine runs a stub model (no weights, free logits). */
  stubModel: boolean;
}

export type ToWorker =
  | { type: "add"; request: AddRequest }
  | { type: "abort"; requestId: string }
  | { type: "stats"; id: number }
  | { type: "snapshot"; id: number }
  | { type: "shutdown" };

export interface Snapshot {
  engine: EngineSnapshot;
  memory: MemoryReport;
}

export type FromWorker =
  | { type: "progress"; done: number; total: number }
  | { type: "ready"; info: EngineInfo }
  | { type: "failed"; message: string }
  | { type: "outputs"; outputs: RequestOutput[]; stats: EngineStats }
  /** A request the core refused (bad length, ...) or that failed in a step: its stream ends with this error. */
  | { type: "rejected"; requestId: string; message: string; name: string }
  | { type: "stats"; id: number; stats: EngineStats }
  | { type: "snapshot"; id: number; snapshot: Snapshot }
  | { type: "closed" };
