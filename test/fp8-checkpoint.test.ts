/**
 * Hugging Face FP8 checkpoints (quantization_config.quant_method "fp8": F8_E4M3 weights with a
 * weight_scale per tensor or per output channel, as llm-compressor writes them) load as they are,
 * and `--quantization fp8` of the bf16 original gives the same bytes and scales, hence the same
 * logits bit for bit.
 */
import assert from "node:assert/strict";
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { CpuBackend } from "../src/backend/cpu/cpu-backend.js";
import { decodeFloats, denseDType } from "../src/backend/dtype.js";
import { Generator } from "../src/engine/generator.js";
import { SafetensorsCheckpoint, type TensorToWrite, writeSafetensors } from "../src/formats/safetensors.js";
import { quantizeFp8PerChannel } from "../src/quant/fp8.js";
import { klDivergence } from "./helpers/llama-cpp-compare.js";
import { writeTinyModel } from "./helpers/tiny-model.js";

const root = mkdtempSync(join(tmpdir(), "tokamak-fp8-"));
const backend = new CpuBackend({ threads: 2 });
after(() => {
  backend.dispose();
  rmSync(root, { recursive: true, force: true });
});

const PROJ = /\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)\.weight$/;

/** The bf16 model in `src` rewritten as an FP8 checkpoint: per-channel ([rows, 1]) or per-tensor ([]) f32 scales. */
function fp8Checkpoint(src: string, dst: string, scheme: "channel" | "tensor" | "block"): void {
  mkdirSync(dst, { recursive: true });
  for (const f of readdirSync(src)) if (!f.endsWith(".safetensors")) copyFileSync(join(src, f), join(dst, f));
  const config = JSON.parse(readFileSync(join(src, "config.json"), "utf8")) as Record<string, unknown>;
  config.quantization_config = {
    quant_method: "fp8",
    activation_scheme: "dynamic",
    ...(scheme === "block" ? { weight_block_size: [128, 128] } : {}),
  };
  writeFileSync(join(dst, "config.json"), JSON.stringify(config));
  const ckpt = new SafetensorsCheckpoint(src);
  const out: TensorToWrite[] = [];
  for (const info of ckpt.tensors.values()) {
    const bytes = new Uint8Array(info.byteLength);
    ckpt.readInto(info, bytes);
    if (!PROJ.test(info.name)) {
      out.push({ name: info.name, dtype: info.dtype, shape: info.shape, data: bytes });
      continue;
    }
    const [rows, cols] = info.shape as [number, number];
    const values = decodeFloats(bytes, denseDType(info.dtype, info.name), rows * cols);
    if (scheme === "tensor") {
      // One scale for the tensor: the per-channel quantizer over the tensor seen as one long row.
      const q = quantizeFp8PerChannel(values, 1, rows * cols);
      out.push({ name: info.name, dtype: "fp8_e4m3", shape: info.shape, data: q.data });
      out.push({ name: info.name.replace(/weight$/, "weight_scale"), dtype: "f32", shape: [], data: new Uint8Array(q.scales.buffer) });
    } else {
      const q = quantizeFp8PerChannel(values, rows, cols);
      out.push({ name: info.name, dtype: "fp8_e4m3", shape: info.shape, data: q.data });
      const scaleName = info.name.replace(/weight$/, scheme === "block" ? "weight_scale_inv" : "weight_scale");
      out.push({ name: scaleName, dtype: "f32", shape: [rows, 1], data: new Uint8Array(q.scales.buffer) });
    }
  }
  ckpt.close();
  writeSafetensors(join(dst, "model.safetensors"), out);
}

const PROMPT = Array.from({ length: 12 }, (_, i) => (i * 577 + 3) % 1024);

function logits(path: string, opts: { quantization?: "fp8" } = {}): Float32Array[] {
  const gen = Generator.open(path, backend, { maxModelLen: 64, ...opts });
  try {
    return gen.generate(PROMPT, { maxTokens: 8, returnLogits: true }).logits!;
  } finally {
    gen.close();
  }
}

describe("Hugging Face FP8 checkpoints", () => {
  const bf16 = join(root, "bf16");
  writeTinyModel(bf16, { arch: "qwen3", dtype: "bf16", vocabSize: 1024, hiddenSize: 128, intermediateSize: 256, numLayers: 2, seed: 4 });

  it("per-channel weight_scale: the same logits as --quantization fp8 of the bf16 model, bit for bit", () => {
    const dir = join(root, "fp8-channel");
    fp8Checkpoint(bf16, dir, "channel");
    const served = logits(dir);
    const quantized = logits(bf16, { quantization: "fp8" });
    assert.equal(served.length, 8);
    served.forEach((row, i) => assert.deepEqual(row, quantized[i], `step ${i}`));
  });

  it("per-tensor weight_scale: loads as is, close to bf16", () => {
    const dir = join(root, "fp8-tensor");
    fp8Checkpoint(bf16, dir, "tensor");
    // The first step only: after it each model follows its own greedy path.
    const served = logits(dir)[0]!;
    const reference = logits(bf16)[0]!;
    const perChannel = logits(bf16, { quantization: "fp8" })[0]!;
    const kl = klDivergence(reference, served);
    assert.ok(kl < 0.1, `KL(bf16 ‖ fp8 per tensor) ${kl}`);
    assert.ok(klDivergence(reference, perChannel) < 0.1, "per channel");
  });

  it("block-wise scales (weight_scale_inv) are refused, naming the tensor", () => {
    const dir = join(root, "fp8-block");
    fp8Checkpoint(bf16, dir, "block");
    assert.throws(() => Generator.open(dir, backend, { maxModelLen: 64 }), /q_proj\.weight" has block-wise FP8 scales \(weight_scale_inv/);
  });
});
