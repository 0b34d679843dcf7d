"""The recipe options that make unlabeled clips pay: supervised warm-up and
ramp, EMA weights (evaluated, checkpointed, deployed, used as teacher), SoftMatch weights, distribution
alignment's first-batch start, labeled MixUp / label smoothing, and the temporal-gradient model view.

    .venv/bin/python -m pytest -q tests/unit/test_recipe.py

Expected values are worked out with plain floats (tests/unit/handmade.py), never with the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from ssl_core.algorithms import get_algorithm
from ssl_core.algorithms.components import labeled_loss, mix_labeled, unlabeled_ramp
from ssl_core.algorithms.thresholds import PseudoLabeler
from ssl_core.checkpoint import load_checkpoint_model, load_training_state, save_training_state
from ssl_core.models import build_model
from ssl_core.models.registry import temporal_gradient
from ssl_core.schedule import build_scheduler
from ssl_core.train_step import optimize
from tests.unit.handmade import FIXMATCH_ROWS, TableModel, ce, fixmatch_batch, ids, softmax

# ---------------------------------------------------------------- warm-up and ramp


def test_unlabeled_ramp_is_zero_in_warmup_then_linear() -> None:
    assert [unlabeled_ramp(s, 3, 4) for s in range(9)] == [0, 0, 0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert unlabeled_ramp(0, 0, 0) == 1.0 and unlabeled_ramp(5, 5, 0) == 1.0


def test_fixmatch_warmup_forwards_labeled_clips_only_then_ramps_in() -> None:
    cls = get_algorithm("fixmatch")
    seen: list[int] = []

    class Counting(TableModel):
        def forward(self, video: torch.Tensor) -> torch.Tensor:
            seen.append(video.shape[0])
            return super().forward(video)

    algo = cls({"primary": Counting(FIXMATCH_ROWS)}, cls.Params(tau=0.95, unsup_warmup=2, unsup_rampup=2))
    sup = ce(FIXMATCH_ROWS[0], 1)
    unsup = ce(FIXMATCH_ROWS[5], 0) / 4
    losses = []
    for step in range(4):
        algo.steps_done = step
        losses.append(algo.train_step(*fixmatch_batch()).loss.item())
    assert seen == [1, 1, 9, 9]  # warm-up: the labeled clip alone; then labeled + weak + strong
    assert losses == pytest.approx([sup, sup, sup + 0.5 * unsup, sup + unsup], rel=1e-9)


# ---------------------------------------------------------------- labeled term


def test_label_smoothing_and_mixup_of_the_labeled_loss() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0]], dtype=torch.float64)
    smoothed = labeled_loss(logits, mix_labeled(ids(0), torch.tensor([0]), 0.0), label_smoothing=0.3)
    log_p = [math.log(p) for p in softmax([2.0, 0.0, -1.0])]
    expected = -(0.8 * log_p[0] + 0.1 * log_p[1] + 0.1 * log_p[2])  # (1 - 0.3) one-hot + 0.3 / 3 each
    assert float(smoothed) == pytest.approx(expected, rel=1e-9)

    torch.manual_seed(0)
    video = torch.arange(4, dtype=torch.float64).view(4, 1, 1, 1, 1)
    labels = torch.tensor([0, 1, 2, 0])
    batch = mix_labeled(video, labels, alpha=0.4)
    assert batch.lam != 1.0  # mixed
    partner = ((batch.video.flatten() - batch.lam * video.flatten()) / (1 - batch.lam)).round().long()
    assert sorted(partner.tolist()) == [0, 1, 2, 3]  # a permutation of the same batch
    # each clip keeps its label at weight lam and takes its partner's at 1 - lam
    assert batch.labels_a.tolist() == labels.tolist() and batch.labels_b.tolist() == labels[partner].tolist()
    assert batch.labels_b.tolist() == [[0, 1, 2, 0][int(i)] for i in partner.round().long()]
    rows = torch.tensor([[1.0, 0.0, 0.0]] * 4, dtype=torch.float64)
    mixed = labeled_loss(rows, batch)
    by_hand = sum(batch.lam * ce([1.0, 0, 0], a) + (1 - batch.lam) * ce([1.0, 0, 0], b)
                  for a, b in zip(batch.labels_a.tolist(), batch.labels_b.tolist(), strict=True)) / 4
    assert float(mixed) == pytest.approx(by_hand, rel=1e-9)


# ---------------------------------------------------------------- SoftMatch, distribution alignment


def test_softmatch_weights_are_a_truncated_gaussian_of_confidence() -> None:
    labeler = PseudoLabeler("softmatch", momentum=0.5)
    rows = [[3.0, 0.0], [0.2, 0.0], [0.0, 0.0]]
    out = labeler(torch.tensor(rows, dtype=torch.float64))
    conf = [max(softmax(r)) for r in rows]
    mean = sum(conf) / 3
    var = sum((c - mean) ** 2 for c in conf) / 2  # unbiased, as USB's torch.var
    mu, sigma2 = 0.5 * 0.5 + 0.5 * mean, 0.5 * 1.0 + 0.5 * var  # EMA from the init 1/C and 1
    expected = [1.0 if c >= mu else math.exp(-((c - mu) ** 2) / (2 * sigma2 / 4)) for c in conf]
    assert out.mask.tolist() == pytest.approx(expected, rel=1e-6)
    assert out.mask[0] == 1.0 and 0 < out.mask[2] < out.mask[1] < 1  # every clip counts, unsure ones less
    assert out.confident.tolist() == [True, False, False]
    assert labeler.state_dict()["threshold"]["mu_t"].item() == pytest.approx(mu)


def test_softmatch_is_an_option_of_fixmatch_and_cmpl() -> None:
    for name in ("fixmatch", "cmpl"):
        assert get_algorithm(name).Params(threshold="softmatch").threshold == "softmatch"


# ---------------------------------------------------------------- EMA weights


def _tiny_fixmatch(**params: object):  # noqa: ANN202
    torch.manual_seed(0)
    cls = get_algorithm("fixmatch")
    model = build_model("small3d_w0.25", num_classes=3)
    algo = cls({"primary": model}, cls.Params(tau=0.0, **params))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = build_scheduler(optimizer, warmup=0, total=10)
    clips = torch.randn(6, 3, 4, 16, 16)
    labeled = {"video": clips[:2], "label": torch.tensor([0, 1])}
    unlabeled = {"weak": clips[2:4], "strong": clips[4:]}
    return algo, model, optimizer, scheduler, labeled, unlabeled


def test_ema_is_made_at_its_start_step_then_averages_and_is_deployed() -> None:
    algo, model, optimizer, scheduler, labeled, unlabeled = _tiny_fixmatch()
    algo.configure_ema(0.5, start=2)
    optimize(algo, optimizer, scheduler, labeled, unlabeled, grad_clip=5.0)
    assert algo.ema == {} and algo.deployed_models()["primary"] is model  # before its start: raw weights
    optimize(algo, optimizer, scheduler, labeled, unlabeled, grad_clip=5.0)
    ema = algo.ema["primary"]
    assert torch.equal(ema.fc.weight, model.fc.weight) and not ema.fc.weight.requires_grad  # a copy at step 2
    before = ema.fc.weight.clone()
    optimize(algo, optimizer, scheduler, labeled, unlabeled, grad_clip=5.0)
    assert torch.allclose(ema.fc.weight, 0.5 * before + 0.5 * model.fc.weight)
    assert algo.deployed_models()["primary"] is ema and algo.steps_done == 2


def test_ema_teacher_labels_the_weak_view() -> None:
    algo, model, optimizer, scheduler, labeled, unlabeled = _tiny_fixmatch(ema_teacher=True)
    algo.configure_ema(0.9, start=0)
    optimize(algo, optimizer, scheduler, labeled, unlabeled, grad_clip=5.0)
    out = algo.train_step(labeled, unlabeled)
    with torch.no_grad():
        from_ema = algo.ema["primary"](unlabeled["weak"])
        model.train()
    assert torch.allclose(out.logits_weak["primary"], from_ema)


def test_ema_weights_are_checkpointed_and_deployed(tmp_path) -> None:  # noqa: ANN001
    algo, model, optimizer, scheduler, labeled, unlabeled = _tiny_fixmatch()
    algo.configure_ema(0.5, start=0)
    for _ in range(3):
        optimize(algo, optimizer, scheduler, labeled, unlabeled, grad_clip=5.0)
    save_training_state(tmp_path, models=algo.trainable_models(), optimizer=optimizer, scheduler=scheduler, step=3,
                        algorithm_state=algo.state_dict(), model_names={"primary": "small3d_w0.25"}, num_classes=3,
                        ema=algo.ema_state_dict())
    deployed = load_checkpoint_model(tmp_path)
    assert torch.equal(deployed.fc.weight, algo.ema["primary"].fc.weight)
    assert not torch.equal(deployed.fc.weight, model.fc.weight)
    restored = get_algorithm("fixmatch")({"primary": build_model("small3d_w0.25", num_classes=3)}, None)
    restored.load_ema_state_dict(load_training_state(tmp_path)["ema"])
    assert torch.equal(restored.ema["primary"].fc.weight, algo.ema["primary"].fc.weight)


# ---------------------------------------------------------------- temporal-gradient view


def test_temporal_gradient_view_is_part_of_the_model() -> None:
    video = torch.arange(2 * 3 * 4 * 2 * 2, dtype=torch.float32).view(2, 3, 4, 2, 2) ** 2
    tg = temporal_gradient(video)
    assert tg.shape == video.shape
    assert torch.equal(tg[:, :, 1], video[:, :, 2] - video[:, :, 1])
    assert torch.equal(tg[:, :, 3], video[:, :, 3] - video[:, :, 2])  # the last difference, repeated

    torch.manual_seed(0)
    plain = build_model("small3d_w0.5", num_classes=4)
    torch.manual_seed(0)
    viewed = build_model("small3d_w0.5+tg", num_classes=4)
    assert plain.state_dict().keys() == viewed.state_dict().keys()  # same weights, checkpoints load either way
    plain.eval()
    viewed.eval()
    with torch.no_grad():
        assert torch.allclose(viewed(video), plain(tg))
        # a still clip has no motion: every frame difference is zero
        still = video[:, :, :1].expand_as(video).contiguous()
        assert torch.allclose(viewed(still), plain(torch.zeros_like(still)))


def test_cmpl_accepts_a_temporal_gradient_auxiliary() -> None:
    from ssl_core.config import load_config

    cfg = load_config(None, ["model.auxiliary=small3d_w0.5+tg", "algorithm.name=cmpl"])
    assert cfg.model.auxiliary == "small3d_w0.5+tg"
    torch.manual_seed(0)
    auxiliary = build_model(cfg.model.auxiliary, num_classes=3).eval()
    torch.manual_seed(0)
    plain = build_model("small3d_w0.5", num_classes=3).eval()
    video = torch.rand(2, 3, 4, 16, 16)
    with torch.no_grad():  # the configured auxiliary reads frame differences
        assert torch.allclose(auxiliary(video), plain(temporal_gradient(video)))


# ---------------------------------------------------------------- precise BN


def test_precise_bn_recomputes_statistics_from_the_remembered_batches() -> None:
    from ssl_core.evaluate import PreciseBN

    torch.manual_seed(0)
    model = build_model("small3d_w0.25", num_classes=3)
    bn = model.features[1]
    bn.running_mean.fill_(7.0)  # stale statistics, far from what the batches give
    precise = PreciseBN(2)
    batches = [torch.randn(2, 3, 4, 8, 8) + shift for shift in (0.0, 1.0, 2.0)]
    for b in batches:
        precise.remember({"video": b[:1]}, {"weak": b[1:]})
    assert len(precise.batches) == 2  # only the last N
    model.eval()
    precise.apply({"primary": model}, torch.device("cpu"))
    with torch.no_grad():
        conv = model.features[0]
        means = [conv(b).mean(dim=(0, 2, 3, 4)) for b in batches[1:]]
    assert torch.allclose(bn.running_mean, (means[0] + means[1]) / 2, atol=1e-5)
    assert not model.training  # the mode is left as it was
    off = PreciseBN(0)
    off.remember({"video": batches[0]}, None)
    assert not off.batches


# ---------------------------------------------------------------- FixMatch with a companion view (LTG)


def test_fixmatch_companion_labels_with_the_average_of_both_models() -> None:
    cls = get_algorithm("fixmatch")
    params = cls.Params(tau=0.7, companion=True)
    assert cls.roles_for(params) == ("primary", "auxiliary") and cls.roles_for(cls.Params()) == ("primary",)
    # rows: 0 labeled, 1-2 weak u0/u1, 3-4 strong u0/u1
    primary = [[1.0, 0.0], [3.0, 0.0], [0.0, 0.5], [0.2, 0.1], [0.0, 1.0]]
    auxiliary = [[0.0, 1.0], [0.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.3, 0.3]]
    algo = cls({"primary": TableModel(primary), "auxiliary": TableModel(auxiliary)}, params)
    out = algo.train_step({"video": ids(0), "label": torch.tensor([0])}, {"weak": ids(1, 2), "strong": ids(3, 4)})
    mean = [[(a + b) / 2 for a, b in zip(softmax(primary[i]), softmax(auxiliary[i]), strict=True)] for i in (1, 2)]
    hard = [max(range(2), key=row.__getitem__) for row in mean]
    confident = [max(row) >= 0.7 for row in mean]
    # u0: the primary is sure of class 0 (0.95), the companion leans to 1: averaged 0.61, below tau
    assert hard == [0, 1] and confident == [False, True]
    expected_unsup = {
        role: sum(ce(rows[3 + i], hard[i]) for i in range(2) if confident[i]) / 2
        for role, rows in (("primary", primary), ("auxiliary", auxiliary))
    }
    for role in ("primary", "auxiliary"):
        assert float(out.metrics[f"loss/unsup_{role}"]) == pytest.approx(expected_unsup[role], rel=1e-6)
        assert out.pseudo[role][0].tolist() == hard
    sup = ce(primary[0], 0) + ce(auxiliary[0], 0)
    assert out.loss.item() == pytest.approx(sup + sum(expected_unsup.values()), rel=1e-6)
