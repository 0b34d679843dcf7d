"""bench.class_sets: subsets keep only their classes' rows; a validation variant holds train videos only, a fifth of
each class as its test rows.

    .venv/bin/python -m pytest -q tests/unit/test_class_sets.py
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

from bench.class_sets import TRANSFER_SETS, subset, validation_variant
from ssl_core.data.manifest import load_manifest
from ssl_core.data.synthetic import CLASS_NAMES, MOTION_CLASSES

CLASSES = ("a", "b", "c")


def rows(root: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((root / "manifest.csv").open()))


def source(root: Path) -> Path:
    """10 train and 2 test files per class (empty: only their names matter here)."""
    lines = ["path,label,split"]
    for c in CLASSES:
        (root / c).mkdir(parents=True)
        for k in range(12):
            (root / c / f"{c}_{k}.mp4").touch()
            lines.append(f"{c}/{c}_{k}.mp4,{c},{'train' if k < 10 else 'test'}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root


def test_a_subset_and_its_validation_variant(tmp_path: Path) -> None:
    part = subset(source(tmp_path / "all"), tmp_path / "two", ["a", "c"])
    assert {r["label"] for r in rows(part)} == {"a", "c"} and len(rows(part)) == 24
    assert (part / "classes.txt").read_text().split() == ["a", "c"]
    val = validation_variant(part)
    assert val == tmp_path / "two_val"
    train = sorted(r["path"] for r in rows(part) if r["split"] == "train")
    assert sorted(r["path"] for r in rows(val)) == train  # every train video, no real test video
    assert Counter(r["label"] for r in rows(val) if r["split"] == "test") == Counter({"a": 2, "c": 2})
    assert rows(validation_variant(part)) == rows(val)  # seeded: the same draw again
    manifest = load_manifest("csv", val)
    assert manifest.classes == ("a", "c") and len(manifest.split("test")) == 4
    assert all(Path(r.path).is_file() for r in manifest.records)  # the class folders resolve through the links


def test_transfer_halves_split_every_kind_and_pair_siblings() -> None:
    source, target = TRANSFER_SETS["source7"], TRANSFER_SETS["target7"]
    assert sorted(source + target) == sorted(CLASS_NAMES) and not set(source) & set(target)
    for half in (source, target):  # motion- and appearance-defined classes on both sides
        assert set(half) & MOTION_CLASSES and set(half) - MOTION_CLASSES
    # each target class's sibling (the same family: move_, shape_, ...) is in the source
    assert all(any(s.split("_")[0] == t.split("_")[0] for s in source) for t in target)
