"""Masked video pretraining (pretrain.objective videomae, ssl_core/pretrain/videomae.py): the tube mask, the
per-tube normalised targets in token order, a loss that counts masked tubes only, learning on a tiny batch, the
checkpoint that model.init loads into a ViT classifier, the config errors, and a tiny Ray-free run.

    .venv/bin/python -m pytest -q tests/unit/test_videomae.py
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ssl_core.checkpoint import load_training_state
from ssl_core.config import load_config
from ssl_core.data.transforms import AugmentConfig
from ssl_core.models import build_model
from ssl_core.pretrain.augment import pretrain_views
from ssl_core.pretrain.config import load_pretrain_config
from ssl_core.pretrain.step import (
    Pretrainer,
    build_net,
    pretrain_optimize,
    save_pretrain_checkpoint,
)
from ssl_core.pretrain.videomae import reconstruction_loss, tube_mask, tube_targets
from ssl_core.schedule import build_scheduler
from ssl_core.train_step import build_optimizer, init_models
from ssl_core.typed_config import ConfigError
from tests.unit.pretrain_resume import assert_resume_takes_the_same_step, fresh_pretrainer

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "pretrain_videomae_demo.yaml"
DEMO = ROOT / "configs" / "demo.yaml"
# 8 frames of 32 px: 4 x 2 x 2 tubes; mask 0.75 hides 3 of the 4 positions of every frame.
TINY = ["data.num_frames=8", "data.size=40", "augment.crop_size=32", "pretrain.mask_ratio=0.75",
        "train.batch_size=4"]


def tube_of_pixel(t: int, h: int, w: int) -> torch.Tensor:
    """(2t, 16h, 16w) map of each pixel's tube number in the ViT's (t, h, w) token order."""
    ids = torch.arange(t * h * w).view(t, h, w)
    return ids.repeat_interleave(2, 0).repeat_interleave(16, 1).repeat_interleave(16, 2)


def test_tube_mask_hides_the_ratio_of_each_frame_at_the_same_places_at_every_time() -> None:
    generator = torch.Generator().manual_seed(0)
    mask = tube_mask(64, (4, 6, 6), 0.9, generator=generator)
    assert mask.shape == (64, 4 * 36) and mask.dtype == torch.bool
    frames = mask.view(64, 4, 36)
    assert (frames.sum(dim=2) == int(0.9 * 36)).all()  # 32 of 36 per frame and clip
    assert (frames == frames[:, :1]).all()  # one spatial mask, repeated over time
    assert len({tuple(f[0].nonzero().flatten().tolist()) for f in frames}) > 32  # each clip its own draw
    # Every spatial position is masked about as often as any other (a uniform draw).
    assert frames[:, 0].float().mean(dim=0).min() > 0.6


def test_targets_are_each_tube_standardised_per_channel_in_token_order() -> None:
    torch.manual_seed(0)
    video = torch.randn(2, 3, 4, 32, 48) * torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1, 1) + 5
    targets = tube_targets(video)  # (2, 2 x 2 x 3 tubes, 2 * 16 * 16 * 3)
    assert targets.shape == (2, 12, 1536)
    # Tube 10 = (t 1, row 1, column 1): frames 2-3, rows 16-31, columns 16-31.
    tube = video[1, :, 2:4, 16:32, 16:32].permute(1, 2, 3, 0).reshape(-1, 3)  # (frame, row, column) x channel
    expected = (tube - tube.mean(dim=0)) / (tube.std(dim=0) + 1e-6)
    torch.testing.assert_close(targets[1, 10], expected.flatten())
    # The ViT's own patch embedding orders its tokens the same way: a tube's pixels change its token only.
    vit = build_model("vit_tiny", num_classes=2)
    changed = video.clone()
    changed[1, :, 2:4, 16:32, 16:32] += 1
    moved = (vit.patch_embed(changed) - vit.patch_embed(video)).abs().sum(dim=2)
    assert moved[1].nonzero().flatten().tolist() == [10] and moved[0].abs().sum() == 0
    # A per-channel affine change of the clip (another input normalisation) leaves the targets as they are.
    torch.testing.assert_close(tube_targets(video * 0.5 - 1), targets, atol=1e-4, rtol=1e-4)
    # pretrain.norm_target=false: the same tube, its pixels as given
    torch.testing.assert_close(tube_targets(video, normalise=False)[1, 10], tube.flatten())


def test_the_loss_counts_only_the_masked_tubes() -> None:
    torch.manual_seed(0)
    video = torch.randn(2, 3, 4, 32, 32)  # 2 x 2 x 2 = 8 tubes per clip
    masked = tube_mask(2, (2, 2, 2), 0.5)
    prediction = torch.randn(2, 4, 1536)
    loss = reconstruction_loss(prediction, video, masked)
    expected = ((prediction - tube_targets(video)[masked].view(2, 4, -1)) ** 2).mean()
    torch.testing.assert_close(loss, expected)
    owner = tube_of_pixel(2, 2, 2)  # (4, 32, 32)
    in_visible = torch.stack([(~m)[owner] for m in masked])[:, None]  # (2, 1, 4, 32, 32)
    noise = 3 * torch.randn_like(video)
    assert float(reconstruction_loss(prediction, video + noise * in_visible, masked)) == float(loss)
    assert float(reconstruction_loss(prediction, video + noise * ~in_visible, masked)) != pytest.approx(float(loss))


def test_a_few_steps_learn_to_fill_masked_tubes_from_the_visible_ones() -> None:
    """Every tube of a clip shows one of two random patterns (per clip): a prediction blind to the visible tubes
    can do no better than their mean, an MSE of 0.5 on standardised targets; reading them, 0."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    setup = load_pretrain_config(CONFIG, [*TINY, "train.lr=0.003"])
    net, _ = build_net(setup, ["a", "b"])
    optimizer = build_optimizer(setup.base, {"net": net})
    trainer = Pretrainer(net, setup.pretrain, iterations=15, queue_size=1, seed=0)
    scheduler = build_scheduler(optimizer, warmup=2, total=15)
    patterns = torch.randn(2, 3, 2, 16, 16)
    views = patterns[torch.tensor([0, 1, 0, 1, 1, 0, 0, 1])].repeat(1, 1, 4, 2, 2)[:, None]  # (8, 1, 3, 8, 32, 32)
    losses = []
    for _ in range(15):
        metrics = pretrain_optimize(trainer, optimizer, scheduler, views, None, grad_clip=5.0)
        losses.append(float(metrics["loss/total"]))
    assert float(metrics["pretrain/mask_ratio"]) == 0.75 and set(metrics) >= {"loss/reconstruction", "grad_norm"}
    assert losses[0] > 0.9 and losses[-1] < 0.25
    # Every trainable weight had a gradient (DDP's default fails otherwise); fc_norm, which pools for the
    # classifier only, is frozen.
    assert [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None] == []
    assert not any(p.requires_grad for p in net.encoder.fc_norm.parameters())


def test_checkpoint_resumes_exactly_and_model_init_loads_every_encoder_key(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    setup = load_pretrain_config(CONFIG, TINY)
    classes = ["a", "b", "c"]
    trainer, optimizer, scheduler = fresh_pretrainer(setup, classes, queue_size=1)
    batch = [torch.randn(4, 1, 3, 8, 32, 32) for _ in range(3)]
    for views in batch[:2]:
        pretrain_optimize(trainer, optimizer, scheduler, views, None, grad_clip=5.0)
    run = tmp_path / "run"
    ckpt = save_pretrain_checkpoint(run / "checkpoint_000002", setup=setup, trainer=trainer, optimizer=optimizer,
                                    scheduler=scheduler, step=2, classes=classes).parent
    state = load_training_state(ckpt)
    assert state["meta"]["objective"] == "videomae" and state["meta"]["untrained_head"] == "head"
    assert "decoder" in state["algorithm"]

    # Resume: a fresh trainer restored from the checkpoint takes the same next step (mask draw included).
    resumed = fresh_pretrainer(setup, classes, queue_size=1)
    assert_resume_takes_the_same_step(state, (trainer, optimizer, scheduler), resumed, batch[2], None)

    # model.init of a ViT training run from the run folder: every encoder key, the head left fresh.
    cfg = load_config(DEMO, ["model.primary=vit_tiny", f"model.init={run}"])
    target = build_model("vit_tiny", num_classes=3)
    fresh_head = target.head.weight.detach().clone()
    (report,) = init_models(cfg, {"primary": target}, classes)
    assert report.missing == [] and report.unexpected == [] and report.reinitialised == ["head.weight", "head.bias"]
    assert len(report.matched) == report.total - 2 and "self-supervised backbone" in report.line()
    assert torch.equal(target.head.weight, fresh_head)
    saved = state["models"]["primary"]
    assert all(torch.equal(v, saved[k]) for k, v in target.state_dict().items() if not k.startswith("head."))


def test_config_needs_a_vit_and_a_mask_that_leaves_something_on_each_side() -> None:
    setup = load_pretrain_config(CONFIG)
    assert setup.pretrain.rho == 1 and setup.pretrain.crop_scale() == (0.44, 1.0)
    assert setup.params()["pretrain.min_scale"] == 0.44  # the scale used, not null
    assert load_pretrain_config(ROOT / "configs" / "pretrain_demo.yaml").pretrain.crop_scale() == (1.0, 1.0)
    for override, key in [("model.primary=small3d", "model.primary:"), ("model.primary=vit_tiny+tg", "model.primary:"),
                          ("pretrain.mask_ratio=0.05", "pretrain.mask_ratio:"),  # int(0.8) = 0 of 16 masked
                          ("pretrain.mask_ratio=1", "pretrain.mask_ratio:"),
                          ("pretrain.pretext=arrow", "pretrain.pretext:"),
                          ("pretrain.background_swap=0.5", "pretrain.background_swap:"),
                          ("pretrain.decoder_heads=5", "pretrain.decoder_heads:"),
                          ("pretrain.decoder_depth=0", "pretrain.decoder_depth:"),
                          ("pretrain.rho=0", "pretrain.rho:")]:
        with pytest.raises(ConfigError, match=f"^{key}"):
            load_pretrain_config(CONFIG, [override])


def test_views_are_cropped_and_flipped_but_keep_their_colours() -> None:
    torch.manual_seed(0)
    clips = torch.randint(0, 256, (2, 1, 4, 16, 16, 3), dtype=torch.uint8)
    aug = AugmentConfig(crop_size=16, hflip=False)
    keep = ["pretrain.min_scale=1", "pretrain.max_scale=1", "pretrain.jitter_p=1", "pretrain.grayscale_p=1"]
    plain = pretrain_views(clips, aug, load_pretrain_config(CONFIG, keep).pretrain)
    contrastive = load_pretrain_config(ROOT / "configs" / "pretrain_demo.yaml",
                                       [*keep, "pretrain.color_jitter=0.6"]).pretrain
    jittered = pretrain_views(clips, aug, contrastive)
    unchanged = pretrain_views(clips, aug, load_pretrain_config(CONFIG, [*keep[:2], "pretrain.jitter_p=0",
                                                                         "pretrain.grayscale_p=0"]).pretrain)
    torch.testing.assert_close(plain, unchanged)
    assert not torch.allclose(jittered, unchanged)


def test_ray_free_run_writes_a_vit_checkpoint(synth_dataset: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from ssl_core.pretrain.local import run_local_pretrain

    torch.set_num_threads(1)
    setup = load_pretrain_config(CONFIG, [
        f"data.root={synth_dataset}", "data.synthetic.enabled=false", "data.labeled_fraction=0.5",
        "data.num_frames=4", "data.size=40", "data.eval_clips=1", "augment.crop_size=32", "data.cache=off",
        "pretrain.mask_ratio=0.75", "train.iterations=3", "train.batch_size=4", "train.log_every=1",
        "train.warmup_iters=1", "train.checkpoint_every=3", "pretrain.knn_every=2", "pretrain.probe_steps=5",
        f"output.storage={tmp_path}",
    ])
    reports = []
    result = run_local_pretrain(setup, decode_threads=2, run_dir=tmp_path / "run", on_report=reports.append)
    out = capsys.readouterr().out
    assert "step 3/3:" in out and "k-NN top-1" in out and "pretrain/mask_ratio=0.750" in out
    assert [s for s, _ in result["knn_history"]] == [0, 2, 3]
    assert 0.0 <= result["knn/top1"] <= 1.0 and 0.0 <= result["probe/top1"] <= 1.0
    assert all(r.window["loss/reconstruction"] > 0 for r in reports if r.due.log)
    state = load_training_state(tmp_path / "run" / "checkpoint_000003")
    assert state["model_names"] == {"primary": "vit_tiny"} and state["meta"]["objective"] == "videomae"


def test_the_ray_runs_log_line_and_opening_line_name_the_mask_ratio() -> None:
    from workflows.pretrain import _objective_note
    from workflows.runtime.pretrain_worker import pretrain_line

    line = pretrain_line({"step": 40, "loss/total": 0.91, "pretrain/mask_ratio": 0.875, "perf/clips_per_s": 30.0},
                         400)
    assert line == "step 40/400 | total 0.910 | mask_ratio 0.875 | clips/s 30.0"
    assert _objective_note(load_pretrain_config(CONFIG), 600) == "tube mask ratio 0.9"
