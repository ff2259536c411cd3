"""Feature cache: the frozen backbone's output per training sample, computed once and reused.

In memory when it fits `budget_mb`, else in a memory-mapped file of the run folder (which survives a
restart: its `filled` index is saved with every checkpoint).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np


class FeatureCache:
    def __init__(self, n: int, shape: tuple, budget_mb: float, folder: Path, name: str = "features",
                 enabled: bool = True):
        self.enabled = enabled
        self.filled = np.zeros(n, bool)
        self.shape = (n, *shape)
        nbytes = n * int(np.prod(shape)) * 4
        self.kind = "off" if not enabled else ("memory" if nbytes <= budget_mb * 2**20 else "disk")
        self.path = folder / f"{name}.cache"
        mode = None
        if self.kind == "memory":
            self.store = np.empty((n, *shape), np.float32)
        elif self.kind == "disk":
            mode = "r+" if self.path.exists() and self.path.stat().st_size == nbytes else "w+"
            self.store = np.memmap(self.path, np.float32, mode, shape=(n, *shape))
        # only a disk cache that already existed holds features a checkpoint's index may point at
        self.reusable = self.kind == "disk" and mode == "r+"
        self.hits = self.misses = 0

    def restore_index(self, filled: np.ndarray | None) -> None:
        """After a restart only a disk cache still holds its features."""
        if self.reusable and filled is not None and len(filled) == len(self.filled):
            self.filled[:] = filled

    def fill(self, features: np.ndarray) -> None:
        """Use precomputed features (float32 [n, *shape], the frozen backbone's output of every sample) instead
        of computing them: a study training many runs on one backbone computes them once
        (benchmarks/accuracy.py). ValueError when the shape is not the cache's."""
        if features.shape != self.shape or features.dtype != np.float32:
            raise ValueError(f"features {features.dtype} {features.shape}, the cache holds float32 {self.shape}")
        self.store, self.kind, self.enabled = features, "memory", True
        self.filled[:] = True

    def get(self, index: np.ndarray, compute: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        if not self.enabled:
            self.misses += len(index)
            return compute(index)
        missing = index[~self.filled[index]]
        if len(missing):
            self.store[missing] = compute(missing)
            self.filled[missing] = True
        self.misses += len(missing)
        self.hits += len(index) - len(missing)
        return np.asarray(self.store[index])

    def flush(self) -> None:
        if self.kind == "disk":
            self.store.flush()
