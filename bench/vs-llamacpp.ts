/**
 * Batch-1 generation on the CPU: `tokamak generate` against llama.cpp (node-llama-cpp's
 * prebuilt CPU binaries) on the GGUF twin of the same ~100M-parameter random-weight model,
 * same thread count, same prompt, greedy, end-of-sequence ignored.
 *
 *   npm run bench:llamacpp -- [--threads 2] [--prompt-len 128] [--max-tokens 128] [--dtypes bf16,f32] [--repeats 3]
 *
 * Tokamak runs as the real CLI in a child process (its own "decode N tokens/s" line is read);
 * llama.cpp runs in this process: prompt evaluated in one batch, then one token per step.
 * Runs alternate between the two so a noisy neighbour costs both alike; the best of the
 * repeats is reported (the run least disturbed by the rest of the machine).
 */
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { getLlama, LlamaLogLevel, type Token } from "node-llama-cpp";
import { convertHfToGguf } from "../src/convert/hf-to-gguf.js";
import { Tokenizer } from "../src/tokenizer/tokenizer.js";
import { writeTinyModel } from "../test/helpers/tiny-model.js";
import { flag, machine, numFlag, REPO_ROOT, rng, saveResult } from "./common.js";
import { BENCH_MODEL } from "./models.js";

const threads = numFlag("threads", 2);
const promptLen = numFlag("prompt-len", 128);
const maxTokens = numFlag("max-tokens", 128);
const repeats = numFlag("repeats", 3);
const dtypes = flag("dtypes", "bf16,f32").split(",") as ("bf16" | "f32")[];

const modelDir = join(REPO_ROOT, ".cache", "bench-model");
if (!existsSync(join(modelDir, "config.json"))) {
  process.stderr.write(`writing the bench model (random weights) to ${modelDir}\n`);
  writeTinyModel(modelDir, BENCH_MODEL);
}
const r = rng(7);
const prompt = Array.from({ length: promptLen }, () => 1000 + Math.floor(r() * 30000));
const cli = join(REPO_ROOT, "dist", "src", "cli", "main.js");

function tokamakDecode(dtype: string): { decode: number; prompt: number } {
  // The CLI takes text: the prompt's ids decoded, which re-encode to about as many tokens.
  const text = Tokenizer.fromDir(modelDir).decode(prompt);
  const args = [cli, "generate", modelDir, "--prompt", text, "--max-tokens", String(maxTokens), "--threads", String(threads)];
  args.push("--ignore-eos", "--dtype", dtype === "bf16" ? "bfloat16" : "float32");
  const run = spawnSync(process.execPath, args, { encoding: "utf8", stdio: ["ignore", "ignore", "pipe"] });
  const out = run.stderr;
  if (run.status !== 0) throw new Error(`tokamak generate failed (exit ${run.status}):\n${out}`);
  const m = /prompt: (\d+) tokens in \d+ ms \(([\d.]+) tokens\/s\); generated: \d+ tokens, decode ([\d.]+) tokens\/s/.exec(out);
  if (!m) throw new Error(`could not read tokens/s from tokamak generate's output:\n${out}`);
  return { prompt: Number(m[2]), decode: Number(m[3]) };
}

const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });

async function llamaCppDecode(ggufPath: string): Promise<{ decode: number; prompt: number }> {
  const model = await llama.loadModel({ modelPath: ggufPath, gpuLayers: 0 });
  const context = await model.createContext({ contextSize: promptLen + maxTokens + 16, threads, sequences: 1, batchSize: 512 });
  try {
    const seq = context.getSequence();
    const t0 = performance.now();
    let tFirst = 0;
    let n = 0;
    for await (const _token of seq.evaluate(prompt as Token[], { temperature: 0 })) {
      if (n === 0) tFirst = performance.now();
      if (++n >= maxTokens) break;
    }
    const t1 = performance.now();
    return { prompt: (promptLen * 1000) / (tFirst - t0), decode: ((n - 1) * 1000) / (t1 - tFirst) };
  } finally {
    await context.dispose();
    await model.dispose();
  }
}

const rows: { dtype: string; engine: string; decode: number; prompt: number }[] = [];
for (const dtype of dtypes) {
  const gguf = join(REPO_ROOT, ".cache", `bench-model-${dtype}.gguf`);
  if (!existsSync(gguf)) convertHfToGguf(modelDir, gguf, { outType: dtype });
  const best = { tokamak: { decode: 0, prompt: 0 }, "llama.cpp": { decode: 0, prompt: 0 } };
  for (let i = 0; i < repeats; i++) {
    const runs = { tokamak: tokamakDecode(dtype), "llama.cpp": await llamaCppDecode(gguf) };
    for (const k of ["tokamak", "llama.cpp"] as const) {
      best[k].decode = Math.max(best[k].decode, runs[k].decode);
      best[k].prompt = Math.max(best[k].prompt, runs[k].prompt);
    }
    process.stderr.write(
      `${dtype} run ${i + 1}: tokamak ${runs.tokamak.decode.toFixed(1)}, llama.cpp ${runs["llama.cpp"].decode.toFixed(1)} decode tokens/s\n`,
    );
  }
  for (const k of ["tokamak", "llama.cpp"] as const) rows.push({ dtype, engine: k, ...best[k] });
}
await llama.dispose();

console.log(`batch-1 generation, ${promptLen}-token prompt, ${maxTokens} tokens, ${threads} threads, ${machine()}`);
console.log("| weights | engine | prompt tokens/s | decode tokens/s | tokamak / llama.cpp |");
console.log("|---|---|---:|---:|---:|");
for (const row of rows) {
  const peer = rows.find((x) => x.dtype === row.dtype && x.engine === "llama.cpp")!;
  const ratio = row.engine === "tokamak" ? `${(row.decode / peer.decode).toFixed(2)}×` : "";
  console.log(`| ${row.dtype} | ${row.engine} | ${row.prompt.toFixed(1)} | ${row.decode.toFixed(1)} | ${ratio} |`);
}
console.log(`saved ${saveResult("vs-llamacpp", { threads, promptLen, maxTokens, rows })}`);
