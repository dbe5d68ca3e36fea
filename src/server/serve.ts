/** `tokamak serve`: the engine thread, the tokenizer, metrics and the HTTP app, wired together. */
import { readFileSync } from "node:fs";
import { basename, resolve } from "node:path";
import { AsyncEngine } from "../engine/async-engine.js";
import type { EngineOptions } from "../engine/llm.js";
import { Tokenizer } from "../tokenizer/tokenizer.js";
import { buildApp, type TokamakApp } from "./app.js";
import { Metrics } from "./metrics.js";

export interface ServeOptions {
  host?: string;
  /** 0 picks a free port. */
  port?: number;
  apiKey?: string;
  servedModelName?: string[];
  maxQueueLen?: number;
  engine?: EngineOptions;
  /** Serve a stub model that costs nothing (config and tokenizer only): measures the server and engine themselves. */
  stubModel?: boolean;
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

export async function startServer(modelDir: string, o: ServeOptions = {}): Promise<RunningServer> {
  const tokenizer = Tokenizer.fromDir(modelDir);
  const engine = await AsyncEngine.start(modelDir, { ...o.engine, onProgress: o.onProgress }, { stubModel: o.stubModel });
  try {
    const names = o.servedModelName && o.servedModelName.length > 0 ? o.servedModelName : [basename(resolve(modelDir))];
    const metrics = new Metrics(names[0]!, engine.info.maxModelLen);
    const { app, drain } = buildApp({
      engine,
      tokenizer,
      servedModelNames: names,
      metrics,
      apiKey: o.apiKey,
      maxQueueLen: o.maxQueueLen,
      version: VERSION,
      logger: o.logger,
    });
    const address = await app.listen({ host: o.host ?? "127.0.0.1", port: o.port ?? 8000 });
    let stopping: Promise<{ drained: boolean; aborted: number }> | null = null;
    const shutdown = (timeoutMs = 30_000) =>
      (stopping ??= (async () => {
        const result = await drain(timeoutMs);
        await app.close();
        await engine.shutdown();
        return result;
      })());
    return { url: address, engine, app, metrics, shutdown };
  } catch (err) {
    await engine.shutdown();
    throw err;
  }
}
