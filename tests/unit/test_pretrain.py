"""Self-supervised pretraining (ssl_core.pretrain): InfoNCE / NT-Xent against hand computations, the queue (FIFO,
size, all_gather under torch.distributed), the momentum anneal, k-NN and the linear probe on hand examples,
the per-clip augmentation, the rho-clip sampling with pretext labels, the config, the checkpoint that model.init
reads, and a tiny Ray-free run.

    .venv/bin/python -m pytest -q tests/unit/test_pretrain.py
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from ssl_core.checkpoint import latest_checkpoint_dir, load_checkpoint_model, load_training_state, model_from_state
from ssl_core.config import load_config
from ssl_core.data.foreground import foreground_masks, swap_view_backgrounds
from ssl_core.data.transforms import AugmentConfig
from ssl_core.models import build_model
from ssl_core.models.init import load_init, read_init_source
from ssl_core.pretrain.augment import VideoGrayscale, pretrain_views, swap_backgrounds
from ssl_core.pretrain.config import PretrainConfig, load_pretrain_config, next_command
from ssl_core.pretrain.data import decode_views
from ssl_core.pretrain.knn import knn_accuracy, knn_scores, linear_probe
from ssl_core.pretrain.objectives import (
    KeyQueue,
    gather_keys,
    info_nce,
    momentum_at,
    momentum_update,
    nt_xent,
    projection_mlp,
    rho_info_nce,
)
from ssl_core.pretrain.step import (
    Pretrainer,
    build_net,
    init_objective_state,
    pretrain_optimize,
    save_pretrain_checkpoint,
)
from ssl_core.typed_config import ConfigError
from tests.unit.pretrain_resume import assert_resume_takes_the_same_step, fresh_pretrainer

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "pretrain_demo.yaml"


# --- objectives ---------------------------------------------------------------------------------------------


def test_info_nce_matches_a_hand_computation() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    negatives = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    loss, logits = info_nce(q, k, negatives, temperature=0.5)
    # query 0: positive 0.6, negatives 0 and -1 -> logits (1.2, 0, -2); query 1: 1, then 1 and 0 -> (2, 2, 0)
    assert torch.allclose(logits, torch.tensor([[1.2, 0.0, -2.0], [2.0, 2.0, 0.0]]))
    by_hand = [-math.log(math.exp(1.2) / (math.exp(1.2) + 1 + math.exp(-2))),
               -math.log(math.exp(2) / (2 * math.exp(2) + 1))]
    assert float(loss) == pytest.approx(sum(by_hand) / 2, rel=1e-6)


def test_rho_info_nce_averages_every_ordered_pair_of_clips() -> None:
    torch.manual_seed(0)
    q = F.normalize(torch.randn(3, 4, 8), dim=2)
    k = F.normalize(torch.randn(3, 4, 8), dim=2)
    negatives = F.normalize(torch.randn(10, 8), dim=1)
    loss, metrics = rho_info_nce(q, k, negatives, 0.1)
    pairs = [info_nce(q[i], k[j], negatives, 0.1)[0] for i in range(3) for j in range(3) if i != j]
    assert float(loss) == pytest.approx(float(torch.stack(pairs).mean()), rel=1e-6)
    assert 0.0 <= float(metrics["pretrain/instance_acc"]) <= 1.0


def test_nt_xent_is_simclr_for_two_clips() -> None:
    torch.manual_seed(1)
    z = F.normalize(torch.randn(2, 5, 6), dim=2)  # (rho, B, D)
    loss, _ = nt_xent(z, 0.2)
    # SimCLR's formulation: 2B anchors [view 1; view 2], the positive of anchor a is a +- B.
    x = torch.cat([z[0], z[1]])
    sim = x @ x.T / 0.2
    total = 0.0
    for a in range(10):
        pos = (a + 5) % 10
        denom = sum(math.exp(float(sim[a, j])) for j in range(10) if j != a)
        total += -math.log(math.exp(float(sim[a, pos])) / denom)
    assert float(loss) == pytest.approx(total / 10, rel=1e-5)


def test_queue_is_a_fifo_of_fixed_size() -> None:
    queue = KeyQueue(5, 2, generator=torch.Generator().manual_seed(0))
    assert queue.keys.shape == (5, 2) and int(queue.filled) == 0
    assert torch.allclose(queue.keys.norm(dim=1), torch.ones(5))  # random unit vectors before any key
    keys = torch.arange(14, dtype=torch.float32).view(7, 2)
    queue.enqueue(keys[:3])
    assert torch.equal(queue.keys[:3], keys[:3]) and int(queue.ptr) == 3 and int(queue.filled) == 3
    queue.enqueue(keys[3:6])  # wraps: entries 3, 4 then 0 (the oldest is overwritten)
    assert torch.equal(queue.keys, torch.stack([keys[5], keys[1], keys[2], keys[3], keys[4]]))
    assert int(queue.ptr) == 1 and int(queue.filled) == 5
    queue.enqueue(torch.arange(100, 114, dtype=torch.float32).view(7, 2))  # more than the size: the newest 5
    assert sorted(queue.keys[:, 0].tolist()) == [104, 106, 108, 110, 112]
    negatives = queue.negatives()
    queue.enqueue(keys[:1])
    assert not torch.equal(negatives, queue.keys)  # a copy: the loss's saved tensor is never changed in place
    restored = KeyQueue(5, 2)
    restored.load_state_dict(queue.state_dict())
    assert torch.equal(restored.keys, queue.keys) and int(restored.ptr) == int(queue.ptr)


def _gather_worker(rank: int, world: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        queue = KeyQueue(6, 2, generator=torch.Generator().manual_seed(0))
        queue.enqueue_gathered(torch.full((2, 2), float(rank)))
        torch.save({"keys": queue.keys, "ptr": int(queue.ptr)}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_keys_are_all_gathered_so_every_worker_holds_the_same_queue(tmp_path: Path) -> None:
    # One process, a real gloo process group of size 1: the all_gather path itself.
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg1", rank=0, world_size=1)
    try:
        keys = torch.randn(3, 4)
        assert torch.equal(gather_keys(keys), keys)
        queue = KeyQueue(8, 4)
        assert torch.equal(queue.enqueue_gathered(keys), keys) and torch.equal(queue.keys[:3], keys)
    finally:
        dist.destroy_process_group()
    # Two processes: each enqueues its own keys, both end with rank 0's then rank 1's.
    torch.multiprocessing.spawn(_gather_worker, args=(2, f"file://{tmp_path}/pg2", str(tmp_path)), nprocs=2)
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert torch.equal(a["keys"], b["keys"]) and a["ptr"] == b["ptr"] == 4
    assert a["keys"][:4, 0].tolist() == [0.0, 0.0, 1.0, 1.0]


def test_momentum_anneals_from_its_base_to_one_along_a_half_cosine() -> None:
    assert momentum_at(0, 100, 0.994, anneal=True) == pytest.approx(0.994)
    assert momentum_at(50, 100, 0.994, anneal=True) == pytest.approx(1 - 0.006 / 2)
    assert momentum_at(25, 100, 0.994, anneal=True) == pytest.approx(1 - 0.006 * (math.cos(math.pi / 4) + 1) / 2)
    assert momentum_at(100, 100, 0.994, anneal=True) == pytest.approx(1.0)
    values = [momentum_at(s, 100, 0.99, anneal=True) for s in range(101)]
    assert values == sorted(values)
    assert momentum_at(70, 100, 0.99, anneal=False) == 0.99
    online, target = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    expected = 0.9 * target.weight.detach() + 0.1 * online.weight.detach()
    momentum_update(online, target, 0.9)
    assert torch.allclose(target.weight, expected)


# --- monitors -----------------------------------------------------------------------------------------------


def test_weighted_knn_matches_a_hand_example() -> None:
    bank = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1])
    query = torch.tensor([[0.6, 0.8]])  # similarities 0.6, 0.96, 0.8, -0.6
    votes = knn_scores(bank, labels, query, 2, k=2, temperature=0.1)
    assert torch.allclose(votes, torch.tensor([[math.exp(9.6), math.exp(8.0)]]), rtol=1e-5)
    votes = knn_scores(bank, labels, query, 2, k=3, temperature=0.1)
    assert torch.allclose(votes, torch.tensor([[math.exp(9.6) + math.exp(6.0), math.exp(8.0)]]), rtol=1e-5)
    # A high temperature flattens the weights: k = 4 is then a near-majority vote (2 : 2, class 0 slightly ahead).
    votes = knn_scores(bank, labels, query, 2, k=10, temperature=100.0)  # k capped at the bank's 4
    assert votes[0, 0] > votes[0, 1] and float(votes.sum()) == pytest.approx(4.0, rel=0.02)
    queries = torch.tensor([[0.6, 0.8], [-0.8, 0.6]])
    acc = knn_accuracy(bank, labels, queries, torch.tensor([0, 0]), 2, k=2, temperature=0.1)
    assert acc["knn/top1"] == 0.5 and acc["knn/top5"] == 1.0


def test_linear_probe_separates_separable_features() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(3) * 4
    train = centres.repeat_interleave(10, dim=0) + 0.3 * torch.randn(30, 3, generator=g)
    test = centres.repeat_interleave(5, dim=0) + 0.3 * torch.randn(15, 3, generator=g)
    result = linear_probe(train, torch.arange(3).repeat_interleave(10), test, torch.arange(3).repeat_interleave(5), 3,
                          steps=50)
    assert result["probe/top1"] == 1.0


# --- data and augmentation --------------------------------------------------------------------------------


def test_every_clip_gets_its_own_appearance_draw_shared_by_its_frames() -> None:
    torch.manual_seed(0)
    frame = torch.randint(0, 256, (1, 1, 1, 72, 72, 3), dtype=torch.uint8)
    clips = frame.expand(2, 3, 8, 72, 72, 3).contiguous()  # 2 videos x 3 clips, all the same still image
    views = pretrain_views(clips, AugmentConfig(crop_size=32, hflip=False), PretrainConfig())
    assert views.shape == (2, 3, 3, 8, 32, 32)
    assert torch.equal(views[..., :1, :, :].expand_as(views), views)  # frames of a clip: one draw
    flat = views.flatten(0, 1)
    assert all(not torch.allclose(flat[i], flat[j]) for i in range(6) for j in range(i))  # clips: their own
    gray = VideoGrayscale(1.0)(torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8))
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2]) and gray.dtype == torch.uint8


def _moving_square_clips(videos: int) -> torch.Tensor:
    """(videos, 1, 6, 48, 48, 3) uint8: each video its own flat background colour and a white square moving
    right by 2 pixels a frame in rows 10..17."""
    clips = torch.zeros(videos, 1, 6, 48, 48, 3, dtype=torch.uint8)
    for v in range(videos):
        clips[v] = 20 * (v + 1)
        for t in range(6):
            clips[v, 0, t, 10:18, 10 + 2 * t:18 + 2 * t] = 255
    return clips


def test_background_swap_keeps_the_moving_foreground_on_another_videos_still_frame() -> None:
    clips = _moving_square_clips(3)
    mask = foreground_masks(clips.flatten(0, 1), 0.1)
    assert mask.shape == (3, 1, 48, 48, 1) and mask.sum(dim=(1, 2, 3, 4)).min() >= 0.1 * 48 * 48
    assert mask[:, 0, 14, 18, 0].eq(1).all() and mask[:, 0, 40, 40, 0].eq(0).all()  # the path, not a far corner
    swapped = swap_backgrounds(clips, 1.0, 0.1, torch.Generator().manual_seed(0))
    assert swapped.shape == clips.shape and swapped.dtype == torch.uint8
    for v in range(3):
        corner = int(swapped[v, 0, 3, 40, 40, 0])
        assert corner != 20 * (v + 1) and corner in {20, 40, 60}  # another video's background
        assert torch.equal(swapped[v, 0, 3, 10:18, 16:24], clips[v, 0, 3, 10:18, 16:24])  # the square stays
    assert torch.equal(swap_backgrounds(clips, 0.0, 0.1), clips)
    assert torch.equal(swap_backgrounds(clips[:1], 1.0, 0.1), clips[:1])  # one video: no other background


def test_view_background_swap_does_the_same_on_augmented_float_views() -> None:
    """comatch's strong views: (B, 3, T, h, w) floats, the same foreground kept, another clip's first frame behind."""
    clips = _moving_square_clips(3)
    views = clips[:, 0].permute(0, 4, 1, 2, 3).float() / 255  # (3, 3, 6, 48, 48)
    swapped = swap_view_backgrounds(views, 1.0, 0.1, torch.Generator().manual_seed(0))
    assert swapped.shape == views.shape and swapped.dtype == views.dtype
    for v in range(3):
        corner = round(float(swapped[v, 0, 3, 40, 40]) * 255)
        assert corner != 20 * (v + 1) and corner in {20, 40, 60}
        assert torch.equal(swapped[v, :, 3, 10:18, 16:24], views[v, :, 3, 10:18, 16:24])
    assert torch.equal(swap_view_backgrounds(views, 0.0, 0.1), views)
    assert torch.equal(swap_view_backgrounds(views[:1], 1.0, 0.1), views[:1])


def test_projection_batch_norm_spreads_the_embeddings_of_a_relu_backbone() -> None:
    torch.manual_seed(0)
    feats = torch.rand(16, 64) + 1.0  # positive features with a large shared mean, as after ReLU + max pooling

    def mean_cosine(z: torch.Tensor) -> float:
        z = F.normalize(z.detach(), dim=1)
        return float((z @ z.T).mean())

    assert mean_cosine(projection_mlp(64, 128, 32, 3, batch_norm=False)(feats)) > 0.9
    assert mean_cosine(projection_mlp(64, 128, 32, 3)(feats)) < 0.6


class _FakeReader:
    """decode_clip returns frames numbered start, start + stride, ... (start drawn from rng in [0, 100))."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def decode_clip(self, path: str, *, num_frames: int, stride: int, size: int, rng: np.random.Generator,
                    **kwargs: object) -> np.ndarray:
        start = int(rng.integers(0, 100))
        self.calls.append((start, stride))
        frames = start + stride * np.arange(num_frames)
        return np.broadcast_to(frames[:, None, None, None], (num_frames, size, size, 3)).astype(np.uint8).copy()


@pytest.mark.parametrize("pretext", ["none", "speed", "arrow"])
def test_rho_clips_at_independent_times_with_pretext_labels(pretext: str) -> None:
    reader = _FakeReader()
    clips, labels = decode_views(reader, "v.mp4", 1234, rho=4, num_frames=5, stride=2, size=4, pretext=pretext)
    assert clips.shape == (4, 5, 4, 4, 3) and clips.dtype == np.uint8 and labels.shape == (4,)
    assert len({start for start, _ in reader.calls}) > 1  # independent random starts (seeded per clip)
    again, labels_again = decode_views(_FakeReader(), "v.mp4", 1234, rho=4, num_frames=5, stride=2, size=4,
                                       pretext=pretext)
    assert np.array_equal(clips, again) and np.array_equal(labels, labels_again)  # the row seed decides
    steps = np.diff(clips[:, :, 0, 0, 0].astype(int), axis=1)  # frame-number differences inside each clip
    if pretext == "none":
        assert labels.tolist() == [0, 0, 0, 0] and (steps == 2).all()
    elif pretext == "speed":
        for i in range(4):
            assert (steps[i] == (4 if labels[i] else 2)).all() and reader.calls[i][1] == (4 if labels[i] else 2)
    else:
        for i in range(4):
            assert (steps[i] == (-2 if labels[i] else 2)).all()
    labels_many = [decode_views(_FakeReader(), "v", s, rho=2, num_frames=1, stride=1, size=1, pretext="arrow")[1]
                   for s in range(50)]
    assert 0.3 < float(np.mean(labels_many)) < 0.7


# --- config ---------------------------------------------------------------------------------------------------


def test_config_defaults_sections_and_errors_naming_the_key() -> None:
    setup = load_pretrain_config(CONFIG)
    assert setup.pretrain.objective == "rho_moco" and setup.base.model.primary == "small3d"
    assert setup.queue_size(600) == 300 and setup.queue_size(100_000) == 4096
    assert load_pretrain_config(CONFIG, ["pretrain.queue_size=64"]).queue_size(600) == 64
    params = setup.params()
    assert params["pretrain.rho"] == 3 and "train.lr" in params and not any(k.startswith("algorithm.") for k in params)
    stored = setup.to_dict()
    assert "algorithm" not in stored and stored["pretrain"]["objective"] == "rho_moco"
    for override, key in [("pretrain.rho=1", "pretrain.rho:"), ("pretrain.objective=byol", "pretrain.objective:"),
                          ("pretrain.pretext=jigsaw", "pretrain.pretext:"),
                          ("pretrain.momentum=1.0", "pretrain.momentum:"),
                          ("pretrain.min_scale=0", "pretrain.min_scale:"), ("pretrain.nope=1", "pretrain.nope:"),
                          ("pretrain.temperature=0", "pretrain.temperature:"), ("algorithm.name=cmpl", "algorithm:"),
                          ("pretrain.bn_splits=100", "pretrain.bn_splits:"),
                          ("model.auxiliary_init=x.pt", "model.auxiliary_init:"),
                          ("pretrain.background_swap=2", "pretrain.background_swap:"),
                          ("pretrain.foreground_ratio=0", "pretrain.foreground_ratio:")]:
        with pytest.raises(ConfigError, match=f"^{key}"):
            load_pretrain_config(CONFIG, [override])
    with pytest.raises(ConfigError, match="^train.batch_size:"):
        load_pretrain_config(CONFIG, ["pretrain.objective=simclr", "train.batch_size=1", "pretrain.bn_splits=1"])
    for overrides, key in [(["pretrain.labeled_weight=-1"], "pretrain.labeled_weight:"),
                           (["pretrain.labeled_batch=0"], "pretrain.labeled_batch:"),
                           (["pretrain.objective_weight=-1"], "pretrain.objective_weight:"),
                           (["pretrain.objective_weight=0"], "pretrain.objective_weight: 0 leaves nothing")]:
        with pytest.raises(ConfigError, match=f"^{key}"):
            load_pretrain_config(CONFIG, overrides)
    with pytest.raises(ConfigError, match="^pretrain.labeled_weight: .*rho_moco or simclr"):
        load_pretrain_config(CONFIG.with_name("pretrain_videomae_demo.yaml"), ["pretrain.labeled_weight=1"])


def test_residual_clips_reach_the_backbone_as_frame_differences() -> None:
    from ssl_core.models.registry import temporal_gradient

    torch.set_num_threads(1)
    setup = load_pretrain_config(CONFIG, ["model.primary=small3d_w0.25", "pretrain.rho=3", "pretrain.residual_clips=2",
                                          "pretrain.bn_splits=1", "pretrain.hidden_dim=16", "pretrain.proj_dim=8"])
    net, _ = build_net(setup, ["a", "b"])
    trainer = Pretrainer(net, setup.pretrain, iterations=4, queue_size=6, seed=0)
    seen: list[torch.Tensor] = []
    net.encoder.backbone.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    views = torch.randn(2, 3, 3, 4, 16, 16)  # 2 videos x rho 3 clips
    loss, _ = trainer.loss(views, None, step=0)
    assert torch.isfinite(loss)
    shown = seen[0].view(3, 2, 3, 4, 16, 16)  # clip-major: every video's clip 0, then clip 1, then clip 2
    assert torch.equal(shown[0], views[:, 0])  # the backbone's own view stays RGB
    for i in (1, 2):
        assert torch.allclose(shown[i], temporal_gradient(views[:, i]))
    with pytest.raises(ConfigError, match="^pretrain.residual_clips:"):
        load_pretrain_config(CONFIG, ["pretrain.rho=2", "pretrain.residual_clips=2"])  # one clip must stay RGB


def test_rho_moco_learns_to_tell_videos_apart() -> None:
    """The objective end to end (encoder, momentum keys, queue, loss, optimizer): 32 distinct random videos, two
    noisy copies of each as its clips; the positive must come to outscore the queue. A broken gradient path, queue
    or key encoder leaves the instance accuracy at its start (~0.4)."""
    from ssl_core.schedule import build_scheduler
    from ssl_core.train_step import build_optimizer

    torch.set_num_threads(1)
    torch.manual_seed(0)
    setup = load_pretrain_config(CONFIG, ["model.primary=small3d_w0.5", "pretrain.hidden_dim=64",
                                          "pretrain.proj_dim=32"])
    net, _ = build_net(setup, ["a", "b"])
    optimizer = build_optimizer(setup.base, {"net": net})
    scheduler = build_scheduler(optimizer, warmup=5, total=80)
    trainer = Pretrainer(net, setup.pretrain, iterations=80, queue_size=16, seed=0)
    videos = torch.randn(32, 3, 4, 24, 24)
    accuracy = []
    for _ in range(80):
        batch = videos[torch.randperm(32)[:8]]
        views = torch.stack([batch + 0.5 * torch.randn_like(batch) for _ in range(2)], dim=1)
        metrics = pretrain_optimize(trainer, optimizer, scheduler, views, None, grad_clip=5.0)
        accuracy.append(float(metrics["pretrain/instance_acc"]))
    assert sum(accuracy[-10:]) / 10 >= 0.7 > sum(accuracy[:10]) / 10


# --- network, step, checkpoint -> model.init -----------------------------------------------------------------


@pytest.mark.parametrize(("objective", "pretext"), [("rho_moco", "arrow"), ("simclr", "speed")])
def test_checkpoint_resumes_exactly_and_model_init_reads_the_backbone(tmp_path: Path, objective: str,
                                                                      pretext: str) -> None:
    torch.set_num_threads(1)
    setup = load_pretrain_config(CONFIG, ["model.primary=small3d_w0.25", f"pretrain.objective={objective}",
                                          f"pretrain.pretext={pretext}", "train.batch_size=4",
                                          "augment.crop_size=32", "pretrain.hidden_dim=32", "pretrain.proj_dim=16"])
    classes = ["a", "b", "c"]
    trainer, optimizer, scheduler = fresh_pretrainer(setup, classes, queue_size=12)
    batch = [torch.randn(4, 2, 3, 8, 32, 32) for _ in range(3)]
    labels = torch.randint(0, 2, (4, 2))
    for views in batch[:2]:
        metrics = pretrain_optimize(trainer, optimizer, scheduler, views, labels, grad_clip=5.0)
    assert {"loss/total", "loss/contrastive", "loss/pretext", "pretext/accuracy", "pretrain/instance_acc",
            "grad_norm"} <= set(metrics)
    # Left on the device as 0-d tensors: the step never waits for a number (ssl_core.metrics.WindowMeans).
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 for v in metrics.values())
    assert all(math.isfinite(float(v)) for v in metrics.values())
    ckpt = save_pretrain_checkpoint(tmp_path / "run" / "checkpoint_000002", setup=setup, trainer=trainer,
                                    optimizer=optimizer, scheduler=scheduler, step=2, classes=classes).parent

    state = load_training_state(ckpt)
    assert state["meta"]["stage"] == "pretrain" and state["meta"]["untrained_head"] == "fc"
    if objective == "rho_moco":
        assert int(state["algorithm"]["queue"]["filled"]) == 8  # 2 steps x 4 videos, one key each
    # The saved model is the full classifier: model_from_state (evaluate, predict) builds it as is.
    classifier = model_from_state(state, "primary", ckpt)
    assert classifier(torch.randn(1, 3, 8, 32, 32)).shape == (1, 3)

    # Resume: a fresh trainer restored from the checkpoint takes the same next step as the original.
    resumed = fresh_pretrainer(setup, classes, queue_size=12)
    assert_resume_takes_the_same_step(state, (trainer, optimizer, scheduler), resumed, batch[2], labels)
    if objective == "rho_moco":
        assert torch.equal(resumed[0].queue.keys, trainer.queue.keys)

    # model.init from the run folder: every backbone key, the classifier left at the run's fresh init.
    src = read_init_source(str(tmp_path / "run"))
    assert latest_checkpoint_dir(tmp_path / "run") == ckpt
    target = build_model("small3d_w0.25", num_classes=3)
    fresh_head = target.fc.weight.detach().clone()
    report = load_init(target, src.state_dict, name="primary", source=src.description, source_classes=src.classes,
                       classes=classes)
    assert len(report.matched) == report.total - 2 and report.reinitialised == ["fc.weight", "fc.bias"]
    assert report.unexpected == [] and "self-supervised backbone" in report.line()
    assert torch.equal(target.fc.weight, fresh_head)
    saved = state["models"]["primary"]  # the backbone at step 2 (the trainer has taken a step since)
    assert all(torch.equal(target.state_dict()[k], saved[k]) for k in saved if not k.startswith("fc."))


# --- semi-supervised pretraining (pretrain.labeled_weight) ---------------------------------------------------


def test_labeled_term_is_the_cosine_classifiers_cross_entropy_on_the_rgb_clips() -> None:
    """loss = objective + labeled_weight x CE of the cosine classifier over the labeled videos' RGB clips (the
    residual clip left out); the classifier and the backbone learn from it."""
    torch.set_num_threads(1)
    overrides = ["model.primary=small3d_w0.25", "pretrain.labeled_weight=0.5", "pretrain.rho=3",
                 "pretrain.residual_clips=1", "pretrain.hidden_dim=32", "pretrain.proj_dim=16", "augment.crop_size=32"]
    setup = load_pretrain_config(CONFIG, overrides)
    trainer, _, _ = fresh_pretrainer(setup, ["a", "b", "c"], queue_size=12)
    views, labeled = torch.randn(4, 3, 3, 8, 32, 32), torch.randn(2, 3, 3, 8, 32, 32)
    labels = torch.tensor([2, 0])
    loss, metrics = trainer.loss(views, None, 0, (labeled, labels))
    total, parts = float(loss.detach()), float(metrics["loss/contrastive"]) + 0.5 * float(metrics["loss/labeled"])
    assert total == pytest.approx(parts)
    # The baseline without the unlabeled videos: the same step with the objective's weight at 0.
    alone = Pretrainer(trainer.net, load_pretrain_config(CONFIG, [*overrides, "pretrain.objective_weight=0"]).pretrain,
                       iterations=10, queue_size=12)
    loss, metrics = alone.loss(views, None, 0, (labeled, labels))
    assert float(loss.detach()) == pytest.approx(0.5 * float(metrics["loss/labeled"]))
    core = trainer.core
    core.eval()  # the same batch statistics as the loss's pass need train mode: compare in eval on both sides
    expected = F.cross_entropy(core.classify(labeled[:, :2].flatten(0, 1)), torch.tensor([2, 2, 0, 0]))
    assert float(trainer.label_loss(labeled, labels)[0]) == pytest.approx(float(expected), rel=1e-5)
    core.train()
    trainer.net.zero_grad()
    trainer.label_loss(labeled, labels)[0].backward()
    assert core.label_head.weight.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in core.encoder.projector.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in core.backbone.parameters())


def test_model_init_from_a_pretraining_continues_its_objective(tmp_path: Path) -> None:
    """Started from another pretraining of the same objective, a run takes its projector, momentum encoder and
    queue (not the queue when its size differs); from a training checkpoint or another objective, nothing."""
    torch.set_num_threads(1)
    base = ["model.primary=small3d_w0.25", "train.batch_size=4", "augment.crop_size=32", "pretrain.hidden_dim=32",
            "pretrain.proj_dim=16"]
    setup = load_pretrain_config(CONFIG, base)
    classes = ["a", "b", "c"]
    trainer, optimizer, scheduler = fresh_pretrainer(setup, classes, queue_size=12)
    for _ in range(2):
        pretrain_optimize(trainer, optimizer, scheduler, torch.randn(4, 3, 3, 8, 32, 32), None, grad_clip=5.0)
    save_pretrain_checkpoint(tmp_path / "run" / "checkpoint_000002", setup=setup, trainer=trainer,
                             optimizer=optimizer, scheduler=scheduler, step=2, classes=classes)
    semi = load_pretrain_config(CONFIG, [*base, f"model.init={tmp_path / 'run'}", "pretrain.labeled_weight=1"])
    state = init_objective_state(semi)
    assert state is not None and state["objective"] == "rho_moco"
    follower, _, _ = fresh_pretrainer(semi, classes, queue_size=12)
    assert follower.continue_objective(state) == ["projector", "momentum encoder", "queue"]
    for a, b in ((trainer.core.encoder.projector, follower.core.encoder.projector),
                 (trainer.key_encoder, follower.key_encoder), (trainer.queue, follower.queue)):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    other_queue, _, _ = fresh_pretrainer(semi, classes, queue_size=20)
    assert other_queue.continue_objective(state) == ["projector", "momentum encoder"]
    # A wider projector or another objective: nothing continues (the run starts its own, as without model.init).
    wider = load_pretrain_config(CONFIG, [*base, "pretrain.proj_dim=24"])
    assert fresh_pretrainer(wider, classes, queue_size=12)[0].continue_objective(state) == []
    simclr = load_pretrain_config(CONFIG, [*base, "pretrain.objective=simclr"])
    assert fresh_pretrainer(simclr, classes, queue_size=12)[0].continue_objective(state) == []
    # The semi-supervised run's own checkpoint, on another class set: all but its classifier of other classes.
    semi_trainer = follower
    semi_trainer.core.label_head.weight.data.fill_(0.5)
    save_pretrain_checkpoint(tmp_path / "semi" / "checkpoint_000001", setup=semi, trainer=semi_trainer,
                             optimizer=optimizer, scheduler=scheduler, step=1, classes=classes)
    semi_state = init_objective_state(load_pretrain_config(CONFIG, [*base, f"model.init={tmp_path / 'semi'}"]))
    again, _, _ = fresh_pretrainer(semi, classes, queue_size=12)
    assert again.continue_objective(semi_state) == ["projector", "momentum encoder", "queue"]
    assert torch.all(again.core.label_head.weight == 0.5)
    four, _, _ = fresh_pretrainer(semi, [*classes, "d"], queue_size=12)
    assert four.continue_objective(semi_state) == ["projector", "momentum encoder", "queue"]
    assert not torch.all(four.core.label_head.weight == 0.5)
    assert init_objective_state(load_pretrain_config(CONFIG, base)) is None  # no model.init


# The shipped recipes: motion-defined classes (small3d, residual clips) and appearance-defined ones (frame2d,
# background swap, any hue), each at a tiny size.
RECIPES = [(CONFIG, "small3d_w0.25"), (CONFIG.with_name("pretrain_appearance.yaml"), "frame2d_w0.25")]


@pytest.mark.parametrize(("config", "model"), RECIPES, ids=["pretrain_demo", "pretrain_appearance"])
def test_ray_free_run_writes_a_backbone_checkpoint(synth_dataset: Path, tmp_path: Path, config: Path, model: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from ssl_core.pretrain.local import run_local_pretrain

    torch.set_num_threads(1)
    setup = load_pretrain_config(config, [
        f"data.root={synth_dataset}", "data.synthetic.enabled=false", "data.labeled_fraction=0.5",
        "data.num_frames=4", "data.size=40", "data.eval_clips=1", "augment.crop_size=32", "data.cache=off",
        f"model.primary={model}", "train.iterations=3", "train.batch_size=4", "train.log_every=1",
        "train.warmup_iters=1", "train.checkpoint_every=2", "pretrain.knn_every=2", "pretrain.hidden_dim=32",
        "pretrain.proj_dim=16", "pretrain.probe_steps=5", f"output.storage={tmp_path}",
    ])
    result = run_local_pretrain(setup, decode_threads=2, run_dir=tmp_path / "run")
    out = capsys.readouterr().out
    assert "step 3/3:" in out and "k-NN top-1" in out
    assert [s for s, _ in result["knn_history"]] == [0, 2, 3]  # step 0: the features before pretraining
    assert 0.0 <= result["knn/top1"] <= 1.0 and 0.0 <= result["probe/top1"] <= 1.0 and result["it_per_s"] > 0
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint_*")) == ["checkpoint_000002", "checkpoint_000003"]
    assert (tmp_path / "run" / "labeled_split.csv").exists()
    assert read_init_source(str(tmp_path / "run")).description.startswith(f"{tmp_path / 'run'} (step 3)")
    assert os.path.exists(latest_checkpoint_dir(tmp_path / "run") / "state.pt")


def test_the_appearance_path_pretrain_then_the_labels_stage_then_the_head_fits(
    synth_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """README's appearance path by hand, tiny and Ray-free (what workflows.self_train's round 0 runs through Ray):
    configs/pretrain_appearance.yaml, then the stage of configs/selftrain_appearance.yaml from it (the labeled term
    reported), then configs/finetune_appearance.yaml on the stage's labeled split: the backbone stays as it was, the
    head learns; each runner's next command names the next config."""
    from ssl_core.data.splits import SPLIT_FILE, prepare_data
    from ssl_core.engine import Report
    from ssl_core.loop import run_local
    from ssl_core.pretrain.local import run_local_pretrain

    monkeypatch.chdir(CONFIG.parents[1])  # the next commands name configs/... from the repository root
    torch.set_num_threads(1)
    tiny = [f"data.root={synth_dataset}", "data.synthetic.enabled=false", "data.labeled_fraction=0.5",
            "data.num_frames=4", "data.size=40", "data.eval_clips=1", "augment.crop_size=32", "data.cache=off",
            "model.primary=frame2d_w0.25", "train.batch_size=4", "train.log_every=1", "train.warmup_iters=1"]
    stage = [*tiny, "train.iterations=2", "train.checkpoint_every=2", "pretrain.knn_every=0", "pretrain.hidden_dim=32",
             "pretrain.proj_dim=16", "pretrain.probe_steps=0", f"output.storage={tmp_path}"]
    setup = load_pretrain_config(CONFIG.with_name("pretrain_appearance.yaml"), stage)
    run_local_pretrain(setup, decode_threads=2, run_dir=tmp_path / "pretrain")
    assert next_command(setup, tmp_path / "pretrain") == (
        ".venv/bin/python -m workflows.self_train --config configs/selftrain_appearance.yaml "
        f"--set model.init={tmp_path / 'pretrain'}")

    semi = load_pretrain_config(CONFIG.with_name("selftrain_appearance.yaml"), [
        *stage, f"model.init={tmp_path / 'pretrain'}", "pretrain.labeled_batch=2"])
    assert semi.pretrain.labeled_weight > 0
    reports: list[Report] = []
    run_local_pretrain(semi, decode_threads=2, run_dir=tmp_path / "semi", on_report=reports.append)
    assert "objective continued from model.init: projector, momentum encoder, queue" in capsys.readouterr().out
    assert reports and all(0 <= r.window["labeled/accuracy"] <= 1 and r.window["loss/labeled"] > 0 for r in reports)
    backbone = load_checkpoint_model(tmp_path / "semi")
    split = tmp_path / "semi" / SPLIT_FILE
    assert next_command(semi, tmp_path / "semi") == (
        ".venv/bin/python -m workflows.train --config configs/finetune_appearance.yaml --set model.primary="
        f"frame2d_w0.25 --set model.init={tmp_path / 'semi'} --set data.labeled_split_file={split}")
    assert "--config configs/demo.yaml " in next_command(load_pretrain_config(CONFIG), "run")

    # The split file wins over a fraction: the fine-tuning learns from the semi-supervised run's labeled videos.
    cfg = load_config(CONFIG.with_name("finetune_appearance.yaml"), [
        *tiny, "train.iterations=3", "train.ema_start=0", "train.eval_every=3", "train.checkpoint_every=3",
        f"model.init={tmp_path / 'semi'}", f"data.labeled_split_file={split}", "data.labeled_fraction=0.25",
        f"output.storage={tmp_path}"])
    assert (cfg.algorithm.name, cfg.train.freeze_backbone_steps) == ("supervised", 600)
    labeled = {r.path for r in prepare_data(cfg, tmp_path / "finetune").labeled}
    assert labeled == {r.path for r in prepare_data(semi.base, None).labeled}
    run_local(cfg, decode_threads=2, evaluate=False, run_dir=tmp_path / "finetune")
    tuned = load_checkpoint_model(tmp_path / "finetune")
    before, after = backbone.state_dict(), tuned.state_dict()
    head = {"fc.weight", "fc.bias"}  # frame2d's classifier
    assert head < set(after) and set(before) == set(after)
    # The checkpoint holds the EMA weights (train.ema_decay): an average of an unchanged tensor, up to rounding.
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in after if k not in head)  # BN statistics too
    assert all(not torch.allclose(before[k], after[k], atol=1e-4) for k in head)
