/**
 * The engine's own thread: loads the model, then loops — take every message
 * that arrived (add, abort, stats), run one step, post its outputs — yielding
 * to the event loop between steps so messages are seen every step. The main
 * thread (HTTP, tokenizing, streaming) never waits on a forward pass.
 */
import { freemem, totalmem } from "node:os";
import { type MessagePort, parentPort, workerData } from "node:worker_threads";
import { setImmediate as yieldToEventLoop } from "node:timers/promises";
import type { MemoryReport } from "../backend/allocator.js";
import { describeSelection } from "../backend/create-backend.js";
import { loadModelConfig } from "../model/load.js";
import { loadGenerationDefaults } from "./generation-config.js";
import { kvBytesPerToken } from "../model/llama.js";
import { Tokenizer } from "../tokenizer/tokenizer.js";
import { EngineCore, type EngineConfig, StepFailedError } from "./engine-core.js";
import { NullExecutor } from "./null-executor.js";
import type { EngineInfo, FromWorker, ToWorker, WorkerInit } from "./engine-protocol.js";
import { LLM } from "./llm.js";
import { ENGINE_DEFAULTS, mergeEosTokenIds } from "../defaults.js";

if (!parentPort) throw new Error("engine-worker.js runs as a worker thread; use AsyncEngine.start()");
const port: MessagePort = parentPort;
const post = (m: FromWorker) => port.postMessage(m);

interface Session {
  core: EngineCore;
  info: EngineInfo;
  memory(): MemoryReport;
  close(): void;
}

async function openModel(init: WorkerInit): Promise<Session> {
  let last = 0;
  const llm = await LLM.create(init.modelDir, {
    ...init.options,
    onProgress: (done, total) => {
      const now = Date.now();
      if (now - last > 100 || done === total) post({ type: "progress", done, total });
      last = now;
    },
  });
  const memory = llm.backend.memoryStats();
  return {
    core: llm.core,
    memory: () => llm.backend.memoryReport(),
    close: () => llm.close(),
    info: {
      modelDir: init.modelDir,
      architecture: llm.loaded.config.architecture,
      maxModelLen: llm.loaded.maxModelLen,
      vocabSize: llm.loaded.config.vocabSize,
      eosTokenIds: [...llm.core.eosTokenIds],
      samplingDefaults: llm.samplingDefaults,
      config: llm.core.config,
      backend: llm.backend.name,
      device: llm.deviceSelection ? describeSelection(init.options.device ?? "auto", llm.deviceSelection) : llm.backend.name,
      threads: llm.backend.capabilities.threads,
      kvBytesPerToken: kvBytesPerToken(llm.loaded.config, llm.backend, llm.core.config.kvCacheDType),
      weightBytes: memory.byTag.weights,
      arena: { bytes: llm.loaded.model.arenaPlan.totalBytes, unsharedBytes: llm.loaded.model.arenaPlan.unsharedBytes },
      stubModel: false,
    },
  };
}

/** The engine over a NullExecutor: the model's config and tokenizer, no weights, no forward pass. */
function openStub(init: WorkerInit): Session {
  const o = init.options;
  const config = loadModelConfig(init.modelDir);
  const tokenizer = Tokenizer.fromDir(init.modelDir);
  const gen = loadGenerationDefaults(init.modelDir, { ignoreSampling: o.ignoreGenerationConfig });
  const maxModelLen = o.maxModelLen ?? config.maxPositionEmbeddings;
  const maxNumSeqs = o.maxNumSeqs ?? ENGINE_DEFAULTS.maxNumSeqs;
  const blockSize = o.blockSize ?? ENGINE_DEFAULTS.blockSize;
  const engineConfig: EngineConfig = {
    blockSize,
    numBlocks: o.numBlocks ?? Math.ceil(maxModelLen / blockSize) * 4 + maxNumSeqs * 64,
    enablePrefixCaching: o.enablePrefixCaching ?? ENGINE_DEFAULTS.enablePrefixCaching,
    maxNumBatchedTokens: o.maxNumBatchedTokens ?? ENGINE_DEFAULTS.maxNumBatchedTokens,
    maxNumSeqs,
    maxModelLen,
    policy: o.policy ?? ENGINE_DEFAULTS.policy,
    asyncScheduling: o.asyncScheduling ?? ENGINE_DEFAULTS.asyncScheduling,
  };
  const eos = mergeEosTokenIds(tokenizer.eosTokenIds, gen.eosTokenIds, config.eosTokenIds);
  const executor = new NullExecutor(config.vocabSize);
  executor.deviceMs = init.stubStepMs ?? 0;
  const core = new EngineCore(executor, engineConfig, eos, tokenizer);
  if (o.seed !== undefined) core.seed(o.seed);
  return {
    core,
    memory: () => ({
      stats: { byTag: { weights: 0, "kv-cache": 0, activations: 0, workspace: 0, other: 0 }, total: 0, peak: 0, allocations: 0 },
      allocations: [],
      device: { name: "stub (no model)", totalBytes: totalmem(), freeBytes: freemem() },
    }),
    close: () => undefined,
    info: {
      modelDir: init.modelDir,
      architecture: config.architecture,
      maxModelLen,
      vocabSize: config.vocabSize,
      eosTokenIds: eos,
      samplingDefaults: o.ignoreGenerationConfig ? {} : gen.sampling,
      config: engineConfig,
      backend: "stub (no model)",
      device: "stub model: no device",
      threads: 1,
      kvBytesPerToken: 0,
      weightBytes: 0,
      arena: { bytes: 0, unsharedBytes: 0 },
      stubModel: true,
    },
  };
}

async function main(init: WorkerInit): Promise<void> {
  let session: Session;
  try {
    session = init.stubModel ? openStub(init) : await openModel(init);
  } catch (err) {
    post({ type: "failed", message: (err as Error).message });
    return;
  }
  const { core, info } = session;

  const inbox: ToWorker[] = [];
  let wake: (() => void) | null = null;
  port.on("message", (m: ToWorker) => {
    inbox.push(m);
    wake?.();
  });
  post({ type: "ready", info });

  for (;;) {
    let aborted = false;
    while (inbox.length > 0) {
      const m = inbox.shift()!;
      switch (m.type) {
        case "add":
          try {
            core.addRequest(m.request);
          } catch (err) {
            const e = err as Error;
            post({ type: "rejected", requestId: m.request.requestId, message: e.message, name: e.name });
          }
          break;
        case "abort":
          aborted = core.abort(m.requestId) || aborted;
          break;
        case "stats":
          post({ type: "stats", id: m.id, stats: core.stats() });
          break;
        case "snapshot":
          post({ type: "snapshot", id: m.id, snapshot: { engine: core.snapshot(), memory: session.memory() } });
          break;
        case "shutdown":
          session.close();
          post({ type: "closed" });
          port.close();
          return;
      }
    }
    // An abort changes the gauges without a step (it may leave the engine idle): report them now, not at the next request.
    if (aborted) post({ type: "outputs", outputs: [], stats: core.stats() });
    if (core.hasUnfinished) {
      try {
        const outputs = await core.step();
        if (outputs.length > 0) post({ type: "outputs", outputs, stats: core.stats() });
      } catch (err) {
        // The core ended the failed step's requests (their KV is in an unknown state); tell their clients, serve the rest.
        if (!(err instanceof StepFailedError)) throw err;
        for (const id of err.requestIds) post({ type: "rejected", requestId: id, message: err.message, name: err.cause.name });
        post({ type: "outputs", outputs: [], stats: core.stats() });
      }
      await yieldToEventLoop();
    } else {
      await new Promise<void>((resolve) => (wake = resolve));
      wake = null;
    }
  }
}

void main(workerData as WorkerInit);
