"""Tests for noisy_student (hand-computed losses, which view each model sees) and stochastic depth."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from ssl_core.algorithms import get_algorithm
from ssl_core.models import build_model
from ssl_core.models.stochastic_depth import add_stochastic_depth
from tests.unit.handmade import ce, ids, softmax

NOISY = get_algorithm("noisy_student")






class RecordingTable(nn.Module):
    """Logits preset per input id (row k for an input whose first value is k); records every id it sees."""

    def __init__(self, rows: list[list[float]]) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.tensor(rows, dtype=torch.float64))
        self.seen: list[int] = []

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        idx = video.flatten(1)[:, 0].long()
        self.seen += idx.tolist()
        return self.table[idx]




# Ids: 0 labeled (label 1); 1, 2 weak views of u0, u1; 3, 4 strong views of u0, u1.
TEACHER = [[9.0, 9.0, 9.0], [3.0, 0.0, 0.0], [0.5, 0.0, 0.2], [9.0, 9.0, 9.0], [9.0, 9.0, 9.0]]
STUDENT = [[0.2, 1.0, -0.5], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.5, 1.5, 0.0], [1.0, -1.0, 2.0]]


def run(**params):
    student, teacher = RecordingTable(STUDENT), RecordingTable(TEACHER)
    algo = NOISY({"primary": student, "teacher": teacher}, NOISY.Params(**params))
    out = algo.train_step({"video": ids(0), "label": torch.tensor([1])}, {"weak": ids(1, 2), "strong": ids(3, 4)})
    return out, student, teacher


def test_hard_labels_with_confidence_filter() -> None:
    out, _, _ = run(soft=False, tau=0.8, lambda_u=2.0)
    # Teacher u0: e^3 / (e^3 + 2) = 0.909 >= 0.8 -> class 0; u1: max 0.41 -> filtered out.
    sup = ce(STUDENT[0], 1)
    unsup = ce(STUDENT[3], 0) / 2  # normalised by B_u = 2
    assert float(out.metrics["loss/sup_primary"]) == pytest.approx(sup, rel=1e-9)
    assert float(out.metrics["loss/unsup_primary"]) == pytest.approx(unsup, rel=1e-9)
    assert out.loss.item() == pytest.approx(sup + 2.0 * unsup, rel=1e-9)
    hard, mask = out.pseudo["primary"]
    assert hard.tolist() == [0, 0] and mask.tolist() == [True, False]
    assert float(out.metrics["pseudo/mask_rate_primary"]) == 0.5


def test_soft_targets_keep_every_clip_at_tau_zero() -> None:
    out, _, _ = run(soft=True)
    unsup = 0.0
    for weak_row, strong_row in ((TEACHER[1], STUDENT[3]), (TEACHER[2], STUDENT[4])):
        q, p = softmax(weak_row), softmax(strong_row)
        unsup += -sum(qc * math.log(pc) for qc, pc in zip(q, p, strict=True))
    unsup /= 2
    assert float(out.metrics["loss/unsup_primary"]) == pytest.approx(unsup, rel=1e-9)
    assert out.loss.item() == pytest.approx(ce(STUDENT[0], 1) + unsup, rel=1e-9)
    assert float(out.metrics["pseudo/mask_rate_primary"]) == 1.0


def test_teacher_sees_weak_view_student_sees_labeled_and_strong() -> None:
    out, student, teacher = run()
    assert sorted(teacher.seen) == [1, 2]
    assert sorted(student.seen) == [0, 3, 4]
    out.loss.backward()
    assert teacher.table.grad is None
    assert NOISY.frozen_roles == ("teacher",)
    with pytest.raises(ValueError, match="noisy_student.tau"):
        NOISY.Params(tau=-0.1)


# ---------------------------------------------------------------- stochastic depth


def assert_noise_only_in_training(noisy: nn.Module, plain: nn.Module) -> list[float]:
    """Same state-dict keys as the plain model (checkpoints stay interchangeable), exact in eval, random in train;
    returns the drop rates of the StochasticDepth modules, in order."""
    assert list(noisy.state_dict()) == list(plain.state_dict())
    x = torch.randn(2, 3, 2, 16, 16)
    with torch.no_grad():
        assert torch.equal(noisy.eval()(x), plain(x))
        noisy.train()
        assert not torch.allclose(noisy(x), noisy(x))
    return [m.p for m in noisy.modules() if type(m).__name__ == "StochasticDepth"]


def test_stochastic_depth_is_random_in_train_and_exact_in_eval() -> None:
    torch.manual_seed(0)
    model = build_model("r3d_50_w0.25", num_classes=3)
    for m in model.modules():  # pytorchvideo zero-inits each block's last BN: make the branches matter
        if isinstance(m, nn.BatchNorm3d):
            nn.init.ones_(m.weight)
    plain = copy.deepcopy(model).eval()
    noisy = add_stochastic_depth(model, 0.5)
    rates = assert_noise_only_in_training(noisy, plain)
    assert len(rates) == 16 and rates[-1] == pytest.approx(0.5) and rates[0] == pytest.approx(0.5 / 16)


def test_stochastic_depth_on_the_vit_drops_both_branches_of_each_block() -> None:
    torch.manual_seed(0)
    model = build_model("vit_tiny", num_classes=3)
    nn.init.normal_(model.head.weight)  # a near-zero fresh head would hide the branches
    plain = copy.deepcopy(model).eval()
    noisy = add_stochastic_depth(model, 0.4)
    rates = assert_noise_only_in_training(noisy, plain)
    assert rates == pytest.approx([0.1, 0.1, 0.2, 0.2, 0.3, 0.3, 0.4, 0.4])


def test_stochastic_depth_rejects_models_without_residual_blocks() -> None:
    with pytest.raises(ValueError, match="Small3D"):
        add_stochastic_depth(build_model("small3d", num_classes=3), 0.2)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        add_stochastic_depth(build_model("small3d", num_classes=3), 1.0)


def test_stochastic_depth_on_torchvision_r3d_18_survives_deepcopy() -> None:
    torch.manual_seed(0)
    model = build_model("r3d_18", num_classes=3)
    plain = copy.deepcopy(model).eval()
    noisy = copy.deepcopy(add_stochastic_depth(model, 0.5))  # the copy keeps its own drop modules
    assert_noise_only_in_training(noisy, plain)
    with pytest.raises(ValueError, match="already"):
        add_stochastic_depth(noisy, 0.1)
