"""The lazy training streams of workflows/runtime/streams.py: rows from row numbers, augmentation placement.

    python -m pytest -q tests/e2e/test_data_stream.py
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_core.config import with_overrides
from ssl_core.data.manifest import VideoRecord, load_manifest
from ssl_core.data.synthetic import generate
from ssl_core.data.transforms import AugmentConfig
from ssl_core.train_step import stream_batches
from workflows.runtime.streams import _augment, record_table, resolve_placement, rows_for_ids


def _records(n: int) -> list[VideoRecord]:
    return [VideoRecord(f"/videos/v{i}.mp4", i % 3, "train") for i in range(n)]


def test_every_pass_visits_every_video_once_in_a_seeded_order() -> None:
    table = record_table(_records(7))
    rows = rows_for_ids(np.arange(21), table, seed=5, label_key="label")
    passes = rows["path"].reshape(3, 7)
    for p in passes:
        assert sorted(p) == sorted(table["path"])
    assert list(passes[0]) != list(passes[1])  # reshuffled each pass
    # Labels travel with their paths.
    by_path = dict(zip(table["path"], table["label"], strict=True))
    assert [by_path[p] for p in rows["path"]] == rows["label"].tolist()
    # Row seeds are unique and depend on the stream seed.
    assert len(set(rows["seed"].tolist())) == 21
    assert not set(rows["seed"].tolist()) & set(rows_for_ids(np.arange(21), table, 6, "label")["seed"].tolist())


def test_rows_do_not_depend_on_how_the_ids_are_split_into_blocks() -> None:
    table = record_table(_records(5))
    whole = rows_for_ids(np.arange(13), table, seed=1, label_key="true_label")
    parts = [rows_for_ids(ids, table, seed=1, label_key="true_label") for ids in ([4, 5, 6], [12, 0], [7])]
    for part, ids in zip(parts, ([4, 5, 6], [12, 0], [7]), strict=True):
        assert part["path"].tolist() == whole["path"][ids].tolist()
        assert part["seed"].tolist() == whole["seed"][ids].tolist()


def test_stored_targets_are_aligned_with_their_videos() -> None:
    records = _records(4)
    targets = {r.path: np.full(3, i, dtype=np.float32) for i, r in enumerate(records)}
    rows = rows_for_ids(np.arange(8), record_table(records, targets), seed=0, label_key="true_label")
    for path, target in zip(rows["path"], rows["target"], strict=True):
        np.testing.assert_array_equal(target, targets[path])
    with pytest.raises(ValueError, match="no records"):
        record_table([])


def test_auto_placement_is_the_device_on_gpu_and_the_data_workers_on_cpu() -> None:
    assert resolve_placement("auto", use_gpu=True) == "device"
    assert resolve_placement("auto", use_gpu=False) == "data"
    assert resolve_placement("device", use_gpu=False) == "device"
    assert resolve_placement("data", use_gpu=True) == "data"


def test_data_side_augmentation_makes_seeded_normalised_views() -> None:
    aug = {**AugmentConfig(crop_size=16).__dict__}
    clips = np.random.default_rng(0).integers(0, 256, (3, 4, 20, 20, 3), dtype=np.uint8)

    def run(seeds: list[int]) -> dict[str, np.ndarray]:
        return _augment(clips.copy(), np.array(seeds), aug, ("weak", "strong"))

    out, again, other = run([1, 2, 3]), run([1, 2, 3]), run([4, 5, 6])
    assert set(out) == {"weak", "strong"}
    assert out["weak"].shape == out["strong"].shape == (3, 3, 4, 16, 16)
    assert out["weak"].dtype == np.float32
    np.testing.assert_array_equal(out["strong"], again["strong"])
    assert not np.array_equal(out["weak"], other["weak"])
    assert not np.array_equal(out["weak"], out["strong"])
    # Normalised with the Kinetics statistics: values leave [0, 1].
    assert out["weak"].min() < 0 < out["weak"].max()


def test_stream_batches_moves_views_made_by_the_data_workers_unchanged() -> None:
    video = torch.randn(2, 3, 4, 16, 16)
    weak, strong = torch.randn(2, 3, 4, 16, 16), torch.randn(2, 3, 4, 16, 16)
    labeled, unlabeled = stream_batches(
        {"video": video, "label": torch.tensor([0, 1])},
        {"weak": weak, "strong": strong, "true_label": torch.tensor([1, 1])},
        AugmentConfig(crop_size=16), torch.device("cpu"),
    )
    assert torch.equal(labeled["video"], video) and torch.equal(unlabeled["strong"], strong)
    assert unlabeled["true_label"].tolist() == [1, 1]
    # uint8 clips are augmented on the device instead.
    clips = torch.randint(0, 256, (2, 4, 20, 20, 3), dtype=torch.uint8)
    labeled, unlabeled = stream_batches({"clip": clips, "label": torch.tensor([0, 1])}, None,
                                        AugmentConfig(crop_size=16), torch.device("cpu"))
    assert labeled["video"].shape == (2, 3, 4, 16, 16) and unlabeled is None


@pytest.mark.parametrize("placement", ["data", "device"])
def test_streams_through_ray_data_in_either_placement(tmp_path: Path, ray_local: None, placement: str) -> None:
    from workflows.runtime.streams import SkipCounter, build_datasets

    generate(tmp_path, classes=2, videos_per_class=4, frames=16, size=32)
    (tmp_path / "bad.mp4").write_bytes(b"")
    with (tmp_path / "manifest.csv").open("a") as f:
        f.write("bad.mp4,move_left,train\n")
    cfg = with_overrides({}, [
        f"data.root={tmp_path}", "data.layout=csv", "data.labeled_fraction=1.0", "data.size=24",
        "data.num_frames=4", "data.stride=2", "augment.crop_size=16", f"augment.placement={placement}",
        "train.batch_size=2", "train.mu=2", "train.iterations=3", "data.decode_cpus=0.5",
        f"output.storage={tmp_path / 'runs'}",  # data.cache = auto: the clips come from a cache built there
    ])
    records = load_manifest("csv", tmp_path).split("train")
    counter = SkipCounter.remote()
    datasets = build_datasets(cfg, records, records, records[:2], counter, with_unlabeled=True)
    labeled = list(datasets["labeled"].iter_torch_batches(batch_size=2))
    unlabeled = next(iter(datasets["unlabeled"].iter_torch_batches(batch_size=4)))
    # (iterations + 1) x batch rows, less the rows that drew the unreadable video.
    assert sum(len(b["label"]) for b in labeled) <= 8
    if placement == "data":
        assert labeled[0]["video"].shape == (2, 3, 4, 16, 16) and labeled[0]["video"].dtype == torch.float32
        assert set(unlabeled) >= {"weak", "strong", "true_label"} and "clip" not in unlabeled
    else:
        assert labeled[0]["clip"].shape == (2, 4, 24, 24, 3) and labeled[0]["clip"].dtype == torch.uint8
        assert "aug_seed" not in unlabeled
    assert len(list((tmp_path / "runs" / ".clip_cache").glob("s24-*/index.json"))) == 1
    lb, ub = stream_batches(labeled[0], unlabeled, cfg.augment, torch.device("cpu"))
    assert lb["video"].shape == (2, 3, 4, 16, 16) and ub["weak"].shape == (4, 3, 4, 16, 16)


def test_evaluation_clips_decode_while_training_tasks_hold_every_cpu(tmp_path: Path, ray_local: None) -> None:
    """While the worker evaluates, the training streams' paused decode tasks keep their CPUs: the evaluation decode
    tasks must run without a free CPU, or the run waits for them forever."""
    import ray

    from workflows.runtime.streams import SkipCounter, build_datasets

    generate(tmp_path, classes=2, videos_per_class=2, frames=16, size=32)
    cfg = with_overrides({}, [
        f"data.root={tmp_path}", "data.layout=csv", "data.labeled_fraction=1.0", "data.size=24",
        "data.num_frames=4", "data.stride=2", "data.eval_clips=1", "data.cache=off", "data.decode_cpus=0.5",
        "augment.crop_size=16",
        "train.batch_size=2", "train.iterations=1", f"output.storage={tmp_path / 'runs'}",
    ])
    records = load_manifest("csv", tmp_path).split("train")
    datasets = build_datasets(cfg, records, records, records, SkipCounter.remote(), with_unlabeled=False)

    @ray.remote(num_cpus=2)
    class EveryCpu:  # stands in for the paused training tasks (the worker's own CPU included)
        def ready(self) -> bool:
            return True

    holder = EveryCpu.remote()
    ray.get(holder.ready.remote())
    rows: list[int] = []
    # A daemon thread: were the decode tasks never scheduled, the test fails instead of waiting with them.
    reader = threading.Thread(target=lambda: rows.append(sum(
        len(b["label"]) for b in datasets["eval"].iter_batches(batch_size=2))), daemon=True)
    try:
        reader.start()
        reader.join(timeout=120)
        assert rows == [len(records)], "the evaluation clips were not decoded within 120 s"
    finally:
        ray.kill(holder)
