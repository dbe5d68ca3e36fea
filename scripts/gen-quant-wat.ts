/**
 * Writes src/backend/cpu/quant.wat, the CPU backend's matrix-product kernels over the kernel memory,
 * from the building blocks below: eleven quantized weight formats share two loop structures (tiles
 * of four weight rows against 1, 2 or 4 activation rows, and a single-row streaming kernel for one
 * activation row) and differ in how a block's bits become 16-bit integers and scales, so the
 * WebAssembly text is generated rather than written out some forty times by hand; the dense bf16,
 * f16 and f32 weights have their own streaming kernel and f32 panel tiles. The inner steps are
 * fully inlined (no calls in the block loops: every v128 live across a wasm call is spilled);
 * quant.wat's header explains the structure and the math.
 *
 *   npx tsc -p tsconfig.json && node dist/scripts/gen-quant-wat.js     # rewrites quant.wat
 *
 * test/cpu-quant-wasm.test.ts checks that the committed quant.wat is what this script writes.
 */
import { existsSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

type Ty = "i32" | "f32" | "v128";

/** The module's constant globals (name → v128.const), collected while generating. */
const CONSTANTS = new Map<string, string>();

const get = (n: string) => `(local.get $${n})`;
const i32 = (v: number) => `(i32.const ${v})`;
const rep = (n: number, s: string) => Array(n).fill(s).join(" ");
const v8 = (...b: number[]) => `(v128.const i8x16 ${b.join(" ")})`;
const v16 = (v: number) => `(v128.const i16x8 ${rep(8, String(v))})`;
const v32 = (v: number) => `(v128.const i32x4 ${rep(4, String(v))})`;
const vf32 = (v: string) => `(v128.const f32x4 ${rep(4, v)})`;
const ZERO = "(v128.const i32x4 0 0 0 0)";
const SHUF = {
  // i32 lanes: interleave the low / high halves of two vectors, then the 64-bit halves.
  lo32: "0 1 2 3 16 17 18 19 4 5 6 7 20 21 22 23",
  hi32: "8 9 10 11 24 25 26 27 12 13 14 15 28 29 30 31",
  lo64: "0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23",
  hi64: "8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31",
};
const shuffle = (pattern: string, a: string, b: string) => `(i8x16.shuffle ${pattern} ${a} ${b})`;
/** v shifted left by s bits in each 16-bit lane (right for negative s). */
const shift16 = (v: string, s: number) => (s > 0 ? `(i16x8.shl ${v} ${i32(s)})` : s < 0 ? `(i16x8.shr_u ${v} ${i32(-s)})` : v);

/** One function's text: parameters, locals (declared on first use), hoisted constants, body. */
class Fn {
  private readonly declared = new Map<string, Ty>();
  private readonly locals: string[] = [];
  private readonly prologue: string[] = [];
  private readonly body: string[] = [];
  private depth = 2;
  private labels = 0;

  constructor(
    private readonly head: string,
    private readonly params: [string, Ty][],
    private readonly result: Ty | null,
  ) {
    for (const [n, t] of params) this.declared.set(n, t);
  }

  local(name: string, ty: Ty): string {
    const had = this.declared.get(name);
    if (had && had !== ty) throw new Error(`local $${name} is ${had}, not ${ty}`);
    if (!had) {
      this.declared.set(name, ty);
      this.locals.push(`(local $${name} ${ty})`);
    }
    return get(name);
  }
  /**
   * A constant v128, read once before the loops from a mutable global into a local; returns its
   * local.get. (A v128.const is rebuilt from immediates at every use by V8; a value it cannot fold
   * stays in a register or is reloaded with one instruction.)
   */
  k(name: string, value: string): string {
    const n = `k_${name}`;
    if (!this.declared.has(n)) {
      const had = CONSTANTS.get(n);
      if (had !== undefined && had !== value) throw new Error(`constant ${n} defined twice`);
      CONSTANTS.set(n, value);
      this.local(n, "v128");
      this.prologue.push(`    (local.set $${n} (global.get $${n}))`);
    }
    return get(n);
  }
  /**
   * Store v to the sink global: a side effect that V8 keeps in order with the memory loads, so the
   * arithmetic that feeds v is scheduled before the loads that follow (without it, TurboFan hoists
   * every load of a long block to its top and spills most of the values).
   */
  sink(v: string): void {
    this.emit(`(global.set $sink ${v})`);
  }
  emit(line: string): void {
    this.body.push("  ".repeat(this.depth) + line);
  }
  note(text: string): void {
    this.emit(`;; ${text}`);
  }
  set(name: string, ty: Ty, e: string): string {
    this.local(name, ty);
    this.emit(`(local.set $${name} ${e})`);
    return get(name);
  }
  v(name: string, e: string): string {
    return this.set(name, "v128", e);
  }
  /** while (cond) { body }, as block/loop/br_if. */
  loop(cond: string, body: () => void): void {
    const l = this.labels++;
    this.emit(`(block $done${l}`);
    this.emit(`  (loop $next${l}`);
    this.depth += 2;
    this.emit(`(br_if $done${l} (i32.eqz ${cond}))`);
    body();
    this.emit(`(br $next${l})`);
    this.depth -= 2;
    this.body[this.body.length - 1] += "))";
  }
  when(cond: string, body: () => void): void {
    this.emit(`(if ${cond}`);
    this.emit(`  (then`);
    this.depth += 2;
    body();
    this.depth -= 2;
    this.body[this.body.length - 1] += "))";
  }
  text(): string {
    const params = this.params.map(([n, t]) => `(param $${n} ${t})`).join(" ");
    const result = this.result ? ` (result ${this.result})` : "";
    const out = [`  (func ${this.head} ${params}${result}`];
    for (let i = 0; i < this.locals.length; i += 6) out.push(`    ${this.locals.slice(i, i + 6).join(" ")}`);
    out.push(...this.prologue, ...this.body);
    if (this.result) out.push(`    ${get("acc")}`);
    out[out.length - 1] += ")";
    return out.join("\n");
  }
}

// ---- shared steps ------------------------------------------------------------------------------

/** Halves in the low 16 bits of each i32 lane (upper bits ignored) to f32, exactly: magnitude bits
 * moved to the f32 positions and scaled by 2^112 (exact for normal and subnormal halves; an
 * all-ones exponent gives 2^16 · (1 + m/1024) instead of inf/NaN), then the sign. */
function f16x4(f: Fn, h: string): string {
  if (!h.startsWith("(local.get")) h = f.v("half", h);
  const mag = f.k("f16_mag", v32(0x0fffe000));
  const p112 = f.k("f16_p112", vf32("0x1p112"));
  const sign = f.k("sign", v32(-0x80000000));
  return `(v128.or (f32x4.mul (v128.and (i32x4.shl ${h} ${i32(13)}) ${mag}) ${p112}) (v128.and (i32x4.shl ${h} ${i32(16)}) ${sign}))`;
}

/** [Σ a0, Σ a1, Σ a2, Σ a3] of four i32x4 (or f32x4: lane i = (a_i[0] + a_i[2]) + (a_i[1] + a_i[3])). */
function hsum4(f: Fn, t: "i32x4" | "f32x4", a: [string, string, string, string], name: string): string {
  const u0 = f.v(`${name}_u0`, `(${t}.add ${shuffle(SHUF.lo32, a[0], a[1])} ${shuffle(SHUF.hi32, a[0], a[1])})`);
  const u1 = f.v(`${name}_u1`, `(${t}.add ${shuffle(SHUF.lo32, a[2], a[3])} ${shuffle(SHUF.hi32, a[2], a[3])})`);
  return f.v(name, `(${t}.add ${shuffle(SHUF.lo64, u0, u1)} ${shuffle(SHUF.hi64, u0, u1)})`);
}

/** Split 16 signed bytes into the even- and odd-indexed ones, sign-extended to i16x8. */
function splitS8(f: Fn, v: string, even: string, odd: string): void {
  if (!v.startsWith("(local.get")) v = f.v(`${even}_src`, v);
  f.v(even, `(i16x8.shr_s (i16x8.shl ${v} ${i32(8)}) ${i32(8)})`);
  f.v(odd, `(i16x8.shr_s ${v} ${i32(8)})`);
}

/** Split 16 unsigned bytes into the even- and odd-indexed ones, zero-extended to i16x8. */
function splitU8(f: Fn, v: string, even: string, odd: string): void {
  if (!v.startsWith("(local.get")) v = f.v(`${even}_src`, v);
  f.v(even, `(v128.and ${v} ${f.k("lo8", v16(0x00ff))})`);
  f.v(odd, `(i16x8.shr_u ${v} ${i32(8)})`);
}

/** The four nibble vectors of 16 packed bytes, in i16 lanes: low nibbles of the even and odd bytes, high nibbles of the even and odd bytes. */
function nibbles(f: Fn, q: string, pre: string, which: "lo" | "hi" | "both"): void {
  const m = f.k("nib", v16(0x000f));
  if (which !== "hi") {
    f.v(`${pre}le`, `(v128.and ${q} ${m})`);
    f.v(`${pre}lo`, `(v128.and (i16x8.shr_u ${q} ${i32(8)}) ${m})`);
  }
  if (which !== "lo") {
    f.v(`${pre}he`, `(v128.and (i16x8.shr_u ${q} ${i32(4)}) ${m})`);
    f.v(`${pre}ho`, `(i16x8.shr_u ${q} ${i32(12)})`);
  }
}

const dot = (a: string, b: string) => `(i32x4.dot_i16x8_s ${a} ${b})`;
const add32 = (a: string, b: string) => `(i32x4.add ${a} ${b})`;
const add16 = (a: string, b: string) => `(i16x8.add ${a} ${b})`;
const mul16 = (a: string, b: string) => `(i16x8.mul ${a} ${b})`;

// ---- 32-element block formats --------------------------------------------------------------------

interface Block32 {
  name: string;
  /** Weight block bytes. */
  bb: number;
  act: "q8_0" | "q8_1";
  /** Unsigned weights stored with an offset: the integer dot subtracts bias · Σ q_x. */
  bias?: number;
  /** Emit weight block r (see at()) as four i16x8: ${p}e0 ${p}o0 ${p}e1 ${p}o1 (elements 0-15 even/odd, 16-31 even/odd). */
  unpack(f: Fn, r: number, p: string): void;
  /** Decode the four blocks' scales (once per step, shared by a tile's activation rows) into locals. */
  scales(f: Fn): void;
  /** The f32x4 added to an activation row's accumulator, given its reduced integer dots and its scales. */
  term(f: Fn, isum: string, dx: string, sx: string): string;
  doc: string;
}

const W = (r: number) => get(`w${r}`);

/**
 * Where block r of the weights ("w"), of the activations ("x") or of the expanded activations
 * ("xp") is: in pointer locals w0..w3 / x0..x3 / xp0..xp3 (tiles, and the last group of a single
 * row), or at r blocks past one base pointer (a full group of a single row: the offsets go into
 * the loads, so there is no per-lane address arithmetic).
 */
type Stream = "w" | "x" | "xp";
let lanesFromBase: Record<Stream, number> | null = null;
function at(s: Stream, r: number, off: number): [string, string] {
  if (lanesFromBase) return [`offset=${off + r * lanesFromBase[s]}`, get(s)];
  return [`offset=${off}`, get(`${s}${r}`)];
}
/** The memory argument and address of a plain load or store: "offset=N ptr". */
const ld = (s: Stream, r: number, off: number) => at(s, r, off).join(" ");
/** A lane load: (op offset=N lane ptr vec). */
function laneLoad(op: string, s: Stream, r: number, off: number, lane: number, vec: string): string {
  const [m, p] = at(s, r, off);
  return `(${op} ${m} ${lane} ${p} ${vec})`;
}
const lanes16 = (f: Fn, off: number, name: string) => {
  for (let r = 0; r < 4; r++) f.v(name, laneLoad("v128.load16_lane", "w", r, off, 2 * r, r === 0 ? ZERO : get(name)));
  return get(name);
};
const lanes32 = (f: Fn, off: number, name: string) => {
  for (let r = 0; r < 4; r++) f.v(name, laneLoad("v128.load32_lane", "w", r, off, r, r === 0 ? ZERO : get(name)));
  return get(name);
};

/** f16 d of each row at byte `off`: isum · (d_w · d_x). */
const scaleD = (off: number) => ({
  scales: (f: Fn) => void f.v("dw", f16x4(f, lanes16(f, off, "dh"))),
  term: (_f: Fn, isum: string, dx: string) => `(f32x4.mul (f32x4.convert_i32x4_s ${isum}) (f32x4.mul ${get("dw")} ${dx}))`,
});
/** f16 d and m of each row at 0 and 2: isum · (d_w · d_x) + m_w · s_x. */
const scaleDM = {
  scales: (f: Fn) => {
    const dm = lanes32(f, 0, "dm");
    f.v("dw", f16x4(f, dm));
    f.v("mw", f16x4(f, `(i32x4.shr_u ${dm} ${i32(16)})`));
  },
  term: (_f: Fn, isum: string, dx: string, sx: string) =>
    `(f32x4.add (f32x4.mul (f32x4.convert_i32x4_s ${isum}) (f32x4.mul ${get("dw")} ${dx})) (f32x4.mul ${get("mw")} ${sx}))`,
};

/** The 5th bits of a q5 block (u32 at byte `off`) as bytes 0x10 / 0, elements 0-15 and 16-31. */
function fifthBits(f: Fn, r: number, off: number, p: string): [string, string] {
  const qh = f.v(`${p}qh`, `(v128.load32_splat ${ld("w", r, off)})`);
  const bit = f.k("bit", v8(1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128));
  const b10 = f.k("b10", v8(...Array<number>(16).fill(0x10)));
  const spread = (pat: string) => `(v128.and (i8x16.eq (v128.and ${shuffle(pat, qh, qh)} ${bit}) ${bit}) ${b10})`;
  return [spread("0 0 0 0 0 0 0 0 1 1 1 1 1 1 1 1"), spread("2 2 2 2 2 2 2 2 3 3 3 3 3 3 3 3")];
}

function q5unpack(f: Fn, r: number, p: string, qhOff: number): void {
  const [h0, h1] = fifthBits(f, r, qhOff, p);
  const q = f.v(`${p}q`, `(v128.load ${ld("w", r, qhOff + 4)})`);
  const m = f.k("b0f", v8(...Array<number>(16).fill(0x0f)));
  const lo = f.v(`${p}l`, `(v128.or (v128.and ${q} ${m}) ${h0})`);
  const hi = f.v(`${p}h`, `(v128.or (v128.and (i16x8.shr_u ${q} ${i32(4)}) ${m}) ${h1})`);
  splitU8(f, lo, `${p}e0`, `${p}o0`);
  splitU8(f, hi, `${p}e1`, `${p}o1`);
}

function q4unpack(f: Fn, r: number, p: string, off: number): void {
  const q = f.v(`${p}q`, `(v128.load ${ld("w", r, off)})`);
  const m = f.k("nib", v16(0x000f));
  f.v(`${p}e0`, `(v128.and ${q} ${m})`);
  f.v(`${p}o0`, `(v128.and (i16x8.shr_u ${q} ${i32(8)}) ${m})`);
  f.v(`${p}e1`, `(v128.and (i16x8.shr_u ${q} ${i32(4)}) ${m})`);
  f.v(`${p}o1`, `(i16x8.shr_u ${q} ${i32(12)})`);
}

function s8unpack(f: Fn, r: number, p: string, off: number): void {
  splitS8(f, `(v128.load ${ld("w", r, off)})`, `${p}e0`, `${p}o0`);
  splitS8(f, `(v128.load ${ld("w", r, off + 16)})`, `${p}e1`, `${p}o1`);
}

const BLOCK32: Block32[] = [
  {
    name: "q8_0",
    bb: 34,
    act: "q8_0",
    doc: "f16 d, i8 q[32]; x = d·q",
    unpack: (f, r, p) => s8unpack(f, r, p, 2),
    ...scaleD(0),
  },
  {
    name: "q4_0",
    bb: 18,
    act: "q8_0",
    bias: 8,
    doc: "f16 d, u8 qs[16] (element j: low nibble of qs[j], j+16: high nibble); x = d·(q - 8)",
    unpack: (f, r, p) => q4unpack(f, r, p, 2),
    ...scaleD(0),
  },
  {
    name: "q4_1",
    bb: 20,
    act: "q8_1",
    doc: "f16 d, f16 m, u8 qs[16]; x = d·q + m",
    unpack: (f, r, p) => q4unpack(f, r, p, 4),
    ...scaleDM,
  },
  {
    name: "q5_0",
    bb: 22,
    act: "q8_0",
    bias: 16,
    doc: "f16 d, u32 qh (bit j: element j's 5th bit), u8 qs[16]; x = d·(q - 16)",
    unpack: (f, r, p) => q5unpack(f, r, p, 2),
    ...scaleD(0),
  },
  {
    name: "q5_1",
    bb: 24,
    act: "q8_1",
    doc: "f16 d, f16 m, u32 qh, u8 qs[16]; x = d·q + m",
    unpack: (f, r, p) => q5unpack(f, r, p, 4),
    ...scaleDM,
  },
  {
    name: "mxfp4",
    bb: 17,
    act: "q8_0",
    bias: 12,
    doc: "u8 e (E8M0), u8 qs[16] indices into {0,1,2,3,4,6,8,12,0,-1,-2,-3,-4,-6,-8,-12}; x = kv[q]·2^(e-128)",
    unpack: (f, r, p) => {
      // The table offset by +12 (0..24, unsigned): the bias takes 12 · Σ q_x back off.
      const q = f.v(`${p}q`, `(v128.load ${ld("w", r, 1)})`);
      const m = f.k("b0f", v8(...Array<number>(16).fill(0x0f)));
      const kv = f.k("kv12", v8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0));
      splitU8(f, `(i8x16.swizzle ${kv} (v128.and ${q} ${m}))`, `${p}e0`, `${p}o0`);
      splitU8(f, `(i8x16.swizzle ${kv} (v128.and (i16x8.shr_u ${q} ${i32(4)}) ${m}))`, `${p}e1`, `${p}o1`);
    },
    scales: (f) => {
      // 2^(e-128) as f32 bits: (e - 1) << 23, subnormal for e < 2 (0x00200000 << e).
      let e = ZERO;
      for (let r = 0; r < 4; r++) e = f.v("e", laneLoad("v128.load8_lane", "w", r, 0, 4 * r, r === 0 ? ZERO : get("e")));
      const one = f.k("one", v32(1));
      const n = f.v("en", `(i32x4.shl (i32x4.sub ${e} ${one}) ${i32(23)})`);
      f.v("en", `(v128.bitselect ${f.k("e0", v32(0x00200000))} ${n} (i32x4.eq ${e} ${ZERO}))`);
      f.v("en", `(v128.bitselect ${f.k("e1", v32(0x00400000))} ${n} (i32x4.eq ${e} ${one}))`);
    },
    term: (_f, isum, dx) => `(f32x4.mul (f32x4.convert_i32x4_s ${isum}) (f32x4.mul ${dx} ${get("en")}))`,
  },
  {
    name: "int8",
    bb: 32,
    act: "q8_0",
    doc: "i8 q[32] (rows of K int8, one f32 scale per row applied by mm_int8); x = q",
    unpack: (f, r, p) => s8unpack(f, r, p, 0),
    scales: () => {},
    term: (_f, isum, dx) => `(f32x4.mul (f32x4.convert_i32x4_s ${isum}) ${dx})`,
  },
];

// ---- tiles: four weight rows against C (1, 2 or 4) activation rows ---------------------------

/**
 * A tile function: four weight rows (w0..w3) against C activation rows (x + c · xrb), `nb` blocks,
 * storing each activation row's four results at oi + c · ob (only `left` of them when left < 4),
 * times the row scales `sc` for int8 / fp8. The weight blocks are loaded and unpacked once for the
 * C activation rows.
 */
function tile(name: string, C: number, scaled: boolean): Fn {
  const params: [string, Ty][] = [
    ["w0", "i32"],
    ["w1", "i32"],
    ["w2", "i32"],
    ["w3", "i32"],
    ["x", "i32"],
    ["xrb", "i32"],
    ["nb", "i32"],
    ["oi", "i32"],
    ["ob", "i32"],
    ["left", "i32"],
  ];
  if (scaled) params.push(["sc", "v128"]);
  return new Fn(`$tile_${name}_${C}`, params, null);
}

/** x_c, the activation row c's pointer (advanced with x). */
const X = (c: number) => get(`x${c}`);

function tileStart(f: Fn, C: number, actBytes: number): void {
  f.set("end", "i32", `(i32.add ${get("x")} (i32.mul ${get("nb")} ${i32(actBytes)}))`);
  for (let c = 0; c < C; c++) {
    f.local(`acc${c}`, "v128");
    f.set(`x${c}`, "i32", c === 0 ? get("x") : `(i32.add ${X(c - 1)} ${get("xrb")})`);
  }
}

function tileAdvance(f: Fn, C: number, wBytes: number, actBytes: number): void {
  for (let r = 0; r < 4; r++) f.set(`w${r}`, "i32", `(i32.add ${W(r)} ${i32(wBytes)})`);
  for (let c = 0; c < C; c++) f.set(`x${c}`, "i32", `(i32.add ${X(c)} ${i32(actBytes)})`);
}

/** Store acc0..acc{C-1} (times sc) at oi + c · ob: four f32, or the first `left`. */
function tileStore(f: Fn, C: number, scaled: boolean): void {
  for (let c = 0; c < C; c++) {
    const o = c === 0 ? get("oi") : f.set("optr", "i32", `(i32.add ${get("oi")} (i32.mul ${i32(c)} ${get("ob")}))`);
    const v = f.v("v", scaled ? `(f32x4.mul ${get(`acc${c}`)} ${get("sc")})` : get(`acc${c}`));
    f.emit(`(if (i32.ge_u ${get("left")} ${i32(4)})`);
    f.emit(`  (then (v128.store ${o} ${v}))`);
    f.emit(`  (else`);
    f.emit(`    (v128.store32_lane 0 ${o} ${v})`);
    f.emit(`    (if (i32.gt_u ${get("left")} ${i32(1)}) (then (v128.store32_lane offset=4 1 ${o} ${v})))`);
    f.emit(`    (if (i32.gt_u ${get("left")} ${i32(2)}) (then (v128.store32_lane offset=8 2 ${o} ${v})))))`);
  }
}

/**
 * The single-row kernels (m = 1) reuse the tile code with the four SIMD lanes holding four
 * consecutive blocks of one weight row instead of one block of four rows: the weights stream from
 * one pointer (the hardware prefetchers follow one stream far better than four interleaved ones),
 * each lane's activation block is its own, and the four per-lane terms are added to the scalar
 * accumulator in block order, so every output sees the same f32 operations as in a tile. The last
 * group of a row repeats its last block in the unused lanes and adds only the real ones.
 * They read the activation row expanded once per call into the caller's workspace (expand_*):
 * already split into i16 vectors, with the per-block sums and scales beside them.
 */
function row1(name: string): Fn {
  return new Fn(
    `$row1_${name}`,
    [
      ["w", "i32"],
      ["x", "i32"],
      ["xp", "i32"],
      ["nb", "i32"],
    ],
    "f32",
  );
}

/**
 * The loop of a single-row kernel over groups of four blocks: `group` emits a group's work and
 * returns its four per-lane terms, which are added to the scalar accumulator in block order. Full
 * groups address their blocks at constant offsets from one pointer per stream; the last 1-3 blocks
 * run the same code with lane pointers clamped to the last block, adding only the real lanes.
 */
function row1Loop(f: Fn, wBytes: number, actBytes: number, expBytes: number, group: () => string, oneBody = false): void {
  f.set("g", "i32", i32(0));
  f.local("acc", "f32");
  if (oneBody) {
    // Long groups (super-blocks): the lane arithmetic is cheap beside them, so every group runs the clamped code.
    f.loop(`(i32.lt_u ${get("g")} ${get("nb")})`, () => {
      row1Clamped(f, wBytes, actBytes, expBytes, group);
      f.set("w", "i32", `(i32.add ${get("w")} ${i32(4 * wBytes)})`);
      f.set("x", "i32", `(i32.add ${get("x")} ${i32(4 * actBytes)})`);
      f.set("xp", "i32", `(i32.add ${get("xp")} ${i32(4 * expBytes)})`);
      f.set("g", "i32", `(i32.add ${get("g")} ${i32(4)})`);
    });
    return;
  }
  f.loop(`(i32.le_u (i32.add ${get("g")} ${i32(4)}) ${get("nb")})`, () => {
    lanesFromBase = { w: wBytes, x: actBytes, xp: expBytes };
    const t = f.v("t", group());
    lanesFromBase = null;
    for (let r = 0; r < 4; r++) f.set("acc", "f32", `(f32.add ${get("acc")} (f32x4.extract_lane ${r} ${t}))`);
    f.set("w", "i32", `(i32.add ${get("w")} ${i32(4 * wBytes)})`);
    f.set("x", "i32", `(i32.add ${get("x")} ${i32(4 * actBytes)})`);
    f.set("xp", "i32", `(i32.add ${get("xp")} ${i32(4 * expBytes)})`);
    f.set("g", "i32", `(i32.add ${get("g")} ${i32(4)})`);
  });
  f.note("the last 1-3 blocks");
  f.when(`(i32.lt_u ${get("g")} ${get("nb")})`, () => row1Clamped(f, wBytes, actBytes, expBytes, group));
}

/** One group with lane pointers clamped to the row's last block; only the real lanes are added. */
function row1Clamped(f: Fn, wBytes: number, actBytes: number, expBytes: number, group: () => string): void {
  {
    f.set("rem", "i32", `(i32.sub ${get("nb")} ${get("g")})`);
    for (let r = 0; r < 4; r++) {
      const l = r === 0 ? i32(0) : `(select ${i32(r)} (i32.sub ${get("rem")} ${i32(1)}) (i32.gt_u ${get("rem")} ${i32(r)}))`;
      f.set(`l${r}`, "i32", l);
      f.set(`w${r}`, "i32", `(i32.add ${get("w")} (i32.mul ${get(`l${r}`)} ${i32(wBytes)}))`);
      f.set(`x${r}`, "i32", `(i32.add ${get("x")} (i32.mul ${get(`l${r}`)} ${i32(actBytes)}))`);
      f.set(`xp${r}`, "i32", `(i32.add ${get("xp")} (i32.mul ${get(`l${r}`)} ${i32(expBytes)}))`);
    }
    const t = f.v("t", group());
    f.set("acc", "f32", `(f32.add ${get("acc")} (f32x4.extract_lane 0 ${t}))`);
    for (let r = 1; r < 4; r++)
      f.when(`(i32.gt_u ${get("rem")} ${i32(r)})`, () => f.set("acc", "f32", `(f32.add ${get("acc")} (f32x4.extract_lane ${r} ${t}))`));
  }
}

/** The i32 / f32 at byte `off` of the expanded blocks xp0..xp3, as one vector. */
function expLanes(f: Fn, off: number, name: string): string {
  for (let r = 0; r < 4; r++) f.v(name, laneLoad("v128.load32_lane", "xp", r, off, r, r === 0 ? ZERO : get(name)));
  return get(name);
}

/** Expanded q8_0 / q8_1 block (EXP32 bytes): xe0 xo0 xe1 xo1 (i16x8), then i32 Σq, f32 d, f32 s. */
const EXP32 = 80;
/** Expanded q8_K block: the sixteen groups' xe, xo (i16x8); d and bsums stay in the q8_K block. */
const EXPK = 512;

/** Activation block c split into xe0_c, xo0_c, xe1_c, xo1_c, and its bias vector bias_c. */
function block32Act(f: Fn, b: Block32, c: number): void {
  const qs = b.act === "q8_0" ? 2 : 4;
  splitS8(f, `(v128.load ${ld("x", c, qs)})`, `xe0_${c}`, `xo0_${c}`);
  splitS8(f, `(v128.load ${ld("x", c, qs + 16)})`, `xe1_${c}`, `xo1_${c}`);
  if (b.bias) {
    f.note(`${b.bias} · Σ q_x, spread over the lanes of one i32x4 (subtracted from each row's partial dots)`);
    const s = add16(add16(get(`xe0_${c}`), get(`xo0_${c}`)), add16(get(`xe1_${c}`), get(`xo1_${c}`)));
    f.v(`bias${c}`, dot(s, f.k(`bias${b.bias}`, v16(b.bias))));
  }
}

/** p{r}_{c} = the integer dot of weight block q{r} with activation c (minus the offset). */
function block32Dot(f: Fn, b: Block32, r: number, c: number): void {
  const p = (s: string) => get(`q${r}${s}`);
  const x = (s: string) => get(`x${s}_${c}`);
  let e = add32(add32(dot(p("e0"), x("e0")), dot(p("o0"), x("o0"))), add32(dot(p("e1"), x("e1")), dot(p("o1"), x("o1"))));
  if (b.bias) e = `(i32x4.sub ${e} ${get(`bias${c}`)})`;
  f.sink(f.v(`p${r}_${c}`, e));
}

function block32Tile(b: Block32, C: number): string {
  const f = tile(b.name, C, b.name === "int8");
  const ab = b.act === "q8_0" ? 34 : 36;
  tileStart(f, C, ab);
  f.loop(`(i32.lt_u ${get("x")} ${get("end")})`, () => {
    for (let c = 0; c < C; c++) {
      f.note(`activation row ${c}: 32 i8 split into even / odd elements as i16, its scale d (and s = d·Σq)`);
      block32Act(f, b, c);
      f.v(`dx${c}`, f16x4(f, `(i32x4.splat (i32.load16_u ${ld("x", c, 0)}))`));
      if (b.act === "q8_1") f.v(`sx${c}`, f16x4(f, `(i32x4.splat (i32.load16_u ${ld("x", c, 2)}))`));
    }
    for (let r = 0; r < 4; r++) {
      f.note(`weight row ${r}`);
      b.unpack(f, r, `q${r}`);
      for (let c = 0; c < C; c++) block32Dot(f, b, r, c);
    }
    f.note("f32: acc += isum · scales, in block order");
    b.scales(f);
    for (let c = 0; c < C; c++) {
      const isum = hsum4(f, "i32x4", [get(`p0_${c}`), get(`p1_${c}`), get(`p2_${c}`), get(`p3_${c}`)], "isum");
      const t = b.term(f, isum, get(`dx${c}`), b.act === "q8_1" ? get(`sx${c}`) : "");
      f.v(`acc${c}`, `(f32x4.add ${get(`acc${c}`)} ${t})`);
    }
    tileAdvance(f, C, b.bb, ab);
    f.set("x", "i32", X(0));
  });
  tileStore(f, C, b.name === "int8");
  return f.text();
}

function block32Row1(b: Block32): string {
  const f = row1(b.name);
  row1Loop(f, b.bb, b.act === "q8_0" ? 34 : 36, EXP32, () => {
    for (let r = 0; r < 4; r++) {
      f.note(`block ${r} of the group`);
      b.unpack(f, r, `q${r}`);
      const p = (s: string) => get(`q${r}${s}`);
      const x = (k: number) => `(v128.load ${ld("xp", r, 16 * k)})`;
      f.sink(f.v(`p${r}`, add32(add32(dot(p("e0"), x(0)), dot(p("o0"), x(1))), add32(dot(p("e1"), x(2)), dot(p("o1"), x(3))))));
    }
    b.scales(f);
    let isum = hsum4(f, "i32x4", [get("p0"), get("p1"), get("p2"), get("p3")], "isum");
    if (b.bias) {
      const sq = expLanes(f, 64, "sq");
      const bias =
        b.bias === 8
          ? `(i32x4.shl ${sq} ${i32(3)})`
          : b.bias === 16
            ? `(i32x4.shl ${sq} ${i32(4)})`
            : `(i32x4.mul ${sq} ${f.k(`bias32_${b.bias}`, v32(b.bias))})`;
      isum = f.v("isum", `(i32x4.sub ${isum} ${bias})`);
    }
    const dx = expLanes(f, 68, "dx");
    const sx = b.act === "q8_1" ? expLanes(f, 72, "sx") : "";
    return b.term(f, isum, dx, sx);
  });
  return f.text();
}

/** expand_q8_0 / q8_1: nb activation blocks at x into EXP32-byte blocks at dst. */
function expand32(act: "q8_0" | "q8_1"): string {
  const f = new Fn(
    `$expand_${act}`,
    [
      ["x", "i32"],
      ["nb", "i32"],
      ["dst", "i32"],
    ],
    null,
  );
  const qs = act === "q8_0" ? 2 : 4;
  f.set("end", "i32", `(i32.add ${get("x")} (i32.mul ${get("nb")} ${i32(act === "q8_0" ? 34 : 36)}))`);
  f.loop(`(i32.lt_u ${get("x")} ${get("end")})`, () => {
    splitS8(f, `(v128.load offset=${qs} ${get("x")})`, "xe0", "xo0");
    splitS8(f, `(v128.load offset=${qs + 16} ${get("x")})`, "xe1", "xo1");
    ["xe0", "xo0", "xe1", "xo1"].forEach((n, k) => f.emit(`(v128.store offset=${16 * k} ${get("dst")} ${get(n)})`));
    const s = f.v("s", `(i32x4.extadd_pairwise_i16x8_s ${add16(add16(get("xe0"), get("xo0")), add16(get("xe1"), get("xo1")))})`);
    f.v("s", add32(s, shuffle("8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7", s, s)));
    f.v("s", add32(s, shuffle("4 5 6 7 0 1 2 3 12 13 14 15 8 9 10 11", s, s)));
    f.emit(`(i32.store offset=64 ${get("dst")} (i32x4.extract_lane 0 ${s}))`);
    f.emit(`(f32.store offset=68 ${get("dst")} (f32x4.extract_lane 0 ${f16x4(f, `(i32x4.splat (i32.load16_u ${get("x")}))`)}))`);
    if (act === "q8_1")
      f.emit(`(f32.store offset=72 ${get("dst")} (f32x4.extract_lane 0 ${f16x4(f, `(i32x4.splat (i32.load16_u offset=2 ${get("x")}))`)}))`);
    f.set("x", "i32", `(i32.add ${get("x")} ${i32(act === "q8_0" ? 34 : 36)})`);
    f.set("dst", "i32", `(i32.add ${get("dst")} ${i32(EXP32)})`);
  });
  return f.text();
}

/** expand_q8_k: nb q8_K blocks at x into EXPK-byte blocks at dst. */
function expandK(): string {
  const f = new Fn(
    `$expand_q8_k`,
    [
      ["x", "i32"],
      ["nb", "i32"],
      ["dst", "i32"],
    ],
    null,
  );
  f.set("end", "i32", `(i32.add ${get("x")} (i32.mul ${get("nb")} ${i32(Q8K.bytes)}))`);
  f.loop(`(i32.lt_u ${get("x")} ${get("end")})`, () => {
    for (let g = 0; g < 16; g++) {
      splitS8(f, `(v128.load offset=${4 + 16 * g} ${get("x")})`, "xe", "xo");
      f.emit(`(v128.store offset=${32 * g} ${get("dst")} ${get("xe")})`);
      f.emit(`(v128.store offset=${32 * g + 16} ${get("dst")} ${get("xo")})`);
    }
    f.set("x", "i32", `(i32.add ${get("x")} ${i32(Q8K.bytes)})`);
    f.set("dst", "i32", `(i32.add ${get("dst")} ${i32(EXPK)})`);
  });
  return f.text();
}

// ---- 256-element super-block formats (activations Q8_K) -----------------------------------------

const Q8K = { d: 0, qs: 4, bsums: 260, bytes: 292 };

/** bp_c: Σ q_x per 32 elements (pairs of bsums) of activation block c, for the mins. */
function q8kPairs(f: Fn, c: number): void {
  f.v(
    `bp${c}`,
    `(i16x8.narrow_i32x4_s (i32x4.extadd_pairwise_i16x8_s (v128.load ${ld("x", c, Q8K.bsums)})) (i32x4.extadd_pairwise_i16x8_s (v128.load ${ld("x", c, Q8K.bsums + 16)})))`,
  );
}

/** Weight block r's 6-bit scales into sc{r} (i16x8) and its mins into $mn. */
function q45kScales(f: Fn, r: number): void {
  f.note(`weight block ${r}: 6-bit scales (bytes 0-7) and mins (8-15) unpacked from scales[12]`);
  const s = f.v("s", `(v128.load ${ld("w", r, 4)})`);
  const ka = f.k("sa", v8(63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 0, 0, 0, 0));
  const kb = f.k("sb", v8(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 15, 15, 15));
  const kc = f.k("sc", v8(0, 0, 0, 0, 48, 48, 48, 48, 0, 0, 0, 0, 48, 48, 48, 48));
  const X4 = f.v("sX", shuffle("0 1 2 3 8 9 10 11 4 5 6 7 8 9 10 11", s, s));
  const Y = shuffle("0 0 0 0 0 1 2 3 0 0 0 0 4 5 6 7", s, s);
  const sm = f.v(
    "sm",
    `(v128.or (v128.or (v128.and ${X4} ${ka}) (v128.and (i16x8.shr_u ${X4} ${i32(4)}) ${kb})) (v128.and (i16x8.shr_u ${Y} ${i32(2)}) ${kc}))`,
  );
  f.v(`sc${r}`, `(i16x8.extend_low_i8x16_u ${sm})`);
  f.v("mn", `(i16x8.extend_high_i8x16_u ${sm})`);
}

/** Sub-block j (32 elements) of activation block c, split into xe0_c .. xo1_c. */
function q8kSub(f: Fn, j: number, c: number): void {
  splitS8(f, `(v128.load ${ld("x", c, Q8K.qs + 32 * j)})`, `xe0_${c}`, `xo0_${c}`);
  splitS8(f, `(v128.load ${ld("x", c, Q8K.qs + 32 * j + 16)})`, `xe1_${c}`, `xo1_${c}`);
}

/** Weight block r's sub-block j as e0 o0 e1 o1 (i16x8, 0..15 or 0..31) and its scale splat $ss. */
function q45kSubWeights(f: Fn, five: boolean, r: number, j: number): void {
  const ch = j >> 1;
  const qsOff = five ? 48 : 16;
  for (const half of [0, 1]) {
    const q = f.v(`q${half}`, `(v128.load ${ld("w", r, qsOff + 32 * ch + 16 * half)})`);
    nibbles(f, q, `n${half}`, j & 1 ? "hi" : "lo");
    let e = get(`n${half}${j & 1 ? "he" : "le"}`);
    let o = get(`n${half}${j & 1 ? "ho" : "lo"}`);
    if (five) {
      const h = f.v(`h${half}`, `(v128.load ${ld("w", r, 16 + 16 * half)})`);
      const m10 = f.k("b4", v16(0x0010));
      e = `(v128.or ${e} (v128.and ${shift16(h, 4 - j)} ${m10}))`;
      o = `(v128.or ${o} (v128.and (i16x8.shr_u ${h} ${i32(4 + j)}) ${m10}))`;
    }
    f.v(`e${half}`, e);
    f.v(`o${half}`, o);
  }
  f.v("ss", shuffle(rep(8, `${2 * j} ${2 * j + 1}`), get(`sc${r}`), get(`sc${r}`)));
}

/** a{r}_{c} += sc_j · Σ q·q_x over the sub-block (weights e0..o1, activation c). */
function q45kSubDot(f: Fn, r: number, c: number): void {
  const t = (h: number) => add16(mul16(get(`e${h}`), get(`xe${h}_${c}`)), mul16(get(`o${h}`), get(`xo${h}_${c}`)));
  f.sink(f.v(`a${r}_${c}`, add32(get(`a${r}_${c}`), dot(add16(t(0), t(1)), get("ss")))));
}

/** acc term of a q4_K / q5_K super-block: isum · (d · d_x) - msum · (dmin · d_x), d and dmin of w0..w3. */
function q45kTerm(f: Fn, isum: string, msum: string, dx: string): string {
  const dd = lanes32(f, 0, "dd");
  const dw = f.v("dw", f16x4(f, dd));
  const mw = f.v("mw", f16x4(f, `(i32x4.shr_u ${dd} ${i32(16)})`));
  return `(f32x4.sub (f32x4.mul (f32x4.convert_i32x4_s ${isum}) (f32x4.mul ${dw} ${dx})) (f32x4.mul (f32x4.convert_i32x4_s ${msum}) (f32x4.mul ${mw} ${dx})))`;
}

function q45kTile(name: "q4_k" | "q5_k", C: number): string {
  const five = name === "q5_k";
  const bb = five ? 176 : 144;
  const f = tile(name, C, false);
  tileStart(f, C, Q8K.bytes);
  f.loop(`(i32.lt_u ${get("x")} ${get("end")})`, () => {
    for (let r = 0; r < 4; r++) for (let c = 0; c < C; c++) f.v(`a${r}_${c}`, ZERO);
    for (let c = 0; c < C; c++) q8kPairs(f, c);
    for (let r = 0; r < 4; r++) {
      q45kScales(f, r);
      for (let c = 0; c < C; c++) f.sink(f.v(`md${r}_${c}`, dot(get("mn"), get(`bp${c}`))));
    }
    for (let c = 0; c < C; c++) hsum4(f, "i32x4", [get(`md0_${c}`), get(`md1_${c}`), get(`md2_${c}`), get(`md3_${c}`)], `msum${c}`);
    for (let j = 0; j < 8; j++) {
      f.note(
        `sub-block ${j}: elements ${32 * j}-${32 * j + 31}, ${j & 1 ? "high" : "low"} nibbles of qs[${32 * (j >> 1)}..${32 * (j >> 1) + 31}]${five ? `, bit ${j} of qh[0..31]` : ""}`,
      );
      for (let c = 0; c < C; c++) q8kSub(f, j, c);
      for (let r = 0; r < 4; r++) {
        q45kSubWeights(f, five, r, j);
        for (let c = 0; c < C; c++) q45kSubDot(f, r, c);
      }
    }
    f.note("f32: acc += isum · (d · d_x) - msum · (dmin · d_x)");
    for (let c = 0; c < C; c++) {
      const isum = hsum4(f, "i32x4", [get(`a0_${c}`), get(`a1_${c}`), get(`a2_${c}`), get(`a3_${c}`)], "isum");
      const dx = f.v("dx", `(f32x4.splat (f32.load ${ld("x", c, 0)}))`);
      f.v(`acc${c}`, `(f32x4.add ${get(`acc${c}`)} ${q45kTerm(f, isum, get(`msum${c}`), dx)})`);
    }
    tileAdvance(f, C, bb, Q8K.bytes);
    f.set("x", "i32", X(0));
  });
  tileStore(f, C, false);
  return f.text();
}

function q45kRow1(name: "q4_k" | "q5_k"): string {
  const five = name === "q5_k";
  const f = row1(name);
  row1Loop(
    f,
    five ? 176 : 144,
    Q8K.bytes,
    EXPK,
    () => {
      for (let r = 0; r < 4; r++) {
        f.v(`a${r}`, ZERO);
        q8kPairs(f, r);
        q45kScales(f, r);
        f.sink(f.v(`md${r}`, dot(get("mn"), get(`bp${r}`))));
      }
      const msum = hsum4(f, "i32x4", [get("md0"), get("md1"), get("md2"), get("md3")], "msum");
      for (let j = 0; j < 8; j++) {
        f.note(`sub-block ${j} of each super-block`);
        for (let r = 0; r < 4; r++) {
          q45kSubWeights(f, five, r, j);
          const x = (k: number) => `(v128.load ${ld("xp", r, 64 * j + 16 * k)})`;
          const t = (h: number) => add16(mul16(get(`e${h}`), x(2 * h)), mul16(get(`o${h}`), x(2 * h + 1)));
          f.sink(f.v(`a${r}`, add32(get(`a${r}`), dot(add16(t(0), t(1)), get("ss")))));
        }
      }
      const isum = hsum4(f, "i32x4", [get("a0"), get("a1"), get("a2"), get("a3")], "isum");
      for (let r = 0; r < 4; r++) f.v("dx", laneLoad("v128.load32_lane", "x", r, 0, r, r === 0 ? ZERO : get("dx")));
      return q45kTerm(f, isum, msum, get("dx"));
    },
    true,
  );
  return f.text();
}

/** 32 · Σ_g scale_g · bsum_g: weight block r's scales against activation block c's bsums, into b{r}_{c}. */
function q6kBias(f: Fn, r: number, c: number): void {
  f.sink(
    f.v(
      `b${r}_${c}`,
      add32(dot(get("slo"), `(v128.load ${ld("x", c, Q8K.bsums)})`), dot(get("shi"), `(v128.load ${ld("x", c, Q8K.bsums + 16)})`)),
    ),
  );
}

function q6kScales(f: Fn, r: number): void {
  const s = f.v(`s${r}`, `(v128.load ${ld("w", r, 192)})`);
  f.v("slo", `(i16x8.extend_low_i8x16_s ${s})`);
  f.v("shi", `(i16x8.extend_high_i8x16_s ${s})`);
}

/** Group g (16 elements) of weight block r as e / o (i16x8, 0..63) and its scale splat $ss. */
function q6kGroupWeights(f: Fn, r: number, g: number): void {
  const h = g >> 3;
  const qq = (g >> 1) & 3;
  const part = g & 1;
  const ql = 64 * h + 32 * (qq & 1) + 16 * part;
  const qh = 128 + 32 * h + 16 * part;
  const n = f.v("n", `(v128.load ${ld("w", r, ql)})`);
  nibbles(f, n, "n", qq < 2 ? "lo" : "hi");
  const hb = f.v("hb", `(v128.load ${ld("w", r, qh)})`);
  const m30 = f.k("b45", v16(0x0030));
  f.v("e", `(v128.or ${get(qq < 2 ? "nle" : "nhe")} (v128.and ${shift16(hb, 4 - 2 * qq)} ${m30}))`);
  f.v("o", `(v128.or ${get(qq < 2 ? "nlo" : "nho")} (v128.and (i16x8.shr_u ${hb} ${i32(4 + 2 * qq)}) ${m30}))`);
  f.v("ss", `(i16x8.extend_low_i8x16_s ${shuffle(rep(16, String(g)), get(`s${r}`), get(`s${r}`))})`);
}

function q6kGroupDot(f: Fn, r: number, c: number): void {
  const t = add16(mul16(get("e"), get(`xe_${c}`)), mul16(get("o"), get(`xo_${c}`)));
  f.sink(f.v(`a${r}_${c}`, add32(get(`a${r}_${c}`), dot(t, get("ss")))));
}

const q6kGroupNote = (g: number) => {
  const h = g >> 3;
  const qq = (g >> 1) & 3;
  const part = g & 1;
  return `group ${g}: elements ${16 * g}-${16 * g + 15}: ${qq < 2 ? "low" : "high"} nibbles of ql[${64 * h + 32 * (qq & 1) + 16 * part}..], bits ${2 * qq}-${2 * qq + 1} of qh[${32 * h + 16 * part}..], scale ${g}`;
};

/** acc term of a q6_K super-block: (isum - 32 · bsum) · (d · d_x), d of w0..w3. */
function q6kTerm(f: Fn, isum: string, bsum: string, dx: string): string {
  const dw = f.v("dw", f16x4(f, lanes16(f, 208, "dh")));
  return `(f32x4.mul (f32x4.convert_i32x4_s (i32x4.sub ${isum} (i32x4.shl ${bsum} ${i32(5)}))) (f32x4.mul ${dw} ${dx}))`;
}

function q6kTile(C: number): string {
  const f = tile("q6_k", C, false);
  tileStart(f, C, Q8K.bytes);
  f.loop(`(i32.lt_u ${get("x")} ${get("end")})`, () => {
    for (let r = 0; r < 4; r++) for (let c = 0; c < C; c++) f.v(`a${r}_${c}`, ZERO);
    f.note("32 · Σ_g scale_g · bsum_g per (weight row, activation row): the -32 offset of every quant");
    for (let r = 0; r < 4; r++) {
      q6kScales(f, r);
      for (let c = 0; c < C; c++) q6kBias(f, r, c);
    }
    for (let c = 0; c < C; c++) hsum4(f, "i32x4", [get(`b0_${c}`), get(`b1_${c}`), get(`b2_${c}`), get(`b3_${c}`)], `bsum${c}`);
    for (let g = 0; g < 16; g++) {
      f.note(q6kGroupNote(g));
      for (let c = 0; c < C; c++) splitS8(f, `(v128.load ${ld("x", c, Q8K.qs + 16 * g)})`, `xe_${c}`, `xo_${c}`);
      for (let r = 0; r < 4; r++) {
        q6kGroupWeights(f, r, g);
        for (let c = 0; c < C; c++) q6kGroupDot(f, r, c);
      }
    }
    f.note("f32: acc += (isum - 32 · bsum) · (d · d_x)");
    for (let c = 0; c < C; c++) {
      const isum = hsum4(f, "i32x4", [get(`a0_${c}`), get(`a1_${c}`), get(`a2_${c}`), get(`a3_${c}`)], "isum");
      const dx = f.v("dx", `(f32x4.splat (f32.load ${ld("x", c, 0)}))`);
      f.v(`acc${c}`, `(f32x4.add ${get(`acc${c}`)} ${q6kTerm(f, isum, get(`bsum${c}`), dx)})`);
    }
    tileAdvance(f, C, 210, Q8K.bytes);
    f.set("x", "i32", X(0));
  });
  tileStore(f, C, false);
  return f.text();
}

function q6kRow1(): string {
  const f = row1("q6_k");
  row1Loop(
    f,
    210,
    Q8K.bytes,
    EXPK,
    () => {
      for (let r = 0; r < 4; r++) {
        f.v(`a${r}`, ZERO);
        q6kScales(f, r);
        q6kBias(f, r, r);
      }
      const bsum = hsum4(f, "i32x4", [get("b0_0"), get("b1_1"), get("b2_2"), get("b3_3")], "bsum");
      for (let g = 0; g < 16; g++) {
        f.note(q6kGroupNote(g));
        for (let r = 0; r < 4; r++) {
          q6kGroupWeights(f, r, g);
          const t = add16(
            mul16(get("e"), `(v128.load ${ld("xp", r, 32 * g)})`),
            mul16(get("o"), `(v128.load ${ld("xp", r, 32 * g + 16)})`),
          );
          f.sink(f.v(`a${r}`, add32(get(`a${r}`), dot(t, get("ss")))));
        }
      }
      const isum = hsum4(f, "i32x4", [get("a0"), get("a1"), get("a2"), get("a3")], "isum");
      for (let r = 0; r < 4; r++) f.v("dx", laneLoad("v128.load32_lane", "x", r, 0, r, r === 0 ? ZERO : get("dx")));
      return q6kTerm(f, isum, bsum, get("dx"));
    },
    true,
  );
  return f.text();
}

// ---- fp8 (e4m3) weights, f32 activations ---------------------------------------------------------

function fp8Tile(C: number): string {
  const f = tile("fp8", C, true);
  tileStart(f, C, 64);
  for (let r = 0; r < 4; r++) for (let c = 0; c < C; c++) f.local(`a${r}_${c}`, "v128");
  f.loop(`(i32.lt_u ${get("x")} ${get("end")})`, () => {
    for (let r = 0; r < 4; r++) {
      f.note(`weight row ${r}: 16 e4m3 bytes to bf16 (high byte s | (e>>1) + 60, low byte (e&1, m) << 4, corrected for e = 0), then f32`);
      const b = f.v("b", `(v128.load ${W(r)})`);
      const i = f.v("i", `(v128.and ${b} ${f.k("b7f", v8(...Array<number>(16).fill(0x7f)))})`);
      const lo = f.v(
        "lo",
        `(i8x16.add (v128.and (i16x8.shl ${b} ${i32(4)}) ${f.k("bf0", v8(...Array<number>(16).fill(0xf0)))}) (i8x16.swizzle ${f.k("tlo", v8(0, 0xf0, 0x60, 0x90, 0xc0, 0xd0, 0xe0, 0xf0, 0, 0, 0, 0, 0, 0, 0, 0))} ${i}))`,
      );
      const hi = f.v(
        "hi",
        `(v128.or (i8x16.add (i8x16.add (i16x8.shr_u (v128.and ${b} ${f.k("b70", v8(...Array<number>(16).fill(0x70)))}) ${i32(4)}) ${f.k("b60", v8(...Array<number>(16).fill(60)))}) (i8x16.swizzle ${f.k("thi", v8(0xc4, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))} ${i})) (v128.and ${b} ${f.k("b80", v8(...Array<number>(16).fill(0x80)))}))`,
      );
      const bl = f.v("bl", shuffle("0 16 1 17 2 18 3 19 4 20 5 21 6 22 7 23", lo, hi));
      const bh = f.v("bh", shuffle("8 24 9 25 10 26 11 27 12 28 13 29 14 30 15 31", lo, hi));
      const z = f.k("zero", ZERO);
      const lo4 = "0 1 16 17 2 3 18 19 4 5 20 21 6 7 22 23";
      const hi4 = "8 9 24 25 10 11 26 27 12 13 28 29 14 15 30 31";
      const vs = [shuffle(lo4, z, bl), shuffle(hi4, z, bl), shuffle(lo4, z, bh), shuffle(hi4, z, bh)];
      for (let j = 0; j < 4; j++) f.v(`v${j}`, vs[j]!);
      for (let c = 0; c < C; c++) {
        const a = `a${r}_${c}`;
        for (let j = 0; j < 4; j++) f.v(a, `(f32x4.add ${get(a)} (f32x4.mul ${get(`v${j}`)} (v128.load offset=${16 * j} ${X(c)})))`);
        f.sink(get(a));
      }
    }
    tileAdvance(f, C, 16, 64);
    f.set("x", "i32", X(0));
  });
  f.note("lane reduction (l0 + l2) + (l1 + l3) of each row");
  for (let c = 0; c < C; c++) hsum4(f, "f32x4", [get(`a0_${c}`), get(`a1_${c}`), get(`a2_${c}`), get(`a3_${c}`)], `acc${c}`);
  tileStore(f, C, true);
  return f.text();
}

// ---- dense weights (bf16, f16, f32), f32 activations ---------------------------------------------

type Dense = "bf16" | "f16" | "f32";
const DENSE: readonly Dense[] = ["bf16", "f16", "f32"];
/** Weight bytes of a 16-element block. */
const denseBytes = (d: Dense) => (d === "f32" ? 64 : 32);
/** i8x16.shuffle patterns (zero vector first): 16-bit lanes 0-3 / 4-7 of the second operand into the high halves of i32 lanes. */
const WIDEN_LO = "0 1 16 17 2 3 18 19 4 5 20 21 6 7 22 23";
const WIDEN_HI = "8 9 24 25 10 11 26 27 12 13 28 29 14 15 30 31";

/**
 * Halves in the high 16 bits of each i32 lane (low bits zero) to f32, exactly, with integer
 * operations and one exact subtraction, as linear.wat's cvt_f16: the exponent and mantissa moved
 * to the f32 positions and rebiased, rebiased once more for inf/NaN, and zero / subnormal halves
 * renormalized as (2^-14 + m · 2^-24) - 2^-14; then the sign. Leaves the result in local `name`.
 */
function f16Wide(f: Fn, v: string, name: string): string {
  if (!v.startsWith("(local.get")) v = f.v(`${name}_h`, v);
  const em = f.v("f16_em", `(i32x4.shr_u (v128.and ${v} ${f.k("h7fff", v32(0x7fff0000))}) ${i32(3)})`);
  const e = f.v("f16_e", `(v128.and ${em} ${f.k("f16_exp", v32(0x0f800000))})`);
  const rebias = f.k("f16_rebias", v32(0x38000000));
  const o = f.v("f16_o", `(i32x4.add ${em} ${rebias})`);
  f.v("f16_o", `(i32x4.add ${o} (v128.and (i32x4.eq ${e} ${f.k("f16_exp", v32(0x0f800000))}) ${rebias}))`);
  const sub = `(f32x4.sub (i32x4.add ${o} ${f.k("f16_one", v32(0x00800000))}) ${f.k("f16_min", v32(0x38800000))})`;
  f.v("f16_o", `(v128.bitselect ${sub} ${o} (i32x4.eq ${e} ${f.k("zero", ZERO)}))`);
  return f.v(name, `(v128.or ${o} (v128.and ${v} ${f.k("sign", v32(-0x80000000))}))`);
}

/** Vector j (elements 4j..4j+3, f32x4) of the 16-element weight block at ptr + off. */
function denseVector(f: Fn, d: Dense, ptr: string, off: number, j: number, name: string): string {
  if (d === "f32") return `(v128.load offset=${off + 16 * j} ${ptr})`;
  const wide = shuffle(j & 1 ? WIDEN_HI : WIDEN_LO, f.k("zero", ZERO), `(v128.load offset=${off + 16 * (j >> 1)} ${ptr})`);
  return d === "bf16" ? wide : f16Wide(f, wide, name);
}

/** The four vectors of a block from two 16-byte loads (bf16 / f16), or four loads (f32), into locals ${p}0..3 where needed. */
function denseBlock(f: Fn, d: Dense, ptr: string, p: string): string[] {
  if (d === "f32") return [0, 1, 2, 3].map((j) => `(v128.load offset=${16 * j} ${ptr})`);
  const z = f.k("zero", ZERO);
  const a = f.v(`${p}a`, `(v128.load ${ptr})`);
  const b = f.v(`${p}b`, `(v128.load offset=16 ${ptr})`);
  const wide = [shuffle(WIDEN_LO, z, a), shuffle(WIDEN_HI, z, a), shuffle(WIDEN_LO, z, b), shuffle(WIDEN_HI, z, b)];
  return d === "bf16" ? wide : wide.map((v, j) => f16Wide(f, v, `${p}${j}`));
}

/**
 * $stream_D (w, wrb, n, x, nb, out): one activation row (m = 1), each weight row read once, in
 * place. Four rows are in flight (one f32x4 accumulator chain each would be add-latency-bound
 * alone), taken a quarter of the matrix apart: rows i, i + S, i + 2S, i + 3S for S = ceil(n / 4),
 * so that each of the four is one long sequential stream, which the hardware prefetchers follow
 * (four adjacent short rows read in step run at half the bandwidth). Rows past n repeat the last
 * row and are not stored. Each block's four vectors are multiplied by the activation's and added to
 * the row's accumulator in order, then the lane reduction.
 */
function denseStream(d: Dense): string {
  const f = new Fn(
    `$stream_${d}`,
    [
      ["w", "i32"],
      ["wrb", "i32"],
      ["n", "i32"],
      ["x", "i32"],
      ["nb", "i32"],
      ["out", "i32"],
    ],
    null,
  );
  const bb = denseBytes(d);
  f.set("s", "i32", `(i32.shr_u (i32.add ${get("n")} ${i32(3)}) ${i32(2)})`);
  f.set("i", "i32", i32(0));
  f.set("end", "i32", `(i32.add ${get("x")} (i32.shl ${get("nb")} ${i32(6)}))`);
  f.set("last", "i32", `(i32.sub ${get("n")} ${i32(1)})`);
  f.loop(`(i32.lt_u ${get("i")} ${get("s")})`, () => {
    f.note("rows i + q·S (past the end: the last row again, not stored)");
    for (let q = 0; q < 4; q++) {
      const row = q === 0 ? get("i") : f.set(`row${q}`, "i32", `(i32.add ${get(q === 1 ? "i" : `row${q - 1}`)} ${get("s")})`);
      const clamped = q === 0 ? row : `(select ${row} ${get("last")} (i32.lt_u ${row} ${get("n")}))`;
      f.set(`w${q}`, "i32", `(i32.add ${get("w")} (i32.mul ${clamped} ${get("wrb")}))`);
      f.v(`acc${q}`, ZERO);
    }
    f.set("xp", "i32", get("x"));
    f.loop(`(i32.lt_u ${get("xp")} ${get("end")})`, () => {
      for (let j = 0; j < 4; j++) f.v(`x${j}`, `(v128.load offset=${16 * j} ${get("xp")})`);
      const step = (block: (q: number) => string[]) => {
        for (let q = 0; q < 4; q++) {
          const v = block(q);
          for (let j = 0; j < 4; j++) f.v(`acc${q}`, `(f32x4.add ${get(`acc${q}`)} (f32x4.mul ${v[j]} ${get(`x${j}`)}))`);
        }
      };
      if (d !== "f16") step((q) => denseBlock(f, d, get(`w${q}`), `w${q}_`));
      else {
        f.note("no zero, subnormal, inf or NaN half among the four blocks: the exponent rebiased in place, else cvt_f16's steps");
        let chk = "";
        for (let q = 0; q < 4; q++) {
          for (const h of ["a", "b"]) {
            const v = f.v(`w${q}_${h}`, `(v128.load offset=${h === "a" ? 0 : 16} ${get(`w${q}`)})`);
            // (h + 0x0400) & 0x7800 is 0 exactly for the exponents 0 and 31.
            const t = `(v128.and (i16x8.add ${v} ${f.k("h0400", v16(0x0400))}) ${f.k("h7800", v16(0x7800))})`;
            chk = chk ? f.v("chk", `(i16x8.min_u ${chk} ${t})`) : f.v("chk", t);
          }
        }
        const z = f.k("zero", ZERO);
        const wide = (q: number) => {
          const a = get(`w${q}_a`);
          const b = get(`w${q}_b`);
          return [shuffle(WIDEN_LO, z, a), shuffle(WIDEN_HI, z, a), shuffle(WIDEN_LO, z, b), shuffle(WIDEN_HI, z, b)];
        };
        // A normal half's f32, in 16-bit halves: high = s | (e + 112) << 7 | m >> 3 (the sign smeared by
        // the arithmetic shift masked off), low = (m & 7) << 13; interleaved into the i32 lanes.
        const fast = (q: number) =>
          (["a", "b"] as const).flatMap((h) => {
            const v = get(`w${q}_${h}`);
            const hi = f.v(
              `w${q}_${h}hi`,
              `(i16x8.add (v128.and (i16x8.shr_s ${v} ${i32(3)}) ${f.k("h8fff", v16(0x8fff - 0x10000))}) ${f.k("h3800", v16(0x3800))})`,
            );
            const lo = f.v(`w${q}_${h}lo`, `(i16x8.shl ${v} ${i32(13)})`);
            return [shuffle(WIDEN_LO, lo, hi), shuffle(WIDEN_HI, lo, hi)];
          });
        f.emit(`(if (i16x8.all_true ${chk})`);
        f.emit(`  (then`);
        step(fast);
        f.emit(`  )`);
        f.emit(`  (else`);
        step((q) => wide(q).map((v, j) => f16Wide(f, v, `w${q}_${j}`)));
        f.emit(`  ))`);
      }
      for (let q = 0; q < 4; q++) f.set(`w${q}`, "i32", `(i32.add ${get(`w${q}`)} ${i32(bb)})`);
      f.set("xp", "i32", `(i32.add ${get("xp")} ${i32(64)})`);
    });
    const t = hsum4(f, "f32x4", [get("acc0"), get("acc1"), get("acc2"), get("acc3")], "t");
    f.emit(`(f32.store (i32.add ${get("out")} (i32.shl ${get("i")} ${i32(2)})) (f32x4.extract_lane 0 ${t}))`);
    for (let q = 1; q < 4; q++)
      f.when(`(i32.lt_u ${get(`row${q}`)} ${get("n")})`, () =>
        f.emit(`(f32.store (i32.add ${get("out")} (i32.shl ${get(`row${q}`)} ${i32(2)})) (f32x4.extract_lane ${q} ${t}))`),
      );
    f.set("i", "i32", `(i32.add ${get("i")} ${i32(1)})`);
  });
  return f.text();
}

/**
 * $panel_D (w0, w1, w2, w3, nb, dst): four weight rows decoded to f32 into the workspace as a
 * panel: for each four elements k..k+3 (k = 0, 4, ...), the four rows' vectors side by side
 * (64 bytes), so that a tile reads one stream from one pointer.
 */
function densePanel(d: Dense): string {
  const f = new Fn(
    `$panel_${d}`,
    [
      ["w0", "i32"],
      ["w1", "i32"],
      ["w2", "i32"],
      ["w3", "i32"],
      ["nb", "i32"],
      ["dst", "i32"],
    ],
    null,
  );
  f.set("end", "i32", `(i32.add ${get("dst")} (i32.shl ${get("nb")} ${i32(8)}))`);
  f.loop(`(i32.lt_u ${get("dst")} ${get("end")})`, () => {
    for (let r = 0; r < 4; r++) {
      const v = denseBlock(f, d, W(r), `r${r}_`);
      for (let j = 0; j < 4; j++) f.emit(`(v128.store offset=${64 * j + 16 * r} ${get("dst")} ${v[j]})`);
      f.set(`w${r}`, "i32", `(i32.add ${W(r)} ${i32(denseBytes(d))})`);
    }
    f.set("dst", "i32", `(i32.add ${get("dst")} ${i32(256)})`);
  });
  return f.text();
}

/**
 * $ptile_C (p, x, xrb, nb, oi, ob, left): a panel of four weight rows (see $panel_D) against C
 * activation rows, one vector step (four elements) per iteration: TurboFan schedules every load of
 * an iteration first, so the loads of one step (C + 4) and the 4·C accumulators are what must fit
 * in registers (a longer body spills; measured 28 against 38 GFLOP/s for the 4 × 2 tile). The
 * accumulators get the same additions in the same order as in $stream_D.
 */
function panelTile(C: number): string {
  const f = new Fn(
    `$ptile_${C}`,
    [
      ["p", "i32"],
      ["x", "i32"],
      ["xrb", "i32"],
      ["nb", "i32"],
      ["oi", "i32"],
      ["ob", "i32"],
      ["left", "i32"],
    ],
    null,
  );
  tileStart(f, C, 64);
  for (let r = 0; r < 4; r++) for (let c = 0; c < C; c++) f.local(`a${r}_${c}`, "v128");
  f.loop(`(i32.lt_u ${get("x")} ${get("end")})`, () => {
    for (let c = 0; c < C; c++) f.v(`x${c}v`, `(v128.load ${X(c)})`);
    for (let r = 0; r < 4; r++) {
      const w = f.v("wv", `(v128.load offset=${16 * r} ${get("p")})`);
      for (let c = 0; c < C; c++) f.v(`a${r}_${c}`, `(f32x4.add ${get(`a${r}_${c}`)} (f32x4.mul ${w} ${get(`x${c}v`)}))`);
    }
    f.set("p", "i32", `(i32.add ${get("p")} ${i32(64)})`);
    for (let c = 0; c < C; c++) f.set(`x${c}`, "i32", `(i32.add ${X(c)} ${i32(16)})`);
    f.set("x", "i32", X(0));
  });
  f.note("lane reduction (l0 + l2) + (l1 + l3) of each row");
  for (let c = 0; c < C; c++) hsum4(f, "f32x4", [get(`a0_${c}`), get(`a1_${c}`), get(`a2_${c}`), get(`a3_${c}`)], `acc${c}`);
  tileStore(f, C, false);
  return f.text();
}

/**
 * $dtile_D_C: four weight rows of kind D, read in place and decoded vector by vector, against C
 * activation rows (mm without a workspace: slower than the panels, the same results).
 */
function denseTile(d: Dense, C: number): string {
  const f = new Fn(
    `$dtile_${d}_${C}`,
    [
      ["w0", "i32"],
      ["w1", "i32"],
      ["w2", "i32"],
      ["w3", "i32"],
      ["x", "i32"],
      ["xrb", "i32"],
      ["nb", "i32"],
      ["oi", "i32"],
      ["ob", "i32"],
      ["left", "i32"],
    ],
    null,
  );
  tileStart(f, C, 64);
  for (let r = 0; r < 4; r++) for (let c = 0; c < C; c++) f.local(`a${r}_${c}`, "v128");
  f.loop(`(i32.lt_u ${get("x")} ${get("end")})`, () => {
    for (let j = 0; j < 4; j++) {
      for (let c = 0; c < C; c++) f.v(`x${j}_${c}`, `(v128.load offset=${16 * j} ${X(c)})`);
      for (let r = 0; r < 4; r++) {
        let w = denseVector(f, d, W(r), 0, j, "wv");
        if (!w.startsWith("(local.get")) w = f.v("wv", w);
        for (let c = 0; c < C; c++) f.v(`a${r}_${c}`, `(f32x4.add ${get(`a${r}_${c}`)} (f32x4.mul ${w} ${get(`x${j}_${c}`)}))`);
      }
    }
    tileAdvance(f, C, denseBytes(d), 64);
    f.set("x", "i32", X(0));
  });
  f.note("lane reduction (l0 + l2) + (l1 + l3) of each row");
  for (let c = 0; c < C; c++) hsum4(f, "f32x4", [get(`a0_${c}`), get(`a1_${c}`), get(`a2_${c}`), get(`a3_${c}`)], `acc${c}`);
  tileStore(f, C, false);
  return f.text();
}

/**
 * Activation rows per panel tile (the largest; a remainder runs as smaller ones) and per in-place
 * tile: 2, whose 8 accumulators and 6 loads fit V8's 15 vector registers (3 measured slower).
 */
const PANEL_M = 2;
const DTILE_M = 2;

/**
 * The activation rows against one group of four weight rows: tiles of the largest size M at a time,
 * then one of each smaller size the remainder needs. `tile` names the function prefix and `wargs`
 * its weight arguments.
 */
function denseRows(f: Fn, tile: string, M: number, wargs: string[]): void {
  f.set("left", "i32", `(i32.sub ${get("n")} ${get("r")})`);
  f.set("i", "i32", i32(0));
  f.set("xi", "i32", get("x"));
  f.set("oi", "i32", `(i32.add ${get("out")} (i32.shl ${get("r")} ${i32(2)}))`);
  const args = [...wargs, get("xi"), get("xrb"), get("nb"), get("oi"), get("ob"), get("left")].join(" ");
  f.loop(`(i32.le_u (i32.add ${get("i")} ${i32(M)}) ${get("m")})`, () => {
    f.emit(`(call ${tile}_${M} ${args})`);
    f.set("xi", "i32", `(i32.add ${get("xi")} (i32.mul ${get("xrb")} ${i32(M)}))`);
    f.set("oi", "i32", `(i32.add ${get("oi")} (i32.mul ${get("ob")} ${i32(M)}))`);
    f.set("i", "i32", `(i32.add ${get("i")} ${i32(M)})`);
  });
  for (let c = M - 1; c >= 1; c--) {
    f.when(`(i32.ge_u (i32.sub ${get("m")} ${get("i")}) ${i32(c)})`, () => {
      f.emit(`(call ${tile}_${c} ${args})`);
      f.set("xi", "i32", `(i32.add ${get("xi")} (i32.mul ${get("xrb")} ${i32(c)}))`);
      f.set("oi", "i32", `(i32.add ${get("oi")} (i32.mul ${get("ob")} ${i32(c)}))`);
      f.set("i", "i32", `(i32.add ${get("i")} ${i32(c)})`);
    });
  }
}

const sizes = (M: number) => Array.from({ length: M }, (_, i) => i + 1);

/**
 * mm_D: m = 1 streams the rows ($stream_D); m > 1 takes the weight rows four at a time, decoded
 * once into a panel in the workspace for all the activation rows (without a workspace, tiles that
 * decode in place).
 */
function denseDriver(d: Dense): string {
  const f = new Fn(
    `(export "mm_${d}")`,
    [
      ["w", "i32"],
      ["wrb", "i32"],
      ["n", "i32"],
      ["x", "i32"],
      ["xrb", "i32"],
      ["m", "i32"],
      ["nb", "i32"],
      ["out", "i32"],
      ["os", "i32"],
      ["work", "i32"],
    ],
    null,
  );
  f.note("one activation row: the weight rows streamed, each read once");
  f.when(`(i32.eq ${get("m")} ${i32(1)})`, () => {
    f.emit(`(call $stream_${d} ${get("w")} ${get("wrb")} ${get("n")} ${get("x")} ${get("nb")} ${get("out")})`);
    f.emit("(return)");
  });
  f.set("ob", "i32", `(i32.shl ${get("os")} ${i32(2)})`);
  f.set("r", "i32", i32(0));
  f.set("last", "i32", `(i32.sub ${get("n")} ${i32(1)})`);
  f.loop(`(i32.lt_u ${get("r")} ${get("n")})`, () => {
    f.note("four rows r..r+3 (past the end: the last row again, not stored)");
    for (let k = 0; k < 4; k++) {
      const row =
        k === 0
          ? get("r")
          : `(select (i32.add ${get("r")} ${i32(k)}) ${get("last")} (i32.lt_u (i32.add ${get("r")} ${i32(k)}) ${get("n")}))`;
      f.set(`w${k}`, "i32", `(i32.add ${get("w")} (i32.mul ${row} ${get("wrb")}))`);
    }
    const w4 = [0, 1, 2, 3].map((k) => get(`w${k}`));
    f.emit(`(if ${get("work")}`);
    f.emit(`  (then`);
    f.emit(`  (call $panel_${d} ${w4.join(" ")} ${get("nb")} ${get("work")})`);
    denseRows(f, "$ptile", PANEL_M, [get("work")]);
    f.emit(`  )`);
    f.emit(`  (else`);
    denseRows(f, `$dtile_${d}`, DTILE_M, w4);
    f.emit(`  ))`);
    f.set("r", "i32", `(i32.add ${get("r")} ${i32(4)})`);
  });
  return f.text();
}

/** Everything of the dense kinds: the shared panel tiles, then per kind its stream, panel, in-place tiles and mm. */
function denseKernels(): string[] {
  const parts = sizes(PANEL_M).flatMap((C) => ["", panelTile(C)]);
  for (const d of DENSE)
    parts.push("", denseStream(d), "", densePanel(d), ...sizes(DTILE_M).flatMap((C) => ["", denseTile(d, C)]), "", denseDriver(d));
  return parts;
}

// ---- drivers -------------------------------------------------------------------------------------

/**
 * The largest activation-row group of a tile, per format: 4, except where measured slower than 2
 * (q4_0, q4_K: their 4-row tiles spill more than they save).
 */
const TILE_M: Readonly<Record<string, number>> = { q4_0: 2, q4_k: 2 };
const tileM = (name: string) => TILE_M[name] ?? 4;
/** The tile functions generated: 1, 2 and the largest (a remainder of 3 rows runs as 2 + 1). */
const tileSizes = (name: string) => (tileM(name) === 4 ? [1, 2, 4] : [1, 2]);

/** Each format's activation format. */
const ACT: Readonly<Record<string, string>> = {
  q8_0: "q8_0",
  q4_0: "q8_0",
  q4_1: "q8_1",
  q5_0: "q8_0",
  q5_1: "q8_1",
  mxfp4: "q8_0",
  int8: "q8_0",
  q4_k: "q8_k",
  q5_k: "q8_k",
  q6_k: "q8_k",
  fp8: "f32",
};

/** Formats with a single-row kernel for m = 1 (fp8's single f32 accumulator chain would be latency-bound). */
const hasRow1 = (name: string) => name !== "fp8";

function driver(name: string, scaled: boolean): string {
  const M = tileM(name);
  const params: [string, Ty][] = [
    ["w", "i32"],
    ["wrb", "i32"],
    ["n", "i32"],
    ["x", "i32"],
    ["xrb", "i32"],
    ["m", "i32"],
    ["nb", "i32"],
    ["out", "i32"],
    ["os", "i32"],
  ];
  if (scaled) params.push(["scales", "i32"]);
  params.push(["work", "i32"]);
  const f = new Fn(`(export "mm_${name}")`, params, null);
  f.set("r", "i32", i32(0));
  if (hasRow1(name)) {
    f.note("one activation row and a workspace: the row expanded once, then the weight rows one after another, streamed");
    f.when(`(i32.and (i32.eq ${get("m")} ${i32(1)}) (i32.ne ${get("work")} ${i32(0)}))`, () => {
      f.emit(`(call $expand_${ACT[name]} ${get("x")} ${get("nb")} ${get("work")})`);
      f.loop(`(i32.lt_u ${get("r")} ${get("n")})`, () => {
        let v = `(call $row1_${name} (i32.add ${get("w")} (i32.mul ${get("r")} ${get("wrb")})) ${get("x")} ${get("work")} ${get("nb")})`;
        if (scaled) v = `(f32.mul ${v} (f32.load (i32.add ${get("scales")} (i32.shl ${get("r")} ${i32(2)}))))`;
        f.emit(`(f32.store (i32.add ${get("out")} (i32.shl ${get("r")} ${i32(2)})) ${v})`);
        f.set("r", "i32", `(i32.add ${get("r")} ${i32(1)})`);
      });
      f.emit("(return)");
    });
  }
  f.set("ob", "i32", `(i32.shl ${get("os")} ${i32(2)})`);
  f.loop(`(i32.lt_u ${get("r")} ${get("n")})`, () => {
    f.note("four rows r..r+3 (past the end: the last row again, not stored)");
    f.set("last", "i32", `(i32.sub ${get("n")} ${i32(1)})`);
    for (let k = 0; k < 4; k++) {
      const row =
        k === 0
          ? get("r")
          : `(select (i32.add ${get("r")} ${i32(k)}) ${get("last")} (i32.lt_u (i32.add ${get("r")} ${i32(k)}) ${get("n")}))`;
      f.set(`i${k}`, "i32", row);
      f.set(`w${k}`, "i32", `(i32.add ${get("w")} (i32.mul ${get(`i${k}`)} ${get("wrb")}))`);
    }
    if (scaled) {
      f.local("sc", "v128");
      for (let k = 0; k < 4; k++)
        f.v("sc", `(v128.load32_lane ${k} (i32.add ${get("scales")} (i32.shl ${get(`i${k}`)} ${i32(2)})) ${k === 0 ? ZERO : get("sc")})`);
    }
    f.set("left", "i32", `(i32.sub ${get("n")} ${get("r")})`);
    f.set("i", "i32", i32(0));
    f.set("xi", "i32", get("x"));
    f.set("oi", "i32", `(i32.add ${get("out")} (i32.shl ${get("r")} ${i32(2)}))`);
    const args = [
      get("w0"),
      get("w1"),
      get("w2"),
      get("w3"),
      get("xi"),
      get("xrb"),
      get("nb"),
      get("oi"),
      get("ob"),
      get("left"),
      ...(scaled ? [get("sc")] : []),
    ].join(" ");
    f.note(`activation rows ${M} at a time, then ${M === 2 ? "the one" : "2 and 1 of the 1-3"} left`);
    f.loop(`(i32.le_u (i32.add ${get("i")} ${i32(M)}) ${get("m")})`, () => {
      f.emit(`(call $tile_${name}_${M} ${args})`);
      f.set("xi", "i32", `(i32.add ${get("xi")} (i32.mul ${get("xrb")} ${i32(M)}))`);
      f.set("oi", "i32", `(i32.add ${get("oi")} (i32.mul ${get("ob")} ${i32(M)}))`);
      f.set("i", "i32", `(i32.add ${get("i")} ${i32(M)})`);
    });
    f.set("i", "i32", `(i32.sub ${get("m")} ${get("i")})`);
    if (M === 4) {
      f.when(`(i32.ge_u ${get("i")} ${i32(2)})`, () => {
        f.emit(`(call $tile_${name}_2 ${args})`);
        f.set("xi", "i32", `(i32.add ${get("xi")} (i32.shl ${get("xrb")} ${i32(1)}))`);
        f.set("oi", "i32", `(i32.add ${get("oi")} (i32.shl ${get("ob")} ${i32(1)}))`);
        f.set("i", "i32", `(i32.sub ${get("i")} ${i32(2)})`);
      });
    }
    f.when(`(i32.eq ${get("i")} ${i32(1)})`, () => f.emit(`(call $tile_${name}_1 ${args})`));
    f.set("r", "i32", `(i32.add ${get("r")} ${i32(4)})`);
  });
  return f.text();
}

// ---- activation quantizers -----------------------------------------------------------------------

/** f32 → f16 bits, round to nearest even (overflow to inf; NaN → quiet NaN). */
const F32_TO_F16 = `  (func $f16 (param $x f32) (result i32)
    (local $a i32) (local $s i32)
    (local.set $a (i32.and (i32.reinterpret_f32 (local.get $x)) (i32.const 0x7fffffff)))
    (local.set $s (i32.and (i32.shr_u (i32.reinterpret_f32 (local.get $x)) (i32.const 16)) (i32.const 0x8000)))
    (if (i32.ge_u (local.get $a) (i32.const 0x7f800000))
      (then (return (i32.or (local.get $s) (select (i32.const 0x7e00) (i32.const 0x7c00) (i32.gt_u (local.get $a) (i32.const 0x7f800000)))))))
    (if (i32.ge_u (local.get $a) (i32.const 0x477ff000)) (then (return (i32.or (local.get $s) (i32.const 0x7c00)))))
    (if (i32.lt_u (local.get $a) (i32.const 0x38800000))
      (then (return (i32.or (local.get $s)
        (i32.trunc_f32_u (f32.nearest (f32.mul (f32.reinterpret_i32 (local.get $a)) (f32.const 0x1p24))))))))
    (i32.or (local.get $s)
      (i32.shr_u
        (i32.add (i32.sub (local.get $a) (i32.const 0x38000000))
          (i32.add (i32.const 0xfff) (i32.and (i32.shr_u (local.get $a) (i32.const 13)) (i32.const 1))))
        (i32.const 13))))`;

/** max |x| over `count` f32x4 at x, ignoring NaN (f32x4.pmax keeps the accumulator against NaN), as a scalar. */
function amax(f: Fn, count: number): string {
  const abs = (k: number) => `(f32x4.abs (v128.load offset=${16 * k} ${get("x")}))`;
  f.v("m0", ZERO);
  f.v("m1", ZERO);
  for (let k = 0; k < count; k++) f.v(`m${k & 1}`, `(f32x4.pmax ${get(`m${k & 1}`)} ${abs(k)})`);
  f.v("m0", `(f32x4.pmax ${get("m0")} ${get("m1")})`);
  f.v("m0", `(f32x4.pmax ${get("m0")} ${shuffle("8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7", get("m0"), get("m0"))})`);
  f.v("m0", `(f32x4.pmax ${get("m0")} ${shuffle("4 5 6 7 0 1 2 3 12 13 14 15 8 9 10 11", get("m0"), get("m0"))})`);
  return f.set("amax", "f32", `(f32x4.extract_lane 0 ${get("m0")})`);
}

/** q = trunc_sat(nearest(x · mul)) for 16 f32 at x + 64k, narrowed (saturating) to 16 i8; the i32 vectors are q${k}_0..3. */
function quant16(f: Fn, k: number, mul: string, clamp127: boolean): string {
  for (let j = 0; j < 4; j++) {
    let q = `(i32x4.trunc_sat_f32x4_s (f32x4.nearest (f32x4.mul (v128.load offset=${64 * k + 16 * j} ${get("x")}) ${mul})))`;
    if (clamp127) q = `(i32x4.min_s ${q} ${f.k("i127", v32(127))})`;
    f.v(`q${j}`, q);
  }
  return `(i8x16.narrow_i16x8_s (i16x8.narrow_i32x4_s ${get("q0")} ${get("q1")}) (i16x8.narrow_i32x4_s ${get("q2")} ${get("q3")}))`;
}

function quantizeQ8(kind: "q8_0" | "q8_1"): string {
  const f = new Fn(
    `(export "quantize_${kind}")`,
    [
      ["x", "i32"],
      ["n", "i32"],
      ["dst", "i32"],
    ],
    null,
  );
  const one = kind === "q8_1";
  const qs = one ? 4 : 2;
  f.set("end", "i32", `(i32.add ${get("x")} (i32.shl (i32.and ${get("n")} ${i32(-32)}) ${i32(2)}))`);
  f.loop(`(i32.lt_u ${get("x")} ${get("end")})`, () => {
    const a = amax(f, 8);
    f.set("d", "f32", `(f32.div ${a} (f32.const 127))`);
    f.emit(`(i32.store16 ${get("dst")} (call $f16 ${get("d")}))`);
    f.set("id", "f32", `(select (f32.div (f32.const 127) ${a}) (f32.const 0) (f32.ne ${a} (f32.const 0)))`);
    f.v("idv", `(f32x4.splat ${get("id")})`);
    if (one) f.v("sum", ZERO);
    for (let k = 0; k < 2; k++) {
      const q = quant16(f, k, get("idv"), false);
      f.emit(`(v128.store offset=${qs + 16 * k} ${get("dst")} ${q})`);
      if (one) f.v("sum", add32(get("sum"), add32(add32(get("q0"), get("q1")), add32(get("q2"), get("q3")))));
    }
    if (one) {
      const s = get("sum");
      f.v("sum", add32(s, shuffle("8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7", s, s)));
      f.v("sum", add32(s, shuffle("4 5 6 7 0 1 2 3 12 13 14 15 8 9 10 11", s, s)));
      f.emit(`(i32.store16 offset=2 ${get("dst")} (call $f16 (f32.mul ${get("d")} (f32.convert_i32_s (i32x4.extract_lane 0 ${s})))))`);
    }
    f.set("x", "i32", `(i32.add ${get("x")} ${i32(128)})`);
    f.set("dst", "i32", `(i32.add ${get("dst")} ${i32(one ? 36 : 34)})`);
  });
  return f.text();
}

function quantizeQ8K(): string {
  const f = new Fn(
    `(export "quantize_q8_k")`,
    [
      ["x", "i32"],
      ["n", "i32"],
      ["dst", "i32"],
    ],
    null,
  );
  f.set("end", "i32", `(i32.add ${get("x")} (i32.shl (i32.and ${get("n")} ${i32(-256)}) ${i32(2)}))`);
  f.loop(`(i32.lt_u ${get("x")} ${get("end")})`, () => {
    const a = amax(f, 64);
    f.emit(`(if (f32.eq ${a} (f32.const 0))`);
    f.emit(`  (then`);
    f.emit(`    (f32.store ${get("dst")} (f32.const 0))`);
    f.set("k", "i32", i32(0));
    f.loop(`(i32.lt_u ${get("k")} ${i32(288)})`, () => {
      f.emit(`(v128.store offset=4 (i32.add ${get("dst")} ${get("k")}) ${ZERO})`);
      f.set("k", "i32", `(i32.add ${get("k")} ${i32(16)})`);
    });
    f.emit(`  )`);
    f.emit(`  (else`);
    f.note("the first element of largest magnitude, with its sign (ggml's quantize_row_q8_K_ref)");
    f.set("p", "i32", get("x"));
    f.loop(`(f32.ne (f32.abs (f32.load ${get("p")})) ${a})`, () => f.set("p", "i32", `(i32.add ${get("p")} ${i32(4)})`));
    f.set("is", "f32", `(f32.div (f32.const -127) (f32.load ${get("p")}))`);
    f.v("isv", `(f32x4.splat ${get("is")})`);
    f.emit(`(f32.store ${get("dst")} (f32.div (f32.const 1) ${get("is")}))`);
    for (let k = 0; k < 16; k++) {
      const q = f.v("q", quant16(f, k, get("isv"), true));
      f.emit(`(v128.store offset=${4 + 16 * k} ${get("dst")} ${q})`);
      f.v(`g${k & 3}`, `(i32x4.extadd_pairwise_i16x8_s (i16x8.extadd_pairwise_i8x16_s ${q}))`);
      if ((k & 3) === 3) hsum4(f, "i32x4", [get("g0"), get("g1"), get("g2"), get("g3")], `bs${k >> 2}`);
    }
    f.emit(`(v128.store offset=${Q8K.bsums} ${get("dst")} (i16x8.narrow_i32x4_s ${get("bs0")} ${get("bs1")}))`);
    f.emit(`(v128.store offset=${Q8K.bsums + 16} ${get("dst")} (i16x8.narrow_i32x4_s ${get("bs2")} ${get("bs3")}))`);
    f.emit(`))`);
    f.set("x", "i32", `(i32.add ${get("x")} ${i32(1024)})`);
    f.set("dst", "i32", `(i32.add ${get("dst")} ${i32(Q8K.bytes)})`);
  });
  return f.text();
}

// ---- the module ----------------------------------------------------------------------------------

const HEADER = `;; GENERATED by scripts/gen-quant-wat.ts: edit that, then run it (node dist/scripts/gen-quant-wat.js).
;;
;; Quantized matrix-product kernels for the CPU backend, 128-bit WebAssembly SIMD (no relaxed SIMD),
;; over one shared memory that every pool thread's instance imports: weights are read where they
;; lie, activations are copied (and quantized) by the caller into a per-thread scratch region.
;; All addresses are byte offsets in that memory; nothing needs to be aligned.
;;
;; Activation quantizers (n f32 at $x, n a multiple of the block; blocks written at $dst):
;;   quantize_q8_0 (x, n, dst)   34-byte blocks: f16 d, i8 q[32]
;;   quantize_q8_1 (x, n, dst)   36-byte blocks: f16 d, f16 s = d·Σq, i8 q[32]
;;   quantize_q8_k (x, n, dst)   292-byte blocks: f32 d, i8 q[256], i16 bsums[16] (sums of 16 q)
;; q8_0 / q8_1 follow ggml's x86 quantize_row_q8_0 / q8_1: amax = max |x|, d = amax / 127 (stored
;; as f16, round to nearest even), q = round_half_even(x · (127 / amax)) (0 for amax = 0).
;; q8_k follows quantize_row_q8_K_ref: max = the first x of largest magnitude, iscale = -127 / max,
;; q = min(127, round_half_even(iscale · x)), d = 1 / iscale (f32), all zeros for amax = 0.
;; NaN inputs are skipped by the max (f32x4.pmax) and quantize to 0.
;;
;; Matrix products, one export per weight format T:
;;   mm_T (w, wRowBytes, nRows, xq, xqRowBytes, m, blocks, out, outStride, work)
;;   mm_int8 / mm_fp8 (w, ..., outStride, scales, work)   scales: nRows f32, one per weight row
;; out[i · outStride + r] (f32; outStride in elements) = dot(weight row r at w + r · wRowBytes,
;; activation row i at xq + i · xqRowBytes) for r < nRows, i < m, each row holding \`blocks\` blocks.
;; work: 0, or a workspace of blocks · 80 bytes (32-element formats) / blocks · 512 (K formats) that
;; the m = 1 path expands the activation row into (fp8 ignores it); for the dense kinds, blocks · 256
;; bytes that m > 1 decodes each four weight rows into.
;;   m >= 2 (or no workspace): tiles of four weight rows against 4 (q4_0, q4_K: 2), then 2 and 1,
;;     activation rows: each weight block is loaded and unpacked once for all the tile's activation
;;     rows. The last tile repeats the last weight row in its unused lanes and stores only the real ones.
;;   m = 1 with a workspace: the activation row is expanded once (expand_q8_*: i16 vectors, sums and
;;     f32 scales), then each weight row is streamed alone, its four SIMD lanes holding four
;;     consecutive blocks, the four lane terms added to the row's accumulator in block order. One
;;     stream per row is what the hardware prefetchers follow well: four rows read in step run at
;;     half the memory bandwidth or less.
;; Dense weights (mm_bf16, mm_f16, mm_f32; f32 activations, 16-element blocks), read in place:
;;   m = 1: four weight rows in flight, a quarter of the matrix apart (rows i, i + S, i + 2S, i + 3S),
;;     so that each is one long sequential stream; each weight is read once and decoded in registers
;;     (bf16: shuffled into the high halves; f16: the exponent rebiased, with cvt_f16's steps for a
;;     group holding a zero, subnormal, inf or NaN half).
;;   m >= 2 with a workspace: each four weight rows decoded once into an f32 panel (the four rows'
;;     vectors side by side), then 4 × 2 tiles over the activation rows, one vector step per loop
;;     iteration (6 loads and 8 accumulators: no spills). Without a workspace the tiles decode in place.
;; The tiles' arithmetic is kept in order by a store to the $sink global after each row's step:
;; without it TurboFan schedules every load of a long straight-line block first and spills most of
;; what it loaded. Constants live in mutable globals, read once per call: a v128.const is rebuilt
;; from immediates at every use.
;;
;; Integer dots: weights and activations become i16 lanes (even and odd elements of each 16 in
;; separate vectors, so nibbles and bytes unpack with 16-bit shifts and masks), multiplied with
;; i32x4.dot_i16x8_s (32-element formats) or i16x8.mul and a dot with the splatted sub-block scale
;; (K formats); every integer sum is exact. Weights with an offset (q4_0 -8, q5_0 -16, q6_K -32)
;; are unpacked unsigned and the offset times Σ q_x is subtracted, so the weight operand is always
;; in 0..63 (or a signed byte for q8_0, int8, mxfp4): a relaxed-SIMD variant could feed the same
;; operands to i32x4.relaxed_dot_i8x16_i7x16_add_s and get the same integers.
;;
;; Determinism: each output is one f32 accumulator added to block by block in order, with the same
;; operations whatever path, tile, lane or m it falls in (multiply and add separately: wasm never
;; fuses them). Per block, with isum the exact integer dot, dw / mw / dx / sx the f16 scales decoded
;; exactly (f16 inf/NaN scales decode as 2^16·(1+m/1024)), and every operation rounded to f32:
;;   q8_0, q4_0, q5_0   acc += f32(isum) · (dw · dx)
;;   mxfp4              acc += f32(isum) · (dx · 2^(e-128))
;;   q4_1, q5_1         acc += f32(isum) · (dw · dx) + mw · sx
;;   q4_K, q5_K         acc += f32(isum) · (d · dx) - f32(msum) · (dmin · dx)   (msum = Σ min_j · Σ_j q_x)
;;   q6_K               acc += f32(isum) · (d · dx)       (isum includes the -32 offset)
;;   int8               acc += f32(isum) · dx;   out = acc · scale
;;   fp8                lane l (of 4) += f32(w_k) · x_k for k = l (mod 4) in order, out = ((l0 + l2) + (l1 + l3)) · scale
;;   bf16, f16, f32     the same without the scale: linear.wat's order, so the same bits as its kernels
;; starting from acc = 0. quant-dot.ts computes exactly this in JavaScript.
;;
;; Weight blocks (ggml's layouts, little-endian):`;

export function generateQuantWat(): string {
  CONSTANTS.clear();
  const parts: string[] = [HEADER];
  for (const b of BLOCK32) parts.push(`;;   ${b.name.padEnd(6)} ${String(b.bb).padStart(3)} B / 32   ${b.doc}`);
  parts.push(
    `;;   q4_k   144 B / 256  f16 d, f16 dmin, scales[12] (8 6-bit scales and mins), u8 qs[128]; x = d·sc_j·q - dmin·min_j`,
    `;;   q5_k   176 B / 256  f16 d, f16 dmin, scales[12], u8 qh[32], u8 qs[128]`,
    `;;   q6_k   210 B / 256  u8 ql[128], u8 qh[64], i8 scales[16], f16 d; x = d·sc_g·(q - 32)`,
    `;;   fp8     16 B / 16   e4m3 bytes (f32 activations, 64 B / 16); NaN (0x7f) decodes as 480`,
    `;;   bf16    32 B / 16   bf16 (f32 activations, 64 B / 16); x = bits << 16`,
    `;;   f16     32 B / 16   IEEE half, decoded exactly (subnormals, inf and NaN included)`,
    `;;   f32     64 B / 16   f32`,
    `(module`,
    `  (import "env" "mem" (memory 1 65536 shared))`,
    `  (global $sink (mut v128) ${ZERO})`,
    "@CONSTANTS@",
    "",
    F32_TO_F16,
    "",
    quantizeQ8("q8_0"),
    "",
    quantizeQ8("q8_1"),
    "",
    quantizeQ8K(),
    "",
    expand32("q8_0"),
    "",
    expand32("q8_1"),
    "",
    expandK(),
  );
  const tiles = (name: string, make: (C: number) => string) => tileSizes(name).flatMap((C) => ["", make(C)]);
  for (const b of BLOCK32)
    parts.push(...tiles(b.name, (C) => block32Tile(b, C)), "", block32Row1(b), "", driver(b.name, b.name === "int8"));
  parts.push(...tiles("q4_k", (C) => q45kTile("q4_k", C)), "", q45kRow1("q4_k"), "", driver("q4_k", false));
  parts.push(...tiles("q5_k", (C) => q45kTile("q5_k", C)), "", q45kRow1("q5_k"), "", driver("q5_k", false));
  parts.push(...tiles("q6_k", (C) => q6kTile(C)), "", q6kRow1(), "", driver("q6_k", false));
  parts.push(...tiles("fp8", (C) => fp8Tile(C)), "", driver("fp8", true));
  parts.push(...denseKernels());
  parts.push(")", "");
  const globals = [...CONSTANTS].map(([n, v]) => `  (global $${n} (mut v128) ${v})`).join("\n");
  return parts.join("\n").replace("@CONSTANTS@", globals);
}

/** Where quant.wat lives: src/backend/cpu of the repository holding this script (or its dist/ copy). */
export function quantWatPath(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, "package.json"))) {
    const up = dirname(dir);
    if (up === dir) throw new Error("repository root not found");
    dir = up;
  }
  return join(dir, "src", "backend", "cpu", "quant.wat");
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const path = quantWatPath();
  writeFileSync(path, generateQuantWat());
  console.log(`wrote ${path}`);
}
