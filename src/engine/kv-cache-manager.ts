import { createHash } from "node:crypto";
import { BlockPool, type KVBlock } from "./block-pool.js";

/** What the cache manager needs to know of a request: its tokens so far and how many are in the cache. */
export interface CacheRequest {
  readonly requestId: string;
  /** Prompt then generated tokens. */
  readonly allTokenIds: readonly number[];
  readonly numComputedTokens: number;
  /** Extra keys that change what a block's KV means for this request (e.g. a LoRA name); usually empty. */
  readonly cacheSalt?: string;
  /** Hashes of this request's full blocks, filled in as blocks fill up. */
  readonly blockHashes: string[];
}

export interface CacheStats {
  /** Prefix-cache lookups, in tokens, and how many of them hit. */
  queries: number;
  hits: number;
}

/** Chained hash of one full block: parent's hash, the block's token ids, and the request's salt. */
export function hashBlock(parent: string | null, tokens: readonly number[], salt = ""): string {
  const h = createHash("sha256");
  h.update(parent ?? "root");
  h.update(Buffer.from(Int32Array.from(tokens).buffer));
  h.update(salt);
  return h.digest("base64");
}

/**
 * Maps requests to KV blocks: finds the longest cached prefix of a new
 * request, allocates blocks as requests grow, hashes blocks as they fill so
 * later requests can share them, and gives blocks back when requests finish,
 * are aborted or are preempted.
 */
export class KVCacheManager {
  readonly pool: BlockPool;
  private owned = new Map<string, KVBlock[]>();
  /** The same blocks' ids, kept alongside so a step reads them without copying. */
  private ownedIds = new Map<string, number[]>();
  /** Hashes of blocks that scheduled steps will fill, by step: findable only once that forward pass has written them. */
  private pending = new Map<string, number>();
  private pendingByStep = new Map<number, string[]>();
  private step = 0;
  /** Per request, how many of its leading blocks commitComputed has already made findable. */
  private committed = new Map<string, number>();
  readonly stats: CacheStats = { queries: 0, hits: 0 };

  constructor(
    numBlocks: number,
    readonly blockSize: number,
    enablePrefixCaching: boolean,
  ) {
    this.pool = new BlockPool(numBlocks, enablePrefixCaching);
  }

  /** Extend req.blockHashes to cover every full block of its tokens. */
  private updateHashes(req: CacheRequest): void {
    const full = Math.floor(req.allTokenIds.length / this.blockSize);
    for (let i = req.blockHashes.length; i < full; i++) {
      const tokens = req.allTokenIds.slice(i * this.blockSize, (i + 1) * this.blockSize);
      req.blockHashes.push(hashBlock(i === 0 ? null : req.blockHashes[i - 1]!, tokens, req.cacheSalt));
    }
  }

  /**
   * The longest run of cached blocks at the start of a new request. At least
   * one token is always left to compute, since its logits are needed.
   */
  findCachedPrefix(req: CacheRequest): { blocks: KVBlock[]; numTokens: number } {
    this.updateHashes(req);
    const blocks: KVBlock[] = [];
    const maxBlocks = Math.floor((req.allTokenIds.length - 1) / this.blockSize);
    for (let i = 0; i < maxBlocks; i++) {
      const b = this.pool.lookup(req.blockHashes[i]!);
      if (!b) break;
      blocks.push(b);
    }
    return { blocks, numTokens: blocks.length * this.blockSize };
  }

  /** Count one prefix-cache lookup, once the request is admitted (a request that waits is not counted each step). */
  recordLookup(req: CacheRequest, numCachedTokens: number): void {
    if (!this.pool.enableCaching) return;
    this.stats.queries += req.allTokenIds.length;
    this.stats.hits += numCachedTokens;
  }

  /**
   * Make room for `numNewTokens` more tokens of `req` (after `cachedPrefix`,
   * for a request being admitted). Returns false, changing nothing, when the
   * free blocks do not suffice.
   */
  allocateSlots(req: CacheRequest, numNewTokens: number, cachedPrefix: readonly KVBlock[] = []): boolean {
    const have = this.owned.get(req.requestId) ?? [];
    const computed = req.numComputedTokens + cachedPrefix.length * this.blockSize;
    const needTotal = Math.ceil((computed + numNewTokens) / this.blockSize);
    const needNew = Math.max(0, needTotal - have.length - cachedPrefix.length);
    // Cached blocks nobody holds sit in the free queue: sharing them takes them out of it.
    const revived = cachedPrefix.filter((b) => b.refCount === 0).length;
    if (needNew > this.pool.numFreeBlocks - revived) return false;
    this.pool.share(cachedPrefix);
    const added = [...cachedPrefix, ...this.pool.allocate(needNew)];
    let ids = this.ownedIds.get(req.requestId);
    if (!ids) this.ownedIds.set(req.requestId, (ids = []));
    for (const b of added) {
      have.push(b);
      ids.push(b.id);
    }
    this.owned.set(req.requestId, have);
    this.notePending(req, computed + numNewTokens);
    return true;
  }

  /** Grants from here on belong to step `step` (numbered by the scheduler). */
  beginStep(step: number): void {
    this.step = step;
  }

  /** Step `step` completed or failed: its grants no longer make anyone wait (completed blocks are committed by then). */
  endStep(step: number): void {
    for (const h of this.pendingByStep.get(step) ?? []) if (this.pending.get(h) === step) this.pending.delete(h);
    this.pendingByStep.delete(step);
  }

  /** Note the blocks this grant will fill, so a request with the same prefix can wait one step and share them. */
  private notePending(req: CacheRequest, numTokens: number): void {
    if (!this.pool.enableCaching) return;
    this.updateHashes(req);
    const full = Math.min(Math.floor(numTokens / this.blockSize), req.blockHashes.length);
    let list = this.pendingByStep.get(this.step);
    if (!list) this.pendingByStep.set(this.step, (list = []));
    for (let i = Math.floor(req.numComputedTokens / this.blockSize); i < full; i++) {
      this.pending.set(req.blockHashes[i]!, this.step);
      list.push(req.blockHashes[i]!);
    }
  }

  /**
   * True when the next block `req` would compute is being computed this step by another grant:
   * admitting it a step later shares that block instead of computing it twice (n > 1 siblings).
   */
  waitsForPending(req: CacheRequest, numCachedBlocks: number): boolean {
    const next = req.blockHashes[numCachedBlocks];
    return next !== undefined && this.pending.has(next);
  }

  /**
   * After the forward pass that wrote them has completed: make the request's full blocks within its first
   * `numTokensWritten` tokens findable. Only here, so a revoked grant, a preemption or a failed step never
   * leaves a findable block whose KV was not computed.
   */
  commitComputed(req: CacheRequest, numTokensWritten: number): void {
    if (!this.pool.enableCaching) return;
    const blocks = this.owned.get(req.requestId);
    if (!blocks) return;
    this.updateHashes(req);
    const full = Math.min(Math.floor(numTokensWritten / this.blockSize), req.blockHashes.length, blocks.length);
    // Only the blocks filled since the last commit: a long sequence is not walked from its start every step.
    for (let i = this.committed.get(req.requestId) ?? 0; i < full; i++) this.pool.cacheBlock(blocks[i]!, req.blockHashes[i]!);
    this.committed.set(req.requestId, full);
  }

  /** Give back every block of a request; the tail goes to the free queue first so the shared prefix is evicted last. */
  free(requestId: string): void {
    const blocks = this.owned.get(requestId);
    if (!blocks) return;
    this.owned.delete(requestId);
    this.ownedIds.delete(requestId);
    this.committed.delete(requestId);
    this.pool.release([...blocks].reverse());
  }

  /** The request's block ids, in order: a live list that grows as blocks are allocated (copy it to keep it). */
  blockIds(requestId: string): readonly number[] {
    return this.ownedIds.get(requestId) ?? [];
  }

  numBlocksOf(requestId: string): number {
    return this.owned.get(requestId)?.length ?? 0;
  }

  /** Requests currently holding blocks. */
  get numOwners(): number {
    return this.owned.size;
  }
}
