"""Which videos each pretraining term reads.

The objective reads every train video of the manifest, without its label. The labeled term
(`pretrain.labeled_weight` > 0) reads the labeled split under its labels and, with `data.pseudo_labels`, beside it
the videos of that pseudo-labeled set under their teacher's top class (a set written by workflows.self_train). The
true labels of unlabeled videos never reach any of these lists.
"""

from __future__ import annotations

from pathlib import Path

from ssl_core.config import Config
from ssl_core.data.manifest import VideoRecord
from ssl_core.data.splits import PreparedData, prepare_data


def prepare_pretrain_data(cfg: Config, run_dir: Path | None) -> PreparedData:
    """The run's labeled split (the k-NN memory bank [and the labeled term's]) and, with data.pseudo_labels, its
    set; a set that holds no videos is a config error naming the file."""
    return prepare_data(cfg, run_dir, needs_unlabeled=cfg.data.pseudo_labels is not None)


def objective_records(data: PreparedData) -> list[VideoRecord]:
    """Every train video, the labeled split first (data.unlabeled holds only the set's videos under
    data.pseudo_labels, so the manifest is the source)."""
    labeled = {r.path for r in data.labeled}
    return [*data.labeled, *(r for r in data.manifest.split("train") if r.path not in labeled)]


def pseudo_records(data: PreparedData) -> list[VideoRecord]:
    """The pseudo-labeled set's videos, label = the teacher's argmax (not the record's truth); [] without a set."""
    return [VideoRecord(path, int(probs.argmax()), "train") for path, probs in sorted((data.targets or {}).items())]
