"""What the zoo tests share (tests/slow/test_zoo_trains.py, tests/zoo/test_zoo_ray.py): the smallest clip the
registered entries accept and the overrides of a few CMPL / FixMatch steps at it.

    .venv/bin/python -m pytest -q -m slow tests/slow/test_zoo_trains.py
"""

from __future__ import annotations

import math
from pathlib import Path

from torch import Tensor

from ssl_core.data.transforms import MIN_CROP
from ssl_core.models import model_inputs
from ssl_core.models.registry import TG_SUFFIX

# Above this many pixels a clip (the fixed 16 x 224 px MViTs, S3D's 14 x 224 px minimum) costs a 2-core CPU tens of
# seconds a step: those runs take one step of one clip.
LARGE_CLIP = 8 * 112 * 112


def _up_to(value: int, multiple: int) -> int:
    return multiple * math.ceil(value / multiple)


def smallest_clip(*names: str) -> tuple[int, int]:
    """(frames, crop) of the smallest clip every entry's InputSpec accepts (an entry without one takes any clip,
    a `+tg` view the same as its model) and the augmentations take (MIN_CROP); a fixed-input entry sets it."""
    specs = [s for s in (model_inputs(n.removesuffix(TG_SUFFIX)) for n in names) if s is not None]
    fixed = {(s.frames, s.crop) for s in specs if s.fixed}
    assert len(fixed) <= 1, f"{names}: fixed inputs differ: {fixed}"
    if fixed:
        return fixed.pop()
    frames_multiple = math.lcm(1, *(s.multiple[0] for s in specs))
    side_multiple = math.lcm(1, *(s.multiple[1] for s in specs))
    frames = max([1, *(s.min_frames for s in specs)])
    side = max([MIN_CROP, *(s.min_side for s in specs)])
    return _up_to(frames, frames_multiple), _up_to(side, side_multiple)


def zoo_overrides(dataset: Path, tmp: Path, primary: str, auxiliary: str, algorithm: str) -> list[str]:
    """Two steps of two clips (mu 1) at the smallest clip both models accept, one step of one clip where that clip
    is large; the pseudo-label path trains from the first step. Runs and stores live under `tmp`."""
    frames, crop = smallest_clip(primary, auxiliary)
    steps, batch = (1, 1) if frames * crop * crop > LARGE_CLIP else (2, 2)
    return [
        f"data.root={dataset}", "data.synthetic.enabled=false", "data.labeled_fraction=0.5", "data.cache=off",
        f"data.num_frames={frames}", f"data.size={crop}", "data.eval_clips=1", f"augment.crop_size={crop}",
        f"algorithm.name={algorithm}", f"model.primary={primary}", f"model.auxiliary={auxiliary}",
        f"train.iterations={steps}", f"train.batch_size={batch}", "train.mu=1", f"train.log_every={steps}",
        "train.warmup_iters=1", f"train.eval_every={steps}", f"train.checkpoint_every={steps}",
        # every clip passes and the unlabeled term counts fully from the first step
        "algorithm.tau=0.0", "algorithm.unsup_warmup=0", "algorithm.unsup_rampup=0",
        f"output.storage={tmp}/runs",
    ]


def assert_both_slowfast_pathways_trained(weights: dict[str, Tensor]) -> None:
    """SlowFast's slow (0) and fast (1) pathway, both made from the one clip the stream carries, saw every
    training batch: their stems' BatchNorm counted the same batches."""
    seen = [int(weights[f"blocks.0.multipathway_blocks.{p}.norm.num_batches_tracked"]) for p in (0, 1)]
    assert seen[0] == seen[1] > 0
