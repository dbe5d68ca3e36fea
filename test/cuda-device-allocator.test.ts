// The caching device allocator's bookkeeping, over a fake device (no GPU needed): rounding,
// reuse, best fit, splitting and merging of free neighbours, the out-of-memory retry, errors,
// and tag accounting that always adds up to the totals.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import {
  DeviceAllocator,
  DeviceOutOfMemoryError,
  type DeviceStorage,
  type RawDeviceMemory,
  roundRequest,
  segmentBytesFor,
} from "../src/backend/cuda/device-allocator.js";
import { MEMORY_TAGS, type MemoryTag } from "../src/backend/tensor.js";

const KiB = 1024;
const MiB = 1024 * KiB;

/** A device with `capacity` bytes: each segment at its own 4 GiB-aligned address, so overlaps would show. */
class FakeDevice implements RawDeviceMemory {
  readonly live = new Map<bigint, number>();
  allocCalls = 0;
  private next = 0x7f00_0000_0000n;

  constructor(public capacity: number) {}

  get used(): number {
    let n = 0;
    for (const b of this.live.values()) n += b;
    return n;
  }

  tryAlloc(bytes: number): bigint | null {
    this.allocCalls++;
    if (this.used + bytes > this.capacity) return null;
    const addr = this.next;
    this.next += 1n << 32n;
    this.live.set(addr, bytes);
    return addr;
  }

  free(address: bigint, bytes: number): void {
    const have = this.live.get(address);
    assert.equal(have, bytes, `free of 0x${address.toString(16)} (${bytes} bytes): the device holds ${have ?? "nothing"} there`);
    this.live.delete(address);
  }

  memGetInfo(): { free: number; total: number } {
    return { free: this.capacity - this.used, total: this.capacity };
  }
}

function setup(capacity = 1 << 30): { dev: FakeDevice; alloc: DeviceAllocator } {
  const dev = new FakeDevice(capacity);
  return { dev, alloc: new DeviceAllocator(dev, { deviceName: "Fake GPU (device 0)" }) };
}

const addr = (s: DeviceStorage) => s.handle.address;

describe("device allocator: sizes", () => {
  it("rounds requests up to 512 bytes and picks the segment size by pool", () => {
    assert.equal(roundRequest(0), 512);
    assert.equal(roundRequest(1), 512);
    assert.equal(roundRequest(512), 512);
    assert.equal(roundRequest(513), 1024);
    assert.equal(segmentBytesFor(512), 2 * MiB);
    assert.equal(segmentBytesFor(1 * MiB), 2 * MiB, "1 MiB is still a small request");
    assert.equal(segmentBytesFor(roundRequest(MiB + 1)), 2 * MiB, "just over 1 MiB: its own segment, rounded to 2 MiB");
    assert.equal(segmentBytesFor(3 * MiB), 4 * MiB);
    assert.equal(segmentBytesFor(4 * MiB), 4 * MiB);
  });

  it("hands out the requested size but accounts the rounded block, and packs small requests in one segment", () => {
    const { dev, alloc } = setup();
    const a = alloc.allocate(1, "activations", "a");
    const b = alloc.allocate(513, "activations", "b");
    const c = alloc.allocate(0, "other", "empty");
    assert.equal(a.bytes, 1);
    assert.equal(a.handle.bytes, 1);
    assert.equal(a.blockBytes, 512);
    assert.equal(b.blockBytes, 1024);
    assert.equal(c.blockBytes, 512);
    assert.equal(dev.allocCalls, 1, "one 2 MiB segment serves all three");
    assert.equal(addr(b) - addr(a), 512n);
    assert.equal(addr(c) - addr(b), 1024n);
    const s = alloc.stats();
    assert.equal(s.allocatedBytes, 2048);
    assert.equal(s.requestedBytes, 514);
    assert.equal(s.reservedBytes, 2 * MiB);
    assert.equal(s.cachedBytes, 2 * MiB - 2048);
    for (const st of [a, b, c]) assert.equal(Number(addr(st) % 512n), 0, "blocks stay 512-byte aligned");
    alloc.checkConsistency();
  });

  it("gives a large request its own segment rounded to 2 MiB, without splitting off a remainder of 1 MiB or less", () => {
    const { dev, alloc } = setup();
    const big = alloc.allocate(3.5 * MiB, "weights", "w");
    assert.equal(dev.live.get(addr(big)), 4 * MiB);
    assert.equal(big.blockBytes, 4 * MiB, "the 0.5 MiB remainder stays with the block");
    assert.equal(alloc.stats().freeBlocks, 0);
    alloc.checkConsistency();
  });
});

describe("device allocator: reuse, best fit, splitting and merging", () => {
  it("reuses a freed block without calling the device", () => {
    const { dev, alloc } = setup();
    const a = alloc.allocate(100 * KiB, "activations", "a");
    const where = addr(a);
    alloc.free(a);
    const b = alloc.allocate(100 * KiB, "activations", "b");
    assert.equal(addr(b), where);
    assert.equal(dev.allocCalls, 1);
    const big = alloc.allocate(8 * MiB, "kv-cache", "kv");
    const bigAt = addr(big);
    alloc.free(big);
    assert.equal(addr(alloc.allocate(8 * MiB, "kv-cache", "kv again")), bigAt);
    assert.equal(dev.allocCalls, 2);
    alloc.checkConsistency();
  });

  it("takes the smallest free block that fits", () => {
    const { alloc } = setup();
    // Free holes of 8 KiB and 4 KiB, kept apart by live blocks so they cannot merge.
    const h8 = alloc.allocate(8 * KiB, "activations", "h8");
    alloc.allocate(512, "other", "sep1");
    const h4 = alloc.allocate(4 * KiB, "activations", "h4");
    alloc.allocate(512, "other", "sep2");
    const [at8, at4] = [addr(h8), addr(h4)];
    alloc.free(h8);
    alloc.free(h4);
    assert.equal(addr(alloc.allocate(3 * KiB, "activations", "fits the 4 KiB hole")), at4);
    assert.equal(addr(alloc.allocate(6 * KiB, "activations", "fits the 8 KiB hole")), at8);
    alloc.checkConsistency();
  });

  it("splits blocks and merges freed neighbours back into one", () => {
    const { dev, alloc } = setup();
    const a = alloc.allocate(64 * KiB, "activations", "a");
    const b = alloc.allocate(64 * KiB, "activations", "b");
    const c = alloc.allocate(64 * KiB, "activations", "c");
    assert.equal(alloc.stats().freeBlocks, 1, "the segment's tail");
    alloc.free(b);
    assert.equal(alloc.stats().freeBlocks, 2, "b's hole and the tail");
    alloc.free(a);
    assert.equal(alloc.stats().freeBlocks, 2, "a merged with b's hole");
    alloc.checkConsistency();
    alloc.free(c);
    assert.equal(alloc.stats().freeBlocks, 1, "the whole segment is one block again");
    assert.equal(alloc.stats().cachedBytes, 2 * MiB);
    // The merged block serves a request as large as the small pool takes.
    const whole = alloc.allocate(1 * MiB, "activations", "1 MiB");
    assert.equal(addr(whole), addr(a));
    assert.equal(dev.allocCalls, 1);
    alloc.checkConsistency();
  });

  it("splits a cached large segment for a smaller large request and serves the rest from the remainder", () => {
    const { dev, alloc } = setup();
    const big = alloc.allocate(8 * MiB, "weights", "big");
    const base = addr(big);
    alloc.free(big);
    const x = alloc.allocate(3 * MiB, "weights", "x");
    const y = alloc.allocate(5 * MiB, "weights", "y");
    assert.equal(addr(x), base);
    assert.equal(addr(y), base + BigInt(3 * MiB));
    assert.equal(dev.allocCalls, 1);
    alloc.free(x);
    alloc.free(y);
    assert.equal(alloc.stats().freeBlocks, 1);
    alloc.checkConsistency();
  });

  it("keeps small and large pools apart: a small request never splits a large segment", () => {
    const { dev, alloc } = setup();
    alloc.free(alloc.allocate(4 * MiB, "weights", "large"));
    alloc.allocate(4 * KiB, "activations", "small");
    assert.equal(dev.allocCalls, 2, "the small request got a 2 MiB small segment of its own");
    alloc.checkConsistency();
  });
});

describe("device allocator: out of memory", () => {
  it("releases cached segments and retries once when the device refuses", () => {
    const { dev, alloc } = setup(7 * MiB);
    alloc.free(alloc.allocate(6 * MiB, "activations", "profile run"));
    assert.equal(alloc.stats().reservedBytes, 6 * MiB);
    const s = alloc.allocate(4 * KiB, "kv-cache", "block table"); // needs a 2 MiB small segment: 6 + 2 > 7
    assert.equal(s.bytes, 4 * KiB);
    const st = alloc.stats();
    assert.equal(st.oomRetries, 1);
    assert.equal(st.deviceFrees, 1);
    assert.equal(st.reservedBytes, 2 * MiB);
    assert.equal(dev.used, 2 * MiB);
    alloc.checkConsistency();
  });

  it("does not release segments that still hold live blocks", () => {
    const { dev, alloc } = setup(4 * MiB);
    const keep = alloc.allocate(4 * KiB, "activations", "keep"); // 2 MiB small segment, mostly free
    alloc.allocate(1.5 * MiB, "weights", "w"); // 2 MiB large segment: the device is full
    assert.throws(() => alloc.allocate(4 * KiB + 2 * MiB, "weights", "too much"), DeviceOutOfMemoryError);
    assert.equal(dev.live.get(keep.handle.address), 2 * MiB, "the partly used segment survived the retry");
    alloc.checkConsistency();
  });

  it("then throws an error naming the request, its tag and label, and the device's free and total", () => {
    const { alloc } = setup(7 * MiB);
    alloc.allocate(3 * MiB, "weights", "model.layers.0.mlp.up_proj.weight");
    assert.throws(
      () => alloc.allocate(10 * MiB, "kv-cache", "kv cache layer 3"),
      (err: unknown) => {
        assert.ok(err instanceof DeviceOutOfMemoryError);
        assert.equal(err.requestBytes, 10 * MiB);
        assert.equal(err.tag, "kv-cache");
        assert.equal(err.label, "kv cache layer 3");
        assert.deepEqual(err.device, { free: 3 * MiB, total: 7 * MiB });
        assert.match(err.message, /cannot allocate 10\.0 MiB for "kv cache layer 3" \(tag kv-cache/);
        assert.match(err.message, /Fake GPU \(device 0\) has 3\.0 MiB free of 7\.0 MiB/);
        assert.match(err.message, /holds 4\.0 MiB in 1 allocations \(weights 4\.0 MiB\)/);
        assert.match(err.message, /--gpu-memory-utilization/);
        return true;
      },
    );
    assert.equal(alloc.stats().oomRetries, 1);
    alloc.checkConsistency();
  });

  it("passes on device errors other than out of memory", () => {
    const dev = new FakeDevice(1 << 30);
    dev.tryAlloc = () => {
      throw new Error("cuMemAlloc_v2 failed: CUDA_ERROR_ILLEGAL_ADDRESS");
    };
    const alloc = new DeviceAllocator(dev);
    assert.throws(() => alloc.allocate(1, "other", "x"), /CUDA_ERROR_ILLEGAL_ADDRESS/);
  });
});

describe("device allocator: misuse", () => {
  it("rejects a double free and a storage it never allocated, leaving its figures untouched", () => {
    const { alloc } = setup();
    const other = setup().alloc;
    const a = alloc.allocate(1000, "activations", "logits");
    alloc.allocate(1000, "activations", "hidden");
    const foreign = other.allocate(1000, "activations", "elsewhere");
    alloc.free(a);
    const before = alloc.stats();
    assert.throws(() => alloc.free(a), /storage \d+ \("logits", activations, 1000 bytes\) was freed twice or never allocated/);
    assert.throws(() => alloc.free(foreign), /\("elsewhere".*freed twice or never allocated by this allocator/);
    assert.deepEqual(alloc.stats(), before);
    alloc.checkConsistency();
  });

  it("rejects bad sizes and tags", () => {
    const { alloc } = setup();
    assert.throws(() => alloc.allocate(-1, "other", "neg"), /"neg" asks for -1 bytes; expected a non-negative integer/);
    assert.throws(() => alloc.allocate(1.5, "other", "frac"), /expected a non-negative integer/);
    assert.throws(() => alloc.allocate(8, "gradients" as MemoryTag, "g"), /tag "gradients"; expected one of weights, kv-cache/);
  });
});

describe("device allocator: accounting", () => {
  it("tags always add up to the totals, blocks never overlap, and everything returns to the device", () => {
    const sizes = fc.oneof(
      fc.integer({ min: 0, max: 4 * KiB }),
      fc.integer({ min: 4 * KiB, max: 1100 * KiB }),
      fc.integer({ min: 1, max: 12 * MiB }),
    );
    const op = fc.oneof(
      fc.record({ kind: fc.constant("alloc" as const), bytes: sizes, tag: fc.constantFrom(...MEMORY_TAGS) }),
      fc.record({ kind: fc.constant("free" as const), pick: fc.nat() }),
      fc.record({ kind: fc.constant("empty" as const) }),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 120 }), (ops) => {
        const { dev, alloc } = setup(96 * MiB);
        const live: DeviceStorage[] = [];
        for (const o of ops) {
          if (o.kind === "alloc") {
            try {
              live.push(alloc.allocate(o.bytes, o.tag, `t${live.length}`));
            } catch (err) {
              if (!(err instanceof DeviceOutOfMemoryError)) throw err;
            }
          } else if (o.kind === "free" && live.length > 0) {
            alloc.free(live.splice(o.pick % live.length, 1)[0]!);
          } else if (o.kind === "empty") {
            alloc.emptyCache();
          }
          alloc.checkConsistency();
          const s = alloc.stats();
          const ledger = alloc.memoryStats();
          assert.equal(
            MEMORY_TAGS.reduce((n, t) => n + s.allocatedByTag[t], 0),
            s.allocatedBytes,
          );
          assert.equal(
            MEMORY_TAGS.reduce((n, t) => n + ledger.byTag[t], 0),
            ledger.total,
          );
          assert.equal(ledger.total, s.requestedBytes);
          assert.equal(
            live.reduce((n, st) => n + st.bytes, 0),
            s.requestedBytes,
          );
          assert.equal(
            live.reduce((n, st) => n + st.blockBytes, 0),
            s.allocatedBytes,
          );
          assert.equal(s.reservedBytes, dev.used);
          assert.ok(s.peakAllocatedBytes >= s.allocatedBytes && s.peakReservedBytes >= s.reservedBytes);
          const spans = live.map((st) => [addr(st), addr(st) + BigInt(st.blockBytes)] as const).sort((a, b) => (a[0] < b[0] ? -1 : 1));
          for (let i = 1; i < spans.length; i++) assert.ok(spans[i]![0] >= spans[i - 1]![1], "live blocks overlap");
        }
        for (const st of live) alloc.free(st);
        alloc.emptyCache();
        assert.equal(alloc.stats().reservedBytes, 0);
        assert.equal(dev.live.size, 0);
      }),
      { numRuns: 150 },
    );
  });

  it("releaseAll frees every segment, live ones included", () => {
    const { dev, alloc } = setup();
    alloc.allocate(10, "weights", "w");
    alloc.allocate(5 * MiB, "kv-cache", "kv");
    alloc.releaseAll();
    assert.equal(dev.live.size, 0);
    assert.deepEqual(alloc.stats().allocatedBytes, 0);
    assert.equal(alloc.memoryStats().total, 0);
    alloc.checkConsistency();
  });
});
