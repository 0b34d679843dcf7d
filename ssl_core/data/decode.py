"""Clip sampling and seeking decode with PyAV: a video file -> uint8 (T, size, size, 3) RGB clips.

A clip is `num_frames` frames taken every `stride` frames. The decoder seeks to the keyframe before the
clip, decodes forward and keeps, for each wanted time, the frame whose timestamp is nearest (timestamps,
not frame counts, so variable frame rate works). Frames are resized on the decode side (short side ->
`size`, swscale) and centre-cropped, so every clip stacks. Videos shorter than a clip are looped.
Evaluation can keep the aspect ratio instead (`keep_aspect=True`) and take several square crops along the
long side with `spatial_crops` (the multi-crop test protocol); one crop equals the centre-cropped decode.

Frames are turned upright by the stream's display matrix (phone videos: rotation metadata), so sizes and
crops refer to the displayed picture. Grayscale and odd-sized sources come out as RGB like any other.
Every unreadable file raises `DecodeError` naming it; a decode past `timeout_s` raises `DecodeTimeout`; a video whose
frames exceed `max_pixels` (data.max_decode_pixels) is refused with `DecodeError` from its header, before decoding.

`ssl_core.data.decoders.get_decoder(name)` returns this module ("pyav") or the optional torchcodec backend
("torchcodec", ssl_core/data/decode_torchcodec.py); both take their clip timing from ssl_core/data/decode_base.py.

Try it:
    python -c "from ssl_core.data.decode import decode_clip; \
print(decode_clip('data/synth/move_left/move_left_000.mp4', num_frames=8, stride=2, size=64).shape)"
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

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

# Evaluation clips are decoded in one forward pass when they cover at least this share of the video;
# otherwise each clip seeks on its own (a long video with few clips would decode mostly unused frames).
_SINGLE_PASS_COVERAGE = 0.5


def _open(path: str, deadline: Deadline | None = None) -> av.container.InputContainer:
    timeout = deadline.timeout_s if deadline is not None else None
    try:
        # `timeout` bounds each blocking open / read (PyAV's interrupt callback), not the whole decode.
        container = av.open(path, timeout=timeout)
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        if deadline is not None and deadline.expired:
            raise deadline.error(e) from e
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
    """Duration, rate, frame count and the DISPLAYED width x height (swapped for a 90-degree rotation)."""
    path = str(path)
    with _open(path) as container:
        info = _info(path, container)
        # PyAV 18 exposes the display matrix on frames, not streams: look at the first frame.
        try:
            frame = next(container.decode(container.streams.video[0]), None)
        except av.FFmpegError as e:
            raise DecodeError(f"{path}: decoding failed: {e}") from e
    if frame is None:
        raise DecodeError(f"{path}: no frames decoded")
    if quarter_turns(frame.rotation) % 2:
        info = VideoInfo(info.duration_s, info.fps, info.num_frames, width=info.height, height=info.width)
    return info


def quarter_turns(rotation_deg: float | None) -> int:
    """Display-matrix rotation (degrees counter-clockwise) -> counter-clockwise quarter turns in 0..3
    (rounded to the nearest quarter; np.rot90(image, k) applies them)."""
    return round((rotation_deg or 0) / 90) % 4


def _to_rgb(frame: av.VideoFrame, size: int, keep_aspect: bool = False) -> np.ndarray:  # -> (H, W, 3) uint8
    """Upright (display matrix), short side -> size, then a centre crop to (size, size) unless keep_aspect.

    Any source pixel format (yuv, gray, ...) and odd dimensions come out as RGB of the exact size."""
    turns = quarter_turns(frame.rotation)
    new_w, new_h = resized_dims(frame.width, frame.height, size)  # a quarter turn only swaps the two
    rgb = frame.reformat(width=new_w, height=new_h, format="rgb24").to_ndarray()
    if turns:
        rgb = np.rot90(rgb, k=turns)  # np.rot90 turns counter-clockwise, as the display matrix angle does
    return rgb if keep_aspect else centre_crop(rgb, size)


def _nearest_frames(
    path: str,
    container: av.container.InputContainer,
    wanted: np.ndarray,  # (N,) float seconds from the first frame, non-decreasing
    size: int,
    seek: bool,
    keep_aspect: bool = False,
    deadline: Deadline | None = None,
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
            if deadline is not None:
                deadline.check()  # between frames: one hung libav call is not interrupted (see Deadline)
            t = float((frame.pts - origin) * time_base) if frame.pts is not None else prev_t + 1 / fps
            if seek and prev is None and t > wanted[0] + 0.5 / fps:
                # The demuxer landed after the clip start (imprecise index): decode from the beginning.
                container.seek(origin, stream=stream, backward=True, any_frame=False)
                return _nearest_frames(path, container, wanted, size, seek=False, keep_aspect=keep_aspect,
                                       deadline=deadline)
            while i < len(wanted) and t >= wanted[i]:
                take(prev if prev is not None and wanted[i] - prev_t < t - wanted[i] else frame)
                i += 1
            if i == len(wanted):
                break
            prev, prev_t = frame, t
    except av.FFmpegError as e:
        if deadline is not None and deadline.expired:  # a read interrupted by av.open(timeout=...)
            raise deadline.error(e) from e
        raise DecodeError(f"{path}: decoding failed: {e}") from e
    # Wanted times up to half a frame after the last frame still belong to it; later ones are past the end.
    while prev is not None and i < len(wanted) and wanted[i] - prev_t <= 0.5 / fps:
        take(prev)
        i += 1
    return out


def _set_threads(stream: av.video.stream.VideoStream, threads: int) -> None:
    if threads < 0:
        raise ValueError(f"threads must be >= 0, got {threads}")
    stream.thread_count = threads
    # Frame threading delays output by one frame per thread: a loss for a short clip with one thread.
    stream.thread_type = "NONE" if threads == 1 else "AUTO"


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
    max_pixels: int | None = DEFAULT_MAX_DECODE_PIXELS,
) -> np.ndarray:  # (T, H, W, 3) uint8, H = W = size
    """One clip starting at start_s (seconds from the first frame), or at a random valid frame (using rng).

    timeout_s: DecodeTimeout once the decode of this file has run longer (None: no limit).
    threads: FFmpeg decode threads; 0 lets FFmpeg choose (one process alone), 1 suits a decode task that
    already has its own core (measured on 128 px H.264: single-threaded decodes ~30 % more clips per core).
    max_pixels: DecodeError, before any frame is decoded, for frames of more pixels (None: no cap)."""
    check_args(num_frames, stride, size)
    path = str(path)
    deadline = Deadline(path, timeout_s)
    with _open(path, deadline) as container:
        info = _info(path, container)
        check_resolution(path, info, max_pixels)
        _set_threads(container.streams.video[0], threads)
        start_s = clip_start_s(path, info, num_frames=num_frames, stride=stride, start_s=start_s, rng=rng)
        wanted = clip_times(start_s, info, num_frames=num_frames, stride=stride)
        frames = _nearest_frames(path, container, wanted, size, seek=True, deadline=deadline)
    if not frames and start_s > 0:
        raise start_past_end(path, start_s, info)
    return loop_frames(frames, num_frames, path)


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
    max_pixels: int | None = DEFAULT_MAX_DECODE_PIXELS,
) -> np.ndarray:  # (num_clips, T, H, W, 3) uint8
    """`num_clips` clips at uniformly spaced starts over the whole video (the evaluation protocol).

    H = W = size, centre-cropped; with keep_aspect the short side is `size` and nothing is cropped (feed
    `spatial_crops`). timeout_s bounds the whole file (all clips); threads and max_pixels are as in decode_clip."""
    check_args(num_frames, stride, size)
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    path = str(path)
    deadline = Deadline(path, timeout_s)
    with _open(path, deadline) as container:
        info = _info(path, container)
        check_resolution(path, info, max_pixels)
        _set_threads(container.streams.video[0], threads)
        clip_frames = eval_clip_times(info, num_frames=num_frames, stride=stride, num_clips=num_clips)
        if num_clips * num_frames * stride >= _SINGLE_PASS_COVERAGE * info.num_frames:
            # One forward pass over all wanted times, sorted (clips may overlap), then put back per clip.
            wanted = np.concatenate(clip_frames)
            order = np.argsort(wanted, kind="stable")
            found = _nearest_frames(path, container, wanted[order], size, seek=False, keep_aspect=keep_aspect,
                                    deadline=deadline)
            by_time: list[np.ndarray | None] = [None] * len(wanted)
            for j, frame in zip(order, found, strict=False):  # found is a prefix: past-end times stay None
                by_time[j] = frame
            clips = [
                [f for f in by_time[k * num_frames : (k + 1) * num_frames] if f is not None] for k in range(num_clips)
            ]
        else:
            clips = [
                _nearest_frames(path, container, w, size, seek=True, keep_aspect=keep_aspect, deadline=deadline)
                for w in clip_frames
            ]
    return np.stack([loop_frames(c, num_frames, path) for c in clips])
