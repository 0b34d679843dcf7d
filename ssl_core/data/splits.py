"""Dataset on disk -> manifest -> labeled / unlabeled / test records, with the labeled split as a file.

Generates the synthetic dataset first when the config asks for it and `data.root` has none.
With `data.pseudo_labels` the unlabeled records are the videos of that pseudo-labeled set (with their stored
teacher probabilities as `targets`); a video of the set that is labeled or in the test split is an error.
The labeled split is written to `<run_dir>/labeled_split.csv`; `data.labeled_split_file` names a split to
reuse (or, when that file does not exist yet, where to write the new one).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssl_core.config import Config, ConfigError
from ssl_core.data.manifest import (
    Manifest,
    ManifestError,
    VideoRecord,
    load_manifest,
    read_split_file,
    select_labeled,
    write_split_file,
)

log = logging.getLogger("vidssl.data")
SPLIT_FILE = "labeled_split.csv"


@dataclass(frozen=True)
class PreparedData:
    manifest: Manifest
    labeled: list[VideoRecord]
    unlabeled: list[VideoRecord]  # train records outside the labeled split; their labels feed metrics only
    test: list[VideoRecord]
    split_file: Path | None
    # video path -> (C,) stored teacher probabilities, when data.pseudo_labels is set
    targets: dict[str, np.ndarray] | None = None


def ensure_synthetic(cfg: Config) -> None:
    """Generate the synthetic dataset into data.root when the config asks for it and there is none."""
    cfg.data.synthetic.ensure(cfg.data.root)


def prepare_data(cfg: Config, run_dir: Path | None, *, needs_unlabeled: bool = False) -> PreparedData:
    """The run's records and its labeled split file. `needs_unlabeled`: the algorithm learns from unlabeled videos,
    so a split that leaves none is a ConfigError naming the key that labeled them all (before any training)."""
    d = cfg.data
    ensure_synthetic(cfg)
    root = Path(d.root)
    manifest = load_manifest(
        d.layout, root, csv_path=d.csv_path, ucf_split=d.ucf_split, test_fraction=d.test_fraction, seed=d.split_seed,
        infer_classes=d.infer_classes,
    )
    train = manifest.split("train")
    if not train:
        raise ManifestError(f"{root} (layout {d.layout}): no videos in the train split, only test ones")
    given = Path(d.labeled_split_file) if d.labeled_split_file else None
    reuse = given is not None and given.exists()
    if reuse:
        labeled = read_split_file(given, manifest, root)
        chosen_by = f"data.labeled_split_file ({given})"
    else:
        labeled = select_labeled(train, fraction=d.labeled_fraction, per_class=d.labeled_per_class, seed=d.split_seed)
        chosen_by = (f"data.labeled_per_class={d.labeled_per_class}" if d.labeled_per_class is not None
                     else f"data.labeled_fraction={d.labeled_fraction}")
    chosen = {r.path for r in labeled}
    unlabeled = [r for r in train if r.path not in chosen]
    # Before the split file is written: a split that cannot be trained must not be reused by the next run.
    if needs_unlabeled and d.pseudo_labels is None and not unlabeled:
        raise ConfigError(f"{chosen_by} labels all {len(train)} train videos, leaving none unlabeled for algorithm "
                          f"{cfg.algorithm.name}, which learns from unlabeled videos: label fewer, or train with "
                          "algorithm.name=supervised")
    split_file = given or (run_dir / SPLIT_FILE if run_dir is not None else None)
    if split_file is not None and not reuse:
        split_file.parent.mkdir(parents=True, exist_ok=True)
        write_split_file(split_file, labeled, manifest, root)
    test = manifest.split("test")
    if d.pseudo_labels is None:
        return PreparedData(manifest, labeled, unlabeled, test, split_file)
    # Imported here: pseudo_labels needs pyarrow, which the Ray-free loop on a GPU machine may not have.
    from ssl_core.data.pseudo_labels import PseudoLabelError, read_pseudo_labels

    targets, _ = read_pseudo_labels(d.pseudo_labels, manifest.classes)
    held_out = {r.path for r in test}
    for path in targets:
        if path in chosen or path in held_out:
            raise PseudoLabelError(f"{d.pseudo_labels}: {path} is in the {'labeled' if path in chosen else 'test'} "
                                   "split; a pseudo-labeled set may only hold unlabeled videos")
    if needs_unlabeled and not targets:
        raise ConfigError(f"data.pseudo_labels: {d.pseudo_labels} holds no videos to learn from")
    by_path = {r.path: r for r in train}
    # A video outside the manifest (an extra unlabeled collection) has no known truth: label -1.
    unlabeled = [by_path.get(path, VideoRecord(path, -1, "train")) for path in sorted(targets)]
    return PreparedData(manifest, labeled, unlabeled, test, split_file, targets)
