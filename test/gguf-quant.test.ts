/**
 * GGUF files written by `tokamak quantize` (the mixes, the fallbacks for narrow rows), served with
 * their weights kept quantized, and bad GGUF files refused with clear errors. The llama.cpp
 * comparison of every type is gguf-quant-oracle.test.ts.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { CpuBackend } from "../src/backend/cpu/cpu-backend.js";
import { convertHfToGguf } from "../src/convert/hf-to-gguf.js";
import { useMoreBits } from "../src/convert/gguf-file-types.js";
import { readGguf } from "../src/formats/gguf.js";
import { loadModel, loadModelConfig } from "../src/model/load.js";
import { planMemory, weightFormat } from "../src/model/memory-plan.js";
import { writeQuantTinyModel } from "./helpers/quant-models.js";
import { type TinyArch, writeTinyModel } from "./helpers/tiny-model.js";

const root = mkdtempSync(join(tmpdir(), "tokamak-gguf-quant-"));
const backend = new CpuBackend({ threads: 2 });
after(() => {
  backend.dispose();
  rmSync(root, { recursive: true, force: true });
});

const tinyModel = (arch: TinyArch, seed: number) => writeQuantTinyModel(root, arch, seed);

describe("tokamak quantize", () => {
  it("writes a Q4_K_M mix: Q6_K for the LM head and for attn_v / ffn_down where llama.cpp gives them more bits", () => {
    const dir = tinyModel("qwen3", 5);
    const path = join(root, "cli-q4km.gguf");
    const main = join(import.meta.dirname, "..", "src", "cli", "main.js");
    execFileSync(process.execPath, [main, "quantize", dir, "--type", "q4_k_m", "-o", path], { stdio: "pipe" });
    const h = readGguf(path);
    const typeOf = (name: string) => h.tensors.find((x) => x.name === name)!.typeName;
    assert.equal(typeOf("output.weight"), "Q6_K");
    assert.equal(typeOf("token_embd.weight"), "Q4_K");
    assert.equal(typeOf("blk.0.attn_norm.weight"), "F32");
    for (let l = 0; l < 2; l++) {
      const more = useMoreBits(l, 2) ? "Q6_K" : "Q4_K";
      assert.equal(typeOf(`blk.${l}.attn_v.weight`), more);
      assert.equal(typeOf(`blk.${l}.ffn_down.weight`), more);
      assert.equal(typeOf(`blk.${l}.attn_q.weight`), "Q4_K");
      assert.equal(typeOf(`blk.${l}.ffn_up.weight`), "Q4_K");
    }
  });

  it("upgrades the layers llama.cpp's use_more_bits picks (integer division), e.g. of 28", () => {
    const picked = Array.from({ length: 28 }, (_, l) => l).filter((l) => useMoreBits(l, 28));
    assert.deepEqual(picked, [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26, 27]);
  });

  it("falls back as llama.cpp does where rows are not whole K-quant blocks (hidden 64)", () => {
    const dir = join(root, "narrow");
    writeTinyModel(dir, { arch: "qwen3", dtype: "f32", vocabSize: 256, hiddenSize: 64, intermediateSize: 128, numLayers: 1, seed: 3 });
    const path = join(root, "narrow.gguf");
    const r = convertHfToGguf(dir, path, { outType: "q4_k_m" });
    const h = readGguf(path);
    assert.equal(h.tensors.find((x) => x.name === "blk.0.attn_q.weight")!.typeName, "Q5_0", "Q4_K → Q5_0");
    assert.equal(h.tensors.find((x) => x.name === "output.weight")!.typeName, "Q8_0", "Q6_K → Q8_0");
    assert.ok(r.tensorTypes.Q5_0! > 0);
  });

  it("refuses an unknown type, naming the known ones", () => {
    const dir = tinyModel("qwen3", 5);
    assert.throws(
      () => convertHfToGguf(dir, join(root, "x.gguf"), { outType: "q3_k_xl" }),
      /unknown GGUF type "q3_k_xl"; expected one of .*q4_k_m/,
    );
  });
});

describe("serving a GGUF file keeps its weights quantized", () => {
  it("the weights take about the file's size on the backend", () => {
    const dir = tinyModel("llama", 8);
    const path = join(root, "mem-q4km.gguf");
    convertHfToGguf(dir, path, { outType: "q4_k_m" });
    const before = backend.memoryStats().byTag.weights;
    const loaded = loadModel(path, backend, { maxModelLen: 64, maxNumSeqs: 1, maxNumTokens: 64 });
    try {
      const weights = backend.memoryStats().byTag.weights - before;
      const rope = 2 * 64 * 32 * 4;
      const file = statSync(path).size;
      // The file also holds metadata (the tokenizer); the backend adds the rotary tables and norms in f32 (stored F32 too).
      assert.ok(weights - rope <= file, `weights ${weights - rope} bytes > file ${file}`);
      assert.ok(weights - rope > 0.5 * file, `weights ${weights - rope} bytes, file ${file}`);
      assert.equal(loaded.model.weights.layers[0]!.gateUp.dtype, "q4_k");
    } finally {
      loaded.model.dispose();
    }
  });
});

describe("bad GGUF files get clear errors naming the file and the fault, with nothing allocated", () => {
  /** A valid quantized file to corrupt. */
  function goodFile(): { path: string; bytes: Buffer } {
    const dir = tinyModel("qwen3", 6);
    const path = join(root, "good-q8.gguf");
    convertHfToGguf(dir, path, { outType: "q8_0" });
    return { path, bytes: readFileSync(path) };
  }
  let n = 0;
  const write = (bytes: Buffer) => {
    const p = join(root, `bad-${n++}.gguf`);
    writeFileSync(p, bytes);
    return p;
  };
  const rejects = (path: string, pattern: RegExp) => {
    const before = backend.memoryStats().total;
    assert.throws(
      () => loadModel(path, backend, { maxModelLen: 64, maxNumSeqs: 1, maxNumTokens: 64 }),
      (err: Error) => err.message.includes(path) && pattern.test(err.message),
    );
    assert.equal(backend.memoryStats().total, before, "nothing stays allocated");
  };

  it("bad magic, bad version", () => {
    const { bytes } = goodFile();
    const magic = Buffer.from(bytes);
    magic.write("GGML", 0, "latin1");
    rejects(write(magic), /not a GGUF file/);
    const version = Buffer.from(bytes);
    version.writeUInt32LE(7, 4);
    rejects(write(version), /unsupported GGUF version 7/);
  });

  it("an array count of 2^62 and a string running past the end of the file", () => {
    const { path, bytes } = goodFile();
    const h = readGguf(path);
    // The tokens array: after its key, the u32 value type (array), the u32 item type, then the u64 count.
    const key = Buffer.from("tokenizer.ggml.tokens", "latin1");
    const at = bytes.indexOf(key) + key.length + 8;
    const huge = Buffer.from(bytes);
    huge.writeBigUInt64LE(2n ** 62n, at);
    rejects(write(huge), /claims \d+ string items|larger than any file/);
    // The first token string's length (right after the count).
    const long = Buffer.from(bytes);
    long.writeBigUInt64LE(BigInt(bytes.length), at + 8);
    rejects(write(long), /truncated header/);
    assert.ok(h.tensors.length > 0);
  });

  it("a tensor whose data runs past the end of the file", () => {
    const { bytes } = goodFile();
    rejects(write(bytes.subarray(0, bytes.length - 1000)), /data lies beyond the end of the file/);
  });

  it("an unknown tensor type, and a known one Tokamak does not compute with", () => {
    const { path, bytes } = goodFile();
    const h = readGguf(path);
    const t = h.tensors.find((x) => x.name === "blk.0.attn_q.weight")!;
    // Tensor info: name (u64 length + bytes), u32 dims, u64 × dims, u32 type, u64 offset.
    const name = Buffer.from(t.name, "latin1");
    let at = bytes.indexOf(name, bytes.indexOf(Buffer.from("tokenizer.ggml.tokens")));
    at = bytes.indexOf(name, at) + name.length;
    const typeAt = at + 4 + 8 * t.ne.length;
    const unknown = Buffer.from(bytes);
    unknown.writeUInt32LE(99, typeAt);
    rejects(write(unknown), /unknown ggml type 99/);
    const q2k = Buffer.from(bytes);
    q2k.writeUInt32LE(10, typeAt); // Q2_K: 256-element blocks of 84 bytes, smaller than Q8_0's; the data still fits
    rejects(write(q2k), /tensor "blk.0.attn_q.weight" is Q2_K; Tokamak computes with .*Q4_K/);
  });

  it("a shape that does not match the architecture", () => {
    const { bytes } = goodFile();
    const patched = Buffer.from(bytes);
    // feed_forward_length 512 → 384: the ffn tensors no longer match it.
    const key = Buffer.from("qwen3.feed_forward_length", "latin1");
    const at = bytes.indexOf(key) + key.length + 4;
    assert.equal(patched.readUInt32LE(at), 512);
    patched.writeUInt32LE(384, at);
    rejects(write(patched), /"intermediate_size" is 384, but model.layers.0.mlp.up_proj.weight has 512 rows/);
  });
});

describe("tokamak plan counts what loading allocates, for every format", () => {
  it("q4_k_m, q8_0, q6_k GGUF files and --quantization int8 / fp8: planned weight bytes = allocated weight bytes", () => {
    const dir = tinyModel("qwen2", 12);
    const config = loadModelConfig(dir);
    const measure = (path: string, opts: { quantization?: "int8" | "fp8" } = {}) => {
      const before = backend.memoryStats().byTag.weights;
      const loaded = loadModel(path, backend, { maxModelLen: 64, maxNumSeqs: 1, maxNumTokens: 64, ...opts });
      const bytes = backend.memoryStats().byTag.weights - before;
      loaded.model.dispose();
      return bytes;
    };
    const planned = (format: string) =>
      planMemory(config, { weightFormat: weightFormat(format, "bf16"), activationDType: "f32", maxModelLen: 64 }).weightBytes;
    for (const type of ["q4_k_m", "q8_0", "q6_k", "q5_k_m"]) {
      const path = join(root, `plan-${type}.gguf`);
      convertHfToGguf(dir, path, { outType: type });
      assert.equal(planned(type), measure(path), type);
    }
    for (const q of ["int8", "fp8"] as const) assert.equal(planned(q), measure(dir, { quantization: q }), q);
  });
});
