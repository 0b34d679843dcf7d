"""The Ray Train workers' endless batch stream: a pass with no full batch names its split.

    python -m pytest tests/unit/test_worker_cycle.py -q
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from workflows.runtime.worker_shared import cycle


class Shard:
    """A dataset shard's iter_torch_batches over `n` rows (drop_last as Ray Data applies it)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.passes = 0

    def iter_torch_batches(self, batch_size: int, drop_last: bool) -> Iterator[dict[str, torch.Tensor]]:
        self.passes += 1
        full = self.n // batch_size if drop_last else -(-self.n // batch_size)
        for _ in range(full):
            yield {"label": torch.zeros(batch_size, dtype=torch.long)}


def test_cycle_starts_a_new_pass_after_each_one() -> None:
    shard = Shard(5)
    batches = cycle(shard, 2, "labeled split")
    assert [len(next(batches)["label"]) for _ in range(5)] == [2] * 5
    assert shard.passes == 3


def test_a_pass_without_a_full_batch_names_the_split_and_the_batch() -> None:
    with pytest.raises(RuntimeError, match=r"the unlabeled split produced no full batch of 8 clips.*batch_size"):
        next(cycle(Shard(7), 8, "unlabeled split"))
