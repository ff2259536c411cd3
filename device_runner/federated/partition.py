"""Which samples a simulated client holds: Flower Datasets' partitioners over the labels of one data pool.

On a real device the data is the device's own (node config `data`); in a simulation every virtual client
loads the same seeded pool and keeps its partition (node config `partition-id` of `num-partitions`, which
Flower's simulation engine sets). Schemes (flwr-datasets, https://flower.ai/docs/datasets/):
  iid        IidPartitioner over the pool shuffled with `seed`: equal shares, the pool's class mix
  dirichlet  DirichletPartitioner(partition_by="label", alpha): label skew, per class a Dirichlet(alpha)
             share per client (Hsu et al. 2019, arXiv:1909.06335); alpha 0.5 is a common non-IID setting
"""

from __future__ import annotations

import numpy as np

from .. import RunnerError

SCHEMES = ("iid", "dirichlet")


def partition(labels: np.ndarray, partition_id: int, num_partitions: int, scheme: str = "iid",
              alpha: float = 0.5, seed: int = 2023, min_size: int = 10) -> np.ndarray:
    """Sorted indices (int64 [n_i]) into `labels` (int [N]) of partition `partition_id` of `num_partitions`.
    Deterministic for equal arguments, so every client computes its own share without talking to the others.
    `min_size`: the Dirichlet partitioner redraws until every client has at least this many samples.
    RunnerError for a bad scheme, id or alpha, or flwr-datasets missing."""
    if scheme not in SCHEMES:
        raise RunnerError(f"unknown partitioner {scheme!r}; choose from {', '.join(SCHEMES)}")
    if not 0 <= partition_id < num_partitions:
        raise RunnerError(f"partition-id {partition_id} is outside [0, {num_partitions})")
    if num_partitions > len(labels):
        raise RunnerError(f"{num_partitions} partitions of {len(labels)} samples: use more data or fewer clients")
    try:
        from datasets import Dataset
        from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner
    except ImportError:
        raise RunnerError("partitioning needs flwr-datasets: pip install '.[simulation]'") from None
    table = Dataset.from_dict({"label": np.asarray(labels, np.int64), "index": np.arange(len(labels))})
    if scheme == "iid":
        partitioner = IidPartitioner(num_partitions)
        table = table.shuffle(seed=seed)
    else:
        if not alpha > 0:
            raise RunnerError(f"alpha must be > 0, got {alpha}")
        partitioner = DirichletPartitioner(num_partitions, partition_by="label", alpha=alpha,
                                           min_partition_size=min(min_size, len(labels) // num_partitions),
                                           self_balancing=False, shuffle=True, seed=seed)
    partitioner.dataset = table
    return np.sort(np.asarray(partitioner.load_partition(partition_id)["index"], np.int64))
