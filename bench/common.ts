/** Shared bits of the benchmarks: a seeded PRNG, the nano-vllm workload, and result files. */
import { appendFileSync, existsSync, mkdirSync, writeFileSync } from "node:fs";
import { cpus, totalmem } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const REPO_ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

export function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

export interface WorkloadItem {
  prompt: number[];
  outputLen: number;
}

/** nano-vllm's bench.py workload: random token ids, input and output lengths uniform in the given ranges. */
export function randomWorkload(n: number, vocab: number, input: [number, number], output: [number, number], seed = 0): WorkloadItem[] {
  const r = rng(seed);
  const int = (lo: number, hi: number) => lo + Math.floor(r() * (hi - lo + 1));
  return Array.from({ length: n }, () => ({
    prompt: Array.from({ length: int(input[0], input[1]) }, () => int(0, vocab - 1)),
    outputLen: int(output[0], output[1]),
  }));
}

export function machine(): string {
  const c = cpus();
  return `${c.length}× ${c[0]?.model.trim() ?? "cpu"}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}`;
}

/** Write the JSON result under bench/results/ (ignored by git) and print where. */
export function saveResult(name: string, result: object): string {
  const dir = join(REPO_ROOT, "bench", "results");
  if (!existsSync(dir)) mkdirSync(dir, { recursive: true });
  const path = join(dir, `${name}-${new Date().toISOString().replace(/[:.]/g, "-")}.json`);
  writeFileSync(path, JSON.stringify({ date: new Date().toISOString(), machine: machine(), ...result }, null, 2) + "\n");
  appendFileSync(join(dir, `${name}.jsonl`), JSON.stringify({ date: new Date().toISOString(), ...result }) + "\n");
  return path;
}

/** A flag's value from argv (`--name value`), or the default. */
export function flag(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1]! : def;
}

export function numFlag(name: string, def: number): number {
  const v = Number(flag(name, String(def)));
  if (!Number.isFinite(v)) throw new Error(`--${name} must be a number, got "${flag(name, "")}"`);
  return v;
}
