"""Every registered model trains: two CMPL and two FixMatch steps of each entry of `vidssl list models` through the
Ray-free runner at the smallest clip its InputSpec accepts (a new entry is covered when it registers), and one real
Ray Data + Ray Train run per model family that tests/e2e does not already train through Ray.

    pytest -m slow tests/slow/test_zoo_trains.py --durations=10
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from ssl_core.auxiliary_pairing import paired_auxiliary
from ssl_core.checkpoint import latest_intact_checkpoint
from ssl_core.config import Config, load_config
from ssl_core.data.transforms import MIN_CROP
from ssl_core.engine import Report
from ssl_core.loop import run_local
from ssl_core.models import list_models, model_inputs
from workflows.runtime.training import run_training

# pytorchvideo's Swish backward (X3D) reads ctx.saved_variables, which torch deprecates.
pytestmark = [pytest.mark.filterwarnings("ignore:'saved_variables' is deprecated:DeprecationWarning"),
              pytest.mark.usefixtures("torch_one_thread")]
DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
MODELS = [name for name, _ in list_models()]
ALGORITHMS = ("cmpl", "fixmatch")
# Above this many pixels a clip (the fixed 16 x 224 px MViTs, S3D's 14 x 224 px minimum) costs a 2-core CPU tens of
# seconds a step: those entries take one step of one clip.
LARGE_CLIP = 8 * 112 * 112



def _up_to(value: int, multiple: int) -> int:
    return multiple * math.ceil(value / multiple)


def smallest_clip(name: str) -> tuple[int, int]:
    """(frames, crop) of the smallest clip the entry's InputSpec accepts (an entry without one takes any clip) and
    the augmentations take (MIN_CROP)."""
    spec = model_inputs(name)
    if spec is None:
        return 1, MIN_CROP
    if spec.fixed:
        return spec.frames, spec.crop
    frames_multiple, side_multiple = spec.multiple
    return _up_to(spec.min_frames, frames_multiple), _up_to(max(spec.min_side, MIN_CROP), side_multiple)


def companion(name: str) -> str:
    """FixMatch's companion: CMPL's paired sibling reading the temporal gradient (the demo's LTG companion), so each
    sibling also trains through the `+tg` view at a cost the CMPL case already measures."""
    return paired_auxiliary(name) + "+tg"


def zoo_config(dataset: Path, tmp: Path, primary: str, algorithm: str, *extra: str) -> Config:
    """Two steps of two clips (mu 1) at the entry's smallest clip; one step of one clip where that clip is large."""
    frames, crop = smallest_clip(primary)
    steps, batch = (1, 1) if frames * crop * crop > LARGE_CLIP else (2, 2)
    auxiliary = paired_auxiliary(primary) if algorithm == "cmpl" else companion(primary)
    return load_config(DEMO, [
        f"data.root={dataset}", "data.synthetic.enabled=false", "data.labeled_fraction=0.5", "data.cache=off",
        f"data.num_frames={frames}", f"data.size={crop}", "data.eval_clips=1", f"augment.crop_size={crop}",
        f"algorithm.name={algorithm}", f"model.primary={primary}", f"model.auxiliary={auxiliary}",
        f"train.iterations={steps}", f"train.batch_size={batch}", "train.mu=1", f"train.log_every={steps}",
        "train.warmup_iters=1", f"train.eval_every={steps}", f"train.checkpoint_every={steps}",
        # every clip passes and the unlabeled term counts fully from the first step: the pseudo-label path trains too
        "algorithm.tau=0.0", "algorithm.unsup_warmup=0", "algorithm.unsup_rampup=0",
        f"output.storage={tmp}", *extra,
    ])


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
                     "tracking.registered_model=zoo-primary", f"output.storage={tmp_path}/runs")
    outcome = run_training(cfg, progress=False)
    assert outcome.metrics["step"] == 2
    assert {"eval/top1_primary", "eval/top1_auxiliary"} <= set(outcome.metrics)
    _, state = latest_intact_checkpoint(outcome.run_dir)
    assert state["model_names"] == {"primary": primary, "auxiliary": cfg.model.auxiliary}
    if primary == "slowfast_r50":  # the slow (0) and the fast (1) pathway's stems both saw every training batch
        weights = state["models"]["primary"]
        seen = [int(weights[f"blocks.0.multipathway_blocks.{p}.norm.num_batches_tracked"]) for p in (0, 1)]
        assert seen[0] == seen[1] > 0
    shutil.rmtree(outcome.run_dir)  # its checkpoint holds hundreds of MB (slowfast_r50's); pytest keeps tmp folders
