"""Seeded sample orders that every runtime reproduces bit for bit: PCG32 + Fisher-Yates.

A runner in another language (device_runner/web/src/order.mjs) must visit the samples in the same order for the
same seed, so the order cannot come from numpy's generators. PCG32 is M. E. O'Neill's `pcg32_random_r`
(pcg-random.org, "PCG: A Family of Simple Fast Space-Efficient Statistically Good Algorithms", 2014; reference
C code `pcg_basic.c`): 64-bit LCG state, XSH-RR output; `pcg32_srandom_r(initstate, initseq)` seeds it and
`pcg32_boundedrand_r` draws an unbiased integer below a bound. The permutation is Durstenfeld's Fisher-Yates:
for i = n-1 down to 1, swap a[i] with a[bounded(i + 1)].

Streams (initseq) keep the uses independent: EPOCH (shuffle of epoch e uses initstate = seed + e), SPLIT
(--val-split, initstate = seed), SUBSET (--max-samples, initstate = seed).
"""

from __future__ import annotations

import numpy as np

MASK64 = (1 << 64) - 1
MASK32 = (1 << 32) - 1
MULTIPLIER = 6364136223846793005
EPOCH, SPLIT, SUBSET = 0, 1, 2


class PCG32:
    """pcg32_random_r: 32-bit outputs from a 64-bit state (pcg_basic.c)."""

    def __init__(self, initstate: int, initseq: int):
        self.state, self.inc = 0, ((initseq << 1) | 1) & MASK64
        self.next()
        self.state = (self.state + initstate) & MASK64
        self.next()

    def next(self) -> int:
        old = self.state
        self.state = (old * MULTIPLIER + self.inc) & MASK64
        xorshifted = (((old >> 18) ^ old) >> 27) & MASK32
        rot = old >> 59
        return ((xorshifted >> rot) | (xorshifted << ((-rot) & 31))) & MASK32

    def bounded(self, bound: int) -> int:
        """Uniform integer in [0, bound) (pcg32_boundedrand_r: rejection below 2^32 mod bound)."""
        threshold = ((1 << 32) - bound) % bound
        while True:
            r = self.next()
            if r >= threshold:
                return r % bound


def permutation(n: int, seed: int, stream: int = EPOCH) -> np.ndarray:
    """A permutation of range(n) (int64 [n]) determined by (seed, stream); seed may be any int >= 0."""
    rng = PCG32(seed & MASK64, stream)
    a = list(range(n))
    for i in range(n - 1, 0, -1):
        j = rng.bounded(i + 1)
        a[i], a[j] = a[j], a[i]
    return np.asarray(a, np.int64)
