/**
 * Activation memory planning. Each buffer a forward pass needs is live over a
 * span of op indices; buffers whose spans do not overlap may share bytes. The
 * plan places the largest buffers first at the lowest offset that clashes with
 * no already-placed buffer live at the same time (greedy by size), so the arena
 * holds about one layer's worth of activations, not the model's.
 */
export interface BufferRequest {
  name: string;
  bytes: number;
  /** First and last op index (inclusive) at which the buffer is live. */
  first: number;
  last: number;
}

export interface ArenaPlan {
  offsets: Map<string, number>;
  /** Bytes of the arena. */
  totalBytes: number;
  /** Bytes the same buffers would take without sharing. */
  unsharedBytes: number;
}

const ALIGN = 256;

export function planArena(requests: BufferRequest[]): ArenaPlan {
  const placed: { first: number; last: number; start: number; end: number }[] = [];
  const offsets = new Map<string, number>();
  const order = [...requests].sort((a, b) => b.bytes - a.bytes || a.first - b.first);
  let totalBytes = 0;
  for (const r of order) {
    if (offsets.has(r.name)) throw new Error(`planArena: buffer "${r.name}" requested twice`);
    const size = alignUp(r.bytes);
    const clashes = placed.filter((p) => p.first <= r.last && r.first <= p.last).sort((a, b) => a.start - b.start);
    let start = 0;
    for (const c of clashes) {
      if (start + size <= c.start) break;
      start = Math.max(start, c.end);
    }
    placed.push({ first: r.first, last: r.last, start, end: start + size });
    offsets.set(r.name, start);
    totalBytes = Math.max(totalBytes, start + size);
  }
  const unsharedBytes = requests.reduce((a, r) => a + alignUp(r.bytes), 0);
  return { offsets, totalBytes, unsharedBytes };
}

function alignUp(n: number): number {
  return Math.ceil(n / ALIGN) * ALIGN;
}
