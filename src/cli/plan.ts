/** `tokamak plan`: what fits where, before loading anything. */
import { type Command, InvalidArgumentError } from "commander";
import { existsSync, readFileSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { type DType, dtypeBytes, parseDType } from "../backend/dtype.js";
import { type ModelConfig, parseConfig } from "../model/config.js";
import { formatBytes, type MemoryPlan, type PlanOptions, planMemory } from "../model/memory-plan.js";
import { ENGINE_DEFAULTS } from "../defaults.js";

interface PlanFlags {
  gpus?: number;
  gpuMemory?: number;
  gpuMemoryUtilization: number;
  dtype: string;
  quantization: string;
  maxModelLen?: number;
  maxNumSeqs: number;
  maxNumBatchedTokens: number;
  blockSize: number;
  kvCacheMemory?: number;
  device: string;
  json: boolean;
}

/** Bytes per weight of a matrix under each quantization (scales included), for what-if figures. */
const QUANT_BYTES: Record<string, number> = { int8: 1 + 4 / 4096, fp8: 1 + 4 / 4096, mxfp4: 0.5 + 1 / 32 };

export function registerPlan(
  program: Command,
  parseBytes: (v: string) => number,
  intArg: (name: string, min: number) => (v: string) => number,
): void {
  program
    .command("plan")
    .description("print what a model needs and what fits: weights, KV cache, concurrency, activations, and the flags to use")
    .argument("<model>", "a Hugging Face model folder or its config.json")
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
    .option("--quantization <q>", "none, int8, fp8 or mxfp4 (what-if: serving quantized weights is not in this build yet)", "none")
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

function readConfig(path: string) {
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
  if (!["none", ...Object.keys(QUANT_BYTES)].includes(f.quantization)) {
    throw new Error(`--quantization must be one of none, ${Object.keys(QUANT_BYTES).join(", ")}; got "${f.quantization}"`);
  }
  const { config } = readConfig(model);
  const weightDType: DType | undefined = f.dtype === "auto" ? undefined : parseDType(f.dtype, "--dtype");
  const opts: PlanOptions = {
    weightDType,
    activationDType: device === "cpu" ? "f32" : "bf16",
    maxModelLen: f.maxModelLen,
    maxNumSeqs: f.maxNumSeqs,
    maxNumBatchedTokens: f.maxNumBatchedTokens,
    blockSize: f.blockSize,
    kvCacheMemory: f.kvCacheMemory,
    gpu:
      device === "cuda" ? { memoryBytes: f.gpuMemory ?? 80 * 2 ** 30, count: f.gpus ?? 1, utilization: f.gpuMemoryUtilization } : undefined,
  };
  const plan = f.quantization === "none" ? planMemory(config, opts) : quantized(config, f.quantization, opts);
  if (f.json) {
    process.stdout.write(JSON.stringify({ model, device, config: { architecture: config.architecture }, ...plan }, null, 2) + "\n");
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
  if (plan.problems.length > 0) {
    process.stdout.write(`\ndoes not fit:\n${plan.problems.map((p) => `  - ${p}`).join("\n")}\n`);
    if (device === "cuda" && f.quantization === "none") {
      for (const q of Object.keys(QUANT_BYTES)) {
        const alt = quantized(config, q, opts);
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

/** The plan with matrices stored quantized (what-if figures; scales included); on a GPU the bytes saved go to the KV cache. */
function quantized(config: ModelConfig, q: string, opts: PlanOptions): MemoryPlan {
  const { hiddenSize: H, headDim: D, numHeads: Hq, numKvHeads: Hkv, intermediateSize: I, vocabSize: V } = config;
  const matrixParams = config.numLayers * ((Hq + 2 * Hkv) * D * H + H * Hq * D + 3 * I * H) + V * H * (config.tieWordEmbeddings ? 1 : 2);
  const elt = dtypeBytes(opts.weightDType ?? config.torchDtype ?? "bf16");
  const saved = matrixParams * elt - Math.ceil(matrixParams * QUANT_BYTES[q]!);
  const gpu = opts.gpu;
  // On a GPU, weights that shrink by `saved` leave that much more usable memory to the KV cache.
  const p = gpu
    ? planMemory(config, { ...opts, gpu: { ...gpu, memoryBytes: gpu.memoryBytes + saved / (gpu.utilization * gpu.count) } })
    : planMemory(config, opts);
  return { ...p, weightBytes: p.weightBytes - saved, totalBytes: p.totalBytes - saved };
}
