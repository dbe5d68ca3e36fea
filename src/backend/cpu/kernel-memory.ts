/**
 * The CPU backend's kernel memory: one shared WebAssembly.Memory that every pool thread's
 * quantized-matrix kernels import, so that quantized weights are read where they lie instead of
 * being copied into each thread's own wasm memory (the copy bounded decode at ~10 GB/s).
 *
 * Storages are carved out of it by a first-fit allocator over 64-byte-aligned ranges; it grows in
 * 64 KiB pages as weights are loaded, up to wasm32's 4 GiB (or a smaller limit). Growing a shared
 * memory never moves or detaches it, so views made before a growth stay valid.
 */

const PAGE = 65536;
const ALIGN = 64;
const MAX_PAGES = 65536;

interface Range {
  start: number;
  end: number;
}

export class KernelMemory {
  readonly memory: WebAssembly.Memory;
  /** Free ranges below `top`, sorted by start and coalesced. */
  private free: Range[] = [];
  /** End of the highest allocation: everything above it (to the memory's size) is free. */
  private top = ALIGN;
  private sizes = new Map<number, number>();
  /** Bytes the allocator may use (the memory itself may grow to 4 GiB regardless). */
  readonly limitBytes: number;

  /** `limitBytes`: the most this memory hands out, at most wasm32's 4 GiB (a smaller limit lets tests reach it). */
  constructor(limitBytes = MAX_PAGES * PAGE) {
    this.limitBytes = Math.min(limitBytes, MAX_PAGES * PAGE);
    this.memory = new WebAssembly.Memory({ initial: 1, maximum: MAX_PAGES, shared: true });
  }

  /** The whole memory as it is now (a fresh view after growth). */
  get buffer(): SharedArrayBuffer {
    return this.memory.buffer as unknown as SharedArrayBuffer;
  }

  /** Bytes allocated now. */
  get usedBytes(): number {
    let n = 0;
    for (const s of this.sizes.values()) n += s;
    return n;
  }

  /**
   * The address of `bytes` fresh bytes (zeroed), or undefined when the limit cannot hold them with at
   * least `reserve` bytes to spare beyond the highest allocation (room kept for what must be there).
   */
  alloc(bytes: number, reserve = 0): number | undefined {
    const size = Math.max(ALIGN, Math.ceil(bytes / ALIGN) * ALIGN);
    const i = this.free.findIndex((r) => r.end - r.start >= size);
    let addr: number;
    if (i >= 0) {
      const r = this.free[i]!;
      addr = r.start;
      r.start += size;
      if (r.start === r.end) this.free.splice(i, 1);
      new Uint8Array(this.buffer, addr, size).fill(0);
    } else {
      addr = this.top;
      const end = addr + size;
      if (end + reserve > this.limitBytes) return undefined;
      const have = this.memory.buffer.byteLength;
      if (end > have) {
        const pages = Math.ceil((end - have) / PAGE);
        if (have / PAGE + pages > MAX_PAGES) return undefined;
        try {
          this.memory.grow(pages);
        } catch {
          return undefined;
        }
      }
      this.top = end;
    }
    this.sizes.set(addr, size);
    return addr;
  }

  release(addr: number): void {
    const size = this.sizes.get(addr);
    if (size === undefined) return;
    this.sizes.delete(addr);
    let r: Range = { start: addr, end: addr + size };
    // Insert sorted, then merge with the neighbours; a range reaching `top` lowers it instead.
    let i = this.free.findIndex((f) => f.start > addr);
    if (i < 0) i = this.free.length;
    this.free.splice(i, 0, r);
    const next = this.free[i + 1];
    if (next && next.start === r.end) {
      r.end = next.end;
      this.free.splice(i + 1, 1);
    }
    const prev = this.free[i - 1];
    if (prev && prev.end === r.start) {
      prev.end = r.end;
      this.free.splice(i, 1);
      r = prev;
      i--;
    }
    if (r.end === this.top) {
      this.top = r.start;
      this.free.splice(i, 1);
    }
  }
}
