import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { FP8_E4M3_MAX, f32ToFp8e4m3, fp8e4m3Table, fp8e4m3ToF32, quantizeFp8PerChannel, quantizeInt8PerChannel } from "../src/quant/fp8.js";
import { Rng, gaussian, randn } from "./helpers/random.js";

const table = fp8e4m3Table();
const isNanCode = (c: number) => (c & 0x7f) === 0x7f;

describe("fp8 e4m3fn decoding", () => {
  it("decodes every code: bias 7, subnormals, no infinity, NaN only at 0x7f/0xff", () => {
    assert.equal(table.length, 256);
    for (let c = 0; c < 256; c++) {
      const v = fp8e4m3ToF32(c);
      assert.ok(Object.is(table[c], Math.fround(v)), `table[${c}]`);
      if (isNanCode(c)) {
        assert.ok(Number.isNaN(v), `code ${c}`);
        continue;
      }
      const e = (c >> 3) & 15;
      const m = c & 7;
      const mag = e === 0 ? (m / 8) * 2 ** -6 : (1 + m / 8) * 2 ** (e - 7);
      assert.ok(Object.is(v, c & 0x80 ? -mag : mag), `code ${c}: ${v} vs ${mag}`);
    }
    const known: [number, number][] = [
      [0x00, 0],
      [0x01, 2 ** -9],
      [0x07, 7 * 2 ** -9],
      [0x08, 2 ** -6],
      [0x38, 1],
      [0x39, 1.125],
      [0x40, 2],
      [0x7e, 448],
      [0xfe, -448],
      [0xb8, -1],
    ];
    for (const [c, v] of known) assert.equal(fp8e4m3ToF32(c), v, `code ${c.toString(16)}`);
    assert.ok(Object.is(fp8e4m3ToF32(0x80), -0));
    assert.equal(FP8_E4M3_MAX, 448);
    assert.equal(fp8e4m3Table(), table, "the table is built once");
  });
});

describe("fp8 e4m3fn encoding", () => {
  it("encode(decode(c)) === c for every non-NaN code, -0 included", () => {
    for (let c = 0; c < 256; c++) if (!isNanCode(c)) assert.equal(f32ToFp8e4m3(fp8e4m3ToF32(c)), c, `code ${c}`);
  });

  it("rounds ties to the even code and everything else to the nearest", () => {
    const ties: [number, number][] = [
      [1 + 1 / 16, 0x38], // between 1 (m=0) and 1.125 (m=1): even is m=0
      [1.125 + 1 / 16, 0x3a], // between m=1 and m=2: even is m=2
      [2 ** -10, 0x00], // between 0 and the smallest subnormal
      [3 * 2 ** -10, 0x02], // between subnormals 1 and 2
      [15 * 2 ** -10, 0x08], // between the largest subnormal (7) and the smallest normal (8): even is 8
      [1.875 + 1 / 16, 0x40], // mantissa carry: between 1.875 and 2
      [432, 0x7e], // between 416 (m=5) and 448 (m=6)
    ];
    for (const [x, c] of ties) {
      assert.equal(f32ToFp8e4m3(x), c, `tie ${x}`);
      assert.equal(f32ToFp8e4m3(-x), c | 0x80, `tie ${-x}`);
    }
    assert.equal(f32ToFp8e4m3(1 + 1 / 16 + 2 ** -20), 0x39, "just above a tie rounds up");
    assert.equal(f32ToFp8e4m3(1.125 + 1 / 16 - 2 ** -20), 0x39, "just below a tie rounds down");

    // Against a brute-force nearest-code search (ties to even mantissa) on random values.
    const rng = new Rng(5);
    for (let k = 0; k < 5000; k++) {
      const x = Math.fround(gaussian(rng) * 2 ** Math.floor(rng.next() * 24 - 14));
      const c = f32ToFp8e4m3(x);
      const err = Math.abs(fp8e4m3ToF32(c) - x);
      for (let d = 0; d < 256; d++) {
        if (isNanCode(d)) continue;
        const e = Math.abs(fp8e4m3ToF32(d) - x);
        if (Math.abs(x) <= FP8_E4M3_MAX)
          assert.ok(err < e || (err === e && ((c & 1) === 0 || fp8e4m3ToF32(d) === fp8e4m3ToF32(c))), `x=${x} code ${c} vs ${d}`);
      }
    }
  });

  it("saturates beyond ±448 (including ±Infinity) and maps NaN to 0x7f", () => {
    for (const x of [448, 449, 464, 465, 480, 1e6, 3.4e38, Infinity]) {
      assert.equal(f32ToFp8e4m3(x), 0x7e, `${x}`);
      assert.equal(f32ToFp8e4m3(-x), 0xfe, `${-x}`);
    }
    assert.equal(f32ToFp8e4m3(NaN), 0x7f);
    assert.equal(f32ToFp8e4m3(-0), 0x80);
    assert.equal(f32ToFp8e4m3(1e-30), 0x00);
    assert.equal(f32ToFp8e4m3(-1e-30), 0x80);
  });
});

describe("per-channel FP8 and INT8 weight quantization", () => {
  const rows = 6;
  const cols = 64;
  const values = Float32Array.from(randn(new Rng(8), rows * cols));
  for (let c = 0; c < cols; c++) {
    values[2 * cols + c] = 0; // an all-zero row
    values[3 * cols + c]! *= 1e-3;
    values[4 * cols + c]! *= 1e3;
  }

  it("FP8: scale = amax / 448 per row (1 for zero rows), values within half an e4m3 step", () => {
    const { data, scales } = quantizeFp8PerChannel(values, rows, cols);
    assert.equal(data.length, rows * cols);
    assert.equal(scales.length, rows);
    for (let r = 0; r < rows; r++) {
      let amax = 0;
      for (let c = 0; c < cols; c++) amax = Math.max(amax, Math.abs(values[r * cols + c]!));
      assert.equal(scales[r], amax === 0 ? 1 : Math.fround(amax / 448), `scale ${r}`);
      let sawMax = false;
      for (let c = 0; c < cols; c++) {
        const i = r * cols + c;
        const code = data[i]!;
        assert.ok(!isNanCode(code));
        if ((code & 0x7f) === 0x7e) sawMax = true;
        const y = fp8e4m3ToF32(code) * scales[r]!;
        // 3 mantissa bits: relative error ≤ 2^-4 for normals; subnormal steps are 2^-9 of the scale.
        assert.ok(Math.abs(y - values[i]!) <= Math.max(Math.abs(values[i]!) * 2 ** -4, 2 ** -10 * scales[r]!) * 1.0001, `[${r},${c}]`);
      }
      assert.equal(sawMax, amax > 0, `row ${r}'s largest value maps to ±448`);
    }
  });

  it("INT8: scale = amax / 127, round half to even, |q| ≤ 127", () => {
    const { data, scales } = quantizeInt8PerChannel(values, rows, cols);
    assert.ok(data instanceof Int8Array);
    for (let r = 0; r < rows; r++) {
      let amax = 0;
      for (let c = 0; c < cols; c++) amax = Math.max(amax, Math.abs(values[r * cols + c]!));
      assert.equal(scales[r], amax === 0 ? 1 : Math.fround(amax / 127));
      for (let c = 0; c < cols; c++) {
        const i = r * cols + c;
        assert.ok(Math.abs(data[i]!) <= 127);
        assert.ok(Math.abs(data[i]! * scales[r]! - values[i]!) <= scales[r]! * 0.5 * 1.0001, `[${r},${c}]`);
      }
    }
    const ties = quantizeInt8PerChannel(Float32Array.from([127, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5]), 1, 8);
    assert.deepEqual(ties.scales, Float32Array.from([1]));
    assert.deepEqual([...ties.data], [127, 0, 2, 2, 0, -2, -2, 126]);
  });

  it("rejects a values array that does not match rows × cols", () => {
    assert.throws(() => quantizeFp8PerChannel(new Float32Array(5), 2, 3), RangeError);
    assert.throws(() => quantizeInt8PerChannel(new Float32Array(7), 2, 3), /expected 2×3 values, got 7/);
  });
});
