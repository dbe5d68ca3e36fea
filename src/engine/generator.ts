import type { Backend } from "../backend/backend.js";
import { type LoadModelOptions, loadModel, type LoadedModel } from "../model/load.js";
import { ModelRunner } from "./model-runner.js";
import { Rng, sampleToken, type SamplingState } from "./sampler.js";
import { resolveSamplingParams, type SamplingParams } from "./sampling-params.js";

export interface GenerateOptions {
  maxTokens: number;
  /** Sampling settings; default greedy. maxTokens and stop ids come from the fields here. */
  sampling?: Partial<SamplingParams>;
  stopTokenIds?: readonly number[];
  /** Keep each step's full logits row (for comparisons against an oracle). */
  returnLogits?: boolean;
}

export interface GenerateResult {
  tokens: number[];
  logits?: Float32Array[];
  finishReason: "stop" | "length";
  promptMs: number;
  decodeMs: number;
}

export interface GeneratorOptions extends LoadModelOptions {
  blockSize?: number;
}

/**
 * One sequence at a time, straight on the model runner: the first `generate`
 * command. Its KV blocks are handed out in reverse order so even this path
 * runs the paged attention over a non-contiguous block table.
 */
export class Generator {
  private runner: ModelRunner;
  private blocks: number[];

  private constructor(
    readonly loaded: LoadedModel,
    readonly backend: Backend,
    readonly blockSize: number,
  ) {
    const numBlocks = Math.ceil(loaded.maxModelLen / blockSize);
    this.runner = new ModelRunner(loaded.model, { numBlocks, blockSize, maxModelLen: loaded.maxModelLen });
    this.blocks = Array.from({ length: numBlocks }, (_, i) => numBlocks - 1 - i);
  }

  static open(modelDir: string, backend: Backend, opts: GeneratorOptions = {}): Generator {
    const loaded = loadModel(modelDir, backend, { maxNumSeqs: 1, ...opts });
    return new Generator(loaded, backend, opts.blockSize ?? 16);
  }

  /** Return every allocation (weights, KV cache, activations) to the backend. */
  close(): void {
    this.runner.dispose();
    this.loaded.model.dispose();
  }

  get maxModelLen(): number {
    return this.loaded.maxModelLen;
  }

  generate(prompt: readonly number[], opts: GenerateOptions): GenerateResult {
    const total = prompt.length + opts.maxTokens;
    if (prompt.length === 0) throw new RangeError("the prompt is empty; expected at least one token");
    if (total > this.maxModelLen) {
      throw new RangeError(
        `prompt (${prompt.length} tokens) + max tokens (${opts.maxTokens}) = ${total} exceeds the max model length ${this.maxModelLen}`,
      );
    }
    const sampling = resolveSamplingParams({ temperature: 0, ...opts.sampling, maxTokens: opts.maxTokens });
    const stop = new Set(opts.stopTokenIds ?? []);
    const outputCounts = new Map<number, number>();
    const state: SamplingState = {
      promptTokenIds: prompt,
      outputTokenIds: [],
      outputCounts,
      rng: new Rng(sampling.seed ?? (Math.random() * 2 ** 32) >>> 0),
      eosTokenIds: [...stop],
    };
    const chunk = this.loaded.model.limits.maxNumTokens;
    const vocab = this.loaded.config.vocabSize;
    const tokens: number[] = [];
    const logits: Float32Array[] = [];
    let finishReason: "stop" | "length" = "length";

    const t0 = performance.now();
    let row: Float32Array = new Float32Array(0);
    for (let start = 0; start < prompt.length; start += chunk) {
      const piece = prompt.slice(start, start + chunk);
      const last = start + piece.length === prompt.length;
      row = this.runner.execute([{ tokens: piece, numCached: start, blocks: this.blocks, wantLogits: last }]);
    }
    const t1 = performance.now();
    for (let i = 0; i < opts.maxTokens; i++) {
      if (opts.returnLogits) logits.push(row.slice(0, vocab));
      const next = sampleToken(row, sampling, { ...state, outputTokenIds: tokens }).token;
      tokens.push(next);
      outputCounts.set(next, (outputCounts.get(next) ?? 0) + 1);
      if (stop.has(next)) {
        finishReason = "stop";
        break;
      }
      if (i + 1 === opts.maxTokens) break;
      row = this.runner.execute([{ tokens: [next], numCached: prompt.length + i, blocks: this.blocks, wantLogits: true }]);
    }
    const t2 = performance.now();
    return { tokens, logits: opts.returnLogits ? logits : undefined, finishReason, promptMs: t1 - t0, decodeMs: t2 - t1 };
  }
}
