import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { KernelMemory } from "../src/backend/cpu/kernel-memory.js";
import { seeded } from "./helpers/random.js";

describe("KernelMemory: the CPU backend's shared kernel memory", () => {
  it("hands out aligned, zeroed, disjoint ranges; reuses freed ones; grows in pages", () => {
    const m = new KernelMemory();
    const a = m.alloc(100)!;
    const b = m.alloc(70_000)!;
    assert.equal(a % 64, 0);
    assert.equal(b % 64, 0);
    assert.ok(b >= a + 100);
    assert.ok(m.buffer.byteLength >= b + 70_000, "grown to hold b");
    new Uint8Array(m.buffer, a, 100).fill(7);
    m.release(a);
    const c = m.alloc(64)!;
    assert.equal(c, a, "the freed range is reused first-fit");
    assert.ok(
      new Uint8Array(m.buffer, c, 64).every((x) => x === 0),
      "reused memory is zeroed",
    );
    assert.equal(m.usedBytes, 64 + Math.ceil(70_000 / 64) * 64);
  });

  it("random alloc/free never overlaps live ranges, and freeing everything returns to empty", () => {
    const m = new KernelMemory();
    const rng = seeded(11);
    const live = new Map<number, number>();
    for (let i = 0; i < 3000; i++) {
      if (live.size > 0 && rng() < 0.45) {
        const keys = [...live.keys()];
        const k = keys[Math.floor(rng() * keys.length)]!;
        m.release(k);
        live.delete(k);
      } else {
        const size = 1 + Math.floor(rng() * 5000);
        const a = m.alloc(size)!;
        for (const [s, n] of live) assert.ok(a + size <= s || s + n <= a, `[${a}, ${a + size}) overlaps [${s}, ${s + n})`);
        live.set(a, size);
      }
    }
    for (const k of live.keys()) m.release(k);
    assert.equal(m.usedBytes, 0);
    assert.equal(m.alloc(10), 64, "the allocator is back at its start");
  });

  it("says no (undefined) instead of throwing when 4 GiB cannot hold a request", () => {
    const m = new KernelMemory();
    assert.equal(m.alloc(2 ** 32), undefined);
  });
});
