"""The decoded-clip cache (ssl_core/data/clip_cache.py): the decoder's clips for the same seeds, unreadable
videos recorded, the budget, reuse and keys, and its use by the local loop and the Ray Data eval rows.

    python -m pytest -q tests/unit/test_clip_cache.py
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import torch

from ssl_core.data import clip_cache, decode
from ssl_core.data.clip_cache import CacheTooLarge, ClipCache, build_cache, cache_for_config, select_frames
from ssl_core.data.decode_base import DecodeError, DecodeTimeout
from ssl_core.data.manifest import VideoRecord
from tests.unit.cache_clips import SIZE, config, painted
from tests.unit.odd_videos import FPS, bad_files


def vfr_video(path: Path) -> str:
    """A variable-frame-rate video: frames at irregular timestamps (1/16 s units), gaps of 1 to 4."""
    pts = [0, 1, 2, 4, 5, 8, 9, 10, 13, 14, 15, 16, 20, 21, 22, 23, 26, 27, 28, 30]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width = stream.height = 32
        stream.pix_fmt, stream.options = "yuv420p", {"qp": "0"}
        stream.codec_context.gop_size = 4
        stream.codec_context.time_base = Fraction(1, FPS)
        for k, p in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 20 + 10 * k, np.uint8), format="rgb24")
            frame.pts, frame.time_base = p, Fraction(1, FPS)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return str(path)


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("videos")
    return {
        "long": painted(root / "long.mp4", 30),
        "wide": painted(root / "wide.mp4", 20, side=30, width=52),  # short side -> SIZE, then a centre crop
        "short": painted(root / "short.mp4", 5),  # shorter than a clip: loops
        "vfr": vfr_video(root / "vfr.mp4"),
    }


@pytest.fixture(scope="module")
def cache(videos: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> ClipCache:
    return build_cache(list(videos.values()), SIZE, tmp_path_factory.mktemp("cache"), workers=2)


@pytest.mark.parametrize("name", ["long", "wide", "short", "vfr"])
@pytest.mark.parametrize(("num_frames", "stride"), [(8, 2), (4, 3), (6, 1), (3, 7)])
def test_training_clips_equal_the_decoder_for_the_same_seeds(
    cache: ClipCache, videos: dict[str, str], name: str, num_frames: int, stride: int
) -> None:
    path = videos[name]
    for seed in range(6):
        want = decode.decode_clip(path, num_frames=num_frames, stride=stride, size=SIZE,
                                  rng=np.random.default_rng(seed))
        got = cache.decode_clip(path, num_frames=num_frames, stride=stride, size=SIZE,
                                rng=np.random.default_rng(seed))
        assert got.shape == (num_frames, SIZE, SIZE, 3) and got.dtype == np.uint8
        np.testing.assert_array_equal(got, want, err_msg=f"{name} seed {seed}")


@pytest.mark.parametrize("name", ["long", "short", "vfr"])
def test_clips_at_given_starts_equal_the_decoder_and_past_the_end_is_an_error(
    cache: ClipCache, videos: dict[str, str], name: str
) -> None:
    path = videos[name]

    def clip_or_error(read: Any, start_s: float) -> np.ndarray | str:
        try:
            return read(path, num_frames=4, stride=2, size=SIZE, start_s=start_s)
        except ValueError as err:
            return str(err)

    for start_s in (0.0, 0.03, 0.25, 0.3, 0.33, 0.47, 1.0, 1.6):  # off-frame starts: the nearest frame wins
        want, got = clip_or_error(decode.decode_clip, start_s), clip_or_error(cache.decode_clip, start_s)
        if isinstance(want, str):
            assert got == want
        else:
            np.testing.assert_array_equal(got, want, err_msg=f"{name} start {start_s}")
    for call in (decode.decode_clip, cache.decode_clip):
        with pytest.raises(ValueError, match="past the end"):
            call(path, num_frames=2, stride=1, size=SIZE, start_s=9.0)


def test_a_short_video_loops_like_the_decoder(cache: ClipCache, videos: dict[str, str]) -> None:
    clip = cache.decode_clip(videos["short"], num_frames=8, stride=2, size=SIZE, rng=np.random.default_rng(0))
    greys = np.round((clip[:, :, SIZE // 2 + 5, 0].astype(float).mean(axis=1) - 20) / 7).astype(int)  # off the bar
    assert greys.tolist() == [0, 2, 4, 0, 2, 4, 0, 2]


@pytest.mark.parametrize("name", ["long", "wide", "short", "vfr"])
@pytest.mark.parametrize(("num_frames", "stride", "num_clips"), [(4, 2, 4), (2, 1, 3), (8, 3, 1), (5, 2, 2)])
def test_eval_clips_equal_the_decoder(
    cache: ClipCache, videos: dict[str, str], name: str, num_frames: int, stride: int, num_clips: int
) -> None:
    path = videos[name]
    want = decode.decode_eval_clips(path, num_frames=num_frames, stride=stride, size=SIZE, num_clips=num_clips)
    got = cache.decode_eval_clips(path, num_frames=num_frames, stride=stride, size=SIZE, num_clips=num_clips)
    assert got.shape == (num_clips, num_frames, SIZE, SIZE, 3)
    np.testing.assert_array_equal(got, want)


def test_clips_are_writable_copies(cache: ClipCache, videos: dict[str, str]) -> None:
    path = videos["long"]
    clip = cache.decode_clip(path, num_frames=4, stride=1, size=SIZE, start_s=0.0)
    clip[:] = 0  # the caller owns it; the memory map is read-only and unchanged
    again = cache.decode_clip(path, num_frames=4, stride=1, size=SIZE, start_s=0.0)
    assert again.max() > 0
    eval_clips = cache.decode_eval_clips(path, num_frames=2, stride=1, size=SIZE, num_clips=2)
    eval_clips += 1


def test_other_size_keep_aspect_and_unknown_paths_use_the_real_decoder(
    cache: ClipCache, videos: dict[str, str], tmp_path: Path
) -> None:
    path = videos["wide"]
    np.testing.assert_array_equal(
        cache.decode_clip(path, num_frames=4, stride=2, size=16, rng=np.random.default_rng(3)),
        decode.decode_clip(path, num_frames=4, stride=2, size=16, rng=np.random.default_rng(3)))
    aspect = cache.decode_eval_clips(path, num_frames=2, stride=1, size=SIZE, num_clips=2, keep_aspect=True)
    assert aspect.shape[2:4] == (SIZE, round(52 * SIZE / 30))
    np.testing.assert_array_equal(
        aspect, decode.decode_eval_clips(path, num_frames=2, stride=1, size=SIZE, num_clips=2, keep_aspect=True))
    other = painted(tmp_path / "not_cached.mp4", 12)
    assert other not in cache
    np.testing.assert_array_equal(cache.decode_clip(other, num_frames=4, stride=1, size=SIZE, start_s=0.1),
                                  decode.decode_clip(other, num_frames=4, stride=1, size=SIZE, start_s=0.1))
    with pytest.raises(ValueError, match="timeout_s"):  # the decoder's argument checks hold for cached reads
        cache.decode_clip(path, num_frames=4, stride=1, size=SIZE, timeout_s=0)


def test_select_frames_matches_the_decoder_rule_on_ties_and_the_end() -> None:
    times = np.arange(5) / 10  # frames at 0, .1, .2, .3, .4 s; fps 10
    wanted = np.array([0.0, 0.05, 0.06, 0.14, 0.44, 0.45, 0.46, 0.9])
    # A tie (0.05) goes to the later frame; past the last frame only within half a frame (0.45); then a prefix.
    assert select_frames(times, wanted, 10.0).tolist() == [0, 1, 1, 1, 4, 4]
    assert clip_cache._select_sequential(times, wanted, 10.0).tolist() == [0, 1, 1, 1, 4, 4]
    shuffled = np.array([0.0, 0.2, 0.1, 0.3, 0.4])  # out-of-order timestamps take the decoder's exact loop
    assert select_frames(shuffled, np.array([0.1, 0.3]), 10.0, monotonic=False).tolist() == [1, 3]


def test_unreadable_videos_are_recorded_and_raise_naming_the_file(tmp_path: Path) -> None:
    bad = [str(p) for p in bad_files(tmp_path)]  # empty, truncated, text, audio only
    good = painted(tmp_path / "good.mp4", 12)
    cache = build_cache([*bad, good, str(tmp_path / "missing.mp4")], SIZE, tmp_path / "cache", workers=2)
    assert set(cache.unreadable) == {*bad, str(tmp_path / "missing.mp4")}
    assert set(cache.videos) == {good}
    for path in cache.unreadable:
        name = Path(path).name.replace(".", r"\.")
        with pytest.raises(DecodeError, match=name):
            cache.decode_clip(path, num_frames=4, stride=1, size=SIZE, rng=np.random.default_rng(0))
        with pytest.raises(DecodeError, match=name):
            cache.decode_eval_clips(path, num_frames=4, stride=1, size=SIZE, num_clips=2)
    assert "no video stream" in cache.unreadable[bad[3]]["message"]
    np.testing.assert_array_equal(cache.decode_clip(good, num_frames=4, stride=2, size=SIZE, start_s=0.0),
                                  decode.decode_clip(good, num_frames=4, stride=2, size=SIZE, start_s=0.0))


def test_a_video_past_the_build_timeout_is_recorded_as_a_timeout(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    slow = painted(tmp_path / "slow.mp4", 40)
    now = iter(range(100_000))  # a deadline clock that advances 1 s per look: 5 s pass mid-decode
    monkeypatch.setattr(decode.Deadline, "clock", staticmethod(lambda: float(next(now))))
    cache = build_cache([slow], SIZE, tmp_path / "cache", workers=1, timeout_s=5)
    assert cache.unreadable[slow]["error"] == "DecodeTimeout"
    with pytest.raises(DecodeTimeout, match=r"slow\.mp4.*timeout_s=5"):
        cache.decode_clip(slow, num_frames=4, stride=1, size=SIZE)


def test_an_existing_cache_is_reused_not_rebuilt(videos: dict[str, str], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    paths = [videos["long"], videos["short"]]
    first = build_cache(paths, SIZE, tmp_path)
    frames = first.directory / clip_cache.FRAMES_FILE
    stamp = frames.stat().st_mtime_ns
    assert first.built and first.nbytes == frames.stat().st_size == (30 + 5) * SIZE * SIZE * 3

    def no_decode(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("decoded again")

    monkeypatch.setattr(clip_cache, "decode_all_frames", no_decode)
    second = build_cache(list(reversed(paths)), SIZE, tmp_path)  # the order of the paths does not matter
    assert not second.built and second.directory == first.directory
    assert frames.stat().st_mtime_ns == stamp
    # Nothing else is left in the root: the cache folder and its lock file only (no temporary folders).
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.directory.name, f".{first.directory.name}.lock"])


def test_a_changed_video_or_size_gets_a_new_key(tmp_path: Path) -> None:
    path = painted(tmp_path / "v.mp4", 10)
    key = clip_cache.cache_key([path], SIZE)
    assert clip_cache.cache_key([path], SIZE + 8) != key
    old = build_cache([path], SIZE, tmp_path / "cache")
    painted(tmp_path / "v.mp4", 14)  # rewritten: another size and mtime
    assert clip_cache.cache_key([path], SIZE) != key
    new = build_cache([path], SIZE, tmp_path / "cache")
    assert new.built and new.directory != old.directory
    assert new.videos[path].count == 14
    os.utime(path, ns=(1, 1))  # the same bytes, touched: a new key too (mtime is part of it)
    assert clip_cache.cache_key([path], SIZE) != new.directory.name


def test_concurrent_builders_leave_one_complete_cache(videos: dict[str, str], tmp_path: Path) -> None:
    paths = list(videos.values())
    results: list[ClipCache] = []
    threads = [threading.Thread(target=lambda: results.append(build_cache(paths, SIZE, tmp_path))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({c.directory for c in results}) == 1
    assert sum(c.built for c in results) == 1  # the lock made the others wait and open it
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_a_failed_build_leaves_no_cache(videos: dict[str, str], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(clip_cache, "_write_cache", crash)
    with pytest.raises(OSError, match="disk full"):
        build_cache([videos["long"]], SIZE, tmp_path)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_the_budget_turns_auto_off_and_makes_on_an_error(videos: dict[str, str], tmp_path: Path) -> None:
    paths = list(videos.values())
    need = clip_cache.estimate_bytes(paths, SIZE)
    assert need == (30 + 20 + 5 + 20) * SIZE * SIZE * 3  # metadata frame counts x frame bytes
    assert 1 < clip_cache.estimate_bytes(paths, SIZE, stop_above=1) < need  # stops once past the limit
    tight = f"data.cache_budget_gb={need / 2 / 1e9}"
    cache, report = cache_for_config(config(tmp_path, "data.cache=auto", tight), paths)
    assert cache is None and not report.enabled
    assert "data.cache_budget_gb" in report.line() and report.line().startswith("clip cache: off")
    with pytest.raises(CacheTooLarge, match="data.cache_budget_gb"):
        cache_for_config(config(tmp_path, "data.cache=on", tight), paths)
    assert cache_for_config(config(tmp_path, "data.cache=off"), paths)[0] is None
    assert not (tmp_path / "runs" / ".clip_cache").exists() or not any(
        p.is_dir() for p in (tmp_path / "runs" / ".clip_cache").iterdir())
    # Within the budget: built under <output.storage>/.clip_cache, then reused.
    cache, report = cache_for_config(config(tmp_path, "data.cache=on"), paths)
    assert cache is not None and report.why == "built" and report.skipped == 0
    assert cache.directory.parent == (tmp_path / "runs" / ".clip_cache").resolve()
    assert f"{need / 1e6:.1f} MB" in report.line()
    again, report = cache_for_config(config(tmp_path, f"data.cache_dir={tmp_path / 'runs' / '.clip_cache'}"), paths)
    assert again is not None and report.why == "reused" and again.directory == cache.directory


def test_local_clip_batches_from_the_cache_equal_the_decoded_ones(synth_dataset: Path, tmp_path: Path) -> None:
    from ssl_core.loop import _clip_batches

    cfg = config(tmp_path, "data.num_frames=4", "data.stride=2")
    records = [VideoRecord(str(v), i, "train") for i, v in enumerate(sorted(synth_dataset.rglob("*.mp4"))[:5])]
    cache = build_cache([r.path for r in records], SIZE, tmp_path / "cache")
    with ThreadPoolExecutor(2) as pool:
        decoded, cached = _clip_batches(records, 3, cfg, 7, pool), _clip_batches(records, 3, cfg, 7, pool, cache)
        for _ in range(3):
            (a, la), (b, lb) = next(decoded), next(cached)
            assert torch.equal(a, b) and torch.equal(la, lb)


class _Counter:
    def __init__(self) -> None:
        self.added: list[str] = []
        self.add = self

    def remote(self, path: str, reason: str) -> None:
        self.added.append(path)


def test_ray_eval_rows_read_the_cache_by_its_folder(videos: dict[str, str], tmp_path: Path) -> None:
    from workflows.runtime.streams import _decode_eval_row

    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    cache = build_cache([videos["long"], str(empty)], SIZE, tmp_path / "cache")
    cfg = {"num_frames": 4, "stride": 2, "size": SIZE, "num_clips": 2, "decoder": "pyav", "timeout_s": 10.0,
           "threads": 1, "cache_dir": str(cache.directory)}
    counter = _Counter()
    [row] = _decode_eval_row({"path": videos["long"], "label": 3}, cfg=cfg, counter=counter)
    np.testing.assert_array_equal(row["clips"], decode.decode_eval_clips(videos["long"], num_frames=4, stride=2,
                                                                         size=SIZE, num_clips=2))
    assert _decode_eval_row({"path": str(empty), "label": 1}, cfg=cfg, counter=counter) == []
    assert counter.added == [str(empty)]
    assert clip_cache.open_cache(cache.directory) is clip_cache.open_cache(cache.directory)  # once per process
    with pytest.raises(FileNotFoundError, match="shared"):
        _decode_eval_row({"path": videos["long"], "label": 3}, cfg={**cfg, "cache_dir": str(tmp_path / "nowhere")},
                         counter=counter)
