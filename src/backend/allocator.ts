import type { MemoryTag, Storage } from "./tensor.js";
import { MEMORY_TAGS } from "./tensor.js";

/** One live allocation, for memory maps. */
export interface AllocationInfo {
  tag: MemoryTag;
  label: string;
  bytes: number;
}

/** Where the device's memory goes: the allocator's view and the device's own. */
export interface MemoryReport {
  stats: MemoryStats;
  allocations: AllocationInfo[];
  /** The device's own figures (on CPU: the machine's RAM). */
  device: { name: string; totalBytes: number; freeBytes: number };
}

export interface MemoryStats {
  /** Bytes currently allocated, by tag. */
  byTag: Record<MemoryTag, number>;
  total: number;
  peak: number;
  allocations: number;
}

/**
 * Accounting shared by every backend's allocator: each live storage is known
 * by id with its tag and label, so memory can be shown by what it is for.
 */
export class MemoryLedger {
  private live = new Map<number, Storage>();
  private byTag = Object.fromEntries(MEMORY_TAGS.map((t) => [t, 0])) as Record<MemoryTag, number>;
  private total = 0;
  private peak = 0;
  private nextId = 1;

  newId(): number {
    return this.nextId++;
  }

  add(s: Storage): void {
    this.live.set(s.id, s);
    this.byTag[s.tag] += s.bytes;
    this.total += s.bytes;
    this.peak = Math.max(this.peak, this.total);
  }

  remove(s: Storage): void {
    if (!this.live.delete(s.id)) throw new Error(`storage ${s.id} ("${s.label}") freed twice or never allocated`);
    this.byTag[s.tag] -= s.bytes;
    this.total -= s.bytes;
  }

  stats(): MemoryStats {
    return { byTag: { ...this.byTag }, total: this.total, peak: this.peak, allocations: this.live.size };
  }

  storages(): Storage[] {
    return [...this.live.values()];
  }
}
