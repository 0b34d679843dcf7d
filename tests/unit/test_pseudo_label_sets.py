"""Pseudo-labeled sets: the offline Noisy Student loss (hand-computed), selecting / storing / reading a set,
how training's data preparation uses it, and the workflow file's validation.

    .venv/bin/python -m pytest -q tests/unit/test_pseudo_label_sets.py
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from ssl_core.algorithms import get_algorithm
from ssl_core.config import ConfigError, load_config
from ssl_core.data.manifest import load_manifest
from ssl_core.data.pseudo_labels import (
    PseudoLabelError,
    pseudo_label_stats,
    read_pseudo_labels,
    select_pseudo_labels,
    write_pseudo_labels,
)
from ssl_core.data.splits import prepare_data
from tests.unit.handmade import TableModel, ce, ids, softmax
from workflows.specs.noisy_student import load_noisy_student

OFFLINE = get_algorithm("noisy_student_offline")
DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
# ids: 0 labeled (label 1); 1, 2 strong views of u0, u1
STUDENT = [[0.2, 1.0, -0.5], [0.5, 1.5, 0.0], [1.0, -1.0, 2.0]]
TARGET = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]], dtype=torch.float64)


def step(**params: float | bool) -> object:
    algo = OFFLINE({"primary": TableModel(STUDENT)}, OFFLINE.Params(**params))
    return algo.train_step({"video": ids(0), "label": torch.tensor([1])},
                           {"weak": ids(1, 2), "strong": ids(1, 2), "target": TARGET})


def test_offline_hard_targets_with_filter() -> None:
    out = step(tau=0.6, lambda_u=2.0)
    # u0's stored max is 0.7 >= 0.6 -> class 1; u1's 0.5 is filtered; normalised by B_u = 2
    sup, unsup = ce(STUDENT[0], 1), ce(STUDENT[1], 1) / 2
    assert out.loss.item() == pytest.approx(sup + 2.0 * unsup, rel=1e-9)
    hard, mask = out.pseudo["primary"]
    assert hard.tolist() == [1, 0] and mask.tolist() == [True, False]
    assert float(out.metrics["pseudo/mask_rate_primary"]) == 0.5


def test_offline_soft_targets() -> None:
    out = step(soft=True)
    unsup = 0.0
    for q, row in zip(TARGET.tolist(), STUDENT[1:], strict=True):
        p = softmax(row)
        unsup -= sum(qc * math.log(pc) for qc, pc in zip(q, p, strict=True))
    assert float(out.metrics["loss/unsup_primary"]) == pytest.approx(unsup / 2, rel=1e-9)


def test_offline_needs_stored_targets() -> None:
    algo = OFFLINE({"primary": TableModel(STUDENT)})
    with pytest.raises(KeyError, match="target"):
        algo.train_step({"video": ids(0), "label": torch.tensor([1])}, {"weak": ids(1), "strong": ids(1)})


def test_select_filters_then_balances_classes() -> None:
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55]], np.float32)
    assert select_pseudo_labels(probs, min_confidence=0.6, top_k_per_class=None).tolist() == [0, 1, 2, 3]
    # class 0 has three confident videos: keep its two most confident (0 and 2); class 1 keeps video 3
    assert select_pseudo_labels(probs, min_confidence=0.6, top_k_per_class=2).tolist() == [0, 2, 3]
    assert select_pseudo_labels(probs, min_confidence=0.95, top_k_per_class=2).tolist() == []


def test_stats_count_confidence_and_known_truth_only() -> None:
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]], np.float32)
    stats = pseudo_label_stats(probs, ["a", "b"], np.array([0, 1, -1]))
    assert stats["size"] == 3 and stats["known_truth"] == 2
    assert stats["accuracy"] == pytest.approx(0.5)  # video 2's truth is unknown: not counted
    assert stats["per_class"]["a"]["count"] == 2 and stats["per_class"]["b"]["count"] == 1
    assert stats["mean_confidence"] == pytest.approx((0.9 + 0.6 + 0.7) / 3)


def test_write_then_read_round_trip_and_errors(tmp_path: Path) -> None:
    out = tmp_path / "set.parquet"
    probs = np.array([[0.25, 0.75], [1.0, 0.0]], np.float32)
    write_pseudo_labels(out, ["/v/b.mp4", "/v/a.mp4"], probs, ["x", "y"], {"labeled_by": "models:/t/1"})
    targets, meta = read_pseudo_labels(out, ["x", "y"])
    assert meta["labeled_by"] == "models:/t/1" and meta["classes"] == ["x", "y"]
    np.testing.assert_allclose(targets["/v/b.mp4"], [0.25, 0.75])
    assert pq.read_table(out).column("label_name").to_pylist() == ["y", "x"]
    with pytest.raises(PseudoLabelError, match="differ from the dataset"):
        read_pseudo_labels(out, ["y", "x"])
    with pytest.raises(PseudoLabelError, match="file not found"):
        read_pseudo_labels(tmp_path / "missing.parquet")
    bad = tmp_path / "bad.parquet"
    table = pa.table({"path": ["/v/a.mp4"], "probs": [[0.5, 0.2]]})
    pq.write_table(table.replace_schema_metadata({"vidssl": '{"classes": ["x", "y"]}'}), bad)
    with pytest.raises(PseudoLabelError, match=r"bad.parquet row 1: .* not a distribution"):
        read_pseudo_labels(bad)


def _config(root: Path, *extra: str):  # noqa: ANN202 (a Config)
    return load_config(DEMO, [f"data.root={root}", "data.synthetic.enabled=false", "data.labeled_per_class=1",
                              "data.labeled_fraction=null", *extra])


def test_config_pairs_the_set_with_the_offline_algorithm(synth_dataset: Path) -> None:
    with pytest.raises(ConfigError, match="data.pseudo_labels: algorithm noisy_student_offline needs"):
        _config(synth_dataset, "algorithm.name=noisy_student_offline")
    with pytest.raises(ConfigError, match="data.pseudo_labels: only algorithms that learn stored targets"):
        _config(synth_dataset, "algorithm.name=fixmatch", "data.pseudo_labels=x.parquet")


def test_training_data_streams_exactly_the_set(synth_dataset: Path, tmp_path: Path) -> None:
    manifest = load_manifest("csv", synth_dataset)
    split = tmp_path / "split.csv"
    base = prepare_data(_config(synth_dataset, f"data.labeled_split_file={split}"), None)
    chosen = [r.path for r in base.unlabeled[:3]]
    classes = list(manifest.classes)
    probs = np.full((3, len(classes)), 1 / len(classes), np.float32)
    write_pseudo_labels(tmp_path / "set.parquet", chosen, probs, classes, {})
    cfg = _config(synth_dataset, f"data.labeled_split_file={split}", "algorithm.name=noisy_student_offline",
                  f"data.pseudo_labels={tmp_path / 'set.parquet'}")
    data = prepare_data(cfg, None)
    assert sorted(r.path for r in data.unlabeled) == sorted(chosen) and set(data.targets) == set(chosen)
    assert [r.label for r in data.unlabeled] == [manifest_label(manifest, p) for p in sorted(chosen)]
    # a labeled or a test video in the set would leak labels: refused, naming the file and the video
    for leaked in (base.labeled[0].path, manifest.split("test")[0].path):
        write_pseudo_labels(tmp_path / "set.parquet", [leaked], probs[:1], classes, {})
        with pytest.raises(PseudoLabelError, match=r"set.parquet: .* split; a pseudo-labeled set may only"):
            prepare_data(cfg, None)


def manifest_label(manifest: object, path: str) -> int:
    return next(r.label for r in manifest.records if r.path == path)  # type: ignore[attr-defined]


def _spec(tmp_path: Path, **noisy: object) -> Path:
    spec = {"base": str(DEMO), "noisy_student": {"name": "t", "teacher": {"algorithm.name": "supervised"}, **noisy}}
    path = tmp_path / "ns.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_spec_stages_and_per_round_students(tmp_path: Path) -> None:
    spec = load_noisy_student(_spec(tmp_path, rounds=3, teacher={"model.primary": "small3d_w0.5"},
                                    students=[{"model.primary": "small3d_w0.5"}, {"model.primary": "small3d"}]))
    assert [s.key for s in spec.stages()] == ["round-0-teacher", "round-1-labels", "round-1-student",
                                              "round-2-labels", "round-2-student", "round-3-labels",
                                              "round-3-student"]
    assert [spec.student_point(r)["model.primary"] for r in (1, 2, 3)] == ["small3d_w0.5", "small3d", "small3d"]
    student = spec.stage_config(spec.stages()[2], "data.pseudo_labels=x.parquet")
    assert student.algorithm.name == "noisy_student_offline"
    # the base's tau (demo: CMPL's 0.95) must not filter the already-filtered set a second time
    assert student.algorithm.resolved_params().tau == 0.0


@pytest.mark.parametrize(("noisy", "message"), [
    ({"students": [{"model.primary": "small3d_w0.25"}]}, r"smaller than its teacher small3d \("),
    ({"student": {"algorithm.name": "fixmatch"}}, "algorithm.name is fixed to noisy_student_offline"),
    ({"teacher": {"algorithm.name": "noisy_student_offline"}},
     "round-0-teacher gives an invalid config: data.pseudo_labels"),
    ({"rounds": 0}, "noisy_student.rounds: must be an integer >= 1"),
    ({"pseudo_labels": {"min_confidence": 2}}, "min_confidence: must be in"),
    ({"pseudo_labels": {"treshold": 0.5}}, "noisy_student.pseudo_labels.treshold: unknown key"),
    ({"student": {"train.lr": -1}}, r"noisy_student.student\(s\): round-1-student gives an invalid config"),
    ({"epochs": 3}, "noisy_student.epochs: unknown key"),
])
def test_spec_errors_name_the_key(tmp_path: Path, noisy: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_noisy_student(_spec(tmp_path, **noisy))


def test_smaller_student_allowed_when_asked(tmp_path: Path) -> None:
    spec = load_noisy_student(_spec(tmp_path, allow_smaller_student=True,
                                    students=[{"model.primary": "small3d_w0.25"}]))
    assert spec.student_point(1)["model.primary"] == "small3d_w0.25"


def test_a_student_of_another_model_gets_that_models_input(tmp_path: Path) -> None:
    """The base is kept as written, so a student's model.primary brings its published input unless the base set
    the clip keys (as a sweep's trials do)."""
    base = {"data": {"root": "data/synth", "eval_clips": 1}, "model": {"primary": "small3d"}}
    path = tmp_path / "ns.yaml"
    path.write_text(yaml.safe_dump({"base": base, "noisy_student": {
        "name": "t", "rounds": 1, "teacher": {"algorithm.name": "supervised"}, "student": {"model.primary": "vit_s"}}}))
    spec = load_noisy_student(path)
    teacher, student = (spec.stage_config(s, *(("data.pseudo_labels=x.parquet",) if s.kind == "student" else ()))
                        for s in spec.stages() if s.kind != "labels")
    assert (teacher.data.num_frames, teacher.augment.crop_size) == (8, 64)
    assert (student.data.num_frames, student.data.stride, student.augment.crop_size) == (16, 4, 224)
    assert student.data.eval_clips == 1
