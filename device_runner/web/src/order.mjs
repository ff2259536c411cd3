/**
 * Seeded sample orders, identical to the Python runner's (device_runner/order.py): PCG32 + Fisher-Yates.
 *
 * PCG32 is M. E. O'Neill's pcg32_random_r (pcg-random.org, reference C code pcg_basic.c): 64-bit LCG state,
 * XSH-RR output; pcg32_srandom_r(initstate, initseq) seeds it; pcg32_boundedrand_r draws an unbiased integer
 * below a bound. Durstenfeld's shuffle: for i = n-1 down to 1, swap a[i] with a[bounded(i + 1)].
 * Streams: EPOCH (initstate = seed + epoch), SPLIT (validation split), SUBSET (--max-samples).
 */
export const EPOCH = 0, SPLIT = 1, SUBSET = 2;

const MASK64 = (1n << 64n) - 1n;
const MULTIPLIER = 6364136223846793005n;

export class PCG32 {
  /** @param {number|bigint} initstate @param {number|bigint} initseq */
  constructor(initstate, initseq) {
    this.state = 0n;
    this.inc = ((BigInt(initseq) << 1n) | 1n) & MASK64;
    this.next();
    this.state = (this.state + (BigInt(initstate) & MASK64)) & MASK64;
    this.next();
  }

  /** @returns {number} uint32 */
  next() {
    const old = this.state;
    this.state = (old * MULTIPLIER + this.inc) & MASK64;
    const xorshifted = Number((((old >> 18n) ^ old) >> 27n) & 0xffffffffn);
    const rot = Number(old >> 59n);
    return ((xorshifted >>> rot) | (xorshifted << ((32 - rot) & 31))) >>> 0;
  }

  /** Uniform integer in [0, bound), bound <= 2^32 (rejection below 2^32 mod bound). */
  bounded(bound) {
    const threshold = (2 ** 32 - bound) % bound;
    for (;;) {
      const r = this.next();
      if (r >= threshold) return r % bound;
    }
  }
}

/** A permutation of 0..n-1 (Int32Array [n]) determined by (seed, stream); seed an integer >= 0. */
export function permutation(n, seed, stream = EPOCH) {
  const rng = new PCG32(BigInt(seed), stream);
  const a = new Int32Array(n);
  for (let i = 0; i < n; i++) a[i] = i;
  for (let i = n - 1; i > 0; i--) {
    const j = rng.bounded(i + 1);
    const t = a[i]; a[i] = a[j]; a[j] = t;
  }
  return a;
}
