"""Logged models load without unpickling: the safetensors + spec.json format round-trips through a real MLflow
SQLite store and registry, a model in MLflow's pickled pytorch format whose pickle runs code is refused by every
entry point that loads registry models (the code does not run), the committed model of tests/data/registry_model
still loads with its recorded logits, and vidssl's experiments open on the runs table.

    .venv/bin/python -m pytest -q tests/unit/test_safe_model.py
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pytorch
import numpy as np
import pytest
import torch
import yaml
from mlflow import MlflowClient
from torch import nn

from ssl_core.config import ConfigError, load_config, read_config_file
from ssl_core.models import build_model
from workflows import distill, evaluate, label_queue, predict
from workflows.runtime.inference import InferenceError, InferenceModel, load_for_inference
from workflows.runtime.train_worker import load_teacher
from workflows.tracking.model_init import prepare_init
from workflows.tracking.safe_model import LOADER_MODULE
from workflows.tracking.tracker import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, Tracker

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "configs" / "demo.yaml"
COMMITTED = ROOT / "tests" / "data" / "registry_model"
CLASSES = ["a", "b", "c"]
META = {"classes": CLASSES, "num_frames": 4, "stride": 2, "size": 40, "crop_size": 32}
# A width and a view suffix: a loader that rebuilt plain small3d would fail or give other logits.
ARCHITECTURE = "small3d_w0.25+tg"
PICKLE_PROTOCOL_OPCODE = b"\x80"  # the first byte of every pickle of protocol 2 or later (torch.save's too)


class CodeInPickle(nn.Module):
    """What a hostile artifact holds: unpickling it evaluates `expression` (here: writes a marker file, then
    gives a harmless module, so that nothing looks wrong)."""

    def __init__(self, expression: str) -> None:
        super().__init__()
        self.expression = expression

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return eval, (self.expression,)


@dataclass(frozen=True)
class Store:
    uri: str
    model: nn.Module  # what version 1 of "safe" holds
    run_id: str  # the run that logged "safe"
    evil_run_id: str  # the run that logged "evil"
    marker: Path  # written when the evil pickle is unpickled


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    tmp = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{tmp}/mlflow.db"
    torch.manual_seed(0)
    model = build_model(ARCHITECTURE, num_classes=3).eval()
    tracker = Tracker.start(uri, "train", "safe-run", {})
    _, version = tracker.log_model(model, "safe", torch.zeros(1, 3, 4, 32, 32).numpy(), META,
                                   architecture=ARCHITECTURE)
    tracker.finish()
    assert version == "1"
    marker = tmp / "unpickled.txt"
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=tracker.client.get_run(tracker.run_id).info.experiment_id) as run:
        # How an older vidssl logged its models, with its metadata, so that only the format can stop the load.
        payload = f"(open({str(marker)!r}, 'w').write('code ran'), __import__('torch').nn.Identity())[1]"
        mlflow.pytorch.log_model(CodeInPickle(payload), name="model",
                                 registered_model_name="evil", serialization_format="pickle",
                                 metadata={"vidssl": META}, pip_requirements=[])
    MlflowClient(uri).set_registered_model_alias("evil", "champion", "1")
    assert not marker.exists()
    return Store(uri, model, tracker.run_id, run.info.run_id, marker)


def _download(uri: str, model_uri: str, dst: Path) -> Path:
    mlflow.set_tracking_uri(uri)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst)))


def test_safe_format_round_trips_without_pickle(store: Store, tmp_path: Path) -> None:
    loaded = load_for_inference("models:/safe/1", store.uri)
    assert (loaded.source["kind"], loaded.source["version"], loaded.source["run_id"]) == ("mlflow", "1", store.run_id)
    assert loaded.meta == META and not loaded.pickle_trusted and not loaded.model.training
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        expected = store.model(x)
        assert torch.equal(loaded.model(x), expected)
    # MLflow's own loader (e.g. `mlflow models serve`) goes through the loader module, to the same logits.
    pyfunc = mlflow.pyfunc.load_model(loaded.source["uri"])
    np.testing.assert_array_equal(pyfunc.predict(x.numpy()), expected.numpy())
    # No pickle anywhere in the artifact, and no flavour that would unpickle.
    folder = _download(store.uri, loaded.source["uri"], tmp_path)
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert files == {"MLmodel", "registered_model_meta", "conda.yaml", "python_env.yaml", "requirements.txt",
                     "input_example.json", "serving_input_example.json", "data/model/spec.json",
                     "data/model/weights.safetensors"}
    assert not [f for f in files if (folder / f).read_bytes().startswith(PICKLE_PROTOCOL_OPCODE)]
    info = mlflow.models.get_model_info("models:/safe/1")
    assert set(info.flavors) == {"python_function"}
    assert info.flavors["python_function"]["loader_module"] == LOADER_MODULE
    spec = json.loads((folder / "data" / "model" / "spec.json").read_text())
    assert (spec["architecture"], spec["num_classes"], spec["width"], spec["meta"]) == (ARCHITECTURE, 3, 0.25, META)
    assert info.metadata["vidssl_model"] == spec and info.metadata["vidssl"] == META
    # The registry version shows the spec.
    version = MlflowClient(store.uri).get_model_version("safe", "1")
    tags = version.tags
    assert (tags["vidssl.architecture"], tags["vidssl.format"]) == (ARCHITECTURE, "vidssl-safetensors/1")
    assert version.description.startswith(f"{ARCHITECTURE} (3 classes: a, b, c); clip 4 frames")


def _one_line_refusal(text: str, spec: str) -> None:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert spec in lines[0] and "pickled mlflow.pytorch model" in lines[0] and "--trust-pickle" in lines[0]


@pytest.mark.parametrize("spec", ["models:/evil/1", "models:/evil@champion", "RUN"])
def test_load_for_inference_refuses_a_pickled_model(store: Store, spec: str) -> None:
    spec = f"runs:/{store.evil_run_id}/model" if spec == "RUN" else spec
    with pytest.raises(InferenceError) as err:
        load_for_inference(spec, store.uri)
    _one_line_refusal(str(err.value), spec)
    # The error names the version an alias resolved to; a runs:/ URI names its logged model.
    what = "version 1 of evil" if spec.startswith("models:/") else "models:/m-"
    assert str(err.value).startswith(f"{spec} ({what}")
    assert not store.marker.exists()


def test_every_entry_point_refuses_a_pickled_model(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    evil = "models:/evil/1"
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "clip.mp4").write_bytes(b"")  # never decoded: the model is refused first
    mains = {
        "evaluate": lambda: evaluate.main(["--model", evil, "--data", str(videos), "--tracking-uri", store.uri]),
        "predict": lambda: predict.main(["--model", evil, "--videos", str(videos), "--out", str(tmp_path / "p.parquet"),
                                         "--tracking-uri", store.uri]),
        "label_queue": lambda: label_queue.main(["--model", evil, "--videos", str(videos), "--budget", "1", "--out",
                                                 str(tmp_path / "q.csv"), "--tracking-uri", store.uri]),
        "label_queue --aux-model": lambda: label_queue.main([
            "--model", "models:/safe/1", "--aux-model", evil, "--videos", str(videos), "--budget", "1", "--out",
            str(tmp_path / "q.csv"), "--tracking-uri", store.uri]),
        "distill": lambda: distill.main(["--teacher", evil, "--student", "small3d_w0.25", "--tracking-uri",
                                         store.uri]),
    }
    for name, run in mains.items():
        assert run() == 2, name
        # Loading the good model of `--model models:/safe/1` may draw MLflow's download progress bar there too.
        (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
        _one_line_refusal(line, evil)
    # The frozen teacher of a Train worker (distill / noisy_student), with the run's model.trust_pickle.
    with pytest.raises(InferenceError) as teacher_err:
        load_teacher(evil, store.uri, CLASSES, trust_pickle=False)
    _one_line_refusal(str(teacher_err.value), evil)
    # model.init from a models:/ URI, resolved by the driver before Ray starts.
    cfg = load_config(DEMO, ["algorithm.name=supervised", f"model.init={evil}"])
    with pytest.raises(ConfigError) as init_err:
        prepare_init(cfg, tmp_path / "run", store.uri, CLASSES, fresh=True)
    assert str(init_err.value).startswith(f"model.init: {evil}")
    _one_line_refusal(str(init_err.value), evil)
    assert not (tmp_path / "run" / "init" / "init.pt").exists()
    assert not store.marker.exists()


def test_model_folders_are_checked_the_same_way(store: Store, tmp_path: Path) -> None:
    """A downloaded model folder: the pickled one is refused too; one of another flavour is named as such."""
    evil = _download(store.uri, "models:/evil/1", tmp_path / "evil")
    with pytest.raises(InferenceError) as err:
        load_for_inference(str(evil), store.uri)
    _one_line_refusal(str(err.value), str(evil))
    other = tmp_path / "onnx"
    other.mkdir()
    (other / "MLmodel").write_text(yaml.safe_dump({"flavors": {"onnx": {"data": "model.onnx"}},
                                                   "metadata": {"vidssl": META}}))
    with pytest.raises(InferenceError, match=r"is neither a vidssl model \(safetensors \+ spec.json\) nor an "
                                             r"mlflow.pytorch model; its flavors: onnx$"):
        load_for_inference(str(other), store.uri)
    # This format's loader, pointed outside the model folder.
    outside = tmp_path / "outside"
    outside.mkdir()
    pyfunc = {"loader_module": LOADER_MODULE, "data": "../onnx"}
    (outside / "MLmodel").write_text(yaml.safe_dump({"flavors": {"python_function": pyfunc},
                                                     "metadata": {"vidssl": META}}))
    with pytest.raises(InferenceError, match=r"its MLmodel names no data folder inside the model \('../onnx'\)$"):
        load_for_inference(str(outside), store.uri)
    assert not store.marker.exists()


@pytest.mark.parametrize("trusted", [False, True])
def test_distill_hands_the_trust_to_its_train_workers(trusted: bool) -> None:
    """distill --trust-pickle loads the teacher on the driver; the workers reload it with the student's config."""
    argv = ["--teacher", "models:/t/1", "--student", "small3d_w0.25", *(["--trust-pickle"] if trusted else [])]
    args = distill.build_parser().parse_args(argv)
    source = {"spec": "models:/t/1", "kind": "mlflow", "uri": "models:/m-1", "tracking_uri": "sqlite:///x.db",
              "name": "t", "version": "1", "model_id": "m-1", "run_id": "r", "checkpoint": None, "step": None}
    teacher = InferenceModel(nn.Identity(), META, source, pickle_trusted=args.trust_pickle)
    cfg = distill.distill_config(read_config_file(str(DEMO)), args, teacher)
    assert (cfg.model.teacher, cfg.model.trust_pickle) == ("models:/t/1", trusted)


def test_trusting_the_pickle_runs_its_code(store: Store) -> None:
    """The probe is real: what --trust-pickle unpickles runs the code stored in it."""
    loaded = load_for_inference("models:/evil/1", store.uri, trust_pickle=True)
    assert isinstance(loaded.model, nn.Identity) and loaded.pickle_trusted
    assert store.marker.read_text() == "code ran"
    store.marker.unlink()


def test_committed_model_still_loads_with_its_logits(store: Store) -> None:
    """tests/data/registry_model: logged once by this format's first version (tests/data/make_registry_model.py);
    loading it through the public loader must give the logits recorded then."""
    expected = json.loads((COMMITTED / "expected_logits.json").read_text())
    assert expected["probe"] == "torch.arange(768.0).sin().reshape(2, 3, 2, 8, 8)"
    probe = torch.arange(768.0).sin().reshape(2, 3, 2, 8, 8)
    loaded = load_for_inference(str(COMMITTED / "model"), store.uri)
    assert loaded.classes == ["jump", "run", "wave"] and loaded.meta["crop_size"] == 8
    assert (loaded.source["kind"], loaded.source["model_id"]) == ("mlflow", None)
    with torch.no_grad():
        logits = loaded.model(probe)
    torch.testing.assert_close(logits, torch.tensor(expected["logits"]), rtol=1e-5, atol=1e-6)
    pyfunc = mlflow.pyfunc.load_model(str(COMMITTED / "model"))
    np.testing.assert_allclose(pyfunc.predict(probe.numpy()), expected["logits"], rtol=1e-5, atol=1e-6)


def test_experiments_open_on_the_runs_table(store: Store) -> None:
    """MLflow 3's UI opens an experiment tagged mlflow.experimentKind=custom_model_development on its runs table."""
    client = MlflowClient(store.uri)
    assert client.get_experiment_by_name("train").tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    assert EXPERIMENT_KIND == "custom_model_development"
    client.create_experiment("older")  # made by an older vidssl: tagged when a run starts in it
    Tracker.start(store.uri, "older", None, {}).finish()
    assert client.get_experiment_by_name("older").tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    kept = client.create_experiment("chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    Tracker.start(store.uri, "chosen", None, {}).finish()
    assert client.get_experiment(kept).tags[EXPERIMENT_KIND_TAG] == "genai_development"  # the user's choice stays
