"""Class sets that separate what the classes differ by: appearance-only, motion-only, and validation variants.

    python -m bench.class_sets --out data/class_sets
    python -m ssl_core.loop --config configs/demo.yaml --set data.root=data/class_sets/appearance6_val \
        --set data.synthetic.enabled=false --set data.labeled_fraction=0.05 --set model.primary=frame2d

Generates the 14-class synthetic set once (`<out>/synth14`, 100 videos per class), then writes, beside it, one
folder per class set holding only its classes' manifest rows and `classes.txt` (the class folders are links into
synth14): `appearance6` (classes differ only by the object's shape or texture), `motion8` (only by how it moves),
and the transfer benchmark's `source7` / `target7` (every other class each).
Each set, and the demo's generated set when `--demo-root` names it, also gets a `<set>_val` variant: the same
train videos, of which a fifth of each class become its `test` rows (the validation split) while the real test
rows are left out. Recipe choices are made on the `_val` folders; the test split only reports them.
"""

from __future__ import annotations

import argparse
import csv
import random
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from ssl_core.data.synthetic import CLASS_NAMES, MOTION_CLASSES, generate

VAL_SHARE = 5  # one train video in VAL_SHARE of each class goes to the validation split
# The transfer benchmark's halves (bench/transfer.py): every other class of the generator's list, which pairs
# siblings (move_left / move_right, shape_square / shape_disc, ...), so each half holds motion- and
# appearance-defined classes and every target class has a relative in the source: a stand-in for Kinetics -> UCF.
TRANSFER_SETS = {"source7": list(CLASS_NAMES[0::2]), "target7": list(CLASS_NAMES[1::2])}


def _link_classes(out: Path, source: Path, folders: set[str]) -> None:
    for folder in sorted(folders):
        link = out / folder
        if not link.exists():
            link.symlink_to((source / folder).resolve(), target_is_directory=True)


def _write(out: Path, rows: list[dict[str, str]], classes: Sequence[str]) -> None:
    with (out / "manifest.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "split"])
        writer.writeheader()
        writer.writerows({k: r[k] for k in ("path", "label", "split")} for r in rows)
    (out / "classes.txt").write_text("".join(f"{c}\n" for c in classes))


def subset(source: Path, out: Path, classes: Sequence[str]) -> Path:
    """`out` with the rows of `classes` only (class folders linked into `source`)."""
    rows = [r for r in csv.DictReader((source / "manifest.csv").open()) if r["label"] in classes]
    out.mkdir(parents=True, exist_ok=True)
    _link_classes(out, source, {r["path"].split("/")[0] for r in rows})
    _write(out, rows, classes)
    return out


def validation_variant(source: Path, seed: int = 0) -> Path:
    """`<source>_val`: a fifth of each class's train videos (seeded draw) as its test rows, no real test rows."""
    out = source.parent / f"{source.name}_val"
    by_class: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in csv.DictReader((source / "manifest.csv").open()):
        if row["split"] == "train":
            by_class[row["label"]].append(row)
    rng = random.Random(seed)
    rows: list[dict[str, str]] = []
    for _, members in sorted(by_class.items()):
        rng.shuffle(members)
        held = len(members) // VAL_SHARE
        rows += [{**r, "split": "test"} for r in members[:held]] + members[held:]
    out.mkdir(parents=True, exist_ok=True)
    _link_classes(out, source, {r["path"].split("/")[0] for r in rows})
    _write(out, rows, (source / "classes.txt").read_text().split())
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/class_sets"))
    parser.add_argument("--videos-per-class", type=int, default=100)
    parser.add_argument("--demo-root", type=Path, help="the demo's generated set (data/synth): add its _val variant")
    args = parser.parse_args(argv)
    synth = args.out / "synth14"
    if not (synth / "manifest.csv").exists():
        generate(synth, classes=len(CLASS_NAMES), videos_per_class=args.videos_per_class, seed=0)
    sets = {"appearance6": [c for c in CLASS_NAMES if c not in MOTION_CLASSES],
            "motion8": [c for c in CLASS_NAMES if c in MOTION_CLASSES], **TRANSFER_SETS}
    for name, classes in sets.items():
        print(validation_variant(subset(synth, args.out / name, classes)))
    if args.demo_root is not None:
        demo = args.out / "demo"
        if not demo.exists():
            demo.symlink_to(args.demo_root.resolve(), target_is_directory=True)
        print(validation_variant(demo))


if __name__ == "__main__":
    main()
