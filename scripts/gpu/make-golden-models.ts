/**
 * Write the tiny random-weight models that golden logits are made on, one folder per entry of
 * GOLDEN_MODELS (test/helpers/golden-models.ts), each with a prompts.json beside its config.json
 * for scripts/gpu/golden_logits.py to run:
 *
 *   node dist/scripts/gpu/make-golden-models.js <dir> [--only llama,qwen3]
 *
 * The weights come from fixed seeds, so the same folders come out on any machine; the fixtures
 * record each file's SHA-256, and the golden test makes the models again and checks it.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import {
  GOLDEN_FORMAT,
  GOLDEN_MODELS,
  GOLDEN_STEPS,
  GOLDEN_TOP_K,
  type GoldenPromptsFile,
  goldenPrompts,
  modelFileHashes,
} from "../../test/helpers/golden-models.js";
import { TINY_VOCAB_SIZE, writeTinyModel } from "../../test/helpers/tiny-model.js";

const USAGE = `usage: make-golden-models <dir> [--only NAME,...]
  models: ${GOLDEN_MODELS.map((m) => m.name).join(", ")}`;

function fail(message: string): never {
  process.stderr.write(`error: ${message}\n${USAGE}\n`);
  process.exit(1);
}

function main(): void {
  let parsed;
  try {
    parsed = parseArgs({ allowPositionals: true, options: { only: { type: "string" }, help: { type: "boolean" } } });
  } catch (err) {
    fail((err as Error).message);
  }
  if (parsed.values.help) {
    process.stdout.write(USAGE + "\n");
    return;
  }
  if (parsed.positionals.length !== 1) fail("expected exactly one output folder");
  const wanted = parsed.values.only?.split(",").filter((s) => s !== "");
  const unknown = wanted?.filter((n) => !GOLDEN_MODELS.some((m) => m.name === n)) ?? [];
  if (unknown.length > 0) fail(`--only: unknown model ${unknown.map((n) => `"${n}"`).join(", ")}`);
  const models = GOLDEN_MODELS.filter((m) => !wanted || wanted.includes(m.name));
  for (const m of models) {
    const dir = join(parsed.positionals[0]!, m.name);
    const start = performance.now();
    writeTinyModel(dir, m.options);
    const prompts: GoldenPromptsFile = {
      format: GOLDEN_FORMAT,
      name: m.name,
      options: m.options,
      top_k: GOLDEN_TOP_K,
      steps: GOLDEN_STEPS,
      prompts: goldenPrompts(m.options.vocabSize ?? TINY_VOCAB_SIZE),
    };
    writeFileSync(join(dir, "prompts.json"), JSON.stringify(prompts, null, 2) + "\n");
    const weights = Object.entries(modelFileHashes(dir)).find(([f]) => f.endsWith(".safetensors"));
    const ms = (performance.now() - start).toFixed(0);
    process.stderr.write(
      `wrote ${dir} (${m.options.arch} ${m.options.dtype ?? "bf16"}, ${ms} ms, ${weights?.[0]} ${weights?.[1].slice(0, 16)}…)\n`,
    );
  }
}

main();
