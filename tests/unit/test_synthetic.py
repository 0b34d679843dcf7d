"""Synthetic dataset: files and manifest, determinism, and that each class shows what its name says."""

from __future__ import annotations

import csv
from pathlib import Path

import av
import numpy as np
import pytest

from ssl_core.data.synthetic import CLASS_NAMES, generate, render_video

SIZE = 80


def _decoded(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]).astype(np.float32)


def _same_video(a: Path, b: Path) -> bool:
    """The same content: libx264 (one thread) now and then encodes the same frames with other decisions on a
    loaded machine (measured: mean difference 1.3 grey levels, another video of the class 25.8), so bytes may
    differ; the rendered frames do not (test_workers_render_the_same_frames)."""
    return float(np.abs(_decoded(a) - _decoded(b)).mean()) < 4.0


def _render(key: tuple[int, int, int]) -> np.ndarray:
    return render_video(CLASS_NAMES[key[1]], np.random.default_rng(list(key)), frames=8, size=32)


def test_layout_manifest_and_classes(synth_dataset: Path) -> None:
    names = list(CLASS_NAMES[:4])
    assert (synth_dataset / "classes.txt").read_text().splitlines() == names
    with (synth_dataset / "manifest.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "label", "split"]
    assert sorted(r["path"] for r in rows) == sorted(f"{c}/{c}_{k:03d}.mp4" for c in names for k in range(4))
    for c in names:
        splits = sorted(r["split"] for r in rows if r["label"] == c)
        assert splits == ["test", "train", "train", "train"]  # round(0.25 * 4) = 1 test video per class
    with av.open(str(synth_dataset / rows[0]["path"])) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert len(frames) == 16 and frames[0].shape == (64, 64, 3)


def test_same_seed_same_frames_other_seed_other_frames(tmp_path: Path) -> None:
    kwargs = {"classes": 2, "videos_per_class": 2, "frames": 8, "size": 32}
    a, b, c = (generate(tmp_path / name, seed=s, **kwargs).parent for name, s in (("a", 3), ("b", 3), ("c", 4)))
    assert (a / "manifest.csv").read_text() == (b / "manifest.csv").read_text()
    rel = "move_right/move_right_001.mp4"
    assert _same_video(a / rel, b / rel)
    assert not _same_video(a / rel, c / rel)


def test_worker_processes_write_the_same_videos(tmp_path: Path) -> None:
    kwargs = {"classes": 2, "videos_per_class": 2, "frames": 8, "size": 32, "seed": 1}
    one, two = (generate(tmp_path / name, workers=w, **kwargs).parent for name, w in (("one", 1), ("two", 2)))
    assert (one / "manifest.csv").read_text() == (two / "manifest.csv").read_text()
    for rel in ("move_left/move_left_000.mp4", "move_right/move_right_001.mp4"):
        assert _same_video(one / rel, two / rel)


def test_workers_render_the_same_frames() -> None:
    """What a video depends on: (seed, class position, index) only, not the process that renders it."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    keys = [(1, 0, 0), (1, 1, 1), (2, 1, 0)]
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        spawned = list(pool.map(_render, keys))
    assert all(np.array_equal(s, _render(k)) for s, k in zip(spawned, keys, strict=True))


@pytest.mark.parametrize("kwargs", [{"classes": 1}, {"classes": len(CLASS_NAMES) + 1}, {"size": 63}])
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        generate(tmp_path, **kwargs)


def test_class_list_alternates_motion_and_appearance_pairs() -> None:
    assert len(CLASS_NAMES) >= 12 and len(set(CLASS_NAMES)) == len(CLASS_NAMES)
    motion = ("move_", "rotate_", "speed_")
    kinds = [name.startswith(motion) for name in CLASS_NAMES]
    assert kinds[:4] == [True, True, False, False]  # 4 classes already hold both kinds
    assert all(kinds[i] == kinds[i + 1] for i in range(0, len(kinds) - 1, 2))  # pairs of one kind


def _actor_masks(video: np.ndarray) -> np.ndarray:  # (T, H, W) bool
    # The actor is painted in saturated colours and the scenery in greyish ones: chroma separates them.
    v = video.astype(int)
    return (v.max(axis=-1) - v.min(axis=-1)) > 110


def _centroids(masks: np.ndarray) -> np.ndarray:  # (T, 2) x, y
    return np.array([[xs.mean(), ys.mean()] for ys, xs in (np.nonzero(m) for m in masks)])


@pytest.mark.parametrize(
    ("name", "direction"),
    [("move_left", (-1, 0)), ("move_right", (1, 0)), ("move_up", (0, -1)), ("move_down", (0, 1))],
)
def test_move_classes_travel_in_their_direction(name: str, direction: tuple[int, int]) -> None:
    for seed in range(3):
        c = _centroids(_actor_masks(render_video(name, np.random.default_rng(seed), frames=24, size=SIZE)))
        along = (c[-1] - c[0]) @ np.array(direction)
        across = abs((c[-1] - c[0]) @ np.array(direction[::-1]))
        assert along > 0.3 * SIZE, (name, seed, c[0], c[-1])
        assert across < 0.1 * SIZE


@pytest.mark.parametrize("name", ["shape_square", "shape_disc", "texture_striped", "rotate_cw"])
def test_appearance_and_rotation_classes_stay_in_place(name: str) -> None:
    for seed in range(3):
        c = _centroids(_actor_masks(render_video(name, np.random.default_rng(seed), frames=24, size=SIZE)))
        assert np.abs(c - c.mean(axis=0)).max() < 0.08 * SIZE


def _best_rotation(a: np.ndarray, b: np.ndarray) -> float:
    """Angle (degrees; > 0 = clockwise on screen, where y points down) that best turns mask a into mask b."""
    ys, xs = np.nonzero(a)
    cx, cy = xs.mean(), ys.mean()
    scores = {}
    for deg in range(-30, 31):
        t = np.deg2rad(deg)
        x = np.round(cx + np.cos(t) * (xs - cx) - np.sin(t) * (ys - cy)).astype(int)
        y = np.round(cy + np.sin(t) * (xs - cx) + np.cos(t) * (ys - cy)).astype(int)
        ok = (x >= 0) & (x < b.shape[1]) & (y >= 0) & (y < b.shape[0])
        scores[deg] = b[y[ok], x[ok]].mean()
    return float(max(scores, key=scores.__getitem__))


@pytest.mark.parametrize(("name", "sign"), [("rotate_cw", 1), ("rotate_ccw", -1)])
def test_rotation_direction(name: str, sign: int) -> None:
    for seed in range(3):
        masks = _actor_masks(render_video(name, np.random.default_rng(seed), frames=8, size=SIZE))
        angles = [_best_rotation(masks[t], masks[t + 2]) for t in range(0, 6, 2)]
        assert all(sign * a >= 8 for a in angles), (name, seed, angles)  # 6-11 degrees per frame, 2 frames


@pytest.mark.parametrize(("name", "ratio"), [("shape_disc", np.pi), ("shape_square", 2.0), ("shape_triangle", 1.3)])
def test_shape_classes_draw_their_shape(name: str, ratio: float) -> None:
    # area / (largest distance from the centroid)^2: disc pi, square 2, equilateral triangle 3*sqrt(3)/4.
    for seed in range(3):
        mask = _actor_masks(render_video(name, np.random.default_rng(seed), frames=1, size=SIZE))[0]
        ys, xs = np.nonzero(mask)
        radius = np.hypot(xs - xs.mean(), ys - ys.mean()).max() + 0.5
        assert mask.sum() / radius**2 == pytest.approx(ratio, rel=0.15), (name, seed)
