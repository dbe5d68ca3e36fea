#!/usr/bin/env node
import { Command, InvalidArgumentError } from "commander";
import { readFileSync, statSync } from "node:fs";
import { convertHfToGguf } from "../convert/hf-to-gguf.js";
import { GGUF_FILE_TYPE_NAMES } from "../convert/gguf-file-types.js";
import { formatBytes } from "../model/memory-plan.js";
import { parseQuantization } from "../model/quant-method.js";
import { createBackendAsync, describeSelection, parseDeviceRequest } from "../backend/create-backend.js";
import { loadModelConfig } from "../model/load.js";
import { parseDType } from "../backend/dtype.js";
import { Generator } from "../engine/generator.js";
import { Tokenizer } from "../tokenizer/tokenizer.js";
import { progressBar } from "./progress.js";
import { type RunningServer, startServer, VERSION } from "../server/serve.js";
import { METRICS_PREFIXES, type MetricsPrefix } from "../server/metrics.js";
import { registerPlan } from "./plan.js";
import { registerBenchServe } from "./bench-serve.js";
import { registerRouter } from "./router.js";
import { ENGINE_DEFAULTS } from "../defaults.js";

const version = (JSON.parse(readFileSync(new URL("../../../package.json", import.meta.url), "utf8")) as { version: string }).version;

function intArg(name: string, min: number) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`${name} must be an integer >= ${min}, got "${v}"`);
    return n;
  };
}

function floatArg(name: string, min: number, max: number) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < min || n > max)
      throw new InvalidArgumentError(`${name} must be a number in [${min}, ${max}], got "${v}"`);
    return n;
  };
}

interface GenerateFlags {
  prompt: string;
  maxTokens: number;
  temperature: number;
  topK: number;
  topP: number;
  seed?: number;
  threads?: number;
  dtype?: string;
  quantization?: string;
  chat: boolean;
  ignoreEos: boolean;
  device: string;
}

async function generateCommand(modelDir: string, flags: GenerateFlags): Promise<void> {
  const tokenizer = Tokenizer.fromDir(modelDir);
  const text = flags.chat
    ? tokenizer.applyChatTemplate([{ role: "user", content: flags.prompt }], { addGenerationPrompt: true })
    : flags.prompt;
  const prompt = tokenizer.encode(text, { addSpecialTokens: !flags.chat });
  const device = parseDeviceRequest(flags.device);
  const dtype = flags.dtype ? parseDType(flags.dtype, "--dtype") : undefined;
  const { backend, selection } = await createBackendAsync({
    device,
    threads: flags.threads,
    dtype,
    modelDType: loadModelConfig(modelDir).torchDtype,
  });
  process.stderr.write(`${describeSelection(device, selection)}\n`);
  try {
    const bar = progressBar("loading weights");
    const gen = Generator.open(modelDir, backend, {
      maxModelLen: prompt.length + flags.maxTokens,
      // CUDA multiplies weights in its activation dtype; the CPU reads any stored dtype directly.
      dtype: backend.capabilities.anyWeightDType ? dtype : backend.activationDType,
      quantization: flags.quantization ? parseQuantization(flags.quantization, "--quantization") : undefined,
      onProgress: bar,
    });
    bar.end();
    const result = await gen.generateAsync(prompt, {
      maxTokens: flags.maxTokens,
      sampling: { temperature: flags.temperature, topK: flags.topK, topP: flags.topP, seed: flags.seed },
      stopTokenIds: flags.ignoreEos ? [] : tokenizer.eosTokenIds,
    });
    const shown = result.finishReason === "stop" ? result.tokens.slice(0, -1) : result.tokens;
    process.stdout.write(tokenizer.decode(shown, { skipSpecialTokens: true }) + "\n");
    const decodeSteps = result.tokens.length - 1;
    process.stderr.write(
      `prompt: ${prompt.length} tokens in ${result.promptMs.toFixed(0)} ms (${((prompt.length * 1000) / result.promptMs).toFixed(1)} tokens/s); ` +
        `generated: ${result.tokens.length} tokens, decode ${decodeSteps > 0 ? ((decodeSteps * 1000) / result.decodeMs).toFixed(2) : "-"} tokens/s ` +
        `(backend ${backend.name}, ${backend.capabilities.threads} threads, finish: ${result.finishReason})\n`,
    );
  } finally {
    backend.dispose();
  }
}

function quantizeCommand(modelDir: string, flags: { output: string; type: string }): void {
  const started = performance.now();
  const r = convertHfToGguf(modelDir, flags.output, { outType: flags.type });
  const types = Object.entries(r.tensorTypes)
    .map(([t, n]) => `${n} ${t}`)
    .join(", ");
  process.stderr.write(
    `wrote ${r.path}: ${r.architecture}, ${r.outType}, ${r.tensorCount} tensors (${types}), ${formatBytes(statSync(r.path).size)} ` +
      `in ${((performance.now() - started) / 1000).toFixed(1)} s
`,
  );
  for (const w of r.warnings)
    process.stderr.write(`warning: ${w}
`);
}

interface ServeFlags {
  host: string;
  port: number;
  apiKey?: string;
  servedModelName?: string[];
  maxModelLen?: number;
  maxNumBatchedTokens?: number;
  maxNumSeqs: number;
  gpuMemoryUtilization: number;
  kvCacheMemory?: number;
  blockSize: number;
  enablePrefixCaching: boolean;
  asyncScheduling: boolean;
  dtype: string;
  quantization?: string;
  kvCacheDtype: string;
  seed: number;
  generationConfig: string;
  threads?: number;
  maxQueueLen: number;
  shutdownTimeout: number;
  metricsNoAuth: boolean;
  metricsPrefix: string;
  requestTimeout: number;
  headersTimeout: number;
  maxConnections: number;
  device: string;
  stubModel: boolean;
  stubStepMs: number;
}

/** "4GiB", "512MiB", "2G", "1e9": a byte count. */
export function parseBytes(v: string): number {
  const m = /^\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgt]?)(i?)b?\s*$/i.exec(v);
  if (!m) throw new InvalidArgumentError(`expected a size such as 4GiB, 512MiB or 1e9, got "${v}"`);
  const unit = m[2] ? "kmgt".indexOf(m[2].toLowerCase()) + 1 : 0;
  const base = m[3] || m[2] === "" ? 1024 : 1000;
  const bytes = Math.floor(Number(m[1]) * base ** unit);
  if (!(bytes > 0)) throw new InvalidArgumentError(`the size must be positive, got "${v}"`);
  return bytes;
}

async function serveCommand(modelDir: string, flags: ServeFlags): Promise<void> {
  if (!(METRICS_PREFIXES as readonly string[]).includes(flags.metricsPrefix))
    throw new Error(`--metrics-prefix must be one of ${METRICS_PREFIXES.join(", ")}, got "${flags.metricsPrefix}"`);
  if (flags.stubStepMs > 0 && !flags.stubModel) throw new Error("--stub-step-ms applies to --stub-model only");
  const device = parseDeviceRequest(flags.device);
  if (flags.generationConfig !== "auto" && flags.generationConfig !== "vllm") {
    throw new Error(
      `--generation-config must be "auto" (use the model's generation_config.json) or "vllm" (ignore it), got "${flags.generationConfig}"`,
    );
  }
  // startServer refuses a key that cannot work before it loads anything.
  const apiKey = flags.apiKey ?? process.env.TOKAMAK_API_KEY;
  // An IPC parent (npm start) that goes while the model loads: nothing to drain yet, so leave at once.
  const orphaned = () => process.exit(1);
  if (process.send) process.on("disconnect", orphaned);
  const bar = progressBar("loading weights");
  const server = await startServer(modelDir, {
    host: flags.host,
    port: flags.port,
    apiKey,
    metricsNoAuth: flags.metricsNoAuth,
    metricsPrefix: flags.metricsPrefix as MetricsPrefix,
    servedModelName: flags.servedModelName,
    maxQueueLen: flags.maxQueueLen,
    requestTimeout: flags.requestTimeout,
    headersTimeout: flags.headersTimeout,
    maxConnections: flags.maxConnections,
    stubModel: flags.stubModel,
    stubStepMs: flags.stubStepMs,
    onProgress: bar,
    engine: {
      maxModelLen: flags.maxModelLen,
      maxNumBatchedTokens: flags.maxNumBatchedTokens,
      maxNumSeqs: flags.maxNumSeqs,
      kvCacheMemory: flags.kvCacheMemory,
      device,
      gpuMemoryUtilization: flags.gpuMemoryUtilization,
      blockSize: flags.blockSize,
      enablePrefixCaching: flags.enablePrefixCaching,
      asyncScheduling: flags.asyncScheduling,
      dtype: flags.dtype === "auto" ? undefined : parseDType(flags.dtype, "--dtype"),
      quantization: flags.quantization ? parseQuantization(flags.quantization, "--quantization") : undefined,
      kvCacheDtype: flags.kvCacheDtype as "auto" | "fp8",
      threads: flags.threads,
      ignoreGenerationConfig: flags.generationConfig === "vllm",
      seed: flags.seed,
    },
  });
  bar.end();
  // Handlers first: a supervisor may signal as soon as it reads the banner.
  process.off("disconnect", orphaned);
  handleShutdownSignals(server, flags.shutdownTimeout);
  const i = server.engine.info;
  process.stderr.write(
    `tokamak ${VERSION}: serving ${modelDir} as "${(flags.servedModelName ?? [])[0] ?? "(folder name)"}" on ${i.backend} (${i.threads} threads; ` +
      `${i.device}), max model len ${i.maxModelLen}, KV cache ${i.config.numBlocks} blocks × ${i.config.blockSize} tokens\n` +
      `OpenAI-compatible API at ${server.url}/v1 (try: curl ${server.url}/v1/models); metrics at ${server.url}/metrics\n`,
  );
}

/** SIGTERM/SIGINT (or the loss of an IPC parent) drain the server, then exit 0; a second signal exits at once. */
function handleShutdownSignals(server: RunningServer, shutdownTimeout: number): void {
  let firstSignalAt = 0;
  const stop = (sig: string) => {
    // A signal sent to the whole process group can reach us twice (directly and forwarded by a parent): a repeat within a second is the same one.
    if (firstSignalAt > 0 && Date.now() - firstSignalAt < 1000) return;
    if (firstSignalAt > 0) {
      process.stderr.write(`${sig} again: exiting now\n`);
      process.exit(1);
    }
    firstSignalAt = Date.now();
    process.stderr.write(`${sig}: no new requests; draining in-flight ones for up to ${shutdownTimeout} s\n`);
    // A backstop: the drain is bounded by the timeout, so this firing means something hung.
    setTimeout(
      () => {
        process.stderr.write("shutdown did not finish in time; exiting\n");
        process.exit(1);
      },
      Math.min(shutdownTimeout * 1000 + 5000, 2 ** 31 - 1), // Node's timer limit; past it a timer fires at once
    ).unref();
    server.shutdown(shutdownTimeout * 1000).then(
      (r) => {
        process.stderr.write(r.drained ? "drained; bye\n" : `timed out: ended ${r.aborted} requests with an error; bye\n`);
        process.exit(0);
      },
      (err: Error) => {
        process.stderr.write(`shutdown failed: ${err.message}\n`);
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
  // Started by a parent with an IPC channel (npm start): when that parent goes, even by SIGKILL, go too.
  if (process.send) {
    if (!process.connected) stop("parent exited");
    else process.on("disconnect", () => stop("parent exited"));
  }
}

export function buildProgram(): Command {
  const program = new Command("tokamak").description("An LLM runtime: serve and run Hugging Face models").version(version);
  program
    .command("generate")
    .description("generate text from a prompt with a Hugging Face model folder or a GGUF file")
    .argument("<model>", "folder with config.json, *.safetensors and tokenizer.json, or a .gguf file")
    .requiredOption("-p, --prompt <text>", "the prompt")
    .option("-n, --max-tokens <n>", "tokens to generate", intArg("--max-tokens", 1), 64)
    .option("--temperature <t>", "sampling temperature; 0 is greedy", floatArg("--temperature", 0, 100), 0)
    .option("--top-k <k>", "keep the k most likely tokens (0: all)", intArg("--top-k", 0), 0)
    .option("--top-p <p>", "nucleus sampling mass", floatArg("--top-p", 0, 1), 1)
    .option("--seed <s>", "random seed for sampling", intArg("--seed", 0))
    .option("--threads <n>", "CPU threads (default: all cores)", intArg("--threads", 1))
    .option("--dtype <dtype>", "weight dtype: bfloat16, float16, float32 (default: as stored)")
    .option("-q, --quantization <method>", "quantize the weights at load: int8 or fp8 (per-channel scales)")
    .option("--chat", "wrap the prompt in the model's chat template", false)
    .option("--ignore-eos", "keep generating past end-of-sequence tokens", false)
    .option("--device <device>", "auto (CUDA, else a hardware WebGPU adapter, else CPU), cpu, cuda or webgpu", "auto")
    .action((dir: string, flags: GenerateFlags) => generateCommand(dir, flags));
  program
    .command("serve")
    .description("serve a Hugging Face model folder or a GGUF file over an OpenAI-compatible HTTP API (vLLM's flags)")
    .argument("<model>", "folder with config.json, *.safetensors and tokenizer.json, or a .gguf file")
    .option("--host <host>", "address to listen on", "127.0.0.1")
    .option("--port <port>", "port to listen on (0: any free port)", intArg("--port", 0), 8000)
    .option(
      "--api-key <key>",
      "require Authorization: Bearer <key> on every route but /health, /version and the dashboard page: /v1/*, /tokenize, /detokenize, the dashboard's data, /metrics (default: $TOKAMAK_API_KEY)",
    )
    .option("--metrics-no-auth", "serve /metrics without the API key (for Prometheus scrapers that have none)", false)
    .option("--metrics-prefix <prefix>", "metric names under tokamak: or vllm: (vLLM's Grafana dashboards work unchanged)", "tokamak")
    .option("--served-model-name <names...>", "model names clients may use (default: the folder name)")
    .option("--max-model-len <n>", "context length (default: the model's)", intArg("--max-model-len", 2))
    .option("--max-num-batched-tokens <n>", "tokens per engine step (default 8192)", intArg("--max-num-batched-tokens", 1))
    .option("--max-num-seqs <n>", "sequences running at once", intArg("--max-num-seqs", 1), ENGINE_DEFAULTS.maxNumSeqs)
    .option(
      "--gpu-memory-utilization <f>",
      "fraction of GPU memory to use (CUDA backend)",
      floatArg("--gpu-memory-utilization", 0.01, 1),
      ENGINE_DEFAULTS.gpuMemoryUtilization,
    )
    .option("--kv-cache-memory <bytes>", "KV cache size on CPU, e.g. 4GiB (default 4GiB)", parseBytes)
    .option("--block-size <n>", "tokens per KV block", intArg("--block-size", 1), ENGINE_DEFAULTS.blockSize)
    .option("--enable-prefix-caching", "reuse KV blocks of shared prompt prefixes (default)", true)
    .option("--no-enable-prefix-caching", "turn prefix caching off")
    .option("--async-scheduling", "schedule the next step while the device runs this one (default)", ENGINE_DEFAULTS.asyncScheduling)
    .option("--no-async-scheduling", "schedule each step after the previous one has finished (for debugging; outputs are the same)")
    .option("--dtype <dtype>", "auto, bfloat16, float16, float32", "auto")
    .option("-q, --quantization <method>", "quantize the weights at load: int8 or fp8 (weight-only, per-channel scales)")
    .option("--kv-cache-dtype <dtype>", "KV cache element type: auto (the activation dtype) or fp8 (e4m3, half the bytes of bf16)", "auto")
    .option("--seed <s>", "engine seed for requests without one", intArg("--seed", 0), 0)
    .option("--generation-config <mode>", "auto: request defaults from generation_config.json; vllm: ignore it", "auto")
    .option("--threads <n>", "CPU threads (default: all cores)", intArg("--threads", 1))
    .option(
      "--max-queue-len <n>",
      "sequences (prompts × n of each request) that may wait beyond the running batch before new requests get 429",
      intArg("--max-queue-len", 0),
      1024,
    )
    .option(
      "--shutdown-timeout <s>",
      "on SIGTERM: new requests get 503, in-flight ones finish for up to this many seconds, then end with an error; the process exits 0 by then",
      intArg("--shutdown-timeout", 0),
      30,
    )
    .option(
      "--request-timeout <s>",
      "seconds a request's headers and body may take to arrive (slow clients get 408)",
      intArg("--request-timeout", 1),
      60,
    )
    .option("--headers-timeout <s>", "seconds a request's headers may take to arrive", intArg("--headers-timeout", 1), 20)
    .option("--max-connections <n>", "open HTTP connections at most; more are refused", intArg("--max-connections", 1), 4096)
    .option("--device <device>", "auto (CUDA, else a hardware WebGPU adapter, else CPU; says which and why), cpu, cuda or webgpu", "auto")
    .option("--stub-model", "serve the model's config and tokenizer with free random logits, no weights: measures the server itself", false)
    .option(
      "--stub-step-ms <ms>",
      "with --stub-model: each engine step takes this long (a device's pace, for router and autoscaler load tests)",
      intArg("--stub-step-ms", 0),
      0,
    )
    .action((dir: string, flags: ServeFlags) => serveCommand(dir, flags));
  program
    .command("quantize")
    .description("write a Hugging Face model folder as a GGUF file that llama.cpp, Ollama and tokamak load")
    .argument("<model-dir>", "folder with config.json, *.safetensors and tokenizer.json")
    .requiredOption("-o, --output <file>", "the .gguf file to write")
    .option("--type <type>", `element type: ${GGUF_FILE_TYPE_NAMES.join(", ")}, or auto (as stored)`, "q4_k_m")
    .action((dir: string, flags: { output: string; type: string }) => quantizeCommand(dir, flags));
  registerPlan(program, parseBytes, intArg);
  registerBenchServe(program);
  registerRouter(program);
  return program;
}

// `tokamak plan ... | head` closes the pipe early: that is the reader's choice, not an error.
process.stdout.on("error", (err: NodeJS.ErrnoException) => {
  if (err.code === "EPIPE") process.exit(0);
  throw err;
});

try {
  await buildProgram().parseAsync(process.argv);
} catch (err) {
  // Bad input is the user's to fix: say what was wrong, without a stack trace.
  process.stderr.write(`error: ${(err as Error).message}\n`);
  process.exitCode = 1;
}
