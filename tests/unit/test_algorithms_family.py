"""Tests for pseudo_label, mean_teacher, mixmatch and their loss components.

Expected values are worked out here with math.exp / math.log on explicit numbers, never by calling the
components under test.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from ssl_core.algorithms import get_algorithm, list_algorithms
from ssl_core.algorithms.components import (
    linear_rampup,
    mixmatch_losses,
    sigmoid_rampup,
    soft_cross_entropy,
    softmax_mse,
)
from ssl_core.models import build_model
from tests.unit.handmade import TableModel, ce, ids, softmax


def soft_ce(logits: list[float], target: list[float]) -> float:
    lse = math.log(sum(math.exp(v) for v in logits))
    return -sum(t * (v - lse) for t, v in zip(target, logits, strict=True))




class IdentityModel(nn.Module):
    """Logits = scale * the clip's 3 channel values (a linear model, so MixUp of inputs mixes logits)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones((), dtype=torch.float64))

    def forward(self, video: torch.Tensor) -> torch.Tensor:  # (B, 3, 1, 1, 1) -> (B, 3)
        return video.flatten(1) * self.scale




# ---------------------------------------------------------------- components


def test_sigmoid_rampup_at_zero_half_full() -> None:
    assert sigmoid_rampup(0, 400) == pytest.approx(math.exp(-5.0))
    assert sigmoid_rampup(200, 400) == pytest.approx(math.exp(-5.0 * 0.25))
    assert sigmoid_rampup(400, 400) == 1.0
    assert sigmoid_rampup(10_000, 400) == 1.0
    assert sigmoid_rampup(torch.tensor(100), 400) == pytest.approx(math.exp(-5.0 * 0.75**2))
    assert sigmoid_rampup(0, 0) == 1.0


def test_linear_rampup_at_zero_half_full() -> None:
    assert linear_rampup(0, 400) == 0.0
    assert linear_rampup(200, 400) == 0.5
    assert linear_rampup(400, 400) == 1.0
    assert linear_rampup(900, 400) == 1.0
    assert linear_rampup(3, 0) == 1.0


def test_softmax_mse_is_squared_l2_per_sample_averaged_over_batch() -> None:
    s_rows = [[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]]
    t_rows = [[0.0, 2.0, 0.0], [0.5, 0.5, 2.0]]
    student = torch.tensor(s_rows, requires_grad=True)
    teacher = torch.tensor(t_rows, requires_grad=True)
    loss = softmax_mse(student, teacher)
    row0 = sum((a - b) ** 2 for a, b in zip(softmax(s_rows[0]), softmax(t_rows[0]), strict=True))
    assert loss.item() == pytest.approx((row0 + 0.0) / 2, rel=1e-6)
    loss.backward()
    assert teacher.grad is None and student.grad is not None


def test_soft_cross_entropy() -> None:
    rows, targets = [[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]], [[0.2, 0.8, 0.0], [0.5, 0.25, 0.25]]
    loss = soft_cross_entropy(torch.tensor(rows), torch.tensor(targets))
    expected = (soft_ce(rows[0], targets[0]) + soft_ce(rows[1], targets[1])) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_mixmatch_losses_normalise_l2_by_classes_and_samples() -> None:
    lx, tx = [[2.0, 0.0, 1.0]], [[0.7, 0.3, 0.0]]
    lu, tu = [[0.0, 1.0, 0.0], [1.0, 1.0, -1.0]], [[0.1, 0.8, 0.1], [0.6, 0.2, 0.2]]
    loss_x, loss_u = mixmatch_losses(torch.tensor(lx), torch.tensor(tx), torch.tensor(lu), torch.tensor(tu))
    assert float(loss_x) == pytest.approx(soft_ce(lx[0], tx[0]), rel=1e-6)
    sq = sum((p - q) ** 2 for row, t in zip(lu, tu, strict=True) for p, q in zip(softmax(row), t, strict=True))
    assert float(loss_u) == pytest.approx(sq / (3 * 2), rel=1e-6)  # L = 3 classes, |U'| = 2


# ---------------------------------------------------------------- pseudo_label

# 0 labeled (label 2), 1-3 weak views of unlabeled clips u0..u2, 4 an unused strong view.
PL_ROWS = [
    [0.0, 1.0, 2.0],
    [5.0, 0.0, 0.0],  # u0: 0.987 -> confident, class 0
    [0.0, 0.3, 0.0],  # u1: not confident
    [0.0, 0.0, 4.0],  # u2: 0.965 -> confident, class 2
    [9.0, 9.0, 9.0],
]


def _pl_batch() -> tuple[dict, dict]:
    return {"video": ids(0), "label": torch.tensor([2])}, {"weak": ids(1, 2, 3), "strong": ids(4, 4, 4)}


def test_pseudo_label_loss_on_weak_view_with_its_own_confident_labels() -> None:
    cls = get_algorithm("pseudo_label")
    model = TableModel(PL_ROWS)
    algo = cls({"primary": model}, cls.Params(tau=0.95, lambda_u=2.0, rampup_iters=0))
    out = algo.train_step(*_pl_batch())
    sup = ce(PL_ROWS[0], 2)
    unsup = (ce(PL_ROWS[1], 0) + ce(PL_ROWS[3], 2)) / 3
    assert float(out.metrics["loss/sup_primary"]) == pytest.approx(sup, rel=1e-9)
    assert float(out.metrics["loss/unsup_primary"]) == pytest.approx(unsup, rel=1e-9)
    assert out.loss.item() == pytest.approx(sup + 2.0 * unsup, rel=1e-9)
    assert float(out.metrics["train/unsup_weight"]) == 2.0
    assert float(out.metrics["pseudo/mask_rate_primary"]) == pytest.approx(2 / 3)
    assert float(out.metrics["pseudo/threshold_mean_primary"]) == pytest.approx(0.95)
    hard, mask = out.pseudo["primary"]
    assert hard.tolist() == [0, 1, 2] and mask.tolist() == [True, False, True]
    out.loss.backward()
    grad = model.table.grad.abs().sum(dim=1)
    assert grad[0] > 0 and grad[1] > 0 and grad[3] > 0  # labeled + confident weak rows (CE with gradient)
    assert grad[2] == 0 and grad[4] == 0  # unconfident weak row; the strong view is unused
    assert all(not v.requires_grad and v.ndim == 0 for v in out.metrics.values())


def test_pseudo_label_ramp_follows_its_own_step_counter() -> None:
    cls = get_algorithm("pseudo_label")
    algo = cls({"primary": TableModel(PL_ROWS)}, cls.Params(lambda_u=1.0, rampup_iters=4))
    weights = [float(algo.train_step(*_pl_batch()).metrics["train/unsup_weight"]) for _ in range(6)]
    expected = [math.exp(-5 * (1 - k / 4) ** 2) for k in range(4)] + [1.0, 1.0]
    assert weights == pytest.approx(expected)
    assert int(algo.state_dict()["step"]) == 6


def test_pseudo_label_checkpoint_round_trip_gives_identical_next_loss() -> None:
    cls = get_algorithm("pseudo_label")
    params = cls.Params(tau=0.9, rampup_iters=10, threshold="flexmatch", distribution_alignment=True,
                        stats_momentum=0.5)
    algo = cls({"primary": TableModel(PL_ROWS)}, params)
    for _ in range(3):
        algo.train_step(*_pl_batch())
    state = copy.deepcopy(algo.state_dict())
    restored = cls({"primary": TableModel(PL_ROWS)}, params)
    restored.load_state_dict(state)
    fresh = cls({"primary": TableModel(PL_ROWS)}, params)
    a, b, c = (x.train_step(*_pl_batch()) for x in (algo, restored, fresh))
    assert a.loss.item() == b.loss.item()
    assert float(a.metrics["train/unsup_weight"]) == float(b.metrics["train/unsup_weight"])
    assert float(a.metrics["pseudo/threshold_mean_primary"]) == float(b.metrics["pseudo/threshold_mean_primary"])
    assert a.loss.item() != c.loss.item()  # the state mattered
    with pytest.raises(KeyError, match="unexpected"):
        restored.load_state_dict({"teacher": {}})


# ---------------------------------------------------------------- mean_teacher

# 0 labeled (label 1), 1-2 weak u0/u1, 3-4 strong u0/u1.
MT_ROWS = [
    [0.0, 1.0, 0.0],
    [2.0, 0.0, 0.0],
    [0.0, 0.0, 1.0],
    [0.5, 0.5, 0.0],
    [0.0, 1.0, 3.0],
]


def _mt_batch() -> tuple[dict, dict]:
    return {"video": ids(0), "label": torch.tensor([1])}, {"weak": ids(1, 2), "strong": ids(3, 4)}


def test_mean_teacher_consistency_loss() -> None:
    cls = get_algorithm("mean_teacher")
    student = TableModel(MT_ROWS)
    algo = cls({"primary": student}, cls.Params(lambda_u=3.0, rampup_iters=0))
    out = algo.train_step(*_mt_batch())
    sq = [
        sum((a - b) ** 2 for a, b in zip(softmax(MT_ROWS[s]), softmax(MT_ROWS[w]), strict=True))
        for s, w in ((3, 1), (4, 2))
    ]
    unsup = sum(sq) / 2
    sup = ce(MT_ROWS[0], 1)
    assert float(out.metrics["loss/unsup_primary"]) == pytest.approx(unsup, rel=1e-9)
    assert out.loss.item() == pytest.approx(sup + 3.0 * unsup, rel=1e-9)
    hard, mask = out.pseudo["primary"]
    assert hard.tolist() == [0, 2] and mask.tolist() == [True, True]
    out.loss.backward()
    grad = student.table.grad.abs().sum(dim=1)
    assert grad[0] > 0 and grad[3] > 0 and grad[4] > 0
    assert grad[1] == 0 and grad[2] == 0  # weak views go through the teacher only
    assert all(not p.requires_grad for p in algo.teacher.parameters())
    assert set(algo.eval_models()) == {"primary", "teacher"}
    assert set(algo.trainable_models()) == {"primary"}


def test_mean_teacher_ema_moves_teacher_by_one_minus_decay_in_after_optimizer_step() -> None:
    cls = get_algorithm("mean_teacher")
    student = TableModel([[0.0, 0.0], [1.0, 2.0]])
    algo = cls({"primary": student}, cls.Params(ema_decay=0.9))
    with torch.no_grad():
        student.table.copy_(torch.tensor([[10.0, 0.0], [1.0, -8.0]]))  # "an optimizer step"
    assert algo.teacher.table.tolist() == [[0.0, 0.0], [1.0, 2.0]]  # nothing moves it before the hook
    algo.after_optimizer_step()
    assert algo.teacher.table.flatten().tolist() == pytest.approx([1.0, 0.0, 1.0, 1.0])
    algo.after_optimizer_step()
    assert algo.teacher.table.flatten().tolist() == pytest.approx([1.9, 0.0, 1.0, 0.1])
    assert student.table.tolist() == [[10.0, 0.0], [1.0, -8.0]]


def test_mean_teacher_checkpoint_round_trip_gives_identical_next_loss() -> None:
    cls = get_algorithm("mean_teacher")
    params = cls.Params(ema_decay=0.5, rampup_iters=10)
    student = TableModel(MT_ROWS)
    algo = cls({"primary": student}, params)
    for _ in range(2):
        algo.train_step(*_mt_batch())
        with torch.no_grad():
            student.table.add_(0.3)
        algo.after_optimizer_step()
    state = copy.deepcopy(algo.state_dict())
    assert set(state) == {"step", "teacher"} and int(state["step"]) == 2
    restored = cls({"primary": copy.deepcopy(student)}, params)  # the worker restores the student first
    restored.load_state_dict(state)
    fresh = cls({"primary": copy.deepcopy(student)}, params)
    a, b, c = (x.train_step(*_mt_batch()) for x in (algo, restored, fresh))
    assert a.loss.item() == b.loss.item()
    assert a.loss.item() != c.loss.item()
    restored.load_state_dict({})  # a fresh run passes an empty state


# ---------------------------------------------------------------- mixmatch


def _clips(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64).view(-1, 3, 1, 1, 1)


def test_mixmatch_losses_with_fixed_lambda_and_permutation() -> None:
    cls = get_algorithm("mixmatch")
    x, w, s = [1.0, 0.0, -1.0], [2.0, 0.0, 0.0], [0.0, 1.0, 0.0]
    algo = cls({"primary": IdentityModel()},
               cls.Params(T=0.5, lambda_u=10.0, rampup_iters=0, distribution_alignment=False))  # the paper's
    algo.sample_mix = lambda n: (0.7, torch.tensor([2, 0, 1]))
    out = algo.train_step({"video": _clips(x), "label": torch.tensor([0])}, {"weak": _clips(w), "strong": _clips(s)})

    q_bar = [(a + b) / 2 for a, b in zip(softmax(w), softmax(s), strict=True)]
    z = sum(v**2 for v in q_bar)
    q = [v**2 / z for v in q_bar]
    inputs, targets = [x, w, s], [[1.0, 0.0, 0.0], q, q]
    perm = [2, 0, 1]

    def mix(rows: list[list[float]], i: int) -> list[float]:
        return [0.7 * a + 0.3 * b for a, b in zip(rows[i], rows[perm[i]], strict=True)]

    mixed = [mix(inputs, i) for i in range(3)]
    mixed_t = [mix(targets, i) for i in range(3)]
    loss_x = soft_ce(mixed[0], mixed_t[0])
    sq = sum((p - t) ** 2 for i in (1, 2) for p, t in zip(softmax(mixed[i]), mixed_t[i], strict=True))
    loss_u = sq / (3 * 2)
    assert float(out.metrics["loss/sup_primary"]) == pytest.approx(loss_x, rel=1e-9)
    assert float(out.metrics["loss/unsup_primary"]) == pytest.approx(loss_u, rel=1e-9)
    assert out.loss.item() == pytest.approx(loss_x + 10.0 * loss_u, rel=1e-9)
    assert float(out.metrics["train/mixup_lambda"]) == pytest.approx(0.7)
    assert out.pseudo["primary"][0].tolist() == [0]  # argmax of the sharpened guess
    out.loss.backward()  # the targets carry no gradient, only the mixed forward does


def test_mixmatch_distribution_alignment_keeps_guesses_off_one_class() -> None:
    cls = get_algorithm("mixmatch")
    weak = _clips([3.0, 0.0, 0.0], [2.0, 1.0, 0.0], [2.0, 0.0, 1.5])  # every clip leans to class 0
    labeled = {"video": _clips([1.0, 0.0, 0.0]), "label": torch.tensor([0])}
    guesses = {}
    for aligned in (False, True):
        algo = cls({"primary": IdentityModel()}, cls.Params(K=1, distribution_alignment=aligned))
        algo.sample_mix = lambda n: (1.0, torch.arange(n))
        out = algo.train_step(labeled, {"weak": weak})
        guesses[aligned] = out.pseudo["primary"][0].tolist()
    assert guesses == {False: [0, 0, 0], True: [0, 1, 2]}  # divided by the batch's mean guess, the rest shows
    state = algo.state_dict()
    assert set(state) == {"step", "align"} and state["align"]["p_model"].shape == (3,)
    fresh = cls({"primary": IdentityModel()}, cls.Params(K=1))
    fresh.load_state_dict(state)
    assert torch.equal(fresh.align.state["p_model"], state["align"]["p_model"])
    with pytest.raises(ValueError, match="mixmatch.stats_momentum"):
        cls.Params(stats_momentum=1.0)


def test_mixmatch_lambda_prime_is_at_least_half() -> None:
    cls = get_algorithm("mixmatch")
    algo = cls({"primary": IdentityModel()}, cls.Params(alpha=0.75))
    torch.manual_seed(0)
    lams = [algo.sample_mix(5)[0] for _ in range(200)]
    assert min(lams) >= 0.5 and max(lams) <= 1.0 and len(set(lams)) > 100
    perm = algo.sample_mix(6)[1]
    assert sorted(perm.tolist()) == list(range(6))
    out = algo.train_step(
        {"video": _clips([1.0, 0.0, 0.0]), "label": torch.tensor([0])},
        {"weak": _clips([0.0, 1.0, 0.0]), "strong": _clips([0.0, 0.0, 1.0])},
    )
    assert float(out.metrics["train/mixup_lambda"]) >= 0.5
    assert float(out.metrics["train/unsup_weight"]) == 0.0  # linear ramp starts at 0
    assert int(algo.state_dict()["step"]) == 1


def test_mixmatch_k1_uses_weak_only_and_rejects_bad_params() -> None:
    cls = get_algorithm("mixmatch")
    algo = cls({"primary": IdentityModel()}, cls.Params(K=1))
    out = algo.train_step({"video": _clips([1.0, 0.0, 0.0]), "label": torch.tensor([0])},
                          {"weak": _clips([0.0, 1.0, 0.0])})
    assert out.loss.ndim == 0
    for bad in ({"K": 3}, {"T": 0.0}, {"alpha": -1.0}, {"lambda_u": -1.0}, {"rampup_iters": -1}):
        with pytest.raises(ValueError, match=f"mixmatch.{next(iter(bad))}"):
            cls.Params(**bad)


# ---------------------------------------------------------------- registry and real models


def test_new_algorithms_are_registered_and_validate_params() -> None:
    names = {name for name, _, _ in list_algorithms()}
    assert {"pseudo_label", "mean_teacher", "mixmatch"} <= names
    assert get_algorithm("mixmatch").Params().lambda_u == 75.0
    assert get_algorithm("mean_teacher").Params().ema_decay == 0.99
    with pytest.raises(ValueError, match="mean_teacher.ema_decay"):
        get_algorithm("mean_teacher").Params(ema_decay=1.5)
    with pytest.raises(ValueError, match="pseudo_label.threshold"):
        get_algorithm("pseudo_label").Params(threshold="adamatch")
    with pytest.raises(ValueError, match="pseudo_label.tau"):
        get_algorithm("pseudo_label").Params(tau=-0.1)


@pytest.mark.parametrize("name", ["pseudo_label", "mean_teacher", "mixmatch"])
def test_real_model_step_backward_and_metrics(name: str) -> None:
    torch.manual_seed(0)
    model = build_model("small3d_w0.5", num_classes=3)
    cls = get_algorithm(name)
    algo = cls({"primary": model}, None)
    g = torch.Generator().manual_seed(1)
    labeled = {"video": torch.randn(2, 3, 4, 16, 16, generator=g), "label": torch.tensor([0, 2])}
    unlabeled = {"weak": torch.randn(2, 3, 4, 16, 16, generator=g), "strong": torch.randn(2, 3, 4, 16, 16, generator=g)}
    out = algo.train_step(labeled, unlabeled)
    out.loss.backward()
    algo.after_optimizer_step()
    assert torch.isfinite(out.loss)
    assert all(not v.requires_grad and v.ndim == 0 for v in out.metrics.values())
    assert {"loss/sup_primary", "loss/unsup_primary", "train/unsup_weight"} <= set(out.metrics)
    hard, mask = out.pseudo["primary"]
    assert hard.shape == (2,) and mask.dtype == torch.bool
