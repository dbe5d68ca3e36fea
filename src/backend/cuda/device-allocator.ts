// A caching device allocator in the spirit of PyTorch's CUDACachingAllocator.
//
// cuMemAlloc/cuMemFree are slow (they synchronise the device and go through the driver's own
// bookkeeping) and fragment memory when called per tensor, so memory is taken from the device
// in segments and handed out as blocks carved from them:
// - request sizes are rounded up to 512 B (so every block stays 512-byte aligned);
// - requests of at most 1 MiB come from 2 MiB "small" segments shared by many blocks;
//   larger ones get their own segment rounded up to 2 MiB, which a later request may split;
// - a request takes the smallest free block of its pool that fits (best fit), and the rest is
//   split off as a new free block when it is worth keeping (≥ 512 B small, > 1 MiB large);
// - a freed block merges with free neighbours of its segment; segments stay cached (reserved)
//   until the device runs out, then every wholly free segment is released and the request is
//   retried once before failing with an error naming the request and the device's figures.
// Unlike PyTorch there is one pool per size class, not per stream: the CUDA backend issues all
// work on one stream, so a freed block can be reused by the next op without an event.
//
// The device itself is reached through RawDeviceMemory, so the bookkeeping is tested without a GPU.
import { MemoryLedger, type MemoryStats } from "../allocator.js";
import { MEMORY_TAGS, type MemoryTag, type Storage } from "../tensor.js";
import { CUDA_ERROR_OUT_OF_MEMORY, DevicePtr, type CudaDriver } from "./ffi/driver.js";
import { CudaError, formatBytes } from "./ffi/errors.js";

/** Block sizes are multiples of this (PyTorch's kMinBlockSize). */
export const MIN_BLOCK_BYTES = 512;
/** Requests up to this size are served from the small pool (kSmallSize). */
export const SMALL_REQUEST_BYTES = 1 << 20;
/** Size of a small-pool segment (kSmallBuffer). */
export const SMALL_SEGMENT_BYTES = 2 << 20;
/** Large segments are rounded up to a multiple of this (kRoundLarge). */
export const LARGE_SEGMENT_ROUND_BYTES = 2 << 20;

/** The device's raw memory functions; injected so the allocator can be tested without a GPU. */
export interface RawDeviceMemory {
  /** The address of `bytes` fresh bytes, or null when the device is out of memory. Other failures throw. */
  tryAlloc(bytes: number): bigint | null;
  free(address: bigint, bytes: number): void;
  /** The device's own free and total bytes (cuMemGetInfo). */
  memGetInfo(): { free: number; total: number };
}

/** RawDeviceMemory over the driver API: cuMemAlloc_v2 / cuMemFree_v2 / cuMemGetInfo_v2 in the current context. */
export function driverMemory(driver: CudaDriver): RawDeviceMemory {
  return {
    tryAlloc(bytes) {
      try {
        return driver.memAlloc(bytes).address;
      } catch (err) {
        if (err instanceof CudaError && err.code === CUDA_ERROR_OUT_OF_MEMORY) return null;
        throw err;
      }
    },
    free: (address, bytes) => driver.memFree(new DevicePtr(address, bytes)),
    memGetInfo: () => driver.memGetInfo(),
  };
}

/** A live allocation: `handle` points at `bytes` usable bytes (the block behind it may be larger). */
export interface DeviceStorage extends Storage {
  readonly handle: DevicePtr;
  /** The block's size: `bytes` rounded up, plus any remainder too small to split off. */
  readonly blockBytes: number;
}

export interface DeviceAllocatorStats {
  /** Bytes of blocks handed out (rounded sizes), total and by tag. */
  allocatedBytes: number;
  allocatedByTag: Record<MemoryTag, number>;
  /** Bytes the callers asked for (what the ledger accounts). */
  requestedBytes: number;
  /** Bytes held from the device in segments. */
  reservedBytes: number;
  /** Reserved but not allocated: free blocks kept for reuse. */
  cachedBytes: number;
  peakAllocatedBytes: number;
  peakReservedBytes: number;
  allocations: number;
  segments: number;
  freeBlocks: number;
  /** Calls that reached the device. */
  deviceAllocs: number;
  deviceFrees: number;
  /** Times the cache was released to satisfy a request the device first refused. */
  oomRetries: number;
}

/** The device refused a request even after the allocator released its cache. */
export class DeviceOutOfMemoryError extends Error {
  constructor(
    readonly requestBytes: number,
    readonly tag: MemoryTag,
    readonly label: string,
    readonly device: { free: number; total: number } | null,
    readonly allocator: DeviceAllocatorStats,
    message: string,
  ) {
    super(message);
    this.name = "DeviceOutOfMemoryError";
  }
}

type PoolKind = "small" | "large";

interface Segment {
  readonly address: bigint;
  readonly bytes: number;
  readonly pool: PoolKind;
}

interface Block {
  readonly segment: Segment;
  /** Byte offset in the segment. */
  offset: number;
  bytes: number;
  free: boolean;
  prev: Block | null;
  next: Block | null;
  storage: DeviceStorage | null;
}

/** Free blocks of one pool ordered by (size, address), so the first that fits is the best fit. */
class FreeList {
  private readonly blocks: Block[] = [];

  get length(): number {
    return this.blocks.length;
  }

  insert(b: Block): void {
    this.blocks.splice(this.lowerBound(b.bytes, address(b)), 0, b);
  }

  remove(b: Block): void {
    const i = this.lowerBound(b.bytes, address(b));
    if (this.blocks[i] !== b) throw new Error(`device allocator: free block at 0x${address(b).toString(16)} missing from its pool`);
    this.blocks.splice(i, 1);
  }

  /** Removes and returns the smallest free block of at least `bytes`, or null. */
  takeBestFit(bytes: number): Block | null {
    const i = this.lowerBound(bytes, 0n);
    if (i >= this.blocks.length) return null;
    return this.blocks.splice(i, 1)[0]!;
  }

  all(): readonly Block[] {
    return this.blocks;
  }

  private lowerBound(bytes: number, addr: bigint): number {
    let lo = 0;
    let hi = this.blocks.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      const m = this.blocks[mid]!;
      if (m.bytes < bytes || (m.bytes === bytes && address(m) < addr)) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}

function address(b: Block): bigint {
  return b.segment.address + BigInt(b.offset);
}

/** A request's block size: at least 512 B, rounded up to a multiple of 512 B. */
export function roundRequest(bytes: number): number {
  return Math.max(MIN_BLOCK_BYTES, Math.ceil(bytes / MIN_BLOCK_BYTES) * MIN_BLOCK_BYTES);
}

/** The segment the device is asked for when no cached block fits a request of `rounded` bytes. */
export function segmentBytesFor(rounded: number): number {
  if (rounded <= SMALL_REQUEST_BYTES) return SMALL_SEGMENT_BYTES;
  return Math.ceil(rounded / LARGE_SEGMENT_ROUND_BYTES) * LARGE_SEGMENT_ROUND_BYTES;
}

function poolFor(rounded: number): PoolKind {
  return rounded <= SMALL_REQUEST_BYTES ? "small" : "large";
}

/** Whether the remainder of a block after a request is kept as a free block (PyTorch's shouldSplit). */
function worthSplitting(pool: PoolKind, remaining: number): boolean {
  return pool === "small" ? remaining >= MIN_BLOCK_BYTES : remaining > SMALL_REQUEST_BYTES;
}

export interface DeviceAllocatorOptions {
  /** Named in out-of-memory errors, e.g. "NVIDIA H100 80GB HBM3 (device 0)". */
  deviceName?: string;
}

export class DeviceAllocator {
  readonly ledger = new MemoryLedger();
  private readonly pools: Record<PoolKind, FreeList> = { small: new FreeList(), large: new FreeList() };
  private readonly segments = new Map<bigint, Segment>();
  /** Live allocations by storage id. */
  private readonly live = new Map<number, Block>();
  private readonly byTag = Object.fromEntries(MEMORY_TAGS.map((t) => [t, 0])) as Record<MemoryTag, number>;
  private allocated = 0;
  private reserved = 0;
  private peakAllocated = 0;
  private peakReserved = 0;
  private deviceAllocs = 0;
  private deviceFrees = 0;
  private oomRetries = 0;
  private readonly deviceName: string;

  constructor(
    private readonly raw: RawDeviceMemory,
    options: DeviceAllocatorOptions = {},
  ) {
    this.deviceName = options.deviceName ?? "the CUDA device";
  }

  allocate(bytes: number, tag: MemoryTag, label: string): DeviceStorage {
    if (!Number.isSafeInteger(bytes) || bytes < 0) {
      throw new RangeError(`device allocator: "${label}" asks for ${bytes} bytes; expected a non-negative integer`);
    }
    if (!MEMORY_TAGS.includes(tag))
      throw new Error(`device allocator: "${label}" has tag "${tag}"; expected one of ${MEMORY_TAGS.join(", ")}`);
    const rounded = roundRequest(bytes);
    const pool = poolFor(rounded);
    const block = this.pools[pool].takeBestFit(rounded) ?? this.newSegmentBlock(rounded, pool, bytes, tag, label);
    const remaining = block.bytes - rounded;
    if (worthSplitting(pool, remaining)) {
      const rest: Block = {
        segment: block.segment,
        offset: block.offset + rounded,
        bytes: remaining,
        free: true,
        prev: block,
        next: block.next,
        storage: null,
      };
      if (block.next) block.next.prev = rest;
      block.next = rest;
      block.bytes = rounded;
      this.pools[pool].insert(rest);
    }
    block.free = false;
    const storage: DeviceStorage = {
      id: this.ledger.newId(),
      bytes,
      tag,
      label,
      handle: new DevicePtr(address(block), bytes),
      blockBytes: block.bytes,
    };
    block.storage = storage;
    this.live.set(storage.id, block);
    this.ledger.add(storage);
    this.allocated += block.bytes;
    this.byTag[tag] += block.bytes;
    this.peakAllocated = Math.max(this.peakAllocated, this.allocated);
    return storage;
  }

  free(storage: Storage): void {
    const block = this.live.get(storage.id);
    if (!block || block.storage !== storage) {
      throw new Error(
        `device allocator: storage ${storage.id} ("${storage.label}", ${storage.tag}, ${storage.bytes} bytes) was freed twice ` +
          `or never allocated by this allocator; expected a live storage returned by allocate()`,
      );
    }
    this.live.delete(storage.id);
    this.ledger.remove(storage);
    this.allocated -= block.bytes;
    this.byTag[storage.tag] -= block.bytes;
    block.storage = null;
    block.free = true;
    const pool = this.pools[block.segment.pool];
    let merged = block;
    const prev = block.prev;
    if (prev && prev.free) {
      pool.remove(prev);
      prev.bytes += merged.bytes;
      prev.next = merged.next;
      if (merged.next) merged.next.prev = prev;
      merged = prev;
    }
    const next = merged.next;
    if (next && next.free) {
      pool.remove(next);
      merged.bytes += next.bytes;
      merged.next = next.next;
      if (next.next) next.next.prev = merged;
    }
    pool.insert(merged);
  }

  /** Returns every wholly free segment to the device; returns the bytes released. */
  emptyCache(): number {
    let released = 0;
    for (const kind of ["small", "large"] as const) {
      const pool = this.pools[kind];
      for (const b of [...pool.all()]) {
        if (b.prev !== null || b.next !== null) continue; // part of a segment still in use
        pool.remove(b);
        this.releaseSegment(b.segment);
        released += b.segment.bytes;
      }
    }
    return released;
  }

  /** Frees every segment, live allocations included: for dispose(), after the device is idle. */
  releaseAll(): void {
    for (const seg of [...this.segments.values()]) this.releaseSegment(seg);
    for (const block of this.live.values()) {
      this.ledger.remove(block.storage!);
      this.byTag[block.storage!.tag] -= block.bytes;
    }
    this.live.clear();
    this.allocated = 0;
    this.pools.small = new FreeList();
    this.pools.large = new FreeList();
  }

  /** Restarts the peaks from the current figures (to measure one phase, e.g. a profiling forward pass). */
  resetPeaks(): void {
    this.peakAllocated = this.allocated;
    this.peakReserved = this.reserved;
  }

  stats(): DeviceAllocatorStats {
    return {
      allocatedBytes: this.allocated,
      allocatedByTag: { ...this.byTag },
      requestedBytes: this.ledger.stats().total,
      reservedBytes: this.reserved,
      cachedBytes: this.reserved - this.allocated,
      peakAllocatedBytes: this.peakAllocated,
      peakReservedBytes: this.peakReserved,
      allocations: this.live.size,
      segments: this.segments.size,
      freeBlocks: this.pools.small.length + this.pools.large.length,
      deviceAllocs: this.deviceAllocs,
      deviceFrees: this.deviceFrees,
      oomRetries: this.oomRetries,
    };
  }

  /** The ledger's view (requested bytes by tag), which is what Backend.memoryStats reports. */
  memoryStats(): MemoryStats {
    return this.ledger.stats();
  }

  storages(): DeviceStorage[] {
    return this.ledger.storages() as DeviceStorage[];
  }

  /**
   * Walks every segment's chain of blocks and throws if the bookkeeping is inconsistent: blocks
   * must tile their segment exactly, no two free blocks may be neighbours (they would have been
   * merged), the pools must hold exactly the free blocks, and the totals must add up. For tests.
   */
  checkConsistency(): void {
    const fail = (what: string) => {
      throw new Error(`device allocator inconsistent: ${what}`);
    };
    const freeBlocks = new Set([...this.pools.small.all(), ...this.pools.large.all()]);
    const all = [...freeBlocks, ...this.live.values()];
    let allocated = 0;
    let reserved = 0;
    let heads = 0;
    for (const head of all.filter((b) => b.prev === null)) {
      heads++;
      const seg = head.segment;
      if (this.segments.get(seg.address) !== seg) fail(`segment 0x${seg.address.toString(16)} is not registered`);
      let offset = 0;
      for (let b: Block | null = head; b; b = b.next) {
        if (b.segment !== seg || b.offset !== offset) fail(`block at offset ${b.offset} of segment 0x${seg.address.toString(16)}`);
        if (b.free !== freeBlocks.has(b))
          fail(`block at 0x${address(b).toString(16)} is ${b.free ? "free outside" : "used inside"} a pool`);
        if (b.free && b.next?.free) fail(`free neighbours at 0x${address(b).toString(16)} were not merged`);
        if (b.next && b.next.prev !== b) fail(`broken back link after 0x${address(b).toString(16)}`);
        if (!b.free) allocated += b.bytes;
        offset += b.bytes;
      }
      if (offset !== seg.bytes) fail(`blocks cover ${offset} of segment 0x${seg.address.toString(16)}'s ${seg.bytes} bytes`);
      reserved += seg.bytes;
    }
    if (heads !== this.segments.size) fail(`${heads} block chains for ${this.segments.size} segments`);
    if (allocated !== this.allocated) fail(`allocated ${this.allocated} bytes, blocks say ${allocated}`);
    if (reserved !== this.reserved) fail(`reserved ${this.reserved} bytes, segments say ${reserved}`);
    const tagSum = MEMORY_TAGS.reduce((n, t) => n + this.byTag[t], 0);
    if (tagSum !== this.allocated) fail(`tags sum to ${tagSum} bytes, allocated is ${this.allocated}`);
  }

  private newSegmentBlock(rounded: number, pool: PoolKind, requested: number, tag: MemoryTag, label: string): Block {
    const bytes = segmentBytesFor(rounded);
    let addr = this.deviceAlloc(bytes);
    if (addr === null) {
      // Cached segments are memory the device cannot give anyone else: release them and try once more.
      this.oomRetries++;
      this.emptyCache();
      addr = this.deviceAlloc(bytes);
    }
    if (addr === null) throw this.outOfMemory(requested, bytes, tag, label);
    const segment: Segment = { address: addr, bytes, pool };
    this.segments.set(addr, segment);
    this.reserved += bytes;
    this.peakReserved = Math.max(this.peakReserved, this.reserved);
    return { segment, offset: 0, bytes, free: true, prev: null, next: null, storage: null };
  }

  private deviceAlloc(bytes: number): bigint | null {
    const addr = this.raw.tryAlloc(bytes);
    if (addr !== null) this.deviceAllocs++;
    return addr;
  }

  private releaseSegment(seg: Segment): void {
    this.raw.free(seg.address, seg.bytes);
    this.deviceFrees++;
    this.segments.delete(seg.address);
    this.reserved -= seg.bytes;
  }

  private outOfMemory(requested: number, segmentBytes: number, tag: MemoryTag, label: string): DeviceOutOfMemoryError {
    let device: { free: number; total: number } | null = null;
    try {
      device = this.raw.memGetInfo();
    } catch {
      // the figures are a courtesy; the error must still be the out-of-memory one
    }
    const s = this.stats();
    const deviceNote = device
      ? `${this.deviceName} has ${formatBytes(device.free)} free of ${formatBytes(device.total)}`
      : `${this.deviceName}'s free memory is unknown`;
    const tags = MEMORY_TAGS.filter((t) => s.allocatedByTag[t] > 0)
      .map((t) => `${t} ${formatBytes(s.allocatedByTag[t])}`)
      .join(", ");
    const message =
      `CUDA out of memory: cannot allocate ${formatBytes(requested)} for "${label}" (tag ${tag}; a ${formatBytes(segmentBytes)} ` +
      `segment was asked of the device, after releasing the cache): ${deviceNote}; Tokamak holds ${formatBytes(s.allocatedBytes)} ` +
      `in ${s.allocations} allocations${tags ? ` (${tags})` : ""} and ${formatBytes(s.cachedBytes)} cached in partly used segments. ` +
      `Expected the request to fit: lower --gpu-memory-utilization, --max-model-len or --max-num-batched-tokens, ` +
      `or free the GPU from other processes (nvidia-smi)`;
    return new DeviceOutOfMemoryError(requested, tag, label, device, s, message);
  }
}
