"""A model labels a config's unlabeled train videos: score them (Ray Data, workflows.runtime.inference), keep the
confident ones (ssl_core.data.pseudo_labels.select_pseudo_labels), write the set, count what happened.

The labeling stages of workflows.noisy_student and of workflows.self_train:

    python -m workflows.self_train --config configs/selftrain_appearance.yaml --set model.init=<pretraining run>
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ssl_core.config import Config, ConfigError
from ssl_core.data.pseudo_labels import pseudo_label_stats, select_pseudo_labels, write_pseudo_labels
from ssl_core.data.splits import prepare_data
from workflows.specs.noisy_student import LabelSpec


@dataclass
class LabeledSet:
    path: Path
    candidates: int  # unlabeled train videos offered to the model
    skipped: dict[str, str]  # unreadable video -> why
    # pseudo_label_stats of the kept set: size, mean confidence, per class; accuracy where the truth is known
    # (metrics only), plus accuracy_before_filter (every scored video)
    stats: dict[str, Any]


def per_class_limit(labels: LabelSpec, scored: int, num_classes: int) -> int | None:
    """K of the class balancing: top_k_per_class, or top_fraction_per_class of an even share of the scored videos."""
    if labels.top_fraction_per_class is None:
        return labels.top_k_per_class
    return max(1, round(labels.top_fraction_per_class * scored / num_classes))


def label_unlabeled(cfg: Config, model: str, labels: LabelSpec, out: Path, *, tracking_uri: str | None,
                    made_by: dict[str, Any]) -> LabeledSet:
    """Score `cfg`'s unlabeled train videos (its labeled split decides which) with `model` (any
    load_for_inference spec), keep those `labels` asks for and write them to `out` (with `made_by` in its
    metadata). The true labels ride along for the statistics only; the stored set never holds them."""
    # here: Ray takes seconds to load
    from workflows.runtime.inference import load_for_inference, score_videos

    data = prepare_data(cfg, run_dir=None)
    classes = list(data.manifest.classes)
    loaded = load_for_inference(model, tracking_uri, trust_pickle=cfg.model.trust_pickle)
    if loaded.classes != classes:
        raise ConfigError(f"model {model} knows classes {loaded.classes}, the data {classes}")
    items = [{"path": r.path, "label": r.label} for r in data.unlabeled]
    ds = score_videos(items, loaded, clips=labels.clips, crops=labels.crops, decode_cpus=cfg.data.decode_cpus)
    paths, probs, truth, skipped = [], [], [], {}
    for batch in ds.iter_batches(batch_size=256, batch_format="numpy"):
        for path, label, p, error in zip(batch["path"], batch["label"], batch["probs"], batch["error"], strict=True):
            if error:
                skipped[str(path)] = str(error)
            else:
                paths.append(str(path))
                probs.append(p)
                truth.append(int(label))
    order = np.argsort(paths)  # Ray Data does not keep row order; a sorted set hashes the same every time
    paths = [paths[i] for i in order]
    all_probs = np.asarray(probs, np.float32).reshape(-1, len(classes))[order]
    all_truth = np.asarray(truth, np.int64)[order]
    kept = select_pseudo_labels(all_probs, min_confidence=labels.min_confidence,
                                top_k_per_class=per_class_limit(labels, len(paths), len(classes)))
    write_pseudo_labels(out, [paths[i] for i in kept], all_probs[kept], classes,
                        {**made_by, **{f"filter.{k}": v for k, v in dataclasses.asdict(labels).items()}})
    stats = pseudo_label_stats(all_probs[kept], classes, all_truth[kept])
    stats["accuracy_before_filter"] = pseudo_label_stats(all_probs, classes, all_truth)["accuracy"]
    return LabeledSet(Path(out), len(items), skipped, stats)
