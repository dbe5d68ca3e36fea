/**
 * The engine's own thread: loads the model, then loops — take every message
 * that arrived (add, abort, stats), run one step, post its outputs — yielding
 * to the event loop between steps so messages are seen every step. The main
 * thread (HTTP, tokenizing, streaming) never waits on a forward pass.
 */
import { type MessagePort, parentPort, workerData } from "node:worker_threads";
import { setImmediate as yieldToEventLoop } from "node:timers/promises";
import { kvBytesPerToken } from "../model/llama.js";
import type { EngineInfo, FromWorker, ToWorker, WorkerInit } from "./engine-protocol.js";
import { LLM } from "./llm.js";

if (!parentPort) throw new Error("engine-worker.js runs as a worker thread; use AsyncEngine.start()");
const port: MessagePort = parentPort;
const post = (m: FromWorker) => port.postMessage(m);

async function main(init: WorkerInit): Promise<void> {
  let llm: LLM;
  try {
    let last = 0;
    llm = LLM.open(init.modelDir, {
      ...init.options,
      onProgress: (done, total) => {
        const now = Date.now();
        if (now - last > 100 || done === total) post({ type: "progress", done, total });
        last = now;
      },
    });
  } catch (err) {
    post({ type: "failed", message: (err as Error).message });
    return;
  }
  const core = llm.core;
  const memory = llm.backend.memoryStats();
  const info: EngineInfo = {
    modelDir: init.modelDir,
    architecture: llm.loaded.config.architecture,
    maxModelLen: llm.loaded.maxModelLen,
    vocabSize: llm.loaded.config.vocabSize,
    eosTokenIds: [...core.eosTokenIds],
    samplingDefaults: llm.samplingDefaults,
    config: core.config,
    backend: llm.backend.name,
    threads: "threads" in llm.backend ? (llm.backend.threads as number) : 1,
    kvBytesPerToken: kvBytesPerToken(llm.loaded.config, llm.backend),
    weightBytes: memory.byTag.weights,
  };

  const inbox: ToWorker[] = [];
  let wake: (() => void) | null = null;
  port.on("message", (m: ToWorker) => {
    inbox.push(m);
    wake?.();
  });
  post({ type: "ready", info });

  for (;;) {
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
          core.abort(m.requestId);
          break;
        case "stats":
          post({ type: "stats", id: m.id, stats: core.stats() });
          break;
        case "shutdown":
          llm.close();
          post({ type: "closed" });
          port.close();
          return;
      }
    }
    if (core.hasUnfinished) {
      try {
        const outputs = core.step();
        if (outputs.length > 0) post({ type: "outputs", outputs, stats: core.stats() });
      } catch (err) {
        // A failed step leaves the batch's requests in an unknown state: end them with the error, keep serving the rest.
        const e = err as Error;
        for (const r of [...core.scheduler.running]) {
          const id = core.parentOf(r.requestId);
          if (id !== undefined && core.abort(id))
            post({ type: "rejected", requestId: id, message: `engine step failed: ${e.message}`, name: e.name });
        }
      }
      await yieldToEventLoop();
    } else {
      await new Promise<void>((resolve) => (wake = resolve));
      wake = null;
    }
  }
}

void main(workerData as WorkerInit);
