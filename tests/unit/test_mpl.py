"""Tests for meta_pseudo_labels: reward sign, teacher gradient, virtual step side effects, fine-tuning.

Expected values are worked out by hand (math.exp / math.log on explicit numbers) for a linear student on a
2-feature input, where one SGD step can be followed exactly.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from ssl_core.algorithms import get_algorithm
from tests.unit.handmade import TableModel, ce, softmax

MPL = get_algorithm("meta_pseudo_labels")








class LinearStudent(nn.Module):
    """logits = W x + b over the flattened (B, 2, 1, 1, 1) input, zero-initialised."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2, dtype=torch.float64)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.fc(video.flatten(1))


def clips(*rows: list[float]) -> torch.Tensor:  # (B, 2, 1, 1, 1): first value = teacher table id
    return torch.tensor(rows, dtype=torch.float64).view(len(rows), 2, 1, 1, 1)


# Teacher rows: 0 labeled, 1 weak u, 2 strong u (argmax 0 -> the pseudo-label is class 0).
TEACHER_ROWS = [[0.3, 0.1], [1.0, 0.0], [1.0, 0.0]]
LR = 0.5


@pytest.mark.parametrize("s", [1.0, -3.0])  # labeled feature aligned with the unlabeled clip (helps) or not (hurts)
def test_reward_sign_and_teacher_gradient(s: float) -> None:
    student, teacher = LinearStudent(), TableModel(TEACHER_ROWS)
    params = MPL.Params(student_lr_virtual=LR, uda_tau=0.6, uda_temperature=0.5, lambda_uda=2.0, uda_ramp_steps=4)
    algo = MPL({"primary": student, "teacher": teacher}, params)
    labeled = {"video": clips([0.0, s]), "label": torch.tensor([0])}
    out = algo.train_step(labeled, {"weak": clips([1.0, 1.0]), "strong": clips([2.0, 1.0])})

    # Student (zero weights) on strong u = [2, 1], pseudo-label 0: logits [0, 0], CE = ln 2,
    # dCE/dlogits = [-1/2, 1/2] -> dW = [[-1, -1/2], [1, 1/2]], db = [-1/2, 1/2].
    # Virtual step: W' = LR [[1, 1/2], [-1, -1/2]], b' = LR [1/2, -1/2]; on x_l = [0, s]:
    # logits [a, -a] with a = LR (s/2 + 1/2).
    a = LR * (s / 2 + 0.5)
    before, after = math.log(2), ce([a, -a], 0)
    reward = before - after
    assert (reward > 0) == (s > 0)  # the label helped the labeled loss iff x_l and x_u align
    assert float(out.metrics["mpl/reward"]) == pytest.approx(reward, rel=1e-9)
    assert float(out.metrics["loss/sup_primary"]) == pytest.approx(before, rel=1e-9)
    assert float(out.metrics["loss/unsup_primary"]) == pytest.approx(math.log(2), rel=1e-9)

    mpl = reward * ce(TEACHER_ROWS[2], 0)
    sup_t = ce(TEACHER_ROWS[0], 0)
    q = softmax([1.0 / 0.5, 0.0])  # UDA target: sharpened weak row; max 0.88 >= 0.6 -> kept
    uda = -(q[0] * math.log(softmax(TEACHER_ROWS[2])[0]) + q[1] * math.log(softmax(TEACHER_ROWS[2])[1]))
    weight = 2.0 * 1 / 4  # ramp at step 0: (0 + 1) / 4
    assert float(out.metrics["loss/mpl_teacher"]) == pytest.approx(mpl, rel=1e-9)
    assert float(out.metrics["loss/uda_teacher"]) == pytest.approx(uda, rel=1e-9)
    assert float(out.metrics["loss/sup_teacher"]) == pytest.approx(sup_t, rel=1e-9)
    assert out.loss.item() == pytest.approx(math.log(2) + sup_t + weight * uda + mpl, rel=1e-9)
    assert float(out.metrics["pseudo/mask_rate_primary"]) == 1.0
    hard, mask = out.pseudo["primary"]
    assert hard.tolist() == [0] and mask.tolist() == [True]

    # The real student parameters are untouched by the virtual step.
    assert student.fc.weight.abs().sum() == 0 and student.fc.bias.abs().sum() == 0

    out.loss.backward()
    # Student gradient = grad of L_u^S only, counted once.
    assert student.fc.weight.grad.flatten().tolist() == pytest.approx([-1.0, -0.5, 1.0, 0.5])
    assert student.fc.bias.grad.tolist() == pytest.approx([-0.5, 0.5])
    # Teacher's strong row: d/dz [w * uda + reward * CE(z, 0)] = w (p - q) + reward (p - onehot(0)).
    p = softmax(TEACHER_ROWS[2])
    expected = [weight * (p[c] - q[c]) + reward * (p[c] - (1.0 if c == 0 else 0.0)) for c in range(2)]
    assert teacher.table.grad[2].tolist() == pytest.approx(expected, rel=1e-9)


def test_mpl_gradient_alone_raises_a_helpful_label_and_lowers_a_harmful_one() -> None:
    for s, should_rise in ((1.0, True), (-3.0, False)):
        teacher = TableModel(TEACHER_ROWS)
        # No UDA term, no supervised signal on the strong row: only the MPL term reaches teacher row 2.
        algo = MPL({"primary": LinearStudent(), "teacher": teacher},
                   MPL.Params(student_lr_virtual=LR, lambda_uda=0.0))
        labeled = {"video": clips([0.0, s]), "label": torch.tensor([0])}
        algo.train_step(labeled, {"weak": clips([1.0, 1.0]), "strong": clips([2.0, 1.0])}).loss.backward()
        p_before = softmax(TEACHER_ROWS[2])[0]
        with torch.no_grad():
            teacher.table -= 1.0 * teacher.table.grad  # one gradient-descent step on the teacher
        p_after = softmax(teacher.table[2].tolist())[0]
        assert (p_after > p_before) == should_rise


def bn_student() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(2, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4, 3))


def test_virtual_step_changes_no_parameter_or_batchnorm_buffer() -> None:
    student = bn_student()
    teacher = copy.deepcopy(student)
    reference = copy.deepcopy(student)
    strong = torch.randn(3, 2, 1, 1, 1)
    labeled = {"video": torch.randn(2, 2, 1, 1, 1), "label": torch.tensor([0, 2])}
    algo = MPL({"primary": student, "teacher": teacher}, None)
    out = algo.train_step(labeled, {"weak": torch.randn(3, 2, 1, 1, 1), "strong": strong})
    reference(strong)  # the one real train-mode forward the student takes: BN running stats move once
    ref_state, state = reference.state_dict(), student.state_dict()
    for key in ref_state:
        assert torch.equal(state[key], ref_state[key]), key
    assert int(state["2.num_batches_tracked"]) == 1
    assert student.training and all(m.training for m in student.modules())  # modes restored
    # The "before" loss is the eval-mode labeled CE of the student as it stands.
    expected = nn.functional.cross_entropy(reference.eval()(labeled["video"]), labeled["label"]).detach()
    assert float(out.metrics["loss/sup_primary"]) == pytest.approx(float(expected), rel=1e-6)


def test_finetune_after_switches_to_student_labeled_loss_only() -> None:
    student, teacher = LinearStudent(), TableModel(TEACHER_ROWS)
    with torch.no_grad():
        student.fc.weight.copy_(torch.tensor([[0.0, 1.0], [0.0, 0.0]]))
    algo = MPL({"primary": student, "teacher": teacher}, MPL.Params(finetune_after=2))
    labeled = {"video": clips([0.0, 1.0]), "label": torch.tensor([1])}
    unlabeled = {"weak": clips([1.0, 1.0]), "strong": clips([2.0, 1.0])}
    assert float(algo.train_step(labeled, unlabeled).metrics["mpl/finetune"]) == 0.0
    algo.after_optimizer_step()
    assert not algo.finetuning()
    algo.after_optimizer_step()
    assert algo.finetuning() and int(algo.state_dict()["step"]) == 2

    out = algo.train_step(labeled, None)  # fine-tuning needs no unlabeled batch
    assert out.loss.item() == pytest.approx(ce([1.0, 0.0], 1), rel=1e-9)  # logits W x = [1, 0]
    assert float(out.metrics["mpl/finetune"]) == 1.0
    assert float(out.metrics["loss/mpl_teacher"]) == 0.0 and float(out.metrics["loss/uda_teacher"]) == 0.0
    out.loss.backward()
    assert teacher.table.grad is None  # the teacher is not trained any more
    assert student.fc.weight.grad is not None


def test_state_dict_round_trip_and_params_validation() -> None:
    algo = MPL({"primary": LinearStudent(), "teacher": TableModel(TEACHER_ROWS)}, MPL.Params(finetune_after=3))
    algo.load_state_dict({"step": torch.tensor(5)})
    assert algo.finetuning() and int(algo.state_dict()["step"]) == 5
    with pytest.raises(KeyError, match="step"):
        algo.load_state_dict({"thresholds": torch.zeros(2)})
    with pytest.raises(ValueError, match="meta_pseudo_labels.student_lr_virtual"):
        MPL.Params(student_lr_virtual=0.0)
    with pytest.raises(ValueError, match="meta_pseudo_labels.finetune_after"):
        MPL.Params(finetune_after=-1)
    assert MPL.roles == ("primary", "teacher") and MPL.frozen_roles == ()
    assert set(algo.eval_models()) == {"primary", "teacher"}
    assert set(algo.trainable_models()) == {"primary", "teacher"}
