"""What both decode backends share (ssl_core/data/decode.py: PyAV, ssl_core/data/decode_torchcodec.py), so that they
pick the same frames and fail the same way: the errors, the per-file Deadline, VideoInfo, the resolution cap
(data.max_decode_pixels), the clip timing (random / given start, uniformly spaced eval clips, looping of short videos)
and the resize / crop geometry.

Try it:
    python -c "from ssl_core.data.decode_base import eval_clip_starts; \
print(eval_clip_starts(100, num_frames=8, stride=2, num_clips=3))"
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


class DecodeError(RuntimeError):
    """A file that cannot be decoded as video; the message names the file."""


class DecodeTimeout(DecodeError):
    """A decode that ran past its time limit; the message names the file and the limit."""


# data.max_decode_pixels' default: frames up to 4096 x 4096 (16.8 MP) pass, which covers DCI 4K, UHD, vertical 4K and
# 5K; 8K (33 MP) and the like are refused. A decoder holds several full-size frames, so its memory follows the
# resolution, not the file size: a 194 KB 8192 x 8192 H.264 file took 575 MB to decode.
DEFAULT_MAX_DECODE_PIXELS = 4096 * 4096


class Deadline:
    """A per-file time limit, checked between frames (and between backend calls).

    Honest limits: the check runs between frames, so a single libav call that hangs (a decoder stuck on a
    pathological frame) is not interrupted here. For a read that stalls (a network filesystem), PyAV's own
    `av.open(timeout=...)` interrupt callback ends it; that error is reported as the timeout too."""

    clock = staticmethod(time.monotonic)

    def __init__(self, path: str, timeout_s: float | None) -> None:
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0 or None, got {timeout_s}")
        self.path, self.timeout_s = path, timeout_s
        self.start = self.clock()

    @property
    def expired(self) -> bool:
        return self.timeout_s is not None and self.clock() - self.start > self.timeout_s

    def error(self, cause: BaseException | None = None) -> DecodeTimeout:
        elapsed = self.clock() - self.start
        why = f" ({cause})" if cause is not None else ""
        return DecodeTimeout(f"{self.path}: decode timed out: {elapsed:.2f} s > timeout_s={self.timeout_s} s{why}")

    def check(self) -> None:
        if self.expired:
            raise self.error()


@dataclass(frozen=True)
class VideoInfo:
    duration_s: float
    fps: float
    num_frames: int  # from the container index when present, else duration * fps (an estimate)
    width: int
    height: int


def check_resolution(path: str, info: VideoInfo, max_pixels: int | None) -> None:
    """DecodeError when the stream header's width x height exceeds max_pixels (None: no cap). Called after the
    container is opened and before any frame is decoded."""
    if max_pixels is not None and info.width * info.height > max_pixels:
        raise DecodeError(f"{path}: {info.width}x{info.height} frames ({info.width * info.height / 1e6:.1f} MP) exceed "
                          f"data.max_decode_pixels={max_pixels} ({max_pixels / 1e6:.1f} MP): not decoded")


def resized_dims(width: int, height: int, size: int) -> tuple[int, int]:
    """(new_w, new_h) with the short side = size and the aspect kept (never below size, odd sizes too)."""
    scale = size / min(width, height)
    return max(size, round(width * scale)), max(size, round(height * scale))


def centre_crop(image: np.ndarray, size: int, axis: int = 0) -> np.ndarray:
    """The centre (size, size) window over axes (axis, axis + 1): (H, W, ...) by default."""
    h, w = image.shape[axis], image.shape[axis + 1]
    top, left = _crop_offsets(h, size, 1)[0], _crop_offsets(w, size, 1)[0]
    index = (slice(None),) * axis + (slice(top, top + size), slice(left, left + size))
    return image[index]


def _crop_offsets(length: int, side: int, num_crops: int) -> list[int]:
    """Start offsets of `num_crops` windows of `side` evenly spaced over `length` (one crop: the centre)."""
    if num_crops == 1:
        return [(length - side) // 2]
    # Floor division keeps the middle of an odd count on the centre crop's offset.
    return [(length - side) * i // (num_crops - 1) for i in range(num_crops)]


def spatial_crops(
    clips: np.ndarray,  # (N, T, H, W, C)
    num_crops: int,
) -> np.ndarray:  # (N, num_crops, T, S, S, C), S = min(H, W)
    """`num_crops` square crops of side = the short side, evenly spaced along the long side (left to right,
    or top to bottom), the first and last touching the edges. One crop is the centre crop."""
    if clips.ndim != 5:
        raise ValueError(f"clips must be (N, T, H, W, C), got shape {clips.shape}")
    if num_crops < 1:
        raise ValueError(f"num_crops must be >= 1, got {num_crops}")
    h, w = clips.shape[2:4]
    side = min(h, w)
    if w >= h:
        crops = [clips[:, :, :, x : x + side] for x in _crop_offsets(w, side, num_crops)]
    else:
        crops = [clips[:, :, y : y + side] for y in _crop_offsets(h, side, num_crops)]
    return np.stack(crops, axis=1)


def loop_frames(frames: list[np.ndarray], num_frames: int, path: str) -> np.ndarray:  # -> (T, H, W, 3)
    """Stack `num_frames` frames, repeating the decoded ones from the start when the video is short."""
    if not frames:
        raise DecodeError(f"{path}: no frames decoded")
    return np.stack([frames[i % len(frames)] for i in range(num_frames)])


def check_args(num_frames: int, stride: int, size: int) -> None:
    if num_frames < 1 or stride < 1 or size < 1:
        raise ValueError(f"num_frames, stride and size must be >= 1, got {num_frames}, {stride}, {size}")


def clip_start_s(
    path: str,
    info: VideoInfo,
    *,
    num_frames: int,
    stride: int,
    start_s: float | None,
    rng: np.random.Generator | None,
) -> float:
    """The training clip's start in seconds from the first frame: start_s as given, or a random valid frame."""
    if start_s is None:
        last_start = info.num_frames - 1 - (num_frames - 1) * stride
        rng = rng if rng is not None else np.random.default_rng()
        return int(rng.integers(0, last_start + 1)) / info.fps if last_start > 0 else 0.0
    if start_s < 0:
        raise ValueError(f"{path}: start_s must be >= 0, got {start_s}")
    return float(start_s)


def clip_times(start_s: float, info: VideoInfo, *, num_frames: int, stride: int) -> np.ndarray:  # (T,) seconds
    """The wanted times of one clip: `num_frames` frames every `stride` frames from start_s."""
    return start_s + np.arange(num_frames) * stride / info.fps


def eval_clip_times(info: VideoInfo, *, num_frames: int, stride: int, num_clips: int) -> list[np.ndarray]:
    """The wanted times (seconds from the first frame) of each of the `num_clips` uniformly spaced clips."""
    starts = eval_clip_starts(info.num_frames, num_frames=num_frames, stride=stride, num_clips=num_clips)
    offsets = np.arange(num_frames) * stride
    return [(s + offsets) / info.fps for s in starts]


def start_past_end(path: str, start_s: float, info: VideoInfo) -> ValueError:
    return ValueError(f"{path}: start_s={start_s:.3f} lies past the end of the video ({info.duration_s:.3f} s)")


def eval_clip_starts(num_video_frames: int, *, num_frames: int, stride: int, num_clips: int) -> list[int]:
    """Uniformly spaced start frames from the first to the last valid one (all 0 for a short video)."""
    last_start = max(0, num_video_frames - 1 - (num_frames - 1) * stride)
    return [round(s) for s in np.linspace(0, last_start, num_clips)]


