"""Config -> manifest -> labeled / unlabeled / test records, with the labeled split written and reusable."""

from __future__ import annotations

from pathlib import Path

import pytest

from ssl_core.config import load_config
from ssl_core.data.splits import SPLIT_FILE, prepare_data


def cfg_for(root: Path, *extra: str):
    return load_config(None, [f"data.root={root}", "data.layout=csv", "data.labeled_fraction=null",
                                 "data.labeled_per_class=1", *extra])


def test_split_is_written_and_labeled_never_in_unlabeled(synth_dataset: Path, tmp_path: Path) -> None:
    data = prepare_data(cfg_for(synth_dataset), run_dir=tmp_path)
    assert data.split_file == tmp_path / SPLIT_FILE
    assert len(data.labeled) == 4  # one per class
    assert {r.label for r in data.labeled} == {0, 1, 2, 3}
    assert not {r.path for r in data.labeled} & {r.path for r in data.unlabeled}
    train = data.manifest.split("train")
    assert len(data.labeled) + len(data.unlabeled) == len(train)
    assert all(r.split == "test" for r in data.test)


def test_given_split_file_is_reused_and_never_overwritten(synth_dataset: Path, tmp_path: Path) -> None:
    split = tmp_path / "my_split.csv"
    first = prepare_data(cfg_for(synth_dataset, f"data.labeled_split_file={split}"), run_dir=None)
    assert split.exists()
    text = split.read_text()
    # another seed would pick other videos, but the existing file wins
    again = prepare_data(cfg_for(synth_dataset, f"data.labeled_split_file={split}", "data.split_seed=7"), None)
    assert [r.path for r in again.labeled] == [r.path for r in first.labeled]
    assert split.read_text() == text


def test_run_dir_split_refuses_to_overwrite_a_different_one(synth_dataset: Path, tmp_path: Path) -> None:
    prepare_data(cfg_for(synth_dataset), run_dir=tmp_path)
    with pytest.raises(FileExistsError, match=SPLIT_FILE):
        prepare_data(cfg_for(synth_dataset, "data.labeled_per_class=2"), run_dir=tmp_path)


def test_synthetic_dataset_is_generated_when_missing(tmp_path: Path) -> None:
    root = tmp_path / "gen"
    cfg = cfg_for(root, "data.synthetic.enabled=true", "data.synthetic.classes=2",
                  "data.synthetic.videos_per_class=4", "data.synthetic.frames=8", "data.synthetic.size=32")
    data = prepare_data(cfg, run_dir=None)
    assert (root / "manifest.csv").exists()
    assert data.manifest.classes == ("move_left", "move_right")
