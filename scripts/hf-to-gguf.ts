/**
 * Convert a Hugging Face model folder (Llama, Mistral, Qwen2, Qwen3) to a GGUF file for llama.cpp.
 *
 *   node dist/scripts/hf-to-gguf.js <model-dir> <out.gguf> [--outtype f32|f16|bf16|auto] [--name NAME] [--pre NAME]
 */
import { statSync } from "node:fs";
import { parseArgs } from "node:util";
import { convertHfToGguf, type GgufOutType } from "../src/convert/hf-to-gguf.js";

const USAGE = "usage: hf-to-gguf <model-dir> <out.gguf> [--outtype f32|f16|bf16|auto] [--name NAME] [--pre LLAMA_CPP_PRE_TOKENIZER]";
const OUT_TYPES: readonly GgufOutType[] = ["f32", "f16", "bf16", "auto"];

function fail(message: string): never {
  process.stderr.write(`error: ${message}\n${USAGE}\n`);
  process.exit(1);
}

function main(argv: string[]): void {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: { outtype: { type: "string" }, name: { type: "string" }, pre: { type: "string" }, help: { type: "boolean", short: "h" } },
    });
  } catch (err) {
    fail((err as Error).message);
  }
  const { values, positionals } = parsed;
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  if (positionals.length !== 2) fail(`expected a model folder and an output path, got ${positionals.length} arguments`);
  const outType = (values.outtype ?? "auto") as GgufOutType;
  if (!OUT_TYPES.includes(outType)) fail(`--outtype must be one of ${OUT_TYPES.join(", ")}, got "${values.outtype}"`);
  const [modelDir, outPath] = positionals as [string, string];
  const t0 = performance.now();
  let result;
  try {
    result = convertHfToGguf(modelDir, outPath, { outType, name: values.name, pre: values.pre });
  } catch (err) {
    process.stderr.write(`error: ${(err as Error).message}\n`);
    process.exit(1);
  }
  for (const w of result.warnings) process.stderr.write(`warning: ${w}\n`);
  const mib = statSync(outPath).size / 2 ** 20;
  const cut =
    result.droppedTokens > 0
      ? ` (${result.droppedTokens} tokenizer tokens and ${result.droppedMerges} merges beyond the embedding left out)`
      : "";
  process.stdout.write(
    `wrote ${outPath}: ${result.architecture}, ${result.outType}, ${result.tensorCount} tensors, ${result.vocabSize} tokens${cut}, ${mib.toFixed(1)} MiB in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`,
  );
}

main(process.argv.slice(2));
