import type { StepExecutor } from "./engine-core.js";
import type { ScheduledSequence } from "./model-runner.js";

/**
 * A model that costs nothing: every step returns the same block of
 * pseudo-random logits. The engine, the server and the client see real
 * token streams, so their own cost can be measured without a forward pass
 * (`bench:overhead`, the server's `--stub-model` streaming-capacity runs).
 */
export class NullExecutor implements StepExecutor {
  private logits: Float32Array;

  constructor(
    readonly vocabSize: number,
    maxRows: number,
    seed = 1,
  ) {
    this.logits = new Float32Array(maxRows * vocabSize);
    let s = seed >>> 0;
    for (let i = 0; i < this.logits.length; i++) {
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
      this.logits[i] = (s / 2 ** 32) * 8;
    }
  }

  execute(seqs: readonly ScheduledSequence[]): Float32Array {
    let n = 0;
    for (const s of seqs) if (s.wantLogits) n++;
    if (n * this.vocabSize > this.logits.length)
      throw new RangeError(`NullExecutor: ${n} logits rows asked, made for ${this.logits.length / this.vocabSize}`);
    return this.logits.subarray(0, n * this.vocabSize);
  }
}
