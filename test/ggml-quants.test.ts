import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { describe, it } from "node:test";
import { f16ToF32Table, f32ToF16Bits } from "../src/backend/dtype.js";
import { BLOCK_CODECS, blockCodec, dequantizeRows, quantizeRows, type GgmlBlockType } from "../src/quant/ggml-quants.js";
import { Rng, gaussian, randn } from "./helpers/random.js";

const f16 = f16ToF32Table();
const ALL = [...BLOCK_CODECS.keys()];

function half(b: Uint8Array, o: number): number {
  return f16[b[o]! | (b[o + 1]! << 8)]!;
}

function putHalf(b: Uint8Array, o: number, x: number): void {
  const h = f32ToF16Bits(x);
  b[o] = h & 0xff;
  b[o + 1] = h >> 8;
}

function roundTrip(x: Float32Array, type: GgmlBlockType): { q: Uint8Array; y: Float32Array } {
  const q = quantizeRows(x, 1, x.length, type);
  return { q, y: dequantizeRows(q, 1, x.length, type) };
}

function normalRow(seed: number, n: number, sd = 1): Float32Array {
  return Float32Array.from(randn(new Rng(seed), n, sd));
}

/** Element-wise ===, so -0 and 0 agree (ggml's own outputs carry either sign of zero). */
function assertSameValues(actual: Float32Array, expected: Float32Array, what: string): void {
  assert.equal(actual.length, expected.length, what);
  for (let i = 0; i < actual.length; i++) if (actual[i] !== expected[i]) assert.fail(`${what}[${i}]: ${actual[i]} !== ${expected[i]}`);
}

function relRmse(x: Float32Array, y: Float32Array): number {
  let e = 0;
  let s = 0;
  for (let i = 0; i < x.length; i++) {
    e += (x[i]! - y[i]!) ** 2;
    s += x[i]! ** 2;
  }
  return Math.sqrt(e / s);
}

/** get_scale_min_k4, transcribed from the Q4_K/Q5_K layout: 6-bit (scale, min) of sub-block j. */
function k4(s: Uint8Array, o: number, j: number): [number, number] {
  if (j < 4) return [s[o + j]! & 63, s[o + j + 4]! & 63];
  return [(s[o + j + 4]! & 0xf) | ((s[o + j - 4]! >> 6) << 4), (s[o + j + 4]! >> 4) | ((s[o + j]! >> 6) << 4)];
}

/** Packs eight (scale, min) pairs into the 12 scale bytes of Q4_K/Q5_K, at b[o..o+12). */
function packK4(b: Uint8Array, o: number, sc: number[], m: number[]): void {
  for (let j = 0; j < 4; j++) {
    b[o + j] = sc[j]! | ((sc[j + 4]! >> 4) << 6);
    b[o + j + 4] = m[j]! | ((m[j + 4]! >> 4) << 6);
    b[o + j + 8] = (sc[j + 4]! & 0xf) | ((m[j + 4]! & 0xf) << 4);
  }
}

describe("ggml block codec registry", () => {
  it("lists every type with ggml's type id, block size and block bytes", () => {
    const expected: Record<GgmlBlockType, [number, number, number]> = {
      Q8_0: [8, 32, 34],
      Q4_0: [2, 32, 18],
      Q4_1: [3, 32, 20],
      Q5_0: [6, 32, 22],
      Q5_1: [7, 32, 24],
      Q4_K: [12, 256, 144],
      Q5_K: [13, 256, 176],
      Q6_K: [14, 256, 210],
      Q8_K: [15, 256, 292],
      MXFP4: [39, 32, 17],
    };
    assert.deepEqual(new Set(ALL), new Set(Object.keys(expected)));
    for (const [name, [id, bs, bb]] of Object.entries(expected)) {
      const c = BLOCK_CODECS.get(name as GgmlBlockType)!;
      assert.deepEqual([c.name, c.ggmlType, c.blockSize, c.blockBytes], [name, id, bs, bb]);
    }
  });

  it("looks names up case-insensitively and names the known ones when it cannot", () => {
    assert.equal(blockCodec("q4_k").name, "Q4_K");
    assert.equal(blockCodec("mxfp4").name, "MXFP4");
    assert.equal(blockCodec("Q8_0").name, "Q8_0");
    assert.throws(
      () => blockCodec("Q3_K"),
      (e: unknown) => e instanceof RangeError && /Q3_K/.test(e.message) && /Q4_K/.test(e.message) && /MXFP4/.test(e.message),
    );
  });

  it("sizes outputs as rows × blocks per row × block bytes", () => {
    for (const type of ALL) {
      const c = blockCodec(type);
      const cols = 2 * 256;
      const q = quantizeRows(normalRow(1, 3 * cols), 3, cols, type);
      assert.equal(q.length, 3 * (cols / c.blockSize) * c.blockBytes, type);
      assert.equal(dequantizeRows(q, 3, cols, type).length, 3 * cols);
      assert.equal(quantizeRows(new Float32Array(0), 0, cols, type).length, 0);
    }
  });

  it("rejects column counts that are not whole blocks, and mismatched lengths", () => {
    assert.throws(() => quantizeRows(new Float32Array(2 * 48), 2, 48, "Q4_K"), /cols \(48\) must be a multiple of the block size 256/);
    assert.throws(
      () => quantizeRows(new Float32Array(40), 1, 40, "Q8_0"),
      (e: unknown) => e instanceof RangeError && /block size 32/.test(e.message),
    );
    assert.throws(() => dequantizeRows(new Uint8Array(144), 1, 100, "Q4_K"), /multiple of the block size 256/);
    assert.throws(() => quantizeRows(new Float32Array(100), 1, 256, "Q6_K"), /expected 1×256 = 256 values, got 100/);
    assert.throws(() => dequantizeRows(new Uint8Array(100), 1, 256, "Q6_K"), /needs 210 bytes, got 100/);
    const c = blockCodec("Q4_0");
    assert.throws(() => c.quantize(new Float32Array(64), 0, new Uint8Array(36), 0, 48), /not a multiple of the block size 32/);
    assert.throws(() => c.quantize(new Float32Array(64), 0, new Uint8Array(35), 0, 64), /overrun a buffer of 35 bytes/);
    assert.throws(() => c.dequantize(new Uint8Array(36), 0, new Float32Array(63), 0, 64), /overrun a float array of 63/);
  });

  it("honours source and destination offsets", () => {
    for (const type of ALL) {
      const c = blockCodec(type);
      const x = normalRow(2, c.blockSize * 2);
      const whole = quantizeRows(x, 1, x.length, type);
      const dst = new Uint8Array(c.blockBytes + 5).fill(0xee);
      c.quantize(x, c.blockSize, dst, 5, c.blockSize);
      assert.deepEqual(dst.subarray(5), whole.subarray(c.blockBytes), type);
      const y = new Float32Array(c.blockSize + 3);
      c.dequantize(dst, 5, y, 3, c.blockSize);
      assert.deepEqual(y.subarray(3), dequantizeRows(whole, 1, x.length, type).subarray(c.blockSize), type);
    }
  });
});

describe("ggml block layouts (hand-built blocks)", () => {
  it("Q8_0: f16 d, then 32 int8 quants", () => {
    const b = new Uint8Array(34);
    putHalf(b, 0, 0.5);
    for (let j = 0; j < 32; j++) b[2 + j] = (j * 8 - 128) & 0xff;
    const y = dequantizeRows(b, 1, 32, "Q8_0");
    for (let j = 0; j < 32; j++) assert.equal(y[j], (j * 8 - 128) * 0.5);
  });

  it("Q4_0: f16 d, byte j = element j (low nibble) and j+16 (high), value (q-8)·d", () => {
    const b = new Uint8Array(18);
    putHalf(b, 0, 2);
    for (let j = 0; j < 16; j++) b[2 + j] = j | ((15 - j) << 4);
    const y = dequantizeRows(b, 1, 32, "Q4_0");
    for (let j = 0; j < 16; j++) {
      assert.equal(y[j], (j - 8) * 2);
      assert.equal(y[j + 16], (15 - j - 8) * 2);
    }
  });

  it("Q4_1: f16 d, f16 m, nibbles, value q·d + m", () => {
    const b = new Uint8Array(20);
    putHalf(b, 0, 0.25);
    putHalf(b, 2, -1);
    for (let j = 0; j < 16; j++) b[4 + j] = ((j * 3) & 15) | (j << 4);
    const y = dequantizeRows(b, 1, 32, "Q4_1");
    for (let j = 0; j < 16; j++) {
      assert.equal(y[j], ((j * 3) & 15) * 0.25 - 1);
      assert.equal(y[j + 16], j * 0.25 - 1);
    }
  });

  it("Q5_0 and Q5_1: qh bit j is the fifth bit of element j (little-endian u32)", () => {
    const qh = 0xa5c3_0f96;
    const nib = (j: number) => (j * 5 + 3) & 15;
    const q = (j: number) => nib(j) | (((qh >>> j) & 1) << 4);
    const b0 = new Uint8Array(22);
    putHalf(b0, 0, 0.5);
    const b1 = new Uint8Array(24);
    putHalf(b1, 0, 0.125);
    putHalf(b1, 2, 3);
    for (let k = 0; k < 4; k++) b0[2 + k] = b1[4 + k] = (qh >>> (8 * k)) & 0xff;
    for (let j = 0; j < 16; j++) b0[6 + j] = b1[8 + j] = nib(j) | (nib(j + 16) << 4);
    const y0 = dequantizeRows(b0, 1, 32, "Q5_0");
    const y1 = dequantizeRows(b1, 1, 32, "Q5_1");
    for (let j = 0; j < 32; j++) {
      assert.equal(y0[j], (q(j) - 16) * 0.5, `Q5_0[${j}]`);
      assert.equal(y1[j], q(j) * 0.125 + 3, `Q5_1[${j}]`);
    }
  });

  it("MXFP4: E8M0 byte then nibbles indexing {0,.5,1,1.5,2,3,4,6,0,-.5,...}·2^(e-127)", () => {
    // E2M1 code 8 is -0; ggml's integer table decodes it as +0.
    const fp4 = [0, 0.5, 1, 1.5, 2, 3, 4, 6, 0, -0.5, -1, -1.5, -2, -3, -4, -6];
    for (const e of [127, 130, 120]) {
      const b = new Uint8Array(17);
      b[0] = e;
      for (let j = 0; j < 16; j++) b[1 + j] = j | ((15 - j) << 4);
      const y = dequantizeRows(b, 1, 32, "MXFP4");
      for (let j = 0; j < 16; j++) {
        assert.equal(y[j], fp4[j]! * 2 ** (e - 127));
        assert.equal(y[j + 16], fp4[15 - j]! * 2 ** (e - 127));
      }
    }
  });

  it("Q4_K: d, dmin, 12 packed 6-bit scales/mins, then 4 chunks of 32 bytes covering 64 elements each", () => {
    const sc = [1, 2, 3, 4, 60, 61, 62, 63];
    const m = [0, 1, 2, 3, 33, 34, 35, 47];
    const b = new Uint8Array(144);
    putHalf(b, 0, 1);
    putHalf(b, 2, 0.5);
    packK4(b, 4, sc, m);
    const qv = (e: number) => (e * 7 + (e >> 5)) & 15;
    for (let c = 0; c < 4; c++) for (let l = 0; l < 32; l++) b[16 + 32 * c + l] = qv(64 * c + l) | (qv(64 * c + 32 + l) << 4);
    const y = dequantizeRows(b, 1, 256, "Q4_K");
    for (let e = 0; e < 256; e++) assert.equal(y[e], sc[e >> 5]! * qv(e) - 0.5 * m[e >> 5]!, `element ${e}`);
  });

  it("Q5_K: like Q4_K plus qh[32], bit 2c / 2c+1 of qh[l] the fifth bit of chunk c's low / high nibble", () => {
    const sc = [5, 17, 63, 1, 16, 32, 48, 33];
    const m = [63, 0, 16, 15, 31, 47, 8, 2];
    const b = new Uint8Array(176);
    putHalf(b, 0, 0.25);
    putHalf(b, 2, 0.125);
    packK4(b, 4, sc, m);
    const qv = (e: number) => (e * 13 + 7) & 31;
    for (let c = 0; c < 4; c++) {
      for (let l = 0; l < 32; l++) {
        const lo = qv(64 * c + l);
        const hi = qv(64 * c + 32 + l);
        b[48 + 32 * c + l] = (lo & 15) | ((hi & 15) << 4);
        b[16 + l] = b[16 + l]! | ((lo >> 4) << (2 * c)) | ((hi >> 4) << (2 * c + 1));
      }
    }
    const y = dequantizeRows(b, 1, 256, "Q5_K");
    for (let e = 0; e < 256; e++) assert.equal(y[e], 0.25 * sc[e >> 5]! * qv(e) - 0.125 * m[e >> 5]!, `element ${e}`);
  });

  it("Q6_K: ql[128], qh[64], int8 scales[16], f16 d last; value d·sc[e/16]·(q−32)", () => {
    const b = new Uint8Array(210);
    const sc = Array.from({ length: 16 }, (_, i) => (i - 8) * 15 + (i === 15 ? 22 : 0)); // -120 .. 127
    sc.forEach((s, i) => (b[192 + i] = s & 0xff));
    putHalf(b, 208, 0.25);
    const qv = (e: number) => (e * 29 + 11) & 63;
    for (let h = 0; h < 2; h++) {
      for (let l = 0; l < 32; l++) {
        const [a, bb, c, d] = [0, 32, 64, 96].map((k) => qv(128 * h + l + k)) as [number, number, number, number];
        b[64 * h + l] = (a & 15) | ((c & 15) << 4);
        b[64 * h + l + 32] = (bb & 15) | ((d & 15) << 4);
        b[128 + 32 * h + l] = (a >> 4) | ((bb >> 4) << 2) | ((c >> 4) << 4) | ((d >> 4) << 6);
      }
    }
    const y = dequantizeRows(b, 1, 256, "Q6_K");
    for (let e = 0; e < 256; e++) assert.equal(y[e], 0.25 * sc[e >> 4]! * (qv(e) - 32), `element ${e}`);
  });

  it("Q8_K: f32 d, 256 int8 quants, 16 int16 bsums (which quantize fills)", () => {
    const b = new Uint8Array(292);
    new DataView(b.buffer).setFloat32(0, 0.1, true);
    for (let j = 0; j < 256; j++) b[4 + j] = (j * 37) & 0xff;
    const y = dequantizeRows(b, 1, 256, "Q8_K");
    for (let j = 0; j < 256; j++) assert.equal(y[j], Math.fround(Math.fround(0.1) * (((j * 37) << 24) >> 24)));

    const q = quantizeRows(normalRow(3, 256), 1, 256, "Q8_K");
    const view = new DataView(q.buffer);
    for (let g = 0; g < 16; g++) {
      let sum = 0;
      for (let i = 0; i < 16; i++) sum += view.getInt8(4 + 16 * g + i);
      assert.equal(view.getInt16(260 + 2 * g, true), sum);
    }
  });
});

/** The largest |x - y| the format allows for one element, given its block's stored scales. */
type Bound = (x: Float32Array, q: Uint8Array, i: number) => number;

const eps = 2 ** -11; // f16 relative rounding
const BOUNDS: Record<GgmlBlockType, Bound> = {
  // q = round(x/d32) with d stored as a half: half a step, plus 127 steps of the half's rounding.
  Q8_0: (_x, q, i) => Math.abs(half(q, 34 * (i >> 5))) * (0.5 + 128 * eps),
  // Levels reach -8..7; the value mapping to +8 is clamped to 7 (one full step).
  Q4_0: (x, q, i) => {
    const d = half(q, 18 * (i >> 5));
    return Math.abs(d) * (x[i]! / d > 7.45 ? 1 + 9 * eps : 0.5 + 9 * eps);
  },
  Q4_1: (_x, q, i) => {
    const o = 20 * (i >> 5);
    return half(q, o) * (0.5 + 16 * eps) + Math.abs(half(q, o + 2)) * eps;
  },
  Q5_0: (x, q, i) => {
    const d = half(q, 22 * (i >> 5));
    return Math.abs(d) * (x[i]! / d > 15.45 ? 1 + 17 * eps : 0.5 + 17 * eps);
  },
  Q5_1: (_x, q, i) => {
    const o = 24 * (i >> 5);
    return half(q, o) * (0.5 + 32 * eps) + Math.abs(half(q, o + 2)) * eps;
  },
  // Levels are re-derived from the stored sub-block scales, so inside the level range the error is
  // half a sub-block step; values beyond the range (rare) are bounded by the distance to the end level.
  Q4_K: (x, q, i) => kBound(x, q, i, 144, 15),
  Q5_K: (x, q, i) => kBound(x, q, i, 176, 31),
  Q6_K: (x, q, i) => {
    const o = 210 * (i >> 8);
    const d = half(q, o + 208) * ((q[o + 192 + ((i & 255) >> 4)]! << 24) >> 24);
    const r = x[i]! / d;
    return Math.abs(d) * (r > 31.5 ? r - 31 : r < -32.5 ? -32 - r : 0.5) * (1 + 1e-6) + 1e-7 * Math.abs(x[i]!);
  },
  Q8_K: (x, q, i) =>
    Math.abs(new DataView(q.buffer, q.byteOffset).getFloat32(292 * (i >> 8), true)) * (0.5 + 1e-6) + 1e-7 * Math.abs(x[i]!),
  // The E2M1 grid (doubled) 0,1,2,3,4,6,8,12 has step 1 below 4, 2 below 8, 4 up to 12; amax/d lies in [8, 16).
  MXFP4: (x, q, i) => {
    const d = 2 ** (q[17 * (i >> 5)]! - 128);
    const r = Math.abs(x[i]!) / d;
    return d * (r <= 4 ? 0.5 : r <= 8 ? 1 : r <= 12 ? 2 : r - 12) * (1 + 1e-6);
  },
};

function kBound(x: Float32Array, q: Uint8Array, i: number, bytes: number, nmax: number): number {
  const o = bytes * (i >> 8);
  const [sc, m] = k4(q, o + 4, (i & 255) >> 5);
  const d = Math.fround(half(q, o) * sc);
  const dm = Math.fround(half(q, o + 2) * m);
  if (d === 0) return Infinity; // the fit's own levels stand; covered by the RMSE checks
  const r = (x[i]! + dm) / d;
  const slack = 1e-6 * (Math.abs(x[i]!) + dm + nmax * d);
  return d * (r > nmax + 0.5 ? r - nmax : r < -0.5 ? -r : 0.5) + slack;
}

/** Relative RMSE ceilings on unit normals: what each format's bits buy, with headroom. */
const RMSE: Record<GgmlBlockType, number> = {
  Q8_0: 0.006,
  Q4_0: 0.11,
  Q4_1: 0.1,
  Q5_0: 0.055,
  Q5_1: 0.05,
  Q4_K: 0.09,
  Q5_K: 0.045,
  Q6_K: 0.025,
  Q8_K: 0.008,
  MXFP4: 0.16,
};

describe("ggml quantize → dequantize", () => {
  const rng = new Rng(7);
  const cols = 1024;
  const rows: [string, Float32Array][] = [
    ["normal", normalRow(11, cols)],
    ["heavy-tailed", Float32Array.from({ length: cols }, () => gaussian(rng) / Math.max(0.05, Math.abs(gaussian(rng))))],
    ["outliers", Float32Array.from({ length: cols }, () => gaussian(rng) * (rng.next() < 0.02 ? 50 : 1))],
    ["offset", Float32Array.from({ length: cols }, () => 4 + 0.3 * gaussian(rng))],
    ["small", normalRow(12, cols, 1e-2)],
    ["large", normalRow(13, cols, 500)],
  ];

  for (const type of ALL) {
    it(`${type}: every element within the format's error bound`, () => {
      for (const [label, x] of rows) {
        const { q, y } = roundTrip(x, type);
        for (let i = 0; i < x.length; i++) {
          const err = Math.abs(x[i]! - y[i]!);
          const bound = BOUNDS[type](x, q, i);
          if (!(err <= bound)) assert.fail(`${type} ${label}[${i}]: |${x[i]} - ${y[i]}| = ${err} > ${bound}`);
        }
      }
    });

    it(`${type}: RMSE on normals within ${RMSE[type]}, and scale-invariant`, () => {
      const x = normalRow(21, 4096);
      const base = relRmse(x, roundTrip(x, type).y);
      assert.ok(base < RMSE[type], `${type} rel RMSE ${base}`);
      for (const s of [1e-2, 300]) {
        const xs = x.map((v) => v * s);
        const r = relRmse(xs, roundTrip(xs, type).y);
        assert.ok(r < base * 1.2 + 1e-3, `${type} ×${s}: rel RMSE ${r} vs ${base}`);
      }
    });

    it(`${type}: zeros, constant rows and tiny magnitudes`, () => {
      const n = 512;
      assertSameValues(roundTrip(new Float32Array(n), type).y, new Float32Array(n), `${type} zeros`);
      for (const c of [1.25, -3.5, 0.01, 1000]) {
        const { y } = roundTrip(new Float32Array(n).fill(c), type);
        // MXFP4 has only 8·d and 12·d near amax ∈ [8d, 16d): up to 25% off. The k-quants' block scales
        // pass through 6-bit sub-scales and /63 halves; the rest carry one f16 rounding.
        const tol = type === "MXFP4" ? 0.25 : type.endsWith("_K") && type !== "Q8_K" ? 0.02 : 2 ** -9;
        for (let i = 0; i < n; i++) assert.ok(Math.abs(y[i]! - c) <= tol * Math.abs(c), `${type} const ${c}: ${y[i]}`);
      }
      // Far below the f16 range every half scale flushes to zero; Q8_K's f32 and MXFP4's E8M0 scales keep the values.
      const x = normalRow(31, n, 1e-20);
      const { q, y } = roundTrip(x, type);
      for (let i = 0; i < n; i++) {
        assert.ok(Number.isFinite(y[i]!), type);
        if (type === "Q8_K" || type === "MXFP4") assert.ok(Math.abs(y[i]! - x[i]!) <= BOUNDS[type](x, q, i), `${type} tiny`);
        else assert.ok(y[i] === 0, `${type} tiny: ${y[i]}`);
      }
    });
  }

  it("Q4_0 stores a zero block as d = -0 (0/-8) and level 8 (the reference's +8.5 offset), as ggml does", () => {
    const q = quantizeRows(new Float32Array(32), 1, 32, "Q4_0");
    assert.deepEqual([...q], [0x00, 0x80, ...new Array<number>(16).fill(0x88)]);
  });
});

describe("ggml exactly representable inputs round-trip exactly", () => {
  const rng = new Rng(99);
  const pick = (lo: number, hi: number) => lo + Math.floor(rng.next() * (hi - lo + 1));

  /** Levels times a power-of-two step (extreme level first, so it is the block's max), per 32 elements. */
  function grid(n: number, lo: number, hi: number, step: number, extreme: number): Float32Array {
    const x = new Float32Array(n);
    for (let i = 0; i < n; i++) x[i] = (i % 32 === 0 ? extreme : pick(lo, hi)) * step;
    return x;
  }

  const cases: [GgmlBlockType, Float32Array][] = [
    ["Q8_0", grid(256, -127, 127, 2 ** -4, -127)],
    ["Q4_0", grid(256, -8, 7, 2 ** -3, -8)],
    ["Q5_0", grid(256, -16, 15, 2 ** 2, -16)],
    ["Q4_1", grid(256, 0, 15, 2 ** -3, 15).map((v, i) => (i % 32 === 1 ? -1 : v - 1))],
    ["Q5_1", grid(256, 0, 31, 2 ** -3, 31).map((v, i) => (i % 32 === 1 ? -2 : v - 2))],
    ["Q8_K", grid(512, -127, 127, 2 ** -3, 127)],
    [
      "MXFP4",
      Float32Array.from(
        { length: 256 },
        (_, i) => (i % 32 === 0 ? 6 : [0, 0.5, 1, 1.5, 2, 3, 4, 6][pick(0, 7)]! * (rng.next() < 0.5 ? -1 : 1)) * 4,
      ),
    ],
  ];
  for (const [type, x] of cases) {
    it(type, () => assertSameValues(roundTrip(x, type).y, x, type));
  }

  it("Q4_K and Q5_K: levels × (c·2^-10) − μ·2^-8 with 6-bit c and μ", () => {
    for (const [type, nmax] of [
      ["Q4_K", 15],
      ["Q5_K", 31],
    ] as const) {
      const x = new Float32Array(512);
      for (let b = 0; b < 2; b++) {
        for (let j = 0; j < 8; j++) {
          // Sub-block 0 carries the largest scale and min so d = 2^-10 and dmin = 2^-8 exactly.
          const c = j === 0 ? 63 : pick(1, 63);
          const mu = j === 0 ? 63 : pick(0, 63);
          for (let l = 0; l < 32; l++) {
            const level = l === 0 ? 0 : l === 1 ? nmax : pick(0, nmax);
            x[256 * b + 32 * j + l] = level * c * 2 ** -10 - mu * 2 ** -8;
          }
        }
      }
      assertSameValues(roundTrip(x, type).y, x, type);
    }
  });

  it("Q6_K: levels in [-32, 31] × sub-block steps 2^-4·{1, 1/2, 3/4, 1/8}", () => {
    const x = new Float32Array(256);
    for (let j = 0; j < 16; j++) {
      const step = 2 ** -4 * [1, 0.5, 0.75, 0.125][j % 4]!;
      for (let l = 0; l < 16; l++) x[16 * j + l] = (l === 0 ? -32 : pick(-31, 31)) * step;
    }
    assertSameValues(roundTrip(x, "Q6_K").y, x, "Q6_K");
  });
});

/** Mixed rows whose ggml quantization was recorded with llama.cpp's reference C (see goldens below). */
function goldenInput(): Float32Array {
  const rng = new Rng(20250101);
  const x = new Float32Array(8 * 512);
  for (let i = 0; i < x.length; i++) {
    const g = gaussian(rng);
    const u = rng.next();
    switch (i >> 9) {
      case 0:
        x[i] = g;
        break;
      case 1:
        x[i] = 0.01 * g;
        break;
      case 2:
        x[i] = g / Math.max(0.05, u);
        break;
      case 3:
        x[i] = u < 0.02 ? 40 * g : g;
        break;
      case 4:
        x[i] = 3 + 0.2 * g;
        break;
      case 5:
        x[i] = -3 + 0.2 * g;
        break;
      case 6:
        x[i] = [0, 1.5, 100 * g, g * 1e-3][(i >> 5) & 3]!;
        break;
      default:
        x[i] = u < 0.9 ? 0 : 1000 * g;
    }
  }
  return x;
}

/**
 * sha256 prefixes of ggml's quantize_row_*_ref bytes and of its dequantize_row_* floats for goldenInput(),
 * from ggml's ggml-quants.c (ggml-org/ggml d99724f) built with gcc -O2 -DNDEBUG for x86-64, no FMA.
 */
const GOLDEN: Record<GgmlBlockType, [string, string]> = {
  Q8_0: ["2a4bdbbc6b9648b6", "13de8f90f8e2f33b"],
  Q4_0: ["e676431e730929f4", "25ffdf1a351f8afd"],
  Q4_1: ["e954789b0472f4b0", "d61812aed61c338c"],
  Q5_0: ["e291216e9d16404c", "17479f9b7a67baf8"],
  Q5_1: ["bbd784ef2f66ec7f", "593111034a37aae1"],
  Q4_K: ["fee421adb522aff5", "0cf8f2170c3f3bdf"],
  Q5_K: ["d4285d7d5411656f", "41292912477e0dfd"],
  Q6_K: ["23c6f2bc5b3e7b5e", "4becc5dad1359837"],
  Q8_K: ["22f625fb1016e4ee", "f61b1a4e964d50fa"],
  MXFP4: ["372531e7cb3b0663", "6f2f31c0ec0e1d55"],
};

describe("ggml bit-exactness (recorded from the reference C)", () => {
  const x = goldenInput();
  const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex").slice(0, 16);
  for (const type of ALL) {
    it(`${type} quantizes and dequantizes exactly as ggml does`, () => {
      const q = quantizeRows(x, 8, 512, type);
      assert.equal(sha(q), GOLDEN[type][0], "quantized bytes");
      const y = dequantizeRows(q, 8, 512, type);
      assert.equal(sha(new Uint8Array(y.buffer)), GOLDEN[type][1], "dequantized floats");
    });
  }
});
