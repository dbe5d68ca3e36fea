import type { DType } from "../backend/dtype.js";
import type { Backend } from "../backend/backend.js";
import type { Tensor } from "../backend/tensor.js";
import { allocateKVCache, freeKVCache, type ForwardBatch, type KVCache, type LlamaModel } from "../model/llama.js";
import { SamplingTable } from "./sampling-table.js";
import { type ScheduledSequence, type StepExecutor, type StepInput, type StepOutput } from "./step.js";

export type { ScheduledSequence } from "./step.js";

export interface RunnerOptions {
  numBlocks: number;
  blockSize: number;
  maxModelLen: number;
  /** Default: the backend's activation dtype. */
  kvCacheDType?: DType;
}

/** What one step moved to the device (for the overhead benchmark and tests). */
export interface UploadStats {
  steps: number;
  /** backend.write calls: one packed input buffer per step, plus block-table entries that changed. */
  writes: number;
  /** i32 values written. */
  values: number;
}

interface Row {
  slot: number;
  /** Leading entries of this row's block table already on the device. */
  uploadedBlocks: number;
}

/**
 * The executor over a real model, with vLLM V1's persistent batch: each request in the batch owns a
 * row (slot) of a block table kept on the device between steps, and its sampling state beside it. A
 * step applies the engine's diff (rows leave and are condensed, rows enter), uploads only the
 * block-table entries that are new and one packed buffer of per-token inputs (token ids, positions,
 * slot mapping, query starts, context lengths, logits rows), runs the model, and samples on the
 * backend: only token ids (and log-probabilities where asked) come back.
 */
export class ModelRunner implements StepExecutor {
  readonly kv: KVCache;
  readonly maxBlocksPerSeq: number;
  readonly sampling = new SamplingTable();
  readonly uploads: UploadStats = { steps: 0, writes: 0, values: 0 };
  private packed: Tensor;
  private packedHost: Int32Array;
  private blockTable: Tensor;
  private tableHost: Int32Array;
  private rows = new Map<string, Row>();
  /** Slot -> request id; slots [0, rows.size) are in use. */
  private slotIds: string[] = [];
  private bySlot: Int32Array;

  constructor(
    readonly model: LlamaModel,
    readonly opts: RunnerOptions,
  ) {
    const backend: Backend = model.backend;
    this.kv = allocateKVCache(backend, model.config, opts.numBlocks, opts.blockSize, opts.kvCacheDType);
    this.maxBlocksPerSeq = Math.ceil(opts.maxModelLen / opts.blockSize);
    const T = model.limits.maxNumTokens;
    const S = model.limits.maxNumLogits;
    this.packed = backend.alloc([3 * T + 3 * S + 1], "i32", "workspace", "step inputs (packed)");
    this.packedHost = new Int32Array(3 * T + 3 * S + 1);
    this.blockTable = backend.alloc([S * this.maxBlocksPerSeq], "i32", "workspace", "block tables");
    this.tableHost = new Int32Array(S * this.maxBlocksPerSeq).fill(-1);
    backend.write(this.blockTable, this.tableHost);
    this.bySlot = new Int32Array(S);
  }

  get vocabSize(): number {
    return this.model.config.vocabSize;
  }

  dispose(): void {
    const b = this.model.backend;
    freeKVCache(b, this.kv);
    b.free(this.packed.storage);
    b.free(this.blockTable.storage);
  }

  /** Run one step: forward pass, then sampling on the backend; the promise settles when the token ids are on the host. */
  async execute(step: StepInput): Promise<StepOutput> {
    const { logits, order } = this.forward(step);
    const seqs = step.seqs;
    // Rows of `logits` follow slot order; the outputs follow the step's sequence order.
    const sampledSeqs: ScheduledSequence[] = [];
    for (const k of order) if (seqs[k]!.sample) sampledSeqs.push(seqs[k]!);
    const rows = this.sampling.rowsFor(sampledSeqs);
    const out = await this.model.backend.sampleAsync(logits, rows);
    this.sampling.accept(rows, out.tokens);
    return this.inStepOrder(seqs, order, out);
  }

  /**
   * The step's logits on the host, in the step's order of sampled sequences, without sampling: for
   * comparing against an oracle (the single-sequence Generator). Full logits cross to the host here only.
   */
  async logits(step: StepInput): Promise<Float32Array> {
    const { logits, order } = this.forward(step);
    return this.logitsInStepOrder(step, order, await this.model.backend.readAsync(logits));
  }

  /** The same on a backend that reads back synchronously. */
  logitsSync(step: StepInput): Float32Array {
    const { logits, order } = this.forward(step);
    return this.logitsInStepOrder(step, order, this.model.backend.read(logits));
  }

  private logitsInStepOrder(step: StepInput, order: readonly number[], host: Float32Array): Float32Array {
    const V = this.vocabSize;
    const out = new Float32Array(host.length);
    let row = 0;
    const rank = new Map<number, number>();
    for (const k of order) if (step.seqs[k]!.sample) rank.set(k, row++);
    let i = 0;
    step.seqs.forEach((s, k) => {
      if (!s.sample) return;
      out.set(host.subarray(rank.get(k)! * V, (rank.get(k)! + 1) * V), i++ * V);
    });
    return out;
  }

  /** Take requests out of the persistent batch between steps. */
  forget(ids: readonly string[]): void {
    this.applyDiff({ added: [], removed: ids, seqs: [] });
  }

  private inStepOrder(seqs: readonly ScheduledSequence[], order: readonly number[], out: StepOutput): StepOutput {
    // order[slot] = index in seqs; result j (slot order) belongs to seqs[order[...]].
    let identity = true;
    for (let s = 0; s < order.length; s++) if (order[s] !== s) identity = false;
    if (identity) return out;
    const rankOf = new Int32Array(seqs.length).fill(-1);
    let r = 0;
    for (const k of order) if (seqs[k]!.sample) rankOf[k] = r++;
    const tokens = new Int32Array(out.tokens.length);
    const logprobs: StepOutput["logprobs"][number][] = [];
    let j = 0;
    for (let k = 0; k < seqs.length; k++) {
      if (!seqs[k]!.sample) continue;
      tokens[j] = out.tokens[rankOf[k]!]!;
      logprobs.push(out.logprobs[rankOf[k]!]!);
      j++;
    }
    return { tokens, logprobs };
  }

  private forward(step: StepInput): { logits: Tensor; order: number[] } {
    this.applyDiff(step);
    const order = this.slotOrder(step.seqs);
    const batch = this.prepare(step.seqs, order);
    return { logits: this.model.forward(batch, this.kv), order };
  }

  /** Rows leave (the last row moves into each hole, so slots stay dense), then rows enter. */
  private applyDiff(step: StepInput): void {
    this.sampling.apply(step);
    for (const id of step.removed) {
      const row = this.rows.get(id);
      if (!row) continue;
      this.rows.delete(id);
      const lastSlot = this.slotIds.length - 1;
      const lastId = this.slotIds.pop()!;
      if (row.slot !== lastSlot) {
        const moved = this.rows.get(lastId)!;
        const W = this.maxBlocksPerSeq;
        this.tableHost.copyWithin(row.slot * W, lastSlot * W, lastSlot * W + moved.uploadedBlocks);
        this.slotIds[row.slot] = lastId;
        moved.slot = row.slot;
        this.uploadTable(row.slot * W, moved.uploadedBlocks);
      }
    }
    for (const a of step.added) {
      if (this.rows.has(a.id)) throw new Error(`persistent batch: request ${a.id} was added twice without being removed`);
      if (this.slotIds.length >= this.model.limits.maxNumLogits)
        throw new RangeError(`persistent batch: more than ${this.model.limits.maxNumLogits} requests`);
      this.rows.set(a.id, { slot: this.slotIds.length, uploadedBlocks: 0 });
      this.slotIds.push(a.id);
    }
  }

  /** Which sequence sits in each slot: every row of the batch is scheduled this step (the engine removes the others). */
  private slotOrder(seqs: readonly ScheduledSequence[]): number[] {
    const S = seqs.length;
    if (S < 1 || S > this.model.limits.maxNumLogits)
      throw new RangeError(`a step holds 1..${this.model.limits.maxNumLogits} sequences, got ${S}`);
    if (S !== this.slotIds.length)
      throw new Error(
        `persistent batch: ${this.slotIds.length} requests in the batch, ${S} scheduled; unscheduled requests must be removed`,
      );
    this.bySlot.fill(-1, 0, S);
    seqs.forEach((s, k) => {
      const row = this.rows.get(s.id);
      if (!row) throw new Error(`persistent batch: request ${s.id} is scheduled but was never added`);
      if (this.bySlot[row.slot] !== -1) throw new Error(`persistent batch: request ${s.id} is scheduled twice`);
      this.bySlot[row.slot] = k;
    });
    return Array.from(this.bySlot.subarray(0, S));
  }

  private uploadTable(start: number, count: number): void {
    if (count === 0) return;
    this.model.backend.write(this.blockTable.rows(start, count), this.tableHost.subarray(start, start + count));
    this.uploads.writes++;
    this.uploads.values += count;
  }

  private prepare(seqs: readonly ScheduledSequence[], order: readonly number[]): ForwardBatch {
    const { blockSize, maxModelLen } = this.opts;
    const W = this.maxBlocksPerSeq;
    const S = seqs.length;
    const T = this.model.limits.maxNumTokens;
    const V = this.vocabSize;
    let t = 0;
    for (const s of seqs) t += s.tokens.length;
    if (t > T) throw new RangeError(`step exceeds ${T} tokens`);
    let nLogits = 0;
    for (const s of seqs) if (s.sample) nLogits++;
    // One packed buffer: [token ids | positions | slot mapping] (t each), query starts (S + 1), context lengths (S), logits rows.
    const h = this.packedHost;
    const oPos = t;
    const oSlot = 2 * t;
    const oQsl = 3 * t;
    const oLens = oQsl + S + 1;
    const oIdx = oLens + S;
    let maxSeqLen = 0;
    let tok = 0;
    let li = 0;
    for (let slot = 0; slot < S; slot++) {
      const seq = seqs[order[slot]!]!;
      const row = this.rows.get(seq.id)!;
      const ctx = seq.numCached + seq.tokens.length;
      if (ctx > maxModelLen) throw new RangeError(`sequence ${seq.id} reaches ${ctx} tokens, beyond max model length ${maxModelLen}`);
      if (seq.blocks.length * blockSize < ctx) throw new RangeError(`sequence ${seq.id} has ${seq.blocks.length} blocks for ${ctx} tokens`);
      if (seq.blocks.length > W) throw new RangeError(`sequence ${seq.id} has ${seq.blocks.length} blocks, more than ${W}`);
      if (seq.blocks.length > row.uploadedBlocks) {
        const from = row.uploadedBlocks;
        for (let b = from; b < seq.blocks.length; b++) this.tableHost[slot * W + b] = seq.blocks[b]!;
        this.uploadTable(slot * W + from, seq.blocks.length - from);
        row.uploadedBlocks = seq.blocks.length;
      }
      h[oQsl + slot] = tok;
      h[oLens + slot] = ctx;
      if (ctx > maxSeqLen) maxSeqLen = ctx;
      for (let j = 0; j < seq.tokens.length; j++, tok++) {
        const pos = seq.numCached + j;
        const id = seq.tokens[j]!;
        // Checked here, not only in a kernel: a device backend's embedding cannot report a bad id.
        if (!(id >= 0 && id < V)) throw new RangeError(`embedding: token id ${id} outside the vocabulary [0, ${V})`);
        h[tok] = id;
        h[oPos + tok] = pos;
        h[oSlot + tok] = seq.blocks[(pos / blockSize) | 0]! * blockSize + (pos % blockSize);
      }
      if (seq.sample) h[oIdx + li++] = tok - 1;
    }
    h[oQsl + S] = tok;
    const used = oIdx + nLogits;
    const b = this.model.backend;
    const packed = this.packed.rows(0, used);
    b.write(packed, h.subarray(0, used));
    this.uploads.steps++;
    this.uploads.writes++;
    this.uploads.values += used;
    const at = (start: number, n: number) => this.packed.rows(start, n);
    return {
      numTokens: t,
      tokenIds: at(0, t),
      positions: at(oPos, t),
      slotMapping: at(oSlot, t),
      logitsIndices: at(oIdx, nLogits),
      attention: {
        numSeqs: S,
        queryStartLoc: at(oQsl, S + 1),
        seqLens: at(oLens, S),
        blockTables: this.blockTable.rows(0, S * W).view([S, W]),
        maxSeqLen,
      },
    };
  }
}
