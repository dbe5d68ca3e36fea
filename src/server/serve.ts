/** `tokamak serve`: the engine thread, the tokenizer, metrics and the HTTP app, wired together. */
import { readFileSync } from "node:fs";
import { basename, resolve } from "node:path";
import { AsyncEngine } from "../engine/async-engine.js";
import type { EngineOptions } from "../engine/llm.js";
import { Tokenizer } from "../tokenizer/tokenizer.js";
import { buildApp, type TokamakApp } from "./app.js";
import { bearerCheck } from "./auth.js";
import { Metrics, type MetricsPrefix } from "./metrics.js";

export interface ServeOptions {
  host?: string;
  /** 0 picks a free port. */
  port?: number;
  apiKey?: string;
  /** Serve /metrics without the API key. */
  metricsNoAuth?: boolean;
  /** "vllm": the metrics under vLLM's own names (`vllm:...`), for its Grafana dashboards. */
  metricsPrefix?: MetricsPrefix;
  servedModelName?: string[];
  /** Sequences that may wait beyond the running batch before 429. */
  maxQueueLen?: number;
  /** Seconds a request's headers and body may take to arrive. */
  requestTimeout?: number;
  headersTimeout?: number;
  maxConnections?: number;
  engine?: EngineOptions;
  /** Serve a stub model that costs nothing (config and tokenizer only): measures the server and engine themselves. */
  stubModel?: boolean;
  /** With `stubModel`: milliseconds each engine step takes (a timer), so a stub replica has a device's pace. */
  stubStepMs?: number;
  logger?: boolean;
  onProgress?: (done: number, total: number) => void;
}

export interface RunningServer {
  url: string;
  engine: AsyncEngine;
  app: TokamakApp["app"];
  metrics: Metrics;
  /** Stop accepting, drain in-flight requests up to `timeoutMs`, then stop the engine. */
  shutdown(timeoutMs?: number): Promise<{ drained: boolean; aborted: number }>;
}

export const VERSION = (JSON.parse(readFileSync(new URL("../../../package.json", import.meta.url), "utf8")) as { version: string }).version;

/** Close the server; connections still open after `ms` (a client still sending its body) are cut. */
async function closeWithin(app: TokamakApp["app"], ms: number): Promise<void> {
  const timer = setTimeout(() => app.server.closeAllConnections(), ms);
  try {
    await app.close();
  } finally {
    clearTimeout(timer);
  }
}

export async function startServer(modelDir: string, o: ServeOptions = {}): Promise<RunningServer> {
  bearerCheck(o.apiKey); // a key that cannot work fails before the model loads
  const tokenizer = Tokenizer.fromDir(modelDir);
  const engine = await AsyncEngine.start(
    modelDir,
    { ...o.engine, onProgress: o.onProgress },
    { stubModel: o.stubModel, stubStepMs: o.stubStepMs },
  );
  try {
    const names = o.servedModelName && o.servedModelName.length > 0 ? o.servedModelName : [basename(resolve(modelDir))];
    const metrics = new Metrics(names[0]!, engine.info.maxModelLen, o.metricsPrefix);
    const { app, drain, dispose } = buildApp({
      engine,
      tokenizer,
      servedModelNames: names,
      metrics,
      apiKey: o.apiKey,
      metricsNoAuth: o.metricsNoAuth,
      maxQueueLen: o.maxQueueLen,
      requestTimeoutMs: o.requestTimeout === undefined ? undefined : o.requestTimeout * 1000,
      headersTimeoutMs: o.headersTimeout === undefined ? undefined : o.headersTimeout * 1000,
      maxConnections: o.maxConnections,
      modelDir,
      version: VERSION,
      logger: o.logger,
    });
    let address: string;
    try {
      address = await app.listen({ host: o.host ?? "127.0.0.1", port: o.port ?? 8000 });
    } catch (err) {
      await dispose();
      throw err;
    }
    let stopping: Promise<{ drained: boolean; aborted: number }> | null = null;
    const shutdown = (timeoutMs = 30_000) =>
      (stopping ??= (async () => {
        // The drain takes all but the last part of the timeout; the final events, the sockets and the engine share the rest.
        const deadline = performance.now() + timeoutMs;
        const teardownMs = Math.min(1500, timeoutMs / 4);
        const result = await drain(timeoutMs - teardownMs, teardownMs / 4);
        await closeWithin(app, teardownMs / 4);
        await dispose();
        await engine.shutdown(Math.max(0, deadline - performance.now()));
        return result;
      })());
    return { url: address, engine, app, metrics, shutdown };
  } catch (err) {
    await engine.shutdown();
    throw err;
  }
}
