"""Procedural action videos written as real H.264 mp4 files: a learnable, non-trivial benchmark.

Each video shows one actor (a vivid, saturated shape) moving on muted, cluttered scenery (greyish colour
gradient, low-frequency texture, static soft blobs, per-frame pixel noise), with colours, start position,
size and speed drawn at random per video. Classes come in pairs of two kinds:

- motion-only pairs (same object shapes, colours and background distribution; only the motion differs):
  move_left / move_right, rotate_cw / rotate_ccw, move_up / move_down, speed_constant / speed_oscillating;
- appearance-only pairs (same "wander" motion: small smooth jitter around a fixed place; only the object
  differs): shape_square / shape_disc, texture_striped / texture_checkered, shape_triangle / shape_cross.

`classes=N` takes the first N names of CLASS_NAMES, whose pairs alternate between the two kinds, so a small
N already mixes both. Output (folder-per-class, plus a manifest for the "csv" layout):

    out_dir/<class>/<class>_<k:03d>.mp4, out_dir/manifest.csv (path,label,split), out_dir/classes.txt

Try it:
    vidssl synth --out data/synth --classes 8 --videos-per-class 30 --seed 0
    python -c "from pathlib import Path; from ssl_core.data.synthetic import generate; \
print(generate(Path('/tmp/synth'), classes=4, videos_per_class=4))"
"""

from __future__ import annotations

import csv
import multiprocessing
import os
import zlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

# Below this many videos per extra process, a spawned worker's start-up (numpy + PyAV imports) is not worth it.
VIDEOS_PER_WORKER = 64

# Ordered so that each pair of motion-only classes is followed by a pair of appearance-only classes.
CLASS_NAMES: tuple[str, ...] = (
    "move_left",
    "move_right",
    "shape_square",
    "shape_disc",
    "rotate_cw",
    "rotate_ccw",
    "texture_striped",
    "texture_checkered",
    "move_up",
    "move_down",
    "shape_triangle",
    "shape_cross",
    "speed_constant",
    "speed_oscillating",
)
MOTION_CLASSES = {
    "move_left",
    "move_right",
    "move_up",
    "move_down",
    "rotate_cw",
    "rotate_ccw",
    "speed_constant",
    "speed_oscillating",
}
# Motion classes draw their object from this pool: shapes whose rotation is visible (not a disc).
_MOTION_SHAPES = ("square", "triangle")
_TEXTURE_SHAPES = ("square", "disc", "triangle")


@dataclass(frozen=True)
class _Trajectory:
    x: np.ndarray  # (T,) float object centre, pixels
    y: np.ndarray  # (T,) float
    angle: np.ndarray  # (T,) float radians, counter-clockwise on screen


def _shape_distance(shape: str, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Signed distance (pixels, < 0 inside) to a shape of circumradius-ish `r` in object coordinates."""
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) - r * 0.8
    if shape == "disc":
        return np.hypot(u, v) - r * 0.85
    if shape == "triangle":
        # Equilateral triangle: three half-planes with inradius r/2, pointing "up" (v < 0 on screen).
        normals = (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3)
        return np.max([u * np.cos(a) + v * np.sin(a) for a in normals], axis=0) - r * 0.55
    if shape == "cross":
        w = r * 0.33
        arm_h = np.maximum(np.abs(u) - r, np.abs(v) - w)
        arm_v = np.maximum(np.abs(v) - r, np.abs(u) - w)
        return np.minimum(arm_h, arm_v)
    raise ValueError(f"unknown shape {shape!r}")


def _muted_colours(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 3) greyish colours of random brightness and a slight random tint: the scenery."""
    return np.clip(rng.uniform(50, 200, size=(n, 1)) + rng.normal(0, 15, size=(n, 3)), 0, 255)


def _vivid_colour(rng: np.random.Generator, avoid: np.ndarray, min_dist: float) -> np.ndarray:
    """A saturated colour of random hue, at least `min_dist` (RGB) from every colour in `avoid`.

    Actors are vivid and scenery is muted: with ~30 videos per class, that contrast is what lets a small
    network find the actor instead of memorising each video's background.
    """
    colour = np.zeros(3)
    for _ in range(100):
        hue, sat, val = rng.uniform(0, 1), rng.uniform(0.7, 1.0), rng.uniform(0.75, 1.0)
        k = (np.array([5.0, 3.0, 1.0]) + hue * 6) % 6
        colour = 255 * val * (1 - sat * np.clip(np.minimum(k, 4 - k), 0, 1))  # HSV -> RGB
        if np.all(np.linalg.norm(avoid - colour, axis=1) >= min_dist):
            break
    return colour


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Static background (H, W, 3) float32 and its two base colours (2, 3)."""
    base = _muted_colours(rng, 2)
    theta = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    ramp = np.clip((np.cos(theta) * (xx - 0.5) + np.sin(theta) * (yy - 0.5)) + 0.5, 0, 1)[..., None]
    img = base[0] * (1 - ramp) + base[1] * ramp
    # Low-frequency texture: a coarse random grid upsampled with bilinear interpolation.
    grid = rng.normal(0, 18, size=(6, 6, 1)) + rng.normal(0, 5, size=(6, 6, 3))  # mostly brightness
    coords = np.linspace(0, 5, size)
    i0 = np.minimum(coords.astype(int), 4)
    f = (coords - i0)[:, None]
    rows = grid[i0] * (1 - f[..., None]) + grid[i0 + 1] * f[..., None]  # (size, 6, 3)
    tex = rows[:, i0] * (1 - f[None, :, :]) + rows[:, i0 + 1] * f[None, :, :]  # (size, size, 3)
    img = img + tex
    # Static distractors: soft blobs of random colours, smaller than the actor and unlike any actor shape,
    # so that "which thing is the actor" is learnable from a few dozen videos per class.
    for _ in range(rng.integers(2, 5)):
        sigma = rng.uniform(0.025, 0.05) * size
        cx, cy = rng.uniform(0, size, size=2)
        alpha = 0.8 * np.exp(-((xx * size - cx) ** 2 + (yy * size - cy) ** 2) / (2 * sigma**2))[..., None]
        img = img * (1 - alpha) + _muted_colours(rng, 1)[0] * alpha
    return img.astype(np.float32), base


def _trajectory(name: str, rng: np.random.Generator, frames: int, size: int, r: float) -> _Trajectory:
    t = np.arange(frames, dtype=np.float64)
    margin = r + 2
    lo, hi = margin, size - margin
    angle0 = rng.uniform(0, 2 * np.pi)
    still = np.full(frames, angle0)
    speed = rng.uniform(0.016, 0.024) * size  # px / frame: ~10-15 px over a 8x2-frame clip at 80 px

    def line(dx: float, dy: float) -> _Trajectory:
        # Start so that the whole path stays inside the frame when it fits; otherwise it wraps around
        # (rendering is toroidal), which keeps the direction intact.
        travel_x, travel_y = dx * speed * (frames - 1), dy * speed * (frames - 1)
        x0 = rng.uniform(lo, max(lo, hi - abs(travel_x))) + max(0.0, -travel_x)
        y0 = rng.uniform(lo, max(lo, hi - abs(travel_y))) + max(0.0, -travel_y)
        # Small perpendicular wobble so the path is not a perfect ruler line.
        wob = rng.normal(0, 0.3, size=frames).cumsum() * 0.3
        return _Trajectory(x0 + dx * speed * t + dy * wob, y0 + dy * speed * t + dx * wob, still)

    if name == "move_left":
        return line(-1.0, 0.0)
    if name == "move_right":
        return line(1.0, 0.0)
    if name == "move_up":
        return line(0.0, -1.0)
    if name == "move_down":
        return line(0.0, 1.0)
    if name in ("speed_constant", "speed_oscillating"):
        # Both along a random diagonal, so direction alone never tells them from move_* classes.
        sx, sy = rng.choice([-1.0, 1.0], size=2) / np.sqrt(2)
        if name == "speed_constant":
            return line(float(sx), float(sy))
        period = rng.uniform(8, 12)  # frames: a reversal inside any 16-frame window
        amp = speed * period / (2 * np.pi) * 1.6  # peak speed ~1.6x the constant class's speed
        cx, cy = rng.uniform(lo + amp, hi - amp, size=2) if hi - lo > 2 * amp else (size / 2, size / 2)
        s = amp * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
        return _Trajectory(cx + sx * s, cy + sy * s, still)
    if name in ("rotate_cw", "rotate_ccw"):
        # Screen y points down, so a growing angle in (u, v) turns clockwise on screen.
        omega = np.deg2rad(rng.uniform(6, 11)) * (1 if name == "rotate_cw" else -1)
        cx, cy = rng.uniform(lo, hi, size=2)
        jitter = rng.normal(0, 0.25, size=(2, frames))
        return _Trajectory(cx + jitter[0], cy + jitter[1], angle0 + omega * t)
    # Appearance classes share "wander": smooth small jitter around a fixed place, no net drift. Their actor
    # stands upright: shape, not orientation, is what these classes are about.
    cx, cy = rng.uniform(lo, hi, size=2)
    amp = 0.04 * size
    phases = rng.uniform(0, 2 * np.pi, size=2)
    periods = rng.uniform(10, 16, size=2)
    return _Trajectory(
        cx + amp * np.sin(2 * np.pi * t / periods[0] + phases[0]),
        cy + amp * np.sin(2 * np.pi * t / periods[1] + phases[1]),
        np.zeros(frames),
    )


def _appearance(name: str, rng: np.random.Generator) -> tuple[str, str]:
    """(shape, texture) of the actor; texture is "solid", "striped" or "checkered"."""
    if name in MOTION_CLASSES:
        return str(rng.choice(_MOTION_SHAPES)), "solid"
    if name.startswith("shape_"):
        return name.removeprefix("shape_"), "solid"
    if name.startswith("texture_"):
        return str(rng.choice(_TEXTURE_SHAPES)), name.removeprefix("texture_")
    raise ValueError(f"unknown class {name!r}")


def render_video(name: str, rng: np.random.Generator, *, frames: int, size: int) -> np.ndarray:
    """Render one video of class `name` as uint8 (T, H, W, 3) RGB, fully determined by `rng`."""
    if name not in CLASS_NAMES:
        raise ValueError(f"unknown class {name!r}; known: {', '.join(CLASS_NAMES)}")
    background, base = _background(rng, size)
    shape, texture = _appearance(name, rng)
    r = rng.uniform(0.12, 0.15) * size  # actor ~ 19-25% of the frame side
    traj = _trajectory(name, rng, frames, size, r)
    colour = _vivid_colour(rng, base, min_dist=100)
    colour2 = _vivid_colour(rng, np.stack([colour, *base]), min_dist=90)
    period = rng.uniform(0.45, 0.6) * r

    coords = np.arange(size, dtype=np.float32)
    # Toroidal offsets from the object centre: (T, 1, W) and (T, H, 1).
    dx = (coords[None, None, :] - traj.x[:, None, None] + size / 2) % size - size / 2
    dy = (coords[None, :, None] - traj.y[:, None, None] + size / 2) % size - size / 2
    cos, sin = np.cos(traj.angle)[:, None, None], np.sin(traj.angle)[:, None, None]
    u = (cos * dx + sin * dy).astype(np.float32)  # (T, H, W)
    v = (-sin * dx + cos * dy).astype(np.float32)
    alpha = np.clip(0.5 - _shape_distance(shape, u, v, r), 0, 1)[..., None]  # (T, H, W, 1), anti-aliased

    pattern: Callable[[], np.ndarray] | None = {
        "solid": None,
        "striped": lambda: np.sin(2 * np.pi * u / period) > 0,
        "checkered": lambda: (np.floor(u / period) + np.floor(v / period)) % 2 == 0,
    }[texture]
    if pattern is None:
        actor = colour
    else:
        mix = pattern()[..., None]
        actor = np.where(mix, colour, colour2)
    video = background[None] * (1 - alpha) + actor * alpha
    video += rng.normal(0, 5, size=video.shape).astype(np.float32)  # sensor noise, fresh every frame
    return np.clip(video, 0, 255).round().astype(np.uint8)


def write_mp4(path: Path, video: np.ndarray, *, fps: int, crf: int = 20, gop: int = 8) -> None:
    """Encode uint8 (T, H, W, 3) RGB as H.264 yuv420p; a short GOP keeps keyframe seeks cheap."""
    t, h, w, _ = video.shape
    if h % 2 or w % 2:
        raise ValueError(f"{path}: yuv420p needs even width and height, got {w}x{h}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.gop_size = gop
        # scenecut=0 keeps keyframes on a fixed grid; one thread makes output independent of the machine.
        stream.options = {"crf": str(crf), "preset": "veryfast", "x264-params": "scenecut=0", "threads": "1"}
        for frame_rgb in video:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame_rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write_video(job: tuple[Path, str, tuple[int, int, int], int, int, int]) -> None:
    path, name, key, frames, size, fps = job
    # Keyed by (seed, class position, k): a video does not change when `classes` or the count grows.
    write_mp4(path, render_video(name, np.random.default_rng(list(key)), frames=frames, size=size), fps=fps)


def stratified_test_mask(names: list[str], labels: list[str], *, test_fraction: float, seed: int) -> list[bool]:
    """Per class, mark round(test_fraction * n) items (at most n - 1) as test; deterministic from seed.

    Each class draws from its own generator keyed by its name, so adding a class leaves the others alone.
    """
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    is_test = [False] * len(names)
    for label in sorted(set(labels)):
        idx = sorted((i for i, lab in enumerate(labels) if lab == label), key=lambda i: names[i])
        n_test = min(round(test_fraction * len(idx)), len(idx) - 1)
        rng = np.random.default_rng([seed, zlib.crc32(label.encode())])
        for j in rng.permutation(len(idx))[:n_test]:
            is_test[idx[j]] = True
    return is_test


def generate(
    out_dir: Path,
    *,
    classes: int = 8,
    videos_per_class: int = 30,
    seed: int = 0,
    frames: int = 32,
    size: int = 80,
    fps: int = 16,
    test_fraction: float = 0.25,
    workers: int | None = None,
) -> Path:
    """Write the dataset under out_dir and return the path of its manifest.csv.

    Each video's frames depend only on (seed, class position, index), so `workers` processes (None: one per core
    for large sets) render the same videos as one. The encoded bytes are not always the same: libx264, even on one
    thread, now and then takes other decisions for the same frames on a loaded machine (about 1 grey level of
    difference after decoding; tests/unit/test_synthetic.py).
    """
    if not 2 <= classes <= len(CLASS_NAMES):
        raise ValueError(f"classes must be in [2, {len(CLASS_NAMES)}], got {classes}")
    if videos_per_class < 1 or frames < 1 or fps < 1:
        raise ValueError(f"videos_per_class, frames and fps must be >= 1, got {videos_per_class}, {frames}, {fps}")
    if size < 16 or size % 2:
        raise ValueError(f"size must be an even number >= 16, got {size}")
    out_dir = Path(out_dir)
    names = CLASS_NAMES[:classes]
    videos = [(class_index, name, k) for class_index, name in enumerate(names) for k in range(videos_per_class)]
    rel_paths = [f"{name}/{name}_{k:03d}.mp4" for _, name, k in videos]
    labels = [name for _, name, _ in videos]
    jobs = [(out_dir / rel, name, (seed, class_index, k), frames, size, fps)
            for rel, (class_index, name, k) in zip(rel_paths, videos, strict=True)]
    if workers is None:
        workers = min(os.cpu_count() or 1, max(1, len(jobs) // VIDEOS_PER_WORKER))
    if workers > 1:
        # Spawned, not forked: the caller may hold threads (Ray, decode pools) that a fork would copy mid-state.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(_write_video, jobs, chunksize=8))
    else:
        for job in jobs:
            _write_video(job)
    is_test = stratified_test_mask(rel_paths, labels, test_fraction=test_fraction, seed=seed)
    manifest = out_dir / "manifest.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["path", "label", "split"])
        for rel, label, test in zip(rel_paths, labels, is_test, strict=True):
            writer.writerow([rel, label, "test" if test else "train"])
    (out_dir / "classes.txt").write_text("".join(f"{n}\n" for n in names))
    return manifest
