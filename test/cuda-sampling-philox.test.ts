/**
 * The CUDA sampling kernels (src/backend/cuda/kernels/sampling.cu) checked without a GPU:
 *
 * 1. Philox: sampling.cu's host-and-device philox2x32_10 and philox_uniform, compiled for the host with
 *    nvcc, give the same words and the same doubles as philox2x32 / uniform of src/backend/rng.ts (the
 *    device path differs only in using __umulhi for the high word). Skipped when nvcc is not found.
 * 2. Semantics: the six kernels, compiled for the host with g++ against a small emulation of the CUDA
 *    thread model (one OS thread per CUDA thread, real barriers for __syncthreads and the warp
 *    collectives, shared memory as statics), run the whole sampling op — logsumexp of the raw rows,
 *    processors, masks, argmax, sampling, logprobs — on random rows, and must agree with sampleRows of
 *    src/backend/cpu/sample.ts: the same tokens, the same processed logits (bit for bit, up to the sign
 *    of a zero, see the header of sampling.cu), the same top-n tokens and logprobs within 1e-12. This is
 *    a check of the algorithms and of the barrier discipline (a barrier reached by some threads only
 *    hangs the emulation), not of the device: memory ordering, __umulhi and real warp scheduling are
 *    the GPU's to check. Skipped when g++ (C++20) is not found.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";
import { after, describe, it } from "node:test";
import { sampleRows } from "../src/backend/cpu/sample.js";
import { Rng, philox2x32, uniform } from "../src/backend/rng.js";
import { type SampleRow, SamplingRow, type SamplingRowParams } from "../src/backend/sampling.js";

const KERNEL_DIR = join(import.meta.dirname, "..", "..", "src", "backend", "cuda", "kernels");

function findTool(name: string, extraDirs: string[] = []): { path?: string; searched: string[] } {
  const dirs = [...extraDirs, ...(process.env.PATH ?? "").split(delimiter).filter((d) => d !== "")];
  const searched = dirs.map((d) => join(d, name));
  return { path: searched.find((p) => existsSync(p)), searched };
}

function findNvcc() {
  const dirs: string[] = [];
  for (const env of ["CUDA_HOME", "CUDA_PATH"]) if (process.env[env]) dirs.push(join(process.env[env]!, "bin"));
  dirs.push("/usr/local/cuda/bin");
  return findTool("nvcc", dirs);
}

const work = mkdtempSync(join(tmpdir(), "tokamak-sampling-"));
after(() => rmSync(work, { recursive: true, force: true }));

function exec(cmd: string, args: string[], input?: string): string {
  const r = spawnSync(cmd, args, { encoding: "utf8", input, maxBuffer: 256 * 1024 * 1024, timeout: 300_000 });
  assert.equal(r.status, 0, `${cmd} ${args.join(" ")} failed (${r.status ?? r.signal}):\n${r.stdout}${r.stderr}`);
  return r.stdout;
}

// ---------------------------------------------------------------- 1. Philox (nvcc, host code)

const PHILOX_MAIN = `#include "sampling.cu"
#include <cstdio>
#include <cstring>
int main() {
  unsigned key, c0, c1;
  while (std::scanf("%x %x %x", &key, &c0, &c1) == 3) {
    unsigned w0, w1;
    tk::philox2x32_10(key, c0, c1, w0, w1);
    const double u = tk::philox_uniform(key, c0);
    unsigned long long bits;
    std::memcpy(&bits, &u, 8);
    std::printf("%08x %08x %016llx\\n", w0, w1, bits);
  }
  return 0;
}
`;

const nvcc = findNvcc();

describe("sampling.cu Philox2x32-10", { skip: nvcc.path ? false : `nvcc not found; searched ${nvcc.searched.join(", ")}` }, () => {
  it("gives rng.ts's words and uniform doubles (host build of the __host__ __device__ functions)", { timeout: 300_000 }, () => {
    const src = join(work, "philox.cu");
    const bin = join(work, "philox");
    writeFileSync(src, PHILOX_MAIN);
    exec(nvcc.path!, ["-std=c++17", "-arch=sm_80", "-I", KERNEL_DIR, "-o", bin, src]);
    const rng = new Rng(20240601);
    const inputs: [number, number, number][] = [
      [0, 0, 0],
      [0, 0, 1],
      [1, 0, 0],
      [0xffffffff, 0xffffffff, 0xffffffff],
      [0x12345678, 7, 0],
      [0xdeadbeef, 1000000, 1],
    ];
    for (let i = 0; i < 200; i++) inputs.push([rng.nextU32(), i < 100 ? i : rng.nextU32(), i % 3 === 0 ? 1 : 0]);
    const lines = exec(bin, [], inputs.map((v) => v.map((x) => x.toString(16)).join(" ")).join("\n") + "\n")
      .trim()
      .split("\n");
    assert.equal(lines.length, inputs.length);
    const words = new Uint32Array(2);
    const f64 = new Float64Array(1);
    const bits = new BigUint64Array(f64.buffer);
    inputs.forEach(([key, c0, c1], i) => {
      philox2x32(key, c0, c1, words);
      f64[0] = uniform(key, c0);
      const want = `${words[0]!.toString(16).padStart(8, "0")} ${words[1]!.toString(16).padStart(8, "0")} ${bits[0]!.toString(16).padStart(16, "0")}`;
      assert.equal(lines[i], want, `philox(key ${key.toString(16)}, counter (${c0.toString(16)}, ${c1.toString(16)}))`);
    });
  });
});

// ---------------------------------------------------------------- 2. the kernels under a CPU emulation (g++)

/** The CUDA built-ins sampling.cu uses, for one CTA of real threads. */
const EMU_HEADER = String.raw`#pragma once
#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
struct EmuDim { unsigned x, y, z; };
inline thread_local EmuDim threadIdx, blockIdx;
inline EmuDim blockDim, gridDim;
struct EmuWarp { std::barrier<>* bar; uint64_t buf[32]; };
inline std::barrier<>* emu_block_bar;
inline std::vector<EmuWarp>* emu_warps;
inline void __syncthreads() { emu_block_bar->arrive_and_wait(); }
inline EmuWarp& emu_warp() { return (*emu_warps)[threadIdx.x / 32]; }
inline void __syncwarp(unsigned = 0xffffffffu) { emu_warp().bar->arrive_and_wait(); }
template <class T> T emu_exchange(T v, int src) {
  static_assert(sizeof(T) <= 8);
  EmuWarp& w = emu_warp();
  uint64_t raw = 0;
  std::memcpy(&raw, &v, sizeof(T));
  w.buf[threadIdx.x & 31] = raw;
  w.bar->arrive_and_wait();
  raw = w.buf[src];
  w.bar->arrive_and_wait();
  T out;
  std::memcpy(&out, &raw, sizeof(T));
  return out;
}
template <class T> T __shfl_xor_sync(unsigned, T v, int o) { return emu_exchange(v, (int)(threadIdx.x & 31) ^ o); }
template <class T> T __shfl_up_sync(unsigned, T v, int o) { const int l = threadIdx.x & 31; return emu_exchange(v, l >= o ? l - o : l); }
template <class T> T __shfl_sync(unsigned, T v, int s) { return emu_exchange(v, s); }
inline unsigned emu_collect(uint64_t mine, bool (*match)(uint64_t, uint64_t)) {
  EmuWarp& w = emu_warp();
  w.buf[threadIdx.x & 31] = mine;
  w.bar->arrive_and_wait();
  unsigned m = 0;
  for (int i = 0; i < 32; i++) if (match(w.buf[i], mine)) m |= 1u << i;
  w.bar->arrive_and_wait();
  return m;
}
inline unsigned __ballot_sync(unsigned, bool p) { return emu_collect(p, [](uint64_t other, uint64_t) { return other != 0; }); }
inline unsigned __match_any_sync(unsigned, unsigned v) { return emu_collect(v, [](uint64_t other, uint64_t mine) { return other == mine; }); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(unsigned x) { return __builtin_ffs((int)x); }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline float __uint_as_float(unsigned i) { float f; std::memcpy(&f, &i, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned i; std::memcpy(&i, &f, 4); return i; }
inline long long __double_as_longlong(double d) { long long i; std::memcpy(&i, &d, 8); return i; }
inline double __longlong_as_double(long long i) { double d; std::memcpy(&d, &i, 8); return d; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
using std::max;
using std::min;
/** One CTA of block threads (the kernels loop over rows grid-stride, so one CTA does every row). */
inline void emu_launch(int block, const std::function<void()>& body) {
  std::barrier<> bar(block);
  std::vector<EmuWarp> warps(block / 32);
  std::vector<std::unique_ptr<std::barrier<>>> warp_bars;
  for (auto& w : warps) {
    warp_bars.emplace_back(new std::barrier<>(32));
    w.bar = warp_bars.back().get();
  }
  emu_block_bar = &bar;
  emu_warps = &warps;
  blockDim = {(unsigned)block, 1, 1};
  gridDim = {1, 1, 1};
  std::vector<std::thread> threads;
  for (int t = 0; t < block; t++) threads.emplace_back([t, &body] { threadIdx = {(unsigned)t, 0, 0}; blockIdx = {0, 0, 0}; body(); });
  for (auto& t : threads) t.join();
}
`;

/** Stands in for common.cuh (whose f16 helpers are PTX): what sampling.cu takes from it. */
const EMU_COMMON = String.raw`#pragma once
namespace tk {
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;
constexpr u32 kFullMask = 0xffffffffu;
inline float neg_inf() { return __int_as_float(0xff800000); }
inline float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}
}  // namespace tk
`;

/** Reads rows from stdin, runs the op's kernels in the backend's order, prints tokens, logprobs and the processed logits. */
const EMU_MAIN = String.raw`#include "emu.h"
#include "sampling.cu"
#include <cstdio>
#include <cstdlib>
using namespace tk;
static u32 hex() { unsigned v; if (std::scanf("%x", &v) != 1) std::abort(); return v; }
static double num() { char b[64]; if (std::scanf("%63s", b) != 1) std::abort(); return std::strtod(b, nullptr); }
static int integer() { int v; if (std::scanf("%d", &v) != 1) std::abort(); return v; }
template <int B>
static void run() {
  const int V = integer(), R = integer(), stride = integer();
  std::vector<float> logits((size_t)R * stride, 0.0f);
  std::vector<double> temp(R), top_p(R), min_p(R), bias, rep, freq, pres;
  std::vector<int> top_k(R), num_top(R), row_start(R + 1, 0), token, ban, mask_row(R, -1);
  std::vector<u32> key(R), counter(R), masks;
  const int mask_stride = (V + 31) / 32;
  int num_masks = 0;
  for (int r = 0; r < R; r++) {
    temp[r] = num(); top_k[r] = integer(); top_p[r] = num(); min_p[r] = num(); key[r] = hex(); counter[r] = hex(); num_top[r] = integer();
    for (int i = 0; i < V; i++) logits[(size_t)r * stride + i] = __uint_as_float(hex());
    const int n = integer();
    for (int e = 0; e < n; e++) {
      token.push_back(integer()); bias.push_back(num()); rep.push_back(num()); freq.push_back(num()); pres.push_back(num()); ban.push_back(integer());
    }
    row_start[r + 1] = (int)token.size();
    if (integer()) { mask_row[r] = num_masks++; for (int w = 0; w < mask_stride; w++) masks.push_back(hex()); }
  }
  token.push_back(0); bias.push_back(0); rep.push_back(1); freq.push_back(0); pres.push_back(0); ban.push_back(0); masks.push_back(0);
  std::vector<double> lse(R), logprob(R), top_logprobs((size_t)R * 20);
  std::vector<int> tokens(R, -7), top_tokens((size_t)R * 20, -9);
  emu_launch(B, [&] { row_logsumexp_f32<B>(lse.data(), logits.data(), stride, num_top.data(), V, R); });
  const std::vector<float> raw = logits;
  emu_launch(B, [&] { logits_processors_f32<B>(logits.data(), stride, row_start.data(), token.data(), bias.data(), rep.data(), freq.data(), pres.data(), ban.data(), V, R); });
  emu_launch(B, [&] { apply_token_mask_f32<B>(logits.data(), stride, masks.data(), mask_stride, mask_row.data(), V, R); });
  emu_launch(B, [&] { argmax_rows_f32<B>(tokens.data(), logits.data(), stride, temp.data(), V, R); });
  emu_launch(B, [&] { sample_rows_f32<B>(tokens.data(), logits.data(), stride, temp.data(), top_k.data(), top_p.data(), min_p.data(), key.data(), counter.data(), V, R); });
  emu_launch(B, [&] { gather_logprobs_f32<B>(logprob.data(), top_tokens.data(), top_logprobs.data(), 20, raw.data(), stride, lse.data(), tokens.data(), num_top.data(), V, R); });
  for (int r = 0; r < R; r++) {
    std::printf("%d %.17g", tokens[r], logprob[r]);
    for (int j = 0; j < std::min(std::min(num_top[r], 20), V); j++) std::printf(" %d %.17g", top_tokens[(size_t)r * 20 + j], top_logprobs[(size_t)r * 20 + j]);
    std::printf("\n");
    for (int i = 0; i < V; i++) std::printf("%08x ", __float_as_uint(logits[(size_t)r * stride + i]));
    std::printf("\n");
  }
}
int main(int argc, char** argv) {
  const int block = argc > 1 ? std::atoi(argv[1]) : 64;
  if (block == 32) run<32>();
  else if (block == 64) run<64>();
  else if (block == 128) run<128>();
  else return 2;
  return 0;
}
`;

interface Case {
  vocab: number;
  stride: number;
  data: Float32Array;
  rows: SampleRow[];
  input: string;
}

const f32 = new Float32Array(1);
const f32Bits = new Uint32Array(f32.buffer);
function bitsOf(x: number): string {
  f32[0] = x;
  return f32Bits[0]!.toString(16).padStart(8, "0");
}

/** Random rows covering the op's paths: ties, −inf/NaN/+inf logits, greedy and tiny temperatures, every truncation, penalties, masks. */
function makeCase(rng: Rng, vocab: number): Case {
  const rnd = () => rng.next();
  const pick = <T>(a: readonly T[]): T => a[Math.floor(rnd() * a.length)]!;
  const gauss = () => Math.sqrt(-2 * Math.log(1 - rnd())) * Math.cos(2 * Math.PI * rnd());
  const numRows = 1 + Math.floor(rnd() * 3);
  const stride = vocab + pick([0, 0, 3]);
  const data = new Float32Array(numRows * stride);
  const rows: SampleRow[] = [];
  let input = `${vocab} ${numRows} ${stride}\n`;
  for (let r = 0; r < numRows; r++) {
    const kind = pick(["normal", "normal", "normal", "ties", "ties", "wide", "neginf", "nan", "posinf", "allneginf", "flat"]);
    const scale = pick([0.5, 1, 3, 10]);
    for (let i = 0; i < vocab; i++) {
      let v = gauss() * scale;
      if (kind === "ties") v = Math.round(v);
      else if (kind === "wide") v = gauss() * 40;
      else if (kind === "flat") v = 1.5;
      else if (kind === "neginf" && rnd() < 0.5) v = -Infinity;
      else if (kind === "nan" && rnd() < 0.1) v = NaN;
      else if (kind === "posinf" && rnd() < 0.05) v = Infinity;
      else if (kind === "allneginf") v = rnd() < 0.2 ? NaN : -Infinity;
      if (rnd() < 0.02) v = -0;
      data[r * stride + i] = v;
    }
    const logitBias: [number, number][] = [];
    for (let j = pick([0, 0, 1, 3]); j > 0; j--) {
      const t = Math.floor(rnd() * (vocab + 2));
      if (!logitBias.some(([id]) => id === t)) logitBias.push([t, pick([0.1, -5, 100, -100, 3.3])]);
    }
    const params: SamplingRowParams = {
      temperature: pick([0, 0, 1e-6, 1e-4, 0.3, 0.7, 1, 1, 1.5, 5]),
      topK: pick([0, 0, 1, 2, 5, 40, vocab, vocab + 3]),
      topP: pick([1, 1, 0.95, 0.9, 0.5, 0.1, 0.01, 0.999999]),
      minP: pick([0, 0, 0, 0.01, 0.1, 0.5, 1]),
      repetitionPenalty: pick([1, 1, 1.3, 0.8]),
      presencePenalty: pick([0, 0, 0.3, 2]),
      frequencyPenalty: pick([0, 0, 0.5, -1.2]),
      logitBias,
      minTokens: pick([0, 0, 5]),
      minTokensBanned: pick([[], [0], [Math.floor(rnd() * vocab), vocab + 1]]),
      logprobs: pick([null, null, 0, 1, 5, 20]),
      key: rng.nextU32(),
    };
    const prompt = Array.from({ length: Math.floor(rnd() * 6) }, () => Math.floor(rnd() * vocab));
    const output = Array.from({ length: Math.floor(rnd() * 8) }, () => Math.floor(rnd() * vocab));
    const row = new SamplingRow(params, prompt, output);
    const mask = rnd() < 0.3 ? Uint32Array.from({ length: Math.ceil(vocab / 32) }, () => pick([0xffffffff, rng.nextU32(), 0])) : undefined;
    rows.push(mask ? { row, mask } : { row });

    // The host's packing of the processors: one merged entry per token.
    const entries = new Map<number, { bias: number; rep: number; freq: number; presence: number; ban: number }>();
    const entry = (t: number) => {
      if (!entries.has(t)) entries.set(t, { bias: 0, rep: 1, freq: 0, presence: 0, ban: 0 });
      return entries.get(t)!;
    };
    for (const [t, b] of logitBias) entry(t).bias = b;
    if (row.numOutput < params.minTokens) for (const t of params.minTokensBanned) entry(t).ban = 1;
    if (row.seen) for (const t of row.seen) entry(t).rep = params.repetitionPenalty;
    if (params.frequencyPenalty !== 0 || params.presencePenalty !== 0) {
      for (const [t, n] of row.counts) Object.assign(entry(t), { freq: params.frequencyPenalty * n, presence: params.presencePenalty });
    }
    const p = params;
    input += `${p.temperature} ${p.topK} ${p.topP} ${p.minP} ${p.key.toString(16)} ${row.numOutput.toString(16)} ${p.logprobs ?? -1}\n`;
    input += Array.from({ length: vocab }, (_, i) => bitsOf(data[r * stride + i]!)).join(" ") + "\n";
    input += `${entries.size}\n`;
    for (const [t, e] of entries) input += `${t} ${e.bias} ${e.rep} ${e.freq} ${e.presence} ${e.ban}\n`;
    input += mask ? `1 ${[...mask].map((w) => w.toString(16)).join(" ")}\n` : "0\n";
  }
  return { vocab, stride, data, rows, input };
}

const parseNumber = (s: string) => (/nan/i.test(s) ? NaN : s === "inf" ? Infinity : s === "-inf" ? -Infinity : Number(s));
const close = (a: number, b: number) =>
  (Number.isNaN(a) && Number.isNaN(b)) || a === b || Math.abs(a - b) <= 1e-12 * Math.max(1, Math.abs(b));

function checkCase(c: Case, output: string, label: string): void {
  const cpu = c.data.slice();
  const want = sampleRows(cpu, 0, c.stride, c.vocab, c.rows);
  const lines = output.trim().split("\n");
  assert.equal(lines.length, 2 * c.rows.length, `${label}: emulator output`);
  c.rows.forEach(({ row }, r) => {
    const p = row.params;
    const where = `${label} row ${r} (V ${c.vocab}, T ${p.temperature}, top_k ${p.topK}, top_p ${p.topP}, min_p ${p.minP})`;
    const fields = lines[2 * r]!.split(" ");
    assert.equal(Number(fields[0]), want.tokens[r], `${where}: token`);
    const logits = lines[2 * r + 1]!.trim().split(" ");
    for (let i = 0; i < c.vocab; i++) {
      const cpuBits = bitsOf(cpu[r * c.stride + i]!);
      const zeros = cpuBits.replace("80000000", "00000000") === "00000000" && logits[i]!.replace("80000000", "00000000") === "00000000";
      assert.ok(logits[i] === cpuBits || zeros, `${where}: processed logit ${i} is ${logits[i]}, the CPU's ${cpuBits}`);
    }
    const lp = want.logprobs[r];
    if (p.logprobs === null) return;
    assert.ok(close(parseNumber(fields[1]!), lp!.logprob), `${where}: logprob ${fields[1]}, the CPU's ${lp!.logprob}`);
    let nan = false;
    for (let i = 0; i < c.vocab; i++) nan ||= Number.isNaN(c.data[r * c.stride + i]);
    if (nan) return; // documented: a row with NaN logits may rank differently (its logprobs are NaN anyway)
    (lp!.top ?? []).forEach((t, j) => {
      const token = Number(fields[2 + 2 * j]);
      const logprob = parseNumber(fields[3 + 2 * j]!);
      assert.ok(
        token === t.token && close(logprob, t.logprob),
        `${where}: top ${j} is ${token} ${logprob}, the CPU's ${t.token} ${t.logprob}`,
      );
    });
  });
}

function findCxx(): { path?: string; why?: string } {
  const gxx = findTool("g++");
  if (!gxx.path) return { why: `g++ not found; searched ${gxx.searched.join(", ")}` };
  const probe = spawnSync(gxx.path, ["-std=c++20", "-x", "c++", "-fsyntax-only", "-"], { input: "#include <barrier>\n", encoding: "utf8" });
  return probe.status === 0 ? { path: gxx.path } : { why: `${gxx.path} has no C++20 <barrier>: ${probe.stderr.trim()}` };
}

const cxx = findCxx();

describe("sampling.cu kernels under a CPU emulation of the CUDA thread model", { skip: cxx.why ?? false }, () => {
  let binary = "";
  const build = () => {
    if (binary) return binary;
    const dir = join(work, "emu");
    mkdirSync(dir, { recursive: true });
    copyFileSync(join(KERNEL_DIR, "sampling.cu"), join(dir, "sampling.cu")); // beside the stand-in common.cuh
    writeFileSync(join(dir, "common.cuh"), EMU_COMMON);
    writeFileSync(join(dir, "emu.h"), EMU_HEADER);
    writeFileSync(join(dir, "main.cpp"), EMU_MAIN);
    binary = join(dir, "sampling-emu");
    // No FMA contraction: the emulation must round like the device's non-contracted code and like V8.
    exec(cxx.path!, [
      "-std=c++20",
      "-O1",
      "-ffp-contract=off",
      "-pthread",
      "-Wall",
      "-Wno-unknown-pragmas",
      "-I",
      dir,
      "-o",
      binary,
      join(dir, "main.cpp"),
    ]);
    return binary;
  };

  it("agrees with sampleRows on random rows (2 warps per CTA, vocabularies 1 to 3000)", { timeout: 600_000 }, () => {
    const bin = build();
    const rng = new Rng(7);
    for (let i = 0; i < 24; i++) {
      const c = makeCase(rng, [1, 2, 7, 33, 64, 200, 1000, 3000][i % 8]!);
      checkCase(c, exec(bin, ["64"], c.input), `case ${i}`);
    }
  });

  it("agrees with sampleRows with one warp and with four warps per CTA", { timeout: 600_000 }, () => {
    const bin = build();
    const rng = new Rng(8);
    for (let i = 0; i < 12; i++) {
      const block = i % 2 === 0 ? "32" : "128";
      const c = makeCase(rng, [5, 100, 777, 2048][i % 4]!);
      checkCase(c, exec(bin, [block], c.input), `case ${i} (block ${block})`);
    }
  });
});
