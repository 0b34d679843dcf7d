"""The label queue's pieces: score functions on hand-made probabilities, ranking, strategy choice, candidate
selection. The command end to end (Ray Data, MLflow): tests/e2e/test_label_queue.py.

    .venv/bin/python -m pytest -q tests/unit/test_label_queue_scores.py
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from workflows import label_queue as lq

# --- scores -----------------------------------------------------------------------------------------------


def test_margin_and_normalized_entropy_by_hand() -> None:
    probs = np.array([[0.5, 0.25, 0.25, 0.0], [0.25] * 4, [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]])
    np.testing.assert_allclose(lq.margin(probs), [0.25, 0.0, 1.0, 0.0])
    # In bits: H = 0.5*1 + 0.25*2 + 0.25*2 = 1.5 of log2(4) = 2 -> 0.75; uniform 1; one-hot 0; two halves 1/2.
    np.testing.assert_allclose(lq.normalized_entropy(probs), [0.75, 1.0, 0.0, 0.5], atol=1e-12)


def test_js_divergence_and_disagreement_by_hand() -> None:
    p = np.array([[1.0, 0.0], [0.3, 0.7], [1.0, 0.0], [0.6, 0.4]])
    q = np.array([[0.0, 1.0], [0.3, 0.7], [0.5, 0.5], [0.4, 0.6]])
    # Row 3: m = (0.75, 0.25); KL(p||m) = log2(4/3) = 0.415037; KL(q||m) = 0.5*log2(2/3) + 0.5*log2(2) = 0.207519;
    # JS = their mean = 0.311278. Disjoint supports: 1 bit; equal rows: 0.
    np.testing.assert_allclose(lq.js_divergence(p, q)[:3], [1.0, 0.0, 0.311278], atol=1e-6)
    np.testing.assert_allclose(lq.js_divergence(p, q), lq.js_divergence(q, p))  # symmetric
    assert lq.models_disagree(p, q).tolist() == [True, False, False, True]


def test_rank_margin_and_entropy_with_path_tie_break() -> None:
    paths = ["/v/d.mp4", "/v/b.mp4", "/v/a.mp4", "/v/c.mp4"]
    probs = np.array([
        [0.5, 0.25, 0.25],  # d: margin 0.25, entropy 0.946 (the highest)
        [0.9, 0.05, 0.05],  # b: margin 0.85, entropy 0.357
        [0.45, 0.45, 0.10],  # a: margin 0,    entropy 0.864
        [0.45, 0.45, 0.10],  # c: the same as a: the path decides
    ])
    scores = lq.Scores.of(paths, probs)
    assert [paths[i] for i in lq.rank(scores, "margin")] == ["/v/a.mp4", "/v/c.mp4", "/v/d.mp4", "/v/b.mp4"]
    assert [paths[i] for i in lq.rank(scores, "entropy")] == ["/v/d.mp4", "/v/a.mp4", "/v/c.mp4", "/v/b.mp4"]
    with pytest.raises(ValueError, match="auxiliary"):
        lq.rank(scores, "disagreement")


def test_rank_disagreement_first_then_js_then_margin() -> None:
    rows = {  # path: (primary, auxiliary)
        "/v/x.mp4": ([0.45, 0.40, 0.15], [0.40, 0.45, 0.15]),  # disagree, JS ~0.002
        "/v/y.mp4": ([0.90, 0.05, 0.05], [0.40, 0.30, 0.30]),  # agree, JS ~0.15
        "/v/z.mp4": ([0.80, 0.10, 0.10], [0.10, 0.80, 0.10]),  # disagree, JS ~0.46
        "/v/v.mp4": ([0.70, 0.20, 0.10], [0.70, 0.20, 0.10]),  # agree, JS 0, margin 0.5
        "/v/w.mp4": ([0.50, 0.30, 0.20], [0.50, 0.30, 0.20]),  # agree, JS 0, margin 0.2
        "/v/u.mp4": ([0.50, 0.30, 0.20], [0.50, 0.30, 0.20]),  # the same as w: the path decides
    }
    paths = list(rows)
    scores = lq.Scores.of(paths, np.array([r[0] for r in rows.values()]), np.array([r[1] for r in rows.values()]))
    assert scores.disagreement is not None
    assert scores.disagreement[2] > scores.disagreement[1] > scores.disagreement[0] > 0
    order = [paths[i] for i in lq.rank(scores, "disagreement")]
    assert order == ["/v/z.mp4", "/v/x.mp4", "/v/y.mp4", "/v/u.mp4", "/v/w.mp4", "/v/v.mp4"]
    rows_out = lq.queue_rows(scores, lq.rank(scores, "disagreement"), ["run", "jump", "sit"], budget=2)
    assert rows_out == [
        {"rank": "1", "path": "/v/z.mp4", "suggested_label": "run", "confidence": "0.800000", "margin": "0.700000",
         "entropy": f"{scores.entropy[2]:.6f}", "aux_label": "jump", "aux_confidence": "0.800000",
         "disagreement": f"{scores.disagreement[2]:.6f}", "models_disagree": "true"},
        {"rank": "2", "path": "/v/x.mp4", "suggested_label": "run", "confidence": "0.450000", "margin": "0.050000",
         "entropy": f"{scores.entropy[0]:.6f}", "aux_label": "jump", "aux_confidence": "0.450000",
         "disagreement": f"{scores.disagreement[0]:.6f}", "models_disagree": "true"},
    ]


def test_resolve_strategy() -> None:
    assert lq.resolve_strategy("auto", with_aux=True) == "disagreement"
    assert lq.resolve_strategy("auto", with_aux=False) == "margin"
    assert lq.resolve_strategy("entropy", with_aux=True) == "entropy"
    with pytest.raises(lq.InputError, match="--aux-model"):
        lq.resolve_strategy("disagreement", with_aux=False)


# --- candidates -------------------------------------------------------------------------------------------


def test_candidates_from_a_config_and_exclude_rules(synth_dataset: Path, tmp_path: Path) -> None:
    rows = list(csv.DictReader((synth_dataset / "manifest.csv").open()))
    train = sorted(str(synth_dataset / r["path"]) for r in rows if r["split"] == "train")
    split = tmp_path / "labeled_split.csv"  # a training run's split file: paths relative to data.root
    split.write_text(f"path,label\n{Path(train[0]).relative_to(synth_dataset)},{Path(train[0]).parent.name}\n")
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"data": {"root": str(synth_dataset), "layout": "csv",
                                               "labeled_split_file": str(split)}}))
    got = lq.collect_candidates(str(config), [])
    assert (got.paths, got.root, got.excluded) == (train[1:], synth_dataset.resolve(), 1)
    # An --exclude listing relative to its own folder, another relative to the dataset root, one absolute.
    own = tmp_path / "own.csv"
    own.write_text(f"path\n{os.path.relpath(train[1], tmp_path)}\n")
    by_root = tmp_path / "elsewhere" / "by_root.csv"
    by_root.parent.mkdir()
    by_root.write_text(f"path,label\n{Path(train[2]).relative_to(synth_dataset)},x\n{train[3]}\n")
    got = lq.collect_candidates(str(config), [str(own), str(by_root)])
    assert got.paths == train[4:] and got.excluded == 4
    with pytest.raises(lq.InputError, match="no 'path' column"):
        (tmp_path / "bad.csv").write_text("video\nx.mp4\n")
        lq.collect_candidates(str(config), [str(tmp_path / "bad.csv")])
