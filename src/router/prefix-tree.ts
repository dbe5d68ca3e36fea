/**
 * The router's picture of each replica's prefix cache: one radix tree over the text of recent prompts,
 * every node marked with the replicas that served a prompt through it and when (SGLang's approximate
 * tree). A lookup walks the tree once and yields, for every replica, how many leading characters of
 * the prompt it has seen; each replica's share is bounded, oldest leaves evicted first.
 */

interface Node {
  /** The edge label into this node. */
  label: string;
  children: Map<string, Node>;
  parent: Node | null;
  /** Replica id → last time (a logical clock) a prompt through this node went there. */
  tenants: Map<string, number>;
}

const node = (label: string, parent: Node | null): Node => ({ label, children: new Map(), parent, tenants: new Map() });

function commonPrefix(a: string, b: string, from: number): number {
  let i = 0;
  const n = Math.min(a.length, b.length - from);
  while (i < n && a.charCodeAt(i) === b.charCodeAt(from + i)) i++;
  return i;
}

export interface PrefixMatch {
  /** Characters of the prompt matched, per replica (replicas with no match are absent). */
  matched: Map<string, number>;
  /** The prompt's length in characters. */
  length: number;
}

export class PrefixTree {
  private readonly root = node("", null);
  private clock = 0;
  /** Characters held per replica (the sum of the labels of the nodes it is marked on). */
  private readonly size = new Map<string, number>();

  /** @param maxCharsPerReplica the most characters remembered per replica; older leaves go first. */
  constructor(readonly maxCharsPerReplica = 1 << 20) {}

  /** Characters remembered for `replica`. */
  charsOf(replica: string): number {
    return this.size.get(replica) ?? 0;
  }

  /** For every replica, the longest prefix of `text` it was sent. */
  match(text: string): PrefixMatch {
    const matched = new Map<string, number>();
    let cur = this.root;
    let depth = 0;
    while (depth < text.length) {
      const child = cur.children.get(text[depth]!);
      if (!child) break;
      const k = commonPrefix(child.label, text, depth);
      // Every tenant of a node is a tenant of its parent (insert marks whole paths), so depths only grow.
      for (const t of child.tenants.keys()) matched.set(t, depth + k);
      depth += k;
      if (k < child.label.length) break;
      cur = child;
    }
    return { matched, length: text.length };
  }

  /** Record that `text` went to `replica`. */
  insert(text: string, replica: string): void {
    const now = ++this.clock;
    let cur = this.root;
    let depth = 0;
    while (depth < text.length) {
      const first = text[depth]!;
      let child = cur.children.get(first);
      if (!child) {
        child = node(text.slice(depth), cur);
        cur.children.set(first, child);
      } else {
        const k = commonPrefix(child.label, text, depth);
        if (k < child.label.length) child = this.split(child, k);
      }
      this.mark(child, replica, now);
      depth += child.label.length;
      cur = child;
    }
    this.evict(replica);
  }

  /** Forget everything about `replica` (it was removed, or restarted with a cold cache). */
  removeReplica(replica: string): void {
    const walk = (n: Node): void => {
      for (const c of [...n.children.values()]) walk(c);
      if (n !== this.root && n.tenants.delete(replica) && n.tenants.size === 0) this.detach(n);
    };
    walk(this.root);
    this.size.delete(replica);
  }

  private mark(n: Node, replica: string, now: number): void {
    if (!n.tenants.has(replica)) this.size.set(replica, this.charsOf(replica) + n.label.length);
    n.tenants.set(replica, now);
  }

  /** Split `n` after `k` characters of its label; returns the new upper node (same tenants). */
  private split(n: Node, k: number): Node {
    const parent = n.parent!;
    const upper = node(n.label.slice(0, k), parent);
    upper.tenants = new Map(n.tenants);
    parent.children.set(upper.label[0]!, upper);
    n.label = n.label.slice(k);
    n.parent = upper;
    upper.children.set(n.label[0]!, n);
    return upper;
  }

  private detach(n: Node): void {
    n.parent!.children.delete(n.label[0]!);
    // A parent left with one child and the same tenants could merge; keeping it unmerged costs nothing in correctness.
  }

  /** Drop `replica`'s least recently used leaves until it holds at most 90% of its bound. */
  private evict(replica: string): void {
    if (this.charsOf(replica) <= this.maxCharsPerReplica) return;
    const goal = Math.floor(this.maxCharsPerReplica * 0.9);
    const leaves: Node[] = [];
    const isLeafOf = (n: Node) => ![...n.children.values()].some((c) => c.tenants.has(replica));
    const walk = (n: Node): void => {
      for (const c of n.children.values()) if (c.tenants.has(replica)) walk(c);
      if (n !== this.root && isLeafOf(n)) leaves.push(n);
    };
    walk(this.root);
    // A min-heap by last use: removing a leaf can turn its parent into the next leaf.
    const heap = new MinHeap<Node>((a, b) => a.tenants.get(replica)! - b.tenants.get(replica)!);
    for (const l of leaves) heap.push(l);
    while (this.charsOf(replica) > goal && heap.size > 0) {
      const n = heap.pop()!;
      n.tenants.delete(replica);
      this.size.set(replica, this.charsOf(replica) - n.label.length);
      const parent = n.parent!;
      if (n.tenants.size === 0) this.detach(n);
      if (parent !== this.root && parent.tenants.has(replica) && isLeafOf(parent)) heap.push(parent);
    }
  }
}

class MinHeap<T> {
  private readonly a: T[] = [];
  constructor(private readonly less: (x: T, y: T) => number) {}
  get size(): number {
    return this.a.length;
  }
  push(v: T): void {
    const a = this.a;
    a.push(v);
    let i = a.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (this.less(a[i]!, a[p]!) >= 0) break;
      [a[i], a[p]] = [a[p]!, a[i]!];
      i = p;
    }
  }
  pop(): T | undefined {
    const a = this.a;
    if (a.length === 0) return undefined;
    const top = a[0];
    const last = a.pop()!;
    if (a.length > 0) {
      a[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < a.length && this.less(a[l]!, a[m]!) < 0) m = l;
        if (r < a.length && this.less(a[r]!, a[m]!) < 0) m = r;
        if (m === i) break;
        [a[i], a[m]] = [a[m]!, a[i]!];
        i = m;
      }
    }
    return top;
  }
}
