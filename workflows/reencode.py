"""Re-encode a raw video dataset into a training-friendly copy, with Ray Data, in parallel over the cluster.

    python -m workflows.reencode --config configs/prepare_demo.yaml [--set prepare.short_side=96] [--dry-run]
    ray job submit --working-dir . -- python -m workflows.reencode --config configs/prepare_demo.yaml

Every video of the source (any layout ssl_core.data.manifest reads) becomes `<out>/<same relative path>.mp4`:
short side resized, constant frame rate, a keyframe every `keyframe_interval` frames (cheap seeking decode),
H.264 yuv420p, no audio (ssl_core.data.reencode, one Ray task per block of files). Then the driver writes
  <out>/manifest.csv          path,label,split (the `csv` layout: train with data.layout=csv, data.root=<out>)
  <out>/classes.txt           the source's classes in the source's order (same label indices)
  <out>/prepare_report.csv    path,reason of every video that could not be re-encoded (left out of the manifest)
  <out>/prepare.json          the settings that made the copy; a re-run with other settings is refused
Re-running skips videos whose output exists (outputs appear only by atomic rename, so existing = complete);
a bad video (zero-byte, truncated, not a video) is reported and never stops the job. On a multi-node cluster
`source.root` and `out` must be absolute paths on storage that every node mounts at the same place.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssl_core.data.decode_base import DecodeError
from ssl_core.data.manifest import LAYOUTS, Manifest, VideoRecord, load_manifest
from ssl_core.data.reencode import PRESETS, reencode
from ssl_core.typed_config import (
    ConfigError,
    SyntheticConfig,
    apply_override,
    build,
    read_config_file,
    require,
    setting,
)
from ssl_core.user_errors import reports_user_errors
from workflows.console import terminal
from workflows.runtime.ray_session import init_ray

log = logging.getLogger("vidssl.prepare")

SETTINGS_FILE = "prepare.json"
MANIFEST_FILE = "manifest.csv"
CLASSES_FILE = "classes.txt"
REPORT_FILE = "prepare_report.csv"
# In-progress outputs: hidden, in the destination folder (so the final rename is atomic), and recognisable so a
# re-run can delete what a killed job left behind.
TMP_SUFFIX = ".prepare-tmp"
# Bumped when the re-encode changes in a way that makes older copies differ from new ones.
FORMAT_VERSION = 1


class PrepareError(ConfigError):
    """An output-folder problem (a ConfigError: callers catch both alike); the message names the key or the file."""


# --- configuration -------------------------------------------------------------------------------------------


@dataclass
class SourceSpec:
    """The dataset to copy; the keys mean what they mean under `data.` in a training config."""

    layout: str = setting("csv", "dataset layout: folder, csv, ucf101, kinetics (as data.layout)")
    root: str = setting("data/synth", "dataset folder (generated here first when synthetic.enabled and missing)")
    csv_path: str | None = setting(None, "the CSV of the csv (default: <root>/manifest.csv) and kinetics layouts")
    infer_classes: bool = setting(False, "csv without classes.txt: every label is a class, even one in test rows "
                                         "only (as data.infer_classes)")
    ucf_split: int = setting(1, "UCF-101 official split 1, 2 or 3")
    test_fraction: float = setting(0.2, "hold-out for layouts without a split (folder, csv without a split "
                                        "column); the copy writes it down")
    split_seed: int = setting(0, "seed of that hold-out")
    synthetic: SyntheticConfig = setting(doc="generate the synthetic action dataset into source.root when missing",
                                         factory=SyntheticConfig)

    def check(self) -> None:
        require(self.layout in LAYOUTS, "layout", f"must be one of {LAYOUTS}, got {self.layout!r}")
        require(self.ucf_split in (1, 2, 3), "ucf_split", f"must be 1, 2 or 3, got {self.ucf_split}")
        require(0 <= self.test_fraction < 1, "test_fraction", f"must be in [0, 1), got {self.test_fraction}")
        require(self.layout != "kinetics" or bool(self.csv_path), "csv_path", "the kinetics layout needs a csv_path")


@dataclass
class PrepareConfig:
    source: SourceSpec = setting(doc="the dataset to copy", factory=SourceSpec)
    out: str | None = setting(None, "required: the folder of the copy (not the source root or inside it)")
    # Decode-side resizes in training then shrink a small frame, not a big one.
    short_side: int = setting(128, "short side in pixels, even (yuv420p)")
    fps: int = setting(16, "output frame rate; variable-rate sources come out constant-rate (frames picked by "
                           "timestamp)")
    keyframe_interval: int = setting(16, "frames between keyframes: a seek decodes at most this many frames before "
                                         "the clip starts")
    crf: int = setting(23, "libx264 quality, 0-51 (lower = better, bigger)")
    preset: str = setting("veryfast", "libx264 speed / size trade-off")
    decode_cpus: float = setting(1.0, "CPUs per re-encode task (libx264 gets this many threads, at least 1); "
                                      "fractional packs tasks tighter")

    def check(self) -> None:
        require(bool(self.out), "out", "required: the folder of the re-encoded copy")
        require(self.short_side >= 2 and self.short_side % 2 == 0, "short_side",
                f"must be an even number >= 2 (yuv420p), got {self.short_side}")
        require(self.fps >= 1, "fps", f"must be >= 1, got {self.fps}")
        require(self.keyframe_interval >= 1, "keyframe_interval", f"must be >= 1, got {self.keyframe_interval}")
        require(0 <= self.crf <= 51, "crf", f"must be in [0, 51] (libx264), got {self.crf}")
        require(self.preset in PRESETS, "preset", f"must be one of {PRESETS}, got {self.preset!r}")
        require(self.decode_cpus > 0, "decode_cpus", f"must be > 0, got {self.decode_cpus}")
        root, out = Path(self.source.root).expanduser().resolve(), Path(str(self.out)).expanduser().resolve()
        # Writing into the source would replace source .mp4 files by their own re-encodes.
        require(out != root and root not in out.parents, "out",
                f"{out} must not be the source root {root} or inside it")

    def settings(self) -> dict[str, Any]:
        """What determines the copy's content (not how fast it is made): stored in prepare.json and compared."""
        s = self.source
        return {
            "format_version": FORMAT_VERSION,
            "source": {
                "layout": s.layout,
                "root": str(Path(s.root).expanduser().resolve()),
                "csv_path": str(Path(s.csv_path).expanduser().resolve()) if s.csv_path else None,
                "ucf_split": s.ucf_split,
                "test_fraction": s.test_fraction,
                "split_seed": s.split_seed,
            },
            "short_side": self.short_side,
            "fps": self.fps,
            "keyframe_interval": self.keyframe_interval,
            "crf": self.crf,
            "preset": self.preset,
        }


def load_prepare_config(path: str | Path, overrides: Sequence[str] = ()) -> PrepareConfig:
    """The `prepare:` section of a YAML file plus `prepare.key=value` overrides, validated. Other top-level
    sections are ignored, so a training config may carry its prepare section."""
    raw = read_config_file(path)
    if not isinstance(raw.get("prepare"), dict):
        raise PrepareError(f"{path}: needs a `prepare:` section (a mapping)")
    for item in overrides:
        if not item.startswith("prepare.") or "=" not in item:
            raise PrepareError(f"--set {item!r}: expected prepare.key=value, e.g. prepare.short_side=96")
        apply_override(raw, item)
    cfg: PrepareConfig = build(PrepareConfig, raw["prepare"], "prepare")  # checked by its sections' check()
    return cfg


# --- planning --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Planned:
    record: VideoRecord
    out_rel: str  # posix path relative to <out>; "" when the video cannot have an output (see `problem`)
    problem: str = ""


@dataclass
class Outcome:
    path: str  # source
    status: str  # "encoded" | "skipped" | "failed"
    reason: str = ""
    out_path: str = ""
    frames: int = 0


@dataclass
class Summary:
    source: str
    out: Path
    total: int
    encoded: int
    skipped: int
    failed: int
    wall_s: float
    classes: int


def _plan(manifest: Manifest, root: Path) -> list[Planned]:
    """Each record's output path; a record outside the root or colliding with another's output (a.avi and
    a.mp4 in one folder) gets a problem instead, reported like a bad video."""
    planned: list[Planned] = []
    owner: dict[str, str] = {}
    for r in manifest.records:
        rel = os.path.relpath(r.path, root)
        if rel.startswith(".."):
            planned.append(Planned(r, "", f"outside the source root {root}"))
            continue
        out_rel = Path(rel).with_suffix(".mp4").as_posix()
        if out_rel in owner:
            planned.append(Planned(r, "", f"its output {out_rel} is already the output of {owner[out_rel]}"))
            continue
        owner[out_rel] = r.path
        planned.append(Planned(r, out_rel))
    return planned


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")
    tmp.write_text(text)
    os.replace(tmp, path)  # a reader (or a killed job) never sees half a manifest


def check_out_dir(out: Path, settings: dict[str, Any]) -> bool:
    """True when `out` already holds a copy made with `settings` (resume it); False when it is new or empty.
    Anything else in `out` is a user's data or another copy: refuse, naming the file, rather than overwrite."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise PrepareError(f"prepare.out: {out} exists and is not a directory")
    stored_file = out / SETTINGS_FILE
    if stored_file.is_file():
        try:
            stored = json.loads(stored_file.read_text())
        except json.JSONDecodeError as err:
            raise PrepareError(f"{stored_file}: not a prepare settings file ({err}); refusing to write into {out}") \
                from err
        if stored != settings:
            differ = sorted(k for k in {**stored, **settings} if stored.get(k) != settings.get(k))
            what = out / MANIFEST_FILE if (out / MANIFEST_FILE).exists() else out
            raise PrepareError(
                f"{what} was made from a different source or settings ({stored_file} differs in "
                f"{', '.join(differ)}); refusing to overwrite it: choose another prepare.out or delete {out}"
            )
        return True
    if (out / MANIFEST_FILE).exists():
        raise PrepareError(f"{out / MANIFEST_FILE} exists but {out} has no {SETTINGS_FILE}: not a copy made by "
                           "workflows.reencode; refusing to overwrite it (choose another prepare.out)")
    if any(out.iterdir()):
        raise PrepareError(f"prepare.out: {out} is not empty and has no {SETTINGS_FILE}; refusing to write into it "
                           "(choose a new or empty folder)")
    return False


# --- the Ray task ----------------------------------------------------------------------------------------


def _short_reason(err: BaseException, src: str) -> str:
    text = str(err)
    # DecodeError messages start with the file name; the report has it in its own column.
    return text[len(src) + 2:] if text.startswith(f"{src}: ") else f"{type(err).__name__}: {text}"


def reencode_row(row: dict[str, Any], *, settings: dict[str, Any], threads: int) -> dict[str, Any]:
    """One video: re-encode into a temporary file beside the output, then rename. Never raises: a failure is a
    result row, so one bad file cannot stop the job."""
    src, dst = row["path"], Path(row["out_path"])
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")
    out = {"path": src, "out_path": str(dst), "status": "failed", "reason": "", "frames": 0}
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        result = reencode(src, tmp, short_side=settings["short_side"], fps=settings["fps"],
                          keyframe_interval=settings["keyframe_interval"], crf=settings["crf"],
                          preset=settings["preset"], threads=threads)
        os.replace(tmp, dst)
        out.update(status="encoded", frames=result.frames)
    except DecodeError as err:
        out["reason"] = _short_reason(err, src)
    except Exception as err:  # any failure of one file is that file's result, not the job's
        log.warning("re-encoding %s failed: %r", src, err)
        out["reason"] = _short_reason(err, src)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _encode_all(todo: list[dict[str, Any]], cfg: PrepareConfig) -> list[dict[str, Any]]:
    # here: Ray takes a second or more to load; --help and `vidssl config` (PrepareConfig) do without it
    import ray

    init_ray()
    cpus = float(ray.cluster_resources().get("CPU", 1))
    # A few blocks per task slot: enough to balance long and short videos across the cluster without paying
    # a task's start-up per file.
    blocks = min(len(todo), max(1, math.ceil(4 * cpus / cfg.decode_cpus)))
    ds = ray.data.from_items(todo, override_num_blocks=blocks)
    ds = ds.map(reencode_row, fn_kwargs={"settings": cfg.settings(), "threads": max(1, int(cfg.decode_cpus))},
                num_cpus=cfg.decode_cpus)
    return ds.take_all()


# --- the driver ------------------------------------------------------------------------------------------


def _ensure_source(cfg: PrepareConfig, dry_run: bool) -> bool:
    """Generate the synthetic source when asked and missing; False when it is missing and this is a dry run."""
    s, root = cfg.source.synthetic, Path(cfg.source.root)
    if dry_run:
        return not s.enabled or (root / "manifest.csv").exists()
    s.ensure(root)
    return True


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def run_prepare(cfg: PrepareConfig, *, dry_run: bool = False) -> Summary | None:
    """Re-encode the source into cfg.out (or, with dry_run, print the plan and return None)."""
    start = time.perf_counter()
    s = cfg.source
    out = Path(str(cfg.out)).expanduser().resolve()
    settings = cfg.settings()
    if not _ensure_source(cfg, dry_run):
        syn = s.synthetic
        print(f"plan: generate the synthetic dataset ({syn.classes} classes x {syn.videos_per_class} videos) in "
              f"{s.root}, then re-encode it into {out}")
        return None
    root = Path(s.root).expanduser().resolve()
    # Missing files are not fatal here: like any bad video they end up in the report.
    manifest = load_manifest(s.layout, root, csv_path=s.csv_path, ucf_split=s.ucf_split,
                             test_fraction=s.test_fraction, seed=s.split_seed, check_files=False,
                             infer_classes=s.infer_classes)
    resuming = check_out_dir(out, settings)
    planned = _plan(manifest, root)
    done = [p for p in planned if p.out_rel and (out / p.out_rel).is_file()]
    todo = [p for p in planned if p.out_rel and not (out / p.out_rel).is_file()]
    unplannable = [p for p in planned if not p.out_rel]
    if dry_run:
        print(f"plan: {len(planned)} videos ({len(manifest.classes)} classes) from {root} ({s.layout}) -> {out}"
              f"{' (resuming)' if resuming else ''}")
        print(f"  short side {cfg.short_side}, {cfg.fps} fps, keyframe every {cfg.keyframe_interval} frames, "
              f"libx264 crf {cfg.crf} preset {cfg.preset}, {cfg.decode_cpus:g} CPU per task")
        print(f"  to encode: {len(todo)}, already done: {len(done)}, unusable output names: {len(unplannable)}")
        return None

    out.mkdir(parents=True, exist_ok=True)
    if not resuming:
        # Written before any video, so that a killed first run is recognised (and resumed) as ours.
        _atomic_write(out / SETTINGS_FILE, json.dumps(settings, indent=2) + "\n")
    for stale in out.rglob(f".*{TMP_SUFFIX}"):  # what a killed run was writing: never a complete output
        stale.unlink(missing_ok=True)

    outcomes = [Outcome(p.record.path, "skipped", out_path=str(out / p.out_rel)) for p in done]
    outcomes += [Outcome(p.record.path, "failed", p.problem) for p in unplannable]
    if todo:
        rows = [{"path": p.record.path, "out_path": str(out / p.out_rel)} for p in todo]
        outcomes += [Outcome(**{k: r[k] for k in ("path", "status", "reason", "out_path", "frames")})
                     for r in _encode_all(rows, cfg)]

    by_path = {o.path: o for o in outcomes}
    good = [p for p in planned if by_path[p.record.path].status in ("encoded", "skipped")]
    _atomic_write(out / CLASSES_FILE, "".join(f"{c}\n" for c in manifest.classes))
    _atomic_write(out / MANIFEST_FILE, _csv_text(
        ("path", "label", "split"),
        [(p.out_rel, manifest.classes[p.record.label], p.record.split) for p in sorted(good, key=lambda p: p.out_rel)],
    ))
    failed = sorted((o for o in outcomes if o.status == "failed"), key=lambda o: o.path)
    # Rewritten every run: it lists what is missing from this manifest, and a fixed file leaves it.
    _atomic_write(out / REPORT_FILE, _csv_text(("path", "reason"), [(o.path, o.reason) for o in failed]))
    count = {k: sum(o.status == k for o in outcomes) for k in ("encoded", "skipped", "failed")}
    return Summary(str(root), out, len(planned), count["encoded"], count["skipped"], count["failed"],
                   time.perf_counter() - start, len(manifest.classes))


@reports_user_errors()
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML file with a `prepare:` section")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key, e.g. --set prepare.short_side=96 (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (files, out dir) and encode nothing")
    parser.add_argument("--verbose", action="store_true",
                        help="also print what Ray, Ray Data and MLflow log")
    args = parser.parse_args(argv)
    with terminal.session(args.verbose):
        cfg = load_prepare_config(args.config, args.set)
        summary = run_prepare(cfg, dry_run=args.dry_run)
        if summary is None:
            return 0
        print(f"prepared {summary.source} -> {summary.out}: {summary.total} videos in {summary.wall_s:.1f} s")
        print(f"  encoded {summary.encoded}, skipped (already done) {summary.skipped}, failed {summary.failed}"
              + (f" (listed in {summary.out / REPORT_FILE})" if summary.failed else ""))
        print(f"  manifest: {summary.out / MANIFEST_FILE} ({summary.encoded + summary.skipped} videos, "
              f"{summary.classes} classes)")
        print(f"  train on it: --set data.layout=csv --set data.root={summary.out}")
        # Nothing usable is a failed job (e.g. a wrong root full of non-videos); some bad files are not.
        return 0 if summary.encoded + summary.skipped else 1


if __name__ == "__main__":
    sys.exit(main())
