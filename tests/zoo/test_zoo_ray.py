"""Every registered model trains CMPL and FixMatch through Ray Data + Ray Train: workflows.train's run (Ray Data
streams the clips, a Ray Train worker trains, evaluates and checkpoints, MLflow logs and registers the model). The
entries of `vidssl list models`, ordered by the size of their smallest clip, are paired (a new entry is covered when
it registers); each pair trains twice at the smallest clip both accept: CMPL with the first as primary and the
second as auxiliary, FixMatch with the second as primary and the first as its temporal-gradient companion. S3D and
the three MViTs (16 x 224 px) share their runs. 24 runs, ~18 min on 2 cores: `make test-zoo`, not part of CI
(tests/slow/test_zoo_trains.py trains every entry through the Ray-free runner and one per family through Ray).

    make test-zoo        # = pytest -m zoo --durations=10
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ssl_core.checkpoint import latest_intact_checkpoint
from ssl_core.config import load_config
from ssl_core.models import list_models
from ssl_core.models.registry import TG_SUFFIX
from tests.tiny_runs import DEMO
from tests.zoo_clips import LARGE_CLIP, assert_both_slowfast_pathways_trained, smallest_clip, zoo_overrides
from workflows.runtime.training import run_training

# pytorchvideo's Swish backward (X3D) reads ctx.saved_variables, which torch deprecates.
pytestmark = [pytest.mark.filterwarnings("ignore:'saved_variables' is deprecated:DeprecationWarning"),
              pytest.mark.usefixtures("torch_one_thread")]


def pairs() -> list[tuple[str, str]]:
    """The registered entries, ordered by the size of their smallest clip, taken two at a time: the fixed 224 px
    entries pair among themselves. An odd one out trains beside the first entry."""
    def size(name: str) -> tuple[int, str]:
        frames, crop = smallest_clip(name)
        return frames * crop * crop, name

    names = sorted((name for name, _ in list_models()), key=size)
    if len(names) % 2:
        names.append(names[0])
    return list(zip(names[::2], names[1::2], strict=True))


PAIRS = pairs()


@pytest.mark.parametrize("algorithm", ["cmpl", "fixmatch"])
@pytest.mark.parametrize(("first", "second"), PAIRS, ids=[f"{a}+{b}" for a, b in PAIRS])
def test_every_registered_model_trains_through_ray_data_and_ray_train(
    ray_local: None, synth_dataset: Path, tmp_path: Path, first: str, second: str, algorithm: str
) -> None:
    primary, auxiliary = (first, second) if algorithm == "cmpl" else (second, first + TG_SUFFIX)
    frames, crop = smallest_clip(primary, auxiliary)
    cfg = load_config(DEMO, [
        *zoo_overrides(synth_dataset, tmp_path, primary, auxiliary, algorithm),
        # the 224 px steps are compute, not Ray's start-up: the worker takes both cores
        f"scaling.torch_threads={2 if frames * crop * crop > LARGE_CLIP else 1}",
        "scaling.num_workers=1", "scaling.cpus_per_worker=1",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", "tracking.experiment=zoo",
        "tracking.registered_model=zoo-primary",
    ])
    try:
        outcome = run_training(cfg, progress=False)
        assert outcome.metrics["step"] == cfg.train.iterations
        assert outcome.metrics["unsup_weight"] == 1.0
        for role in ("primary", "auxiliary"):
            assert f"loss/unsup_{role}" in outcome.metrics
            assert 0.0 <= outcome.metrics[f"eval/top1_{role}"] <= 1.0
        _, state = latest_intact_checkpoint(outcome.run_dir)
        assert state["model_names"] == {"primary": primary, "auxiliary": auxiliary}
        for role, name in state["model_names"].items():
            if name.removesuffix(TG_SUFFIX) == "slowfast_r50":
                assert_both_slowfast_pathways_trained(state["models"][role])
    finally:
        # the large entries' checkpoints and logged models hold hundreds of MB; pytest keeps three sessions' folders
        shutil.rmtree(tmp_path, ignore_errors=True)
