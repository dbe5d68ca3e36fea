/**
 * The sampling op's inputs and outputs, shared by every backend. A row's sampling state lives beside the
 * persistent batch between steps (its output-token counts, the prompt's token set for the repetition
 * penalty) and is updated by the executor as it samples, so the host never rebuilds it and full logits
 * never leave the device: a step returns one token id per row, and log-probabilities only where asked.
 */

/** One request's sampling settings, as plain numbers (vLLM's meanings). */
export interface SamplingRowParams {
  /** 0 (below 1e-5): greedy. */
  temperature: number;
  /** 0: no top-k truncation. */
  topK: number;
  topP: number;
  minP: number;
  repetitionPenalty: number;
  presencePenalty: number;
  frequencyPenalty: number;
  /** Added to the logits of these token ids. */
  logitBias: readonly (readonly [number, number])[];
  /** While fewer outputs than this exist, `minTokensBanned` ids are masked. */
  minTokens: number;
  /** End-of-sequence ids (unless ignore_eos) and stop token ids. */
  minTokensBanned: readonly number[];
  /** Top log-probabilities to return per token (0: only the sampled token's); null: none. */
  logprobs: number | null;
  /** The 32-bit key of the request's random stream; the n-th output token uses draw n. */
  key: number;
}

export interface TokenLogprob {
  token: number;
  logprob: number;
}

/** The log-probability of a sampled token under the model (raw logits, before any sampling transform), and the top alternatives. */
export interface RowLogprobs {
  logprob: number;
  top?: TokenLogprob[];
}

/** A request's sampling state across steps: its settings and the token statistics the penalties read. */
export class SamplingRow {
  /** Occurrences of each token in the output so far. */
  readonly counts = new Map<number, number>();
  /** Tokens of the prompt and the output (kept only under a repetition penalty). */
  readonly seen: Set<number> | null;
  numOutput = 0;

  constructor(
    readonly params: SamplingRowParams,
    promptTokenIds: readonly number[],
    outputTokenIds: readonly number[] = [],
  ) {
    this.seen = params.repetitionPenalty !== 1 ? new Set(promptTokenIds) : null;
    for (const t of outputTokenIds) this.accept(t);
  }

  /** Record a token the row produced. */
  accept(token: number): void {
    this.counts.set(token, (this.counts.get(token) ?? 0) + 1);
    this.seen?.add(token);
    this.numOutput++;
  }

  /** Whether any logits processor (bias, penalties, min_tokens mask) touches this row now. */
  get hasProcessors(): boolean {
    const p = this.params;
    return (
      p.logitBias.length > 0 ||
      (this.numOutput < p.minTokens && p.minTokensBanned.length > 0) ||
      p.repetitionPenalty !== 1 ||
      ((p.frequencyPenalty !== 0 || p.presencePenalty !== 0) && this.counts.size > 0)
    );
  }
}

/** One row of one sampling call. */
export interface SampleRow {
  row: SamplingRow;
  /** Allowed tokens, one bit per vocabulary id (bit t % 32 of word t / 32); absent: all allowed. */
  mask?: Uint32Array;
}

export interface SampleOutput {
  /** One sampled token id per row, in row order. */
  tokens: Int32Array;
  /** Per row: its log-probabilities, or null where the row asked for none. */
  logprobs: (RowLogprobs | null)[];
}
