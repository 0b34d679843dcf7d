"""The error contract of the entry points (ssl_core/user_errors.py): bad input is one line `error: ...` naming the
key or file, exit 2, never a traceback or a hang; the Ray-free runners fail fast on a split they cannot train on
and skip unreadable test videos instead of losing the run.

    .venv/bin/python -m pytest -q tests/unit/test_error_contract.py
"""

from __future__ import annotations

import importlib
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ssl_core.config import ConfigError, load_config
from ssl_core.data.manifest import VideoRecord
from ssl_core.data.splits import prepare_data
from ssl_core.loop import _clip_batches, run_local
from ssl_core.user_errors import UnreadableVideos, UserError, reports_user_errors

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
TINY = ["data.synthetic.enabled=false", "data.num_frames=4", "data.size=40", "data.eval_clips=1",
        "augment.crop_size=32", "data.cache=off", "model.primary=small3d_w0.25", "model.auxiliary=small3d_w0.25",
        "train.iterations=2", "train.batch_size=4", "train.mu=1", "train.log_every=1", "train.warmup_iters=1",
        "train.eval_every=100", "train.checkpoint_every=100"]
# Every entry point that reads a config file; the others (evaluate, predict, distill, label_queue) take their
# input errors through the same decorator, checked below.
CONFIG_MAINS = ["ssl_core.loop", "ssl_core.pretrain.__main__", "workflows.train", "workflows.pretrain",
                "workflows.sweep", "workflows.noisy_student", "workflows.reencode"]
ALL_MAINS = [*CONFIG_MAINS, "workflows.evaluate", "workflows.predict", "workflows.distill", "workflows.label_queue",
             "workflows.cli"]


def sets(*overrides: str) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def one_error(capsys: pytest.CaptureFixture[str]) -> str:
    """The one `error:` line printed, with no traceback beside it."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = error_lines(err)
    return line


# --- the decorator -------------------------------------------------------------------------------


def test_user_errors_and_os_errors_are_one_line_and_exit_2_and_a_bug_keeps_its_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def main_raising(err: BaseException) -> Callable[[Sequence[str] | None], int]:
        @reports_user_errors(KeyError)
        def main(argv: Sequence[str] | None = None) -> int:
            raise err

        return main

    assert main_raising(UserError("data.root: first\n  second"))(None) == 2
    assert one_error(capsys) == "error: data.root: first second"
    assert main_raising(PermissionError(13, "Permission denied", "/x/manifest.csv"))(None) == 2
    assert one_error(capsys) == "error: [Errno 13] Permission denied: '/x/manifest.csv'"
    assert main_raising(KeyError("extra"))(None) == 2  # an entry point's own input error
    with pytest.raises(ZeroDivisionError):
        main_raising(ZeroDivisionError("a bug"))(None)


@pytest.mark.parametrize("module", ALL_MAINS)
def test_every_entry_point_main_goes_through_the_contract(module: str) -> None:
    main = importlib.import_module(module).main
    assert main.__code__.co_qualname.startswith("reports_user_errors."), f"{module}.main is not wrapped"


@pytest.mark.parametrize("module", CONFIG_MAINS)
def test_a_folder_or_a_non_utf8_file_as_config_is_one_line_naming_it(
    module: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main = importlib.import_module(module).main
    assert main(["--config", str(tmp_path)]) == 2
    assert one_error(capsys) == f"error: {tmp_path}: is a folder, not a config file (a YAML file such as " \
                                "configs/demo.yaml)"
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"# r\xe9sum\xe9\ntrain: {iterations: 2}\n")
    assert main(["--config", str(latin1)]) == 2
    assert one_error(capsys) == f"error: {latin1}: not UTF-8 text (line 1: byte 0xe9); save it as UTF-8"


def test_the_ray_free_runners_report_a_bad_config_value_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from ssl_core.loop import main
    from ssl_core.pretrain.__main__ import main as pretrain_main

    assert main(["--config", str(DEMO), *sets("algorithm.name=nope")]) == 2
    assert one_error(capsys).startswith("error: algorithm.name: unknown algorithm 'nope'")
    assert pretrain_main(["--set", "pretrain.rho=0"]) == 2
    assert one_error(capsys).startswith("error: pretrain.rho: ")


def test_predict_names_a_non_utf8_video_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from workflows.predict import main

    listing = tmp_path / "videos.csv"
    listing.write_bytes(b"path\nclip1.mp4\ncaf\xe9.mp4\n")
    assert main(["--model", str(tmp_path), "--videos", str(listing), "--out", str(tmp_path / "p.parquet")]) == 2
    assert one_error(capsys) == f"error: {listing}: not UTF-8 text (line 3: byte 0xe9); save it as UTF-8"


# --- fail fast: a split the algorithm cannot train on ----------------------------------------------


@pytest.mark.parametrize(("labeling", "key"), [("data.labeled_fraction=1.0", "data.labeled_fraction=1.0"),
                                               ("data.labeled_per_class=99", "data.labeled_per_class=99")])
@pytest.mark.parametrize("algorithm", ["cmpl", "fixmatch"])
def test_the_ray_free_runner_refuses_an_ssl_method_without_unlabeled_videos(
    synth_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], labeling: str, key: str, algorithm: str
) -> None:
    from ssl_core.loop import main

    storage = tmp_path / "runs"
    overrides = [f"data.root={synth_dataset}", *TINY, f"algorithm.name={algorithm}", "data.labeled_fraction=null",
                 labeling, f"output.storage={storage}"]
    assert main(["--config", str(DEMO), *sets(*overrides)]) == 2
    assert one_error(capsys) == (f"error: {key} labels all 12 train videos, leaving none unlabeled for algorithm "
                                 f"{algorithm}, which learns from unlabeled videos: label fewer, or train with "
                                 "algorithm.name=supervised")
    assert list(storage.iterdir()) == []  # the run folder it claimed is gone: nothing trained


def test_a_split_file_labeling_every_video_is_named_and_a_new_one_is_not_written(
    synth_dataset: Path, tmp_path: Path
) -> None:
    base = [f"data.root={synth_dataset}", *TINY, "algorithm.name=cmpl"]
    new_file = tmp_path / "all.csv"
    cfg = load_config(DEMO, [*base, "data.labeled_fraction=1.0", f"data.labeled_split_file={new_file}"])
    with pytest.raises(ConfigError, match=r"^data\.labeled_fraction=1\.0 labels all 12 train videos"):
        prepare_data(cfg, tmp_path, needs_unlabeled=True)
    assert not new_file.exists()  # a split that cannot be trained is not left for the next run to reuse
    prepare_data(cfg, tmp_path)  # supervised: the same split is fine
    assert new_file.exists()
    reused = load_config(DEMO, [*base, f"data.labeled_split_file={new_file}"])
    with pytest.raises(ConfigError, match=rf"^data\.labeled_split_file \({new_file}\) labels all 12 train videos"):
        prepare_data(reused, tmp_path, needs_unlabeled=True)


# --- fail fast: a split none of whose videos decodes --------------------------------------------


def broken_dataset(root: Path, train: int = 4, test: int = 2) -> Path:
    """A csv dataset of zero-byte 'videos' in two classes."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("a\nb\n")
    rows = ["path,label,split"]
    for split, n in (("train", train), ("test", test)):
        for k in range(n):
            name = f"{split}_{k}.mp4"
            (root / name).write_bytes(b"")
            rows.append(f"{name},{'ab'[k % 2]},{split}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


def test_the_ray_free_runner_stops_on_an_all_unreadable_train_split_instead_of_hanging(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ssl_core.loop import main

    root = broken_dataset(tmp_path / "data")
    storage = tmp_path / "runs"
    overrides = [f"data.root={root}", *TINY, "algorithm.name=supervised", "data.labeled_fraction=1.0",
                 f"output.storage={storage}"]
    assert main(["--config", str(DEMO), *sets(*overrides)]) == 2
    line = one_error(capsys)
    assert line.startswith(f"error: none of the 4 videos of the labeled split decodes (e.g. {root / 'train_0.mp4'}: ")
    assert list(storage.iterdir()) == []


def test_an_all_unreadable_unlabeled_split_raises_naming_it(synth_dataset: Path, tmp_path: Path) -> None:
    cfg = load_config(DEMO, [f"data.root={synth_dataset}", *TINY])
    broken = [VideoRecord(str(p), 0, "train") for p in broken_dataset(tmp_path / "data").glob("train_*.mp4")]
    with ThreadPoolExecutor(2) as pool, pytest.raises(UnreadableVideos, match="^none of the 4 videos of the "
                                                                              "unlabeled split decodes"):
        next(_clip_batches(broken, 2, cfg, 0, pool, what="unlabeled split"))
    with ThreadPoolExecutor(1) as pool, pytest.raises(UnreadableVideos, match="^the unlabeled split holds no videos"):
        next(_clip_batches([], 2, cfg, 0, pool, what="unlabeled split"))


def test_the_pretraining_runner_stops_on_an_all_unreadable_train_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ssl_core.pretrain.__main__ import main

    root = broken_dataset(tmp_path / "data")
    storage = tmp_path / "runs"
    overrides = [f"data.root={root}", *TINY, f"output.storage={storage}", "pretrain.knn_every=0"]
    assert main(["--config", str(DEMO.parent / "pretrain_demo.yaml"), *sets(*overrides)]) == 2
    assert one_error(capsys).startswith("error: none of the 4 videos of the train split decodes")
    assert list(storage.iterdir()) == []


# --- unreadable test videos: skipped, counted, reported ------------------------------------------


def test_the_ray_free_runner_skips_unreadable_test_videos_and_keeps_its_result(
    synth_dataset: Path, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    root.mkdir()
    for item in synth_dataset.iterdir():  # the videos through links, the listings copied
        if item.is_dir():
            (root / item.name).symlink_to(item)
        else:
            shutil.copy(item, root / item.name)
    label = (root / "classes.txt").read_text().split()[0]
    (root / "broken_1.mp4").write_bytes(b"")
    (root / "broken_2.mp4").write_bytes(b"not a video")
    with (root / "manifest.csv").open("a") as f:
        f.write(f"broken_1.mp4,{label},test\nbroken_2.mp4,{label},test\n")
    lines: list[str] = []
    cfg = load_config(DEMO, [f"data.root={root}", *TINY, "algorithm.name=supervised", "train.eval_every=1",
                             f"output.storage={tmp_path / 'runs'}"])
    result = run_local(cfg, say=lines.append)
    warnings = [line for line in lines if line.startswith("warning: skipped")]
    assert len(warnings) == 1  # at the first evaluation, not again at the second
    assert warnings[0].startswith("warning: skipped 2 unreadable test videos, metrics over the other 4: "
                                  f"{root / 'broken_1.mp4'} (")
    assert str(root / "broken_2.mp4") in warnings[0]
    assert 0.0 <= result["top1_primary"] <= 1.0


def test_a_sweep_base_config_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    from workflows.specs.sweep import load_base

    base = tmp_path / "base.yaml"
    base.write_bytes(b"data: {root: caf\xe9}\n")
    with pytest.raises(ConfigError, match=rf"^base: {base}: not UTF-8 text \(line 1: byte 0xe9\)"):
        load_base("base.yaml", tmp_path / "sweep.yaml")


def test_the_skipped_videos_warning_lists_the_first_three_and_counts_the_rest() -> None:
    from ssl_core.user_errors import skipped_videos_line

    skipped = {f"/d/v{k}.mp4": f"cannot open\nfile {k}" for k in range(5)}
    assert skipped_videos_line(skipped, "test", 20) == (
        "warning: skipped 5 unreadable test videos, metrics over the other 20: /d/v0.mp4 (cannot open file 0); "
        "/d/v1.mp4 (cannot open file 1); /d/v2.mp4 (cannot open file 2); and 2 more")
    assert skipped_videos_line({"/d/v.mp4": "bad"}, "test", 3).startswith("warning: skipped 1 unreadable test video,")
