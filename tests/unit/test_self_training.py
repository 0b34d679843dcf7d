"""Self-training's pieces without Ray: the pretraining stage's labeled term over the labeled split plus a
pseudo-labeled set (under the teacher's labels, never the truth), the labels-only stage that decodes no train
video, and the self-training file's checks. Through Ray Data, Ray Train and MLflow: tests/slow/test_e2e_self_train.py.

    .venv/bin/python -m pytest -q tests/unit/test_self_training.py
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from ssl_core.data.pseudo_labels import write_pseudo_labels
from ssl_core.data.splits import prepare_data
from ssl_core.engine import Report
from ssl_core.pretrain import local
from ssl_core.pretrain.config import load_pretrain_config
from ssl_core.pretrain.records import objective_records, pseudo_records
from ssl_core.typed_config import ConfigError
from workflows.self_train import main, stage_names
from workflows.specs.self_train import load_self_train

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
STAGE = CONFIGS / "selftrain_appearance.yaml"


def _tiny(dataset: Path, tmp: Path) -> list[str]:
    return [f"data.root={dataset}", "data.synthetic.enabled=false", "data.labeled_fraction=0.5", "data.num_frames=4",
            "data.size=40", "data.eval_clips=1", "augment.crop_size=32", "data.cache=off",
            "model.primary=frame2d_w0.25", "train.batch_size=4", "train.log_every=1", "train.warmup_iters=1",
            "train.iterations=2", "train.checkpoint_every=2", "pretrain.knn_every=0", "pretrain.hidden_dim=32",
            "pretrain.proj_dim=16", "pretrain.probe_steps=0", "pretrain.labeled_batch=2", f"output.storage={tmp}"]


def _wrong_teacher_set(dataset: Path, tmp: Path) -> tuple[Path, dict[str, int]]:
    """A set over half of the unlabeled videos whose teacher says (true class + 1) mod C: a stage that learned the
    truth instead would show it. Returns the file and the labels it gives."""
    data = prepare_data(load_pretrain_config(STAGE, _tiny(dataset, tmp)).base, None)
    classes = data.manifest.classes
    chosen = data.unlabeled[::2]
    given = {r.path: (r.label + 1) % len(classes) for r in chosen}
    probs = np.full((len(chosen), len(classes)), 0.1 / (len(classes) - 1), np.float32)
    probs[np.arange(len(chosen)), [given[r.path] for r in chosen]] = 0.9
    out = tmp / "set.parquet"
    write_pseudo_labels(out, [r.path for r in chosen], probs, classes, {"labeled_by": "a test"})
    return out, given


def test_the_labeled_term_reads_the_set_under_the_teachers_labels(synth_dataset: Path, tmp_path: Path) -> None:
    set_file, given = _wrong_teacher_set(synth_dataset, tmp_path)
    setup = load_pretrain_config(STAGE, [*_tiny(synth_dataset, tmp_path), f"data.pseudo_labels={set_file}"])
    data = prepare_data(setup.base, None)
    assert {r.path: r.label for r in pseudo_records(data)} == given
    # The objective still reads every train video, though data.unlabeled is only the set's under data.pseudo_labels.
    assert {r.path for r in objective_records(data)} == {r.path for r in data.manifest.split("train")}
    assert len(data.unlabeled) == len(given) < len(data.manifest.split("train")) - len(data.labeled)


def test_a_labels_only_stage_decodes_no_train_video_and_learns_the_split_beside_the_set(
    synth_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.set_num_threads(1)
    set_file, given = _wrong_teacher_set(synth_dataset, tmp_path)
    setup = load_pretrain_config(STAGE, [*_tiny(synth_dataset, tmp_path), f"data.pseudo_labels={set_file}"])
    assert setup.pretrain.objective_weight == 0
    streams: list[dict[str, Any]] = []
    real = local.view_batches

    def recorded(paths: list[str], *args: Any, **kwargs: Any) -> Any:
        streams.append({"paths": list(paths), "labels": kwargs.get("labels"), "what": kwargs.get("what")})
        return real(paths, *args, **kwargs)

    monkeypatch.setattr(local, "view_batches", recorded)
    reports: list[Report] = []
    local.run_local_pretrain(setup, decode_threads=2, run_dir=tmp_path / "stage", on_report=reports.append)
    # The labeled term's two streams only: no train stream when the objective's weight is 0.
    labeled, pseudo = streams
    data = prepare_data(setup.base, None)
    assert (labeled["what"], pseudo["what"]) == ("labeled split", "pseudo-labeled set")
    assert dict(zip(labeled["paths"], labeled["labels"], strict=True)) == {r.path: r.label for r in data.labeled}
    assert dict(zip(pseudo["paths"], pseudo["labels"], strict=True)) == given
    assert reports and all(r.window["loss/total"] == pytest.approx(r.window["loss/labeled"]) for r in reports)
    assert "loss/contrastive" not in reports[-1].window


def test_a_pseudo_labeled_set_needs_the_labeled_term() -> None:
    with pytest.raises(ConfigError, match=r"^data\.pseudo_labels: .*labeled_weight > 0"):
        load_pretrain_config(CONFIGS / "pretrain_appearance.yaml", ["data.pseudo_labels=set.parquet"])


def _file(tmp: Path, **changes: Any) -> Path:
    raw = yaml.safe_load(STAGE.read_text())
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        raw.setdefault(section, {})[key] = value
    path = tmp / "self_train.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(("changes", "overrides", "message"), [
    ({}, [], r"^model\.init: self-training starts every stage from a pretrained backbone"),
    ({"pretrain__labeled_weight": 0.0, "pretrain__objective_weight": 1.0}, ["model.init=run"],
     r"^pretrain\.labeled_weight: .*must be > 0"),
    ({"pretrain__next_config": str(CONFIGS / "pretrain_appearance.yaml")}, ["model.init=run"],
     r"^pretrain\.next_config: .* is a pretraining config"),
    ({"self_train__rounds": -1}, ["model.init=run"], r"^self_train\.rounds: must be >= 0"),
    ({}, ["model.init=run", "self_train.pseudo_labels.soft=true"], r"^self_train\.pseudo_labels\.soft: "),
    ({}, ["model.init=run", "data.pseudo_labels=x.parquet"], r"^data\.pseudo_labels: self-training makes"),
    ({}, ["model.init=run", "self_train.epochs=3"], r"^self_train\.epochs: unknown key"),
])
def test_the_self_training_file_names_the_key_it_rejects(tmp_path: Path, changes: dict[str, Any],
                                                         overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_self_train(_file(tmp_path, **changes), overrides)


def test_the_head_fits_on_the_stage_run_with_its_split_and_videos(tmp_path: Path) -> None:
    file = load_self_train(STAGE, ["model.init=pretrain-run", "data.root=/videos",
                                   "self_train.head_set=[train.lr=0.01]"])
    head = file.head(tmp_path / "round-0-stage", tmp_path / "split.csv", tmp_path, "round-0-head")
    assert (head.model.init, head.data.labeled_split_file) == (str(tmp_path / "round-0-stage"),
                                                               str(tmp_path / "split.csv"))
    assert (head.data.root, head.model.primary, head.algorithm.name) == ("/videos", "frame2d", "supervised")
    assert head.tracking.experiment == file.stage.base.tracking.experiment and head.train.lr == 0.01


@pytest.mark.parametrize("learns", [True, False])
def test_a_later_rounds_head_learns_the_set_beside_the_split(tmp_path: Path, learns: bool) -> None:
    file = load_self_train(STAGE, ["model.init=pretrain-run", f"self_train.head_learns_set={str(learns).lower()}"])
    head = file.head(tmp_path / "round-1-stage", tmp_path / "split.csv", tmp_path, "round-1-head",
                     tmp_path / "round-1" / "pseudo_labels.parquet")
    expected = (("noisy_student_offline", str(tmp_path / "round-1" / "pseudo_labels.parquet")) if learns
                else ("supervised", None))
    assert (head.algorithm.name, head.data.pseudo_labels) == expected
    assert head.train.freeze_backbone_steps >= head.train.iterations  # the stage's backbone stays as it is
    assert head.data.labeled_split_file == str(tmp_path / "split.csv")


def test_dry_run_checks_both_configs_and_lists_the_stages(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(STAGE), "--set", "model.init=pretrain-run", "--set", "self_train.rounds=2",
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name}\n" in out for name in stage_names(2))
    assert stage_names(1) == ["round-0-stage", "round-0-head", "round-1-labels", "round-1-stage", "round-1-head"]


def test_class_balancing_by_share_scales_with_the_set() -> None:
    from workflows.runtime.pseudo_labeling import per_class_limit
    from workflows.specs.noisy_student import LabelSpec

    half = LabelSpec(top_fraction_per_class=0.5)
    assert [per_class_limit(half, scored, 6) for scored in (342, 427, 405, 3)] == [28, 36, 34, 1]
    assert per_class_limit(LabelSpec(top_k_per_class=7), 342, 6) == 7
    assert per_class_limit(LabelSpec(), 342, 6) is None
    for bad, message in ((["self_train.pseudo_labels.top_fraction_per_class=0"], r"must be null or in \(0, 1\]"),
                         (["self_train.pseudo_labels.top_k_per_class=3"], ".*, not both")):
        with pytest.raises(ConfigError, match=r"^self_train\.pseudo_labels\.top_fraction_per_class: " + message):
            load_self_train(STAGE, ["model.init=run", *bad])


def test_an_empty_pseudo_labeled_set_is_an_error_naming_it(synth_dataset: Path, tmp_path: Path) -> None:
    setup = load_pretrain_config(STAGE, _tiny(synth_dataset, tmp_path))
    classes = prepare_data(setup.base, None).manifest.classes
    empty = tmp_path / "empty.parquet"
    write_pseudo_labels(empty, [], np.zeros((0, len(classes)), np.float32), classes, {"labeled_by": "a test"})
    setup = load_pretrain_config(STAGE, [*_tiny(synth_dataset, tmp_path), f"data.pseudo_labels={empty}"])
    with pytest.raises(ConfigError, match=r"^data\.pseudo_labels: .*empty\.parquet holds no videos"):
        local.run_local_pretrain(setup, decode_threads=1, run_dir=tmp_path / "stage")
