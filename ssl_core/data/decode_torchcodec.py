"""The optional torchcodec decode backend: same functions, arguments and outputs as ssl_core/data/decode.py.

Chosen with `data.decoder: torchcodec` (see ssl_core.data.decoders.get_decoder); needs
`pip install 'vidssl[torchcodec]'` and the system FFmpeg libraries. Clip timing (random / given start, uniformly
spaced eval clips, looping of short videos) comes from the shared helpers in decode_base.py, so both backends pick
the same frames: for each wanted time, the frame whose timestamp is nearest (asked of torchcodec as the frame played
half a frame later, which is the nearest one at a constant rate and keeps float rounding of k / fps off the frame
boundaries).
torchcodec applies the display-matrix rotation itself and returns RGB for any pixel format. Frames are
resized with torch (bilinear, antialiased: short side -> size) and centre-cropped; PyAV resizes with
swscale, so the two differ by a few grey levels (tests/unit/test_decode_torchcodec.py measures it).

`device="cuda"` decodes on an NVIDIA GPU (NVDEC) and resizes there; clips still come back as numpy uint8.
The timeout is checked between torchcodec calls (open, each clip): one call is not interrupted.

Try it:
    python -c "from ssl_core.data.decode_torchcodec import decode_clip; \\
print(decode_clip('data/synth/move_left/move_left_000.mp4', num_frames=8, stride=2, size=64).shape)"
"""

from __future__ import annotations

import importlib

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torchcodec.decoders import VideoDecoder

from ssl_core.data.decode_base import (
    DEFAULT_MAX_DECODE_PIXELS,
    Deadline,
    DecodeError,
    VideoInfo,
    centre_crop,
    check_args,
    check_resolution,
    clip_start_s,
    clip_times,
    eval_clip_times,
    loop_frames,
    resized_dims,
    start_past_end,
)

# What torchcodec raises for a file it cannot open or decode.
_ERRORS = (RuntimeError, ValueError, IndexError, OSError)


def load_ffmpeg() -> None:
    """Load torchcodec's FFmpeg libraries (memoised by torchcodec; RuntimeError or OSError when they are missing).
    torchcodec 0.17 imports without them and fails at the first VideoDecoder instead. A private module of torchcodec,
    looked up when called (after torchcodec.decoders, whose ImportError names what is missing)."""
    importlib.import_module("torchcodec._internally_replaced_utils").load_core_libraries()


class _Video:
    """An open VideoDecoder with the VideoInfo the shared timing helpers need."""

    def __init__(self, path: str, device: str, seek_mode: str, deadline: Deadline, threads: int = 0,
                 max_pixels: int | None = DEFAULT_MAX_DECODE_PIXELS) -> None:
        self.path, self.deadline = path, deadline
        try:
            # num_ffmpeg_threads=0: FFmpeg picks the thread count, like PyAV's thread_type="AUTO".
            self.decoder = VideoDecoder(path, device=device, seek_mode=seek_mode, num_ffmpeg_threads=threads)
        except _ERRORS as e:
            if deadline.expired:
                raise deadline.error(e) from e
            raise DecodeError(f"{path}: cannot open as video: {e}") from e
        deadline.check()
        m = self.decoder.metadata
        fps, duration = m.average_fps, m.duration_seconds
        if not fps or fps <= 0:
            raise DecodeError(f"{path}: unknown frame rate")
        if duration is None:
            raise DecodeError(f"{path}: unknown duration")
        num_frames = m.num_frames or round(duration * fps)
        width, height = m.width or 0, m.height or 0
        if num_frames <= 0 or width <= 0 or height <= 0:
            raise DecodeError(f"{path}: empty video stream ({num_frames} frames, {width}x{height})")
        self.info = VideoInfo(duration_s=duration, fps=fps, num_frames=num_frames, width=width, height=height)
        check_resolution(path, self.info, max_pixels)  # from the metadata: no frame decoded yet
        self.begin = m.begin_stream_seconds or 0.0
        self.end = m.end_stream_seconds if m.end_stream_seconds is not None else self.begin + duration

    def frames(self, wanted: np.ndarray) -> torch.Tensor:  # (n, C, H, W) uint8, n <= len(wanted): a prefix
        """The frames nearest the wanted times (seconds from the first frame, non-decreasing); times more
        than half a frame past the last frame get nothing, as in the PyAV backend."""
        half = 0.5 / self.info.fps
        query = self.begin + np.asarray(wanted, dtype=np.float64) + half
        query = query[query <= self.end + 1e-9]
        if len(query) == 0:
            return torch.empty(0, 3, 0, 0, dtype=torch.uint8)
        query = np.minimum(query, self.end - 1e-6)  # the played-at range is [begin, end)
        try:
            out = self.decoder.get_frames_played_at(query.tolist()).data
        except _ERRORS as e:
            out = self._prefix(query, e)
        self.deadline.check()
        return out

    def _prefix(self, query: np.ndarray, error: BaseException) -> torch.Tensor:
        """A damaged or truncated file: keep the frames that decode, one at a time, up to the first failure."""
        kept = []
        for q in query:
            self.deadline.check()
            try:
                kept.append(self.decoder.get_frame_played_at(float(q)).data)
            except _ERRORS:
                break
        if not kept:
            if self.deadline.expired:
                raise self.deadline.error(error) from error
            raise DecodeError(f"{self.path}: decoding failed: {error}") from error
        return torch.stack(kept)


def _to_rgb(frames: torch.Tensor, size: int, keep_aspect: bool = False) -> np.ndarray:  # -> (n, H, W, 3) uint8
    """(n, C, H, W) uint8 on any device -> short side = size (antialiased bilinear), centre crop unless
    keep_aspect, as numpy on the CPU."""
    height, width = frames.shape[-2:]
    new_w, new_h = resized_dims(width, height, size)
    if (new_h, new_w) != (height, width):
        if frames.device.type == "cpu":
            # uint8 channels-last is torch's fast CPU path (~40x the float one here), rounding the same way.
            frames = frames.contiguous(memory_format=torch.channels_last)
            frames = F.interpolate(frames, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
        else:
            resized = F.interpolate(frames.float(), size=(new_h, new_w), mode="bilinear", antialias=True,
                                    align_corners=False)
            frames = resized.round_().clamp_(0, 255).to(torch.uint8)
    rgb = frames.permute(0, 2, 3, 1).cpu().numpy()
    return rgb if keep_aspect else centre_crop(rgb, size, axis=1)


def decode_clip(
    path: str,
    *,
    num_frames: int,
    stride: int,
    size: int,
    start_s: float | None = None,
    rng: np.random.Generator | None = None,
    timeout_s: float | None = None,
    threads: int = 0,
    device: str = "cpu",
    seek_mode: str = "approximate",
    max_pixels: int | None = DEFAULT_MAX_DECODE_PIXELS,
) -> np.ndarray:  # (T, H, W, 3) uint8, H = W = size
    """One clip, as decode.decode_clip. seek_mode "approximate" trusts the container header (fast open);
    "exact" scans the file first (exact frame count and timestamps, slower to open)."""
    check_args(num_frames, stride, size)
    path = str(path)
    video = _Video(path, device, seek_mode, Deadline(path, timeout_s), threads, max_pixels)
    start_s = clip_start_s(path, video.info, num_frames=num_frames, stride=stride, start_s=start_s, rng=rng)
    frames = video.frames(clip_times(start_s, video.info, num_frames=num_frames, stride=stride))
    if len(frames) == 0:
        if start_s > 0:
            raise start_past_end(path, start_s, video.info)
        raise DecodeError(f"{path}: no frames decoded")
    return loop_frames(list(_to_rgb(frames, size)), num_frames, path)


def decode_eval_clips(
    path: str,
    *,
    num_frames: int,
    stride: int,
    size: int,
    num_clips: int,
    keep_aspect: bool = False,
    timeout_s: float | None = None,
    threads: int = 0,
    device: str = "cpu",
    seek_mode: str = "approximate",
    max_pixels: int | None = DEFAULT_MAX_DECODE_PIXELS,
) -> np.ndarray:  # (num_clips, T, H, W, 3) uint8
    """`num_clips` uniformly spaced clips, as decode.decode_eval_clips (one torchcodec call per clip)."""
    check_args(num_frames, stride, size)
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    path = str(path)
    video = _Video(path, device, seek_mode, Deadline(path, timeout_s), threads, max_pixels)
    clips = []
    for wanted in eval_clip_times(video.info, num_frames=num_frames, stride=stride, num_clips=num_clips):
        frames = video.frames(wanted)
        clips.append(loop_frames(list(_to_rgb(frames, size, keep_aspect)) if len(frames) else [], num_frames, path))
    return np.stack(clips)
