import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { type BufferRequest, planArena } from "../src/model/arena.js";

function overlaps(a: BufferRequest, b: BufferRequest): boolean {
  return a.first <= b.last && b.first <= a.last;
}

describe("activation arena planner", () => {
  it("never lets buffers live at the same time share bytes, and shares the rest", () => {
    const reqs: BufferRequest[] = [
      { name: "residual", bytes: 4096, first: 0, last: 9 },
      { name: "normed", bytes: 4096, first: 1, last: 2 },
      { name: "qkv", bytes: 8192, first: 2, last: 4 },
      { name: "attn", bytes: 4096, first: 4, last: 5 },
      { name: "gateUp", bytes: 16384, first: 6, last: 7 },
      { name: "act", bytes: 8192, first: 7, last: 8 },
    ];
    const plan = planArena(reqs);
    for (const a of reqs) {
      for (const b of reqs) {
        if (a === b || !overlaps(a, b)) continue;
        const [sa, sb] = [plan.offsets.get(a.name)!, plan.offsets.get(b.name)!];
        assert.ok(sa + a.bytes <= sb || sb + b.bytes <= sa, `${a.name} and ${b.name} are live together but overlap in memory`);
      }
      assert.equal(plan.offsets.get(a.name)! % 256, 0);
    }
    assert.equal(plan.unsharedBytes, 44 * 1024);
    assert.equal(plan.totalBytes, 4096 + 16384 + 8192); // residual + the widest pair live together (gateUp, act)
  });

  it("rejects a buffer requested twice", () => {
    assert.throws(
      () =>
        planArena([
          { name: "a", bytes: 1, first: 0, last: 0 },
          { name: "a", bytes: 1, first: 1, last: 1 },
        ]),
      /requested twice/,
    );
  });
});
