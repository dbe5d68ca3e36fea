import type { Backend } from "../backend/backend.js";
import { sampleRows } from "../backend/cpu/sample.js";
import { SamplingRow } from "../backend/sampling.js";
import { foldSeed } from "../backend/rng.js";
import { type LoadModelOptions, loadModel, type LoadedModel } from "../model/load.js";
import { ModelRunner } from "./model-runner.js";
import { resolveSamplingParams, samplingRowParams, type SamplingParams } from "./sampling-params.js";
import type { StepInput } from "./step.js";
import { ENGINE_DEFAULTS } from "../defaults.js";

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

const ID = "generate";

/**
 * One sequence at a time, straight on the model runner: the `generate` command and the oracle
 * comparisons. It takes each step's full logits back to the host (that is its purpose) and samples them
 * with the CPU sampling op. Its KV blocks are handed out in reverse order so even this path runs the
 * paged attention over a non-contiguous block table.
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
    return new Generator(loaded, backend, opts.blockSize ?? ENGINE_DEFAULTS.blockSize);
  }

  /** Return every allocation (weights, KV cache, activations) to the backend. */
  close(): void {
    this.runner.dispose();
    this.loaded.model.dispose();
  }

  get maxModelLen(): number {
    return this.loaded.maxModelLen;
  }

  /** Generate on a backend that reads back synchronously (CPU, CUDA). */
  generate(prompt: readonly number[], opts: GenerateOptions): GenerateResult {
    if (!this.backend.capabilities.syncReadback)
      throw new Error(`the ${this.backend.name} backend reads back asynchronously; use generateAsync`);
    const loop = this.loop(prompt, opts);
    for (let r = loop.next(); ;) {
      if (r.done) return r.value;
      r = loop.next(this.runner.logitsSync(r.value));
    }
  }

  /** Generate on any backend. */
  async generateAsync(prompt: readonly number[], opts: GenerateOptions): Promise<GenerateResult> {
    const loop = this.loop(prompt, opts);
    for (let r = loop.next(); ;) {
      if (r.done) return r.value;
      r = loop.next(await this.runner.logits(r.value));
    }
  }

  /** The generation loop: yields each step's input, is handed back that step's logits. */
  private *loop(prompt: readonly number[], opts: GenerateOptions): Iterator<StepInput, GenerateResult, Float32Array> {
    const total = prompt.length + opts.maxTokens;
    if (prompt.length === 0) throw new RangeError("the prompt is empty; expected at least one token");
    if (total > this.maxModelLen) {
      throw new RangeError(
        `prompt (${prompt.length} tokens) + max tokens (${opts.maxTokens}) = ${total} exceeds the max model length ${this.maxModelLen}`,
      );
    }
    const sampling = resolveSamplingParams({ temperature: 0, ...opts.sampling, maxTokens: opts.maxTokens });
    const stop = new Set(opts.stopTokenIds ?? []);
    const key = sampling.seed !== null ? foldSeed(sampling.seed) : (Math.random() * 2 ** 32) >>> 0;
    const rowParams = samplingRowParams(sampling, key, [...stop]);
    const row = new SamplingRow(rowParams, prompt);
    const chunk = this.loaded.model.limits.maxNumTokens;
    const vocab = this.loaded.config.vocabSize;
    const tokens: number[] = [];
    const logits: Float32Array[] = [];
    let finishReason: "stop" | "length" = "length";
    let first = true;
    const step = (piece: readonly number[], numCached: number, sample: boolean): StepInput => {
      const input: StepInput = {
        added: first ? [{ id: ID, sampling: rowParams, promptTokenIds: prompt, outputTokenIds: [] }] : [],
        removed: [],
        seqs: [{ id: ID, tokens: piece, numCached, blocks: this.blocks, sample }],
      };
      first = false;
      return input;
    };

    const t0 = performance.now();
    let rowLogits: Float32Array = new Float32Array(0);
    try {
      for (let start = 0; start < prompt.length; start += chunk) {
        const piece = prompt.slice(start, start + chunk);
        rowLogits = yield step(piece, start, start + piece.length === prompt.length);
      }
      const t1 = performance.now();
      for (let i = 0; i < opts.maxTokens; i++) {
        if (opts.returnLogits) logits.push(rowLogits.slice(0, vocab));
        const next = sampleRows(rowLogits, 0, vocab, vocab, [{ row }]).tokens[0]!;
        row.accept(next);
        tokens.push(next);
        if (stop.has(next)) {
          finishReason = "stop";
          break;
        }
        if (i + 1 === opts.maxTokens) break;
        rowLogits = yield step([next], prompt.length + i, true);
      }
      const t2 = performance.now();
      return { tokens, logits: opts.returnLogits ? logits : undefined, finishReason, promptMs: t1 - t0, decodeMs: t2 - t1 };
    } finally {
      // Leave the runner's persistent batch empty for the next call.
      if (!first) this.runner.forget([ID]);
    }
  }
}
