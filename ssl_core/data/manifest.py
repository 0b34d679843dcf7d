"""Dataset layouts -> one Manifest (absolute path, class index, train|test), and the labeled split file.

Layouts: "folder" (root/<class>/<video>, or root/{train,test}/<class>/<video>), "csv" (path,label[,split]),
"ucf101" (classInd.txt + trainlist0N.txt / testlist0N.txt) and "kinetics" (label,youtube_id,time_start,
time_end,split). A csv dataset's classes are the lines of <root>/classes.txt when it has one, else its labels (a
test row whose label no train row has is then an error, unless data.infer_classes). The labeled subset of the
train split is chosen class-balanced and written to a file, so that every run of an experiment (and every
baseline next to it) trains on the same labeled videos.

Try it:
    python -c "from ssl_core.data.manifest import load_manifest, select_labeled; \
m = load_manifest('csv', 'data/synth'); print(m.classes, len(select_labeled(m.split('train'), per_class=1)))"
"""

from __future__ import annotations

import csv
import io
import os
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssl_core.atomic_file import write_text_atomic
from ssl_core.data.synthetic import stratified_test_mask
from ssl_core.user_errors import UserError, read_text

VIDEO_EXTENSIONS: frozenset[str] = frozenset({".mp4", ".avi", ".mkv", ".webm", ".mov"})
LAYOUTS: tuple[str, ...] = ("csv", "folder", "kinetics", "ucf101")
SPLITS: tuple[str, ...] = ("train", "test")
# Kinetics ships train/val(idate)/test; with no separate validation stage here, every held-out row is "test".
_SPLIT_ALIASES: dict[str, str] = {
    "train": "train",
    "test": "test",
    "val": "test",
    "validate": "test",
    "validation": "test",
}


class ManifestError(UserError, ValueError):
    """Bad dataset description; the message names the file and the 1-based row or line."""


@dataclass(frozen=True)
class VideoRecord:
    path: str  # absolute
    label: int  # index into Manifest.classes
    split: str  # "train" | "test"


@dataclass(frozen=True)
class Manifest:
    classes: tuple[str, ...]
    records: tuple[VideoRecord, ...]

    def split(self, name: str) -> list[VideoRecord]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; valid: {', '.join(SPLITS)}")
        return [r for r in self.records if r.split == name]


def _abs(root: Path, path: str) -> str:
    return os.path.normpath(os.path.join(root, path))


def _where(file: Path, row: int, kind: str = "row") -> str:
    return f"{file} {kind} {row}"


def _within(path: str, root: Path) -> bool:
    return os.path.commonpath([path, str(root)]) == str(root)


def _inside(root: Path, base: Path, path: str, where: str) -> str:
    """`path` (relative to `base`, or absolute) as an absolute path under the dataset `root` (resolved).
    A manifest row must not make the loader read, and Ray ship, any file (`../../etc/passwd`); a path that
    reaches the root only through a symlinked prefix counts as inside."""
    full = _abs(base, path)
    if not (_within(full, root) or _within(os.path.realpath(full), root)):
        raise ManifestError(f"{where}: path {path!r} escapes the dataset root {root}")
    return full


def _check_file(path: str, file: Path, row: int, kind: str = "row") -> None:
    if not os.path.isfile(path):
        raise ManifestError(f"{_where(file, row, kind)}: file not found: {path}")


def _with_holdout(
    paths: list[str], labels: list[int], test_fraction: float, seed: int, classes: Sequence[str]
) -> list[VideoRecord]:
    """Class-stratified deterministic hold-out for layouts that carry no split."""
    is_test = stratified_test_mask(paths, [classes[i] for i in labels], test_fraction=test_fraction, seed=seed)
    return [VideoRecord(p, lab, "test" if t else "train") for p, lab, t in zip(paths, labels, is_test, strict=True)]


def _videos_in(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in VIDEO_EXTENSIONS
    )


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _load_folder(root: Path, test_fraction: float, seed: int) -> tuple[tuple[str, ...], list[VideoRecord]]:
    split_dirs = {s: root / s for s in SPLITS}
    if all(d.is_dir() and _class_dirs(d) for d in split_dirs.values()):
        classes = tuple(sorted({d.name for s in SPLITS for d in _class_dirs(split_dirs[s])}))
        index = {c: i for i, c in enumerate(classes)}
        records = [
            VideoRecord(str(v), index[d.name], s)
            for s in SPLITS
            for d in _class_dirs(split_dirs[s])
            for v in _videos_in(d)
        ]
        for c in classes:
            if not any(r.label == index[c] and r.split == "train" for r in records):
                raise ManifestError(f"{split_dirs['train'] / c}: no training videos for class {c!r}")
        return classes, records
    dirs = _class_dirs(root)
    classes = tuple(d.name for d in dirs)
    paths: list[str] = []
    labels: list[int] = []
    for i, d in enumerate(dirs):
        videos = _videos_in(d)
        if not videos:
            raise ManifestError(f"{d}: class folder holds no video files ({', '.join(sorted(VIDEO_EXTENSIONS))})")
        paths += [str(v) for v in videos]
        labels += [i] * len(videos)
    return classes, _with_holdout(paths, labels, test_fraction, seed, classes)


def _read_csv(file: Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (1-based line number, row) with stripped values; the header is line 1."""
    if not file.is_file():
        raise ManifestError(f"{file}: file not found")
    reader = csv.DictReader(io.StringIO(read_text(file, ManifestError), newline=""))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in required if c not in header]
    if missing:
        raise ManifestError(f"{_where(file, 1)}: header {header} lacks column(s) {missing}")
    reader.fieldnames = header
    for row in reader:
        values = {k: (v or "").strip() for k, v in row.items() if k is not None}
        if not any(values.values()):
            continue  # blank line
        yield reader.line_num, values


def _split_value(value: str, file: Path, row: int) -> str:
    split = _SPLIT_ALIASES.get(value.lower())
    if split is None:
        raise ManifestError(f"{_where(file, row)}: split must be one of {sorted(_SPLIT_ALIASES)}, got {value!r}")
    return split


def _read_class_list(file: Path) -> tuple[str, ...]:
    classes: list[str] = []
    for n, line in enumerate(read_text(file, ManifestError).splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        if name in classes:
            raise ManifestError(f"{_where(file, n, 'line')}: duplicate class {name!r}")
        classes.append(name)
    return tuple(classes)


def _check_test_labels(rows: Sequence[tuple[int, dict[str, str]]], csv_path: Path, class_file: Path) -> None:
    """Without a class list the classes are the labels of the train rows: a test row's label outside them (a typo,
    most likely) would become a class no video trains and no model predicts."""
    if "split" not in (rows[0][1] if rows else {}):
        return  # the hold-out is drawn per label: every label has train videos
    splits = [(n, row, _split_value(row["split"], csv_path, n)) for n, row in rows]
    trained = {row["label"] for _, row, split in splits if split == "train"}
    for n, row, split in splits:
        if split == "test" and row["label"] and row["label"] not in trained:
            raise ManifestError(
                f"{_where(csv_path, n)}: label {row['label']!r} is in no train row, and there is no {class_file} to "
                "list the classes: correct the label, write the class names one per line to classes.txt, or set "
                "data.infer_classes: true to take every label as a class")


def _load_csv(
    root: Path, csv_path: Path, test_fraction: float, seed: int, check_files: bool, confine: bool = True,
    infer_classes: bool = False,
) -> tuple[tuple[str, ...], list[VideoRecord]]:
    rows = list(_read_csv(csv_path, ("path", "label")))
    class_file = root / "classes.txt"
    fixed = _read_class_list(class_file) if class_file.is_file() else None
    if fixed is None and not infer_classes:
        _check_test_labels(rows, csv_path, class_file)
    classes = fixed if fixed is not None else tuple(sorted({r["label"] for _, r in rows}))
    index = {c: i for i, c in enumerate(classes)}
    paths, labels, splits = [], [], []
    for n, row in rows:
        if not row["path"] or not row["label"]:
            raise ManifestError(f"{_where(csv_path, n)}: empty path or label")
        if row["label"] not in index:
            raise ManifestError(f"{_where(csv_path, n)}: unknown class {row['label']!r} (not in {class_file})")
        path = _inside(root, root, row["path"], _where(csv_path, n)) if confine else _abs(root, row["path"])
        if check_files:
            _check_file(path, csv_path, n)
        paths.append(path)
        labels.append(index[row["label"]])
        if "split" in row:
            splits.append(_split_value(row["split"], csv_path, n))
    if "split" in (rows[0][1] if rows else {}):
        return classes, [VideoRecord(p, lab, s) for p, lab, s in zip(paths, labels, splits, strict=True)]
    return classes, _with_holdout(paths, labels, test_fraction, seed, classes)


def _ucf_lines(file: Path) -> Iterator[tuple[int, list[str]]]:
    if not file.is_file():
        raise ManifestError(f"{file}: file not found")
    for n, line in enumerate(read_text(file, ManifestError).splitlines(), start=1):
        if line.strip():
            yield n, line.split()


def _load_ucf101(root: Path, split: int, check_files: bool) -> tuple[tuple[str, ...], list[VideoRecord]]:
    if split not in (1, 2, 3):
        raise ManifestError(f"ucf_split must be 1, 2 or 3, got {split}")
    lists = root if (root / "classInd.txt").is_file() else root / "ucfTrainTestlist"
    videos = root / "UCF-101" if (root / "UCF-101").is_dir() else root
    class_file = lists / "classInd.txt"
    classes: list[str] = []
    for n, fields in _ucf_lines(class_file):
        if len(fields) != 2 or not fields[0].isdigit() or int(fields[0]) != len(classes) + 1:
            raise ManifestError(
                f"{_where(class_file, n, 'line')}: expected '{len(classes) + 1} <ClassName>', got {' '.join(fields)!r}"
            )
        classes.append(fields[1])
    index = {c: i for i, c in enumerate(classes)}
    records: list[VideoRecord] = []
    for name in ("train", "test"):
        file = lists / f"{name}list0{split}.txt"
        for n, fields in _ucf_lines(file):
            rel = fields[0].replace("\\", "/")
            folder = rel.split("/")[0] if "/" in rel else ""
            if folder not in index:
                raise ManifestError(f"{_where(file, n, 'line')}: unknown class {folder!r} in {rel!r}")
            label = index[folder]
            if len(fields) > 1 and fields[1] != str(label + 1):
                raise ManifestError(
                    f"{_where(file, n, 'line')}: class index {fields[1]} does not match folder "
                    f"{folder!r} (index {label + 1} in {class_file})"
                )
            path = _inside(root, videos, rel, _where(file, n, "line"))
            if check_files:
                _check_file(path, file, n, "line")
            records.append(VideoRecord(path, label, name))
    return tuple(classes), records


def _integer_time(value: str, file: Path, row: int) -> int:
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not number.is_integer():
        raise ManifestError(f"{_where(file, row)}: time value must be a whole number of seconds, got {value!r}")
    return int(number)


def _load_kinetics(root: Path, csv_path: Path, check_files: bool) -> tuple[tuple[str, ...], list[VideoRecord]]:
    rows = list(_read_csv(csv_path, ("label", "youtube_id", "time_start", "time_end", "split")))
    classes = tuple(sorted({r["label"] for _, r in rows}))
    index = {c: i for i, c in enumerate(classes)}
    records: list[VideoRecord] = []
    for n, row in rows:
        split = _split_value(row["split"], csv_path, n)
        start = _integer_time(row["time_start"], csv_path, n)
        end = _integer_time(row["time_end"], csv_path, n)
        name = f"{row['youtube_id']}_{start:06d}_{end:06d}.mp4"
        flat = _inside(root, root, os.path.join(row["split"], name), _where(csv_path, n))
        nested = _inside(root, root, os.path.join(row["split"], row["label"], name), _where(csv_path, n))
        path = nested if not os.path.isfile(flat) and os.path.isfile(nested) else flat
        if check_files and not os.path.isfile(path):
            raise ManifestError(f"{_where(csv_path, n)}: file not found: {flat} (nor {nested})")
        records.append(VideoRecord(path, index[row["label"]], split))
    return classes, records


def load_manifest(
    layout: str,
    root: str | Path,
    *,
    csv_path: str | Path | None = None,
    ucf_split: int = 1,
    test_fraction: float = 0.2,
    seed: int = 0,
    check_files: bool = True,
    confine: bool = True,
    infer_classes: bool = False,
) -> Manifest:
    """Read a dataset in one of LAYOUTS into a Manifest; see the module docstring for the layouts.

    confine=False lets a csv row name a video outside `root` (an absolute path): for a listing the user
    names on the command line (evaluate --data F.csv), never for a dataset a config points at.
    infer_classes (data.infer_classes): a csv without classes.txt takes every label as a class, even one that only
    test rows carry (otherwise an error naming the row)."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise ManifestError(f"{root}: dataset root is not a directory")
    if layout == "folder":
        classes, records = _load_folder(root, test_fraction, seed)
    elif layout == "csv":
        classes, records = _load_csv(
            root, Path(csv_path) if csv_path else root / "manifest.csv", test_fraction, seed, check_files, confine,
            infer_classes,
        )
    elif layout == "ucf101":
        classes, records = _load_ucf101(root, ucf_split, check_files)
    elif layout == "kinetics":
        if csv_path is None:
            raise ManifestError("the kinetics layout needs csv_path (label,youtube_id,time_start,time_end,split)")
        classes, records = _load_kinetics(root, Path(csv_path), check_files)
    else:
        raise ManifestError(f"unknown layout {layout!r}; valid layouts: {', '.join(LAYOUTS)}")
    if not records:
        raise ManifestError(f"{root}: no videos found with layout {layout!r}")
    return Manifest(classes=tuple(classes), records=tuple(records))


def class_counts(records: Sequence[VideoRecord], num_classes: int) -> list[int]:
    counts = [0] * num_classes
    for r in records:
        counts[r.label] += 1
    return counts


def select_labeled(
    records: Sequence[VideoRecord],
    *,
    fraction: float | None = None,
    per_class: int | None = None,
    seed: int = 0,
) -> list[VideoRecord]:
    """Class-balanced labeled subset: per class round(fraction * n) clipped to [1, n], or min(per_class, n).

    Deterministic from seed: each class is sorted by path, then shuffled by one seeded generator in label
    order. The result is sorted by path.
    """
    if (fraction is None) == (per_class is None):
        raise ValueError("select_labeled needs exactly one of fraction / per_class")
    if fraction is not None and not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if per_class is not None and per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    if not records:
        raise ValueError("select_labeled got no records")
    by_class: dict[int, list[VideoRecord]] = defaultdict(list)
    for r in records:
        by_class[r.label].append(r)
    rng = np.random.default_rng(seed)
    chosen: list[VideoRecord] = []
    for label in sorted(by_class):
        members = sorted(by_class[label], key=lambda r: r.path)
        n = len(members)
        k = min(per_class, n) if per_class is not None else min(n, max(1, round(fraction * n)))
        chosen += [members[i] for i in rng.permutation(n)[:k]]
    return sorted(chosen, key=lambda r: r.path)


def _relative(path: str, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return path


def write_split_file(path: Path, labeled: Sequence[VideoRecord], manifest: Manifest, root: Path) -> None:
    """Write the labeled subset as CSV (path,label); refuse to replace a file holding a different split."""
    root = Path(root).expanduser().resolve()
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "label"])
    for r in sorted(labeled, key=lambda r: r.path):
        writer.writerow([_relative(r.path, root), manifest.classes[r.label]])
    content = buf.getvalue()
    path = Path(path)
    if path.exists():
        if path.read_bytes() == content.encode():
            return
        raise FileExistsError(
            f"{path} already holds a different labeled split; refusing to overwrite it "
            "(delete it or choose another path)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, content)


def read_split_file(path: Path, manifest: Manifest, root: Path) -> list[VideoRecord]:
    """The manifest's train records named by a split file written by write_split_file."""
    root = Path(root).expanduser().resolve()
    path = Path(path)
    train = {r.path: r for r in manifest.split("train")}
    chosen: list[VideoRecord] = []
    seen: set[str] = set()
    for n, row in _read_csv(path, ("path", "label")):
        full = _inside(root, root, row["path"], _where(path, n))
        record = train.get(full)
        if record is None:
            raise ManifestError(f"{_where(path, n)}: {full} is not in the manifest's train split")
        if manifest.classes[record.label] != row["label"]:
            raise ManifestError(
                f"{_where(path, n)}: label {row['label']!r} but the manifest says "
                f"{manifest.classes[record.label]!r} for {full}"
            )
        if full in seen:
            raise ManifestError(f"{_where(path, n)}: duplicate entry {full}")
        seen.add(full)
        chosen.append(record)
    if not chosen:
        raise ManifestError(f"{path}: split file names no videos")
    return chosen
