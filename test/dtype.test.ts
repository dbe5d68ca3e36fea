import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { bf16BitsToF32, decodeFloats, encodeFloats, f32ToBf16Bits, f32ToF16Bits, f16ToF32Table } from "../src/backend/dtype.js";

describe("dtype conversions", () => {
  it("f16 encodes and decodes known values, rounding to nearest even", () => {
    const t = f16ToF32Table();
    const cases: [number, number][] = [
      [1, 0x3c00],
      [-2, 0xc000],
      [65504, 0x7bff],
      [1e6, 0x7c00], // overflow to infinity
      [2 ** -24, 0x0001], // smallest subnormal
      [2 ** -25, 0x0000], // ties to even: rounds down to zero
      [1 + 2 ** -11, 0x3c00], // halfway between 1 and the next half: even is 1
      [1 + 3 * 2 ** -11, 0x3c02],
      [0.1, 0x2e66],
    ];
    for (const [x, bits] of cases) {
      assert.equal(f32ToF16Bits(x), bits, `f16(${x})`);
      if (bits !== 0x7c00 && bits !== 0)
        assert.ok(Math.abs(t[bits]! - x) <= Math.abs(x) * 2 ** -11 + 2 ** -25, `decode ${bits.toString(16)}`);
    }
    assert.ok(Number.isNaN(t[f32ToF16Bits(NaN)]!));
  });

  it("bf16 rounds to nearest even like PyTorch and round-trips", () => {
    assert.equal(f32ToBf16Bits(1), 0x3f80);
    assert.equal(f32ToBf16Bits(1 + 2 ** -8), 0x3f80); // tie -> even
    assert.equal(f32ToBf16Bits(1 + 3 * 2 ** -8), 0x3f82); // tie -> even (up)
    assert.equal(bf16BitsToF32(0xc0490fdb >>> 16), -3.140625);
    const values = [0, -1.5, 3.25, 1e-3, -7e4];
    const back = decodeFloats(encodeFloats(values, "bf16"), "bf16", values.length);
    values.forEach((v, i) => assert.ok(Math.abs(back[i]! - v) <= Math.abs(v) / 128));
  });

  it("f32 and i32 pass through exactly", () => {
    assert.deepEqual(Array.from(decodeFloats(encodeFloats([1.5, -2], "f32"), "f32", 2)), [1.5, -2]);
    assert.deepEqual(Array.from(decodeFloats(encodeFloats([7, -3], "i32"), "i32", 2)), [7, -3]);
  });
});
