/**
 * Tokamak's CPU forward pass against llama.cpp: tiny random-weight Hugging Face models are
 * converted to GGUF by src/formats/hf-to-gguf.ts and run by llama.cpp (node-llama-cpp's prebuilt
 * CPU binaries) and by Tokamak on the same token prompts.
 *
 * Both engines compute in f32 (llama.cpp with an F32 KV cache), but in different summation
 * orders, so logits agree to ~1e-5 of their scale rather than exactly, and a greedy step whose
 * top two logits are closer than that could legitimately go either way. So:
 * - teacher-forced: at every step of Tokamak's greedy path, llama.cpp's logits (given the same
 *   prefix) must be close to Tokamak's, and its argmax must equal Tokamak's wherever Tokamak's
 *   top-2 gap is not a near-tie;
 * - free-running: llama.cpp's own greedy sampler must produce Tokamak's tokens up to the first
 *   near-tie on the path (all of them when there is none).
 * Also here: the GGUF reader/writer (round trip, clear errors, and node-llama-cpp's own GGUF
 * parser reading our files), and llama.cpp's tokenizer on the converted vocabulary against ours.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { after, describe, it, type TestContext } from "node:test";
import { readGgufFileInfo } from "node-llama-cpp";
import { CpuBackend } from "../src/backend/cpu/cpu-backend.js";
import { decodeFloats, type DType } from "../src/backend/dtype.js";
import {
  encodeGgmlFloats,
  FormatError,
  GGML_BF16,
  GGML_F16,
  GGML_F32,
  GgufFile,
  type GgufMetadata,
  gv,
  plainGgufValue,
  readGguf,
  writeGguf,
} from "../src/formats/gguf.js";
import { convertHfToGguf, type GgufOutType } from "../src/convert/hf-to-gguf.js";
import { SafetensorsCheckpoint } from "../src/formats/safetensors.js";
import { Tokenizer } from "../src/tokenizer/tokenizer.js";
import { disposeLlamaCpp, LlamaCppOracle, llamaCppLogs } from "./helpers/llama-cpp-oracle.js";
import { compareWithLlamaCpp as compare, type StepStats } from "./helpers/llama-cpp-compare.js";
import { TINY_VOCAB_SIZE, type TinyModelOptions, writeTinyModel } from "./helpers/tiny-model.js";

const root = mkdtempSync(join(tmpdir(), "tokamak-llamacpp-"));
const backend = new CpuBackend({ threads: 2 });
after(async () => {
  if (process.env.SHOW_LLAMA_LOGS) console.log([...new Set(llamaCppLogs)].join("\n"));
  backend.dispose();
  await disposeLlamaCpp();
  rmSync(root, { recursive: true, force: true });
});

let counter = 0;
function tinyModel(opts: TinyModelOptions): string {
  const dir = join(root, `m${counter++}`);
  writeTinyModel(dir, opts);
  return dir;
}

function convert(dir: string, outType: GgufOutType = "f32") {
  const path = `${dir}.gguf`;
  return { path, result: convertHfToGguf(dir, path, { outType }) };
}

const VOCAB = 2048;
const STEPS = 32;
/** Prompts of 5, 21 and 70 tokens (token ids below VOCAB). */
const PROMPTS = [5, 21, 70].map((n) => Array.from({ length: n }, (_, i) => (i * 7919 + 13 * n) % VOCAB));

/** Logits within this fraction of the logit scale (max |logit|) count as equal; a top-2 gap below it is a near-tie. */
const F32_TOLERANCE = 5e-5;

function compareWithLlamaCpp(
  t: TestContext,
  hfDir: string,
  ggufPath: string,
  opts: { tolerance?: number; dtype?: DType; prompts?: number[][]; steps?: number } = {},
): Promise<StepStats> {
  return compare(t, backend, hfDir, ggufPath, { tolerance: F32_TOLERANCE, steps: STEPS, prompts: PROMPTS, ...opts });
}

describe("Tokamak's forward pass equals llama.cpp's on converted GGUF models", () => {
  for (const arch of ["llama", "mistral", "qwen2", "qwen3"] as const) {
    it(`${arch} f32`, async (t) => {
      const dir = tinyModel({ arch, dtype: "f32", vocabSize: VOCAB, seed: 7 });
      const { path, result } = convert(dir);
      assert.equal(result.architecture, arch === "mistral" ? "llama" : arch);
      const stats = await compareWithLlamaCpp(t, dir, path);
      // With the logits this close, only a near-tie can change a free-running sequence.
      assert.ok(stats.identicalSequences >= stats.sequences - 1, `${stats.identicalSequences}/${stats.sequences} sequences identical`);
    });
  }

  it("qwen3 stored as bf16 (converted losslessly to GGUF f32)", async (t) => {
    const dir = tinyModel({ arch: "qwen3", dtype: "bf16", vocabSize: VOCAB, seed: 8 });
    await compareWithLlamaCpp(t, dir, convert(dir, "f32").path);
  });

  it("llama with head_dim 32 ≠ hidden/heads, one KV head, tied embeddings, 2 shards", async (t) => {
    const dir = tinyModel({
      arch: "llama",
      dtype: "f32",
      vocabSize: VOCAB,
      headDim: 32,
      numKvHeads: 1,
      tieWordEmbeddings: true,
      shards: 2,
      seed: 9,
    });
    const { path, result } = convert(dir);
    assert.ok(!readGguf(path).tensors.some((x) => x.name === "output.weight"), "tied models have no output.weight");
    assert.equal(result.tensorCount, 2 + 2 * 9);
    await compareWithLlamaCpp(t, dir, path, { prompts: PROMPTS.slice(1) });
  });

  it("qwen2 with tied embeddings and MHA", async (t) => {
    const dir = tinyModel({ arch: "qwen2", dtype: "f32", vocabSize: VOCAB, numKvHeads: 4, tieWordEmbeddings: true, seed: 10 });
    await compareWithLlamaCpp(t, dir, convert(dir).path, { prompts: PROMPTS.slice(1) });
  });

  it("llama3 rope scaling (a rope_freqs tensor) and linear rope scaling", async (t) => {
    const llama3 = { rope_type: "llama3", factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 16 };
    const dir3 = tinyModel({ arch: "llama", dtype: "f32", vocabSize: VOCAB, ropeScaling: llama3, ropeTheta: 500000, seed: 5 });
    const g3 = convert(dir3).path;
    const freqs = GgufFile.open(g3);
    try {
      // Transformers scales each inverse frequency (by 1/factor, by 1, or a blend); llama.cpp wants old/new as a divisor.
      const factors = freqs.readFloats(freqs.tensor("rope_freqs.weight"));
      assert.equal(factors.length, 8);
      for (let i = 0; i < 8; i++) {
        const invFreq = 1 / 500000 ** ((2 * i) / 16);
        const wavelen = (2 * Math.PI) / invFreq;
        const smooth = (16 / wavelen - 1) / (4 - 1);
        const scaled = wavelen < 16 / 4 ? invFreq : wavelen > 16 / 1 ? invFreq / 8 : (1 - smooth) * (invFreq / 8) + smooth * invFreq;
        assert.ok(
          Math.abs(factors[i]! - invFreq / scaled) < 1e-5 * (invFreq / scaled),
          `rope_freqs[${i}] = ${factors[i]}, expected ${invFreq / scaled}`,
        );
      }
      assert.ok(
        factors[0]! > 1 && factors[0]! < 8 && factors[7] === 8,
        "with 16 original positions the fastest pair is blended, the slowest divided by 8",
      );
    } finally {
      freqs.close();
    }
    await compareWithLlamaCpp(t, dir3, g3, { prompts: PROMPTS.slice(1) });
    const dirLin = tinyModel({ arch: "llama", dtype: "f32", vocabSize: VOCAB, ropeScaling: { type: "linear", factor: 4 }, seed: 6 });
    const gLin = convert(dirLin).path;
    assert.equal(plainGgufValue(readGguf(gLin).metadata.get("llama.rope.scaling.type")!), "linear");
    await compareWithLlamaCpp(t, dirLin, gLin, { prompts: PROMPTS.slice(1) });
  });

  it("GGUF f16 and bf16 output: llama.cpp agrees with Tokamak running the same rounded weights", async (t) => {
    // llama.cpp rounds activations to the weight type inside its matmuls, Tokamak computes in f32: looser tolerance.
    const dir = tinyModel({ arch: "qwen3", dtype: "f32", vocabSize: VOCAB, seed: 12 });
    for (const [outType, dtype, ggml] of [
      ["f16", "f16", GGML_F16],
      ["bf16", "bf16", GGML_BF16],
    ] as const) {
      const { path, result } = convert(dir, outType);
      assert.equal(result.outType, outType);
      const h = readGguf(path);
      assert.equal(h.tensors.find((x) => x.name === "blk.0.attn_q.weight")!.ggmlType, ggml);
      assert.equal(h.tensors.find((x) => x.name === "blk.0.attn_norm.weight")!.ggmlType, GGML_F32, "norms stay F32");
      await compareWithLlamaCpp(t, dir, path, { dtype, tolerance: outType === "f16" ? 1e-2 : 5e-2, prompts: PROMPTS.slice(1), steps: 16 });
    }
  });
});

describe("hf-to-gguf", () => {
  it("permutes Llama's Q/K rows per head into interleaved RoPE pairs, leaves Qwen's as they are", () => {
    for (const arch of ["llama", "qwen3"] as const) {
      const dir = tinyModel({ arch, dtype: "f32", vocabSize: 64, numLayers: 1, seed: 2 });
      const { path } = convert(dir);
      const ckpt = new SafetensorsCheckpoint(dir);
      const f = GgufFile.open(path);
      try {
        for (const [hfName, ggufName, heads] of [
          ["model.layers.0.self_attn.q_proj.weight", "blk.0.attn_q.weight", 4],
          ["model.layers.0.self_attn.k_proj.weight", "blk.0.attn_k.weight", 2],
        ] as const) {
          const info = ckpt.get(hfName)!;
          const bytes = new Uint8Array(info.byteLength);
          ckpt.readInto(info, bytes);
          const [rows, cols] = info.shape as [number, number];
          const hf = decodeFloats(bytes, "f32", rows * cols);
          const g = f.tensor(ggufName);
          assert.deepEqual(g.ne, [cols, rows], "ggml dims are reversed");
          const out = f.readFloats(g);
          const headDim = rows / heads;
          for (let r = 0; r < rows; r++) {
            const h = Math.floor(r / headDim);
            const k = r % headDim; // = 2j + i in GGUF
            const src = arch === "llama" ? h * headDim + (k % 2) * (headDim / 2) + Math.floor(k / 2) : r;
            assert.deepEqual(
              out.subarray(r * cols, (r + 1) * cols),
              hf.subarray(src * cols, (src + 1) * cols),
              `${arch} ${ggufName} row ${r}`,
            );
          }
        }
      } finally {
        f.close();
        ckpt.close();
      }
    }
  });

  it("cuts the vocabulary to the embedding rows and drops merges that need a cut token", () => {
    const dir = tinyModel({ arch: "qwen2", dtype: "f32", vocabSize: VOCAB, numLayers: 1, seed: 3 });
    const { path, result } = convert(dir);
    assert.equal(result.vocabSize, VOCAB);
    assert.equal(result.droppedTokens, TINY_VOCAB_SIZE - VOCAB);
    assert.ok(result.droppedMerges > 100_000, `${result.droppedMerges} merges dropped`);
    const m = readGguf(path).metadata;
    const tokens = plainGgufValue(m.get("tokenizer.ggml.tokens")!) as string[];
    const merges = plainGgufValue(m.get("tokenizer.ggml.merges")!) as string[];
    assert.equal(tokens.length, VOCAB);
    assert.ok(merges.length > 1000);
    const known = new Set(tokens);
    for (const merge of merges) {
      const [a, b] = merge.split(" ") as [string, string];
      assert.ok(known.has(a) && known.has(b) && known.has(a + b), `merge "${merge}" needs a token outside the vocabulary`);
    }
    // The EOS/BOS ids (151643+) lie outside: they are left out rather than written dangling.
    assert.equal(m.get("tokenizer.ggml.eos_token_id"), undefined);
  });

  it("pads a tokenizer smaller than the embedding with [PADn] tokens of type unused, and llama.cpp tokenizes it like Tokamak", async () => {
    const dir = tinyModel({ arch: "qwen3", dtype: "f32", vocabSize: VOCAB, numLayers: 1, seed: 4 });
    // Cut tokenizer.json itself to 2000 tokens (merges and added tokens to match): 48 embedding rows have no token.
    const tokPath = join(dir, "tokenizer.json");
    const tok = JSON.parse(readFileSync(tokPath, "utf8"));
    const entries = Object.entries(tok.model.vocab as Record<string, number>).filter(([, id]) => id < 2000);
    const kept = new Set(entries.map(([text]) => text));
    tok.model.vocab = Object.fromEntries(entries);
    tok.model.merges = (tok.model.merges as [string, string][]).filter(([a, b]) => kept.has(a) && kept.has(b) && kept.has(a + b));
    tok.added_tokens = [];
    writeFileSync(tokPath, JSON.stringify(tok));
    const { path, result } = convert(dir);
    assert.equal(result.droppedTokens, 0);
    assert.equal(result.droppedMerges, 0);
    const m = readGguf(path).metadata;
    const tokens = plainGgufValue(m.get("tokenizer.ggml.tokens")!) as string[];
    const types = plainGgufValue(m.get("tokenizer.ggml.token_type")!) as number[];
    assert.equal(tokens.length, VOCAB);
    assert.equal(tokens[2000], "[PAD2000]");
    assert.equal(types[2047], 5);
    assert.equal(types[1999], 1);
    const oracle = await LlamaCppOracle.loadVocab(path);
    try {
      const ours = Tokenizer.fromDir(dir);
      for (const text of ["Hello, world! The quick brown fox.", "  indented\n\tcode = 42;\n", "aaaa bbbb cccc"]) {
        assert.deepEqual(oracle.tokenize(text), ours.encode(text, { addSpecialTokens: false }), JSON.stringify(text));
      }
    } finally {
      await oracle.dispose();
    }
  });

  it("writes the full Qwen3 tokenizer, and llama.cpp tokenizes and detokenizes like Tokamak", async () => {
    const dir = tinyModel({ arch: "qwen3", dtype: "bf16", numLayers: 1, tieWordEmbeddings: true, seed: 1 });
    const { path, result } = convert(dir, "auto");
    assert.equal(result.outType, "bf16", "auto keeps the stored dtype");
    assert.equal(result.vocabSize, TINY_VOCAB_SIZE);
    assert.equal(result.droppedMerges, 0);
    const m = readGguf(path).metadata;
    const get = (k: string) => {
      const v = m.get(k);
      assert.ok(v, `metadata "${k}" is missing`);
      return plainGgufValue(v);
    };
    assert.equal(get("tokenizer.ggml.model"), "gpt2");
    assert.equal(get("tokenizer.ggml.pre"), "qwen2");
    assert.equal(get("tokenizer.ggml.eos_token_id"), 151645); // <|im_end|>, from tokenizer_config.json
    assert.equal(get("tokenizer.ggml.bos_token_id"), 151643); // from config.json
    assert.equal(get("tokenizer.ggml.padding_token_id"), 151643);
    assert.equal(get("tokenizer.ggml.add_bos_token"), false);
    assert.match(get("tokenizer.chat_template") as string, /<\|im_start\|>/);
    const types = get("tokenizer.ggml.token_type") as number[];
    assert.equal(types[151645], 3, "<|im_end|> is a control token");
    assert.equal(types[151659], 3, "<|fim_prefix|> is not marked special but looks it: control");
    assert.equal(types[151667], 4, "<think> is user-defined");
    assert.equal(get("general.file_type"), 32);

    const ours = Tokenizer.fromDir(dir);
    const oracle = await LlamaCppOracle.loadVocab(path);
    try {
      assert.equal(oracle.model.tokens.eos, 151645);
      const texts = [
        "Hello, world!",
        "  The quick brown fox\n\njumps over   the lazy dog 1234567. ",
        "<|im_start|>user\nWhy is the sky blue?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
        "Ünïcödé — 日本語のテキスト, emoji 🚀🎉 and Ελληνικά",
        "def f(x):\n\treturn x**2  # I'm sure we'll SEE\r\n",
      ];
      for (const text of texts) {
        const ids = ours.encode(text, { addSpecialTokens: false });
        assert.deepEqual(oracle.tokenize(text, true), ids, JSON.stringify(text));
        assert.equal(oracle.detokenize(ids, true), ours.decode(ids), JSON.stringify(text));
      }
    } finally {
      await oracle.dispose();
    }
  });

  it("rejects what llama.cpp could not run the same way, naming it", () => {
    const llama3 = { rope_type: "llama3", factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 16 };
    const dir = tinyModel({ arch: "qwen3", dtype: "f32", vocabSize: 64, numLayers: 1, ropeScaling: llama3 });
    assert.throws(() => convert(dir), /llama3 rope scaling .*"llama" architecture.*expected LlamaForCausalLM/);
  });

  it("the hf-to-gguf script converts a folder, and explains bad arguments", () => {
    const script = join(dirname(fileURLToPath(import.meta.url)), "..", "scripts", "hf-to-gguf.js");
    const dir = tinyModel({ arch: "llama", dtype: "f32", vocabSize: 64, numLayers: 1 });
    const out = join(root, "cli.gguf");
    const stdout = execFileSync(process.execPath, [script, dir, out, "--outtype", "f16"], { encoding: "utf8" });
    assert.match(
      stdout,
      /wrote .*cli\.gguf: llama, f16, 12 tensors, 64 tokens \(151605 tokenizer tokens and \d+ merges beyond the embedding left out\)/,
    );
    assert.equal(readGguf(out).tensors.find((x) => x.name === "token_embd.weight")!.ggmlType, GGML_F16);
    assert.throws(
      () => execFileSync(process.execPath, [script, dir, out, "--outtype", "q4"], { encoding: "utf8", stdio: "pipe" }),
      (err: { status?: number; stderr?: string }) =>
        err.status === 1 && /--outtype must be one of f32, f16, bf16, auto, got "q4"/.test(err.stderr ?? ""),
    );
  });
});

describe("GGUF reader and writer", () => {
  function roundTripFile(): {
    path: string;
    metadata: GgufMetadata;
    f32: Float32Array;
    f16: Float32Array;
    bf16: Float32Array;
    q8: Uint8Array;
  } {
    const metadata: GgufMetadata = new Map([
      ["general.architecture", gv.str("test")],
      ["general.alignment", gv.u32(64)],
      ["t.u8", gv.u8(255)],
      ["t.i8", gv.i8(-128)],
      ["t.u16", gv.u16(65535)],
      ["t.i16", gv.i16(-32768)],
      ["t.u32", gv.u32(4294967295)],
      ["t.i32", gv.i32(-2147483648)],
      ["t.f32", gv.f32(-1.5)],
      ["t.f64", gv.f64(Math.PI)],
      ["t.u64", gv.u64(2n ** 64n - 1n)],
      ["t.i64", gv.i64(-(2n ** 63n))],
      ["t.bool", gv.bool(true)],
      ["t.str", gv.str("héllo ✓ 日本 🚀")],
      ["t.empty_str", gv.str("")],
      ["t.arr.u8", gv.arr("uint8", [0, 7, 255])],
      ["t.arr.i16", gv.arr("int16", [-2, 3])],
      ["t.arr.u32", gv.arr("uint32", [1, 4000000000])],
      ["t.arr.i32", gv.arr("int32", [-5, 6, 7])],
      ["t.arr.f32", gv.arr("float32", [0.25, -8])],
      ["t.arr.f64", gv.arr("float64", [1e300, -0.1])],
      ["t.arr.i64", gv.arr("int64", [1n, -2n])],
      ["t.arr.u64", gv.arr("uint64", [2n ** 40n])],
      ["t.arr.bool", gv.arr("bool", [true, false])],
      ["t.arr.str", gv.arr("string", ["a", "", "ü b"])],
      ["t.arr.empty", gv.arr("int32", [])],
      ["t.arr.nested", gv.arr("array", [gv.arr("string", ["x", "y"]), gv.arr("int8", [-1])])],
      // Several MiB: the header reader refills its window mid-value.
      [
        "t.arr.big",
        gv.arr(
          "string",
          Array.from({ length: 300_000 }, (_, i) => `token ${i} ${"ü".repeat(i % 7)}`),
        ),
      ],
    ]);
    const f32 = Float32Array.from({ length: 15 }, (_, i) => i * 0.37 - 2);
    const f16 = Float32Array.from({ length: 7 }, (_, i) => i * 0.5 - 1); // exact in half precision
    const bf16 = Float32Array.from({ length: 24 }, (_, i) => (i - 12) * 0.25);
    const q8 = Uint8Array.from({ length: 2 * 2 * 34 }, (_, i) => (i * 31) & 0xff); // 2 rows of 64 Q8_0 values
    const path = join(root, `rt${counter++}.gguf`);
    writeGguf(path, metadata, [
      { name: "a", shape: [3, 5], type: "F32", data: encodeGgmlFloats(f32, GGML_F32) },
      { name: "b", shape: [7], type: GGML_F16, data: () => encodeGgmlFloats(f16, GGML_F16) },
      { name: "c", shape: [2, 3, 4], type: "bf16", data: encodeGgmlFloats(bf16, GGML_BF16) },
      { name: "q", shape: [2, 64], type: "Q8_0", data: q8 },
    ]);
    return { path, metadata, f32, f16, bf16, q8 };
  }

  it("round-trips metadata of every value type and F32/F16/BF16/quantized tensors, with alignment padding", () => {
    const { path, metadata, f32, f16, bf16, q8 } = roundTripFile();
    const f = GgufFile.open(path);
    try {
      const h = f.header;
      assert.equal(h.version, 3);
      assert.equal(h.alignment, 64);
      assert.deepEqual(h.metadata, metadata);
      assert.equal(h.dataOffset % 64, 0);
      assert.deepEqual(
        h.tensors.map((x) => [x.name, x.shape, x.ne, x.typeName, x.offset % 64, x.byteLength]),
        [
          ["a", [3, 5], [5, 3], "F32", 0, 60],
          ["b", [7], [7], "F16", 0, 14],
          ["c", [2, 3, 4], [4, 3, 2], "BF16", 0, 48],
          ["q", [2, 64], [64, 2], "Q8_0", 0, 136],
        ],
      );
      assert.deepEqual(f.readFloats(f.tensor("a")), f32);
      assert.deepEqual(f.readFloats(f.tensor("b")), f16);
      assert.deepEqual(f.readFloats(f.tensor("c")), bf16);
      const raw = new Uint8Array(136);
      f.readInto(f.tensor("q"), raw);
      assert.deepEqual(raw, q8);
    } finally {
      f.close();
    }
  });

  it("node-llama-cpp's own GGUF parser reads our files the same way", async () => {
    const { path } = roundTripFile();
    const ours = readGguf(path);
    const theirs = await readGgufFileInfo(path, { readTensorInfo: true, logWarnings: false });
    assert.equal(theirs.version, 3);
    const t = (theirs.metadata as unknown as { t: Record<string, unknown> }).t;
    assert.equal(t.str, "héllo ✓ 日本 🚀");
    assert.equal(t.i64, -(2n ** 63n));
    assert.equal(t.f64, Math.PI);
    assert.deepEqual((t.arr as Record<string, unknown>).str, ["a", "", "ü b"]);
    assert.deepEqual(
      theirs.tensorInfo!.map((x) => [x.name, x.dimensions.map(Number), x.ggmlType, Number(x.fileOffset)]),
      ours.tensors.map((x) => [x.name, x.ne, x.ggmlType, x.fileOffset]),
    );
  });

  it("explains bad files: wrong magic, old version, truncated header, missing tensor data, unknown value type", () => {
    const bad = (bytes: Buffer | string) => {
      const p = join(root, `bad${counter++}.gguf`);
      writeFileSync(p, bytes);
      return p;
    };
    const rejects = (path: string, pattern: RegExp) =>
      assert.throws(
        () => readGguf(path),
        (err: Error) => err instanceof FormatError && pattern.test(err.message),
      );
    rejects(bad("GGML" + "\0".repeat(60)), /not a GGUF file: the first bytes are 47 47 4d 4c \("GGML"\); expected "GGUF"/);
    rejects(bad('{"__metadata__": {}}'), /the first bytes are 7b 22 5f 5f .*expected "GGUF"/);
    rejects(bad("GG"), /too short for a GGUF file/);
    const header = (version: number) => {
      const b = Buffer.alloc(24);
      b.write("GGUF", 0, "latin1");
      b.writeUInt32LE(version, 4);
      return b;
    };
    rejects(bad(header(1)), /unsupported GGUF version 1; expected 2 or 3/);
    rejects(bad(header(0x03000000)), /unsupported GGUF version 50331648; expected 2 or 3 .*big-endian/);
    rejects(join(root, "missing.gguf"), /file not found/);

    const { path } = roundTripFile();
    const full = readFileSync(path);
    const h = readGguf(path);
    rejects(bad(full.subarray(0, 100)), /truncated header: 28 metadata entries and 4 tensors cannot fit in the 76 bytes after the counts/);
    rejects(bad(full.subarray(0, 600)), /truncated header: .* at offset \d+, but (the file ends at 600 bytes|only \d+ bytes remain)/);
    rejects(
      bad(full.subarray(0, h.dataOffset + 10)),
      /tensor "a" data lies beyond the end of the file: it needs bytes \[\d+, \d+\) but the file is \d+ bytes/,
    );
    const p = join(root, `cut${counter++}.gguf`);
    writeFileSync(p, full);
    truncateSync(p, h.dataOffset + h.tensors[3]!.offset + 100);
    rejects(p, /tensor "q" data lies beyond the end of the file/);

    // Value type 13 does not exist: patch the first metadata entry's type (after magic, version, two counts, key length and key).
    const patched = Buffer.from(full);
    const keyLen = Number(patched.readBigUInt64LE(24));
    patched.writeUInt32LE(13, 32 + keyLen);
    rejects(bad(patched), /metadata "general.architecture" has unknown value type 13 at offset \d+; expected 0-12/);
    // A string length running past the end of the file.
    const long = Buffer.from(full);
    long.writeBigUInt64LE(10n ** 12n, 24);
    rejects(bad(long), /truncated header/);
  });

  it("the writer checks values and sizes, and leaves no partial file behind", () => {
    const path = join(root, `w${counter++}.gguf`);
    assert.throws(() => writeGguf(path, { "x.y": gv.u8(256) }, []), /metadata "x.y" must be a uint8 \(an integer in \[0, 255\]\), got 256/);
    assert.throws(
      () => writeGguf(path, {}, [{ name: "w", shape: [2, 3], type: "F32", data: new Uint8Array(20) }]),
      /tensor "w" has 20 bytes; shape \[2,3\] of F32 needs 24/,
    );
    assert.throws(() => writeGguf(path, {}, [{ name: "w", shape: [2, 3], type: "Q4_0", data: new Uint8Array(0) }]), /multiple of 32/);
    assert.throws(() => readGguf(path), /file not found/);
  });
});
