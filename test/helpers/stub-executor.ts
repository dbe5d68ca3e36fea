import { HostLogitsExecutor } from "../../src/engine/host-logits-executor.js";
import type { ScheduledSequence } from "../../src/engine/step.js";

/**
 * A model stand-in that costs (almost) nothing: the next-token logits are a fixed pseudo-random
 * function of the previous token and its position, so outputs are deterministic and depend on the exact
 * token history fed, like a real model's. Sampling is the real CPU op over those logits. It also
 * records every batch for invariant checks.
 */
export class StubExecutor extends HostLogitsExecutor {
  readonly batches: ScheduledSequence[][] = [];
  private out: Float32Array;

  constructor(
    readonly vocabSize = 64,
    readonly record = false,
  ) {
    super();
    this.out = new Float32Array(0);
  }

  protected forward(seqs: readonly ScheduledSequence[]): Float32Array {
    if (this.record) this.batches.push(seqs.map((s) => ({ ...s, tokens: [...s.tokens], blocks: [...s.blocks] })));
    const wanted = seqs.filter((s) => s.sample);
    if (this.out.length < wanted.length * this.vocabSize) this.out = new Float32Array(wanted.length * this.vocabSize);
    wanted.forEach((s, r) => {
      const last = s.tokens[s.tokens.length - 1]!;
      const pos = s.numCached + s.tokens.length - 1;
      for (let v = 0; v < this.vocabSize; v++) this.out[r * this.vocabSize + v] = mix(last * 7919 + pos * 104729 + v * 31) * 8;
    });
    return this.out.subarray(0, wanted.length * this.vocabSize);
  }
}

/** A deterministic hash of an integer to [-1, 1). */
function mix(x: number): number {
  let h = Math.imul(x ^ 0x9e3779b9, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return (h >>> 0) / 2 ** 31 - 1;
}
