"""bench.feature_labels' label spreading on hand-made feature graphs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.feature_labels import label_spreading


def _clusters() -> tuple[torch.Tensor, torch.Tensor]:
    """Two tight groups of 6 unit vectors around orthogonal directions; rows 0-5 class 0, rows 6-11 class 1."""
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(4)[:2]
    x = torch.cat([centres[c] + 0.05 * torch.randn(6, 4, generator=g) for c in (0, 1)])
    return F.normalize(x, dim=1), torch.tensor([0] * 6 + [1] * 6)


def test_one_label_per_cluster_labels_the_whole_cluster() -> None:
    x, y = _clusters()
    known = torch.zeros(12, dtype=torch.bool)
    known[[2, 9]] = True
    hidden = y.clone()
    hidden[~known] = 1 - hidden[~known]  # wrong labels where hidden: spreading must not read them
    assert torch.equal(label_spreading(x, hidden, known, 2, k=3), y)


def test_the_graph_not_the_label_count_decides() -> None:
    # Three labeled rows of class 0 in the first cluster, one of class 1 in the second: the second cluster still
    # goes to class 1, as its rows' neighbours are all there.
    x, y = _clusters()
    known = torch.zeros(12, dtype=torch.bool)
    known[[0, 1, 2, 11]] = True
    assert torch.equal(label_spreading(x, y, known, 2, k=3), y)
