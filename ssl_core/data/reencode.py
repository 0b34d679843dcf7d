"""Re-encode one video into a training-friendly copy: short side resized, constant frame rate, short GOP, H.264.

Pure PyAV (no Ray): `workflows.reencode` runs it once per file, in parallel over a cluster.

- Size: the short side becomes `short_side`, the long side keeps the aspect ratio, both rounded to even numbers
  (yuv420p stores chroma at half resolution, so libx264 refuses odd sizes).
- Frame rate: output frame k shows the source frame whose timestamp is nearest to k / fps (timestamps, not
  frame counts, as in ssl_core.data.decode), so a variable-frame-rate source comes out constant-rate; frames
  are dropped or repeated as needed.
- Keyframes every `keyframe_interval` frames exactly (scene-cut keyframes off): a seeking decode of a clip
  never has to decode more than one GOP before the clip starts.
- Audio, subtitles and data streams are dropped.

The output is written to `dst` directly (and removed again when the input turns out bad); callers that need
atomicity write to a temporary name and rename (workflows.reencode does). Unreadable input (zero-byte, not a
video, truncated: fewer frames than the container declares) raises DecodeError naming the file.

Try it:
    python -c "from ssl_core.data.reencode import reencode; \
print(reencode('data/synth/move_left/move_left_000.mp4', '/tmp/out.mp4', short_side=64, fps=8, \
keyframe_interval=16, crf=23, preset='veryfast'))"
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.frame import PictureType

from ssl_core.data.decode_base import DecodeError

# x264 presets, fastest to smallest output; anything else is rejected before a single file is touched.
PRESETS: tuple[str, ...] = (
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo",
)
# A container that declares N frames but yields fewer than this share of them was cut short (truncated copy,
# interrupted download); the copy would silently be a shorter video, so it counts as a bad file.
_MIN_DECODED_SHARE = 0.95


@dataclass(frozen=True)
class ReencodeResult:
    src: str
    dst: str
    frames: int  # frames written
    width: int
    height: int
    fps: int
    duration_s: float  # frames / fps
    source_frames: int  # frames decoded from the source


def check_settings(*, short_side: int, fps: int, keyframe_interval: int, crf: int, preset: str) -> None:
    """ValueError naming the first bad setting (the workflow validates its config with this, too)."""
    if short_side < 2 or short_side % 2:
        raise ValueError(f"short_side must be an even number >= 2 (yuv420p), got {short_side}")
    if fps < 1:
        raise ValueError(f"fps must be >= 1, got {fps}")
    if keyframe_interval < 1:
        raise ValueError(f"keyframe_interval must be >= 1, got {keyframe_interval}")
    if not 0 <= crf <= 51:
        raise ValueError(f"crf must be in [0, 51] (libx264), got {crf}")
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")


def output_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side = short_side and the long side scaled to keep the aspect, even."""
    scale = short_side / min(width, height)

    def even(x: float) -> int:
        return max(2, 2 * round(x / 2))

    if width <= height:
        return short_side, even(height * scale)
    return even(width * scale), short_side


def _open(src: str) -> av.container.InputContainer:
    try:
        container = av.open(src)
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise DecodeError(f"{src}: cannot open as video: {e}") from e
    if not container.streams.video:
        container.close()
        raise DecodeError(f"{src}: no video stream")
    return container


def _frame_time(frame: av.VideoFrame, time_base: Fraction | None) -> float | None:
    if frame.pts is None or time_base is None:
        return None
    return float(frame.pts * time_base)


def reencode(
    src: str | Path,
    dst: str | Path,
    *,
    short_side: int,
    fps: int,
    keyframe_interval: int,
    crf: int,
    preset: str,
    threads: int = 1,
) -> ReencodeResult:
    """Re-encode `src` into the mp4 file `dst` (see the module docstring); `threads` = decoder and libx264
    threads (one per CPU the caller was given: more would oversubscribe a machine running one task per core)."""
    check_settings(short_side=short_side, fps=fps, keyframe_interval=keyframe_interval, crf=crf, preset=preset)
    src, dst = str(src), str(dst)
    rate = Fraction(fps)
    with _open(src) as inp:
        in_stream = inp.streams.video[0]
        # Decoder threads as many as the encoder's: the caller's CPU share, not every core of the machine.
        in_stream.codec_context.thread_count = max(1, threads)
        in_stream.thread_type = "AUTO"
        declared = in_stream.frames or 0
        time_base = in_stream.time_base
        src_rate = in_stream.average_rate or in_stream.guessed_rate or in_stream.base_rate
        nominal_gap = 1 / float(src_rate) if src_rate else 1 / fps
        width = height = 0
        written = decoded = 0
        origin: float | None = None
        prev: av.VideoFrame | None = None
        prev_t = -math.inf
        gaps: list[float] = []
        converted: tuple[av.VideoFrame, av.VideoFrame] | None = None  # (source frame, resized frame)

        # The output is opened lazily, at the first decoded frame: a file that yields no frame leaves no output.
        out: av.container.OutputContainer | None = None
        out_stream: av.VideoStream | None = None

        def emit(frame: av.VideoFrame) -> None:
            nonlocal converted, written
            assert out is not None and out_stream is not None
            if converted is None or converted[0] is not frame:
                # AREA averages when shrinking (no aliasing on textures); BICUBIC when enlarging.
                method = "AREA" if width < frame.width else "BICUBIC"
                converted = (frame, frame.reformat(width=width, height=height, format="yuv420p",
                                                   interpolation=method))
            resized = converted[1]
            # A repeated frame is the same object sent again with the next pts: the encoder takes its own
            # reference at encode time, so changing pts afterwards does not touch what was sent.
            resized.pts = written
            resized.time_base = 1 / rate
            # The source's frame type travels with the frame, and libx264 turns an incoming I frame into a forced
            # keyframe: clear it so that only the configured interval places keyframes.
            resized.pict_type = PictureType.NONE
            for packet in out_stream.encode(resized):
                out.mux(packet)
            written += 1

        complete = False
        try:
            for frame in inp.decode(in_stream):
                decoded += 1
                t = _frame_time(frame, time_base)
                if t is None:  # no timestamp: assume the nominal rate after the previous frame
                    t = prev_t + nominal_gap if prev is not None else 0.0
                if origin is None:
                    # Time 0 of the copy is the first frame, whatever the source's start time or edit list.
                    origin = t
                    width, height = output_size(frame.width, frame.height, short_side)
                    out = av.open(dst, "w", format="mp4")
                    out_stream = out.add_stream("libx264", rate=rate)
                    out_stream.width, out_stream.height, out_stream.pix_fmt = width, height, "yuv420p"
                    out_stream.codec_context.gop_size = keyframe_interval
                    # scenecut=0 and min-keyint=keyint: keyframes exactly every keyframe_interval frames, none
                    # in between, so the seek cost is bounded and known.
                    out_stream.options = {
                        "crf": str(crf),
                        "preset": preset,
                        "threads": str(max(1, threads)),
                        "x264-params": f"scenecut=0:keyint={keyframe_interval}:min-keyint={keyframe_interval}",
                    }
                t -= origin
                if prev is not None and t <= prev_t:
                    continue  # duplicate or backwards timestamp (broken muxing): keep the first frame shown
                if prev is not None:
                    gaps.append(t - prev_t)
                # Every output time before this frame gets prev or this frame, whichever is nearer in time.
                while written / fps < t and prev is not None:
                    want = written / fps
                    emit(prev if want - prev_t < t - want else frame)
                prev, prev_t = frame, t
            if prev is None:
                raise DecodeError(f"{src}: no frames decoded")
            if declared and decoded < _MIN_DECODED_SHARE * declared:
                raise DecodeError(f"{src}: truncated: decoded {decoded} of the {declared} frames the container "
                                  "declares")
            # The last frame lasts as long as the typical gap; output frames up to the end of the video.
            last_duration = float(np.median(gaps)) if gaps else nominal_gap
            total = max(1, round((prev_t + last_duration) * fps))
            while written < total:
                emit(prev)
            assert out is not None and out_stream is not None
            for packet in out_stream.encode():
                out.mux(packet)
            complete = True
        except av.FFmpegError as e:
            raise DecodeError(f"{src}: decoding failed: {e}") from e
        finally:
            if out is not None:
                if complete:
                    out.close()
                else:  # never leave a partial copy behind that could pass for a video
                    with contextlib.suppress(av.FFmpegError, OSError):
                        out.close()
                    Path(dst).unlink(missing_ok=True)
    return ReencodeResult(src=src, dst=dst, frames=written, width=width, height=height, fps=fps,
                          duration_s=written / fps, source_frames=decoded)
