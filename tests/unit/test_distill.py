"""Tests for distill: soft (Hinton) and hard (DeiT) losses against hand computations; the frozen teacher.

Expected values use math.exp / math.log on explicit numbers, never the functions under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from ssl_core.algorithms import get_algorithm
from ssl_core.algorithms.distill import hard_distillation_loss, soft_distillation_loss
from tests.unit.handmade import TableModel, ce, ids, softmax

DISTILL = get_algorithm("distill")










# Two classes. Rows 0, 1: labeled clips (labels 0, 1); row 2: the weak view of an unlabeled clip.
STUDENT = [[1.0, 0.0], [0.0, 2.0], [0.5, -0.5]]
TEACHER = [[2.0, 0.0], [0.0, 1.0], [-1.0, 1.0]]
LABELS = [0, 1]


def kl_tempered(t: list[float], s: list[float], tau: float) -> float:
    """KL(P_T^tau || P_S^tau) for two classes, written out: sum_c pt_c log(pt_c / ps_c)."""
    pt, ps = softmax([v / tau for v in t]), softmax([v / tau for v in s])
    return pt[0] * math.log(pt[0] / ps[0]) + pt[1] * math.log(pt[1] / ps[1])


def run(mode: str, temperature: float = 2.0, lambda_kd: float = 0.5):
    student, teacher = TableModel(STUDENT), TableModel(TEACHER)
    algo = DISTILL({"primary": student, "teacher": teacher},
                   DISTILL.Params(mode=mode, temperature=temperature, lambda_kd=lambda_kd))
    out = algo.train_step({"video": ids(0, 1), "label": torch.tensor(LABELS)}, {"weak": ids(2), "strong": ids(2)})
    return out, student, teacher


def test_soft_kd_value_by_hand_at_temperature_two() -> None:
    out, _, _ = run("soft", temperature=2.0, lambda_kd=0.5)
    sup = (ce(STUDENT[0], 0) + ce(STUDENT[1], 1)) / 2
    # tau = 2: P^2 = softmax(logits / 2). Row 0: teacher [1, 0] / student [0.5, 0] after dividing, etc.
    kl = sum(kl_tempered(t, s, 2.0) for t, s in zip(TEACHER, STUDENT, strict=True)) / 3  # mean over 3 clips
    assert float(out.metrics["loss/sup_primary"]) == pytest.approx(sup, rel=1e-9)
    assert float(out.metrics["loss/kd_primary"]) == pytest.approx(4.0 * kl, rel=1e-9)  # tau^2 = 4
    assert out.loss.item() == pytest.approx(sup + 0.5 * 4.0 * kl, rel=1e-9)


@pytest.mark.parametrize("tau", [1.0, 2.0, 4.0])
def test_kd_term_is_scaled_by_tau_squared(tau: float) -> None:
    out, _, _ = run("soft", temperature=tau, lambda_kd=1.0)
    kl = sum(kl_tempered(t, s, tau) for t, s in zip(TEACHER, STUDENT, strict=True)) / 3
    assert float(out.metrics["loss/kd_primary"]) == pytest.approx(tau**2 * kl, rel=1e-9)
    # Pure function, one row, written with sigmoid for two classes: p_0 = 1 / (1 + exp(-(z0 - z1) / tau)).
    s, t = torch.tensor([[0.0, 3.0]]), torch.tensor([[3.0, 0.0]])
    pt0, ps0 = 1 / (1 + math.exp(-3.0 / tau)), 1 / (1 + math.exp(3.0 / tau))
    kl_row = pt0 * math.log(pt0 / ps0) + (1 - pt0) * math.log((1 - pt0) / (1 - ps0))
    loss = soft_distillation_loss(s, torch.tensor([1]), s, t, tau, lambda_kd=1.0)
    assert float(loss) == pytest.approx(ce([0.0, 3.0], 1) + tau**2 * kl_row, rel=1e-5)


def test_hard_mode_is_half_true_label_half_teacher_label() -> None:
    out, _, _ = run("hard")
    # Teacher argmax: row 0 -> 0, row 1 -> 1, row 2 (unlabeled) -> 1.
    sup = (ce(STUDENT[0], 0) + ce(STUDENT[1], 1)) / 2
    teacher_term = (ce(STUDENT[0], 0) + ce(STUDENT[1], 1) + ce(STUDENT[2], 1)) / 3
    assert out.loss.item() == pytest.approx(0.5 * sup + 0.5 * teacher_term, rel=1e-9)
    assert float(out.metrics["loss/kd_primary"]) == pytest.approx(teacher_term, rel=1e-9)
    direct = hard_distillation_loss(torch.tensor([[0.0, 1.0]]), torch.tensor([0]),
                                    torch.tensor([[0.0, 1.0], [2.0, 0.0]]), torch.tensor([[5.0, 0.0], [0.0, 1.0]]))
    assert float(direct) == pytest.approx(0.5 * ce([0, 1], 0) + 0.5 * (ce([0, 1], 0) + ce([2, 0], 1)) / 2, rel=1e-6)


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_teacher_receives_no_gradient_and_labels_every_unlabeled_clip(mode: str) -> None:
    out, student, teacher = run(mode)
    out.loss.backward()
    assert teacher.table.grad is None  # called under no_grad even though its parameter requires grad
    assert student.table.grad is not None and student.table.grad.abs().sum() > 0
    hard, mask = out.pseudo["primary"]
    assert hard.tolist() == [1] and mask.tolist() == [True]
    assert float(out.metrics["pseudo/mask_rate_primary"]) == 1.0
    assert out.logits_weak["teacher"].tolist() == [TEACHER[2]]
    assert all(not v.requires_grad and v.ndim == 0 for v in out.metrics.values())


def test_labeled_only_batch_and_params_validation() -> None:
    algo = DISTILL({"primary": TableModel(STUDENT), "teacher": TableModel(TEACHER)}, DISTILL.Params(mode="hard"))
    out = algo.train_step({"video": ids(0), "label": torch.tensor([0])}, None)
    assert out.loss.item() == pytest.approx(ce(STUDENT[0], 0), rel=1e-9)  # 1/2 CE(y) + 1/2 CE(y_t = 0)
    assert out.pseudo == {}
    assert DISTILL.frozen_roles == ("teacher",) and DISTILL.needs_unlabeled
    assert set(algo.eval_models()) == {"primary", "teacher"} and set(algo.trainable_models()) == {"primary"}
    with pytest.raises(ValueError, match="distill.mode"):
        DISTILL.Params(mode="fitnets")
    with pytest.raises(ValueError, match="distill.temperature"):
        DISTILL.Params(temperature=0.0)
