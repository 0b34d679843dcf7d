"""Which videos each pretraining term reads.

The objective reads every train video of the manifest, without its label. The labeled term
(`pretrain.labeled_weight` > 0) reads the labeled split under its labels and, with `data.pseudo_labels`, the
videos of that pseudo-labeled set under their teacher's top class (self-training: a set written by
`python -m workflows.pseudo_label`). The true labels of unlabeled videos never reach either list.
"""

from __future__ import annotations

from ssl_core.data.manifest import VideoRecord
from ssl_core.data.splits import PreparedData


def objective_records(data: PreparedData) -> list[VideoRecord]:
    """Every train video, the labeled split first (data.unlabeled holds only the set's videos under
    data.pseudo_labels, so the manifest is the source)."""
    labeled = {r.path for r in data.labeled}
    return [*data.labeled, *(r for r in data.manifest.split("train") if r.path not in labeled)]


def labeled_records(data: PreparedData) -> list[VideoRecord]:
    """The labeled split, then the pseudo-labeled videos (label = the teacher's argmax, not the record's truth)."""
    if not data.targets:
        return list(data.labeled)
    return [*data.labeled, *(VideoRecord(path, int(probs.argmax()), "train")
                             for path, probs in sorted(data.targets.items()))]
