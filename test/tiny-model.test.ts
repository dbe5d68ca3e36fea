import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { decodeFloats, denseDType } from "../src/backend/dtype.js";
import { SafetensorsCheckpoint, SafetensorsFile } from "../src/formats/safetensors.js";
import { loadConfig } from "../src/model/config.js";
import { Tokenizer } from "../src/tokenizer/tokenizer.js";
import { type TinyArch, type TinyModelOptions, TINY_VOCAB_SIZE, tinyModelParameters, writeTinyModel } from "./helpers/tiny-model.js";

const root = mkdtempSync(join(tmpdir(), "tokamak-tiny-"));
after(() => rmSync(root, { recursive: true, force: true }));

let count = 0;
function make(opts: TinyModelOptions): string {
  const dir = join(root, `m${count++}`);
  writeTinyModel(dir, opts);
  return dir;
}

function readJson(path: string): Record<string, unknown> {
  return JSON.parse(readFileSync(path, "utf8")) as Record<string, unknown>;
}

/** Every tensor name and shape a model with default sizes (hidden 64, 2 layers, 4 heads, 2 kv heads, head 16, ffn 128) must have. */
function expectedShapes(arch: TinyArch, tied: boolean): Map<string, number[]> {
  const m = new Map<string, number[]>([["model.embed_tokens.weight", [TINY_VOCAB_SIZE, 64]]]);
  for (let l = 0; l < 2; l++) {
    const p = `model.layers.${l}.`;
    m.set(`${p}self_attn.q_proj.weight`, [64, 64]).set(`${p}self_attn.k_proj.weight`, [32, 64]);
    m.set(`${p}self_attn.v_proj.weight`, [32, 64]).set(`${p}self_attn.o_proj.weight`, [64, 64]);
    if (arch === "qwen2")
      m.set(`${p}self_attn.q_proj.bias`, [64]).set(`${p}self_attn.k_proj.bias`, [32]).set(`${p}self_attn.v_proj.bias`, [32]);
    if (arch === "qwen3") m.set(`${p}self_attn.q_norm.weight`, [16]).set(`${p}self_attn.k_norm.weight`, [16]);
    m.set(`${p}mlp.gate_proj.weight`, [128, 64]).set(`${p}mlp.up_proj.weight`, [128, 64]).set(`${p}mlp.down_proj.weight`, [64, 128]);
    m.set(`${p}input_layernorm.weight`, [64]).set(`${p}post_attention_layernorm.weight`, [64]);
  }
  m.set("model.norm.weight", [64]);
  if (!tied) m.set("lm_head.weight", [TINY_VOCAB_SIZE, 64]);
  return m;
}

function tensorValues(ckpt: SafetensorsCheckpoint, name: string): Float32Array {
  const info = ckpt.get(name)!;
  const bytes = new Uint8Array(info.byteLength);
  ckpt.readInto(info, bytes);
  return decodeFloats(bytes, denseDType(info.dtype, info.name), bytes.byteLength / (info.dtype === "f32" ? 4 : 2));
}

function meanStd(v: Float32Array): [number, number] {
  let s = 0;
  let s2 = 0;
  for (const x of v) {
    s += x;
    s2 += x * x;
  }
  const mean = s / v.length;
  return [mean, Math.sqrt(s2 / v.length - mean * mean)];
}

const HF_NAMES: Record<TinyArch, string> = {
  llama: "LlamaForCausalLM",
  mistral: "MistralForCausalLM",
  qwen2: "Qwen2ForCausalLM",
  qwen3: "Qwen3ForCausalLM",
};

describe("tiny models: Hugging Face folders with random weights", () => {
  for (const arch of ["llama", "mistral", "qwen2", "qwen3"] as const) {
    for (const tied of [false, true]) {
      it(`${arch}${tied ? " (tied embeddings)" : ""}: every expected tensor, with its shape and dtype`, () => {
        const dir = make({ arch, tieWordEmbeddings: tied, seed: 1 });
        const ckpt = new SafetensorsCheckpoint(dir);
        const want = expectedShapes(arch, tied);
        assert.deepEqual([...ckpt.tensors.keys()].sort(), [...want.keys()].sort());
        for (const [name, shape] of want) {
          assert.deepEqual(ckpt.get(name)!.shape, shape, name);
          assert.equal(ckpt.get(name)!.dtype, "bf16", name);
        }
        ckpt.close();
        assert.equal(
          tinyModelParameters({ arch, tieWordEmbeddings: tied }),
          [...want.values()].reduce((s, sh) => s + sh[0]! * (sh[1] ?? 1), 0),
        );
      });
    }

    it(`${arch}: config.json as Transformers writes it, accepted by the loader`, () => {
      const dir = make({ arch, dtype: "f32", numLayers: 1 });
      const raw = readJson(join(dir, "config.json"));
      assert.deepEqual(raw.architectures, [HF_NAMES[arch]]);
      assert.equal(raw.model_type, arch);
      assert.equal(raw.torch_dtype, "float32");
      assert.equal(raw.rope_scaling, null);
      assert.equal("head_dim" in raw, arch === "qwen3", "head_dim is written for qwen3 only, unless asked for");
      if (arch === "llama") assert.equal(raw.attention_bias, false);
      if (arch === "mistral") assert.equal(raw.sliding_window, null);
      if (arch === "qwen2") assert.equal(raw.use_sliding_window, false);
      const config = loadConfig(dir);
      assert.equal(config.architecture, HF_NAMES[arch]);
      assert.equal(config.headDim, 16);
      assert.equal(config.vocabSize, TINY_VOCAB_SIZE);
      assert.equal(config.slidingWindow, null);
      assert.equal(config.qkvBias, arch === "qwen2");
      assert.equal(config.qkNorm, arch === "qwen3");
    });
  }

  it("options reach config.json: head_dim, rope scaling and theta, eps, sizes", () => {
    const llama3 = { rope_type: "llama3", factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 64 };
    const dir = make({
      arch: "llama",
      headDim: 32,
      numHeads: 2,
      numKvHeads: 1,
      ropeScaling: llama3,
      ropeTheta: 5e5,
      rmsNormEps: 1e-5,
      maxPositionEmbeddings: 512,
    });
    const raw = readJson(join(dir, "config.json"));
    assert.equal(raw.head_dim, 32);
    assert.deepEqual(raw.rope_scaling, llama3);
    const c = loadConfig(dir);
    assert.deepEqual([c.numHeads, c.numKvHeads, c.headDim, c.ropeTheta, c.rmsNormEps, c.maxPositionEmbeddings], [2, 1, 32, 5e5, 1e-5, 512]);
    assert.equal(c.ropeScaling.type, "llama3");
  });

  it("ships the Qwen3 tokenizer, every id of which has an embedding row, and matching eos ids", () => {
    const dir = make({ arch: "qwen3", numLayers: 1 });
    const tok = Tokenizer.fromDir(dir);
    assert.equal(tok.vocabSize, TINY_VOCAB_SIZE);
    assert.deepEqual(tok.eosTokenIds, [151645, 151643]);
    assert.deepEqual(loadConfig(dir).eosTokenIds, [151645]);
  });

  it("writes f32, f16 and bf16", () => {
    for (const dtype of ["f32", "f16", "bf16"] as const) {
      const ckpt = new SafetensorsCheckpoint(make({ arch: "qwen2", dtype, numLayers: 1 }));
      assert.ok([...ckpt.tensors.values()].every((t) => t.dtype === dtype));
      ckpt.close();
    }
  });

  it("scales weights so every layer matters and logits are far from ties", () => {
    const ckpt = new SafetensorsCheckpoint(make({ arch: "qwen3", dtype: "f32", seed: 3 }));
    const near = (got: number, want: number, what: string) =>
      assert.ok(Math.abs(got - want) < 0.05 * Math.abs(want) + 0.01, `${what}: ${got} vs ${want}`);
    near(meanStd(tensorValues(ckpt, "lm_head.weight"))[1], 9 / 8, "lm_head std");
    near(meanStd(tensorValues(ckpt, "model.embed_tokens.weight"))[1], 9 / 8, "embedding std");
    near(meanStd(tensorValues(ckpt, "model.layers.0.self_attn.q_proj.weight"))[1], 1 / 8, "q_proj std");
    near(meanStd(tensorValues(ckpt, "model.layers.0.mlp.down_proj.weight"))[1], 2 / Math.sqrt(128), "down_proj std");
    const [mean, std] = meanStd(tensorValues(ckpt, "model.layers.1.post_attention_layernorm.weight"));
    assert.ok(Math.abs(mean - 1) < 0.05 && std > 0.05 && std < 0.15, `norm weights ${mean} ± ${std}`);
    ckpt.close();
  });
});

describe("tiny models: sharding and determinism", () => {
  it("sharded output has a valid index: named shards, every tensor in exactly one, total_size right", () => {
    const dir = make({ arch: "qwen2", shards: 3, seed: 5 });
    const shards = readdirSync(dir).filter((f) => f.endsWith(".safetensors"));
    assert.deepEqual(shards.sort(), [
      "model-00001-of-00003.safetensors",
      "model-00002-of-00003.safetensors",
      "model-00003-of-00003.safetensors",
    ]);
    assert.ok(!existsSync(join(dir, "model.safetensors")));
    const index = readJson(join(dir, "model.safetensors.index.json")) as {
      metadata: { total_size: number };
      weight_map: Record<string, string>;
    };
    let total = 0;
    const seen = new Set<string>();
    for (const shard of shards) {
      const file = SafetensorsFile.open(join(dir, shard));
      assert.ok(file.tensors.size > 0, `${shard} is empty`);
      assert.equal(file.metadata.format, "pt");
      for (const [name, info] of file.tensors) {
        assert.equal(index.weight_map[name], shard, `${name} is in ${shard}`);
        assert.ok(!seen.has(name), `${name} is in two shards`);
        seen.add(name);
        total += info.byteLength;
      }
      file.close();
    }
    assert.deepEqual([...seen].sort(), Object.keys(index.weight_map).sort());
    assert.equal(index.metadata.total_size, total);
  });

  it("a sharded model holds the same tensors, byte for byte, as the single-file one", () => {
    const single = new SafetensorsCheckpoint(make({ arch: "llama", seed: 9, numLayers: 1 }));
    const sharded = new SafetensorsCheckpoint(make({ arch: "llama", seed: 9, numLayers: 1, shards: 4 }));
    assert.deepEqual([...sharded.tensors.keys()].sort(), [...single.tensors.keys()].sort());
    for (const name of single.tensors.keys()) assert.deepEqual(tensorValues(sharded, name), tensorValues(single, name), name);
    single.close();
    sharded.close();
  });

  it("the same seed gives identical files; another seed, other weights", () => {
    const opts: TinyModelOptions = { arch: "qwen3", seed: 42, numLayers: 1, shards: 2 };
    const [a, b, c] = [make(opts), make(opts), make({ ...opts, seed: 43 })];
    for (const file of readdirSync(a)) assert.ok(readFileSync(join(a, file)).equals(readFileSync(join(b, file))), `${file} differs`);
    const shard = "model-00002-of-00002.safetensors";
    assert.ok(!readFileSync(join(a, shard)).equals(readFileSync(join(c, shard))));
  });

  it("refuses more shards than tensors, and unknown architectures", () => {
    assert.throws(() => make({ arch: "qwen3", numLayers: 1, shards: 100 }), /100 shards requested but the model has only \d+ tensors/);
    assert.throws(() => make({ arch: "gpt2" as TinyArch }), /unknown arch "gpt2"/);
  });
});
