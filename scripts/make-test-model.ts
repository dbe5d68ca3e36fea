/**
 * Write a random-weight Hugging Face model folder (the Qwen3 tokenizer included),
 * for trying the CLI and for benchmarks without downloading weights.
 *
 *   node dist/scripts/make-test-model.js <dir> --arch qwen3 --dtype bf16 --hidden 512 --layers 8
 *   node dist/scripts/make-test-model.js <dir> --preset bench     # ~100M parameters
 */
import { parseArgs } from "node:util";
import { BENCH_MODEL } from "../bench/models.js";
import { type TinyArch, type TinyModelOptions, tinyModelParameters, writeTinyModel } from "../test/helpers/tiny-model.js";

const USAGE = `usage: make-test-model <dir> [--preset tiny|bench] [--arch llama|mistral|qwen2|qwen3] [--dtype bf16|f16|f32]
  [--hidden N] [--layers N] [--heads N] [--kv-heads N] [--head-dim N] [--intermediate N] [--tie]
  [--rope-theta X] [--max-positions N] [--rms-eps X] [--seed N] [--shards N]`;

/** bench: ~25M parameters of layers plus 78M of embeddings (tied), the shape of a small real model. */
const PRESETS: Record<string, Partial<TinyModelOptions>> = {
  tiny: {},
  bench: BENCH_MODEL,
};

const ARCHS: TinyArch[] = ["llama", "mistral", "qwen2", "qwen3"];
const DTYPES = ["bf16", "f16", "f32"] as const;

function fail(message: string): never {
  process.stderr.write(`error: ${message}\n${USAGE}\n`);
  process.exit(1);
}

function int(flag: string, v: string | undefined, min = 1): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) fail(`--${flag} must be an integer >= ${min}, got "${v}"`);
  return n;
}

function positive(flag: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!(n > 0) || !Number.isFinite(n)) fail(`--${flag} must be a positive number, got "${v}"`);
  return n;
}

function oneOf<T extends string>(flag: string, v: string | undefined, allowed: readonly T[]): T | undefined {
  if (v === undefined) return undefined;
  if (!allowed.includes(v as T)) fail(`--${flag} must be one of ${allowed.join(", ")}, got "${v}"`);
  return v as T;
}

/** Drop the flags not given, so they do not override the preset. */
function defined(o: Partial<TinyModelOptions>): Partial<TinyModelOptions> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined));
}

function parse(argv: string[]): { dir: string; opts: TinyModelOptions } {
  const str = { type: "string" } as const;
  const { values: v, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    // prettier-ignore
    options: {
      preset: str, arch: str, dtype: str, hidden: str, layers: str, heads: str, "kv-heads": str, "head-dim": str, intermediate: str,
      tie: { type: "boolean" }, "rope-theta": str, "max-positions": str, "rms-eps": str, seed: str, shards: str, help: { type: "boolean" },
    },
  });
  if (v.help) {
    process.stdout.write(USAGE + "\n");
    process.exit(0);
  }
  if (positionals.length !== 1) fail("expected exactly one output folder");
  const preset = PRESETS[v.preset ?? "tiny"] ?? fail(`--preset must be one of ${Object.keys(PRESETS).join(", ")}, got "${v.preset}"`);
  const flags = defined({
    dtype: oneOf("dtype", v.dtype, DTYPES),
    hiddenSize: int("hidden", v.hidden),
    numLayers: int("layers", v.layers),
    numHeads: int("heads", v.heads),
    numKvHeads: int("kv-heads", v["kv-heads"]),
    headDim: int("head-dim", v["head-dim"]),
    intermediateSize: int("intermediate", v.intermediate),
    tieWordEmbeddings: v.tie,
    ropeTheta: positive("rope-theta", v["rope-theta"]),
    maxPositionEmbeddings: int("max-positions", v["max-positions"]),
    rmsNormEps: positive("rms-eps", v["rms-eps"]),
    seed: int("seed", v.seed, 0),
    shards: int("shards", v.shards),
  });
  const arch = oneOf("arch", v.arch, ARCHS) ?? "qwen3";
  return { dir: positionals[0]!, opts: { ...preset, ...flags, arch } };
}

function main(): void {
  let parsed: ReturnType<typeof parse>;
  try {
    parsed = parse(process.argv.slice(2));
  } catch (err) {
    fail((err as Error).message); // unknown flags, missing values
  }
  const { dir, opts } = parsed;
  const start = performance.now();
  writeTinyModel(dir, opts);
  const seconds = ((performance.now() - start) / 1000).toFixed(1);
  const millions = (tinyModelParameters(opts) / 1e6).toFixed(1);
  process.stderr.write(`wrote ${dir}: ${opts.arch} ${opts.dtype ?? "bf16"}, ${millions}M parameters, in ${seconds} s\n`);
}

main();
