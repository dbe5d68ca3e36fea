/** The engine in its worker thread, driven through the async client the server uses. */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { AsyncEngine, EngineRequestError } from "../src/engine/async-engine.js";
import type { RequestOutput } from "../src/engine/engine-core.js";
import { LLM } from "../src/engine/llm.js";
import { resolveSamplingParams, type SamplingParams } from "../src/engine/sampling-params.js";
import { writeTinyModel } from "./helpers/tiny-model.js";

const VOCAB = 512;
const root = mkdtempSync(join(tmpdir(), "tokamak-async-"));
const modelDir = join(root, "llama");
const OPTS = { maxModelLen: 128, numBlocks: 64, threads: 1 };
let engine: AsyncEngine;

before(async () => {
  writeTinyModel(modelDir, { arch: "llama", dtype: "bf16", vocabSize: VOCAB, seed: 3 });
  engine = await AsyncEngine.start(modelDir, OPTS);
});
after(async () => {
  await engine?.shutdown();
  rmSync(root, { recursive: true, force: true });
});

const greedy = (maxTokens: number, extra: Partial<SamplingParams> = {}) =>
  resolveSamplingParams({ temperature: 0, maxTokens, ignoreEos: true, ...extra });

async function collect(it: AsyncIterable<RequestOutput>): Promise<RequestOutput[]> {
  const all: RequestOutput[] = [];
  for await (const o of it) all.push(o);
  return all;
}

describe("AsyncEngine (worker thread)", () => {
  it("reports the model and engine it loaded", () => {
    assert.equal(engine.info.architecture, "LlamaForCausalLM");
    assert.equal(engine.info.maxModelLen, 128);
    assert.equal(engine.info.vocabSize, VOCAB);
    assert.equal(engine.info.config.numBlocks, 64);
    assert.ok(engine.info.weightBytes > 0);
  });

  it("streams the same tokens as the in-process engine, for many concurrent requests", async () => {
    const prompts = Array.from({ length: 12 }, (_, i) => Array.from({ length: 5 + i * 3 }, (_, j) => (i * 31 + j * 7) % VOCAB));
    const streams = prompts.map((p, i) => collect(engine.generate({ requestId: `c${i}`, promptTokenIds: p, sampling: greedy(10) })));
    const got = await Promise.all(streams);
    const llm = LLM.open(modelDir, OPTS);
    try {
      const want = await llm.generate(prompts, greedy(10));
      got.forEach((outs, i) => {
        assert.equal(outs.length, 10, "one output per token");
        assert.deepEqual(
          outs.flatMap((o) => o.newTokenIds),
          want[i]!.outputs[0]!.tokenIds,
        );
        assert.equal(outs.at(-1)!.finished, true);
        assert.equal(outs.at(-1)!.finishReason, "length");
      });
    } finally {
      llm.close();
    }
  });

  it("n > 1 streams every completion and ends when all have finished", async () => {
    const outs = await collect(
      engine.generate({ requestId: "n3", promptTokenIds: [1, 2, 3, 4], sampling: greedy(5, { n: 3, temperature: 1, seed: 9 }) }),
    );
    for (let i = 0; i < 3; i++) assert.equal(outs.filter((o) => o.index === i).length, 5);
  });

  it("a consumer that leaves early aborts the request and its blocks come back", async () => {
    const it = engine.generate({ requestId: "leaver", promptTokenIds: [5, 6, 7], sampling: greedy(100) });
    let n = 0;
    for await (const o of it) {
      assert.equal(o.requestId, "leaver");
      if (++n === 3) break;
    }
    // The abort is processed on the engine's next loop turn.
    for (let i = 0; i < 50; i++) {
      const s = await engine.stats();
      if (s.numRunning + s.numWaiting === 0) break;
      await new Promise((r) => setTimeout(r, 10));
    }
    const s = await engine.stats();
    assert.equal(s.numRunning + s.numWaiting, 0);
    assert.equal(s.numFreeBlocks, s.numBlocks, "the aborted request's blocks are free");
    assert.equal(engine.numInFlight, 0);
  });

  it("an AbortSignal aborts a request waiting in the stream", async () => {
    const ac = new AbortController();
    const it = engine.generate({ requestId: "signal", promptTokenIds: [8, 9], sampling: greedy(100) }, ac.signal);
    // Abort once the request is running (a timer could fire after a fast machine finished all 100 tokens).
    const consume = async () => {
      for await (const o of it) if (o.newTokenIds.length > 0) ac.abort();
    };
    await assert.rejects(consume(), (e: Error) => e instanceof EngineRequestError && /aborted/.test(e.message));
  });

  it("a request the engine refuses ends its stream with the engine's message; the engine keeps serving", async () => {
    const tooLong = Array.from({ length: 200 }, () => 1);
    await assert.rejects(
      collect(engine.generate({ requestId: "long", promptTokenIds: tooLong, sampling: greedy(4) })),
      (e: Error) => e instanceof EngineRequestError && /200 tokens/.test(e.message) && /128/.test(e.message),
    );
    await assert.rejects(
      collect(engine.generate({ requestId: "badtok", promptTokenIds: [VOCAB + 5], sampling: greedy(4) })),
      /outside the vocabulary/,
    );
    const ok = await collect(engine.generate({ requestId: "after", promptTokenIds: [1, 2], sampling: greedy(3) }));
    assert.equal(ok.length, 3);
  });

  it("a model that fails to load rejects start() with the loader's message", async () => {
    await assert.rejects(AsyncEngine.start(join(root, "missing")), /config\.json/);
  });
});
