"""A pseudo-labeled set: which unlabeled videos a teacher labeled, with what distribution, kept how.

Written by the labeling stage of workflows/noisy_student.py, read by training (`data.pseudo_labels`, for
`noisy_student_offline`). One Parquet file, one row per kept video:

    path (str, absolute) | label (int32, argmax) | label_name (str) | confidence (float32) | probs (list<float32>)

and the schema metadata key `vidssl` (JSON): the class list (order = the probs' order) plus how the set was
made (teacher model URI, filter settings). Ground truth is never stored here: statistics that need it take it
as an argument and only ever feed metrics.

    python -c "from ssl_core.data.pseudo_labels import read_pseudo_labels; \
print(len(read_pseudo_labels('runs/noisy-student-demo/round-1/pseudo_labels.parquet')[0]))"
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ssl_core.user_errors import UserError

COLUMNS = ("path", "label", "label_name", "confidence", "probs")


class PseudoLabelError(UserError, ValueError):
    """A pseudo-labeled set that cannot be used; the message names the file (and the row)."""


def select_pseudo_labels(
    probs: np.ndarray,  # (N, C) teacher probabilities
    *,
    min_confidence: float,
    top_k_per_class: int | None,
) -> np.ndarray:  # indices into probs of the kept videos, sorted
    """Keep videos whose max probability >= min_confidence; with top_k_per_class, of those only the K most
    confident per predicted class (Noisy Student's class balancing, without the paper's duplication of rare
    classes: duplicates would repeat the same few clips rather than add information)."""
    if probs.ndim != 2:
        raise ValueError(f"probs must be (N, C), got shape {probs.shape}")
    confidence, label = probs.max(axis=1), probs.argmax(axis=1)
    kept = np.flatnonzero(confidence >= min_confidence)
    if top_k_per_class is None:
        return kept
    if top_k_per_class < 1:
        raise ValueError(f"top_k_per_class must be >= 1 or None, got {top_k_per_class}")
    chosen: list[np.ndarray] = []
    for c in np.unique(label[kept]):
        members = kept[label[kept] == c]
        # stable sort on -confidence: equal confidences keep input order, so the choice is deterministic
        chosen.append(members[np.argsort(-confidence[members], kind="stable")[:top_k_per_class]])
    return np.sort(np.concatenate(chosen)) if chosen else kept


def pseudo_label_stats(
    probs: np.ndarray,  # (N, C) of the kept videos
    classes: Sequence[str],
    truth: np.ndarray | None = None,  # (N,) true class index, -1 unknown; metrics only
) -> dict[str, Any]:
    """Size, per-class counts, mean confidence and, where the truth is known, accuracy (overall and per class)."""
    label, confidence = probs.argmax(axis=1), probs.max(axis=1)
    stats: dict[str, Any] = {
        "size": int(len(probs)),
        "mean_confidence": float(confidence.mean()) if len(probs) else float("nan"),
        "per_class": {
            name: {"count": int((label == i).sum()),
                   "mean_confidence": float(confidence[label == i].mean()) if (label == i).any() else float("nan")}
            for i, name in enumerate(classes)
        },
    }
    if truth is not None:
        known = truth >= 0
        stats["known_truth"] = int(known.sum())
        stats["accuracy"] = float((label[known] == truth[known]).mean()) if known.any() else float("nan")
        for i, name in enumerate(classes):
            sel = known & (label == i)
            stats["per_class"][name]["accuracy"] = float((truth[sel] == i).mean()) if sel.any() else float("nan")
    return stats


def write_pseudo_labels(
    path: Path, paths: Sequence[str], probs: np.ndarray, classes: Sequence[str], made_by: Mapping[str, Any]
) -> None:
    """Write the set atomically (temp file + rename: a crash never leaves a half set that training would read)."""
    probs = np.asarray(probs, dtype=np.float32)
    if probs.shape != (len(paths), len(classes)):
        raise ValueError(f"probs shape {probs.shape} != ({len(paths)} videos, {len(classes)} classes)")
    label = probs.argmax(axis=1).astype(np.int32) if len(paths) else np.zeros(0, np.int32)
    table = pa.table({
        "path": pa.array([str(p) for p in paths], pa.string()),
        "label": pa.array(label, pa.int32()),
        "label_name": pa.array([classes[i] for i in label], pa.string()),
        "confidence": pa.array(probs.max(axis=1) if len(paths) else np.zeros(0, np.float32), pa.float32()),
        "probs": pa.array(list(probs), pa.list_(pa.float32())),
    })
    meta = {"classes": list(classes), **made_by}
    table = table.replace_schema_metadata({"vidssl": json.dumps(meta)})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def read_pseudo_labels(
    path: str | Path, classes: Sequence[str] | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(absolute video path -> (C,) float32 probs, the set's metadata); with `classes`, the set's class list
    must be exactly that (same names, same order), or its probabilities would teach the wrong classes."""
    path = Path(path)
    try:
        table = pq.read_table(path)
    except FileNotFoundError as err:
        raise PseudoLabelError(f"data.pseudo_labels: file not found: {path}") from err
    except (pa.ArrowInvalid, OSError) as err:
        raise PseudoLabelError(f"{path}: not a readable Parquet file: {err}") from err
    missing = [c for c in ("path", "probs") if c not in table.column_names]
    if missing:
        raise PseudoLabelError(f"{path}: missing columns {missing} (has {table.column_names})")
    raw_meta = (table.schema.metadata or {}).get(b"vidssl")
    if raw_meta is None:
        raise PseudoLabelError(f"{path}: no 'vidssl' schema metadata (the class list); write it with "
                               "ssl_core.data.pseudo_labels.write_pseudo_labels")
    meta = json.loads(raw_meta)
    set_classes = list(meta.get("classes") or [])
    if classes is not None and set_classes != list(classes):
        raise PseudoLabelError(f"{path}: its classes {set_classes} differ from the dataset's {list(classes)}")
    targets: dict[str, np.ndarray] = {}
    for row, (video, p) in enumerate(zip(table.column("path").to_pylist(), table.column("probs").to_pylist(),
                                         strict=True), start=1):
        if not video or p is None or len(p) != len(set_classes):
            raise PseudoLabelError(f"{path} row {row}: need a path and {len(set_classes)} probabilities")
        full = os.path.normpath(path.parent / video)  # absolute paths stay as they are
        if full in targets:
            raise PseudoLabelError(f"{path} row {row}: duplicate video {full}")
        probs = np.asarray(p, dtype=np.float32)
        if not np.isfinite(probs).all() or probs.min() < 0 or abs(float(probs.sum()) - 1) > 1e-3:
            raise PseudoLabelError(f"{path} row {row}: probabilities of {full} are not a distribution")
        targets[full] = probs
    return targets, meta
