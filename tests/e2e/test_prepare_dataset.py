"""Re-encoding a dataset into a training copy: ssl_core.data.reencode alone, then workflows.reencode through Ray."""

from __future__ import annotations

import csv
import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from ssl_core.data.decode import probe
from ssl_core.data.decode_base import DecodeError
from ssl_core.data.manifest import load_manifest
from ssl_core.data.reencode import output_size, reencode
from ssl_core.data.synthetic import generate
from workflows.reencode import MANIFEST_FILE, REPORT_FILE, SETTINGS_FILE, TMP_SUFFIX, main

SETTINGS = {"short_side": 32, "fps": 8, "keyframe_interval": 4, "crf": 28, "preset": "ultrafast"}


def keyframe_indices(path: Path) -> list[int]:
    """Indices (in presentation order) of the frames stored as keyframes."""
    with av.open(str(path)) as c:
        packets = [p for p in c.demux(c.streams.video[0]) if p.size]
    return [i for i, p in enumerate(sorted(packets, key=lambda p: p.pts)) if p.is_keyframe]


def write_vfr(path: Path, times_ms: list[int], size: tuple[int, int]) -> None:
    """Grey frames, frame i of brightness 20 + 6 i, shown at the given irregular times (variable frame rate)."""
    w, h = size
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.codec_context.time_base = Fraction(1, 1000)
        s.options = {"crf": "10", "preset": "ultrafast"}
        for i, t in enumerate(times_ms):
            frame = av.VideoFrame.from_ndarray(np.full((h, w, 3), 20 + 6 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            for packet in s.encode(frame):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)


def test_variable_frame_rate_comes_out_constant(tmp_path: Path) -> None:
    gaps = np.random.default_rng(0).choice([15, 40, 95], size=29)  # ms between frames: 10 to 67 fps
    times = [0, *np.cumsum(gaps).tolist()]
    src, dst = tmp_path / "vfr.mp4", tmp_path / "cfr.mp4"
    write_vfr(src, times, (96, 64))
    with av.open(str(src)) as c:
        pts = [f.pts for f in c.decode(video=0)]
    assert len(set(np.diff(pts))) > 1  # the source really is variable-rate

    result = reencode(src, dst, short_side=32, fps=25, keyframe_interval=5, crf=10, preset="ultrafast")
    info = probe(str(dst))
    assert (info.width, info.height, info.fps) == (48, 32, 25.0)
    with av.open(str(dst)) as c:
        stream = c.streams.video[0]
        frames = [(f.pts, f.to_ndarray(format="gray").mean()) for f in c.decode(stream)]
        tb = stream.time_base
    out_times = np.array([float(p * tb) for p, _ in frames])
    assert np.allclose(np.diff(out_times), 1 / 25)  # constant rate
    # Through the last source frame, which is shown for one typical gap.
    assert len(frames) == result.frames == round((times[-1] + np.median(gaps)) / 1000 * 25)
    for k, (_, brightness) in enumerate(frames):
        nearest = int(np.argmin(np.abs(np.array(times) / 1000 - k / 25)))
        shown = (brightness - 20) / 6  # which source frame this is, from its grey level
        assert abs(round(shown) - nearest) <= 1, (k, nearest, brightness)
    assert keyframe_indices(dst) == list(range(0, len(frames), 5))


def test_output_size_keeps_aspect_with_even_sides() -> None:
    assert output_size(320, 240, 128) == (170, 128)
    assert output_size(240, 320, 128) == (128, 170)
    assert output_size(80, 80, 72) == (72, 72)
    assert all(v % 2 == 0 for v in output_size(341, 199, 100))


def test_bad_inputs_raise_decode_error_naming_the_file(tmp_path: Path) -> None:
    good = tmp_path / "good.mp4"
    generate(tmp_path / "g", classes=2, videos_per_class=1, frames=8, size=32)
    good.write_bytes(next((tmp_path / "g").rglob("*.mp4")).read_bytes())
    empty, text, cut = tmp_path / "empty.mp4", tmp_path / "notes.mp4", tmp_path / "cut.mp4"
    empty.write_bytes(b"")
    text.write_text("not a video\n" * 50)
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # index (moov) at the end: lost
    # Index first ("faststart"): the cut file opens and decodes, but with fewer frames than it declares.
    faststart, cut_faststart = tmp_path / "fs.mp4", tmp_path / "fs_cut.mp4"
    with av.open(str(good)) as src, av.open(str(faststart), "w", options={"movflags": "faststart"}) as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    cut_faststart.write_bytes(faststart.read_bytes()[: faststart.stat().st_size * 2 // 3])
    assert reencode(faststart, tmp_path / "ok.mp4", **SETTINGS).frames == 4  # 8 frames at 16 fps -> 8 fps
    for bad in (empty, text, cut, cut_faststart, tmp_path / "missing.mp4"):
        with pytest.raises(DecodeError, match=str(bad)):
            reencode(bad, tmp_path / "out.mp4", **SETTINGS)
        assert not (tmp_path / "out.mp4").exists()  # no partial copy left behind


@pytest.fixture()
def raw_dataset(tmp_path: Path) -> Path:
    """3 classes x 2 good 16 fps videos (48 px, 32 frames) plus 3 bad files listed in the manifest."""
    root = tmp_path / "raw"
    generate(root, classes=3, videos_per_class=2, frames=32, size=48, fps=16)
    good = root / "move_left" / "move_left_000.mp4"
    bad = root / "bad"
    bad.mkdir()
    (bad / "empty.mp4").write_bytes(b"")
    (bad / "truncated.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    (bad / "notes.mp4").write_text("path,label\nnot,a video\n")
    with (root / "manifest.csv").open("a") as f:
        f.write("bad/empty.mp4,move_left,train\nbad/truncated.mp4,move_right,train\nbad/notes.mp4,shape_square,test\n")
    return root


def write_config(path: Path, root: Path, out: Path) -> Path:
    path.write_text(json.dumps({"prepare": {"source": {"layout": "csv", "root": str(root)}, "out": str(out),
                                            **SETTINGS, "decode_cpus": 0.5}}))  # JSON is YAML
    return path


def test_prepare_workflow_through_ray(
    ray_local: None, raw_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "prepared"
    cfg = write_config(tmp_path / "prepare.yaml", raw_dataset, out)

    assert main(["--config", str(cfg), "--dry-run"]) == 0
    assert "9 videos" in capsys.readouterr().out and not out.exists()

    assert main(["--config", str(cfg)]) == 0
    printed = capsys.readouterr().out
    assert "encoded 6, skipped (already done) 0, failed 3" in printed, printed

    source = load_manifest("csv", raw_dataset, check_files=False)
    copy = load_manifest("csv", out)  # every path exists (check_files) and stays inside out
    assert copy.classes == source.classes
    good = {Path(r.path).relative_to(raw_dataset).as_posix(): r for r in source.records if "/bad/" not in r.path}
    assert {Path(r.path).relative_to(out).as_posix(): (r.label, r.split) for r in copy.records} == {
        rel: (r.label, r.split) for rel, r in good.items()
    }
    for r in copy.records:
        info = probe(r.path)
        assert (info.width, info.height, info.fps, info.num_frames) == (32, 32, 8.0, 16)
        assert keyframe_indices(Path(r.path)) == [0, 4, 8, 12]
        with av.open(r.path) as c:
            assert not c.streams.audio
    with (out / REPORT_FILE).open() as f:
        report = {Path(row["path"]).name: row["reason"] for row in csv.DictReader(f)}
    assert set(report) == {"empty.mp4", "truncated.mp4", "notes.mp4"}
    assert all(report.values())
    assert not list(out.rglob(f"*{TMP_SUFFIX}")) and not list(out.glob("bad/*.mp4"))

    # A re-run skips every finished video (and clears what a killed run left half-written).
    stale = out / "move_left" / f".move_left_001.mp4.dead{TMP_SUFFIX}"
    stale.write_bytes(b"half")
    before = (out / MANIFEST_FILE).read_text()
    assert main(["--config", str(cfg)]) == 0
    assert "encoded 0, skipped (already done) 6, failed 3" in capsys.readouterr().out
    assert (out / MANIFEST_FILE).read_text() == before and not stale.exists()

    # Another setting against the same folder is refused, naming the files, and touches nothing.
    settings = (out / SETTINGS_FILE).read_text()
    assert main(["--config", str(cfg), "--set", "prepare.short_side=64"]) == 2
    err = capsys.readouterr().err
    assert str(out / MANIFEST_FILE) in err and str(out / SETTINGS_FILE) in err and "short_side" in err
    assert (out / SETTINGS_FILE).read_text() == settings and (out / MANIFEST_FILE).read_text() == before


def test_config_errors_name_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "src"
    root.mkdir()
    (root / MANIFEST_FILE).write_text("path,label\na.mp4,x\n")
    cfg = write_config(tmp_path / "p.yaml", root, tmp_path / "copy")
    for override, key in (("prepare.short_side=33", "prepare.short_side"), ("prepare.preset=fastest", "prepare.preset"),
                          ("prepare.fps=x", "prepare.fps"), ("prepare.colour=1", "prepare.colour"),
                          (f"prepare.out={root / 'sub'}", "prepare.out")):
        assert main(["--config", str(cfg), "--set", override]) == 2
        assert capsys.readouterr().err.startswith(f"error: {key}:")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / MANIFEST_FILE).write_text("path,label\n")
    assert main(["--config", str(cfg), "--set", f"prepare.out={tmp_path / 'other'}", "--dry-run"]) == 2
    assert str(tmp_path / "other" / MANIFEST_FILE) in capsys.readouterr().err
