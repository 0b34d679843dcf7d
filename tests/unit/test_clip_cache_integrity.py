"""The decoded-clip cache checks itself (ssl_core/data/clip_cache.py): damaged files and a damaged index are one-line
errors naming the file (data.cache=on) or a fall back to decoding (auto); a write error while building likewise,
with nothing left behind; temporary folders of killed builds are removed; an intact cache is reused.

    python -m pytest -q tests/unit/test_clip_cache_integrity.py
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ssl_core.data import clip_cache, decode
from ssl_core.data.clip_cache import (
    CacheBuildFailed,
    CacheDamaged,
    ClipCache,
    build_cache,
    cache_for_config,
    remove_stale_builds,
)
from tests.unit.cache_clips import SIZE, config, painted

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder = tmp_path_factory.mktemp("videos")
    return [painted(folder / "a.mp4", 12), painted(folder / "b.mp4", 7)]


@pytest.fixture(scope="module")
def template(paths: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache built once; each test damages its own copy."""
    return build_cache(paths, SIZE, tmp_path_factory.mktemp("template"), workers=1).directory


def copied(template: Path, tmp_path: Path) -> Path:
    """The template cache under tmp_path's run storage, where cache_for_config(config(tmp_path)) looks."""
    directory = tmp_path / "runs" / ".clip_cache" / template.name
    shutil.copytree(template, directory)
    return directory


def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("decoded: the cache was rebuilt")

    monkeypatch.setattr(clip_cache, "decode_all_frames", fail)


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if clip_cache.TMP_MARK in p.name)


def assert_falls_back_and_on_fails(tmp_path: Path, paths: list[str], directory: Path, file: str, says: str) -> None:
    """auto: no cache, a warning report naming the file; on: CacheDamaged naming it; neither rebuilds over it."""
    cache, report = cache_for_config(config(tmp_path, "data.cache=auto"), paths)
    assert cache is None and not report.enabled and report.warning
    line = report.line()
    assert "\n" not in line and str(directory / file) in line and says in line
    assert line.endswith("decoding the videos instead)") and f"delete {directory} to rebuild" in line
    with pytest.raises(CacheDamaged, match=re.escape(says)) as err:
        cache_for_config(config(tmp_path, "data.cache=on"), paths)
    assert "\n" not in str(err.value) and str(directory / file) in str(err.value)
    assert "data.cache=off" in str(err.value)
    with pytest.raises(CacheDamaged, match=re.escape(says)):  # build_cache does not overwrite it either
        build_cache(paths, SIZE, directory.parent)


def test_an_intact_cache_is_checked_and_reused_not_rebuilt(template: Path, paths: list[str], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    directory = copied(template, tmp_path)
    index = json.loads((directory / clip_cache.INDEX_FILE).read_text())
    frames = index["files"][clip_cache.FRAMES_FILE]
    assert frames["bytes"] == (12 + 7) * SIZE * SIZE * 3 == (directory / clip_cache.FRAMES_FILE).stat().st_size
    assert frames["sums"] == [zlib.crc32((directory / clip_cache.FRAMES_FILE).read_bytes())]  # one block
    no_decoding(monkeypatch)
    cache, report = cache_for_config(config(tmp_path, "data.cache=on"), paths)
    assert cache is not None and report.why == "reused" and not report.warning
    np.testing.assert_array_equal(cache.decode_clip(paths[0], num_frames=4, stride=2, size=SIZE, start_s=0.0),
                                  decode.decode_clip(paths[0], num_frames=4, stride=2, size=SIZE, start_s=0.0))


def test_zero_filled_frames_are_detected(template: Path, paths: list[str], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    directory = copied(template, tmp_path)
    frames = directory / clip_cache.FRAMES_FILE
    frames.write_bytes(bytes(frames.stat().st_size))  # the right size, all black
    no_decoding(monkeypatch)
    assert_falls_back_and_on_fails(tmp_path, paths, directory, clip_cache.FRAMES_FILE, "do not match their checksums")


def test_truncated_frames_are_detected(template: Path, paths: list[str], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    directory = copied(template, tmp_path)
    frames = directory / clip_cache.FRAMES_FILE
    size = frames.stat().st_size
    os.truncate(frames, size // 2)
    no_decoding(monkeypatch)
    assert_falls_back_and_on_fails(tmp_path, paths, directory, clip_cache.FRAMES_FILE,
                                   f"{size // 2} bytes, index.json records {size} (truncated")


@pytest.mark.parametrize("damage", ["truncated", "not an index", "inconsistent"])
def test_a_truncated_or_invalid_index_is_detected(template: Path, paths: list[str], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch, damage: str) -> None:
    directory = copied(template, tmp_path)
    index = directory / clip_cache.INDEX_FILE
    if damage == "truncated":
        index.write_bytes(index.read_bytes()[: index.stat().st_size // 3])
        says = "not valid JSON"
    elif damage == "not an index":
        good = json.loads(index.read_text())
        index.write_text(json.dumps({**good, "videos": {"x.mp4": {"offset": 0}}}))
        says = "an invalid entry (KeyError: 'count')"
    else:
        good = json.loads(index.read_text())
        good["videos"][paths[1]]["count"] = 10**6
        index.write_text(json.dumps(good))
        says = f"frames of {paths[1]} outside the 19 frames"
    no_decoding(monkeypatch)
    assert_falls_back_and_on_fails(tmp_path, paths, directory, clip_cache.INDEX_FILE, says)


def test_a_damaged_block_is_named_by_its_bytes(paths: list[str], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clip_cache, "BLOCK_BYTES", 1000)  # many blocks, each video's bytes cut across them
    cache = build_cache(paths, SIZE, tmp_path, workers=1)
    frames = cache.directory / clip_cache.FRAMES_FILE
    data = bytearray(frames.read_bytes())
    sums = json.loads((cache.directory / clip_cache.INDEX_FILE).read_text())["files"][clip_cache.FRAMES_FILE]["sums"]
    assert sums == [zlib.crc32(data[a : a + 1000]) for a in range(0, len(data), 1000)]
    data[5432] ^= 1  # one bit, in block 5
    frames.write_bytes(bytes(data))
    with pytest.raises(CacheDamaged, match=f"1 of {len(sums)} blocks of 1000 bytes .*the first at byte 5000:"):
        ClipCache(cache.directory)
    ClipCache(cache.directory, check_sums=False)  # sizes only (the decode tasks, after the driver's check)


def test_a_cache_of_the_old_format_is_rebuilt_saying_why(template: Path, paths: list[str], tmp_path: Path) -> None:
    directory = copied(template, tmp_path)
    index = json.loads((directory / clip_cache.INDEX_FILE).read_text())
    del index["files"], index["checksum"]  # as the code before checksums wrote it
    (directory / clip_cache.INDEX_FILE).write_text(json.dumps(index))
    cache, report = cache_for_config(config(tmp_path, "data.cache=auto"), paths)
    assert cache is not None and cache.directory == directory and not report.warning
    assert report.why.startswith("rebuilt (") and "older vidssl" in report.line() and "\n" not in report.line()
    assert "files" in json.loads((directory / clip_cache.INDEX_FILE).read_text())
    assert leftovers(directory.parent) == []
    assert cache_for_config(config(tmp_path, "data.cache=auto"), paths)[1].why == "reused"


class _FullDisk:
    """A file that takes `room` bytes, then fails like a full disk."""

    def __init__(self, f: Any, room: int) -> None:
        self.f, self.room = f, room

    def write(self, data: Any) -> int:
        n = memoryview(data).nbytes
        if n > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.f.name)
        self.room -= n
        return self.f.write(data)

    def __enter__(self) -> _FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.f.close()


def full_disk_after(monkeypatch: pytest.MonkeyPatch, room: int) -> None:
    real_open = Path.open

    def open_(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        f = real_open(self, mode, *args, **kwargs)
        return _FullDisk(f, room) if self.name == clip_cache.FRAMES_FILE and "w" in mode else f

    monkeypatch.setattr(Path, "open", open_)


@pytest.mark.parametrize("mode", ["auto", "on"])
def test_a_write_error_while_building_falls_back_or_fails_and_leaves_nothing(
    paths: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    full_disk_after(monkeypatch, room=SIZE * SIZE * 3 * 12 + 100)  # the first video fits, the second does not
    root = tmp_path / "runs" / ".clip_cache"
    folder = root / clip_cache.cache_key(paths, SIZE)
    if mode == "auto":
        cache, report = cache_for_config(config(tmp_path, "data.cache=auto"), paths)
        assert cache is None and report.warning and not report.enabled
        line = report.line()
        assert "\n" not in line and str(folder) in line and "No space left on device" in line
        assert line.endswith("data.cache=auto: decoding the videos instead)")
    else:
        with pytest.raises(CacheBuildFailed, match="No space left on device") as err:
            cache_for_config(config(tmp_path, "data.cache=on"), paths)
        assert "\n" not in str(err.value) and str(folder) in str(err.value) and isinstance(err.value, OSError)
    assert [p.name for p in root.iterdir() if not p.name.endswith(".lock")] == []  # no partial folder
    monkeypatch.undo()  # the disk has room again: the next run builds it
    cache, report = cache_for_config(config(tmp_path, f"data.cache={mode}"), paths)
    assert cache is not None and report.why == "built"


def test_a_killed_build_leaves_a_folder_the_next_build_removes(paths: list[str], tmp_path: Path) -> None:
    code = (
        "import sys, time\n"
        "from ssl_core.data import clip_cache\n"
        "def slow(*args, **kwargs):\n"
        "    print('decoding', flush=True)\n"
        "    time.sleep(120)\n"
        "clip_cache.decode_all_frames = slow\n"
        f"clip_cache.build_cache({paths!r}, {SIZE}, {str(tmp_path)!r}, workers=1)\n"
    )
    builder = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert builder.stdout is not None and builder.stdout.readline() == "decoding\n"
    finally:
        builder.kill()  # SIGKILL mid-build: no cleanup runs, the kernel drops its lock
        builder.wait()
    [left] = leftovers(tmp_path)
    assert (tmp_path / left / clip_cache.FRAMES_FILE).exists()  # the killed build's partial frames
    cache = build_cache(paths, SIZE, tmp_path, workers=1)
    assert cache.built and leftovers(tmp_path) == []


def test_only_temporary_folders_without_a_live_builder_are_removed(paths: list[str], template: Path,
                                                                   tmp_path: Path) -> None:
    # A folder of another key (a dataset since changed) whose build was killed, and one being built right now.
    stale, building = tmp_path / ".s24-0123.tmp-abc", tmp_path / ".s24-4567.tmp-def"
    for folder in (stale, building):
        folder.mkdir()
        (folder / clip_cache.FRAMES_FILE).write_bytes(b"partial")
    with (tmp_path / ".s24-4567.lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # its builder holds the lock (flock: another open file, same as a process)
        shutil.copytree(template, tmp_path / template.name)
        assert not build_cache(paths, SIZE, tmp_path).built  # opening a cache cleans up too
        assert building.is_dir() and not stale.exists()
        assert remove_stale_builds(tmp_path) == []
    assert remove_stale_builds(tmp_path) == [building]  # its builder is gone now
