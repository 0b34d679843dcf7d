"""videomae on Ray Data + Ray Train: two DDP workers (every trainable weight must get a gradient, or DDP's
default stops), the same metrics in MLflow as the Ray-free runner, and a registered backbone that model.init
loads into vit_tiny (a minute or more on two cores: make test-slow). The objective itself and the Ray-free run:
tests/unit/test_videomae.py.

    .venv/bin/python -m pytest -q tests/slow/test_pretrain_videomae_ray.py
"""

from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient

from ssl_core.config import load_config
from ssl_core.models import build_model
from ssl_core.pretrain.config import load_pretrain_config
from ssl_core.train_step import init_models
from tests.tiny_runs import DEMO, ROOT, tiny_run
from workflows.pretrain import run_pretraining

VIDEOMAE = ROOT / "configs" / "pretrain_videomae_demo.yaml"


def test_videomae_pretrains_on_two_ddp_workers(ray_local: None, synth_dataset: Path, tmp_path: Path) -> None:
    vit = ["model.primary=vit_tiny", "data.num_frames=4", "augment.crop_size=32"]
    overrides = [*tiny_run(synth_dataset, tmp_path), *vit, "pretrain.mask_ratio=0.75", "train.iterations=4",
                 "train.batch_size=2", "train.log_every=2", "train.checkpoint_every=4", "pretrain.knn_every=2",
                 "pretrain.probe_steps=10", "scaling.num_workers=2", "scaling.cpus_per_worker=0.5",
                 "tracking.experiment=e2e-videomae", "tracking.registered_model=e2e-vit-backbone"]
    outcome = run_pretraining(load_pretrain_config(VIDEOMAE, overrides), progress=False)
    assert outcome.metrics["step"] == 4
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(outcome.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.tags["vidssl.objective"] == "videomae"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "pretrain/mask_ratio")] == [0.75, 0.75]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss/reconstruction")] == [2, 4]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "knn/top1")] == [0, 2, 4]
    cfg = load_config(DEMO, [*tiny_run(synth_dataset, tmp_path), *vit, f"model.init={outcome.run_dir}"])
    (report,) = init_models(cfg, {"primary": build_model("vit_tiny", num_classes=outcome.num_classes)})
    assert report.missing == [] and report.unexpected == [] and report.reinitialised == ["head.weight", "head.bias"]
