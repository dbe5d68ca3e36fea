import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { EngineCore, type EngineConfig } from "../src/engine/engine-core.js";
import { resolveSamplingParams } from "../src/engine/sampling-params.js";
import { StubExecutor } from "./helpers/stub-executor.js";

interface Workload {
  config: EngineConfig;
  requests: { prompt: number[]; maxTokens: number; arrival: number; abortAt: number | null; priority: number }[];
}

const workload = fc
  .record({
    blockSize: fc.constantFrom(4, 16),
    maxModelLen: fc.integer({ min: 8, max: 96 }),
    extraBlocks: fc.integer({ min: 0, max: 40 }),
    budget: fc.integer({ min: 1, max: 200 }),
    maxNumSeqs: fc.integer({ min: 1, max: 12 }),
    caching: fc.boolean(),
    priority: fc.boolean(),
    sharedPrefix: fc.array(fc.integer({ min: 0, max: 63 }), { maxLength: 40 }),
    requests: fc.array(
      fc.record({
        prompt: fc.array(fc.integer({ min: 0, max: 63 }), { minLength: 1, maxLength: 60 }),
        usePrefix: fc.boolean(),
        maxTokens: fc.integer({ min: 1, max: 24 }),
        arrival: fc.integer({ min: 0, max: 20 }),
        abortAt: fc.option(fc.integer({ min: 0, max: 40 })),
        priority: fc.integer({ min: 0, max: 3 }),
      }),
      { minLength: 1, maxLength: 24 },
    ),
  })
  .map((w): Workload => {
    const blocksForOne = Math.ceil(w.maxModelLen / w.blockSize);
    return {
      config: {
        blockSize: w.blockSize,
        numBlocks: blocksForOne + w.extraBlocks,
        enablePrefixCaching: w.caching,
        maxNumBatchedTokens: w.budget,
        maxNumSeqs: w.maxNumSeqs,
        maxModelLen: w.maxModelLen,
        policy: w.priority ? "priority" : "fcfs",
      },
      requests: w.requests.map((r) => {
        const prompt = (r.usePrefix ? [...w.sharedPrefix, ...r.prompt] : r.prompt).slice(0, w.maxModelLen - 1);
        return { prompt, maxTokens: r.maxTokens, arrival: r.arrival, abortAt: r.abortAt, priority: r.priority };
      }),
    };
  });

/** Run a workload to completion, checking the scheduler's invariants after every step. */
async function run(w: Workload): Promise<{ outputs: Map<number, number[]>; preemptions: number; core: EngineCore }> {
  const core = new EngineCore(new StubExecutor(64), w.config, [], null);
  const outputs = new Map<number, number[]>();
  const live = new Set<number>();
  let step = 0;
  for (; step < 5000; step++) {
    w.requests.forEach((r, i) => {
      if (r.arrival !== step) return;
      core.addRequest({
        requestId: String(i),
        promptTokenIds: r.prompt,
        sampling: resolveSamplingParams({ temperature: 0, maxTokens: r.maxTokens, ignoreEos: true }),
        priority: r.priority,
      });
      outputs.set(i, []);
      live.add(i);
    });
    w.requests.forEach((r, i) => {
      if (r.abortAt === step && live.has(i)) {
        core.abort(String(i));
        live.delete(i);
        outputs.delete(i);
      }
    });
    const outs = await core.step();
    checkInvariants(core, w.config);
    for (const o of outs) {
      outputs.get(Number(o.requestId))!.push(...o.newTokenIds);
      if (o.finished) live.delete(Number(o.requestId));
    }
    if (!core.hasUnfinished && step > 20) break;
  }
  assert.ok(step < 5000, "the workload did not finish: some request never made progress");
  const pool = core.kv.pool;
  assert.equal(pool.numFreeBlocks, pool.numBlocks, "every block is back in the pool");
  assert.ok(
    pool.blocks.every((b) => b.refCount === 0),
    "no reference count is left",
  );
  assert.equal(core.kv.numOwners, 0);
  return { outputs, preemptions: core.scheduler.numPreemptions, core };
}

function checkInvariants(core: EngineCore, c: EngineConfig): void {
  const s = core.scheduler;
  assert.ok(s.running.length <= c.maxNumSeqs, `running ${s.running.length} > max_num_seqs ${c.maxNumSeqs}`);
  const owners = new Map<number, number>();
  for (const r of s.running) {
    const ids = core.kv.blockIds(r.requestId);
    assert.equal(new Set(ids).size, ids.length, `request ${r.requestId} holds a block twice`);
    assert.ok(ids.length * c.blockSize >= r.numComputedTokens, "computed tokens are covered by blocks");
    for (const id of ids) owners.set(id, (owners.get(id) ?? 0) + 1);
  }
  for (const b of core.kv.pool.blocks) {
    assert.equal(b.refCount, owners.get(b.id) ?? 0, `block ${b.id}: refCount ${b.refCount} but ${owners.get(b.id) ?? 0} owners`);
  }
}

describe("scheduler invariants (property-based, stub model)", () => {
  it("token budget, max_num_seqs, block ownership, progress, and no leaks hold for random workloads (async scheduling on and off, identical outputs)", async () => {
    await fc.assert(
      fc.asyncProperty(workload, async (w) => {
        const result = await run(w);
        const sync = await run({ ...w, config: { ...w.config, asyncScheduling: false } });
        // (A request aborted at a given step may have finished by then in one mode and not the other: compare the rest.)
        w.requests.forEach((r, i) => {
          if (r.abortAt === null)
            assert.deepEqual(result.outputs.get(i), sync.outputs.get(i), `request ${i}: async and synchronous scheduling differ`);
        });
        // Outputs equal each request run alone (the stub's logits depend on the exact tokens and positions fed).
        for (const [i, tokens] of result.outputs) {
          const alone = await run({
            config: { ...w.config, enablePrefixCaching: false },
            requests: [{ ...w.requests[i]!, arrival: 0, abortAt: null }],
          });
          assert.deepEqual(tokens, alone.outputs.get(0), `request ${i} differs from its run alone`);
        }
      }),
      { numRuns: 60, seed: 42 },
    );
  });

  it("every step respects the token budget and grants each sequence at most once", async () => {
    await fc.assert(
      fc.asyncProperty(workload, async (w) => {
        const stub = new StubExecutor(64, true);
        const core = new EngineCore(stub, w.config, [], null);
        w.requests.forEach((r, i) =>
          core.addRequest({
            requestId: String(i),
            promptTokenIds: r.prompt,
            sampling: resolveSamplingParams({ temperature: 0, maxTokens: r.maxTokens, ignoreEos: true }),
          }),
        );
        for (let i = 0; i < 3000 && core.hasUnfinished; i++) await core.step();
        assert.ok(!core.hasUnfinished);
        for (const batch of stub.batches) {
          const tokens = batch.reduce((a, s) => a + s.tokens.length, 0);
          assert.ok(tokens <= w.config.maxNumBatchedTokens, `step used ${tokens} tokens > budget ${w.config.maxNumBatchedTokens}`);
          assert.ok(batch.length <= w.config.maxNumSeqs);
          assert.ok(tokens > 0 && batch.every((s) => s.tokens.length > 0));
        }
      }),
      { numRuns: 60, seed: 7 },
    );
  });

  it("preempts under memory pressure and still finishes everything (FCFS: newest first)", async () => {
    const config: EngineConfig = {
      blockSize: 4,
      numBlocks: 12,
      enablePrefixCaching: false,
      maxNumBatchedTokens: 64,
      maxNumSeqs: 8,
      maxModelLen: 48,
      policy: "fcfs",
    };
    const requests = Array.from({ length: 8 }, (_, i) => ({
      prompt: Array.from({ length: 10 + i }, (_, j) => (i * 13 + j) % 64),
      maxTokens: 20,
      arrival: 0,
      abortAt: null,
      priority: 0,
    }));
    const r = await run({ config, requests });
    assert.ok(r.preemptions > 0, "expected preemptions with 12 blocks for 8 requests");
    for (const [i, out] of r.outputs) assert.equal(out.length, 20, `request ${i} got ${out.length} tokens`);
  });

  it("rejects a prompt that does not fit the max model length, naming both numbers", () => {
    const core = new EngineCore(
      new StubExecutor(64),
      { blockSize: 4, numBlocks: 8, enablePrefixCaching: true, maxNumBatchedTokens: 16, maxNumSeqs: 2, maxModelLen: 16, policy: "fcfs" },
      [],
      null,
    );
    assert.throws(
      () => core.addRequest({ requestId: "x", promptTokenIds: new Array(20).fill(1), sampling: resolveSamplingParams({}) }),
      /prompt has 20 tokens, but the max model length is 16/,
    );
    assert.throws(
      () => core.addRequest({ requestId: "y", promptTokenIds: [99], sampling: resolveSamplingParams({}) }),
      /token id 99 is outside the vocabulary \[0, 64\)/,
    );
    assert.equal(core.hasUnfinished, false);
  });
});
