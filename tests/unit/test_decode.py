"""Seeking clip decode: exact frame choice (painted videos), looping, resize + crop, eval clips, bad files."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from ssl_core.data.decode import decode_clip, decode_eval_clips, probe
from ssl_core.data.decode_base import DecodeError, spatial_crops

FPS = 16
TOL = 3.0  # grey levels: lossless H.264 plus RGB <-> YUV rounding
BASE = 20  # painted intensities start here: limited-range YUV crushes the darkest few levels


def _write(path: Path, frames: np.ndarray, *, gop: int = 4) -> Path:
    """Encode uint8 (T, H, W, 3) frames losslessly (qp 0) with a short GOP, so seeks land mid-GOP."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.gop_size = gop
        stream.options = {"qp": "0", "x264-params": "scenecut=0"}
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())
    return path


def _painted(path: Path, n: int, step: int = 8, size: int = 64) -> Path:
    """Frame k is a flat grey of intensity BASE + k * step."""
    assert BASE + (n - 1) * step <= 255
    values = (BASE + np.arange(n) * step).astype(np.uint8)
    return _write(path, np.broadcast_to(values[:, None, None, None], (n, size, size, 3)).copy())


def _frame_ids(clip: np.ndarray, step: int = 8) -> np.ndarray:
    means = (clip.reshape(clip.shape[0], -1).mean(axis=1) - BASE) / step
    ids = np.round(means).astype(int)
    assert np.all(np.abs(means - ids) * step <= TOL), means
    return ids


def test_probe(tmp_path: Path) -> None:
    info = probe(str(_painted(tmp_path / "p.mp4", 30)))
    assert (info.fps, info.num_frames, info.width, info.height) == (16.0, 30, 64, 64)
    assert info.duration_s == pytest.approx(30 / 16, abs=1 / 16)


@pytest.mark.parametrize(("start", "stride", "num"), [(0, 1, 8), (5, 3, 6), (13, 2, 8), (22, 1, 8)])
def test_decode_clip_takes_frames_start_plus_k_stride(tmp_path: Path, start: int, stride: int, num: int) -> None:
    path = str(_painted(tmp_path / "p.mp4", 30))
    clip = decode_clip(path, num_frames=num, stride=stride, size=32, start_s=start / FPS)
    assert clip.shape == (num, 32, 32, 3)
    assert clip.dtype == np.uint8
    assert _frame_ids(clip).tolist() == [start + k * stride for k in range(num)]


def test_random_start_is_valid_and_seeded(tmp_path: Path) -> None:
    path = str(_painted(tmp_path / "p.mp4", 30))
    firsts = set()
    for seed in range(12):
        ids = _frame_ids(decode_clip(path, num_frames=4, stride=3, size=16, rng=np.random.default_rng(seed)))
        assert ids.tolist() == [ids[0] + 3 * k for k in range(4)]
        assert 0 <= ids[0] <= 30 - 1 - 9
        firsts.add(int(ids[0]))
    assert len(firsts) > 3
    a = decode_clip(path, num_frames=4, stride=3, size=16, rng=np.random.default_rng(7))
    b = decode_clip(path, num_frames=4, stride=3, size=16, rng=np.random.default_rng(7))
    assert np.array_equal(a, b)


@pytest.mark.parametrize(("stride", "expected"), [(1, [0, 1, 2, 3, 4, 0, 1, 2]), (2, [0, 2, 4, 0, 2, 4, 0, 2])])
def test_short_video_loops(tmp_path: Path, stride: int, expected: list[int]) -> None:
    path = str(_painted(tmp_path / "short.mp4", 5))
    clip = decode_clip(path, num_frames=8, stride=stride, size=16, rng=np.random.default_rng(0))
    assert _frame_ids(clip).tolist() == expected


def test_non_square_video_is_resized_and_centre_cropped(tmp_path: Path) -> None:
    # 96x64: blue | red | green columns of 16 | 64 | 16 px. Short side 64 -> 32 halves everything, and the
    # centre crop to 32 of the 48 resized columns drops exactly the outer 8 = the blue and green bands.
    frame = np.zeros((64, 96, 3), np.uint8)
    frame[:, :16] = (0, 0, 255)
    frame[:, 16:80] = (255, 0, 0)
    frame[:, 80:] = (0, 255, 0)
    path = str(_write(tmp_path / "wide.mp4", np.stack([frame] * 6)))
    clip = decode_clip(path, num_frames=2, stride=1, size=32, start_s=0.0)
    assert clip.shape == (2, 32, 32, 3)
    inner = clip[:, :, 2:-2].astype(int)  # the resize filter and 4:2:0 chroma blend the band borders a little
    assert inner[..., 0].min() > 200 and inner[..., 1].max() < 60 and inner[..., 2].max() < 60
    edges = clip[:, :, [0, 1, -2, -1]].astype(int)
    assert np.all(edges[..., 0] > edges[..., 1]) and np.all(edges[..., 0] > edges[..., 2])


def test_eval_clips_uniform_single_pass(tmp_path: Path) -> None:
    path = str(_painted(tmp_path / "p.mp4", 40, step=6))
    clips = decode_eval_clips(path, num_frames=4, stride=2, size=16, num_clips=4)
    assert clips.shape == (4, 4, 16, 16, 3)
    # Valid starts 0..33 (40 - 1 - 3 * 2), four evenly spaced: 0, 11, 22, 33.
    for clip, start in zip(clips, (0, 11, 22, 33), strict=True):
        assert _frame_ids(clip, step=6).tolist() == [start + 2 * k for k in range(4)]
        single = decode_clip(path, num_frames=4, stride=2, size=16, start_s=start / FPS)
        assert np.array_equal(clip, single)


def test_eval_clips_seek_path_on_long_video(tmp_path: Path) -> None:
    # 3 clips of 2 frames cover a fifth of 30 frames: each clip seeks on its own.
    path = str(_painted(tmp_path / "long.mp4", 30))
    clips = decode_eval_clips(path, num_frames=2, stride=1, size=16, num_clips=3)
    for clip, start in zip(clips, (0, 14, 28), strict=True):
        assert _frame_ids(clip).tolist() == [start, start + 1]
        single = decode_clip(path, num_frames=2, stride=1, size=16, start_s=start / FPS)
        assert np.array_equal(clip, single)


def test_eval_clips_short_video_all_loop(tmp_path: Path) -> None:
    path = str(_painted(tmp_path / "short.mp4", 3))
    clips = decode_eval_clips(path, num_frames=4, stride=2, size=16, num_clips=2)
    assert [_frame_ids(c).tolist() for c in clips] == [[0, 2, 0, 2], [0, 2, 0, 2]]


def test_synthetic_video_decodes_to_requested_size(synth_dataset: Path) -> None:
    path = str(next((synth_dataset / "move_left").glob("*.mp4")))
    clip = decode_clip(path, num_frames=8, stride=2, size=48, rng=np.random.default_rng(0))
    assert clip.shape == (8, 48, 48, 3) and clip.dtype == np.uint8
    assert clip.std() > 10  # real content, not a blank frame


def _bad_files(tmp_path: Path) -> list[Path]:
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    data = _painted(tmp_path / "good.mp4", 30).read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 2])
    text = tmp_path / "text.mp4"
    text.write_text("this is not a video\n" * 20)
    return [empty, truncated, text]


def test_bad_files_raise_decode_error_naming_the_path(tmp_path: Path) -> None:
    for bad in _bad_files(tmp_path):
        with pytest.raises(DecodeError, match=bad.name):
            decode_clip(str(bad), num_frames=4, stride=1, size=16, start_s=0.0)
        with pytest.raises(DecodeError, match=bad.name):
            probe(str(bad))
        with pytest.raises(DecodeError, match=bad.name):
            decode_eval_clips(str(bad), num_frames=4, stride=1, size=16, num_clips=2)


def test_start_past_the_end_is_an_error(tmp_path: Path) -> None:
    path = str(_painted(tmp_path / "p.mp4", 10))
    with pytest.raises(ValueError, match="past the end"):
        decode_clip(path, num_frames=2, stride=1, size=16, start_s=5.0)


def test_keep_aspect_eval_clips_resize_the_short_side_only(tmp_path: Path) -> None:
    path = str(_write(tmp_path / "wide.mp4", np.full((8, 64, 96, 3), 90, np.uint8)))
    clips = decode_eval_clips(path, num_frames=2, stride=1, size=32, num_clips=3, keep_aspect=True)
    assert clips.shape == (3, 2, 32, 48, 3) and clips.dtype == np.uint8
    tall = str(_write(tmp_path / "tall.mp4", np.full((8, 96, 64, 3), 90, np.uint8)))
    assert decode_eval_clips(tall, num_frames=2, stride=1, size=32, num_clips=1, keep_aspect=True).shape == (
        1, 2, 48, 32, 3)


@pytest.mark.parametrize("shape", [(96, 64), (64, 96), (64, 64)])
def test_one_spatial_crop_equals_the_centre_cropped_decode(tmp_path: Path, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (10, shape[1], shape[0], 3), dtype=np.uint8)
    path = str(_write(tmp_path / "v.mp4", frames))
    square = decode_eval_clips(path, num_frames=3, stride=2, size=40, num_clips=2)
    wide = decode_eval_clips(path, num_frames=3, stride=2, size=40, num_clips=2, keep_aspect=True)
    crops = spatial_crops(wide, 1)
    assert crops.shape == (2, 1, 3, 40, 40, 3)
    assert np.array_equal(crops[:, 0], square)


def test_spatial_crops_are_evenly_spaced_along_the_long_side() -> None:
    clips = np.zeros((2, 3, 10, 30, 3), np.uint8)
    clips[..., 0] = np.arange(30, dtype=np.uint8)  # every pixel holds its column index
    crops = spatial_crops(clips, 3)
    assert crops.shape == (2, 3, 3, 10, 10, 3)
    assert [int(crops[0, k, 0, 0, 0, 0]) for k in range(3)] == [0, 10, 20]  # left edge, centre, right edge
    assert np.array_equal(spatial_crops(clips, 1)[:, 0], crops[:, 1])  # the middle of three is the centre crop
    tall = np.zeros((1, 2, 25, 10, 3), np.uint8)
    tall[..., 1] = np.arange(25, dtype=np.uint8)[:, None]  # row index
    assert [int(spatial_crops(tall, 4)[0, k, 0, 0, 0, 1]) for k in range(4)] == [0, 5, 10, 15]
    square = np.ones((1, 2, 8, 8, 3), np.uint8)
    assert np.array_equal(spatial_crops(square, 3)[0, 2], square[0])
    with pytest.raises(ValueError, match="num_crops"):
        spatial_crops(clips, 0)
