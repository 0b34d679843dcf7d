"""Small videos written with PyAV for the decode tests (tests/unit/test_decode_*.py, test_clip_cache.py): lossless
clips, an audio-only file, and the files a decoder must refuse by name (empty, truncated, text, audio only).

    .venv/bin/python -m pytest -q tests/unit/test_decode_robustness.py
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

FPS = 16


def write_video(
    path: Path,
    frames: np.ndarray,  # (T, H, W, 3) uint8 RGB
    *,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    rotation: int | None = None,
    options: dict[str, str] | None = None,
) -> Path:
    """Encode frames (lossless for libx264) with an optional display-matrix rotation (counter-clockwise)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        stream.codec_context.gop_size = 4
        if codec == "libx264":
            stream.options = {"qp": "0", **(options or {})}
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for f in frames:
            frame = av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format=pix_fmt)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def write_audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def half_white(n: int = 6, h: int = 32, w: int = 64) -> np.ndarray:  # left half white, right half black
    frames = np.zeros((n, h, w, 3), np.uint8)
    frames[:, :, : w // 2] = 255
    return frames


def bad_files(tmp_path: Path) -> list[Path]:
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    good = write_video(tmp_path / "good.mp4", np.full((30, 32, 32, 3), 100, np.uint8)).read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good[: len(good) // 2])
    text = tmp_path / "text.mp4"
    text.write_text("this is not a video\n" * 20)
    audio = write_audio_only(tmp_path / "audio_only.mp4")
    return [empty, truncated, text, audio]
