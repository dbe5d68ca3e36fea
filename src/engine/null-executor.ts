import { uniformU32 } from "../backend/rng.js";
import type { RowLogprobs } from "../backend/sampling.js";
import type { StepExecutor, StepInput, StepOutput } from "./step.js";

/**
 * A model that costs nothing and returns token ids as a device would: its next-token distribution puts
 * all the mass on one pseudo-random token per (request key, output position), so any sampling settings
 * pick that token, and a seeded request repeats itself. The engine, the server and the client see real
 * token streams, so their own cost can be measured without a forward pass (`bench:overhead`, the
 * server's `--stub-model` streaming-capacity runs).
 */
export class NullExecutor implements StepExecutor {
  private rows = new Map<string, { key: number; logprobs: number | null; n: number }>();
  /** Milliseconds each step "runs" on the device (a timer, so the host is free meanwhile); 0: resolves at once. */
  deviceMs = 0;

  constructor(readonly vocabSize: number) {}

  execute(step: StepInput): Promise<StepOutput> {
    for (const id of step.removed) this.rows.delete(id);
    for (const a of step.added) this.rows.set(a.id, { key: a.sampling.key, logprobs: a.sampling.logprobs, n: a.outputTokenIds.length });
    let n = 0;
    for (const s of step.seqs) if (s.sample) n++;
    const tokens = new Int32Array(n);
    const logprobs: (RowLogprobs | null)[] = [];
    let i = 0;
    for (const s of step.seqs) {
      if (!s.sample) continue;
      const row = this.rows.get(s.id);
      if (!row) return Promise.reject(new Error(`NullExecutor: request ${s.id} is scheduled but was never added`));
      const token = uniformU32(row.key, row.n++) % this.vocabSize;
      tokens[i++] = token;
      logprobs.push(
        row.logprobs === null
          ? null
          : {
              logprob: 0,
              top: row.logprobs > 0 ? [{ token, logprob: 0 }, ...alternatives(token, row.logprobs - 1, this.vocabSize)] : undefined,
            },
      );
    }
    const out = { tokens, logprobs };
    if (this.deviceMs <= 0) return Promise.resolve(out);
    return new Promise((resolve) => setTimeout(() => resolve(out), this.deviceMs));
  }
}

/** The tokens after `token`, at probability zero (-9999, as vLLM writes -inf): the rest of a top-k list. */
function alternatives(token: number, k: number, vocab: number): { token: number; logprob: number }[] {
  return Array.from({ length: Math.min(k, vocab - 1) }, (_, j) => ({ token: (token + 1 + j) % vocab, logprob: -9999 }));
}
