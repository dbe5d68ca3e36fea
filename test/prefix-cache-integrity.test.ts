/**
 * The prefix cache never serves KV that was not computed. The executor here
 * keeps a token in every KV slot it writes and derives its logits from the
 * slots it reads, so a block served without having been written (a revoked
 * grant, a failed step) changes what a request generates. Every finished
 * request is checked against the tokens a correct cache must give.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { EngineCore, type EngineConfig, StepFailedError } from "../src/engine/engine-core.js";
import { HostLogitsExecutor } from "../src/engine/host-logits-executor.js";
import { KVCacheManager } from "../src/engine/kv-cache-manager.js";
import type { ScheduledSequence } from "../src/engine/step.js";
import { resolveSamplingParams } from "../src/engine/sampling-params.js";
import { seeded as rng } from "./helpers/random.js";

const VOCAB = 97;
const BLOCK = 4;
const GARBAGE = -7;

/** The next token of a context, as a correct forward pass over it would give. */
function step(digest: number, token: number, pos: number): number {
  return (Math.imul(digest ^ (token + 1), 0x9e3779b1) + pos * 0x85ebca6b) >>> 0;
}
const next = (digest: number) => digest % VOCAB;

/** Greedy continuation of `prompt` with an always-correct KV cache. */
function expected(prompt: readonly number[], maxTokens: number): number[] {
  let d = 0;
  const all = [...prompt];
  prompt.forEach((t, p) => (d = step(d, t, p)));
  const out: number[] = [];
  while (out.length < maxTokens) {
    const t = next(d);
    out.push(t);
    d = step(d, t, all.length);
    all.push(t);
  }
  return out;
}

/** A model whose output depends on every KV slot it reads. `failWhen` makes a step write garbage and throw. */
class KvCheckingExecutor extends HostLogitsExecutor {
  readonly vocabSize = VOCAB;
  private slots = new Map<number, number>();
  failWhen: () => boolean = () => false;
  failures = 0;

  protected forward(seqs: readonly ScheduledSequence[]): Float32Array {
    if (this.failWhen()) {
      // A step that dies half-way: some of its KV is written, none of it right.
      for (const s of seqs) s.tokens.forEach((_, j) => this.slots.set(this.slot(s, s.numCached + j), GARBAGE));
      this.failures++;
      throw new Error("injected step failure");
    }
    const rows: number[] = [];
    for (const s of seqs) {
      let d = 0;
      for (let p = 0; p < s.numCached; p++) d = step(d, this.slots.get(this.slot(s, p)) ?? GARBAGE, p);
      s.tokens.forEach((t, j) => {
        this.slots.set(this.slot(s, s.numCached + j), t);
        d = step(d, t, s.numCached + j);
      });
      if (s.sample) rows.push(next(d));
    }
    const logits = new Float32Array(rows.length * VOCAB);
    rows.forEach((t, i) => (logits[i * VOCAB + t] = 1));
    return logits;
  }

  private slot(s: ScheduledSequence, pos: number): number {
    return s.blocks[Math.floor(pos / BLOCK)]! * BLOCK + (pos % BLOCK);
  }
}

interface Outcome {
  checked: number;
  hits: number;
  preemptions: number;
  failures: number;
}

/** Random arrivals over shared prefixes, random priorities and aborts, a small cache; every finished request is checked. */
async function fuzz(seed: number, opts: { policy: "fcfs" | "priority"; failRate: number; asyncScheduling: boolean }): Promise<Outcome> {
  const r = rng(seed);
  const int = (lo: number, hi: number) => lo + Math.floor(r() * (hi - lo + 1));
  const config: EngineConfig = {
    blockSize: BLOCK,
    numBlocks: 16,
    enablePrefixCaching: true,
    maxNumBatchedTokens: 12,
    maxNumSeqs: 6,
    maxModelLen: 64,
    policy: opts.policy,
    asyncScheduling: opts.asyncScheduling,
  };
  const exec = new KvCheckingExecutor();
  exec.failWhen = () => r() < opts.failRate;
  const core = new EngineCore(exec, config, []);
  const prefixes = Array.from({ length: 3 }, () => Array.from({ length: int(4, 20) }, () => int(0, VOCAB - 1)));
  const jobs = new Map<string, { prompt: number[]; maxTokens: number; out: number[] }>();
  const aborted = new Set<string>();
  let checked = 0;
  for (let t = 0, added = 0; added < 24 || core.hasUnfinished; t++) {
    if (added < 24 && r() < 0.5) {
      const prompt = [...prefixes[int(0, 2)]!, ...Array.from({ length: int(1, 20) }, () => int(0, VOCAB - 1))];
      const id = `r${added++}`;
      const maxTokens = int(1, 20);
      jobs.set(id, { prompt, maxTokens, out: [] });
      const sampling = resolveSamplingParams({ temperature: 0, maxTokens, ignoreEos: true });
      core.addRequest({ requestId: id, promptTokenIds: prompt, sampling, priority: opts.policy === "priority" ? int(0, 3) : 0 });
    }
    if (r() < 0.03 && jobs.size > 0) {
      const id = [...jobs.keys()][int(0, jobs.size - 1)]!;
      if (core.abort(id)) aborted.add(id);
    }
    let outputs;
    try {
      outputs = await core.step();
    } catch (err) {
      // The core ended the failed step's requests; nothing else may be lost.
      assert.ok(err instanceof StepFailedError, String(err));
      for (const id of err.requestIds) aborted.add(id);
      continue;
    }
    for (const o of outputs) {
      assert.ok(!aborted.has(o.requestId), `seed ${seed}: ${o.requestId} produced output after it was ended`);
      const job = jobs.get(o.requestId)!;
      job.out.push(...o.newTokenIds);
      if (!o.finished) continue;
      assert.deepEqual(job.out, expected(job.prompt, job.maxTokens), `seed ${seed}: ${o.requestId} read KV that was never computed`);
      checked++;
    }
    assert.ok(t < 100_000, "the workload does not finish");
  }
  for (const [id, job] of jobs) {
    if (!aborted.has(id)) assert.equal(job.out.length, job.maxTokens, `seed ${seed}: request ${id} was lost`);
  }
  const stats = core.stats();
  return { checked, hits: stats.prefixCacheHits, preemptions: stats.numPreemptions, failures: exec.failures };
}

/** Run `count` workloads from `first` on, summing what they exercised. */
async function fuzzMany(first: number, count: number, opts: (seed: number) => Parameters<typeof fuzz>[1]): Promise<Outcome> {
  const sum: Outcome = { checked: 0, hits: 0, preemptions: 0, failures: 0 };
  for (let seed = first; seed < first + count; seed++) {
    const o = await fuzz(seed, opts(seed));
    sum.checked += o.checked;
    sum.hits += o.hits;
    sum.preemptions += o.preemptions;
    sum.failures += o.failures;
  }
  return sum;
}

describe("prefix cache integrity", () => {
  it("a grant taken back before its step runs leaves no findable block", () => {
    const kv = new KVCacheManager(8, BLOCK, true);
    const req = { requestId: "a", allTokenIds: [1, 2, 3, 4, 5, 6, 7, 8, 9], numComputedTokens: 0, blockHashes: [] as string[] };
    kv.beginStep(1);
    assert.ok(kv.allocateSlots(req, 9));
    kv.free("a"); // preempted (or the step failed) before the forward pass: nothing was written
    const again = { ...req, requestId: "b", blockHashes: [] as string[] };
    assert.equal(kv.findCachedPrefix(again).numTokens, 0);
    // Once a step has computed them, the same blocks are found.
    assert.ok(kv.allocateSlots(again, 9));
    kv.commitComputed(again, 9);
    kv.free("b");
    assert.equal(kv.findCachedPrefix({ ...req, requestId: "c", blockHashes: [] }).numTokens, 8);
  });

  for (const asyncScheduling of [false, true]) {
    const mode = asyncScheduling ? "async scheduling" : "synchronous scheduling";

    it(`${mode}: priority scheduling with preemption, chunked prefill and aborts: every request reads only computed KV (3,000 random workloads)`, async () => {
      const o = await fuzzMany(1, 3000, () => ({ policy: "priority", failRate: 0, asyncScheduling }));
      // The workloads exercise what they claim to: cache hits, preemptions, thousands of checked requests.
      assert.ok(o.hits > 30_000, `prefix hits ${o.hits}`);
      assert.ok(o.preemptions > 3_000, `preemptions ${o.preemptions}`);
      assert.ok(o.checked > 60_000, `checked ${o.checked}`);
    });

    it(`${mode}: FCFS with preemption and aborts (1,000 random workloads)`, async () => {
      const o = await fuzzMany(10_001, 1000, () => ({ policy: "fcfs", failRate: 0, asyncScheduling }));
      assert.ok(o.hits > 10_000 && o.preemptions > 500 && o.checked > 20_000, JSON.stringify(o));
    });

    it(`${mode}: a failed step leaves none of its blocks findable and loses no other request (1,000 random workloads, FCFS and priority)`, async () => {
      const o = await fuzzMany(20_001, 1000, (seed) => ({ policy: seed % 2 === 0 ? "priority" : "fcfs", failRate: 0.08, asyncScheduling }));
      assert.ok(o.failures > 1_500, `failures ${o.failures}`);
      assert.ok(o.checked > 7_000, `checked ${o.checked}`);
    });
  }

  it("a sibling waits one step for the blocks being computed rather than computing them again", async () => {
    for (const asyncScheduling of [false, true]) {
      const exec = new KvCheckingExecutor();
      const config: EngineConfig = {
        blockSize: BLOCK,
        numBlocks: 64,
        enablePrefixCaching: true,
        maxNumBatchedTokens: 256,
        maxNumSeqs: 8,
        maxModelLen: 64,
        policy: "fcfs",
        asyncScheduling,
      };
      const core = new EngineCore(exec, config, []);
      const prompt = Array.from({ length: 21 }, (_, i) => (i * 7) % VOCAB);
      core.addRequest({
        requestId: "n4",
        promptTokenIds: prompt,
        sampling: resolveSamplingParams({ n: 4, temperature: 0, maxTokens: 3, ignoreEos: true }),
      });
      const out = new Map<number, number[]>();
      while (core.hasUnfinished) for (const o of await core.step()) out.set(o.index, [...(out.get(o.index) ?? []), ...o.newTokenIds]);
      for (let i = 0; i < 4; i++) assert.deepEqual(out.get(i), expected(prompt, 3));
      assert.equal(core.stats().prefixCacheHits, 3 * 20, `three siblings share the first's five full blocks (async ${asyncScheduling})`);
    }
  });
});
