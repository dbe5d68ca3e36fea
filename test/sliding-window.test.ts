/** The dashboard's last-minute latency percentiles: close to exact, and only the last minute. */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { SlidingWindow } from "../src/server/dashboard.js";

/** Nearest-rank percentile of a sorted copy: what the window approximates. */
function exact(values: number[], p: number): number {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

describe("SlidingWindow", () => {
  it("percentiles are within the bins' 2.2% of the exact nearest-rank values", () => {
    const w = new SlidingWindow();
    let seed = 1;
    const rand = () => (seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32;
    // Latencies from 0.05 ms to ~5 s, log-uniform, as ITL and TTFT spread in practice.
    const values = Array.from({ length: 20_000 }, () => 0.05 * 10 ** (5 * rand()));
    values.forEach((v, i) => w.add(v, 1000 + i));
    const got = w.percentiles([1, 50, 90, 99, 100], 1000 + values.length);
    assert.equal(got.count, values.length);
    for (const p of [1, 50, 90, 99, 100]) {
      const want = exact(values, p);
      const rel = Math.abs(got.values[`p${p}`]! - want) / want;
      assert.ok(rel < 0.022, `p${p}: ${got.values[`p${p}`]} vs exact ${want} (${(rel * 100).toFixed(2)}%)`);
    }
  });

  it("forgets samples older than the window, second by second", () => {
    const w = new SlidingWindow(60_000);
    for (let s = 0; s < 120; s++) w.add(s < 60 ? 1000 : 10, s * 1000 + 500); // a slow first minute, then a fast one
    const late = w.percentiles([50, 100], 119_999); // the window is the current second and the 59 before it
    assert.equal(late.count, 60);
    assert.ok(Math.abs(late.values.p100! - 10) / 10 < 0.022, `only the fast minute is left: p100 ${late.values.p100}`);
    assert.deepEqual(w.percentiles([50], 300_000), { count: 0, values: { p50: null } });
  });

  it("ignores values that are not finite, and keeps zero and huge ones in the edge bins", () => {
    const w = new SlidingWindow();
    w.add(Number.NaN, 0);
    w.add(Number.POSITIVE_INFINITY, 0);
    assert.equal(w.percentiles([50], 0).count, 0);
    w.add(0, 0);
    w.add(1e12, 0);
    const r = w.percentiles([0, 100], 0);
    assert.equal(r.count, 2);
    assert.ok(r.values.p0! <= SlidingWindow.MIN * 1.03 && r.values.p100! > 1e6); // the top bin: ~18 minutes in ms
  });
});
