import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  bf16BitsToF32,
  decodeFloats,
  denseDType,
  type DType,
  dtypeBytes,
  dtypeOfGgml,
  elementType,
  encodeFloats,
  f32ToBf16Bits,
  f32ToF16Bits,
  f16ToF32Table,
  tensorBytes,
} from "../src/backend/dtype.js";
import { Tensor } from "../src/backend/tensor.js";

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

describe("the element-type registry", () => {
  it("knows ggml's block geometry and type ids, and sizes tensors of block formats", () => {
    const expect: [DType, number, number, number][] = [
      ["q8_0", 32, 34, 8],
      ["q4_0", 32, 18, 2],
      ["q4_1", 32, 20, 3],
      ["q5_0", 32, 22, 6],
      ["q5_1", 32, 24, 7],
      ["q4_k", 256, 144, 12],
      ["q5_k", 256, 176, 13],
      ["q6_k", 256, 210, 14],
      ["mxfp4", 32, 17, 39],
    ];
    for (const [dtype, block, bytes, id] of expect) {
      const t = elementType(dtype);
      assert.deepEqual([t.blockSize, t.blockBytes, t.ggmlType], [block, bytes, id], dtype);
      assert.equal(dtypeOfGgml(id), dtype);
      assert.equal(tensorBytes(dtype, 4096 * 512), ((4096 * 512) / block) * bytes);
      assert.throws(() => dtypeBytes(dtype), /use tensorBytes/);
      assert.throws(() => tensorBytes(dtype, block + 1), /not a whole number of/);
    }
    assert.equal(tensorBytes("bf16", 10), 20);
    assert.equal(tensorBytes("int8", 10), 10);
    assert.equal(tensorBytes("fp8_e4m3", 10), 10);
    assert.equal(dtypeOfGgml(10), undefined, "Q2_K is not one Tokamak computes with");
  });

  it("tensors of block formats take their real bytes, and row views start on block boundaries", () => {
    const storage = { id: 1, bytes: tensorBytes("q4_k", 8 * 512), tag: "weights" as const, label: "w", handle: null };
    const t = new Tensor(storage, "q4_k", [8, 512]);
    assert.equal(t.byteLength, 8 * 2 * 144);
    assert.equal(t.rows(3, 2).byteOffset, 3 * 2 * 144);
    assert.throws(() => new Tensor(storage, "q4_k", [9, 512]), /does not fit/);
  });

  it("refuses a quantized encoding where only a dense one can be used", () => {
    assert.throws(() => denseDType("q4_k", "write"), /write: q4_k is a quantized encoding; expected f32, f16, bf16 or i32/);
    assert.equal(denseDType("bf16", "x"), "bf16");
  });
});
