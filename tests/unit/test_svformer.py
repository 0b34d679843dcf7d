"""Tests for svformer: the tube mask and mix, temporal warping, the mixed targets, the EMA teacher, the confidence gate.

Expected values are worked out here with math.exp / math.log on explicit numbers, never by calling the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from ssl_core.algorithms import get_algorithm
from ssl_core.algorithms.temporal_warp import temporal_warp, warp_indices
from ssl_core.algorithms.tube_mix import tube_mask, tube_mix
from ssl_core.config import load_config
from ssl_core.models import build_model
from tests.unit.handmade import ce, softmax

SVFORMER = get_algorithm("svformer")


class ChannelMeanModel(nn.Module):
    """Logits = scale * each channel's mean over the clip: linear, so a mixed clip's logits mix its parts'."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones((), dtype=torch.float64))

    def forward(self, video: Tensor) -> Tensor:  # (B, 3, T, h, w) -> (B, 3)
        return video.mean(dim=(2, 3, 4)) * self.scale


def clips(*channel_values: list[float]) -> Tensor:  # (B, 3, 2, 2, 2) float64, each channel constant over the clip
    return torch.tensor(channel_values, dtype=torch.float64).view(-1, 3, 1, 1, 1).expand(-1, 3, 2, 2, 2).clone()


# ---------------------------------------------------------------- tube mask and mix


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.8, 1.0])
def test_tube_mask_is_the_same_in_every_frame_and_takes_the_requested_share(ratio: float) -> None:
    first, second = torch.zeros(3, 3, 4, 64, 64), torch.ones(3, 3, 4, 64, 64)
    mask = tube_mask(3, 64, 64, 16, ratio, generator=torch.Generator().manual_seed(0))
    mixed, share = tube_mix(first, second, mask)
    from_first = mixed == 0  # (B, 3, T, H, W)
    assert torch.equal(from_first, from_first[:, :1, :1].expand_as(from_first))  # one spatial mask: channels, frames
    cells = from_first[:, 0, 0].view(3, 4, 16, 4, 16)  # 4 x 4 cells of 16 x 16 pixels, each all-or-nothing
    assert torch.equal(cells.all(dim=(2, 4)), cells.any(dim=(2, 4)))
    expected = round(ratio * 16) / 16
    assert share.tolist() == [expected] * 3
    assert from_first.double().mean(dim=(1, 2, 3, 4)).tolist() == [expected] * 3


def test_tube_mix_share_counts_the_pixels_of_partial_edge_cells() -> None:
    """40 px on 16 px cells: 3 x 3 cells, the last row and column 8 px wide; the share is what the model sees."""
    mask = tube_mask(50, 40, 40, 16, 1 / 3, generator=torch.Generator().manual_seed(1))
    mixed, share = tube_mix(torch.zeros(50, 3, 2, 40, 40), torch.ones(50, 3, 2, 40, 40), mask)
    assert torch.equal(share, (mixed[:, 0, 0] == 0).float().mean(dim=(1, 2)))
    assert (mask[:, 0, 0, ::16, ::16].sum(dim=(1, 2)) == 3).all()  # 3 of the 9 cells each
    assert len(set(share.tolist())) > 1  # big and small cells: the pixel share varies


def test_pixel_tube_mix_on_patch_cells_is_the_token_mix_of_the_vit() -> None:
    """The paper mixes tokens; mixing pixels on the 16 px patch grid gives exactly those tokens."""
    torch.manual_seed(0)
    embed = build_model("vit_tiny", num_classes=3).patch_embed
    a, b = torch.randn(2, 2, 3, 4, 32, 32)
    mask = tube_mask(2, 32, 32, 16, 0.5)
    mixed, share = tube_mix(a, b, mask)
    per_token = mask[:, 0, 0, ::16, ::16].reshape(2, 1, 4).expand(2, 2, 4).reshape(2, 8, 1)  # (t, h, w) token order
    with torch.no_grad():
        expected = torch.where(per_token, embed(a), embed(b))
        assert torch.allclose(embed(mixed), expected, atol=1e-5)
    assert share.tolist() == per_token.float().mean(dim=(1, 2)).tolist()


# ---------------------------------------------------------------- temporal warping


@pytest.mark.parametrize("keyframes", [2, 4])
def test_warp_holds_each_keyframe_in_order(keyframes: int) -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        index = warp_indices(16, keyframes, g)
        keys = sorted(set(index.tolist()))
        assert len(index) == 16 and len(keys) == keyframes
        assert (index[1:] >= index[:-1]).all()  # time still runs forward
        assert all(index[k] == k for k in keys)  # each keyframe keeps at least its own frame
    assert torch.equal(warp_indices(8, 0), torch.arange(8)) and torch.equal(warp_indices(4, 4), torch.arange(4))


def test_temporal_warp_gathers_frames_per_clip_and_keeps_the_layout() -> None:
    frames = torch.arange(16.0).view(1, 1, 16, 1, 1).expand(64, 3, 16, 4, 4)
    video = frames.contiguous(memory_format=torch.channels_last_3d)
    warped = temporal_warp(video, torch.Generator().manual_seed(0))
    assert warped.is_contiguous(memory_format=torch.channels_last_3d)
    shown = warped[:, 0, :, 0, 0]  # (B, T): the source frame of each output frame
    assert torch.equal(warped, shown.view(64, 1, 16, 1, 1).expand_as(warped))
    assert (shown[:, 1:] >= shown[:, :-1]).all()
    distinct = {len(set(row)) for row in shown.tolist()}
    assert distinct == {2, 4, 16}  # each clip its own draw: 2 or 4 keyframes, or left as it was


# ---------------------------------------------------------------- the step


def test_mix_target_is_the_share_weighted_teacher_targets() -> None:
    """Two unlabeled clips, partners of each other; clip 0's teacher is confident (one-hot target), clip 1's is not
    (its probabilities); clip 0's mix holds 1 of 4 cells of itself, clip 1's 2 of 4."""
    student = ChannelMeanModel()
    params = SVFORMER.Params(tau=0.5, lambda_u=2.0, mix_weight=3.0, mix_cube=1, temporal_warp=False)
    algo = SVFORMER({"primary": student}, params)
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0]], dtype=torch.bool).view(2, 1, 1, 2, 2)
    algo.draw_mix = lambda strong: (torch.tensor([1, 0]), mask)
    labeled = {"video": clips([0.0, 1.0, 0.0]), "label": torch.tensor([1])}
    unlabeled = {"weak": clips([2.0, 0.0, 0.0], [0.0, 0.1, 0.0]), "strong": clips([1.0, 0.0, 0.0], [0.0, 0.0, 1.0])}
    out = algo.train_step(labeled, unlabeled)

    p0, p1 = softmax([2.0, 0.0, 0.0]), softmax([0.0, 0.1, 0.0])
    assert p0[0] >= 0.5 > max(p1)
    q0, q1 = [1.0, 0.0, 0.0], p1
    target0 = [0.25 * a + 0.75 * b for a, b in zip(q0, q1, strict=True)]
    target1 = [0.5 * a + 0.5 * b for a, b in zip(q1, q0, strict=True)]
    weight0, weight1 = 0.25 * 1 + 0.75 * 0, 0.5 * 0 + 0.5 * 1
    mixed0, mixed1 = softmax([0.25, 0.0, 0.75]), softmax([0.5, 0.0, 0.5])  # channel means of the mixed clips
    sq0 = sum((a - b) ** 2 for a, b in zip(mixed0, target0, strict=True))
    sq1 = sum((a - b) ** 2 for a, b in zip(mixed1, target1, strict=True))
    loss_mix = (weight0 * sq0 + weight1 * sq1) / 2
    loss_unsup = ce([1.0, 0.0, 0.0], 0) / 2  # clip 1 is below tau
    loss_sup = ce([0.0, 1.0, 0.0], 1)
    m = out.metrics
    assert m["loss/mix_primary"].item() == pytest.approx(loss_mix, rel=1e-6)
    assert m["loss/unsup_primary"].item() == pytest.approx(loss_unsup, rel=1e-6)
    assert out.loss.item() == pytest.approx(loss_sup + 2.0 * loss_unsup + 3.0 * loss_mix, rel=1e-6)
    assert m["pseudo/mask_rate_primary"].item() == 0.5 and m["train/mix_share"].item() == pytest.approx(0.375)
    assert m["pseudo/mix_weight_primary"].item() == pytest.approx((weight0 + weight1) / 2)
    hard, confident = out.pseudo["primary"]
    assert hard.tolist() == [0, 1] and confident.tolist() == [True, False]


def test_nothing_unlabeled_teaches_when_no_teacher_prediction_reaches_tau() -> None:
    """Both unlabeled terms are gated by the teacher's confidence (the mix through both partners'): below tau for
    every clip, the loss and its gradient are the labeled term's alone."""
    labeled = {"video": clips([0.0, 1.0, 0.0]), "label": torch.tensor([2])}
    unlabeled = {"weak": clips([2.0, 0.0, 0.0], [0.0, 3.0, 0.0]), "strong": clips([1.0, 0.0, 0.0], [0.0, 0.0, 1.0])}
    student = ChannelMeanModel()
    out = SVFORMER({"primary": student}, SVFORMER.Params(tau=0.99)).train_step(labeled, unlabeled)
    out.loss.backward()
    assert out.metrics["loss/unsup_primary"].item() == 0.0 and out.metrics["loss/mix_primary"].item() == 0.0
    reference = ChannelMeanModel()
    sup = nn.functional.cross_entropy(reference(labeled["video"]), labeled["label"])
    sup.backward()
    assert out.loss.item() == sup.item()
    assert student.scale.grad.item() == reference.scale.grad.item()


@pytest.mark.parametrize(("lambda_u", "mix_weight"), [(1.0, 0.0), (0.0, 1.0)])
def test_each_unlabeled_term_sends_gradient_to_the_student(lambda_u: float, mix_weight: float) -> None:
    def grads(lambda_u: float, mix_weight: float) -> list[Tensor]:
        torch.manual_seed(0)
        student = build_model("small3d_w0.25", num_classes=3)
        algo = SVFORMER({"primary": student}, SVFORMER.Params(tau=0.0, lambda_u=lambda_u, mix_weight=mix_weight))
        g = torch.Generator().manual_seed(1)
        labeled = {"video": torch.randn(2, 3, 4, 32, 32, generator=g), "label": torch.tensor([0, 2])}
        weak, strong = torch.randn(2, 4, 3, 4, 32, 32, generator=g)
        algo.train_step(labeled, {"weak": weak, "strong": strong}).loss.backward()
        assert all(p.grad is None for p in algo.teacher.parameters())
        return [p.grad for p in student.parameters()]

    with_term, without = grads(lambda_u, mix_weight), grads(0.0, 0.0)
    assert all(g is not None for g in with_term)
    assert any(not torch.allclose(a, b) for a, b in zip(with_term, without, strict=True))


def test_teacher_is_frozen_and_moves_by_ema_of_the_student() -> None:
    torch.manual_seed(0)
    student = build_model("small3d_w0.25", num_classes=3)
    algo = SVFORMER({"primary": student}, SVFORMER.Params(tau=0.0, ema_decay=0.9))
    optimizer = torch.optim.SGD(algo.trainable_models()["primary"].parameters(), lr=0.5)
    assert not any(p.requires_grad for p in algo.teacher.parameters()) and not algo.teacher.training
    before = {k: v.clone() for k, v in algo.teacher.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    weak, strong = torch.randn(2, 4, 3, 4, 32, 32, generator=g)
    labeled = {"video": torch.randn(2, 3, 4, 32, 32, generator=g), "label": torch.tensor([0, 2])}
    algo.train_step(labeled, {"weak": weak, "strong": strong}).loss.backward()
    optimizer.step()
    algo.after_optimizer_step()
    after, trained = algo.teacher.state_dict(), student.state_dict()
    moved = 0
    for key, value in before.items():
        if value.is_floating_point():
            assert torch.allclose(after[key], 0.9 * value + 0.1 * trained[key], atol=1e-6)
            moved += not torch.equal(after[key], value)
    assert moved > 0 and set(algo.eval_models()) == {"primary", "teacher"}
    assert algo.eval_models()["teacher"] is algo.teacher


def test_warmup_trains_on_labels_and_keeps_the_teacher_a_copy_of_the_student() -> None:
    student = ChannelMeanModel()
    algo = SVFORMER({"primary": student}, SVFORMER.Params(tau=0.0, unsup_warmup=2, ema_decay=0.5))
    optimizer = torch.optim.SGD(student.parameters(), lr=0.5)
    labeled = {"video": clips([0.0, 1.0, 0.0]), "label": torch.tensor([1])}
    unlabeled = {"weak": clips([2.0, 0.0, 0.0], [0.0, 3.0, 0.0]), "strong": clips([1.0, 0.0, 0.0], [0.0, 0.0, 1.0])}
    for step in range(3):
        algo.steps_done = step
        out = algo.train_step(labeled, unlabeled)
        optimizer.zero_grad()
        out.loss.backward()
        before = algo.teacher.scale.item()
        optimizer.step()
        algo.after_optimizer_step()
        if step < 2:  # labeled only, and the teacher follows the student exactly
            assert "loss/mix_primary" not in out.metrics and out.metrics["unsup_weight"].item() == 0.0
            assert algo.teacher.scale.item() == student.scale.item()
        else:
            assert "loss/mix_primary" in out.metrics
            assert algo.teacher.scale.item() == pytest.approx(0.5 * before + 0.5 * student.scale.item())


def test_params_are_validated_and_set_as_algorithm_keys() -> None:
    for bad in ({"tau": 1.5}, {"mix_weight": -1.0}, {"ema_decay": 1.5}, {"mix_alpha": 0.0}, {"mix_cube": 0},
                {"unsup_warmup": -1}):
        with pytest.raises(ValueError, match=f"svformer.{next(iter(bad))}"):
            SVFORMER.Params(**bad)
    cfg = load_config(None, ["algorithm.name=svformer", "algorithm.mix_weight=2.0", "algorithm.ema_decay=0.999",
                             "algorithm.svformer.mix_cube=8"])
    params = cfg.algorithm.resolved_params()
    assert (params.mix_weight, params.ema_decay, params.mix_cube, params.tau) == (2.0, 0.999, 8, 0.3)
    assert math.isclose(params.lambda_u, 1.0)
