"""Every registered model trains: two CMPL and two FixMatch steps of each entry of `vidssl list models` as the
primary, through the Ray-free runner (the Ray worker's step and loop) at the smallest clip its InputSpec accepts (a
new entry is covered when it registers), and one real Ray Data + Ray Train run per model family that tests/e2e does
not already train through Ray. Every entry through Ray Data + Ray Train: tests/zoo/test_zoo_ray.py (make test-zoo).

    pytest -m slow tests/slow/test_zoo_trains.py --durations=10
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ssl_core.auxiliary_pairing import paired_auxiliary
from ssl_core.checkpoint import latest_intact_checkpoint
from ssl_core.config import Config, load_config
from ssl_core.engine import Report
from ssl_core.loop import run_local
from ssl_core.models import list_models
from tests.tiny_runs import DEMO
from tests.zoo_clips import assert_both_slowfast_pathways_trained, zoo_overrides
from workflows.runtime.training import run_training

# pytorchvideo's Swish backward (X3D) reads ctx.saved_variables, which torch deprecates.
pytestmark = [pytest.mark.filterwarnings("ignore:'saved_variables' is deprecated:DeprecationWarning"),
              pytest.mark.usefixtures("torch_one_thread")]
MODELS = [name for name, _ in list_models()]
ALGORITHMS = ("cmpl", "fixmatch")


def zoo_config(dataset: Path, tmp: Path, primary: str, algorithm: str, *extra: str) -> Config:
    """CMPL with the entry's paired sibling as auxiliary; FixMatch with that sibling reading the temporal gradient
    as its companion (the demo's LTG companion)."""
    auxiliary = paired_auxiliary(primary) + ("" if algorithm == "cmpl" else "+tg")
    return load_config(DEMO, [*zoo_overrides(dataset, tmp, primary, auxiliary, algorithm), *extra])


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("name", MODELS)
def test_every_registered_model_trains_at_its_smallest_clip(synth_dataset: Path, tmp_path: Path, name: str,
                                                            algorithm: str) -> None:
    cfg = zoo_config(synth_dataset, tmp_path, name, algorithm)
    reports: list[Report] = []
    # No run folder, so no checkpoint: a 1-step checkpoint of the large entries (weights, EMA, optimizer state) is
    # over a GB, and pytest keeps the last three sessions' folders.
    result = run_local(cfg, decode_threads=1, say=lambda _: None, on_report=reports.append)
    assert [r.step for r in reports] == [cfg.train.iterations]
    assert reports[0].window["unsup_weight"] == 1.0
    models = {k.removeprefix("top1_") for k in result if k.startswith("top1_")}
    assert models == {"primary", "auxiliary"}
    assert all(0.0 <= result[f"top1_{m}"] <= 1.0 for m in models)


@pytest.mark.parametrize(
    ("primary", "algorithm"),
    [
        ("r2plus1d_18_w0.25", "cmpl"),  # torchvision's video ResNets
        ("x3d_xs", "fixmatch"),  # pytorchvideo's hub models
        ("slowfast_r50", "cmpl"),  # two pathways, both made from the one clip the stream carries
    ],
)
def test_each_model_family_trains_through_ray_data_and_ray_train(ray_local: None, synth_dataset: Path,
                                                                 tmp_path: Path, primary: str, algorithm: str) -> None:
    """workflows.train's run: Ray Data streams the clips, a Ray Train worker trains, checkpoints and evaluates. The
    ViT family's run is tests/e2e/test_e2e_train.py's; 4 x 32 px clips, as there."""
    cfg = zoo_config(synth_dataset, tmp_path, primary, algorithm, "data.num_frames=4", "data.size=40",
                     "augment.crop_size=32", "scaling.num_workers=1", "scaling.cpus_per_worker=1",
                     f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", "tracking.experiment=zoo",
                     "tracking.registered_model=zoo-primary")
    outcome = run_training(cfg, progress=False)
    assert outcome.metrics["step"] == 2
    assert {"eval/top1_primary", "eval/top1_auxiliary"} <= set(outcome.metrics)
    _, state = latest_intact_checkpoint(outcome.run_dir)
    assert state["model_names"] == {"primary": primary, "auxiliary": cfg.model.auxiliary}
    if primary == "slowfast_r50":
        assert_both_slowfast_pathways_trained(state["models"]["primary"])
    shutil.rmtree(outcome.run_dir)  # its checkpoint holds hundreds of MB (slowfast_r50's); pytest keeps tmp folders
