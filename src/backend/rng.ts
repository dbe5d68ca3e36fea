/**
 * The one random generator: Philox2x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3"),
 * counter-based. A draw is a pure function of a 32-bit key and a counter, so a request's n-th sampled token
 * uses draw (seed, n) whatever the batch, the step it ran in or the backend (the CUDA and WGSL kernels
 * compute the same ten rounds). `Rng` walks the counter for a plain seeded stream.
 */

const M0 = 0xd256d193;
const W0 = 0x9e3779b9;

/** High 32 bits of the 64-bit product of two u32s, exactly (16-bit limbs). */
function mulhi(a: number, b: number): number {
  const al = a & 0xffff;
  const ah = a >>> 16;
  const bl = b & 0xffff;
  const bh = b >>> 16;
  const ll = al * bl;
  const hl = ah * bl;
  const lh = al * bh;
  const mid = (ll >>> 16) + (hl & 0xffff) + (lh & 0xffff);
  return (ah * bh + (hl >>> 16) + (lh >>> 16) + (mid >>> 16)) >>> 0;
}

/** Philox2x32-10 of counter (c0, c1) under key: two u32 words, written to out[0], out[1]. */
export function philox2x32(key: number, c0: number, c1: number, out: Uint32Array | number[]): void {
  let x0 = c0 >>> 0;
  let x1 = c1 >>> 0;
  let k = key >>> 0;
  for (let r = 0; r < 10; r++) {
    const hi = mulhi(M0, x0);
    const lo = Math.imul(M0, x0) >>> 0;
    x0 = (hi ^ k ^ x1) >>> 0;
    x1 = lo;
    k = (k + W0) >>> 0;
  }
  out[0] = x0;
  out[1] = x1;
}

const scratch = new Uint32Array(2);

/** A uniform double in [0, 1) with 53 random bits: draw `counter` of stream `stream` under `key`. */
export function uniform(key: number, counter: number, stream = 0): number {
  philox2x32(key, counter, stream, scratch);
  return ((scratch[0]! >>> 5) * 67108864 + (scratch[1]! >>> 6)) / 9007199254740992;
}

/** A uniform u32: draw `counter` of stream `stream` under `key`. */
export function uniformU32(key: number, counter: number, stream = 0): number {
  philox2x32(key, counter, stream, scratch);
  return scratch[0]!;
}

/**
 * A 64-bit seed (as exact as a JSON number holds it) folded into the 32-bit key: the high word is mixed in,
 * so 2^32 or -2^63 no longer alias 0; seeds in [0, 2^32) are their own key.
 */
export function foldSeed(seed: number): number {
  const lo = seed >>> 0;
  const hi = Math.floor(seed / 2 ** 32) >>> 0;
  return hi === 0 ? lo : (lo ^ Math.imul(hi ^ (hi >>> 16), 0x9e3779b1)) >>> 0;
}

/** Sampling draws use stream 0 of a request's key; seeds derived for other requests use this one. */
export const SEED_STREAM = 1;

/** A seeded sequential stream over the same generator (test data, derived seeds). */
export class Rng {
  private readonly key: number;
  private counter = 0;
  constructor(
    seed: number,
    private readonly stream = SEED_STREAM,
  ) {
    this.key = foldSeed(seed);
  }
  /** Uniform in [0, 1). */
  next(): number {
    return uniform(this.key, this.counter++, this.stream);
  }
  /** Uniform u32. */
  nextU32(): number {
    return uniformU32(this.key, this.counter++, this.stream);
  }
}
