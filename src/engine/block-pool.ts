/**
 * The KV cache's blocks: all created up front, handed out from a free queue in
 * O(1), shared by reference count, and — once full and hashed — findable by
 * their content hash for prefix caching. A freed block keeps its hash and
 * stays findable until it is reused: the free queue is also the LRU eviction
 * order (least recently freed first; a request's tail blocks are freed first
 * so its prefix lives longest).
 */
export class KVBlock {
  refCount = 0;
  /** Content hash once the block is full and cached; null otherwise. */
  hash: string | null = null;
  prev: KVBlock | null = null;
  next: KVBlock | null = null;
  constructor(readonly id: number) {}
}

/** Doubly-linked queue of free blocks: O(1) pop from the head, append at the tail, removal from the middle. */
class FreeQueue {
  private head: KVBlock | null = null;
  private tail: KVBlock | null = null;
  size = 0;

  append(b: KVBlock): void {
    b.prev = this.tail;
    b.next = null;
    if (this.tail) this.tail.next = b;
    else this.head = b;
    this.tail = b;
    this.size++;
  }

  popHead(): KVBlock | null {
    const b = this.head;
    if (b) this.remove(b);
    return b;
  }

  remove(b: KVBlock): void {
    if (b.prev) b.prev.next = b.next;
    else this.head = b.next;
    if (b.next) b.next.prev = b.prev;
    else this.tail = b.prev;
    b.prev = b.next = null;
    this.size--;
  }
}

export class BlockPool {
  readonly blocks: KVBlock[];
  private free = new FreeQueue();
  private cached = new Map<string, KVBlock>();
  /** Cached blocks that were reused for other content. */
  evictions = 0;

  constructor(
    readonly numBlocks: number,
    readonly enableCaching: boolean,
  ) {
    if (!Number.isInteger(numBlocks) || numBlocks < 1) throw new RangeError(`the KV cache needs at least one block, got ${numBlocks}`);
    this.blocks = Array.from({ length: numBlocks }, (_, i) => new KVBlock(i));
    for (const b of this.blocks) this.free.append(b);
  }

  get numFreeBlocks(): number {
    return this.free.size;
  }

  /** Fraction of blocks held by running requests (cached free blocks count as free). */
  get usage(): number {
    return 1 - this.free.size / this.numBlocks;
  }

  /** Take `n` blocks off the free queue, evicting cached content from the least recently freed. */
  allocate(n: number): KVBlock[] {
    if (n > this.free.size) throw new Error(`internal: asked for ${n} blocks with ${this.free.size} free`);
    const out: KVBlock[] = [];
    for (let i = 0; i < n; i++) {
      const b = this.free.popHead()!;
      if (b.hash !== null) {
        this.cached.delete(b.hash);
        b.hash = null;
        this.evictions++;
      }
      b.refCount = 1;
      out.push(b);
    }
    return out;
  }

  /** The cached block holding this content, if any. */
  lookup(hash: string): KVBlock | undefined {
    return this.enableCaching ? this.cached.get(hash) : undefined;
  }

  /** Take a reference on blocks found in the cache (they leave the free queue if nobody held them). */
  share(blocks: readonly KVBlock[]): void {
    for (const b of blocks) {
      if (b.refCount === 0) this.free.remove(b);
      b.refCount++;
    }
  }

  /** Mark a full block as holding `hash`, so later requests with the same prefix find it. */
  cacheBlock(b: KVBlock, hash: string): void {
    if (!this.enableCaching || b.hash !== null) return;
    if (this.cached.has(hash)) return; // same content computed twice concurrently: keep the first
    b.hash = hash;
    this.cached.set(hash, b);
  }

  /** Drop a reference on each block; blocks nobody holds join the free queue in the order given. */
  release(blocks: readonly KVBlock[]): void {
    for (const b of blocks) {
      if (b.refCount <= 0) throw new Error(`internal: block ${b.id} released more often than taken`);
      if (--b.refCount === 0) this.free.append(b);
    }
  }

  /** Forget every cached hash (e.g. after weights change). Only valid when no block is in use. */
  resetPrefixCache(): boolean {
    if (this.free.size !== this.numBlocks) return false;
    for (const b of this.blocks) b.hash = null;
    this.cached.clear();
    return true;
  }
}
