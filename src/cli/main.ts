#!/usr/bin/env node
import { Command, InvalidArgumentError } from "commander";
import { readFileSync } from "node:fs";
import { CpuBackend } from "../backend/cpu/cpu-backend.js";
import { parseDType } from "../backend/dtype.js";
import { Generator } from "../engine/generator.js";
import { Tokenizer } from "../tokenizer/tokenizer.js";
import { progressBar } from "./progress.js";

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
  chat: boolean;
  ignoreEos: boolean;
}

function generateCommand(modelDir: string, flags: GenerateFlags): void {
  const tokenizer = Tokenizer.fromDir(modelDir);
  const text = flags.chat
    ? tokenizer.applyChatTemplate([{ role: "user", content: flags.prompt }], { addGenerationPrompt: true })
    : flags.prompt;
  const prompt = tokenizer.encode(text, { addSpecialTokens: !flags.chat });
  const backend = new CpuBackend({ threads: flags.threads });
  try {
    const bar = progressBar("loading weights");
    const gen = Generator.open(modelDir, backend, {
      maxModelLen: prompt.length + flags.maxTokens,
      dtype: flags.dtype ? parseDType(flags.dtype, "--dtype") : undefined,
      onProgress: bar,
    });
    bar.end();
    const result = gen.generate(prompt, {
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
        `(backend ${backend.name}, ${backend.threads} threads, finish: ${result.finishReason})\n`,
    );
  } finally {
    backend.dispose();
  }
}

export function buildProgram(): Command {
  const program = new Command("tokamak").description("An LLM runtime: serve and run Hugging Face models").version(version);
  program
    .command("generate")
    .description("generate text from a prompt with a Hugging Face model folder")
    .argument("<model-dir>", "folder with config.json, *.safetensors and tokenizer.json")
    .requiredOption("-p, --prompt <text>", "the prompt")
    .option("-n, --max-tokens <n>", "tokens to generate", intArg("--max-tokens", 1), 64)
    .option("--temperature <t>", "sampling temperature; 0 is greedy", floatArg("--temperature", 0, 100), 0)
    .option("--top-k <k>", "keep the k most likely tokens (0: all)", intArg("--top-k", 0), 0)
    .option("--top-p <p>", "nucleus sampling mass", floatArg("--top-p", 0, 1), 1)
    .option("--seed <s>", "random seed for sampling", intArg("--seed", 0))
    .option("--threads <n>", "CPU threads (default: all cores)", intArg("--threads", 1))
    .option("--dtype <dtype>", "weight dtype: bfloat16, float16, float32 (default: as stored)")
    .option("--chat", "wrap the prompt in the model's chat template", false)
    .option("--ignore-eos", "keep generating past end-of-sequence tokens", false)
    .action((dir: string, flags: GenerateFlags) => generateCommand(dir, flags));
  return program;
}

try {
  await buildProgram().parseAsync(process.argv);
} catch (err) {
  // Bad input is the user's to fix: say what was wrong, without a stack trace.
  process.stderr.write(`error: ${(err as Error).message}\n`);
  process.exitCode = 1;
}
