"""The optional torchcodec backend: the same clips as the PyAV decode (frame choice, looping, shapes,
orientation), close pixels, the same errors. Skipped where torchcodec or its FFmpeg libraries are missing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torchcodec")

from ssl_core.data import decode as pyav_backend  # noqa: E402
from ssl_core.data.decode_base import DecodeError, DecodeTimeout  # noqa: E402
from ssl_core.data.decoders import DecoderUnavailable, get_decoder  # noqa: E402
from tests.unit.odd_videos import FPS, bad_files, half_white, write_video  # noqa: E402

try:
    tc = get_decoder("torchcodec")
except DecoderUnavailable as e:  # the package is there but its FFmpeg libraries do not load
    pytest.skip(str(e), allow_module_level=True)

# Mean absolute difference (grey levels of 255) allowed between the backends on the same clip. Colour
# conversion alone is identical (0.0 at the source size) and so is the resize geometry, but the filters
# differ: PyAV (swscale) resizes the subsampled 4:2:0 chroma planes before converting to RGB, torchcodec
# converts at full size and torch resizes RGB (antialiased bilinear). Measured here, sizes 16-48 px:
# synthetic dataset videos 1.2-1.5 (2.3 at 16 px), grey random 6 px blocks 1.3; content with strong colour
# detail near the chroma resolution differs more (random colour 6 px blocks 5-12, colour noise ~8): not
# tested, as no threshold would say anything there.
MAX_MEAN_ABS_DIFF = 4.0
BASE, STEP = 20, 8  # painted frame k is a flat grey BASE + k * STEP


def painted(path: Path, n: int, size: int = 48) -> str:
    values = (BASE + np.arange(n) * STEP).astype(np.uint8)
    return str(write_video(path, np.broadcast_to(values[:, None, None, None], (n, size, size, 3)).copy()))


def frame_ids(clip: np.ndarray) -> list[int]:
    means = (clip.reshape(clip.shape[0], -1).mean(axis=1) - BASE) / STEP
    assert np.all(np.abs(means - np.round(means)) * STEP <= 3.0), means
    return np.round(means).astype(int).tolist()


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.mark.parametrize(("start", "stride", "num"), [(0, 1, 8), (5, 3, 6), (13, 2, 8), (22, 1, 8)])
def test_seeking_takes_frames_start_plus_k_stride(tmp_path: Path, start: int, stride: int, num: int) -> None:
    path = painted(tmp_path / "p.mp4", 30)
    clip = tc.decode_clip(path, num_frames=num, stride=stride, size=32, start_s=start / FPS)
    assert clip.shape == (num, 32, 32, 3) and clip.dtype == np.uint8
    assert frame_ids(clip) == [start + k * stride for k in range(num)]


def test_random_start_matches_pyav_for_the_same_seed(tmp_path: Path) -> None:
    path = painted(tmp_path / "p.mp4", 30)
    for seed in range(6):
        kw = {"num_frames": 4, "stride": 3, "size": 16}
        ours = tc.decode_clip(path, rng=np.random.default_rng(seed), **kw)
        theirs = pyav_backend.decode_clip(path, rng=np.random.default_rng(seed), **kw)
        assert frame_ids(ours) == frame_ids(theirs)


@pytest.mark.parametrize(("stride", "expected"), [(1, [0, 1, 2, 3, 4, 0, 1, 2]), (2, [0, 2, 4, 0, 2, 4, 0, 2])])
def test_short_video_loops(tmp_path: Path, stride: int, expected: list[int]) -> None:
    path = painted(tmp_path / "short.mp4", 5)
    assert frame_ids(tc.decode_clip(path, num_frames=8, stride=stride, size=16, start_s=0.0)) == expected
    clips = tc.decode_eval_clips(path, num_frames=8, stride=stride, size=16, num_clips=2)
    assert [frame_ids(c) for c in clips] == [expected, expected]


def test_eval_clips_match_pyav_frames(tmp_path: Path) -> None:
    path = painted(tmp_path / "p.mp4", 30)
    for num_clips in (1, 3, 4):
        ours = tc.decode_eval_clips(path, num_frames=4, stride=2, size=16, num_clips=num_clips)
        theirs = pyav_backend.decode_eval_clips(path, num_frames=4, stride=2, size=16, num_clips=num_clips)
        assert ours.shape == theirs.shape == (num_clips, 4, 16, 16, 3)
        assert [frame_ids(c) for c in ours] == [frame_ids(c) for c in theirs]


def test_start_past_the_end_is_an_error(tmp_path: Path) -> None:
    path = painted(tmp_path / "p.mp4", 10)
    with pytest.raises(ValueError, match="past the end"):
        tc.decode_clip(path, num_frames=2, stride=1, size=16, start_s=5.0)


def test_backends_agree_on_real_content(tmp_path: Path, synth_dataset: Path) -> None:
    blocks = np.random.default_rng(0).integers(0, 256, (12, 10, 15, 1), dtype=np.uint8)
    blocks = blocks.repeat(3, axis=3).repeat(6, axis=1).repeat(6, axis=2)  # (12, 60, 90, 3): grey 6 px blocks
    paths = [str(p) for p in sorted(synth_dataset.glob("*/*.mp4"))[:4]]
    paths.append(str(write_video(tmp_path / "blocks.mp4", blocks)))
    diffs = {}
    for path in paths:
        for size in (32, 48):
            kw = {"num_frames": 4, "stride": 2, "size": size, "start_s": 1 / FPS}
            ours, theirs = tc.decode_clip(path, **kw), pyav_backend.decode_clip(path, **kw)
            diffs[Path(path).name, size] = mean_abs_diff(ours, theirs)
        kw = {"num_frames": 3, "stride": 2, "size": 32, "num_clips": 2, "keep_aspect": True}
        ours, theirs = tc.decode_eval_clips(path, **kw), pyav_backend.decode_eval_clips(path, **kw)
        diffs[Path(path).name, "eval"] = mean_abs_diff(ours, theirs)
    print({k: round(v, 2) for k, v in diffs.items()})
    assert max(diffs.values()) < MAX_MEAN_ABS_DIFF, diffs


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotation_matches_pyav(tmp_path: Path, rotation: int) -> None:
    path = str(write_video(tmp_path / "rot.mp4", half_white(), rotation=rotation))
    kw = {"num_frames": 2, "stride": 1, "size": 16, "num_clips": 1, "keep_aspect": True}
    ours, theirs = tc.decode_eval_clips(path, **kw), pyav_backend.decode_eval_clips(path, **kw)
    assert mean_abs_diff(ours, theirs) < MAX_MEAN_ABS_DIFF


def test_odd_size_and_gray_sources(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    odd = str(write_video(tmp_path / "odd.mp4", rng.integers(0, 256, (6, 61, 97, 3), np.uint8), pix_fmt="yuv444p"))
    assert tc.decode_clip(odd, num_frames=3, stride=1, size=32, start_s=0.0).shape == (3, 32, 32, 3)
    gray = str(write_video(tmp_path / "gray.mkv", half_white(8, 40, 48), codec="ffv1", pix_fmt="gray"))
    ours = tc.decode_clip(gray, num_frames=4, stride=2, size=32, start_s=0.0)
    assert ours.shape == (4, 32, 32, 3)
    theirs = pyav_backend.decode_clip(gray, num_frames=4, stride=2, size=32, start_s=0.0)
    assert mean_abs_diff(ours, theirs) < MAX_MEAN_ABS_DIFF


def test_bad_files_raise_decode_error_naming_the_file(tmp_path: Path) -> None:
    for bad in bad_files(tmp_path):
        with pytest.raises(DecodeError, match=bad.name):
            tc.decode_clip(str(bad), num_frames=4, stride=1, size=16, start_s=0.0)
        with pytest.raises(DecodeError, match=bad.name):
            tc.decode_eval_clips(str(bad), num_frames=4, stride=1, size=16, num_clips=2)


def test_tiny_timeout(tmp_path: Path) -> None:
    path = painted(tmp_path / "long_video.mp4", 30)
    with pytest.raises(DecodeTimeout, match=r"long_video\.mp4.*timeout_s=1e-09"):
        tc.decode_eval_clips(path, num_frames=4, stride=2, size=16, num_clips=3, timeout_s=1e-9)
    assert tc.decode_clip(path, num_frames=4, stride=2, size=16, start_s=0.0, timeout_s=60.0).shape == (4, 16, 16, 3)


def test_exact_seek_mode_takes_the_same_frames(tmp_path: Path) -> None:
    path = painted(tmp_path / "p.mp4", 30)
    clip = tc.decode_clip(path, num_frames=5, stride=3, size=16, start_s=7 / FPS, seek_mode="exact")
    assert frame_ids(clip) == [7, 10, 13, 16, 19]


def test_config_accepts_torchcodec_here() -> None:
    from ssl_core.config import load_config

    assert load_config(None, ["data.decoder=torchcodec"]).data.decoder == "torchcodec"
