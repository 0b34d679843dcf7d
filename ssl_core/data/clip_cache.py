"""Decoded-clip cache: every video decoded ONCE at the training resolution, clips then cut by slicing.

On a few CPU cores, decoding H.264 for every training clip is a large share of each step, although a run
visits each video many times. The cache decodes every frame of every video once (short side -> `size`,
centre crop, upright: exactly `decode._to_rgb(frame, size)`) into one uint8 memory-mapped file, and serves
`decode_clip` / `decode_eval_clips` with the same arguments and the same clips for the same seeds as
`ssl_core.data.decode` (the frame choice below replays the decoder's nearest-timestamp rule on the frame
timestamps stored at build time). It is a drop-in decode backend: `get_decoder(...)` or a `ClipCache`.

Layout, under a root folder (data.cache_dir, default <output.storage>/.clip_cache):
    <root>/<key>/frames.u8    uint8 (total_frames, size, size, 3), videos one after another
    <root>/<key>/times.npy    float64 (total_frames,): each frame's timestamp (s from the first frame)
    <root>/<key>/index.json   path -> offset, frame count, rate, metadata frame count; unreadable path -> reason;
                              the byte size and a crc32 per 16 MiB block of frames.u8 and times.npy
The key hashes (format version, PyAV version, size, every path with its file size and mtime): a changed
dataset gets a new cache, an unchanged one is opened, not rebuilt. A cache is built in a temporary folder and
renamed into place, so a crash or a concurrent builder never leaves a half cache under <key>; a temporary
folder whose builder is gone (killed) is removed by the next build, open or run.

Opening checks the files against index.json (sizes, then every block's crc32: ~0.5 s per GB, measured in
docs/reliability.md): a truncated, zero-filled or overwritten file, or an invalid index, is a CacheDamaged error
naming the file. With data.cache = auto a damaged cache, or a build that fails to write (a full disk), makes the
run decode the videos instead (the report line says why); with `on` it stops with that one line.

Try it (builds data/synth's cache at 72 px into /tmp/clip_cache, then reads a clip from it):
    python -m ssl_core.data.clip_cache data/synth --size 72 --cache-dir /tmp/clip_cache
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import zlib
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import av
import numpy as np

from ssl_core.data import decode
from ssl_core.data.cache_errors import CacheBuildFailed, CacheDamaged, CacheError, CacheOutdated, CacheTooLarge
from ssl_core.data.decode_base import (
    DEFAULT_MAX_DECODE_PIXELS,
    Deadline,
    DecodeError,
    DecodeTimeout,
    VideoInfo,
    check_args,
    check_resolution,
    clip_start_s,
    clip_times,
    eval_clip_times,
    start_past_end,
)
from ssl_core.data.decoders import get_decoder
from ssl_core.data.manifest import load_manifest

if TYPE_CHECKING:  # the Ray decode tasks import this module: keep torch (via the config) out of them
    from ssl_core.config import Config

log = logging.getLogger("vidssl.data")

# Bump when the layout or the decode-side processing changes: old caches then get a new key (not misread).
FORMAT_VERSION = 1
FRAMES_FILE, TIMES_FILE, INDEX_FILE = "frames.u8", "times.npy", "index.json"
RAW_TIMES = "times.f64"  # appended while building, saved as times.npy at the end
GB = 1e9  # data.cache_budget_gb counts decimal gigabytes
# Checksums per block: a mismatch names its bytes, and the blocks are checked by several threads at once
# (zlib.crc32 releases the GIL). crc32, not a cryptographic digest: it guards against damage, not an attacker,
# and is 2-5x faster here than sha256 or blake2b, so opening a cache stays well under a second per GB.
BLOCK_BYTES = 16 << 20
CHECKSUM = "crc32"


# --- key and estimate ------------------------------------------------------------------------------


def cache_key(paths: Iterable[str], size: int) -> str:
    """Folder name of the cache of these videos at this size: any changed, added or removed file (size or
    mtime), another size, PyAV version or format version gives another key."""
    entries = []
    for path in sorted(set(map(str, paths))):
        try:
            st = os.stat(path)
            entries.append([path, st.st_size, st.st_mtime_ns])
        except OSError as e:  # a missing file is part of the key too: it becomes readable -> a new cache
            entries.append([path, "missing", type(e).__name__])
    blob = json.dumps([FORMAT_VERSION, av.__version__, int(size), entries]).encode()
    return f"s{int(size)}-{hashlib.sha256(blob).hexdigest()[:24]}"


def frame_bytes(size: int) -> int:
    return size * size * 3


def _probe_frames(path: str, timeout_s: float | None) -> int:
    """The stream's frame count from the container metadata (no decode): 0 for an unreadable file."""
    try:
        with decode._open(path, Deadline(path, timeout_s)) as container:
            return decode._info(path, container).num_frames
    except DecodeError:
        return 0


def estimate_bytes(paths: Sequence[str], size: int, *, workers: int | None = None,
                   timeout_s: float | None = None, stop_above: float | None = None) -> int:
    """Bytes of frames.u8 for these videos, from each stream's metadata frame count (an estimate: a stream
    without a frame count uses duration x rate, and unreadable files count 0). With stop_above, probing
    stops once the sum passes it (a large dataset is off in seconds, not after opening every file): the
    result is then a lower bound above stop_above."""
    pool = ThreadPoolExecutor(_workers(workers))
    total = 0
    try:
        for count in pool.map(lambda p: _probe_frames(p, timeout_s), sorted(set(map(str, paths)))):
            total += count * frame_bytes(size)
            if stop_above is not None and total > stop_above:
                break
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return total


def _workers(workers: int | None) -> int:
    return max(1, workers if workers is not None else (os.cpu_count() or 1))


# --- frame choice (the decoder's nearest-timestamp rule, on stored timestamps) ------------------------


def select_frames(times: np.ndarray, wanted: np.ndarray, fps: float, monotonic: bool = True) -> np.ndarray:
    """Indices of the frames `decode._nearest_frames` returns for `wanted` (non-decreasing seconds) when it
    decodes the video from its first frame: per wanted time, the first frame at or after it unless the frame
    before is strictly nearer; past the last frame only within half a frame; a prefix of `wanted` (times
    past the end get nothing). `times` are the decoded frames' timestamps in decode order."""
    n = len(times)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    if not monotonic:  # out-of-order timestamps (rare, broken muxing): replay the decoder's loop exactly
        return _select_sequential(times, wanted, fps)
    j = np.searchsorted(times, wanted, side="left")  # first frame with t >= w (the decoder's `t >= wanted[i]`)
    inside = j < n
    at = np.minimum(j, n - 1)
    before = np.maximum(j - 1, 0)
    # Same float expression as the decoder: `wanted[i] - prev_t < t - wanted[i]` picks the earlier frame.
    use_before = inside & (j > 0) & (wanted - times[before] < times[at] - wanted)
    chosen = np.where(use_before, j - 1, at)
    tail = ~inside & (wanted - times[-1] <= 0.5 / fps)  # up to half a frame after the last one
    ok = inside | tail
    stop = int(np.argmin(ok)) if not ok.all() else len(ok)
    return chosen[:stop].astype(np.int64)


def _select_sequential(times: np.ndarray, wanted: np.ndarray, fps: float) -> np.ndarray:
    out: list[int] = []
    prev, prev_t, i = -1, -np.inf, 0
    for j, t in enumerate(times):
        while i < len(wanted) and t >= wanted[i]:
            out.append(prev if prev >= 0 and wanted[i] - prev_t < t - wanted[i] else j)
            i += 1
        if i == len(wanted):
            break
        prev, prev_t = j, t
    while prev >= 0 and i < len(wanted) and wanted[i] - prev_t <= 0.5 / fps:
        out.append(prev)
        i += 1
    return np.asarray(out, dtype=np.int64)


def _looped(found: np.ndarray, num_frames: int, path: str) -> np.ndarray:
    """decode_base.loop_frames on indices: repeat the found frames from the start when the video is short."""
    if len(found) == 0:
        raise DecodeError(f"{path}: no frames decoded")
    return found[np.arange(num_frames) % len(found)]


# --- the cache -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Video:
    offset: int
    count: int  # frames decoded (and stored)
    info: VideoInfo  # as decode._info reports it: clip starts are drawn over info.num_frames, like the decoder
    monotonic: bool


class ClipCache:
    """An opened, complete cache: decode_clip / decode_eval_clips as in ssl_core.data.decode, from memory.

    Reading is a few fancy-indexed rows of a read-only memory map (the OS page cache holds the file once
    per machine, shared by every process that opens it). Videos not in the cache, another `size` and
    keep_aspect=True go to the `fallback` decoder ("pyav" | "torchcodec"), so any call still works.

    Opening checks the files against index.json: CacheDamaged (one line naming the file) for an invalid index,
    a file of another size, or (check_sums) a block whose crc32 differs; CacheOutdated for a cache of an
    older vidssl, whose index has no checksums."""

    def __init__(self, directory: str | Path, *, fallback: str = "pyav", check_sums: bool = True) -> None:
        self.directory = Path(directory)
        index = _read_index(self.directory)
        try:
            self.size: int = int(index["size"])
            self.total_frames: int = int(index["total_frames"])
            self.build_s: float = float(index.get("build_s", 0.0))
            self.videos: dict[str, _Video] = {
                p: _Video(v["offset"], v["count"], VideoInfo(**v["info"]), v["monotonic"])
                for p, v in index["videos"].items()
            }
            self.unreadable: dict[str, dict[str, str]] = index["unreadable"]
            files = {name: (int(index["files"][name]["bytes"]), [int(c) for c in index["files"][name]["sums"]])
                     for name in (FRAMES_FILE, TIMES_FILE)}
            block = int(index["checksum"]["block_bytes"])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CacheDamaged(_damaged(self.directory / INDEX_FILE,
                                        f"an invalid entry ({type(e).__name__}: {e})")) from None
        outside = [p for p, v in self.videos.items() if v.offset < 0 or v.count < 1
                   or v.offset + v.count > self.total_frames]
        if outside:
            raise CacheDamaged(_damaged(self.directory / INDEX_FILE, f"frames of {outside[0]} outside the "
                                        f"{self.total_frames} frames (inconsistent)"))
        if files[FRAMES_FILE][0] != self.nbytes:
            raise CacheDamaged(_damaged(self.directory / INDEX_FILE, f"{self.total_frames} frames of {self.size} px "
                                        f"but {files[FRAMES_FILE][0]} bytes of {FRAMES_FILE} (inconsistent)"))
        for name, (nbytes, sums) in files.items():
            _check_file(self.directory / name, nbytes, sums if check_sums else None, block)
        shape = (self.total_frames, self.size, self.size, 3)
        if self.total_frames == 0:  # every video unreadable: np.memmap cannot map an empty file
            self.frames: np.ndarray = np.empty(shape, dtype=np.uint8)
            self.times: np.ndarray = np.empty(0)
        else:
            self.frames = np.memmap(self.directory / FRAMES_FILE, dtype=np.uint8, mode="r", shape=shape)
            try:
                self.times = np.load(self.directory / TIMES_FILE, mmap_mode="r")
            except ValueError as e:  # a header the checksums did not cover (check_sums=False)
                raise CacheDamaged(_damaged(self.directory / TIMES_FILE, f"unreadable ({e})")) from None
            if self.times.shape != (self.total_frames,):
                raise CacheDamaged(_damaged(self.directory / TIMES_FILE, f"{self.times.shape} timestamps, "
                                            f"expected ({self.total_frames},)"))
        self.fallback_name = fallback
        self.built = False  # set by build_cache when this call decoded the videos
        self.rebuilt: str | None = None  # set by build_cache: why it replaced an existing cache

    @property
    def nbytes(self) -> int:
        return self.total_frames * frame_bytes(self.size)

    def __contains__(self, path: object) -> bool:
        return str(path) in self.videos or str(path) in self.unreadable

    def _fallback(self) -> ModuleType:
        return get_decoder(self.fallback_name)

    def _video(self, path: str) -> _Video | None:
        """The cached video, None when it is not in the cache; raises the stored error of an unreadable one."""
        bad = self.unreadable.get(path)
        if bad is not None:
            # The stored message comes from the decoder, so it already names the file; say it is cached.
            error = DecodeTimeout if bad["error"] == "DecodeTimeout" else DecodeError
            raise error(f"{bad['message']} (recorded by the clip cache {self.directory.name})")
        return self.videos.get(path)

    def _read(self, video: _Video, indices: np.ndarray) -> np.ndarray:
        # Fancy indexing copies: the caller owns a writable array, the memory map stays read-only.
        return np.asarray(self.frames[video.offset + indices])

    def decode_clip(
        self,
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
    ) -> np.ndarray:  # (T, size, size, 3) uint8
        """decode.decode_clip's clip (same start draw from rng, same frames) cut from the cache. max_pixels applies
        to the videos the fallback decodes; the cached ones met the cap of the build (data.max_decode_pixels)."""
        check_args(num_frames, stride, size)
        path = str(path)
        _check_limits(path, timeout_s, threads)
        video = self._video(path) if size == self.size else None
        if video is None:
            return self._fallback().decode_clip(path, num_frames=num_frames, stride=stride, size=size,
                                                start_s=start_s, rng=rng, timeout_s=timeout_s, threads=threads,
                                                max_pixels=max_pixels)
        info = video.info
        start_s = clip_start_s(path, info, num_frames=num_frames, stride=stride, start_s=start_s, rng=rng)
        wanted = clip_times(start_s, info, num_frames=num_frames, stride=stride)
        found = select_frames(self._times(video), wanted, info.fps, video.monotonic)
        if len(found) == 0 and start_s > 0:
            raise start_past_end(path, start_s, info)
        return self._read(video, _looped(found, num_frames, path))

    def decode_eval_clips(
        self,
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
    ) -> np.ndarray:  # (num_clips, T, size, size, 3) uint8
        """decode.decode_eval_clips' clips cut from the cache (keep_aspect: the fallback decoder, as the
        cache holds centre crops only)."""
        check_args(num_frames, stride, size)
        if num_clips < 1:
            raise ValueError(f"num_clips must be >= 1, got {num_clips}")
        path = str(path)
        _check_limits(path, timeout_s, threads)
        video = self._video(path) if size == self.size and not keep_aspect else None
        if video is None:
            return self._fallback().decode_eval_clips(path, num_frames=num_frames, stride=stride, size=size,
                                                      num_clips=num_clips, keep_aspect=keep_aspect,
                                                      timeout_s=timeout_s, threads=threads, max_pixels=max_pixels)
        times = self._times(video)
        clips = [
            _looped(select_frames(times, w, video.info.fps, video.monotonic), num_frames, path)
            for w in eval_clip_times(video.info, num_frames=num_frames, stride=stride, num_clips=num_clips)
        ]
        return self._read(video, np.stack(clips))

    def _times(self, video: _Video) -> np.ndarray:
        return np.asarray(self.times[video.offset : video.offset + video.count])


def _damaged(path: Path, what: str) -> str:
    return f"clip cache file {path}: {what}; delete {path.parent} to rebuild the cache, or set data.cache=off"


def _read_index(directory: Path) -> dict[str, Any]:
    """index.json, checked to be this format's and to carry checksums."""
    path = directory / INDEX_FILE
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CacheDamaged(_damaged(path, f"not valid JSON ({e.msg} at character {e.pos}: truncated?)")) from None
    except (OSError, UnicodeDecodeError) as e:
        raise CacheDamaged(_damaged(path, f"unreadable ({e})")) from None
    if not isinstance(index, dict):
        raise CacheDamaged(_damaged(path, f"not a cache index (a JSON {type(index).__name__})"))
    if index.get("version") != FORMAT_VERSION:
        raise CacheDamaged(_damaged(path, f"cache format {index.get('version')!r}, expected {FORMAT_VERSION}"))
    if "files" not in index or "checksum" not in index:
        raise CacheOutdated(f"clip cache {directory} was built by an older vidssl: its {INDEX_FILE} has no "
                            "checksums to check the frames against")
    checksum = index["checksum"]
    if not isinstance(checksum, dict) or checksum.get("algorithm") != CHECKSUM:
        raise CacheDamaged(_damaged(path, f"checksum {checksum!r}, expected {CHECKSUM}"))
    return index


def _check_file(path: Path, nbytes: int, sums: list[int] | None, block: int) -> None:
    """The file has `nbytes` bytes and (unless sums is None) each `block` bytes' crc32 in `sums`; the blocks are
    read through a memory map by a few threads (it also brings the file into the page cache the run reads)."""
    try:
        have = path.stat().st_size
    except OSError as e:
        raise CacheDamaged(_damaged(path, f"unreadable ({e.strerror or e})")) from None
    if have != nbytes:
        raise CacheDamaged(_damaged(path, f"{have} bytes, {INDEX_FILE} records {nbytes} (truncated or replaced)"))
    if sums is None:
        return
    starts = range(0, nbytes, block)
    if len(starts) != len(sums) or block < 1:
        raise CacheDamaged(_damaged(path.parent / INDEX_FILE, f"{len(sums)} checksums for {len(starts)} blocks of "
                                    f"{path.name} (inconsistent)"))
    if nbytes == 0:
        return
    data = np.memmap(path, dtype=np.uint8, mode="r")
    with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
        got = list(pool.map(lambda a: zlib.crc32(data[a : a + block]), starts))
    bad = [a for a, g, want in zip(starts, got, sums, strict=True) if g != want]
    if bad:
        raise CacheDamaged(_damaged(path, f"{len(bad)} of {len(sums)} blocks of {block} bytes do not match their "
                                    f"checksums (the first at byte {bad[0]}: overwritten or damaged)"))


def _check_limits(path: str, timeout_s: float | None, threads: int) -> None:
    """The decoder's argument checks (a cached read takes microseconds, so neither limit applies to it)."""
    Deadline(path, timeout_s)
    if threads < 0:
        raise ValueError(f"threads must be >= 0, got {threads}")


# One opened cache per (directory, fallback) per process: the Ray decode tasks of a worker process reuse it.
_OPENED: dict[tuple[str, str], ClipCache] = {}


def open_cache(directory: str | Path, *, fallback: str = "pyav") -> ClipCache:
    """The cache in `directory`, opened once per process. A directory this machine cannot see is an error
    (not a skipped video): on a multi-node cluster data.cache_dir must be shared storage.

    Used by the decode tasks of a run whose driver has just opened the cache with its checksums checked
    (cache_for_config): here the index and the file sizes are checked, not every block again in every process."""
    key = (str(directory), fallback)
    if key not in _OPENED:
        if not (Path(directory) / INDEX_FILE).is_file():
            raise FileNotFoundError(
                f"clip cache {directory} is not readable on this node ({os.uname().nodename}): on a multi-node "
                "cluster data.cache_dir must be storage shared by every node at the same path")
        if len(_OPENED) >= 4:  # a long-lived worker process of several runs: keep only recent caches open
            _OPENED.clear()
        _OPENED[key] = ClipCache(directory, fallback=fallback, check_sums=False)
    return _OPENED[key]


def complete(directory: Path) -> bool:
    """A cache folder only appears by a rename after its index is written: index.json present = complete."""
    return (directory / INDEX_FILE).is_file()


# --- building --------------------------------------------------------------------------------------


@dataclass
class _Decoded:
    frames: np.ndarray | None  # (n, size, size, 3) uint8
    times: np.ndarray | None  # (n,) float64
    info: VideoInfo | None
    error: DecodeError | None


def decode_all_frames(path: str, size: int, *, timeout_s: float | None = None,
                      max_pixels: int | None = DEFAULT_MAX_DECODE_PIXELS) -> _Decoded:
    """Every frame of a video as decode._to_rgb(frame, size) makes it, with the timestamps
    decode._nearest_frames computes (seconds from the stream's start; no pts: the previous + 1 / fps)."""
    deadline = Deadline(path, timeout_s)
    try:
        with decode._open(path, deadline) as container:
            info = decode._info(path, container)
            check_resolution(path, info, max_pixels)
            stream = container.streams.video[0]
            decode._set_threads(stream, 1)  # the build runs one video per thread already
            origin, time_base = stream.start_time or 0, stream.time_base
            frames: list[np.ndarray] = []
            times: list[float] = []
            prev_t = -np.inf
            try:
                for frame in container.decode(stream):
                    deadline.check()
                    t = float((frame.pts - origin) * time_base) if frame.pts is not None else prev_t + 1 / info.fps
                    frames.append(decode._to_rgb(frame, size))
                    times.append(t)
                    prev_t = t
            except av.FFmpegError as e:
                if deadline.expired:
                    raise deadline.error(e) from e
                raise DecodeError(f"{path}: decoding failed: {e}") from e
    except DecodeError as e:
        return _Decoded(None, None, None, e)
    if not frames:
        return _Decoded(None, None, None, DecodeError(f"{path}: no frames decoded"))
    return _Decoded(np.stack(frames), np.asarray(times, dtype=np.float64), info, None)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive lock file, so concurrent builders on one machine (sweep trials, parallel local runs)
    wait for one build instead of all decoding. Across machines (NFS) flock may not hold: the atomic
    rename keeps the result correct even then, only the work is duplicated."""
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


TMP_MARK = ".tmp-"  # a build's temporary folder: .<key>.tmp-<random>


def _tmp_folders(root: Path, key: str = "*") -> list[Path]:
    return [p for p in root.glob(f".{key}{TMP_MARK}*") if p.is_dir()]


def remove_stale_builds(root: Path) -> list[Path]:
    """Remove the temporary folders of builds that stopped (killed, a crashed machine): a builder holds its key's
    lock while its temporary folder exists, so a folder whose lock can be taken at once has no builder left.
    Returns the folders removed. (Across machines flock may not hold, see _lock: there a live builder's folder
    could go, and that build then fails to rename and is reported, not half used.)"""
    removed = []
    for tmp in _tmp_folders(root):
        key = tmp.name[1:].split(TMP_MARK, 1)[0]
        try:
            f = (root / f".{key}.lock").open("a")
        except OSError:  # a root this process cannot write: not its folders to clean
            continue
        with f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # building now
            try:
                if tmp.is_dir():  # still there: not renamed into place by a builder that finished meanwhile
                    shutil.rmtree(tmp, ignore_errors=True)
                    removed.append(tmp)
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
    for tmp in removed:
        log.warning("clip cache: removed %s, the temporary folder of a build that stopped", tmp)
    return removed


def build_cache(
    paths: Sequence[str],
    size: int,
    root: str | Path,
    *,
    workers: int | None = None,
    timeout_s: float | None = None,
    max_pixels: int | None = DEFAULT_MAX_DECODE_PIXELS,
    fallback: str = "pyav",
) -> ClipCache:
    """Open the cache of `paths` at `size` under `root`, building it first when there is none.

    Videos are decoded by `workers` threads (PyAV releases the GIL) and appended in path order, at most
    2 x workers decoded videos held in memory at a time. An unreadable video (DecodeError, frames above
    max_pixels, or a full decode longer than timeout_s) is recorded with its reason, not fatal; the key does not
    hold timeout_s or max_pixels, so a cache keeps what its build recorded until it is rebuilt.

    A damaged cache raises CacheDamaged (it is not rebuilt over: the message says how); a cache of an older
    vidssl (no checksums) is rebuilt, its reason in `.rebuilt`. An OSError while writing (a full disk) raises
    CacheBuildFailed naming the folder, with the temporary folder removed."""
    root = Path(root).expanduser().resolve()
    paths = sorted(set(map(str, paths)))
    final = root / cache_key(paths, size)
    if root.is_dir():
        remove_stale_builds(root)
    with contextlib.suppress(CacheOutdated):  # rebuilt below, under the lock
        if complete(final):
            return ClipCache(final, fallback=fallback)
    try:
        root.mkdir(parents=True, exist_ok=True)
        with _lock(root / f".{final.name}.lock"):
            return _build_locked(final, paths, size, workers=_workers(workers), timeout_s=timeout_s,
                                 max_pixels=max_pixels, fallback=fallback)
    except CacheError:
        raise
    except OSError as e:
        raise CacheBuildFailed(_build_failed(final, e)) from e


def _build_locked(final: Path, paths: Sequence[str], size: int, *, workers: int, timeout_s: float | None,
                  max_pixels: int | None, fallback: str) -> ClipCache:
    for stale in _tmp_folders(final.parent, final.name):  # a builder of this key stopped while this one waited
        shutil.rmtree(stale, ignore_errors=True)
    rebuilt = None
    if complete(final):  # another builder finished while this one waited, or an outdated cache
        try:
            return ClipCache(final, fallback=fallback)
        except CacheOutdated as e:
            rebuilt = str(e)
            log.warning("%s; rebuilding it", e)
            _discard(final)
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}{TMP_MARK}", dir=final.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private: other users / service accounts read a shared cache too
        _write_cache(tmp, paths, size, workers=workers, timeout_s=timeout_s, max_pixels=max_pixels, start=start)
        try:
            os.rename(tmp, final)
        except OSError:
            if not complete(final):
                raise
            # Another machine's builder renamed its (equal) cache first: use that one.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # Its checksums were just computed from the bytes written: the sizes are checked, not every block again.
    cache = ClipCache(final, fallback=fallback, check_sums=False)
    cache.built = True
    cache.rebuilt = rebuilt
    return cache


def _build_failed(final: Path, e: OSError) -> str:
    where = f" ({e.filename})" if e.filename else ""
    return (f"clip cache {final}: building it failed: {e.strerror or e}{where}; free disk space in {final.parent} "
            "(or point data.cache_dir elsewhere), or set data.cache=off")


def _discard(directory: Path) -> None:
    """Remove a cache folder: renamed to a temporary name first, so that a removal cut short leaves a stale
    temporary folder (removed later), never a half cache under its key."""
    gone = directory.with_name(f".{directory.name}{TMP_MARK}old-{os.getpid()}-{time.time_ns()}")
    os.rename(directory, gone)
    shutil.rmtree(gone, ignore_errors=True)


def _write_cache(tmp: Path, paths: Sequence[str], size: int, *, workers: int, timeout_s: float | None,
                 max_pixels: int | None, start: float) -> None:
    videos: dict[str, Any] = {}
    unreadable: dict[str, dict[str, str]] = {}
    offset = 0
    frame_sums = _BlockSums(BLOCK_BYTES)
    with (tmp / FRAMES_FILE).open("wb") as frames_out, (tmp / RAW_TIMES).open("wb") as times_out, \
            ThreadPoolExecutor(workers) as pool:
        ahead: deque[tuple[str, Future[_Decoded]]] = deque()
        todo = iter(paths)
        while True:
            # A bounded window keeps the file in path order (a reproducible layout) without holding every
            # decoded video in memory.
            for path in todo:
                ahead.append((path, pool.submit(decode_all_frames, path, size, timeout_s=timeout_s,
                                                max_pixels=max_pixels)))
                if len(ahead) >= 2 * workers:
                    break
            if not ahead:
                break
            path, future = ahead.popleft()
            got = future.result()
            if got.error is not None or got.frames is None or got.times is None or got.info is None:
                err = got.error or DecodeError(f"{path}: no frames decoded")
                unreadable[path] = {"error": type(err).__name__, "message": str(err)}
                log.warning("clip cache: skipping unreadable video %s: %s", path, err)
                continue
            data = np.ascontiguousarray(got.frames).reshape(-1)
            frames_out.write(data)
            frame_sums.update(data)
            times_out.write(got.times.tobytes())
            videos[path] = {
                "offset": offset, "count": len(got.frames), "info": dataclasses.asdict(got.info),
                "monotonic": bool(np.all(got.times[1:] >= got.times[:-1])),
            }
            offset += len(got.frames)
    np.save(tmp / TIMES_FILE, np.fromfile(tmp / RAW_TIMES, dtype=np.float64))
    (tmp / RAW_TIMES).unlink()
    times_sums = _BlockSums(BLOCK_BYTES)
    times_sums.update((tmp / TIMES_FILE).read_bytes())
    index = {"version": FORMAT_VERSION, "size": size, "total_frames": offset, "videos": videos,
             "unreadable": unreadable, "build_s": time.perf_counter() - start,
             "checksum": {"algorithm": CHECKSUM, "block_bytes": BLOCK_BYTES},
             "files": {FRAMES_FILE: frame_sums.result(), TIMES_FILE: times_sums.result()}}
    # Written last: with the rename, a complete index is what marks a complete cache.
    (tmp / INDEX_FILE).write_text(json.dumps(index))


class _BlockSums:
    """crc32 of each `block` bytes of a byte stream written in pieces, and its length."""

    def __init__(self, block: int) -> None:
        self.block, self.nbytes, self.filled, self.crc = block, 0, 0, 0
        self.sums: list[int] = []

    def update(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        while len(view):
            take = min(self.block - self.filled, len(view))
            self.crc = zlib.crc32(view[:take], self.crc)
            self.filled, self.nbytes, view = self.filled + take, self.nbytes + take, view[take:]
            if self.filled == self.block:
                self.sums.append(self.crc)
                self.filled, self.crc = 0, 0

    def result(self) -> dict[str, Any]:
        return {"bytes": self.nbytes, "sums": [*self.sums, self.crc] if self.filled else self.sums}


# --- from the config -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheReport:
    """What the run does about the cache, for its one log line."""

    enabled: bool
    why: str  # built | rebuilt (reason) | reused | the reason it is off
    directory: str | None = None
    nbytes: int = 0
    build_s: float = 0.0
    skipped: int = 0
    warning: bool = False  # data.cache=auto fell back to decoding: a damaged cache or a failed build

    def line(self) -> str:
        if not self.enabled:
            return f"clip cache: off ({self.why})"
        return (f"clip cache: on, {self.why}, {self.nbytes / 1e6:.1f} MB, build {self.build_s:.1f} s, "
                f"{self.skipped} videos skipped (unreadable), at {self.directory}")


def cache_root(cfg: Config) -> Path:
    """data.cache_dir, or <output.storage>/.clip_cache, absolute (the decode tasks may run elsewhere)."""
    given = cfg.data.cache_dir
    return Path(given if given else Path(cfg.output.storage) / ".clip_cache").expanduser().resolve()


def cache_for_config(cfg: Config, paths: Sequence[str], *, workers: int | None = None
                     ) -> tuple[ClipCache | None, CacheReport]:
    """The run's cache as data.cache says: off; auto (on when the estimate fits data.cache_budget_gb and
    the free disk); on (CacheTooLarge when it does not fit). Builds it when missing, rebuilds one of an older
    vidssl. A damaged cache (CacheDamaged) or a failed build (CacheBuildFailed): with auto the run decodes
    instead (report.warning, the reason in its line), with on the error is raised."""
    d = cfg.data
    if d.cache == "off":
        return None, CacheReport(False, "data.cache=off")
    budget = d.cache_budget_gb * GB
    root = cache_root(cfg)
    unique = sorted(set(map(str, paths)))
    existing = root / cache_key(unique, d.size)
    cache = None
    if root.is_dir():  # the next build does it too; a run reusing a cache cleans up as well
        remove_stale_builds(root)
    if complete(existing):
        try:
            cache = ClipCache(existing, fallback=d.decoder)
        except CacheOutdated:
            pass  # build_cache rebuilds it
        except CacheDamaged as err:
            return _unusable(d.cache, err)
    if cache is not None:
        need, free = cache.nbytes, None
    else:
        need = estimate_bytes(unique, d.size, workers=workers, timeout_s=d.decode_timeout_s, stop_above=budget)
        try:
            root.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(root).free
        except OSError as e:
            return _unusable(d.cache, CacheBuildFailed(_build_failed(existing, e)))
    problem = None
    if need > budget:
        problem = (f"{len(unique)} videos at {d.size} px need over {need / GB:.2f} GB, more than "
                   f"data.cache_budget_gb={d.cache_budget_gb}")
    elif free is not None and need > free:
        problem = f"{len(unique)} videos at {d.size} px need ~{need / GB:.2f} GB, {root} has {free / GB:.2f} GB free"
    if problem is not None:
        if d.cache == "on":
            raise CacheTooLarge(f"data.cache=on: {problem}; raise data.cache_budget_gb, free disk space "
                                "(data.cache_dir) or set data.cache=auto / off")
        return None, CacheReport(False, problem)
    if cache is None:
        try:
            cache = build_cache(unique, d.size, root, workers=workers, timeout_s=d.decode_timeout_s,
                                max_pixels=d.max_decode_pixels, fallback=d.decoder)
        except (CacheDamaged, CacheBuildFailed) as err:
            return _unusable(d.cache, err)
    why = "reused" if not cache.built else f"rebuilt ({cache.rebuilt})" if cache.rebuilt else "built"
    report = CacheReport(True, why, str(cache.directory), cache.nbytes, cache.build_s if cache.built else 0.0,
                         len(cache.unreadable))
    return cache, report


def _unusable(mode: str, err: CacheError) -> tuple[None, CacheReport]:
    """data.cache=on: raise the error; auto: no cache, the run decodes, the report line says why."""
    if mode == "on":
        raise err
    return None, CacheReport(False, f"{err}; data.cache=auto: decoding the videos instead", warning=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build (or open) the decoded-clip cache of a csv dataset.")
    parser.add_argument("root", help="dataset folder with manifest.csv")
    parser.add_argument("--size", type=int, default=72)
    parser.add_argument("--cache-dir", default=None, help="cache root folder (default: <dataset>/../.clip_cache)")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    paths = [r.path for r in load_manifest("csv", Path(args.root)).records]
    cache_dir = args.cache_dir or str(Path(args.root).resolve().parent / ".clip_cache")
    print(f"estimate: {estimate_bytes(paths, args.size, workers=args.workers) / 1e6:.1f} MB for {len(paths)} videos")
    start = time.perf_counter()
    try:
        cache = build_cache(paths, args.size, cache_dir, workers=args.workers)
    except CacheError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"{'built' if cache.built else 'opened and checked'} {cache.directory} in "
          f"{time.perf_counter() - start:.2f} s: "
          f"{cache.nbytes / 1e6:.1f} MB, {len(cache.videos)} videos, {len(cache.unreadable)} unreadable")
    clip = cache.decode_clip(paths[0], num_frames=8, stride=2, size=args.size, rng=np.random.default_rng(0))
    print(f"clip of {paths[0]}: {clip.shape} {clip.dtype}")


if __name__ == "__main__":
    main()
