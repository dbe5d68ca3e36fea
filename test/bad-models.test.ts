import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { cpSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { CpuBackend } from "../src/backend/cpu/cpu-backend.js";
import { loadModel } from "../src/model/load.js";
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

function expectLoadError(dir: string, pattern: RegExp): void {
  const before = backend.memoryStats().total;
  assert.throws(() => loadModel(dir, backend, { maxModelLen: 64 }), pattern);
  assert.equal(backend.memoryStats().total, before, "a failed load must not leave allocations behind");
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
