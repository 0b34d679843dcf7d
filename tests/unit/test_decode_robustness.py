"""Odd files through the PyAV decode: each decodes to the contract or raises DecodeError naming the file;
per-file timeouts; grayscale, odd sizes and rotation metadata; the backend dispatcher."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from ssl_core.data import decode
from ssl_core.data.decode import decode_clip, decode_eval_clips, probe, quarter_turns
from ssl_core.data.decode_base import DecodeError, DecodeTimeout
from ssl_core.data.decoders import DecoderUnavailable, get_decoder
from tests.unit.odd_videos import bad_files, half_white, write_audio_only, write_video


@pytest.mark.parametrize("case", ["empty", "truncated", "text", "audio_only"])
def test_odd_files_raise_decode_error_naming_the_file(tmp_path: Path, case: str) -> None:
    bad = {p.stem: p for p in bad_files(tmp_path)}[case]
    with pytest.raises(DecodeError, match=bad.name):
        decode_clip(str(bad), num_frames=4, stride=1, size=16, start_s=0.0, timeout_s=10.0)
    with pytest.raises(DecodeError, match=bad.name):
        decode_eval_clips(str(bad), num_frames=4, stride=1, size=16, num_clips=2, timeout_s=10.0)
    with pytest.raises(DecodeError, match=bad.name):
        probe(str(bad))


def test_audio_only_says_no_video_stream(tmp_path: Path) -> None:
    path = write_audio_only(tmp_path / "a.mp4")
    with pytest.raises(DecodeError, match="no video stream"):
        decode_clip(str(path), num_frames=2, stride=1, size=16)


@pytest.mark.parametrize(("width", "height", "size"), [(97, 61, 32), (61, 97, 32), (97, 61, 72), (33, 7, 5)])
def test_odd_frame_sizes_give_exact_square_clips(tmp_path: Path, width: int, height: int, size: int) -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (6, height, width, 3), dtype=np.uint8)
    # libx264 4:2:0 needs even sizes; 4:4:4 takes odd ones (as many phone and screen recordings are).
    path = str(write_video(tmp_path / "odd.mp4", frames, pix_fmt="yuv444p"))
    assert (probe(path).width, probe(path).height) == (width, height)
    clip = decode_clip(path, num_frames=4, stride=1, size=size, rng=np.random.default_rng(0))
    assert clip.shape == (4, size, size, 3) and clip.dtype == np.uint8
    clips = decode_eval_clips(path, num_frames=3, stride=2, size=size, num_clips=2)
    assert clips.shape == (2, 3, size, size, 3)
    wide = decode_eval_clips(path, num_frames=3, stride=2, size=size, num_clips=2, keep_aspect=True)
    assert min(wide.shape[2:4]) == size
    assert (wide.shape[3] >= wide.shape[2]) == (width >= height)


def test_grayscale_source_comes_out_rgb(tmp_path: Path) -> None:
    # A true gray (Y only) pixel format: ffv1 in Matroska (this container also has no frame count in its
    # index, so the count comes from duration x rate).
    frames = np.zeros((8, 40, 48, 3), np.uint8)
    frames[:, :, :24] = 200
    path = str(write_video(tmp_path / "gray.mkv", frames, codec="ffv1", pix_fmt="gray"))
    with av.open(path) as c:
        assert next(c.decode(video=0)).format.name == "gray"
    clip = decode_clip(path, num_frames=4, stride=2, size=32, start_s=0.0)
    assert clip.shape == (4, 32, 32, 3)
    assert np.array_equal(clip[..., 0], clip[..., 1]) and np.array_equal(clip[..., 0], clip[..., 2])
    assert clip[:, :, :8].mean() > 180 and clip[:, :, -8:].mean() < 20  # left bright, right dark, kept
    assert decode_eval_clips(path, num_frames=4, stride=1, size=32, num_clips=2).shape == (2, 4, 32, 32, 3)


def test_quarter_turns() -> None:
    assert [quarter_turns(r) for r in (None, 0, 90, -90, 180, -180, 270, 89.6)] == [0, 0, 1, 3, 2, 2, 3, 1]


@pytest.mark.parametrize(("rotation", "white_at"), [(90, "bottom"), (-90, "top"), (180, "right"), (0, "left")])
def test_rotation_metadata_turns_frames_upright(tmp_path: Path, rotation: int, white_at: str) -> None:
    # Coded 64x32, left half white. A display matrix turning it 90 degrees counter-clockwise shows a 32x64
    # picture with the white half at the bottom (ffmpeg's autorotate and torchcodec agree on this).
    path = str(write_video(tmp_path / "rot.mp4", half_white(), rotation=rotation))
    info = probe(path)
    assert (info.width, info.height) == ((32, 64) if rotation % 180 else (64, 32))
    wide = decode_eval_clips(path, num_frames=2, stride=1, size=16, num_clips=1, keep_aspect=True)[0]
    assert wide.shape == ((2, 32, 16, 3) if rotation % 180 else (2, 16, 32, 3))
    halves = {  # mean brightness of each half of the displayed picture
        "top": wide[:, : wide.shape[1] // 2].mean(), "bottom": wide[:, wide.shape[1] // 2 :].mean(),
        "left": wide[:, :, : wide.shape[2] // 2].mean(), "right": wide[:, :, wide.shape[2] // 2 :].mean(),
    }
    assert halves[white_at] > 240
    opposite = {"top": "bottom", "bottom": "top", "left": "right", "right": "left"}[white_at]
    assert halves[opposite] < 15
    clip = decode_clip(path, num_frames=3, stride=1, size=16, start_s=0.0)
    assert clip.shape == (3, 16, 16, 3)


def test_tiny_timeout_raises_decode_timeout_naming_file_and_limit(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = write_video(tmp_path / "long_video.mp4", rng.integers(0, 256, (48, 64, 64, 3), dtype=np.uint8))
    for call in (
        lambda: decode_clip(str(path), num_frames=8, stride=2, size=32, start_s=0.0, timeout_s=1e-9),
        lambda: decode_eval_clips(str(path), num_frames=8, stride=2, size=32, num_clips=3, timeout_s=1e-9),
    ):
        with pytest.raises(DecodeTimeout, match=r"long_video\.mp4.*timeout_s=1e-09") as err:
            call()
        assert isinstance(err.value, DecodeError)  # data.py skips and counts it like any bad video
    # A generous limit changes nothing.
    assert np.array_equal(
        decode_clip(str(path), num_frames=8, stride=2, size=32, start_s=0.5, timeout_s=60.0),
        decode_clip(str(path), num_frames=8, stride=2, size=32, start_s=0.5),
    )


def test_timeout_is_checked_between_frames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A deadline clock that advances 1 s per look: the 5 s limit passes in the middle of the decode loop,
    # after the file opened fine (av.open's own per-read timeout keeps the real clock).
    path = write_video(tmp_path / "slow.mp4", np.full((40, 32, 32, 3), 90, np.uint8))
    now = iter(range(10_000))
    monkeypatch.setattr(decode.Deadline, "clock", staticmethod(lambda: float(next(now))))
    converted = []
    real_to_rgb = decode._to_rgb
    monkeypatch.setattr(decode, "_to_rgb", lambda *a, **k: converted.append(1) or real_to_rgb(*a, **k))
    with pytest.raises(DecodeTimeout, match=r"slow\.mp4.*timeout_s=5"):
        decode_eval_clips(str(path), num_frames=8, stride=4, size=16, num_clips=2, timeout_s=5)
    assert 0 < len(converted) < 16  # it stopped mid-decode: after the first wanted frame, before the last


def test_timeout_must_be_positive(tmp_path: Path) -> None:
    path = write_video(tmp_path / "v.mp4", np.full((4, 16, 16, 3), 90, np.uint8))
    with pytest.raises(ValueError, match="timeout_s"):
        decode_clip(str(path), num_frames=2, stride=1, size=16, timeout_s=0)


def test_get_decoder() -> None:
    assert get_decoder("pyav") is decode
    with pytest.raises(ValueError, match="unknown decoder"):
        get_decoder("decord")


def test_missing_torchcodec_is_a_clear_error_not_a_skipped_video(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.delitem(sys.modules, "ssl_core.data.decode_torchcodec", raising=False)
    for name in ("torchcodec", "torchcodec.decoders"):
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: `import` raises ImportError
    with pytest.raises(DecoderUnavailable, match=r"pip install 'vidssl\[torchcodec\]'.*libavcodec59") as err:
        get_decoder("torchcodec")
    assert not isinstance(err.value, DecodeError)  # data.py must fail loudly, not skip every video
    assert "torchcodec.decoders" in str(err.value)  # the cause, after the hint

    from ssl_core.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"^data\.decoder: torchcodec or its FFmpeg libraries are missing; pip"):
        load_config(None, ["data.decoder=torchcodec"])
    assert load_config(None, []).data.decoder == "pyav"  # the default needs nothing more


def test_torchcodec_without_its_ffmpeg_libraries_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchcodec 0.17 imports without FFmpeg; its first VideoDecoder would fail on every video."""
    utils = pytest.importorskip("torchcodec._internally_replaced_utils")

    def no_ffmpeg() -> None:
        raise RuntimeError("Could not load libtorchcodec. Likely causes: FFmpeg is not installed")

    monkeypatch.setattr(utils, "load_core_libraries", no_ffmpeg)
    with pytest.raises(DecoderUnavailable, match=r"libavcodec59.*Could not load libtorchcodec"):
        get_decoder("torchcodec")
