/**
 * Batch-1 generation on the CPU: `tokamak generate` against llama.cpp (node-llama-cpp's
 * prebuilt CPU binaries) on the same ~100M-parameter random-weight model, same thread count,
 * same prompt, greedy, end-of-sequence ignored. For bf16/f32 Tokamak reads the Hugging Face
 * folder and llama.cpp its GGUF twin; for the quantized formats both run the same GGUF file,
 * written by `tokamak quantize`. Also: `tokamak serve`'s resident memory against the file size.
 *
 *   npm run bench:llamacpp -- [--threads 2] [--prompt-len 128] [--max-tokens 128] [--formats bf16,q8_0,q4_k_m] [--repeats 3]
 *
 * Tokamak runs as the real CLI in a child process (its own "decode N tokens/s" line is read);
 * llama.cpp runs in this process: prompt evaluated in one batch, then one token per step.
 * Runs alternate between the two so a noisy neighbour costs both alike; the best of the
 * repeats is reported (the run least disturbed by the rest of the machine).
 */
import { spawn, spawnSync } from "node:child_process";
import { existsSync, readFileSync, statSync } from "node:fs";
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
const formats = flag("formats", flag("dtypes", "bf16,q8_0,q4_k_m")).split(",");
const dense = (f: string) => f === "bf16" || f === "f32";

const modelDir = join(REPO_ROOT, ".cache", "bench-model");
if (!existsSync(join(modelDir, "config.json"))) {
  process.stderr.write(`writing the bench model (random weights) to ${modelDir}\n`);
  writeTinyModel(modelDir, BENCH_MODEL);
}
const r = rng(7);
const prompt = Array.from({ length: promptLen }, () => 1000 + Math.floor(r() * 30000));
const cli = join(REPO_ROOT, "dist", "src", "cli", "main.js");

function tokamakDecode(format: string, gguf: string): { decode: number; prompt: number } {
  // The CLI takes text: the prompt's ids decoded, which re-encode to about as many tokens.
  const text = Tokenizer.fromDir(modelDir).decode(prompt);
  const model = dense(format) ? modelDir : gguf;
  const args = [cli, "generate", model, "--prompt", text, "--max-tokens", String(maxTokens), "--threads", String(threads), "--ignore-eos"];
  if (dense(format)) args.push("--dtype", format === "bf16" ? "bfloat16" : "float32");
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

/** `tokamak serve`'s resident set once it is ready to serve (VmRSS of the process, its worker threads included). */
async function serveRss(model: string): Promise<number> {
  const child = spawn(process.execPath, [cli, "serve", model, "--port", "0", "--kv-cache-memory", "64MiB", "--threads", String(threads)], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  try {
    await new Promise<void>((resolve, reject) => {
      let err = "";
      child.stderr.on("data", (d: Buffer) => {
        err += d.toString();
        if (err.includes("OpenAI-compatible API at")) resolve();
      });
      child.on("exit", (code) => reject(new Error(`tokamak serve exited (${code}):\n${err}`)));
    });
    const status = readFileSync(`/proc/${child.pid}/status`, "utf8");
    return Number(/VmRSS:\s+(\d+) kB/.exec(status)![1]) * 1024;
  } finally {
    child.kill("SIGKILL");
  }
}

const rows: { dtype: string; engine: string; decode: number; prompt: number }[] = [];
const memory: { format: string; fileBytes: number; rssBytes: number }[] = [];
for (const dtype of formats) {
  const gguf = join(REPO_ROOT, ".cache", `bench-model-${dtype}.gguf`);
  if (!existsSync(gguf)) convertHfToGguf(modelDir, gguf, { outType: dtype });
  memory.push({ format: dtype, fileBytes: statSync(gguf).size, rssBytes: await serveRss(dense(dtype) ? modelDir : gguf) });
  const best = { tokamak: { decode: 0, prompt: 0 }, "llama.cpp": { decode: 0, prompt: 0 } };
  for (let i = 0; i < repeats; i++) {
    const runs = { tokamak: tokamakDecode(dtype, gguf), "llama.cpp": await llamaCppDecode(gguf) };
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
console.log("| weights | engine | prompt tokens/s | decode tokens/s | tokamak / llama.cpp prompt | decode |");
console.log("|---|---|---:|---:|---:|---:|");
for (const row of rows) {
  const peer = rows.find((x) => x.dtype === row.dtype && x.engine === "llama.cpp")!;
  const ratios = row.engine === "tokamak" ? `${(row.prompt / peer.prompt).toFixed(2)}× | ${(row.decode / peer.decode).toFixed(2)}×` : " | ";
  console.log(`| ${row.dtype} | ${row.engine} | ${row.prompt.toFixed(1)} | ${row.decode.toFixed(1)} | ${ratios} |`);
}
const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;
console.log("\n| format | GGUF file | tokamak serve RSS (64 MiB KV cache) |\n|---|---:|---:|");
for (const m of memory) console.log(`| ${m.format} | ${mib(m.fileBytes)} | ${mib(m.rssBytes)} |`);
console.log(`saved ${saveResult("vs-llamacpp", { threads, promptLen, maxTokens, rows, memory })}`);
