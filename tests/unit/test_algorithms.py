"""Tests for ssl_core.algorithms: components, FixMatch, CMPL, supervised, registry.

Expected values are worked out here with math.exp / math.log on explicit numbers, never by calling the
components under test.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from ssl_core.algorithms import StepOutput, get_algorithm, list_algorithms
from ssl_core.algorithms.components import (
    confidence_mask,
    kd_loss,
    masked_cross_entropy,
    mixup,
    pseudo_label,
    sharpen,
)
from ssl_core.algorithms.ema import ema_update
from tests.unit.handmade import FIXMATCH_ROWS, TableModel, ce, fixmatch_batch, ids, softmax

# ---------------------------------------------------------------- components


def test_pseudo_label_is_softmax_max_without_grad() -> None:
    rows = [[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]]
    logits = torch.tensor(rows, requires_grad=True)
    max_probs, hard = pseudo_label(logits)
    assert hard.tolist() == [0, 1]
    expected = [max(softmax(r)) for r in rows]
    assert max_probs.tolist() == pytest.approx(expected, rel=1e-6)
    assert not max_probs.requires_grad and not hard.requires_grad


def test_confidence_mask_is_inclusive_at_tau() -> None:
    mask = confidence_mask(torch.tensor([0.5, 0.95, 0.96, 0.9499]), 0.95)
    assert mask.tolist() == [0.0, 1.0, 1.0, 0.0]
    assert mask.dtype == torch.float32


def test_masked_cross_entropy_divides_by_whole_batch() -> None:
    rows = [[1.0, 2.0, 0.0], [0.3, -0.2, 0.8], [2.0, 2.0, 2.0], [0.0, 0.0, 5.0]]
    targets = [1, 2, 0, 0]
    mask = [1.0, 0.0, 1.0, 0.0]
    loss = masked_cross_entropy(torch.tensor(rows), torch.tensor(targets), torch.tensor(mask))
    expected = (ce(rows[0], 1) + ce(rows[2], 0)) / 4
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_masked_cross_entropy_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="batch size"):
        masked_cross_entropy(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long), torch.zeros(3))


def test_sharpen() -> None:
    p = [0.6, 0.3, 0.1]
    out = sharpen(torch.tensor([p]), 0.5)
    z = sum(v**2 for v in p)
    assert out[0].tolist() == pytest.approx([v**2 / z for v in p], rel=1e-6)
    assert sharpen(torch.tensor([p]), 1.0)[0].tolist() == pytest.approx(p, rel=1e-6)


def test_mixup() -> None:
    out = mixup(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 4.0]), 0.75)
    assert out.tolist() == pytest.approx([0.75, 1.0])


def test_ema_update_averages_params_and_float_buffers_copies_counters() -> None:
    teacher, student = nn.BatchNorm1d(2), nn.BatchNorm1d(2)
    with torch.no_grad():
        teacher.weight.copy_(torch.tensor([1.0, 2.0]))
        student.weight.copy_(torch.tensor([3.0, -2.0]))
        teacher.running_mean.copy_(torch.tensor([0.0, 10.0]))
        student.running_mean.copy_(torch.tensor([1.0, 0.0]))
        student.num_batches_tracked.fill_(7)
    ema_update(teacher, student, momentum=0.9)
    assert teacher.weight.tolist() == pytest.approx([0.9 * 1 + 0.1 * 3, 0.9 * 2 + 0.1 * -2])
    assert teacher.running_mean.tolist() == pytest.approx([0.1, 9.0])
    assert int(teacher.num_batches_tracked) == 7
    assert student.weight.tolist() == pytest.approx([3.0, -2.0])  # the student is untouched


def test_kd_loss_matches_hinton_formula() -> None:
    s, t, tau = [1.0, 0.0, -1.0], [0.5, 2.0, 0.0], 2.0
    ps, pt = softmax([v / tau for v in s]), softmax([v / tau for v in t])
    expected = sum(q * math.log(q / p) for q, p in zip(pt, ps, strict=True)) * tau**2
    loss = kd_loss(torch.tensor([s, s]), torch.tensor([t, t]), tau)
    assert float(loss) == pytest.approx(expected, rel=1e-5)  # batchmean of two equal rows


# ---------------------------------------------------------------- supervised


def test_supervised_is_plain_cross_entropy() -> None:
    rows = [[2.0, 1.0, 0.0], [0.0, 0.5, 1.5]]
    algo = get_algorithm("supervised")({"primary": TableModel(rows)}, None)
    out = algo.train_step({"video": ids(0, 1), "label": torch.tensor([1, 2])}, None)
    assert out.loss.item() == pytest.approx((ce(rows[0], 1) + ce(rows[1], 2)) / 2, rel=1e-9)
    assert not get_algorithm("supervised").needs_unlabeled
    assert out.pseudo == {}


# ---------------------------------------------------------------- fixmatch



def test_fixmatch_normalises_by_unlabeled_batch_size() -> None:
    cls = get_algorithm("fixmatch")
    algo = cls({"primary": TableModel(FIXMATCH_ROWS)}, cls.Params(tau=0.95, lambda_u=2.0))
    out = algo.train_step(*fixmatch_batch())
    sup = ce(FIXMATCH_ROWS[0], 1)
    unsup = ce(FIXMATCH_ROWS[5], 0) / 4  # 1 of 4 confident: a quarter of that sample's CE
    assert float(out.metrics["loss/sup_primary"]) == pytest.approx(sup, rel=1e-9)
    assert float(out.metrics["loss/unsup_primary"]) == pytest.approx(unsup, rel=1e-9)
    assert out.loss.item() == pytest.approx(sup + 2.0 * unsup, rel=1e-9)
    assert float(out.metrics["pseudo/mask_rate_primary"]) == pytest.approx(0.25)
    hard, mask = out.pseudo["primary"]
    assert hard.tolist() == [0, 0, 1, 2] and mask.tolist() == [True, False, False, False]
    assert out.logits_weak["primary"].tolist() == FIXMATCH_ROWS[1:5]
    assert all(not v.requires_grad and v.ndim == 0 for v in out.metrics.values())


def test_fixmatch_tau_one_gives_zero_unsupervised_loss() -> None:
    cls = get_algorithm("fixmatch")
    algo = cls({"primary": TableModel(FIXMATCH_ROWS)}, cls.Params(tau=1.0))
    out = algo.train_step(*fixmatch_batch())
    assert float(out.metrics["loss/unsup_primary"]) == 0.0
    assert out.loss.item() == pytest.approx(ce(FIXMATCH_ROWS[0], 1), rel=1e-9)


def test_fixmatch_gradient_flows_through_strong_and_labeled_not_weak() -> None:
    cls = get_algorithm("fixmatch")
    model = TableModel(FIXMATCH_ROWS)
    cls({"primary": model}, cls.Params(tau=0.6)).train_step(*fixmatch_batch()).loss.backward()
    grad_norm = model.table.grad.abs().sum(dim=1)
    assert grad_norm[0] > 0  # labeled
    assert torch.all(grad_norm[1:5] == 0)  # weak views: targets only
    assert grad_norm[5] > 0 and grad_norm[7] > 0  # strong views of confident u0 (1.0) and u2 (0.69)
    assert grad_norm[6] == 0 and grad_norm[8] == 0  # masked out at tau 0.6 (0.576 and 0.38)


# ---------------------------------------------------------------- cmpl

# Same row layout for both models: 0 labeled (label 0), 1-2 weak u0/u1, 3-4 strong u0/u1.
PRIMARY_ROWS = [
    [1.0, 0.0, 0.0],
    [5.0, 0.0, 0.0],  # weak u0: confident, class 0
    [0.1, 0.3, 0.0],  # weak u1: not confident (argmax 1)
    [0.2, 0.4, 0.6],  # strong u0
    [1.0, -1.0, 0.5],  # strong u1
]
AUXILIARY_ROWS = [
    [0.0, 1.0, 0.0],
    [0.2, 0.1, 0.0],  # weak u0: not confident (argmax 0)
    [0.0, 0.0, 5.0],  # weak u1: confident, class 2
    [-0.5, 0.0, 1.5],  # strong u0
    [0.3, 0.3, 0.9],  # strong u1
]


def _cmpl(lambda_u: float = 1.0) -> tuple[StepOutput, TableModel, TableModel]:
    cls = get_algorithm("cmpl")
    primary, auxiliary = TableModel(PRIMARY_ROWS), TableModel(AUXILIARY_ROWS)
    algo = cls({"primary": primary, "auxiliary": auxiliary}, cls.Params(tau=0.95, lambda_u=lambda_u))
    labeled = {"video": ids(0), "label": torch.tensor([0])}
    out = algo.train_step(labeled, {"weak": ids(1, 2), "strong": ids(3, 4)})
    return out, primary, auxiliary


def test_cmpl_each_model_is_taught_by_the_other() -> None:
    out, _, _ = _cmpl(lambda_u=0.5)
    # Primary learns from the auxiliary's confident label on u1 (class 2); auxiliary from primary's on u0.
    unsup_primary = ce(PRIMARY_ROWS[4], 2) / 2
    unsup_auxiliary = ce(AUXILIARY_ROWS[3], 0) / 2
    sup = ce(PRIMARY_ROWS[0], 0) + ce(AUXILIARY_ROWS[0], 0)
    assert float(out.metrics["loss/unsup_primary"]) == pytest.approx(unsup_primary, rel=1e-9)
    assert float(out.metrics["loss/unsup_auxiliary"]) == pytest.approx(unsup_auxiliary, rel=1e-9)
    assert float(out.metrics["loss/sup_primary"]) == pytest.approx(ce(PRIMARY_ROWS[0], 0), rel=1e-9)
    assert float(out.metrics["loss/sup_auxiliary"]) == pytest.approx(ce(AUXILIARY_ROWS[0], 0), rel=1e-9)
    assert out.loss.item() == pytest.approx(sup + 0.5 * (unsup_primary + unsup_auxiliary), rel=1e-9)

    hard_p, mask_p = out.pseudo["primary"]  # targets that taught the primary = the auxiliary's labels
    assert hard_p.tolist() == [0, 2] and mask_p.tolist() == [False, True]
    hard_a, mask_a = out.pseudo["auxiliary"]
    assert hard_a.tolist() == [0, 1] and mask_a.tolist() == [True, False]
    assert float(out.metrics["pseudo/mask_rate_primary"]) == 0.5
    assert float(out.metrics["pseudo/mask_rate_auxiliary"]) == 0.5
    assert float(out.metrics["pseudo/agreement"]) == 0.5  # u0 both say 0; u1: 1 vs 2
    assert set(out.logits_weak) == {"primary", "auxiliary"}


def test_cmpl_gradients_only_through_strong_and_labeled() -> None:
    out, primary, auxiliary = _cmpl()
    out.loss.backward()
    for model, taught_row, untaught_row in ((primary, 4, 3), (auxiliary, 3, 4)):
        grad_norm = model.table.grad.abs().sum(dim=1)
        assert grad_norm[0] > 0
        assert grad_norm[1] == 0 and grad_norm[2] == 0
        assert grad_norm[taught_row] > 0 and grad_norm[untaught_row] == 0


# ---------------------------------------------------------------- registry


def test_registry_lists_algorithms_with_params_dataclasses() -> None:
    listed = {name: (description, params) for name, description, params in list_algorithms()}
    assert {"supervised", "fixmatch", "cmpl"} <= set(listed)
    for name, (description, params) in listed.items():
        assert description and dataclasses.is_dataclass(params)
        assert get_algorithm(name).name == name
    assert get_algorithm("cmpl").roles == ("primary", "auxiliary")
    assert get_algorithm("fixmatch").Params().tau == 0.95


def test_unknown_algorithm_lists_names() -> None:
    with pytest.raises(KeyError, match="unknown algorithm 'meanmatch'.*cmpl.*fixmatch.*supervised"):
        get_algorithm("meanmatch")


def test_bad_inputs_raise_clear_errors() -> None:
    fixmatch = get_algorithm("fixmatch")
    with pytest.raises(KeyError, match="roles"):
        fixmatch({"auxiliary": TableModel(FIXMATCH_ROWS)}, None)
    with pytest.raises(TypeError, match="FixMatchParams"):
        fixmatch({"primary": TableModel(FIXMATCH_ROWS)}, get_algorithm("cmpl").Params())
    with pytest.raises(ValueError, match="tau"):
        fixmatch.Params(tau=1.5)
    algo = fixmatch({"primary": TableModel(FIXMATCH_ROWS)}, None)
    labeled, unlabeled = fixmatch_batch()
    with pytest.raises(ValueError, match="unlabeled batch"):
        algo.train_step(labeled, None)
    with pytest.raises(KeyError, match=r"lacks keys \['strong'\]"):
        algo.train_step(labeled, {"weak": unlabeled["weak"]})


def test_state_dict_is_empty_and_round_trips() -> None:
    algo = get_algorithm("fixmatch")({"primary": TableModel(FIXMATCH_ROWS)}, None)
    assert algo.state_dict() == {}
    algo.load_state_dict({})
    with pytest.raises(KeyError, match="keeps no state"):
        algo.load_state_dict({"thresholds": torch.zeros(3)})
