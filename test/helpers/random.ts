/** Seeded random test data, all drawn from the runtime's one generator (src/backend/rng.ts). */
import { Rng } from "../../src/backend/rng.js";

export { Rng };

/** A seeded uniform [0, 1) function, for workloads written as `r()`. */
export function seeded(seed: number): () => number {
  const rng = new Rng(seed);
  return () => rng.next();
}

/** One standard normal draw (Box–Muller). */
export function gaussian(rng: Rng): number {
  const u = Math.max(rng.next(), 1e-12);
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rng.next());
}

/** `n` normal draws with standard deviation `sd`. */
export function randn(rng: Rng, n: number, sd = 1): number[] {
  return Array.from({ length: n }, () => sd * gaussian(rng));
}

/** An integer in [lo, hi). */
export function randInt(rng: Rng, lo: number, hi: number): number {
  return lo + Math.floor(rng.next() * (hi - lo));
}

/** Fisher–Yates, in place. */
export function shuffle<T>(rng: Rng, a: T[]): T[] {
  for (let i = a.length - 1; i > 0; i--) {
    const j = randInt(rng, 0, i + 1);
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a;
}
