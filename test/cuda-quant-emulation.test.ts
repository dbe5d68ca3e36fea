/**
 * The quantized-weight kernels (src/backend/cuda/kernels/quant_blocks.cuh, quant_dequant.cu, quant_gemv.cu,
 * quant_fp8.cu) checked without a GPU: the .cu files are compiled for the host with g++ (TK_HOST: the device
 * primitives' C++ twins) against a small emulation of the CUDA thread model (one OS thread per CUDA thread, real
 * barriers for __syncthreads / __syncwarp / the shuffles, shared memory as statics, CTAs one after another) and
 * AddressSanitizer where g++ has it (an out-of-bounds read of the weights or of a staging buffer fails the run).
 *
 * 1. dequant_rows, for random blocks of every format (random quants and scales, f16 subnormals and zeros, the
 *    e8m0 corner values, e4m3 NaNs), gives exactly (bit for bit) the values of an independent TypeScript
 *    dequantizer written here from ggml's dequantize_row_* formulas, in f32 and rounded to bf16, also for a
 *    tile of rows that starts at a misaligned byte.
 * 2. quant_gemv, for every format, with f32 and bf16 activations, 1 to 8 rows, partial CTAs (n not a multiple of
 *    8), partial passes (k not a multiple of 512), strided and misaligned activation rows, bias, per-row and
 *    per-tensor scales, agrees with an f64 product of that dequantizer's weights within f32 accumulation error
 *    (and bf16 rounding), and writes nothing outside the output rows.
 * 3. absmax_rows + quantize_fp8_e4m3 (per row and per tensor) give the amax, the scale and the e4m3 bytes of a
 *    TypeScript reference (round to nearest even by enumerating e4m3's values, saturating), and f32_to_e4m3 is
 *    checked on its corner inputs.
 * This checks the formats, the indexing, the staging and the barrier discipline, not the device: the cp.async /
 * PTX paths, memory ordering and real warp scheduling are the GPU's to check. Skipped when g++ (C++20) is not
 * found.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";
import { after, describe, it } from "node:test";
import { bf16BitsToF32, f32ToBf16Bits } from "../src/backend/dtype.js";
import { QUANT_BLOCK, QUANT_TYPES, type QuantType, quantRowBytes } from "../src/backend/cuda/kernels/manifest.js";
import { Rng } from "../src/backend/rng.js";

const KERNEL_DIR = join(import.meta.dirname, "..", "..", "src", "backend", "cuda", "kernels");
const FILES = ["quant_blocks.cuh", "quant_dequant.cu", "quant_gemv.cu", "quant_fp8.cu"];

const work = mkdtempSync(join(tmpdir(), "tokamak-quant-"));
after(() => rmSync(work, { recursive: true, force: true }));

// ---------------------------------------------------------------- the host build

/** The CUDA built-ins the quant kernels use, for CTAs of real threads run one after another. */
const EMU_HEADER = String.raw`#pragma once
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>
#define TK_HOST 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
struct EmuDim { unsigned x, y, z; };
inline thread_local EmuDim threadIdx, blockIdx;
inline EmuDim blockDim, gridDim;
struct float4 { float x, y, z, w; };
struct uint4 { unsigned x, y, z, w; };
struct uint2 { unsigned x, y; };
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
struct EmuWarp { std::barrier<>* bar; uint64_t buf[32]; };
inline std::barrier<>* emu_block_bar;
inline std::vector<EmuWarp>* emu_warps;
inline void __syncthreads() { emu_block_bar->arrive_and_wait(); }
inline EmuWarp& emu_warp() { return (*emu_warps)[threadIdx.x / 32]; }
inline void __syncwarp(unsigned = 0xffffffffu) { emu_warp().bar->arrive_and_wait(); }
template <class T> T __shfl_xor_sync(unsigned, T v, int o) {
  static_assert(sizeof(T) <= 8);
  EmuWarp& w = emu_warp();
  uint64_t raw = 0;
  std::memcpy(&raw, &v, sizeof(T));
  w.buf[threadIdx.x & 31] = raw;
  w.bar->arrive_and_wait();
  raw = w.buf[(threadIdx.x & 31) ^ o];
  w.bar->arrive_and_wait();
  T out;
  std::memcpy(&out, &raw, sizeof(T));
  return out;
}
inline float __uint_as_float(unsigned i) { float f; std::memcpy(&f, &i, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned i; std::memcpy(&i, &f, 4); return i; }
inline unsigned atomicMax(unsigned* p, unsigned v) {
  unsigned old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
  while (old < v && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {}
  return old;
}
using std::max;
using std::min;
/** grid.x × grid.y CTAs of block threads, one CTA at a time. */
inline void emu_launch(unsigned gx, unsigned gy, int block, const std::function<void()>& body) {
  gridDim = {gx, gy, 1};
  blockDim = {(unsigned)block, 1, 1};
  for (unsigned by = 0; by < gy; by++) {
    for (unsigned bx = 0; bx < gx; bx++) {
      std::barrier<> bar(block);
      std::vector<EmuWarp> warps(block / 32);
      std::vector<std::unique_ptr<std::barrier<>>> warp_bars;
      for (auto& w : warps) {
        warp_bars.emplace_back(new std::barrier<>(32));
        w.bar = warp_bars.back().get();
      }
      emu_block_bar = &bar;
      emu_warps = &warps;
      std::vector<std::thread> threads;
      for (int t = 0; t < block; t++)
        threads.emplace_back([t, bx, by, &body] { threadIdx = {(unsigned)t, 0, 0}; blockIdx = {bx, by, 0}; body(); });
      for (auto& t : threads) t.join();
    }
  }
}
`;

/** Stands in for common.cuh (whose f16 helpers are PTX): what the quant kernels take from it, same formulas. */
const EMU_COMMON = String.raw`#pragma once
namespace tk {
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;
struct alignas(2) f16 { u16 bits; };
struct alignas(2) bf16 { u16 bits; };
constexpr u32 kFullMask = 0xffffffffu;
inline u16 f32_to_bf16_bits(float f) {
  u32 u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (u16)((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (u16)(u >> 16);
}
template <typename T> struct Dtype;
template <> struct Dtype<float> {
  static float to_f32(float x) { return x; }
  static float from_f32(float x) { return x; }
  static void load8(const float* p, float (&v)[8]) { std::memcpy(v, p, 32); }
  static void store8(float* p, const float (&v)[8]) { std::memcpy(p, v, 32); }
};
template <> struct Dtype<bf16> {
  static float to_f32(bf16 x) { return __uint_as_float((u32)x.bits << 16); }
  static bf16 from_f32(float x) { return bf16{f32_to_bf16_bits(x)}; }
  static void load8(const bf16* p, float (&v)[8]) { for (int i = 0; i < 8; i++) v[i] = to_f32(p[i]); }
  static void store8(bf16* p, const float (&v)[8]) { for (int i = 0; i < 8; i++) p[i] = from_f32(v[i]); }
};
template <typename T> inline float load(const T* p) { return Dtype<T>::to_f32(*p); }
template <typename T> inline void store(T* p, float v) { *p = Dtype<T>::from_f32(v); }
template <int N, typename T> inline void load_pack(const T* p, float (&v)[N]) {
  if constexpr (N == 8) Dtype<T>::load8(p, v); else for (int i = 0; i < N; i++) v[i] = load(p + i);
}
template <int N, typename T> inline void store_pack(T* p, const float (&v)[N]) {
  if constexpr (N == 8) Dtype<T>::store8(p, v); else for (int i = 0; i < N; i++) store(p + i, v[i]);
}
inline bool aligned16(const void* p) { return (reinterpret_cast<u64>(p) & 15u) == 0; }
inline float warp_sum(float v) { for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o); return v; }
inline float warp_max(float v) { for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o)); return v; }
}  // namespace tk
`;

/** Commands on stdin, results on stdout (numbers as hex bits / bytes). */
const EMU_MAIN = String.raw`#include "emu.h"
#include "quant_dequant.cu"
#include "quant_gemv.cu"
#include "quant_fp8.cu"
#include <cstdio>
#include <cstdlib>
#include <string>
using namespace tk;
static std::string word() { char b[64]; if (std::scanf("%63s", b) != 1) std::abort(); return b; }
static int integer() { int v; if (std::scanf("%d", &v) != 1) std::abort(); return v; }
static u32 hex() { unsigned v; if (std::scanf("%x", &v) != 1) std::abort(); return v; }
static float hexf() { return __uint_as_float(hex()); }
/** Exactly n bytes (malloc'd: ASan sees the end, glibc aligns to 16). */
static u8* bytes(size_t n) {
  u8* p = (u8*)std::malloc(n ? n : 1);
  for (size_t i = 0; i < n; i++) p[i] = (u8)hex();
  return p;
}
static std::vector<float> floats(size_t n) { std::vector<float> v(n); for (auto& x : v) x = hexf(); return v; }
template <class T> static u32 bits_of(T v) { if constexpr (sizeof(T) == 4) return __float_as_uint(v); else return v.bits; }
template <class T> static T from_bits(u32 b) { if constexpr (sizeof(T) == 4) return __uint_as_float(b); else return T{(u16)b}; }

template <class Q, class TO> static void dequant() {
  const int rows = integer(), cols = integer(), r0 = integer(), out_stride = integer(), scale_stride = integer();
  const size_t row_bytes = (size_t)(cols / QB<Q>::kQK) * QB<Q>::kBytes;
  u8* w = bytes(row_bytes * rows);
  std::vector<float> sc = floats(QB<Q>::kRowScale ? (scale_stride ? rows : 1) : 0);
  const int n = rows - r0;
  std::vector<TO> out((size_t)n * out_stride, from_bits<TO>(0x7fbadbadu));
  const float* scale = sc.empty() ? nullptr : sc.data() + (size_t)r0 * scale_stride;
  emu_launch((cols + 2047) / 2048, std::min(n, 3), 128,
             [&] { dequant_rows<Q, TO>(out.data(), out_stride, w + row_bytes * r0, scale, scale_stride, n, cols); });
  for (auto& v : out) std::printf("%x ", bits_of(v));
  std::printf("\n");
  std::free(w);
}

template <class Q, class T, int R> static void gemv() {
  const int m = integer(), n = integer(), k = integer(), x_stride = integer(), x_offset = integer(), out_stride = integer();
  const int scale_stride = integer(), has_bias = integer();
  std::vector<T> x((size_t)m * x_stride + x_offset);
  for (size_t i = x_offset; i < x.size(); i++) x[i] = from_bits<T>(hex());
  u8* w = bytes((size_t)(k / QB<Q>::kQK) * QB<Q>::kBytes * n);
  std::vector<float> sc = floats(QB<Q>::kRowScale ? (scale_stride ? n : 1) : 0);
  std::vector<float> bias = floats(has_bias ? n : 0);
  std::vector<T> out((size_t)m * out_stride, from_bits<T>(0x7fbadbadu));
  emu_launch((n + 7) / 8, 1, 128, [&] {
    quant_gemv<Q, T, R>(out.data(), out_stride, x.data() + x_offset, x_stride, w, sc.empty() ? nullptr : sc.data(), scale_stride,
                        has_bias ? bias.data() : nullptr, m, n, k);
  });
  for (auto& v : out) std::printf("%x ", bits_of(v));
  std::printf("\n");
  std::free(w);
}

template <class T> static void fp8() {
  const int rows = integer(), cols = integer(), per_row = integer(), stride = integer();
  std::vector<T> x((size_t)rows * stride);
  for (auto& v : x) v = from_bits<T>(hex());
  const int ns = per_row ? rows : 1;
  std::vector<float> amax(ns, 0.0f), scale(ns, -1.0f);
  std::vector<u8> q((size_t)rows * stride, 0xee);
  emu_launch(std::min(rows, 2), 1, 256, [&] { absmax_rows<T>(amax.data(), x.data(), stride, rows, cols, per_row); });
  emu_launch((cols + 2047) / 2048, std::min(rows, 2), 256,
             [&] { quantize_fp8_e4m3<T>(q.data(), stride, scale.data(), x.data(), stride, amax.data(), rows, cols, per_row); });
  for (float a : amax) std::printf("%x ", __float_as_uint(a));
  std::printf("\n");
  for (float s : scale) std::printf("%x ", __float_as_uint(s));
  std::printf("\n");
  for (u8 b : q) std::printf("%x ", b);
  std::printf("\n");
}

#define FORMATS(X) X(q8_0, Q8_0) X(q4_0, Q4_0) X(q4_1, Q4_1) X(q5_0, Q5_0) X(q5_1, Q5_1) X(q4_k, Q4_K) X(q5_k, Q5_K) \
  X(q6_k, Q6_K) X(mxfp4, MXFP4) X(int8, INT8) X(fp8_e4m3, FP8_E4M3)

int main() {
  char cmd[32];
  while (std::scanf("%31s", cmd) == 1) {
    const std::string c = cmd;
    if (c == "e4m3") {
      const int n = integer();
      for (int i = 0; i < n; i++) std::printf("%x ", f32_to_e4m3(hexf()));
      std::printf("\n");
    } else if (c == "fp8") {
      if (word() == "f32") fp8<float>(); else fp8<bf16>();
    } else {
      const std::string f = word(), t = word();
      const int rows = c == "gemv" ? integer() : 0;
      bool done = false;
#define RUN(name, Q)                                                            \
      if (f == #name) {                                                         \
        done = true;                                                            \
        if (c == "dequant") { if (t == "f32") dequant<Q, float>(); else dequant<Q, bf16>(); } \
        else if (t == "f32" && rows == 4) gemv<Q, float, 4>();                  \
        else if (t == "bf16" && rows == 1) gemv<Q, bf16, 1>();                  \
        else if (t == "bf16" && rows == 8) gemv<Q, bf16, 8>();                  \
        else std::abort();                                                      \
      }
      FORMATS(RUN)
      if (!done) std::abort();
    }
    std::fflush(stdout);
  }
  return 0;
}
`;

function findTool(name: string): { path?: string; searched: string[] } {
  const dirs = (process.env.PATH ?? "").split(delimiter).filter((d) => d !== "");
  const searched = dirs.map((d) => join(d, name));
  return { path: searched.find((p) => existsSync(p)), searched };
}

function findCxx(): { path?: string; asan?: boolean; why?: string } {
  const gxx = findTool("g++");
  if (!gxx.path) return { why: `g++ not found; searched ${gxx.searched.join(", ")}` };
  const probe = spawnSync(gxx.path, ["-std=c++20", "-x", "c++", "-fsyntax-only", "-"], { input: "#include <barrier>\n", encoding: "utf8" });
  if (probe.status !== 0) return { why: `${gxx.path} has no C++20 <barrier>: ${probe.stderr.trim()}` };
  const exe = join(work, "asan-probe");
  const asan = spawnSync(gxx.path, ["-fsanitize=address", "-x", "c++", "-o", exe, "-"], {
    input: "int main() { return 0; }\n",
    encoding: "utf8",
  });
  return { path: gxx.path, asan: asan.status === 0 && spawnSync(exe).status === 0 };
}

function exec(cmd: string, args: string[], input?: string): string {
  const r = spawnSync(cmd, args, { encoding: "utf8", input, maxBuffer: 256 * 1024 * 1024, timeout: 300_000 });
  assert.equal(
    r.status,
    0,
    `${cmd} ${args.join(" ")} failed (${r.status ?? r.signal}):\n${r.stdout.slice(0, 4000)}${r.stderr.slice(0, 8000)}`,
  );
  return r.stdout;
}

const cxx = findCxx();
let binary = "";
function build(): string {
  if (binary) return binary;
  const dir = join(work, "emu");
  mkdirSync(dir, { recursive: true });
  for (const f of FILES) copyFileSync(join(KERNEL_DIR, f), join(dir, f)); // beside the stand-in common.cuh
  writeFileSync(join(dir, "common.cuh"), EMU_COMMON);
  writeFileSync(join(dir, "emu.h"), EMU_HEADER);
  writeFileSync(join(dir, "main.cpp"), EMU_MAIN);
  binary = join(dir, "quant-emu");
  // No FMA contraction: the host must round like the device's explicit __fmul_rn / __fadd_rn and like V8.
  const flags = ["-std=c++20", "-O1", "-ffp-contract=off", "-pthread", "-Wall", "-Wno-unknown-pragmas"];
  if (cxx.asan) flags.push("-fsanitize=address", "-fno-omit-frame-pointer");
  exec(cxx.path!, [...flags, "-I", dir, "-o", binary, join(dir, "main.cpp")]);
  return binary;
}

/** Runs a batch of commands through one process (ASan: detect_leaks off, the emulation's statics are not leaks). */
function run(input: string): string[] {
  const r = spawnSync(build(), [], {
    encoding: "utf8",
    input,
    maxBuffer: 256 * 1024 * 1024,
    timeout: 300_000,
    env: { ...process.env, ASAN_OPTIONS: "detect_leaks=0:abort_on_error=1" },
  });
  assert.equal(r.status, 0, `quant emulator failed (${r.status ?? r.signal}):\n${r.stderr.slice(0, 8000)}`);
  return r.stdout.trim().split("\n");
}

// ---------------------------------------------------------------- an independent dequantizer (ggml's formulas)

const fr = Math.fround;
const f32v = new Float32Array(1);
const u32v = new Uint32Array(f32v.buffer);
const bitsOf = (x: number): number => ((f32v[0] = x), u32v[0]!);
const fromBits = (b: number): number => ((u32v[0] = b >>> 0), f32v[0]!);
const hex = (b: number) => (b >>> 0).toString(16);

/** IEEE binary16 bits -> value (exact). */
function f16(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 31;
  const m = h & 1023;
  if (e === 31) return m ? NaN : s * Infinity;
  return e === 0 ? s * m * 2 ** -24 : s * (1 + m / 1024) * 2 ** (e - 15);
}
const e8m0Half = (e: number): number => fromBits(e < 2 ? 0x00200000 << e : (e - 1) << 23);
const KVALUES_MXFP4 = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];
function e4m3(b: number): number {
  const s = b & 0x80 ? -1 : 1;
  const e = (b >> 3) & 15;
  const m = b & 7;
  if (e === 15 && m === 7) return NaN;
  return s * (e === 0 ? m * 2 ** -9 : (1 + m / 8) * 2 ** (e - 7));
}
const i8 = (b: number): number => (b << 24) >> 24;

function scaleMinK4(j: number, q: Uint8Array, o: number): [number, number] {
  if (j < 4) return [q[o + j]! & 63, q[o + j + 4]! & 63];
  return [(q[o + j + 4]! & 0xf) | ((q[o + j - 4]! >> 6) << 4), (q[o + j + 4]! >> 4) | ((q[o + j]! >> 6) << 4)];
}

/**
 * One row of `k` elements at byte `o` of `a`, as ggml's dequantize_row_<type> writes it (f32 values). `mag`, when
 * given, gets |d · q| + |m| for the formats with an offset (the size of the terms a dot product rounds) and |y| for
 * the others.
 */
function dequantRow(type: QuantType, a: Uint8Array, o: number, k: number, rowScale = 1, mag?: Float32Array): Float32Array {
  const y = new Float32Array(k);
  const withMin = (i: number, dq: number, m: number): number => {
    if (mag) mag[i] = Math.abs(dq) + Math.abs(m);
    return fr(dq + m);
  };
  const { elems, bytes } = QUANT_BLOCK[type];
  const u16 = (p: number) => a[p]! | (a[p + 1]! << 8);
  for (let i = 0; i < k / elems; i++) {
    const b = o + i * bytes;
    const base = i * elems;
    switch (type) {
      case "q8_0": {
        const d = f16(u16(b));
        for (let j = 0; j < 32; j++) y[base + j] = fr(i8(a[b + 2 + j]!) * d);
        break;
      }
      case "q4_0":
      case "q4_1": {
        const d = f16(u16(b));
        const m = type === "q4_1" ? f16(u16(b + 2)) : 0;
        const qs = b + (type === "q4_1" ? 4 : 2);
        for (let j = 0; j < 16; j++) {
          const x0 = (a[qs + j]! & 0x0f) - (type === "q4_0" ? 8 : 0);
          const x1 = (a[qs + j]! >> 4) - (type === "q4_0" ? 8 : 0);
          y[base + j] = type === "q4_0" ? fr(x0 * d) : withMin(base + j, fr(x0 * d), m);
          y[base + j + 16] = type === "q4_0" ? fr(x1 * d) : withMin(base + j + 16, fr(x1 * d), m);
        }
        break;
      }
      case "q5_0":
      case "q5_1": {
        const one = type === "q5_1";
        const d = f16(u16(b));
        const m = one ? f16(u16(b + 2)) : 0;
        const qhAt = b + (one ? 4 : 2);
        const qh = (a[qhAt]! | (a[qhAt + 1]! << 8) | (a[qhAt + 2]! << 16) | (a[qhAt + 3]! << 24)) >>> 0;
        const qs = qhAt + 4;
        for (let j = 0; j < 16; j++) {
          const xh0 = ((qh >>> j) << 4) & 0x10;
          const xh1 = (qh >>> (j + 12)) & 0x10;
          const x0 = ((a[qs + j]! & 0x0f) | xh0) - (one ? 0 : 16);
          const x1 = ((a[qs + j]! >> 4) | xh1) - (one ? 0 : 16);
          y[base + j] = one ? withMin(base + j, fr(x0 * d), m) : fr(x0 * d);
          y[base + j + 16] = one ? withMin(base + j + 16, fr(x1 * d), m) : fr(x1 * d);
        }
        break;
      }
      case "mxfp4": {
        const d = e8m0Half(a[b]!);
        for (let j = 0; j < 16; j++) {
          y[base + j] = fr(KVALUES_MXFP4[a[b + 1 + j]! & 0x0f]! * d);
          y[base + j + 16] = fr(KVALUES_MXFP4[a[b + 1 + j]! >> 4]! * d);
        }
        break;
      }
      case "q4_k":
      case "q5_k": {
        const five = type === "q5_k";
        const d = f16(u16(b));
        const min = f16(u16(b + 2));
        let ql = b + (five ? 48 : 16);
        const qh = b + 16;
        let u1 = 1;
        let u2 = 2;
        let out = base;
        for (let j = 0, is = 0; j < 256; j += 64, is += 2) {
          let [sc, m] = scaleMinK4(is, a, b + 4);
          const d1 = fr(d * sc);
          const m1 = fr(min * m);
          [sc, m] = scaleMinK4(is + 1, a, b + 4);
          const d2 = fr(d * sc);
          const m2 = fr(min * m);
          for (let l = 0; l < 32; l++, out++)
            y[out] = withMin(out, fr(d1 * ((a[ql + l]! & 0xf) + (five && a[qh + l]! & u1 ? 16 : 0))), -m1);
          for (let l = 0; l < 32; l++, out++) y[out] = withMin(out, fr(d2 * ((a[ql + l]! >> 4) + (five && a[qh + l]! & u2 ? 16 : 0))), -m2);
          ql += 32;
          u1 <<= 2;
          u2 <<= 2;
        }
        break;
      }
      case "q6_k": {
        const d = f16(u16(b + 208));
        let ql = b;
        let qh = b + 128;
        let sc = b + 192;
        for (let n = 0; n < 256; n += 128) {
          for (let l = 0; l < 32; l++) {
            const is = Math.floor(l / 16);
            const q1 = ((a[ql + l]! & 0xf) | (((a[qh + l]! >> 0) & 3) << 4)) - 32;
            const q2 = ((a[ql + l + 32]! & 0xf) | (((a[qh + l]! >> 2) & 3) << 4)) - 32;
            const q3 = ((a[ql + l]! >> 4) | (((a[qh + l]! >> 4) & 3) << 4)) - 32;
            const q4 = ((a[ql + l + 32]! >> 4) | (((a[qh + l]! >> 6) & 3) << 4)) - 32;
            y[base + n + l] = fr(fr(d * i8(a[sc + is]!)) * q1);
            y[base + n + l + 32] = fr(fr(d * i8(a[sc + is + 2]!)) * q2);
            y[base + n + l + 64] = fr(fr(d * i8(a[sc + is + 4]!)) * q3);
            y[base + n + l + 96] = fr(fr(d * i8(a[sc + is + 6]!)) * q4);
          }
          ql += 64;
          qh += 32;
          sc += 8;
        }
        break;
      }
      case "int8":
        for (let j = 0; j < 32; j++) y[base + j] = fr(i8(a[b + j]!) * rowScale);
        break;
      case "fp8_e4m3":
        for (let j = 0; j < 32; j++) y[base + j] = fr(e4m3(a[b + j]!) * rowScale);
        break;
    }
  }
  if (mag && !QUANT_BLOCK_OFFSET.has(type)) for (let i = 0; i < k; i++) mag[i] = Math.abs(y[i]!);
  return y;
}

/** The formats whose elements are d · q + m (the GEMV adds m · Σx separately). */
const QUANT_BLOCK_OFFSET = new Set<QuantType>(["q4_1", "q5_1", "q4_k", "q5_k"]);

// ---------------------------------------------------------------- random weights

/** A random f16 scale: mostly normal values of either sign up to ~64, sometimes a subnormal or a zero. */
function randomF16(rng: Rng, allowZero = true): number {
  const r = rng.next();
  const sign = rng.next() < 0.5 ? 0x8000 : 0;
  if (allowZero && r < 0.03) return sign;
  const exp = r < 0.08 ? 0 : 1 + Math.floor(rng.next() * 20);
  return sign | (exp << 10) | Math.floor(rng.next() * 1024) || 1;
}

/**
 * Random rows of a format: random quant bytes, scale fields set to finite values (gemv: no NaN e4m3 bytes and no
 * zero scales, so that every case is a real dot product).
 */
function randomWeights(rng: Rng, type: QuantType, rows: number, k: number, forGemv: boolean): Uint8Array {
  const { elems, bytes } = QUANT_BLOCK[type];
  const a = new Uint8Array(quantRowBytes(type, k) * rows);
  for (let i = 0; i < a.length; i++) a[i] = Math.floor(rng.next() * 256);
  const setF16 = (p: number, v: number) => ((a[p] = v & 0xff), (a[p + 1] = v >> 8));
  for (let b = 0; b < (rows * k) / elems; b++) {
    const o = b * bytes;
    switch (type) {
      case "q8_0":
      case "q4_0":
      case "q5_0":
        setF16(o, randomF16(rng, !forGemv));
        break;
      case "q4_1":
      case "q5_1":
      case "q4_k":
      case "q5_k":
        setF16(o, randomF16(rng, !forGemv));
        setF16(o + 2, randomF16(rng));
        break;
      case "q6_k":
        setF16(o + 208, randomF16(rng, !forGemv));
        break;
      case "mxfp4": {
        const r = rng.next();
        a[o] = !forGemv && r < 0.1 ? Math.floor(r * 30) : 100 + Math.floor(rng.next() * 50); // 0, 1, 2: the subnormal scales
        break;
      }
      case "fp8_e4m3":
        if (forGemv) for (let j = 0; j < 32; j++) if ((a[o + j]! & 0x7f) === 0x7f) a[o + j]! ^= 1;
        break;
      default:
        break;
    }
  }
  return a;
}

const hexBytes = (a: Uint8Array) => Array.from(a, (b) => b.toString(16)).join(" ");
const randomScales = (rng: Rng, n: number) => Array.from({ length: n }, () => fr((rng.next() < 0.5 ? -1 : 1) * (0.001 + rng.next() * 0.1)));
const gauss = (rng: Rng) => Math.sqrt(-2 * Math.log(1 - rng.next())) * Math.cos(2 * Math.PI * rng.next());

const sameBits = (got: string, want: number, bf16: boolean): boolean => {
  const g = parseInt(got, 16);
  if (bf16) return g === f32ToBf16Bits(want) || (Number.isNaN(want) && Number.isNaN(bf16BitsToF32(g)));
  return g === bitsOf(want) || (Number.isNaN(want) && Number.isNaN(fromBits(g)));
};

// ---------------------------------------------------------------- the checks

describe("quantized weight kernels under a CPU emulation of the CUDA thread model", { skip: cxx.why ?? false }, () => {
  it("dequant_rows gives ggml's dequantized values bit for bit, for every format (f32 and bf16 out)", { timeout: 600_000 }, () => {
    const rng = new Rng(31);
    let input = "";
    const cases: { type: QuantType; to: "f32" | "bf16"; rows: number; cols: number; r0: number; stride: number; want: Float32Array[] }[] =
      [];
    for (const type of QUANT_TYPES) {
      const elems = QUANT_BLOCK[type].elems;
      for (const [to, rows, cols, r0, pad] of [
        ["f32", 3, elems === 256 ? 2304 : 2080, 0, 0],
        ["bf16", 4, elems === 256 ? 512 : 96, 1, 5],
      ] as const) {
        const w = randomWeights(rng, type, rows, cols, false);
        const perRow = to === "f32" ? 1 : 0; // int8 / fp8: a scale per row, then one for the tensor
        const scales = QUANT_BLOCK[type].rowScale ? randomScales(rng, perRow ? rows : 1) : [];
        const rb = quantRowBytes(type, cols);
        const want = Array.from({ length: rows - r0 }, (_, i) =>
          dequantRow(type, w, (r0 + i) * rb, cols, scales[perRow ? r0 + i : 0] ?? 1),
        );
        cases.push({ type, to, rows, cols, r0, stride: cols + pad, want });
        input += `dequant ${type} ${to} ${rows} ${cols} ${r0} ${cols + pad} ${perRow}\n${hexBytes(w)}\n${scales.map((s) => hex(bitsOf(s))).join(" ")}\n`;
      }
    }
    const lines = run(input);
    assert.equal(lines.length, cases.length);
    cases.forEach((c, i) => {
      const got = lines[i]!.trim().split(" ");
      assert.equal(got.length, c.want.length * c.stride, `${c.type} ${c.to}: output size`);
      c.want.forEach((row, r) => {
        for (let j = 0; j < c.stride; j++) {
          const g = got[r * c.stride + j]!;
          if (j >= c.cols) {
            assert.equal(g, c.to === "bf16" ? "dbad" : "7fbadbad", `${c.type} ${c.to}: row ${r} padding ${j} written`);
            continue;
          }
          assert.ok(
            sameBits(g, row[j]!, c.to === "bf16"),
            `${c.type} → ${c.to} (row ${c.r0 + r}, element ${j}, block ${Math.floor(j / QUANT_BLOCK[c.type].elems)}): ` +
              `kernel ${g}, ggml's formula ${hex(bitsOf(row[j]!))} (${row[j]})`,
          );
        }
      });
    });
  });

  it("quant_gemv matches an f64 product of the dequantized weights, for every format, 1 to 8 rows", { timeout: 600_000 }, () => {
    const rng = new Rng(47);
    let input = "";
    interface GemvCase {
      label: string;
      t: "f32" | "bf16";
      m: number;
      n: number;
      outStride: number;
      want: number[][];
      bound: number[][];
    }
    const cases: GemvCase[] = [];
    for (const type of QUANT_TYPES) {
      const elems = QUANT_BLOCK[type].elems;
      const configs = [
        { t: "f32", rows: 4, m: 3, n: 11, k: elems === 256 ? 1280 : 608, xPad: 3, xOffset: 1 }, // misaligned rows: the scalar x path
        { t: "bf16", rows: 8, m: 8, n: 9, k: elems === 256 ? 768 : 1056, xPad: 0, xOffset: 0 }, // k > KC (512): two chunks
        { t: "bf16", rows: 1, m: 1, n: 16, k: elems === 256 ? 4608 : 4160, xPad: 8, xOffset: 0 }, // k > 4096: two chunks of 4096
      ] as const;
      for (const cfg of configs) {
        const { t, rows, m, n, k, xPad, xOffset } = cfg;
        const xStride = k + xPad;
        const w = randomWeights(rng, type, n, k, true);
        const perRow = rows === 8 ? 0 : 1; // int8 / fp8: one scale for the tensor at ROWS 8, per row otherwise
        const scales = QUANT_BLOCK[type].rowScale ? randomScales(rng, perRow ? n : 1) : [];
        const hasBias = rng.next() < 0.5 ? 1 : 0;
        const bias = hasBias ? Array.from({ length: n }, () => fr(gauss(rng))) : [];
        const x: number[][] = [];
        const xBits: number[] = [];
        for (let r = 0; r < m; r++) {
          const row: number[] = [];
          for (let j = 0; j < xStride; j++) {
            const v = fr(gauss(rng));
            const b = t === "bf16" ? f32ToBf16Bits(v) : bitsOf(v);
            row.push(t === "bf16" ? bf16BitsToF32(b) : v);
            xBits.push(b);
          }
          x.push(row);
        }
        const rb = quantRowBytes(type, k);
        const mags = Array.from({ length: n }, () => new Float32Array(k));
        const wRows = Array.from({ length: n }, (_, i) => dequantRow(type, w, i * rb, k, 1, mags[i]));
        const want: number[][] = [];
        const bound: number[][] = [];
        for (let r = 0; r < m; r++) {
          want.push([]);
          bound.push([]);
          for (let c = 0; c < n; c++) {
            let dot = 0;
            let abs = 0;
            for (let j = 0; j < k; j++) {
              dot += x[r]![j]! * wRows[c]![j]!;
              abs += Math.abs(x[r]![j]!) * mags[c]![j]!;
            }
            const s = scales.length ? scales[perRow ? c : 0]! : 1;
            want[r]!.push(dot * s + (hasBias ? bias[c]! : 0));
            bound[r]!.push(abs * Math.abs(s));
          }
        }
        const outStride = n + 2;
        cases.push({ label: `${type} ${t} ROWS ${rows} (m ${m}, n ${n}, k ${k}, x stride ${xStride})`, t, m, n, outStride, want, bound });
        input += `gemv ${type} ${t} ${rows} ${m} ${n} ${k} ${xStride} ${xOffset} ${outStride} ${perRow} ${hasBias}\n`;
        input += `${xBits.map(hex).join(" ")}\n${hexBytes(w)}\n${scales.map((s) => hex(bitsOf(s))).join(" ")}\n${bias.map((v) => hex(bitsOf(v))).join(" ")}\n`;
      }
    }
    const lines = run(input);
    assert.equal(lines.length, cases.length);
    cases.forEach((c, i) => {
      const got = lines[i]!.trim().split(" ");
      assert.equal(got.length, c.m * c.outStride, `${c.label}: output size`);
      for (let r = 0; r < c.m; r++) {
        for (let j = 0; j < c.outStride; j++) {
          const g = parseInt(got[r * c.outStride + j]!, 16);
          if (j >= c.n) {
            assert.equal(g, c.t === "bf16" ? 0xdbad : 0x7fbadbad, `${c.label}: padding of row ${r} written`);
            continue;
          }
          const v = c.t === "bf16" ? bf16BitsToF32(g) : fromBits(g);
          const want = c.want[r]![j]!;
          // f32 accumulation (relative to the sum of |terms|), plus the store's rounding for bf16.
          const tol = 2e-6 * c.bound[r]![j]! + (c.t === "bf16" ? 2 ** -8 * Math.abs(want) : 1e-6 * Math.abs(want)) + 1e-30;
          assert.ok(Math.abs(v - want) <= tol, `${c.label}: out[${r}, ${j}] = ${v}, f64 reference ${want} (tolerance ${tol})`);
        }
      }
    });
  });

  it("absmax_rows + quantize_fp8_e4m3 give the reference amax, scale and e4m3 bytes (per row and per tensor)", { timeout: 600_000 }, () => {
    const rng = new Rng(5);
    /** Nearest e4m3 by enumeration (ties to the even code), saturating at ±448; NaN -> 0x7f. */
    const encode = (v: number): number => {
      if (Number.isNaN(v)) return 0x7f;
      const sign = v < 0 || Object.is(v, -0) ? 0x80 : 0;
      const a = Math.abs(v);
      if (a >= 448) return sign | 0x7e;
      let best = 0;
      for (let c = 1; c <= 0x7e; c++) {
        const d = Math.abs(e4m3(c) - a);
        const bd = Math.abs(e4m3(best) - a);
        if (d < bd || (d === bd && c % 2 === 0)) best = c;
      }
      return sign | best;
    };
    const corners = [
      0,
      -0,
      1,
      -1,
      448,
      -448,
      449,
      464,
      480,
      1e9,
      Infinity,
      -Infinity,
      NaN,
      2 ** -6,
      2 ** -9,
      2 ** -10,
      1.5 * 2 ** -10,
      3 * 2 ** -11,
    ];
    corners.push(7.5 * 2 ** -9, 6.5 * 2 ** -9, 1.0625, 1.1875, 240, 232, 0.1, -0.3333, 2 ** -20, 15.5, 17);
    for (let i = 0; i < 200; i++) corners.push(fr(gauss(rng) * 2 ** Math.floor(rng.next() * 24 - 12)));
    let input = `e4m3 ${corners.length} ${corners.map((v) => hex(bitsOf(fr(v)))).join(" ")}\n`;
    const cases: { t: "f32" | "bf16"; rows: number; cols: number; perRow: number; stride: number; x: number[] }[] = [];
    for (const [t, rows, cols, perRow, stride] of [
      ["bf16", 3, 2500, 1, 2504],
      ["bf16", 3, 100, 0, 101],
      ["f32", 2, 2056, 0, 2056],
      ["f32", 4, 37, 1, 40],
    ] as const) {
      const x: number[] = [];
      const bits: number[] = [];
      for (let i = 0; i < rows * stride; i++) {
        let v = fr(gauss(rng) * (1 + Math.floor(i / stride) * 3));
        if (i % stride === 7) v = 0; // a zero, and a row maximum somewhere in the middle
        const b = t === "bf16" ? f32ToBf16Bits(v) : bitsOf(v);
        x.push(t === "bf16" ? bf16BitsToF32(b) : v);
        bits.push(b);
      }
      cases.push({ t, rows, cols, perRow, stride, x });
      input += `fp8 ${t} ${rows} ${cols} ${perRow} ${stride}\n${bits.map(hex).join(" ")}\n`;
    }
    const lines = run(input);
    const codes = lines[0]!
      .trim()
      .split(" ")
      .map((s) => parseInt(s, 16));
    corners.forEach((v, i) => assert.equal(codes[i], encode(fr(v)), `f32_to_e4m3(${v}) = ${hex(codes[i]!)}, want ${hex(encode(fr(v)))}`));
    cases.forEach((c, i) => {
      const [amaxLine, scaleLine, qLine] = lines.slice(1 + 3 * i, 4 + 3 * i).map((l) =>
        l
          .trim()
          .split(" ")
          .map((s) => parseInt(s, 16)),
      );
      const label = `${c.t} ${c.rows}×${c.cols} per ${c.perRow ? "row" : "tensor"}`;
      const rowMax = Array.from({ length: c.rows }, (_, r) => Math.max(...c.x.slice(r * c.stride, r * c.stride + c.cols).map(Math.abs)));
      const amax = c.perRow ? rowMax : [Math.max(...rowMax)];
      assert.deepEqual(amaxLine!.map(fromBits), amax, `${label}: amax`);
      const scale = amax.map((a) => Math.max(fr(a / 448), fr(1 / (448 * 512))));
      assert.deepEqual(scaleLine!.map(fromBits), scale, `${label}: scale`);
      for (let r = 0; r < c.rows; r++) {
        const inv = fr(1 / scale[c.perRow ? r : 0]!);
        for (let j = 0; j < c.stride; j++) {
          const want = j < c.cols ? encode(fr(c.x[r * c.stride + j]! * inv)) : 0xee;
          assert.equal(qLine![r * c.stride + j], want, `${label}: q[${r}, ${j}] (x ${c.x[r * c.stride + j]})`);
        }
      }
    });
  });
});
