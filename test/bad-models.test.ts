import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { CpuBackend } from "../src/backend/cpu/cpu-backend.js";
import { LLM } from "../src/engine/llm.js";
import { loadGenerationDefaults } from "../src/engine/generation-config.js";
import { type LoadModelOptions, loadModel } from "../src/model/load.js";
import { writeTinyModel } from "./helpers/tiny-model.js";

const root = mkdtempSync(join(tmpdir(), "tokamak-bad-"));
const backend = new CpuBackend({ threads: 1 });
after(() => {
  backend.dispose();
  rmSync(root, { recursive: true, force: true });
});
const cli = fileURLToPath(new URL("../src/cli/main.js", import.meta.url));

// One generated model, copied for each case (generation is the slow part).
const template = join(root, "template");
writeTinyModel(template, { arch: "qwen3", dtype: "f32", numLayers: 1, seed: 1 });
let n = 0;
function freshModel(): string {
  const dir = join(root, `m${n++}`);
  cpSync(template, dir, { recursive: true });
  return dir;
}

function editConfig(dir: string, edit: (c: Record<string, unknown>) => void): void {
  const path = join(dir, "config.json");
  const c = JSON.parse(readFileSync(path, "utf8")) as Record<string, unknown>;
  edit(c);
  writeFileSync(path, JSON.stringify(c));
}

/** Rewrite a safetensors header (JSON) in place, keeping the data bytes. */
function editHeader(path: string, edit: (h: Record<string, { dtype: string; shape: number[]; data_offsets: number[] }>) => void): void {
  const buf = readFileSync(path);
  const len = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + len).toString("utf8"));
  edit(header);
  const json = Buffer.from(JSON.stringify(header));
  const out = Buffer.alloc(8);
  out.writeBigUInt64LE(BigInt(json.length));
  writeFileSync(path, Buffer.concat([out, json, buf.subarray(8 + len)]));
}

function expectLoadError(dir: string, pattern: RegExp, opts: LoadModelOptions = { maxModelLen: 64 }): void {
  const before = backend.memoryStats();
  assert.throws(() => loadModel(dir, backend, opts), pattern);
  assert.equal(backend.memoryStats().total, before.total, "a failed load must not leave allocations behind");
  // Nothing in this file loads a model on this backend, so a rising peak means the bad file got past the checks.
  assert.equal(backend.memoryStats().peak, before.peak, "a bad file must be refused before anything is allocated");
}

/** Run the CLI; a timeout, so that a regression that hangs fails the test instead of the suite. */
function runCli(args: string[]) {
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: "utf8", timeout: 60_000 });
  assert.equal(r.signal, null, `tokamak ${args[0]} did not exit by itself within 60 s: it hangs`);
  return r;
}

/** Exit status 1 and one line on stderr matching `pattern`, with no stack trace. */
function expectCliError(args: string[], pattern: RegExp): void {
  const r = runCli(args);
  assert.equal(r.status, 1, r.stderr);
  const lines = r.stderr.trim().split("\n");
  assert.match(lines.at(-1)!, pattern);
  assert.doesNotMatch(r.stderr, /\n\s+at /);
  if (args[0] === "serve") assert.equal(lines.length, 1, r.stderr);
}

function writeGenerationConfig(dir: string, g: unknown): void {
  writeFileSync(join(dir, "generation_config.json"), JSON.stringify(g));
}

describe("bad models get clear errors naming the file and what was wrong", () => {
  it("config.json: missing, unknown or absent architectures, missing keys, bad dtype", () => {
    let dir = freshModel();
    rmSync(join(dir, "config.json"));
    expectLoadError(dir, /config\.json: not found/);

    dir = freshModel();
    editConfig(dir, (c) => delete c.architectures);
    expectLoadError(dir, /config\.json: missing "architectures"/);

    dir = freshModel();
    editConfig(dir, (c) => (c.architectures = ["GPT2LMHeadModel"]));
    expectLoadError(dir, /config\.json: unsupported architecture "GPT2LMHeadModel"; supported: LlamaForCausalLM/);

    dir = freshModel();
    editConfig(dir, (c) => delete c.hidden_size);
    expectLoadError(dir, /config\.json: missing required key "hidden_size"/);

    dir = freshModel();
    editConfig(dir, (c) => (c.num_key_value_heads = 3));
    expectLoadError(dir, /num_attention_heads 4 must be a multiple of num_key_value_heads 3/);

    dir = freshModel();
    editConfig(dir, (c) => (c.torch_dtype = "float64"));
    expectLoadError(dir, /torch_dtype.*unsupported dtype "float64"/);

    dir = freshModel();
    writeFileSync(join(dir, "config.json"), "{ not json");
    expectLoadError(dir, /config\.json: not valid JSON/);
  });

  it("safetensors: unsupported dtype, missing tensor, wrong shape", () => {
    let dir = freshModel();
    editHeader(join(dir, "model.safetensors"), (h) => (h["model.norm.weight"]!.dtype = "F64"));
    expectLoadError(dir, /model\.safetensors: tensor "model\.norm\.weight" has unsupported dtype "F64"/);

    dir = freshModel();
    editHeader(join(dir, "model.safetensors"), (h) => delete h["model.layers.0.mlp.up_proj.weight"]);
    expectLoadError(dir, /tensor "model\.layers\.0\.mlp\.up_proj\.weight" is missing \(expected shape \[128,64\]\)/);

    dir = freshModel();
    editHeader(join(dir, "model.safetensors"), (h) => {
      const t = h["model.layers.0.mlp.gate_proj.weight"]!;
      t.shape = [t.shape[1]!, t.shape[0]!];
    });
    expectLoadError(dir, /tensor "model\.layers\.0\.mlp\.gate_proj\.weight" has shape \[64,128\], expected \[128,64\]/);
  });

  it("safetensors: offsets past the file, a truncated file, an absurd header length, no weights at all", () => {
    let dir = freshModel();
    editHeader(join(dir, "model.safetensors"), (h) => {
      const t = h["model.norm.weight"]!;
      t.data_offsets = [t.data_offsets[0]! + 1e9, t.data_offsets[1]! + 1e9];
    });
    expectLoadError(dir, /model\.safetensors: tensor "model\.norm\.weight": data_offsets .* run past the end of the file/);

    dir = freshModel();
    const path = join(dir, "model.safetensors");
    truncateSync(path, readFileSync(path).length - 1000);
    expectLoadError(dir, /model\.safetensors: tensor ".*": data_offsets .* truncated or corrupt/);

    dir = freshModel();
    const buf = readFileSync(join(dir, "model.safetensors"));
    buf.writeBigUInt64LE(2n ** 62n, 0);
    writeFileSync(join(dir, "model.safetensors"), buf);
    expectLoadError(dir, /model\.safetensors: header length \d+ is absurd/);

    dir = freshModel();
    rmSync(join(dir, "model.safetensors"));
    expectLoadError(dir, /no model\.safetensors or model\.safetensors\.index\.json found/);
  });

  it("safetensors: a null entry, tensors sharing bytes, every tensor at offset 0", () => {
    let dir = freshModel();
    editHeader(join(dir, "model.safetensors"), (h) => ((h as Record<string, unknown>)["model.norm.weight"] = null));
    expectLoadError(dir, /model\.safetensors: tensor "model\.norm\.weight" must be an object with dtype, shape and data_offsets, got null/);

    dir = freshModel();
    editHeader(join(dir, "model.safetensors"), (h) => {
      h["model.norm.weight"]!.data_offsets = [...h["model.layers.0.input_layernorm.weight"]!.data_offsets];
    });
    expectLoadError(
      dir,
      /model\.safetensors: tensors "model\.layers\.0\.input_layernorm\.weight" \[\d+, \d+\] and "model\.norm\.weight" \[\d+, \d+\] overlap/,
    );

    dir = freshModel();
    editHeader(join(dir, "model.safetensors"), (h) => {
      for (const [name, t] of Object.entries(h)) if (name !== "__metadata__") t.data_offsets = [0, t.data_offsets[1]! - t.data_offsets[0]!];
    });
    expectLoadError(
      dir,
      /model\.safetensors: tensors "[^"]+" \[0, \d+\] and "[^"]+" \[0, \d+\] overlap; each tensor needs its own data_offsets/,
    );
  });

  it("safetensors: model.safetensors that is a directory or a FIFO", { timeout: 120_000 }, () => {
    let dir = freshModel();
    rmSync(join(dir, "model.safetensors"));
    mkdirSync(join(dir, "model.safetensors"));
    expectLoadError(dir, /model\.safetensors: is a directory, not a regular file/);

    // Opening a FIFO blocks until a writer comes: only ever try it in a child process with a timeout.
    dir = freshModel();
    rmSync(join(dir, "model.safetensors"));
    assert.equal(spawnSync("mkfifo", [join(dir, "model.safetensors")]).status, 0, "mkfifo failed");
    expectCliError(
      ["generate", dir, "--prompt", "hi", "--max-tokens", "2"],
      /^error: .*model\.safetensors: is a FIFO \(named pipe\), not a regular file$/,
    );
  });

  it("model.safetensors.index.json: weight_map values that are not strings, a null weight_map, a null file", () => {
    const withIndex = (index: string) => {
      const dir = freshModel();
      writeFileSync(join(dir, "model.safetensors.index.json"), index);
      return dir;
    };
    expectLoadError(
      withIndex(JSON.stringify({ weight_map: { "model.norm.weight": 5 } })),
      /index\.json: weight_map\["model\.norm\.weight"\] must be a shard file name \(a string\), got 5/,
    );
    expectLoadError(
      withIndex(JSON.stringify({ weight_map: { "model.norm.weight": null } })),
      /weight_map\["model\.norm\.weight"\] .* got null/,
    );
    expectLoadError(withIndex(JSON.stringify({ weight_map: null })), /index\.json: missing "weight_map" object/);
    expectLoadError(withIndex("null"), /index\.json: missing "weight_map" object/);
  });

  it("generation_config.json: values outside the request validator's ranges, or not numbers", () => {
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ temperature: -5 }, /"temperature" must be a number >= 0, got -5/],
      [{ max_new_tokens: 0 }, /"max_new_tokens" must be an integer >= 1, got 0/],
      [{ top_p: 7 }, /"top_p" must be a number in \(0, 1\], got 7/],
      [{ top_k: -2 }, /"top_k" must be an integer >= 0 \(0 or -1 disables it\), got -2/],
      [{ min_p: 1.5 }, /"min_p" must be a number in \[0, 1\], got 1\.5/],
      [{ repetition_penalty: 0 }, /"repetition_penalty" must be a number > 0, got 0/],
      [{ temperature: "hot" }, /"temperature" must be a number >= 0, got "hot"/],
      [{ max_new_tokens: 2.5 }, /"max_new_tokens" must be an integer >= 1, got 2\.5/],
    ];
    for (const [g, pattern] of cases) {
      const dir = freshModel();
      writeGenerationConfig(dir, g);
      assert.throws(() => loadGenerationDefaults(dir), new RegExp(`generation_config\\.json: ${pattern.source}`));
    }
    // What the validator accepts still loads: -1 disables top_k, null means unset, do_sample false means greedy.
    const dir = freshModel();
    writeGenerationConfig(dir, { top_k: -1, top_p: null, do_sample: false, temperature: 0.7 });
    assert.deepEqual(loadGenerationDefaults(dir).sampling.temperature, 0);
    writeGenerationConfig(dir, null);
    assert.throws(() => loadGenerationDefaults(dir), /generation_config\.json: expected a JSON object/);
  });

  it("generation_config.json: a bad default fails engine start-up and frees the model", () => {
    const dir = freshModel();
    writeGenerationConfig(dir, { temperature: -5 });
    const own = new CpuBackend({ threads: 1 });
    try {
      assert.throws(
        () => LLM.open(dir, { maxModelLen: 64, numBlocks: 8 }, own),
        /generation_config\.json: "temperature" must be a number >= 0, got -5/,
      );
      assert.equal(own.memoryStats().total, 0, "a failed start must free the weights it loaded");
    } finally {
      own.dispose();
    }
  });

  it("config.json: absurd sizes are named by key before anything is allocated", () => {
    let dir = freshModel();
    editConfig(dir, (c) => (c.hidden_size = 1e12));
    expectLoadError(dir, /config\.json: "hidden_size" must be a positive integer at most 2147483647, got 1000000000000/);

    dir = freshModel();
    editConfig(dir, (c) => (c.hidden_size = 2 ** 20));
    expectLoadError(dir, /config\.json: "vocab_size" 151669 × "hidden_size" 1048576 make model\.embed_tokens\.weight 1\.59e\+11 elements/);

    dir = freshModel();
    editConfig(dir, (c) => (c.hidden_size = 4096));
    expectLoadError(dir, /config\.json: "hidden_size" is 4096, but model\.norm\.weight has 64 rows; the config does not match the weights/);

    dir = freshModel();
    editConfig(dir, (c) => (c.num_hidden_layers = 1e9));
    expectLoadError(dir, /config\.json: "num_hidden_layers" is 1000000000, but the weights have 1 layers/);

    dir = freshModel();
    editConfig(dir, (c) => (c.max_position_embeddings = 1e12));
    expectLoadError(dir, /config\.json: "max_position_embeddings" must be a positive integer at most 2147483647, got 1000000000000/);

    for (const w of [-5, 0, 2.5, "4096"]) {
      dir = freshModel();
      editConfig(dir, (c) => Object.assign(c, { use_sliding_window: true, sliding_window: w }));
      expectLoadError(
        dir,
        new RegExp(`config\\.json: "sliding_window" must be a positive integer at most 2147483647, got ${JSON.stringify(w)}`),
      );
    }

    dir = freshModel();
    editConfig(dir, (c) => (c.rope_scaling = { rope_type: "llama3", factor: 8, low_freq_factor: 4, high_freq_factor: 4 }));
    expectLoadError(dir, /rope_scaling\.high_freq_factor 4 must exceed low_freq_factor 4/);
  });

  it("config.json: a max_position_embeddings the KV cache or the machine cannot hold fails before the rotary tables are built", () => {
    let dir = freshModel();
    editConfig(dir, (c) => (c.max_position_embeddings = 2e7));
    expectLoadError(
      dir,
      /the KV cache holds 1048576 tokens, fewer than the max model length 20000000 \(max_position_embeddings in config\.json\)/,
      {
        kvCacheTokens: 2 ** 20,
      },
    );

    // Through the engine: the CPU's KV budget (4 GiB by default) is known before loading, so nothing is built first.
    const peak = backend.memoryStats().peak;
    assert.throws(() => LLM.open(dir, {}, backend), /the KV cache holds \d+ tokens, fewer than the max model length 20000000/);
    assert.equal(backend.memoryStats().peak, peak, "refused before any allocation");

    // Positions up to 2^31: the rotary tables alone would be hundreds of GiB.
    dir = freshModel();
    editConfig(dir, (c) => (c.max_position_embeddings = 2 ** 31 - 1));
    expectLoadError(dir, /loading needs [\d.]+ GiB \(weights .*, rotary tables [\d.]+ GiB, .*\), more than CPU .* has/, {});
  });

  it("tokamak serve exits at start-up, in one line, on a bad config.json or generation_config.json", { timeout: 180_000 }, () => {
    let dir = freshModel();
    editConfig(dir, (c) => (c.hidden_size = 1e12));
    expectCliError(
      ["serve", dir, "--port", "0"],
      /^error: .*config\.json: "hidden_size" must be a positive integer at most 2147483647, got 1000000000000$/,
    );

    dir = freshModel();
    editConfig(dir, (c) => Object.assign(c, { use_sliding_window: true, sliding_window: -5 }));
    expectCliError(["serve", dir, "--port", "0"], /^error: .*config\.json: "sliding_window" must be a positive integer/);

    dir = freshModel();
    writeGenerationConfig(dir, { max_new_tokens: 0 });
    expectCliError(
      ["serve", dir, "--port", "0", "--max-model-len", "64"],
      /^error: .*generation_config\.json: "max_new_tokens" must be an integer >= 1, got 0$/,
    );
  });

  it("the CLI reports bad input in one line, without a stack trace", () => {
    const dir = freshModel();
    editConfig(dir, (c) => (c.architectures = ["BertModel"]));
    const r = spawnSync(process.execPath, [cli, "generate", dir, "--prompt", "hi", "--max-tokens", "2"], { encoding: "utf8" });
    assert.equal(r.status, 1);
    assert.match(r.stderr, /^error: .*unsupported architecture "BertModel"/);
    assert.doesNotMatch(r.stderr, /\n\s+at /);

    const bad = spawnSync(process.execPath, [cli, "generate", dir, "--prompt", "hi", "--max-tokens", "zero"], { encoding: "utf8" });
    assert.notEqual(bad.status, 0);
    assert.match(bad.stderr, /--max-tokens must be an integer >= 1, got "zero"/);
  });
});
