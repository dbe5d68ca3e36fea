/**
 * `--device auto|cpu|cuda` from the command line to the backend, and the GPU's KV-cache
 * budget rule (vLLM's: utilization × device memory − what the loaded model holds). Where no
 * GPU is usable, auto must pick the CPU and say why, and cuda must fail in one clear line.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import type { MemoryReport } from "../src/backend/allocator.js";
import type { Backend } from "../src/backend/backend.js";
import {
  createBackend,
  createBackendAsync,
  cudaActivationDType,
  describeSelection,
  parseDeviceRequest,
} from "../src/backend/create-backend.js";
import { DeviceUnavailableError, probeCuda } from "../src/backend/cuda/device.js";
import { probeWebGpu } from "../src/backend/webgpu/node-gpu.js";
import { DEFAULT_KV_CACHE_MEMORY, kvCacheBudget, LLM } from "../src/engine/llm.js";
import { writeTinyModel } from "./helpers/tiny-model.js";

const root = mkdtempSync(join(tmpdir(), "tokamak-device-"));
after(() => rmSync(root, { recursive: true, force: true }));
const cli = join(import.meta.dirname, "..", "src", "cli", "main.js");
const cuda = probeCuda();

describe("--device", () => {
  it("accepts auto, cpu, cuda and webgpu and names the choices otherwise", () => {
    assert.equal(parseDeviceRequest("cuda"), "cuda");
    assert.equal(parseDeviceRequest("webgpu"), "webgpu");
    assert.throws(() => parseDeviceRequest("gpu"), /--device must be one of auto, cpu, cuda, webgpu, got "gpu"/);
  });

  it("webgpu opens asynchronously and names the adapter; auto never picks a software adapter", async (t) => {
    assert.throws(() => createBackend({ device: "webgpu" }), /--device webgpu is opened asynchronously: use createBackendAsync/);
    const probe = await probeWebGpu(true);
    if (probe.kind !== "webgpu") return t.skip(`no WebGPU adapter: ${probe.reason}`);
    const gpu = await createBackendAsync({ device: "webgpu" });
    try {
      assert.equal(gpu.backend.name, "webgpu");
      assert.match(describeSelection("webgpu", gpu.selection), /^device webgpu picked webgpu: .+ \(--device webgpu was requested\)$/);
    } finally {
      gpu.backend.dispose();
    }
    if (cuda.kind === "cuda") return;
    const auto = await createBackendAsync({ device: "auto", threads: 1 });
    try {
      if (probe.adapter.isSoftware) {
        assert.equal(auto.backend.name, "cpu");
        assert.match(
          auto.selection.reason,
          /the only WebGPU adapter is a software one \(.+\); ask for it with --device webgpu|no GPU render node \(\/dev\/dri\/renderD\*\) for a hardware WebGPU adapter/,
        );
      } else assert.equal(auto.backend.name, "webgpu");
    } finally {
      auto.backend.dispose();
    }
  });

  it("cpu gives the CPU backend; auto gives CUDA only when the probe says it works, and says why", () => {
    const cpu = createBackend({ device: "cpu", threads: 1 });
    assert.equal(cpu.backend.name, "cpu");
    cpu.backend.dispose();
    const auto = createBackend({ device: "auto", threads: 1 });
    try {
      assert.equal(auto.backend.name, cuda.kind);
      assert.match(describeSelection("auto", auto.selection), new RegExp(`^device auto picked ${cuda.kind}: .+`));
    } finally {
      auto.backend.dispose();
    }
  });

  it("cuda without a usable GPU fails with the first missing piece", { skip: cuda.kind === "cuda" && "CUDA is usable here" }, () => {
    assert.throws(
      () => createBackend({ device: "cuda" }),
      (e: unknown) => e instanceof DeviceUnavailableError && e.message.includes(cuda.reason),
    );
  });

  it("CUDA computes in --dtype, else the model's torch_dtype, else bf16; and refuses the rest", () => {
    assert.equal(cudaActivationDType({}), "bf16");
    assert.equal(cudaActivationDType({ modelDType: "f16" }), "f16");
    assert.equal(cudaActivationDType({ dtype: "f32", modelDType: "bf16" }), "f32");
    assert.throws(
      () => cudaActivationDType({ dtype: "i32" as "f32" }),
      /--dtype i32 cannot be computed in on CUDA; expected bfloat16, float16 or float32/,
    );
  });

  it("the CLI prints which device it picked, or one error line for an unusable one", () => {
    const dir = join(root, "m");
    writeTinyModel(dir, { arch: "llama", dtype: "bf16", hiddenSize: 64, numLayers: 1 });
    const ok = spawnSync(process.execPath, [cli, "generate", dir, "--prompt", "hi", "--max-tokens", "2", "--device", "cpu"], {
      encoding: "utf8",
    });
    assert.equal(ok.status, 0, ok.stderr);
    assert.match(ok.stderr, /^device cpu picked cpu: --device cpu was requested/);
    if (cuda.kind === "cuda") return;
    const bad = spawnSync(process.execPath, [cli, "generate", dir, "--prompt", "hi", "--device", "cuda"], { encoding: "utf8" });
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /^error: --device cuda was requested but CUDA cannot be used: /);
    assert.doesNotMatch(bad.stderr, /\n\s+at /);
  });

  it("an LLM made without a backend remembers the selection", () => {
    const dir = join(root, "m2");
    writeTinyModel(dir, { arch: "qwen3", dtype: "bf16", vocabSize: 2048, hiddenSize: 64, numLayers: 1 });
    const llm = LLM.open(dir, { device: "cpu", threads: 1, maxModelLen: 64, kvCacheMemory: 2 ** 20 });
    try {
      assert.equal(llm.deviceSelection?.kind, "cpu");
    } finally {
      llm.close();
    }
  });
});

/** Only the two members kvCacheBudget reads: a GPU's memory figures without a GPU. */
function gpuLike(totalBytes: number, freeBytes: number, heldBytes: number): Backend {
  const report: MemoryReport = {
    stats: {
      byTag: { weights: heldBytes, "kv-cache": 0, activations: 0, workspace: 0, other: 0 },
      total: heldBytes,
      peak: heldBytes,
      allocations: 1,
    },
    allocations: [],
    device: { name: "gpu", totalBytes, freeBytes },
  };
  return {
    name: "cuda",
    capabilities: { hostMemory: false, anyWeightDType: false, threads: 1 },
    memoryReport: () => report,
  } as unknown as Backend;
}

describe("KV-cache budget", () => {
  const GiB = 2 ** 30;
  it("CPU: --kv-cache-memory or 4 GiB", () => {
    const cpu = { name: "cpu", capabilities: { hostMemory: true, anyWeightDType: true, threads: 1 } } as Backend;
    assert.equal(kvCacheBudget(cpu, {}), DEFAULT_KV_CACHE_MEMORY);
    assert.equal(kvCacheBudget(cpu, { kvCacheMemory: GiB }), GiB);
  });

  it("GPU: utilization × total − what the model holds, never past what is free", () => {
    assert.equal(kvCacheBudget(gpuLike(80 * GiB, 70 * GiB, 10 * GiB), { gpuMemoryUtilization: 0.9 }), 80 * GiB * 0.9 - 10 * GiB);
    assert.equal(kvCacheBudget(gpuLike(80 * GiB, 70 * GiB, 10 * GiB), {}), 80 * GiB * 0.9 - 10 * GiB);
    // Another process holds 40 GiB: the fraction would plan 62 GiB, only 30 are free.
    assert.equal(kvCacheBudget(gpuLike(80 * GiB, 30 * GiB, 10 * GiB), { gpuMemoryUtilization: 0.9 }), 30 * GiB - 256 * 2 ** 20);
    assert.equal(kvCacheBudget(gpuLike(80 * GiB, 70 * GiB, 10 * GiB), { kvCacheMemory: GiB }), GiB);
  });

  it("GPU: a model that leaves nothing for the cache gets an error with both numbers", () => {
    assert.throws(
      () => kvCacheBudget(gpuLike(16 * GiB, 1 * GiB, 15 * GiB), { gpuMemoryUtilization: 0.5 }),
      /no memory left for the KV cache: --gpu-memory-utilization 0.5 of 17179869184 bytes is 8589934592, and the model already holds 16106127360/,
    );
  });
});
