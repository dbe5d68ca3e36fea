/**
 * The contract between the engine and whatever runs a step (the model runner, or a stub). The executor
 * keeps a persistent batch: requests enter it once (`added`, with their sampling state), leave it once
 * (`removed`: finished, aborted, preempted, or not scheduled this step), and in between each step names
 * only what changed. A step returns sampled token ids, never logits.
 */
import type { RowLogprobs, SamplingRowParams } from "../backend/sampling.js";

/** A request entering the executor's persistent batch: new, resumed after preemption, or scheduled again. */
export interface BatchAdd {
  id: string;
  sampling: SamplingRowParams;
  promptTokenIds: readonly number[];
  /** Tokens it has generated so far (a resumed request's penalties and draws continue from them). */
  outputTokenIds: readonly number[];
}

/** One sequence's share of a step: its new tokens and where its context lives. */
export interface ScheduledSequence {
  id: string;
  /** Token ids fed this step (a prefill chunk, or one token for a decode). */
  tokens: readonly number[];
  /** Tokens of this sequence already in the KV cache before this step. */
  numCached: number;
  /** Every KV block of this sequence, in order, covering numCached + tokens.length positions; the executor uploads only what is new. */
  blocks: readonly number[];
  /** Whether a token is sampled for it (false for a prefill chunk that is not the last). */
  sample: boolean;
  /** Allowed next tokens, one bit per vocabulary id (structured output); absent: all. */
  mask?: Uint32Array;
}

export interface StepInput {
  added: readonly BatchAdd[];
  removed: readonly string[];
  seqs: readonly ScheduledSequence[];
}

export interface StepOutput {
  /** One token per sequence with `sample`, in order. */
  tokens: Int32Array;
  /** Per sampled sequence: the log-probabilities it asked for, or null. */
  logprobs: readonly (RowLogprobs | null)[];
}

/** What runs one flat batch: the real ModelRunner, or a stub for measuring the engine itself. */
export interface StepExecutor {
  readonly vocabSize: number;
  /** Run one step. The promise settles when its tokens are on the host; the executor reads its inputs before returning. */
  execute(step: StepInput): Promise<StepOutput>;
}

export { settled } from "../backend/settled.js";
