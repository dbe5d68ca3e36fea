/**
 * The engine over a real model (tiny, random weights, real files): batching,
 * preemption and prefix caching must never change what a request generates.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { CpuBackend } from "../src/backend/cpu/cpu-backend.js";
import type { RequestOutput } from "../src/engine/engine-core.js";
import { type EngineOptions, LLM } from "../src/engine/llm.js";
import { resolveSamplingParams, type SamplingParams } from "../src/engine/sampling-params.js";
import { seeded as rng } from "./helpers/random.js";
import { writeTinyModel } from "./helpers/tiny-model.js";

const VOCAB = 512;
const root = mkdtempSync(join(tmpdir(), "tokamak-engine-"));
const modelDir = join(root, "qwen3");
const backend = new CpuBackend({ threads: 2 });

before(() => writeTinyModel(modelDir, { arch: "qwen3", dtype: "f32", vocabSize: VOCAB, hiddenSize: 64, numLayers: 2, seed: 7 }));
after(() => {
  backend.dispose();
  rmSync(root, { recursive: true, force: true });
});

interface Job {
  id: string;
  prompt: number[];
  arrival: number;
  sampling: Partial<SamplingParams>;
}

function workload(count: number, seed: number, opts: { prefix?: number[]; maxPrompt?: number; maxOut?: number } = {}): Job[] {
  const r = rng(seed);
  const int = (lo: number, hi: number) => lo + Math.floor(r() * (hi - lo + 1));
  return Array.from({ length: count }, (_, i) => ({
    id: `req-${i}`,
    prompt: [...(opts.prefix ?? []), ...Array.from({ length: int(1, opts.maxPrompt ?? 70) }, () => int(0, VOCAB - 1))],
    arrival: int(0, 40),
    sampling: { temperature: 0, maxTokens: int(1, opts.maxOut ?? 24), ignoreEos: true },
  }));
}

interface Finished {
  tokens: number[];
  finishReason: string | null;
  count: number;
}

/** Drive the core step by step, adding each job at its arrival step; returns each request's tokens and checks invariants on the way. */
async function run(llm: LLM, jobs: readonly Job[], opts: { abortAt?: Map<string, number> } = {}): Promise<Map<string, Finished>> {
  const core = llm.core;
  const out = new Map<string, Finished>();
  const pending = [...jobs].sort((a, b) => a.arrival - b.arrival);
  for (let step = 0; pending.length > 0 || core.hasUnfinished; step++) {
    while (pending.length > 0 && pending[0]!.arrival <= step) {
      const j = pending.shift()!;
      core.addRequest({ requestId: j.id, promptTokenIds: j.prompt, sampling: resolveSamplingParams(j.sampling) });
      out.set(j.id, { tokens: [], finishReason: null, count: 0 });
    }
    for (const [id, at] of opts.abortAt ?? []) if (at === step) core.abort(id);
    const outputs: RequestOutput[] = await core.step();
    for (const o of outputs) {
      const f = out.get(o.requestId)!;
      assert.equal(f.finishReason, null, `${o.requestId} produced a token after it finished`);
      f.tokens.push(...o.newTokenIds);
      if (o.finished) {
        f.finishReason = o.finishReason;
        f.count++;
      }
    }
    assert.ok(step < 20000, "the engine did not drain");
  }
  return out;
}

function open(opts: EngineOptions = {}): LLM {
  return LLM.open(modelDir, { maxModelLen: 160, numBlocks: 256, ...opts }, backend);
}

/** Each job alone, on a fresh engine with no cache to share. */
async function alone(jobs: readonly Job[]): Promise<Map<string, number[]>> {
  const llm = open({ enablePrefixCaching: false, asyncScheduling: false });
  try {
    const res = new Map<string, number[]>();
    for (const j of jobs) res.set(j.id, (await run(llm, [{ ...j, arrival: 0 }])).get(j.id)!.tokens);
    return res;
  } finally {
    llm.close();
  }
}

function assertAllFinishedOnce(jobs: readonly Job[], res: Map<string, Finished>): void {
  assert.equal(res.size, jobs.length);
  for (const j of jobs) {
    const f = res.get(j.id)!;
    assert.equal(f.count, 1, `${j.id} finished ${f.count} times`);
    assert.equal(f.finishReason, "length");
    assert.equal(f.tokens.length, j.sampling.maxTokens, `${j.id}: wrong number of tokens`);
  }
}

describe("engine on a real model", () => {
  const jobs = workload(56, 1);
  let reference: Map<string, number[]>;
  before(async () => {
    reference = await alone(jobs);
  });

  for (const asyncScheduling of [true, false]) {
    const mode = asyncScheduling ? "async scheduling" : "synchronous scheduling";
    it(`${mode}: batch invariance: 56 requests arriving at random steps generate what each generates alone`, async () => {
      const llm = open({ maxNumBatchedTokens: 96, maxNumSeqs: 16, asyncScheduling });
      try {
        const res = await run(llm, jobs);
        assertAllFinishedOnce(jobs, res);
        for (const j of jobs) assert.deepEqual(res.get(j.id)!.tokens, reference.get(j.id), `${j.id} differs when batched`);
        const s = llm.core.stats();
        assert.ok(
          s.steps < jobs.reduce((n, j) => n + j.sampling.maxTokens!, 0) / 4,
          `batching should need far fewer steps, took ${s.steps}`,
        );
        assert.equal(s.numFreeBlocks, s.numBlocks, "every block is free once all requests end");
        // The persistent batch: one packed input upload per step; block-table entries go up once each (again only when
        // a row moves or re-enters), never the whole table per step.
        const u = llm.runner.uploads;
        assert.equal(u.steps, s.steps);
        const tableWrites = u.writes - u.steps;
        const blocksHeld = jobs.reduce((n, j) => n + Math.ceil((j.prompt.length + j.sampling.maxTokens!) / 16), 0);
        assert.ok(tableWrites <= 1.5 * blocksHeld, `${tableWrites} block-table writes for ${blocksHeld} blocks held`);
      } finally {
        llm.close();
      }
    });

    it(`${mode}: preemption invariance: a KV pool of 10 blocks preempts many times and changes nothing`, async () => {
      const llm = open({ numBlocks: 10, maxNumBatchedTokens: 64, maxNumSeqs: 8, asyncScheduling });
      try {
        const res = await run(llm, jobs);
        assertAllFinishedOnce(jobs, res);
        for (const j of jobs) assert.deepEqual(res.get(j.id)!.tokens, reference.get(j.id), `${j.id} differs after preemption`);
        const s = llm.core.stats();
        assert.ok(s.numPreemptions >= 10, `expected many preemptions, saw ${s.numPreemptions}`);
        assert.equal(s.numFreeBlocks, s.numBlocks);
      } finally {
        llm.close();
      }
    });
  }

  it("seeded sampling gives the same tokens with async scheduling on and off, batched and preempted", async () => {
    const sampled = jobs.slice(0, 24).map((j, i) => ({ ...j, sampling: { ...j.sampling, temperature: 0.9, topP: 0.9, seed: 1000 + i } }));
    const outs: Map<string, Finished>[] = [];
    for (const asyncScheduling of [false, true]) {
      for (const numBlocks of [256, 10]) {
        const llm = open({ numBlocks, maxNumBatchedTokens: 64, maxNumSeqs: 8, asyncScheduling });
        try {
          outs.push(await run(llm, sampled));
        } finally {
          llm.close();
        }
      }
    }
    for (const j of sampled) for (const o of outs.slice(1)) assert.deepEqual(o.get(j.id)!.tokens, outs[0]!.get(j.id)!.tokens, j.id);
  });

  it("prefix caching: a shared 80-token system prompt is reused, and outputs equal those without caching", async () => {
    const system = workload(1, 99, { maxPrompt: 1 })[0]!.prompt.concat(Array.from({ length: 79 }, (_, i) => (i * 37 + 5) % VOCAB));
    const shared = workload(12, 2, { prefix: system, maxPrompt: 20, maxOut: 8 });
    const results: Map<string, Finished>[] = [];
    const stats = [];
    for (const enablePrefixCaching of [true, false]) {
      const llm = open({ enablePrefixCaching });
      try {
        results.push(await run(llm, shared));
        stats.push(llm.core.stats());
      } finally {
        llm.close();
      }
    }
    for (const j of shared)
      assert.deepEqual(results[0]!.get(j.id)!.tokens, results[1]!.get(j.id)!.tokens, `${j.id}: caching changed the output`);
    const [on, off] = stats;
    // 80 shared tokens = 5 full blocks of 16; every request after the first finds them.
    assert.ok(on!.prefixCacheHits >= 11 * 80, `expected ≥ ${11 * 80} hit tokens, saw ${on!.prefixCacheHits}`);
    assert.ok(on!.promptTokens <= off!.promptTokens - 11 * 80, "cached tokens must not be computed again");
    assert.equal(off!.prefixCacheHits, 0);
    assert.equal(off!.prefixCacheQueries, 0);
  });

  it("aborts, in the queue or mid-generation, return every block the same step and lose no other request", async () => {
    const llm = open({ numBlocks: 24, maxNumSeqs: 8 });
    try {
      const many = workload(24, 5, { maxOut: 30 });
      const abortAt = new Map(many.filter((_, i) => i % 3 === 0).map((j, k) => [j.id, j.arrival + (k % 4) * 3] as const));
      const res = await run(llm, many, { abortAt });
      for (const j of many) {
        const f = res.get(j.id)!;
        if (abortAt.has(j.id)) {
          assert.ok(f.count === 0 || f.tokens.length === j.sampling.maxTokens, `${j.id} was aborted but reported as finished early`);
        } else {
          assert.equal(f.count, 1, `${j.id} lost`);
          assert.equal(f.tokens.length, j.sampling.maxTokens);
        }
      }
      const s = llm.core.stats();
      assert.equal(s.numRunning + s.numWaiting, 0);
      assert.equal(s.numFreeBlocks, s.numBlocks, "aborted requests leaked blocks");
      assert.equal(llm.core.kv.numOwners, 0);
      assert.ok(s.numPreemptions > 0, "the mix should include preempted requests");
      assert.deepEqual(
        llm.core.kv.pool.blocks.filter((b) => b.refCount !== 0).map((b) => b.id),
        [],
        "every reference count is back to zero",
      );
    } finally {
      llm.close();
    }
  });

  it("abort frees the request's blocks immediately", async () => {
    const llm = open();
    try {
      const core = llm.core;
      core.addRequest({
        requestId: "a",
        promptTokenIds: Array.from({ length: 50 }, (_, i) => i),
        sampling: resolveSamplingParams({ maxTokens: 50 }),
      });
      await core.step();
      assert.ok(core.stats().numFreeBlocks < core.stats().numBlocks);
      assert.equal(core.abort("a"), true);
      assert.equal(core.stats().numFreeBlocks, core.stats().numBlocks);
      assert.equal(core.abort("a"), false, "a second abort is a no-op");
      assert.equal(core.hasUnfinished, false);
    } finally {
      llm.close();
    }
  });

  it("seeded sampling and n > 1: each completion is reproducible whatever else is in the batch, and shares the prompt's blocks", async () => {
    const prompt = Array.from({ length: 64 }, (_, i) => (i * 11 + 3) % VOCAB);
    const sampling = { temperature: 1.5, topP: 0.95, seed: 42, maxTokens: 12, ignoreEos: true };
    const llm = open();
    try {
      const n3 = (await llm.generate([prompt], { ...sampling, n: 3 }))[0]!;
      assert.equal(n3.outputs.length, 3);
      assert.ok(llm.core.stats().prefixCacheHits >= 2 * 48, "the n completions share the prompt's full blocks");
      // Alone, with seed 42 + i, each completion comes back token for token, here in a batch of noise.
      const noise = workload(10, 5).map((j) => j.prompt);
      for (let i = 0; i < 3; i++) {
        const batch = await llm.generate([...noise, prompt], { ...sampling, seed: 42 + i });
        assert.deepEqual(batch[noise.length]!.outputs[0]!.tokenIds, n3.outputs[i]!.tokenIds, `completion ${i} is not reproducible`);
      }
      const distinct = new Set(n3.outputs.map((o) => o.tokenIds.join(",")));
      assert.equal(distinct.size, 3, "different seeds should give different completions at temperature 1.5");
    } finally {
      llm.close();
    }
  });

  it("rejects a prompt longer than the max model length, naming both numbers, and keeps serving", async () => {
    const llm = open();
    try {
      await assert.rejects(
        () => llm.generate([Array.from({ length: 200 }, () => 1)], { maxTokens: 4 }),
        (e: Error) => /200/.test(e.message) && /160/.test(e.message),
      );
      assert.equal(llm.core.hasUnfinished, false);
      const ok = await llm.generate([[1, 2, 3]], { maxTokens: 4, temperature: 0, ignoreEos: true });
      assert.equal(ok[0]!.outputs[0]!.tokenIds.length, 4);
    } finally {
      llm.close();
    }
  });
});
