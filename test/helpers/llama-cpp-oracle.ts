/**
 * llama.cpp as a correctness oracle, through node-llama-cpp's prebuilt CPU binaries (no GPU,
 * no build, no network): load a GGUF file and ask for greedy continuations, teacher-forced
 * next-token logits at every position, or tokenizations.
 *
 * Contexts use an F32 KV cache and no flash attention, so llama.cpp computes in f32 throughout
 * (with its default F16 cache, K and V are rounded to half precision and logits drift by ~1e-3).
 */
import {
  getLlama,
  type Llama,
  type LlamaContext,
  type LlamaContextSequence,
  LlamaLogLevel,
  type LlamaModel,
  type Token,
} from "node-llama-cpp";

/** Messages llama.cpp logged at warning level or above since the process loaded it (kept out of the test output). */
export const llamaCppLogs: string[] = [];

let llamaPromise: Promise<Llama> | undefined;

/** The shared llama.cpp instance (CPU only, prebuilt binaries); loading it takes ~0.5 s, so it is made once. */
export function getLlamaCpp(): Promise<Llama> {
  llamaPromise ??= getLlama({
    gpu: false,
    build: "never",
    logLevel: LlamaLogLevel.warn,
    logger: (level, message) => {
      if (message.trim()) llamaCppLogs.push(`[${level}] ${message.trim()}`);
    },
  });
  return llamaPromise;
}

/** Release the shared instance (call once, after every oracle is disposed). */
export async function disposeLlamaCpp(): Promise<void> {
  const p = llamaPromise;
  llamaPromise = undefined;
  if (p) await (await p).dispose();
}

export interface OracleOptions {
  /** Context length in tokens (default 512). */
  contextSize?: number;
  /** CPU threads (default 2). */
  threads?: number;
  /** Seed for llama.cpp's sampler (greedy decoding does not use it; fixed for reproducibility). */
  seed?: number;
}

function toRow(logits: Map<Token, number> | undefined, vocabSize: number, where: string): Float32Array {
  if (!logits) throw new Error(`llama.cpp returned no logits ${where}`);
  const row = new Float32Array(vocabSize).fill(Number.NaN);
  for (const [id, v] of logits) row[id] = v;
  return row;
}

/** Index of the largest value (the first one on exact ties, as a greedy sampler scanning upwards picks). */
export function argmax(row: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i]! > row[best]!) best = i;
  return best;
}

export class LlamaCppOracle {
  private constructor(
    readonly model: LlamaModel,
    private readonly context: LlamaContext | undefined,
    private readonly sequence: LlamaContextSequence | undefined,
    private readonly seed: number,
    /** Rows of the output layer (= tokens in the GGUF vocabulary). */
    readonly vocabSize: number,
  ) {}

  /** Load a GGUF model for evaluation on the CPU. */
  static async load(ggufPath: string, opts: OracleOptions = {}): Promise<LlamaCppOracle> {
    const llama = await getLlamaCpp();
    const model = await llama.loadModel({ modelPath: ggufPath, gpuLayers: 0, useMmap: true });
    try {
      const context = await model.createContext({
        contextSize: opts.contextSize ?? 512,
        threads: opts.threads ?? 2,
        sequences: 1,
        flashAttention: false,
        experimentalKvCacheKeyType: "F32",
        experimentalKvCacheValueType: "F32",
      });
      const tokens = model.fileInfo.metadata.tokenizer?.ggml?.tokens;
      const vocabSize = Array.isArray(tokens) ? tokens.length : 0;
      return new LlamaCppOracle(model, context, context.getSequence(), opts.seed ?? 1234, vocabSize);
    } catch (err) {
      await model.dispose();
      throw err;
    }
  }

  /** Load only the vocabulary of a GGUF file (for tokenizer comparisons; no weights read). */
  static async loadVocab(ggufPath: string): Promise<LlamaCppOracle> {
    const llama = await getLlamaCpp();
    const model = await llama.loadModel({ modelPath: ggufPath, vocabOnly: true });
    return new LlamaCppOracle(model, undefined, undefined, 0, 0);
  }

  private seq(): LlamaContextSequence {
    if (!this.sequence) throw new Error("this oracle was loaded with loadVocab(); it cannot evaluate");
    return this.sequence;
  }

  /** `steps` tokens after `prompt`, chosen by llama.cpp's own sampler at temperature 0 (greedy). */
  async greedy(prompt: readonly number[], steps: number): Promise<number[]> {
    const seq = this.seq();
    await seq.clearHistory();
    const out: number[] = [];
    if (steps <= 0) return out;
    const it = seq.evaluate(prompt as Token[], { temperature: 0, seed: this.seed, yieldEogToken: true });
    for await (const token of it) {
      out.push(token);
      if (out.length >= steps) break;
    }
    return out;
  }

  /**
   * Teacher forcing: evaluate `tokens` in one pass and return, for every position p from
   * `from - 1` to the end, the logits of the token after tokens[0..p] (so row i predicts
   * tokens[from + i]; the last row predicts the token after the whole input).
   */
  async nextTokenLogits(tokens: readonly number[], from: number): Promise<Float32Array[]> {
    if (from < 1 || from > tokens.length) throw new RangeError(`from must be in [1, ${tokens.length}], got ${from}`);
    const seq = this.seq();
    await seq.clearHistory();
    const items = tokens.map((t, i) => (i >= from - 1 ? ([t, { generateNext: { logits: true } }] as const) : t)) as Parameters<
      LlamaContextSequence["controlledEvaluate"]
    >[0];
    const res = await seq.controlledEvaluate(items);
    const rows: Float32Array[] = [];
    for (let i = from - 1; i < tokens.length; i++) rows.push(toRow(res[i]?.next.logits, this.vocabSize, `at position ${i}`));
    return rows;
  }

  /** llama.cpp's tokenization; `specialTokens` parses <|im_start|> and the like as single tokens. */
  tokenize(text: string, specialTokens = true): number[] {
    return this.model.tokenize(text, specialTokens).map(Number);
  }

  detokenize(ids: readonly number[], specialTokens = true): string {
    return this.model.detokenize(ids as Token[], specialTokens);
  }

  async dispose(): Promise<void> {
    this.sequence?.dispose();
    await this.context?.dispose();
    await this.model.dispose();
  }
}
