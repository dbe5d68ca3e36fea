/** `tokamak plan`: what fits where, before loading anything. */
import { type Command, InvalidArgumentError } from "commander";
import { existsSync, readFileSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { type DType, parseDType } from "../backend/dtype.js";
import { GGUF_FILE_TYPE_NAMES } from "../convert/gguf-file-types.js";
import { parseConfig } from "../model/config.js";
import { isGgufPath } from "../model/gguf-model.js";
import { loadModelConfig } from "../model/load.js";
import { formatBytes, type PlanOptions, planMemory, weightFormat } from "../model/memory-plan.js";
import { ENGINE_DEFAULTS } from "../defaults.js";

interface PlanFlags {
  gpus?: number;
  gpuMemory?: number;
  gpuMemoryUtilization: number;
  dtype: string;
  quantization: string;
  kvCacheDtype: string;
  maxModelLen?: number;
  maxNumSeqs: number;
  maxNumBatchedTokens: number;
  blockSize: number;
  kvCacheMemory?: number;
  device: string;
  json: boolean;
}

/** The formats every plan lists the weight bytes of: load-time quantizations, then GGUF types from large to small. */
const FORMATS = ["int8", "fp8", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0"];

export function registerPlan(
  program: Command,
  parseBytes: (v: string) => number,
  intArg: (name: string, min: number) => (v: string) => number,
): void {
  program
    .command("plan")
    .description("print what a model needs and what fits: weights, KV cache, concurrency, activations, and the flags to use")
    .argument("<model>", "a Hugging Face model folder, its config.json, or a GGUF file")
    .option("--device <device>", "cpu or cuda (default: cuda when --gpus or --gpu-memory is given, else cpu)")
    .option("--gpus <n>", "number of GPUs (tensor parallel)", intArg("--gpus", 1))
    .option("--gpu-memory <bytes>", "memory per GPU, e.g. 80GiB", parseBytes)
    .option(
      "--gpu-memory-utilization <f>",
      "fraction of GPU memory to use",
      (v: string) => {
        const f = Number(v);
        if (!(f > 0 && f <= 1)) throw new InvalidArgumentError(`--gpu-memory-utilization must be in (0, 1], got "${v}"`);
        return f;
      },
      ENGINE_DEFAULTS.gpuMemoryUtilization,
    )
    .option("--dtype <dtype>", "weight dtype: auto (as stored), bfloat16, float16, float32", "auto")
    .option(
      "--quantization <q>",
      `none, or the weights' format: ${FORMATS.join(", ")} or another GGUF type (${GGUF_FILE_TYPE_NAMES.join(", ")})`,
      "none",
    )
    .option("--kv-cache-dtype <dtype>", "auto (the activation dtype) or fp8", "auto")
    .option("--max-model-len <n>", "context length (default: the model's)", intArg("--max-model-len", 2))
    .option("--max-num-seqs <n>", "sequences running at once", intArg("--max-num-seqs", 1), ENGINE_DEFAULTS.maxNumSeqs)
    .option(
      "--max-num-batched-tokens <n>",
      "tokens per engine step",
      intArg("--max-num-batched-tokens", 1),
      ENGINE_DEFAULTS.maxNumBatchedTokens,
    )
    .option("--block-size <n>", "tokens per KV block", intArg("--block-size", 1), ENGINE_DEFAULTS.blockSize)
    .option("--kv-cache-memory <bytes>", "KV cache size on CPU (default 4GiB)", parseBytes)
    .option("--json", "print the plan as JSON", false)
    .action((model: string, flags: PlanFlags) => planCommand(model, flags));
}

function kvDType(v: string): DType | undefined {
  if (v === "auto") return undefined;
  if (v === "fp8" || v === "fp8_e4m3") return "fp8_e4m3";
  throw new Error(`--kv-cache-dtype must be auto, fp8 or fp8_e4m3, got "${v}"`);
}

function readConfig(path: string) {
  if (isGgufPath(path)) return { config: loadModelConfig(path), dir: dirname(path) };
  const file = existsSync(path) && statSync(path).isDirectory() ? join(path, "config.json") : path;
  if (!existsSync(file)) throw new Error(`${file} not found; give a model folder or its config.json`);
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(file, "utf8"));
  } catch (err) {
    throw new Error(`${file}: not valid JSON (${(err as Error).message})`, { cause: err });
  }
  return { config: parseConfig(raw, file), dir: dirname(file) };
}

function planCommand(model: string, f: PlanFlags): void {
  const device = f.device ?? (f.gpus !== undefined || f.gpuMemory !== undefined ? "cuda" : "cpu");
  if (device !== "cpu" && device !== "cuda") throw new Error(`--device must be cpu or cuda, got "${device}"`);
  const known = ["none", "int8", "fp8", ...GGUF_FILE_TYPE_NAMES];
  if (!known.includes(f.quantization)) throw new Error(`--quantization must be one of ${known.join(", ")}; got "${f.quantization}"`);
  const { config } = readConfig(model);
  const weightDType: DType | undefined = f.dtype === "auto" ? undefined : parseDType(f.dtype, "--dtype");
  const stored = weightDType ?? config.torchDtype ?? "bf16";
  const opts: PlanOptions = {
    weightDType,
    activationDType: device === "cpu" ? "f32" : "bf16",
    kvCacheDType: kvDType(f.kvCacheDtype),
    maxModelLen: f.maxModelLen,
    maxNumSeqs: f.maxNumSeqs,
    maxNumBatchedTokens: f.maxNumBatchedTokens,
    blockSize: f.blockSize,
    kvCacheMemory: f.kvCacheMemory,
    gpu:
      device === "cuda" ? { memoryBytes: f.gpuMemory ?? 80 * 2 ** 30, count: f.gpus ?? 1, utilization: f.gpuMemoryUtilization } : undefined,
  };
  const planFor = (q: string) =>
    q === "none" ? planMemory(config, opts) : planMemory(config, { ...opts, weightFormat: weightFormat(q, stored) });
  const plan = planFor(f.quantization);
  const formats = [stored, ...FORMATS].map((q) => ({
    format: q,
    weightBytes: q === stored ? planFor("none").weightBytes : planFor(q).weightBytes,
  }));
  if (f.json) {
    process.stdout.write(
      JSON.stringify({ model, device, config: { architecture: config.architecture }, ...plan, formats }, null, 2) + "\n",
    );
    return;
  }
  const w = (label: string, value: string) => process.stdout.write(`${label.padEnd(34)}${value}\n`);
  process.stdout.write(
    `${config.architecture}: ${config.numLayers} layers, hidden ${config.hiddenSize}, ${config.numHeads} heads (${config.numKvHeads} KV) × ${config.headDim}, vocab ${config.vocabSize}\n`,
  );
  process.stdout.write(
    device === "cpu"
      ? `device: CPU, KV budget --kv-cache-memory\n`
      : `device: ${opts.gpu!.count} × GPU of ${formatBytes(opts.gpu!.memoryBytes)} at ${opts.gpu!.utilization} utilization\n\n`,
  );
  w("parameters", `${(plan.parameters / 1e9).toFixed(3)} B`);
  w("weights", `${formatBytes(plan.weightBytes)}${f.quantization !== "none" ? ` (${f.quantization})` : ""}`);
  w("KV cache per token", `${formatBytes(plan.kvBytesPerToken)} (${formatBytes(plan.bytesPerBlock)} per block of ${f.blockSize})`);
  w("activation arena", `${formatBytes(plan.activationBytes)} (${formatBytes(plan.activationBytesWithoutReuse)} without buffer reuse)`);
  w("per-step inputs", formatBytes(plan.workspaceBytes));
  w("KV cache budget", formatBytes(plan.kvBudgetBytes));
  w("KV blocks", `${plan.numBlocks} (${plan.kvTokens} tokens)`);
  w(`concurrent ${plan.maxModelLen}-token sequences`, `${plan.maxConcurrency.toFixed(2)}`);
  w("total allocated", formatBytes(plan.totalBytes));
  process.stdout.write(`\nweights by format (--quantization; GGUF types as \`tokamak quantize --type\` writes them):\n`);
  for (const x of formats) w(`  ${x.format}`, formatBytes(x.weightBytes));
  if (plan.problems.length > 0) {
    process.stdout.write(`\ndoes not fit:\n${plan.problems.map((p) => `  - ${p}`).join("\n")}\n`);
    if (device === "cuda" && f.quantization === "none") {
      for (const q of FORMATS) {
        const alt = planFor(q);
        if (alt.problems.length === 0) {
          process.stdout.write(
            `  with --quantization ${q}: weights ${formatBytes(alt.weightBytes)}, ${alt.numBlocks} KV blocks (${alt.maxConcurrency.toFixed(2)} sequences)\n`,
          );
        }
      }
    }
  }
  const flags = [
    `--max-model-len ${plan.maxModelLen}`,
    `--max-num-seqs ${f.maxNumSeqs}`,
    device === "cpu"
      ? `--kv-cache-memory ${formatBytes(plan.kvBudgetBytes).replace(/ /g, "")}`
      : `--gpu-memory-utilization ${f.gpuMemoryUtilization}`,
  ];
  process.stdout.write(`\nflags: tokamak serve ${model} ${flags.join(" ")}\n`);
}
