"""Tests for ssl_core.algorithms.thresholds: FlexMatch / FreeMatch thresholds, distribution alignment, their
state, their use in fixmatch / cmpl, and their synchronisation across torch.distributed workers.

Expected values are worked out here by hand on explicit numbers.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from ssl_core.algorithms import get_algorithm
from ssl_core.algorithms.thresholds import (
    DistributionAlignment,
    FlexMatchThreshold,
    PseudoLabeler,
    flexmatch_thresholds,
)


def logits_of(probs: list[list[float]]) -> torch.Tensor:
    """Logits whose softmax is exactly `probs` (log p)."""
    return torch.tensor(probs, dtype=torch.float64).log()


# ---------------------------------------------------------------- flexmatch


def test_flexmatch_mapping_and_warmup_normalisation() -> None:
    # beta = sigma / max(max sigma, unused): max sigma 0.5 > unused 0.4 -> beta = [1, 0.2, 0]
    t = flexmatch_thresholds(torch.tensor([0.5, 0.1, 0.0]), torch.tensor(0.4), 0.9)
    assert t.tolist() == pytest.approx([0.9, 0.2 / 1.8 * 0.9, 0.0])
    # unused 0.8 dominates (warm-up): beta = [0.625, 0.125, 0]
    t = flexmatch_thresholds(torch.tensor([0.5, 0.1, 0.0]), torch.tensor(0.8), 0.9)
    assert t.tolist() == pytest.approx([0.625 / 1.375 * 0.9, 0.125 / 1.875 * 0.9, 0.0])


def test_flexmatch_lower_thresholds_for_classes_with_few_confident_predictions() -> None:
    policy = FlexMatchThreshold(tau=0.9, momentum=0.5)
    probs = torch.tensor([[0.95, 0.03, 0.02], [0.92, 0.04, 0.04], [0.05, 0.93, 0.02], [0.5, 0.3, 0.2]])
    assert policy.thresholds(3, probs.device).tolist() == [0.0, 0.0, 0.0]  # nothing learned yet
    policy.update(probs)
    # batch fractions: class 0 2/4, class 1 1/4, class 2 0, unused 1/4; EMA from (sigma 0, unused 1), m = 0.5
    assert policy.state["sigma"].tolist() == pytest.approx([0.25, 0.125, 0.0])
    assert float(policy.state["unused"]) == pytest.approx(0.625)
    # beta = sigma / 0.625 = [0.4, 0.2, 0]; T = beta / (2 - beta) * 0.9
    t = policy.thresholds(3, probs.device)
    assert t.tolist() == pytest.approx([0.4 / 1.6 * 0.9, 0.2 / 1.8 * 0.9, 0.0])
    assert t[0] > t[1] > t[2]


def test_flexmatch_thresholds_equal_tau_when_all_classes_are_learned() -> None:
    policy = FlexMatchThreshold(tau=0.8, momentum=0.0)
    policy.update(torch.tensor([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]]))
    assert policy.thresholds(3, torch.device("cpu")).tolist() == pytest.approx([0.8, 0.8, 0.8])


# ---------------------------------------------------------------- freematch


def test_freematch_thresholds_follow_the_ema() -> None:
    labeler = PseudoLabeler("freematch", tau=0.95, momentum=0.5)
    batch = logits_of([[0.9, 0.1], [0.6, 0.4]])  # mean max 0.75, mean p [0.75, 0.25]
    out = labeler(batch)
    # tau_t = 0.5 * 1/2 + 0.5 * 0.75 = 0.625; p_t = [0.625, 0.375]; T = p_t / max(p_t) * tau_t
    assert float(labeler.policy.state["tau_t"]) == pytest.approx(0.625)
    assert labeler.policy.state["p_t"].tolist() == pytest.approx([0.625, 0.375])
    assert out.thresholds.tolist() == pytest.approx([0.625, 0.375])
    assert out.mask.tolist() == [1.0, 0.0]  # 0.9 >= 0.625; 0.6 < 0.625
    out = labeler(batch)
    # tau_t = 0.6875, p_t = [0.6875, 0.3125]
    assert out.thresholds.tolist() == pytest.approx([0.6875, 0.3125])


# ---------------------------------------------------------------- distribution alignment


def test_distribution_alignment_moves_mean_prediction_towards_uniform() -> None:
    da = DistributionAlignment(momentum=0.5)
    probs = torch.tensor([[0.9, 0.1], [0.7, 0.3]], dtype=torch.float64)
    aligned = da(probs)
    # p_model starts at the first batch's mean (USB), [0.8, 0.2]; p <- p * 0.5 / p_model, renormalised
    assert da.state["p_model"].tolist() == pytest.approx([0.8, 0.2])
    expected = []
    for p0, p1 in ((0.9, 0.1), (0.7, 0.3)):
        a0, a1 = p0 / 0.8, p1 / 0.2
        expected.append([a0 / (a0 + a1), a1 / (a0 + a1)])
    assert aligned.flatten().tolist() == pytest.approx([v for row in expected for v in row])
    mean_before, mean_after = 0.8, (expected[0][0] + expected[1][0]) / 2
    assert abs(mean_after - 0.5) < abs(mean_before - 0.5)
    assert float(aligned[:, 0].mean()) == pytest.approx(mean_after)
    # later batches move it as an EMA: 0.5 * [0.8, 0.2] + 0.5 * [0.6, 0.4]
    da(torch.tensor([[0.6, 0.4], [0.6, 0.4]], dtype=torch.float64))
    assert da.state["p_model"].tolist() == pytest.approx([0.7, 0.3])


def test_distribution_alignment_changes_pseudo_labels() -> None:
    labeler = PseudoLabeler("fixed", tau=0.0, distribution_alignment=True, momentum=0.0)
    out = labeler(logits_of([[0.9, 0.1], [0.55, 0.45]]))
    # p_model = [0.725, 0.275]; row 1: 0.55/0.725 = 0.759 < 0.45/0.275 = 1.636 -> class 1
    assert out.hard.tolist() == [0, 1]


# ---------------------------------------------------------------- labeler state


def test_fixed_labeler_is_stateless_and_matches_the_fixmatch_rule() -> None:
    labeler = PseudoLabeler("fixed", tau=0.7)
    out = labeler(torch.tensor([[2.0, 0.0], [0.5, 0.0]]))
    p0 = math.exp(2) / (math.exp(2) + 1)
    p1 = math.exp(0.5) / (math.exp(0.5) + 1)
    assert out.max_probs.tolist() == pytest.approx([p0, p1])
    assert out.mask.tolist() == [1.0, 0.0]  # 0.881 >= 0.7 > 0.622
    assert out.thresholds.tolist() == pytest.approx([0.7, 0.7])
    assert labeler.state_dict() == {} and not labeler.stateful


def test_labeler_state_round_trip() -> None:
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(6, 4, generator=g) * 2 for _ in range(4)]
    for kind in ("flexmatch", "freematch"):
        labeler = PseudoLabeler(kind, tau=0.6, distribution_alignment=True, momentum=0.7)
        for b in batches[:3]:
            labeler(b)
        restored = PseudoLabeler(kind, tau=0.6, distribution_alignment=True, momentum=0.7)
        restored.load_state_dict(copy.deepcopy(labeler.state_dict()))
        a, b = labeler(batches[3]), restored(batches[3])
        assert torch.equal(a.thresholds, b.thresholds) and torch.equal(a.mask, b.mask)
        assert torch.equal(a.probs, b.probs)
    other = PseudoLabeler("freematch", tau=0.6)
    with pytest.raises(ValueError, match="flexmatch"):
        other.load_state_dict({"threshold": {"kind": "flexmatch", "sigma": torch.zeros(4), "unused": torch.ones(())}})
    with pytest.raises(KeyError, match="unexpected"):
        other.load_state_dict({"distribution_alignment": {"p_model": torch.zeros(4)}})


# ---------------------------------------------------------------- in fixmatch and cmpl


class TableModel(nn.Module):
    def __init__(self, rows: list[list[float]]) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.tensor(rows, dtype=torch.float64))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.table[video.flatten(1)[:, 0].long()]


def ids(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).view(-1, 1, 1, 1, 1)


ROWS = [
    [1.0, 0.0, 0.0],  # labeled
    [0.0, 3.0, 0.0],  # weak u0: 0.91 class 1
    [0.5, 0.0, 0.0],  # weak u1: 0.45 class 0
    [0.0, 0.0, 1.0],  # strong u0
    [1.0, 0.0, 1.0],  # strong u1
]


def test_fixmatch_with_flexmatch_thresholds_and_state() -> None:
    cls = get_algorithm("fixmatch")
    params = cls.Params(tau=0.9, threshold="flexmatch", stats_momentum=0.0)
    algo = cls({"primary": TableModel(ROWS)}, params)
    labeled = {"video": ids(0), "label": torch.tensor([0])}
    out = algo.train_step(labeled, {"weak": ids(1, 2), "strong": ids(3, 4)})
    # momentum 0: sigma = [0, 1/2, 0], unused = 1/2 -> beta = [0, 1, 0] -> T = [0, 0.9, 0]
    assert float(out.metrics["pseudo/threshold_mean_primary"]) == pytest.approx(0.3)
    assert out.pseudo["primary"][1].tolist() == [True, True]  # 0.91 >= 0.9; 0.45 >= 0 (class 0 unlearned)
    state = algo.state_dict()
    assert set(state) == {"labeler"}
    restored = cls({"primary": TableModel(ROWS)}, params)
    restored.load_state_dict(copy.deepcopy(state))
    assert torch.equal(restored.labeler.policy.state["sigma"], algo.labeler.policy.state["sigma"])
    with pytest.raises(ValueError, match="fixmatch.threshold"):
        cls.Params(threshold="hardmatch")
    with pytest.raises(ValueError, match="fixmatch.stats_momentum"):
        cls.Params(stats_momentum=1.0)


def test_cmpl_keeps_one_policy_per_model() -> None:
    cls = get_algorithm("cmpl")
    aux_rows = [[0.0, 1.0, 0.0], [0.0, 0.0, 4.0], [0.0, 0.0, 4.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    params = cls.Params(tau=0.9, threshold="freematch", distribution_alignment=True, stats_momentum=0.5)
    algo = cls({"primary": TableModel(ROWS), "auxiliary": TableModel(aux_rows)}, params)
    out = algo.train_step({"video": ids(0), "label": torch.tensor([0])}, {"weak": ids(1, 2), "strong": ids(3, 4)})
    state = algo.state_dict()
    assert set(state) == {"labeler_primary", "labeler_auxiliary"}
    p_state = state["labeler_primary"]["threshold"]["p_t"]
    a_state = state["labeler_auxiliary"]["threshold"]["p_t"]
    assert not torch.allclose(p_state, a_state)
    # The primary is taught by the auxiliary's labels, so its threshold metric is the auxiliary policy's.
    aux_t = algo.labelers["auxiliary"].policy.thresholds(3, torch.device("cpu"))
    assert float(out.metrics["pseudo/threshold_mean_primary"]) == pytest.approx(float(aux_t.mean()))
    restored = cls({"primary": TableModel(ROWS), "auxiliary": TableModel(aux_rows)}, params)
    restored.load_state_dict(copy.deepcopy(state))
    assert restored.state_dict().keys() == state.keys()


# ---------------------------------------------------------------- synchronisation


def _batches(rank: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + rank)
    return [torch.randn(4 + rank, 5, generator=g) * 3 for _ in range(3)]  # different data AND sizes per rank


def _labelers() -> dict[str, PseudoLabeler]:
    return {kind: PseudoLabeler(kind, tau=0.7, distribution_alignment=True, momentum=0.6)
            for kind in ("flexmatch", "freematch")}


def _sync_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        labelers = _labelers()
        for batch in _batches(rank):
            for labeler in labelers.values():
                labeler(batch)
        torch.save({k: v.state_dict() for k, v in labelers.items()}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _flat(state: dict) -> dict[str, torch.Tensor]:
    out = {}
    for kind, s in state.items():
        for part, tensors in s.items():
            for name, value in tensors.items():
                if isinstance(value, torch.Tensor):
                    out[f"{kind}/{part}/{name}"] = value
    return out


def test_state_is_synchronised_across_two_gloo_workers(tmp_path: Path) -> None:
    mp.spawn(_sync_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    rank0 = _flat(torch.load(tmp_path / "rank0.pt"))
    rank1 = _flat(torch.load(tmp_path / "rank1.pt"))
    assert rank0.keys() == rank1.keys() and rank0
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    # The synchronised state is that of ONE process seeing the global batch (both ranks' clips).
    global_labelers = _labelers()
    for b0, b1 in zip(_batches(0), _batches(1), strict=True):
        for labeler in global_labelers.values():
            labeler(torch.cat([b0, b1]))
    expected = _flat({k: v.state_dict() for k, v in global_labelers.items()})
    for key in rank0:
        assert torch.allclose(rank0[key], expected[key], atol=1e-6), key
    # ... and not what rank 0 would hold alone.
    local = _labelers()
    for b in _batches(0):
        for labeler in local.values():
            labeler(b)
    alone = _flat({k: v.state_dict() for k, v in local.items()})
    assert any(not torch.allclose(rank0[k], alone[k]) for k in rank0)
