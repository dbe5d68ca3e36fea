/** Tokamak processes for tests: `serve` replicas and `router`s started from the built CLI, their URL read off the banner. */
import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import type { TinyModelOptions } from "./tiny-model.js";

export const REPO_ROOT = fileURLToPath(new URL("../../../", import.meta.url));
export const CLI = fileURLToPath(new URL("../../src/cli/main.js", import.meta.url));

export interface Proc {
  url: string;
  proc: ChildProcess;
  /** Everything it wrote on stderr so far. */
  log(): string;
  /** SIGTERM (or the given signal) and wait for the exit. */
  stop(signal?: NodeJS.Signals): Promise<void>;
}

/** Run the CLI with `args`; resolves once stderr shows `API at <url>/v1`. */
export function startCli(args: string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv; argv0?: string[] } = {}): Promise<Proc> {
  const cmd = opts.argv0 ?? [process.execPath];
  const proc = spawn(cmd[0]!, [...cmd.slice(1), CLI, ...args], {
    cwd: REPO_ROOT,
    stdio: ["ignore", "ignore", "pipe"],
    env: opts.env ?? process.env,
  });
  let err = "";
  proc.stderr!.setEncoding("utf8");
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill("SIGKILL");
      reject(new Error(`tokamak ${args.join(" ")} did not start within ${opts.timeoutMs ?? 60_000} ms:\n${err}`));
    }, opts.timeoutMs ?? 60_000);
    const early = (code: number | null) => {
      clearTimeout(timer);
      reject(new Error(`tokamak ${args.join(" ")} exited (${code}) before it was ready:\n${err}`));
    };
    proc.once("exit", early);
    proc.stderr!.on("data", (s: string) => {
      err += s;
      const m = /API at (http:\/\/[^\s]+)\/v1/.exec(err);
      if (m) {
        clearTimeout(timer);
        proc.off("exit", early);
        resolve({
          url: m[1]!,
          proc,
          log: () => err,
          stop: (signal = "SIGTERM") =>
            new Promise<void>((res) => {
              if (proc.exitCode !== null || proc.signalCode !== null) return res();
              proc.once("exit", () => res());
              proc.kill(signal);
            }),
        });
      }
    });
  });
}

/** A `--stub-model` replica: the real server and engine over a free forward pass that takes `stepMs` per step. */
export function startStubReplica(modelDir: string, extra: string[] = [], stepMs = 5): Promise<Proc> {
  return startCli([
    "serve",
    modelDir,
    "--stub-model",
    "--stub-step-ms",
    String(stepMs),
    "--port",
    "0",
    "--max-model-len",
    "2048",
    ...extra,
  ]);
}

/** The model folder router tests serve: a stub needs only its config and tokenizer; small enough to run for real too. */
export const ROUTER_TEST_MODEL: TinyModelOptions = {
  arch: "qwen3",
  hiddenSize: 64,
  numLayers: 2,
  numHeads: 2,
  numKvHeads: 1,
  headDim: 32,
  intermediateSize: 128,
  maxPositionEmbeddings: 2048,
};
