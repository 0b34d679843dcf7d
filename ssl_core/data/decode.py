"""Clip sampling and seeking decode with PyAV: a video file -> uint8 (T, size, size, 3) RGB clips.

A clip is `num_frames` frames taken every `stride` frames. The decoder seeks to the keyframe before the
clip, decodes forward and keeps, for each wanted time, the frame whose timestamp is nearest (timestamps,
not frame counts, so variable frame rate works). Frames are resized on the decode side (short side ->
`size`, swscale) and centre-cropped, so every clip stacks. Videos shorter than a clip are looped.
Evaluation can keep the aspect ratio instead (`keep_aspect=True`) and take several square crops along the
long side with `spatial_crops` (the multi-crop test protocol); one crop equals the centre-cropped decode.

Try it:
    python -c "from ssl_core.data.decode import decode_clip; \
print(decode_clip('data/synth/move_left/move_left_000.mp4', num_frames=8, stride=2, size=64).shape)"
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

# Evaluation clips are decoded in one forward pass when they cover at least this share of the video;
# otherwise each clip seeks on its own (a long video with few clips would decode mostly unused frames).
_SINGLE_PASS_COVERAGE = 0.5


class DecodeError(RuntimeError):
    """A file that cannot be decoded as video; the message names the file."""


@dataclass(frozen=True)
class VideoInfo:
    duration_s: float
    fps: float
    num_frames: int  # from the container index when present, else duration * fps (an estimate)
    width: int
    height: int


def _open(path: str) -> av.container.InputContainer:
    try:
        container = av.open(path)
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise DecodeError(f"{path}: cannot open as video: {e}") from e
    if not container.streams.video:
        container.close()
        raise DecodeError(f"{path}: no video stream")
    return container


def _info(path: str, container: av.container.InputContainer) -> VideoInfo:
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        raise DecodeError(f"{path}: unknown frame rate")
    fps = float(rate)
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / av.time_base
    else:
        raise DecodeError(f"{path}: unknown duration")
    num_frames = stream.frames or round(duration * fps)
    if num_frames <= 0 or stream.width <= 0 or stream.height <= 0:
        raise DecodeError(f"{path}: empty video stream ({num_frames} frames, {stream.width}x{stream.height})")
    return VideoInfo(duration_s=duration, fps=fps, num_frames=num_frames, width=stream.width, height=stream.height)


def probe(path: str) -> VideoInfo:
    with _open(str(path)) as container:
        return _info(str(path), container)


def _to_rgb(frame: av.VideoFrame, size: int, keep_aspect: bool = False) -> np.ndarray:  # -> (H, W, 3) uint8
    """Short side -> size, then a centre crop to (size, size) unless keep_aspect."""
    w, h = frame.width, frame.height
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    rgb = frame.reformat(width=new_w, height=new_h, format="rgb24").to_ndarray()
    if keep_aspect:
        return rgb
    top, left = _crop_offsets(new_h, size, 1)[0], _crop_offsets(new_w, size, 1)[0]
    return rgb[top : top + size, left : left + size]


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


def _nearest_frames(
    path: str,
    container: av.container.InputContainer,
    wanted: np.ndarray,  # (N,) float seconds from the first frame, non-decreasing
    size: int,
    seek: bool,
    keep_aspect: bool = False,
) -> list[np.ndarray]:  # a prefix of N: wanted times past the end of the video get nothing
    """For each wanted time, the RGB frame (see _to_rgb) with the nearest timestamp."""
    stream = container.streams.video[0]
    time_base: Fraction = stream.time_base
    origin = stream.start_time or 0
    fps = float(stream.average_rate or stream.guessed_rate or stream.base_rate)
    if seek:
        container.seek(origin + int(wanted[0] / time_base), stream=stream, backward=True, any_frame=False)
    out: list[np.ndarray] = []
    # The last converted frame, kept referenced so that an identity check cannot hit a recycled object.
    converted: tuple[av.VideoFrame, np.ndarray] | None = None

    def take(frame: av.VideoFrame) -> None:
        nonlocal converted
        if converted is None or converted[0] is not frame:
            converted = (frame, _to_rgb(frame, size, keep_aspect))
        out.append(converted[1])

    prev: av.VideoFrame | None = None
    prev_t = -np.inf
    i = 0
    try:
        for frame in container.decode(stream):
            t = float((frame.pts - origin) * time_base) if frame.pts is not None else prev_t + 1 / fps
            if seek and prev is None and t > wanted[0] + 0.5 / fps:
                # The demuxer landed after the clip start (imprecise index): decode from the beginning.
                container.seek(origin, stream=stream, backward=True, any_frame=False)
                return _nearest_frames(path, container, wanted, size, seek=False, keep_aspect=keep_aspect)
            while i < len(wanted) and t >= wanted[i]:
                take(prev if prev is not None and wanted[i] - prev_t < t - wanted[i] else frame)
                i += 1
            if i == len(wanted):
                break
            prev, prev_t = frame, t
    except av.FFmpegError as e:
        raise DecodeError(f"{path}: decoding failed: {e}") from e
    # Wanted times up to half a frame after the last frame still belong to it; later ones are past the end.
    while prev is not None and i < len(wanted) and wanted[i] - prev_t <= 0.5 / fps:
        take(prev)
        i += 1
    return out


def _loop(frames: list[np.ndarray], num_frames: int, path: str) -> np.ndarray:  # -> (T, H, W, 3)
    if not frames:
        raise DecodeError(f"{path}: no frames decoded")
    return np.stack([frames[i % len(frames)] for i in range(num_frames)])


def _check_args(num_frames: int, stride: int, size: int) -> None:
    if num_frames < 1 or stride < 1 or size < 1:
        raise ValueError(f"num_frames, stride and size must be >= 1, got {num_frames}, {stride}, {size}")


def decode_clip(
    path: str,
    *,
    num_frames: int,
    stride: int,
    size: int,
    start_s: float | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:  # (T, H, W, 3) uint8, H = W = size
    """One clip starting at start_s (seconds from the first frame), or at a random valid frame (using rng)."""
    _check_args(num_frames, stride, size)
    path = str(path)
    with _open(path) as container:
        info = _info(path, container)
        container.streams.video[0].thread_type = "AUTO"
        if start_s is None:
            last_start = info.num_frames - 1 - (num_frames - 1) * stride
            rng = rng if rng is not None else np.random.default_rng()
            start_s = int(rng.integers(0, last_start + 1)) / info.fps if last_start > 0 else 0.0
        elif start_s < 0:
            raise ValueError(f"{path}: start_s must be >= 0, got {start_s}")
        wanted = start_s + np.arange(num_frames) * stride / info.fps
        frames = _nearest_frames(path, container, wanted, size, seek=True)
    if not frames and start_s > 0:
        raise ValueError(f"{path}: start_s={start_s:.3f} lies past the end of the video ({info.duration_s:.3f} s)")
    return _loop(frames, num_frames, path)


def eval_clip_starts(num_video_frames: int, *, num_frames: int, stride: int, num_clips: int) -> list[int]:
    """Uniformly spaced start frames from the first to the last valid one (all 0 for a short video)."""
    last_start = max(0, num_video_frames - 1 - (num_frames - 1) * stride)
    return [round(s) for s in np.linspace(0, last_start, num_clips)]


def decode_eval_clips(
    path: str,
    *,
    num_frames: int,
    stride: int,
    size: int,
    num_clips: int,
    keep_aspect: bool = False,
) -> np.ndarray:  # (num_clips, T, H, W, 3) uint8
    """`num_clips` clips at uniformly spaced starts over the whole video (the evaluation protocol).

    H = W = size, centre-cropped; with keep_aspect the short side is `size` and nothing is cropped (feed
    `spatial_crops`)."""
    _check_args(num_frames, stride, size)
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    path = str(path)
    with _open(path) as container:
        info = _info(path, container)
        container.streams.video[0].thread_type = "AUTO"
        starts = eval_clip_starts(info.num_frames, num_frames=num_frames, stride=stride, num_clips=num_clips)
        offsets = np.arange(num_frames) * stride
        clip_frames = [(s + offsets) / info.fps for s in starts]
        if num_clips * num_frames * stride >= _SINGLE_PASS_COVERAGE * info.num_frames:
            # One forward pass over all wanted times, sorted (clips may overlap), then put back per clip.
            wanted = np.concatenate(clip_frames)
            order = np.argsort(wanted, kind="stable")
            found = _nearest_frames(path, container, wanted[order], size, seek=False, keep_aspect=keep_aspect)
            by_time: list[np.ndarray | None] = [None] * len(wanted)
            for j, frame in zip(order, found, strict=False):  # found is a prefix: past-end times stay None
                by_time[j] = frame
            clips = [
                [f for f in by_time[k * num_frames : (k + 1) * num_frames] if f is not None] for k in range(num_clips)
            ]
        else:
            clips = [_nearest_frames(path, container, w, size, seek=True, keep_aspect=keep_aspect) for w in clip_frames]
    return np.stack([_loop(c, num_frames, path) for c in clips])
