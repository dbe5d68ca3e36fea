import type { Backend } from "../backend/backend.js";
import type { Tensor } from "../backend/tensor.js";
import { allocateKVCache, freeKVCache, type ForwardBatch, type KVCache, type LlamaModel } from "../model/llama.js";

/** One sequence's share of a step: its new tokens and where its context lives. */
export interface ScheduledSequence {
  /** Token ids fed this step (a prefill chunk, or one token for a decode). */
  tokens: readonly number[];
  /** Tokens of this sequence already in the KV cache before this step. */
  numCached: number;
  /** KV blocks of this sequence, in order; must cover numCached + tokens.length positions. */
  blocks: readonly number[];
  /** Whether the next-token logits of this sequence are wanted (false for a prefill chunk that is not the last). */
  wantLogits: boolean;
}

export interface RunnerOptions {
  numBlocks: number;
  blockSize: number;
  maxModelLen: number;
}

/**
 * Turns a list of scheduled sequences into one flat batch (token ids,
 * positions, slot mapping, query start offsets, context lengths, block
 * tables), uploads it into buffers allocated once, runs the model and returns
 * the wanted logits rows.
 */
export class ModelRunner {
  readonly kv: KVCache;
  readonly maxBlocksPerSeq: number;
  private inputs: {
    tokenIds: Tensor;
    positions: Tensor;
    slotMapping: Tensor;
    qsl: Tensor;
    seqLens: Tensor;
    blockTables: Tensor;
    logitsIdx: Tensor;
  };
  private host: {
    tokenIds: Int32Array;
    positions: Int32Array;
    slotMapping: Int32Array;
    qsl: Int32Array;
    seqLens: Int32Array;
    blockTables: Int32Array;
    logitsIdx: Int32Array;
  };

  constructor(
    readonly model: LlamaModel,
    readonly opts: RunnerOptions,
  ) {
    const backend: Backend = model.backend;
    this.kv = allocateKVCache(backend, model.config, opts.numBlocks, opts.blockSize);
    this.maxBlocksPerSeq = Math.ceil(opts.maxModelLen / opts.blockSize);
    const T = model.limits.maxNumTokens;
    const S = model.limits.maxNumLogits;
    const i32 = (shape: number[], label: string) => backend.alloc(shape, "i32", "workspace", label);
    this.inputs = {
      tokenIds: i32([T], "input token ids"),
      positions: i32([T], "input positions"),
      slotMapping: i32([T], "slot mapping"),
      qsl: i32([S + 1], "query start loc"),
      seqLens: i32([S], "seq lens"),
      blockTables: i32([S, this.maxBlocksPerSeq], "block tables"),
      logitsIdx: i32([S], "logits indices"),
    };
    this.host = {
      tokenIds: new Int32Array(T),
      positions: new Int32Array(T),
      slotMapping: new Int32Array(T),
      qsl: new Int32Array(S + 1),
      seqLens: new Int32Array(S),
      blockTables: new Int32Array(S * this.maxBlocksPerSeq),
      logitsIdx: new Int32Array(S),
    };
  }

  get vocabSize(): number {
    return this.model.config.vocabSize;
  }

  dispose(): void {
    const b = this.model.backend;
    freeKVCache(b, this.kv);
    for (const t of Object.values(this.inputs)) b.free(t.storage);
  }

  /** Run one step; returns logits [numWanted, vocab] as host memory, rows in the order of sequences with wantLogits. */
  execute(seqs: readonly ScheduledSequence[]): Float32Array {
    const batch = this.prepare(seqs);
    const logits = this.model.forward(batch, this.kv);
    return this.model.backend.read(logits);
  }

  private prepare(seqs: readonly ScheduledSequence[]): ForwardBatch {
    const h = this.host;
    const { blockSize } = this.opts;
    const S = seqs.length;
    if (S < 1 || S > this.model.limits.maxNumLogits)
      throw new RangeError(`a step holds 1..${this.model.limits.maxNumLogits} sequences, got ${S}`);
    let t = 0;
    let nLogits = 0;
    let maxSeqLen = 0;
    h.blockTables.fill(-1, 0, S * this.maxBlocksPerSeq);
    seqs.forEach((seq, s) => {
      const ctx = seq.numCached + seq.tokens.length;
      if (ctx > this.opts.maxModelLen)
        throw new RangeError(`sequence ${s} reaches ${ctx} tokens, beyond max model length ${this.opts.maxModelLen}`);
      if (seq.blocks.length * blockSize < ctx) throw new RangeError(`sequence ${s} has ${seq.blocks.length} blocks for ${ctx} tokens`);
      if (t + seq.tokens.length > this.model.limits.maxNumTokens)
        throw new RangeError(`step exceeds ${this.model.limits.maxNumTokens} tokens`);
      h.qsl[s] = t;
      h.seqLens[s] = ctx;
      maxSeqLen = Math.max(maxSeqLen, ctx);
      h.blockTables.set(seq.blocks, s * this.maxBlocksPerSeq);
      for (let j = 0; j < seq.tokens.length; j++, t++) {
        const pos = seq.numCached + j;
        h.tokenIds[t] = seq.tokens[j]!;
        h.positions[t] = pos;
        h.slotMapping[t] = seq.blocks[Math.floor(pos / blockSize)]! * blockSize + (pos % blockSize);
      }
      if (seq.wantLogits) h.logitsIdx[nLogits++] = t - 1;
    });
    h.qsl[S] = t;
    const b = this.model.backend;
    const inp = this.inputs;
    const upload = (dst: Tensor, src: Int32Array, n: number) => {
      const view = dst.shape.length === 2 ? dst.rows(0, n / dst.shape[1]!) : dst.rows(0, n);
      b.write(view, src.subarray(0, n));
      return view;
    };
    return {
      numTokens: t,
      tokenIds: upload(inp.tokenIds, h.tokenIds, t),
      positions: upload(inp.positions, h.positions, t),
      slotMapping: upload(inp.slotMapping, h.slotMapping, t),
      logitsIndices: upload(inp.logitsIdx, h.logitsIdx, nLogits),
      attention: {
        numSeqs: S,
        queryStartLoc: upload(inp.qsl, h.qsl, S + 1),
        seqLens: upload(inp.seqLens, h.seqLens, S),
        blockTables: upload(inp.blockTables, h.blockTables, S * this.maxBlocksPerSeq),
        maxSeqLen,
      },
    };
  }
}
