"""Starting from pretrained weights (model.init / model.auxiliary_init): sources, key mapping, reports, errors.

    pytest tests/unit/test_model_init.py
"""

from __future__ import annotations

import csv
import pickle
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from ssl_core.checkpoint import save_training_state
from ssl_core.config import ConfigError, load_config, pin_paths
from ssl_core.models import build_model
from ssl_core.models.init import InitError, load_init, read_init_source
from ssl_core.train_step import build_models, init_models

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def same(a: Mapping[str, Tensor], b: Mapping[str, Tensor], keys: list[str]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in keys)


def save_checkpoint(directory: Path, models: dict[str, nn.Module], classes: list[str], **kw: object) -> Path:
    params = [p for m in models.values() for p in m.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    save_training_state(directory, models=models, optimizer=optimizer, scheduler=scheduler, step=7,
                        algorithm_state={}, model_names={r: "small3d" for r in models}, num_classes=len(classes),
                        meta={"classes": classes}, **kw)
    return directory


@pytest.fixture(scope="module")
def torchvision_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Tensor]]:
    """torchvision's r3d_18 with the Kinetics-400 head, saved as its published weights file is (a bare dict)."""
    from torchvision.models.video import r3d_18

    torch.manual_seed(0)
    state = r3d_18(weights=None, num_classes=400).state_dict()
    path = tmp_path_factory.mktemp("tv") / "r3d_18_kinetics400.pth"
    torch.save(state, path)
    return path, state


def test_torchvision_r3d_18_loads_every_backbone_key_and_reinitialises_another_head(
    torchvision_file: tuple[Path, dict[str, Tensor]],
) -> None:
    path, state = torchvision_file
    src = read_init_source(str(path))
    model = build_model("r3d_18", num_classes=8)
    fresh_head = model.fc.weight.detach().clone()
    report = load_init(model, src.state_dict, name="primary", source=src.description)
    loaded = model.state_dict()
    backbone = [k for k in loaded if not k.startswith("fc.")]
    assert report.matched == backbone and not report.missing and not report.unexpected
    assert report.reinitialised == ["fc.weight", "fc.bias"]
    assert same(loaded, state, backbone) and torch.equal(model.fc.weight, fresh_head)
    assert report.line() == (f"init primary from {path}: 120/122 keys matched, head re-initialised "
                             "(400 -> 8 classes), 0 unexpected")

    # 400 classes: the head loads too; behind dropout (fc = Sequential(Dropout, Linear)) as well.
    for dropout in (0.0, 0.3):
        model = build_model("r3d_18", num_classes=400, dropout=dropout)
        report = load_init(model, src.state_dict, name="primary", source="tv")
        assert (len(report.matched), report.total, report.head, report.unexpected) == (122, 122, "loaded", [])
        head = model.fc[1] if dropout else model.fc
        assert torch.equal(head.weight, state["fc.weight"])


def test_pytorchvideo_slow_r50_hub_weights_fit_r3d_50(tmp_path: Path) -> None:
    """pytorchvideo's hub slow_r50 (built without downloading), saved as its .pyth file is: {"model_state": ...}."""
    from pytorchvideo.models.hub import slow_r50

    state = slow_r50(pretrained=False).state_dict()
    path = tmp_path / "SLOW_8x8_R50.pyth"
    torch.save({"model_state": state, "epoch": 196, "cfg": "TRAIN: ..."}, path)
    report = load_init(build_model("r3d_50", num_classes=8), read_init_source(str(path)).state_dict, name="primary")
    assert (len(report.matched), report.total, report.missing, report.unexpected) == (318, 320, [], [])
    assert report.reinitialised == ["blocks.5.proj.weight", "blocks.5.proj.bias"]
    assert report.head == "re-initialised (400 -> 8 classes)"


@pytest.mark.parametrize(
    ("wrap", "stripped"),
    [
        (lambda sd: {f"module.{k}": v for k, v in sd.items()}, "module."),
        (lambda sd: {"state_dict": sd, "epoch": 3}, ""),
        (lambda sd: {"model": {f"backbone.{k}": v for k, v in sd.items()}}, "backbone."),
        (lambda sd: {"model_state": {f"module.model.{k}": v for k, v in sd.items()}}, "module.model."),
    ],
    ids=["module-prefix", "state_dict-key", "model-key+backbone-prefix", "model_state-key+nested-prefix"],
)
def test_wrapped_and_prefixed_state_dicts_load(tmp_path: Path, wrap, stripped: str) -> None:
    torch.manual_seed(1)
    state = build_model("small3d_w0.25", num_classes=5).state_dict()
    path = tmp_path / "weights.pt"
    torch.save(wrap(state), path)
    model = build_model("small3d_w0.25", num_classes=5)
    report = load_init(model, read_init_source(str(path)).state_dict, name="primary", source="w")
    assert (len(report.matched), report.total, report.unexpected, report.stripped) == (26, 26, [], stripped)
    assert same(model.state_dict(), state, list(state))


def test_another_architecture_is_a_one_line_error_naming_the_key_and_shapes() -> None:
    model = build_model("r3d_18", num_classes=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InitError) as err:
        load_init(model, build_model("small3d", num_classes=8).state_dict(), name="primary", source="small3d.pt")
    message = str(err.value)
    assert "\n" not in message and message.startswith("model.init: small3d.pt does not fit the primary model")
    assert "0/120 backbone keys found; stem.0.weight (64, 3, 3, 7, 7) is not in the source" in message
    assert "features.0.weight (16, 3, 3, 3, 3)" in message
    assert same(model.state_dict(), before, list(before))  # nothing loaded

    with pytest.raises(InitError) as err:  # same key names, other widths: the first key whose shape differs
        load_init(build_model("small3d", num_classes=8), build_model("small3d_w0.5", num_classes=8).state_dict(),
                  name="auxiliary", source="half.pt", key="model.auxiliary_init")
    assert str(err.value) == ("model.auxiliary_init: half.pt does not fit the auxiliary model (Small3D): "
                              "features.0.weight is (8, 3, 3, 3, 3) in the source, (16, 3, 3, 3, 3) in the model")


def test_checkpoint_dir_run_folder_and_role_load_the_deployed_weights(tmp_path: Path) -> None:
    torch.manual_seed(2)
    trained = {"primary": build_model("small3d", num_classes=4), "auxiliary": build_model("small3d", num_classes=4)}
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in trained["primary"].state_dict().items()}
    ckpt = save_checkpoint(tmp_path / "run" / "checkpoint_000001", trained, ["a", "b", "c", "d"],
                           ema={"primary": ema})
    for spec in (str(ckpt), str(tmp_path / "run"), str(ckpt / "state.pt")):
        src = read_init_source(spec)
        model = build_model("small3d", num_classes=4)
        report = load_init(model, src.state_dict, name="primary", source=src.description,
                           source_classes=src.classes, classes=["a", "b", "c", "d"])
        assert report.line() == f"init primary from {spec} (step 7): 26/26 keys matched, head loaded, 0 unexpected"
        assert same(model.state_dict(), ema, list(ema))  # the EMA copy: what the run evaluated and deployed
    src = read_init_source(f"{tmp_path / 'run'}#auxiliary", key="model.auxiliary_init")
    model = build_model("small3d", num_classes=4)
    load_init(model, src.state_dict, name="auxiliary")
    assert same(model.state_dict(), trained["auxiliary"].state_dict(), list(ema))

    # As many classes but other ones (or another order): the classifier would name the wrong classes.
    report = load_init(build_model("small3d", num_classes=4), src.state_dict, name="primary",
                       source_classes=src.classes, classes=["d", "c", "b", "a"])
    assert report.reinitialised == ["fc.weight", "fc.bias"]
    assert report.head == "re-initialised (the source's classes differ from this run's)"
    with pytest.raises(InitError, match=r"^model.init: .*#teacher: the checkpoint has no 'teacher' model"):
        read_init_source(f"{ckpt}#teacher")


def test_unreadable_sources_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(InitError, match=r"^model.init: no such file or directory: .*nope.pth"):
        read_init_source(str(tmp_path / "nope.pth"))
    with pytest.raises(InitError, match=r"^model.init: models:/m@champion is an MLflow model URI"):
        read_init_source("models:/m@champion")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InitError, match="neither a checkpoint directory nor a run folder"):
        read_init_source(str(empty))
    pickled = tmp_path / "whole_model.pt"
    pickled.write_bytes(pickle.dumps({"weights": nn.Linear(2, 2)}, protocol=2))
    with pytest.raises(InitError) as err:
        read_init_source(str(pickled))
    assert "\n" not in str(err.value) and "torch.load(weights_only=True)" in str(err.value)
    torch.save({"epoch": 3, "note": "no tensors"}, tmp_path / "meta.pt")
    with pytest.raises(InitError, match="holds no state dict"):
        read_init_source(str(tmp_path / "meta.pt"))


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.init=''", "model.init"),
        ("model.init=https://download.pytorch.org/models/r3d_18-b3b3357e.pth", "model.init"),
        ("model.init=models:/", "model.init"),
        ("model.init=models:/a/b/c", "model.init"),
        ("model.auxiliary_init=runs:/abc", "model.auxiliary_init"),
        ("model.auxiliary_init=3", "model.auxiliary_init"),
    ],
)
def test_config_errors_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, [override])
    assert str(err.value).startswith(f"{key}:"), str(err.value)


def test_config_accepts_every_source_form_and_pins_local_paths() -> None:
    for spec in ("models:/vidssl-demo-primary@champion", "models:/vidssl-demo-primary/3", "models:/m-0a1b",
                 "runs:/0123abcd/model", "runs/cmpl-1", "runs/cmpl-1#auxiliary", "weights/r3d_18.pth"):
        assert load_config(DEMO, [f"model.init={spec}", f"model.auxiliary_init={spec}"]).model.init == spec
    cfg = load_config(DEMO, ["model.init=runs/cmpl-1#auxiliary", "model.auxiliary_init=models:/a@b"])
    pinned = pin_paths(cfg.to_dict(), "sqlite:///x.db")["model"]
    assert pinned["init"] == f"{Path('runs/cmpl-1').resolve()}#auxiliary"
    assert pinned["auxiliary_init"] == "models:/a@b"


def test_init_models_covers_the_roles(tmp_path: Path) -> None:
    classes = ["a", "b", "c"]
    torch.manual_seed(3)
    source = {"primary": build_model("small3d_w0.25", num_classes=3),
              "auxiliary": build_model("small3d_w0.5", num_classes=3)}
    ckpt = save_checkpoint(tmp_path / "ckpt", source, classes)
    base = ["model.primary=small3d_w0.25", "model.auxiliary=small3d_w0.5", f"model.init={ckpt}"]

    # MPL: the trainable teacher has the primary's architecture and starts from the same weights.
    cfg = load_config(DEMO, [*base, "algorithm.name=meta_pseudo_labels"])
    models = build_models(cfg, 3)
    reports = init_models(cfg, models, classes)
    assert [r.name for r in reports] == ["primary", "teacher"]
    for role in ("primary", "teacher"):
        assert same(models[role].state_dict(), source["primary"].state_dict(), list(source["primary"].state_dict()))

    # CMPL: the auxiliary has its own key; unset, it keeps its random init.
    cfg = load_config(DEMO, [*base, "algorithm.name=cmpl"])
    assert [r.name for r in init_models(cfg, build_models(cfg, 3), classes)] == ["primary"]
    cfg = load_config(DEMO, [*base, "algorithm.name=cmpl", f"model.auxiliary_init={ckpt}#auxiliary"])
    models = build_models(cfg, 3)
    assert [r.name for r in init_models(cfg, models, classes)] == ["primary", "auxiliary"]
    assert same(models["auxiliary"].state_dict(), source["auxiliary"].state_dict(),
                list(source["auxiliary"].state_dict()))
    # Without the role the auxiliary would get the primary's weights: another width, a one-line error.
    cfg = load_config(DEMO, [*base, "algorithm.name=cmpl", f"model.auxiliary_init={ckpt}"])
    with pytest.raises(InitError, match=r"^model.auxiliary_init: .* does not fit the auxiliary model"):
        init_models(cfg, build_models(cfg, 3), classes)


def test_driver_resolves_an_mlflow_uri_once_into_the_run_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """workflows.tracking.model_init without an MLflow store: load_for_inference stands in for the registry."""
    import workflows.runtime.inference
    from workflows.runtime.inference import InferenceModel
    from workflows.tracking.model_init import prepare_init

    torch.manual_seed(4)
    registered = build_model("small3d_w0.25", num_classes=3)
    calls = []

    def fake_load(spec: str, tracking_uri: str | None, *, trust_pickle: bool) -> InferenceModel:
        assert not trust_pickle  # model.trust_pickle's default
        calls.append((spec, tracking_uri))
        source = {"spec": spec, "kind": "mlflow", "uri": "models:/m-abc", "tracking_uri": tracking_uri,
                  "name": "vidssl-demo-primary", "version": "3", "model_id": "m-abc", "run_id": "r123"}
        return InferenceModel(registered.eval(), {"classes": ["a", "b", "c"]}, source)

    monkeypatch.setattr(workflows.runtime.inference, "load_for_inference", fake_load)
    cfg = load_config(DEMO, ["model.primary=small3d_w0.25", "algorithm.name=supervised",
                             "model.init=models:/vidssl-demo-primary@champion"])
    prepared = prepare_init(cfg, tmp_path, "sqlite:///x.db", ["a", "b", "c"], fresh=True)
    local = tmp_path / "init" / "init.pt"
    assert prepared.sources == {"init": str(local)} and local.exists()
    assert prepared.lineage == {"vidssl.init_source": "models:/vidssl-demo-primary/3",
                                "vidssl.init_version": "vidssl-demo-primary/3", "vidssl.init_run": "r123"}
    line = "init primary from models:/vidssl-demo-primary/3: 26/26 keys matched, head loaded, 0 unexpected"
    assert prepared.tags()["init.primary"] == line
    assert prepared.params()["init.primary.matched"] == 26
    # A resume reuses the file (the alias may have moved since) and builds nothing.
    again = prepare_init(cfg, tmp_path, "sqlite:///x.db", ["a", "b", "c"], fresh=False)
    assert (again.sources, again.reports, len(calls)) == (prepared.sources, [], 1)
    model = build_model("small3d_w0.25", num_classes=3)
    init_models(cfg, {"primary": model}, ["a", "b", "c"], again.sources)
    assert same(model.state_dict(), registered.state_dict(), list(registered.state_dict()))


def test_run_local_starts_from_a_checkpoint(
    synth_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ssl_core.data.splits import prepare_data
    from ssl_core.loop import run_local

    overrides = [
        f"data.root={synth_dataset}", "data.synthetic.enabled=false", "data.labeled_fraction=0.5", "data.cache=off",
        "data.num_frames=4", "data.size=40", "data.eval_clips=1", "augment.crop_size=32", "algorithm.name=supervised",
        "model.primary=small3d_w0.25", "train.iterations=2", "train.batch_size=4", "train.log_every=2",
        "train.warmup_iters=1", f"output.storage={tmp_path}",
    ]
    classes = list(prepare_data(load_config(DEMO, overrides), run_dir=None).manifest.classes)
    ckpt = save_checkpoint(tmp_path / "ckpt", {"primary": build_model("small3d_w0.25", num_classes=len(classes))},
                           classes)
    result = run_local(load_config(DEMO, [*overrides, f"model.init={ckpt}"]), decode_threads=2)
    out = capsys.readouterr().out
    assert f"init primary from {ckpt} (step 7): 26/26 keys matched, head loaded, 0 unexpected\n" in out
    assert "step 2:" in out
    test_videos = sum(r["split"] == "test" for r in csv.DictReader((synth_dataset / "manifest.csv").open()))
    right = result["top1_primary"] * test_videos
    assert right == pytest.approx(round(right), abs=1e-9)  # each test video counted once, right or wrong
    assert result["top5_primary"] == 1.0  # 4 classes: always in the top 5
