"""Manifest layouts (folder, csv, ucf101, kinetics), their errors, the labeled split and its file."""

from __future__ import annotations

from pathlib import Path

import pytest

from ssl_core.data.manifest import (
    Manifest,
    ManifestError,
    VideoRecord,
    class_counts,
    load_manifest,
    read_split_file,
    select_labeled,
    write_split_file,
)


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_folder_layout_holdout(tmp_path: Path) -> None:
    for c in ("walk", "jump"):
        for k in range(10):
            _touch(tmp_path / c / f"{c}_{k}.mp4")
    _touch(tmp_path / "jump" / "notes.txt")  # not a video
    m = load_manifest("folder", tmp_path, test_fraction=0.2, seed=3)
    assert m.classes == ("jump", "walk")
    assert len(m.records) == 20
    assert all(Path(r.path).is_absolute() and r.path.endswith(".mp4") for r in m.records)
    assert all(Path(r.path).parent.name == m.classes[r.label] for r in m.records)
    assert class_counts(m.split("test"), 2) == [2, 2]
    assert m == load_manifest("folder", tmp_path, test_fraction=0.2, seed=3)
    other = load_manifest("folder", tmp_path, test_fraction=0.2, seed=4)
    assert {r.path for r in other.split("test")} != {r.path for r in m.split("test")}


def test_folder_layout_with_split_dirs(tmp_path: Path) -> None:
    _touch(tmp_path / "train" / "b" / "1.avi")
    _touch(tmp_path / "train" / "a" / "2.MKV")
    _touch(tmp_path / "test" / "a" / "3.webm")
    m = load_manifest("folder", tmp_path)
    assert m.classes == ("a", "b")
    got = sorted((Path(r.path).name, r.label, r.split) for r in m.records)
    assert got == [("1.avi", 1, "train"), ("2.MKV", 0, "train"), ("3.webm", 0, "test")]


def test_folder_layout_empty_class_is_an_error(tmp_path: Path) -> None:
    _touch(tmp_path / "a" / "1.mp4")
    (tmp_path / "b").mkdir()
    with pytest.raises(ManifestError, match=str(tmp_path / "b")):
        load_manifest("folder", tmp_path)


def test_csv_layout_with_split_and_classes_txt(tmp_path: Path) -> None:
    _touch(tmp_path / "v" / "x.mp4")
    _touch(tmp_path / "v" / "y.mp4")
    (tmp_path / "classes.txt").write_text("zeta\nalpha\n")
    (tmp_path / "manifest.csv").write_text("path,label,split\nv/x.mp4,alpha,train\nv/y.mp4,zeta,test\n")
    m = load_manifest("csv", tmp_path)
    assert m.classes == ("zeta", "alpha")  # classes.txt order, not sorted
    assert m.records == (
        VideoRecord(str(tmp_path.resolve() / "v" / "x.mp4"), 1, "train"),
        VideoRecord(str(tmp_path.resolve() / "v" / "y.mp4"), 0, "test"),
    )


def test_csv_layout_without_split_holds_out_per_class(tmp_path: Path) -> None:
    rows = ["path,label"]
    for c in ("b", "a"):
        for k in range(5):
            rows.append(f"{c}{k}.mp4,{c}")
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    m = load_manifest("csv", tmp_path, csv_path=csv_path, test_fraction=0.4, check_files=False)
    assert m.classes == ("a", "b")
    assert class_counts(m.split("test"), 2) == [2, 2]
    assert class_counts(m.split("train"), 2) == [3, 3]


def test_csv_missing_file_names_file_and_row(tmp_path: Path) -> None:
    _touch(tmp_path / "a.mp4")
    (tmp_path / "manifest.csv").write_text("path,label,split\na.mp4,x,train\nmissing.mp4,x,test\n")
    with pytest.raises(ManifestError, match=r"manifest\.csv row 3: file not found: .*missing\.mp4"):
        load_manifest("csv", tmp_path)
    assert len(load_manifest("csv", tmp_path, check_files=False).records) == 2


def test_csv_unknown_class_with_classes_txt(tmp_path: Path) -> None:
    (tmp_path / "classes.txt").write_text("x\n")
    (tmp_path / "manifest.csv").write_text("path,label\na.mp4,x\nb.mp4,x\nc.mp4,y\n")
    with pytest.raises(ManifestError, match=r"manifest\.csv row 4: unknown class 'y'"):
        load_manifest("csv", tmp_path, check_files=False)


def test_csv_bad_header_and_bad_split(tmp_path: Path) -> None:
    (tmp_path / "manifest.csv").write_text("file,label\na.mp4,x\n")
    with pytest.raises(ManifestError, match=r"manifest\.csv row 1: .*path"):
        load_manifest("csv", tmp_path, check_files=False)
    (tmp_path / "manifest.csv").write_text("path,label,split\na.mp4,x,holdout\n")
    with pytest.raises(ManifestError, match=r"row 2: split"):
        load_manifest("csv", tmp_path, check_files=False)


def _ucf_tree(root: Path, lists: Path) -> None:
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Archery\n")
    (lists / "trainlist01.txt").write_text(
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\nArchery/v_Archery_g08_c01.avi 2\r\n"
    )
    (lists / "testlist01.txt").write_text("Archery/v_Archery_g01_c01.avi\n")
    for rel in (
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi",
        "Archery/v_Archery_g08_c01.avi",
        "Archery/v_Archery_g01_c01.avi",
    ):
        _touch(root / rel)


@pytest.mark.parametrize("nested", [False, True])
def test_ucf101_layout(tmp_path: Path, nested: bool) -> None:
    videos = tmp_path / "UCF-101" if nested else tmp_path
    _ucf_tree(videos, tmp_path / "ucfTrainTestlist" if nested else tmp_path)
    m = load_manifest("ucf101", tmp_path, ucf_split=1)
    assert m.classes == ("ApplyEyeMakeup", "Archery")
    got = [(Path(r.path).relative_to(videos.resolve()).as_posix(), r.label, r.split) for r in m.records]
    assert got == [
        ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", 0, "train"),
        ("Archery/v_Archery_g08_c01.avi", 1, "train"),
        ("Archery/v_Archery_g01_c01.avi", 1, "test"),
    ]


def test_ucf101_unknown_class_and_missing_file(tmp_path: Path) -> None:
    _ucf_tree(tmp_path, tmp_path)
    (tmp_path / "testlist01.txt").write_text("Archery/v_Archery_g01_c01.avi\nBowling/v_Bowling_g01_c01.avi\n")
    with pytest.raises(ManifestError, match=r"testlist01\.txt line 2: unknown class 'Bowling'"):
        load_manifest("ucf101", tmp_path)
    (tmp_path / "testlist01.txt").write_text("Archery/v_Archery_g01_c01.avi\n")
    (tmp_path / "Archery" / "v_Archery_g08_c01.avi").unlink()
    with pytest.raises(ManifestError, match=r"trainlist01\.txt line 2: file not found"):
        load_manifest("ucf101", tmp_path)
    with pytest.raises(ManifestError, match=r"trainlist02\.txt: file not found"):
        load_manifest("ucf101", tmp_path, ucf_split=2, check_files=False)


def test_kinetics_layout(tmp_path: Path) -> None:
    _touch(tmp_path / "train" / "abc_000014_000024.mp4")
    _touch(tmp_path / "val" / "dancing" / "xyz_000001_000011.mp4")  # class-folder variant
    csv_path = tmp_path / "k.csv"
    csv_path.write_text(
        "label,youtube_id,time_start,time_end,split\nriding,abc,14.0,24,train\ndancing,xyz,1,11.0,val\n"
    )
    m = load_manifest("kinetics", tmp_path, csv_path=csv_path)
    assert m.classes == ("dancing", "riding")
    root = tmp_path.resolve()
    assert m.records == (
        VideoRecord(str(root / "train" / "abc_000014_000024.mp4"), 1, "train"),
        VideoRecord(str(root / "val" / "dancing" / "xyz_000001_000011.mp4"), 0, "test"),
    )
    with csv_path.open("a") as f:
        f.write("riding,gone,0,10,train\n")
    with pytest.raises(ManifestError, match=r"k\.csv row 4: file not found: .*gone_000000_000010\.mp4"):
        load_manifest("kinetics", tmp_path, csv_path=csv_path)


def test_unknown_layout_lists_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="csv, folder, kinetics, ucf101"):
        load_manifest("hmdb", tmp_path)


def test_empty_dataset_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "manifest.csv").write_text("path,label\n")
    with pytest.raises(ManifestError, match="no videos"):
        load_manifest("csv", tmp_path)


def _records(counts: dict[int, int]) -> list[VideoRecord]:
    return [VideoRecord(f"/d/c{c}/v{k:02d}.mp4", c, "train") for c, n in counts.items() for k in range(n)]


def test_select_labeled_is_class_balanced_and_deterministic() -> None:
    records = _records({0: 20, 1: 10, 2: 3})
    chosen = select_labeled(records, fraction=0.1, seed=0)
    # round(0.1 * n) per class, at least one: 20 -> 2, 10 -> 1, 3 -> 1 (0.3 rounds to 0, raised to 1).
    assert class_counts(chosen, 3) == [2, 1, 1]
    assert chosen == select_labeled(list(reversed(records)), fraction=0.1, seed=0)  # input order irrelevant
    assert class_counts(select_labeled(records, per_class=5, seed=0), 3) == [5, 5, 3]
    assert class_counts(select_labeled(records, fraction=1.0), 3) == [20, 10, 3]
    picks = {tuple(r.path for r in select_labeled(records, per_class=2, seed=s)) for s in range(5)}
    assert len(picks) > 1


@pytest.mark.parametrize(
    "kwargs", [{}, {"fraction": 0.1, "per_class": 1}, {"fraction": 0.0}, {"fraction": 1.5}, {"per_class": 0}]
)
def test_select_labeled_rejects_bad_arguments(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        select_labeled(_records({0: 3}), **kwargs)  # type: ignore[arg-type]


def _manifest(root: Path) -> Manifest:
    rows = ["path,label,split"] + [f"{c}/{k}.mp4,{c},{'test' if k == 0 else 'train'}" for c in "ab" for k in range(4)]
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return load_manifest("csv", root, check_files=False)


def test_split_file_round_trip_and_refusal(tmp_path: Path) -> None:
    m = _manifest(tmp_path)
    labeled = select_labeled(m.split("train"), per_class=1, seed=1)
    split_file = tmp_path / "runs" / "labeled.csv"
    write_split_file(split_file, labeled, m, tmp_path)
    lines = split_file.read_text().splitlines()
    assert lines[0] == "path,label"
    assert sorted(line.split(",")[1] for line in lines[1:]) == ["a", "b"]
    assert all(not line.startswith("/") for line in lines[1:])  # relative to the root
    assert sorted(read_split_file(split_file, m, tmp_path), key=lambda r: r.path) == labeled
    write_split_file(split_file, list(reversed(labeled)), m, tmp_path)  # same content: fine
    other = select_labeled(m.split("train"), per_class=2, seed=1)
    with pytest.raises(FileExistsError, match=str(split_file)):
        write_split_file(split_file, other, m, tmp_path)


def test_read_split_file_rejects_test_videos_and_wrong_labels(tmp_path: Path) -> None:
    m = _manifest(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\na/1.mp4,a\na/0.mp4,a\n")  # a/0.mp4 is a test video
    with pytest.raises(ManifestError, match=r"bad\.csv row 3: .*not in the manifest's train split"):
        read_split_file(bad, m, tmp_path)
    bad.write_text("path,label\na/1.mp4,b\n")
    with pytest.raises(ManifestError, match=r"bad\.csv row 2: label 'b'"):
        read_split_file(bad, m, tmp_path)


@pytest.mark.parametrize("escape", ["../../etc/passwd", "/etc/passwd", "v/../../outside.mp4"])
def test_csv_paths_escaping_the_root_are_rejected(tmp_path: Path, escape: str) -> None:
    root = tmp_path / "data"
    _touch(root / "v" / "x.mp4")
    (root / "manifest.csv").write_text(f"path,label\nv/x.mp4,a\n{escape},a\n")
    with pytest.raises(ManifestError, match=rf"manifest\.csv row 3: path '{escape}' escapes the dataset root"):
        load_manifest("csv", root, check_files=False)


def test_absolute_paths_inside_the_root_are_accepted(tmp_path: Path) -> None:
    inside = _touch(tmp_path / "v" / "x.mp4").resolve()
    (tmp_path / "manifest.csv").write_text(f"path,label,split\n{inside},a,train\n")
    assert load_manifest("csv", tmp_path).records == (VideoRecord(str(inside), 0, "train"),)


def test_ucf101_and_kinetics_paths_escaping_the_root_are_rejected(tmp_path: Path) -> None:
    _ucf_tree(tmp_path, tmp_path)
    (tmp_path / "testlist01.txt").write_text("Archery/../../../etc/passwd\n")
    with pytest.raises(ManifestError, match=r"testlist01\.txt line 1: path .* escapes the dataset root"):
        load_manifest("ucf101", tmp_path, check_files=False)
    csv_path = tmp_path / "k.csv"
    csv_path.write_text("label,youtube_id,time_start,time_end,split\n../../../x,abc,0,10,train\n")
    with pytest.raises(ManifestError, match=r"k\.csv row 2: path .* escapes the dataset root"):
        load_manifest("kinetics", tmp_path, csv_path=csv_path, check_files=False)


def test_split_file_paths_escaping_the_root_are_rejected(tmp_path: Path) -> None:
    m = _manifest(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\na/1.mp4,a\n../secret.mp4,a\n")
    with pytest.raises(ManifestError, match=r"bad\.csv row 3: path '\.\./secret\.mp4' escapes the dataset root"):
        read_split_file(bad, m, tmp_path)


def test_a_non_utf8_manifest_class_list_or_split_file_is_named_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "manifest.csv").write_bytes(b"path,label,split\na.mp4,x,train\nb.mp4,caf\xe9,test\n")
    with pytest.raises(ManifestError, match=rf"^{tmp_path / 'manifest.csv'}: not UTF-8 text \(line 3: byte 0xe9\)"):
        load_manifest("csv", tmp_path, check_files=False)
    (tmp_path / "manifest.csv").write_text("path,label,split\na.mp4,x,train\nb.mp4,x,test\n")
    (tmp_path / "classes.txt").write_bytes(b"x\n\xff\n")
    with pytest.raises(ManifestError, match=rf"^{tmp_path / 'classes.txt'}: not UTF-8 text \(line 2: byte 0xff\)"):
        load_manifest("csv", tmp_path, check_files=False)
    (tmp_path / "classes.txt").unlink()
    m = load_manifest("csv", tmp_path, check_files=False)
    split = tmp_path / "split.csv"
    split.write_bytes(b"path,label\n\xe9.mp4,x\n")
    with pytest.raises(ManifestError, match=rf"^{split}: not UTF-8 text \(line 2: byte 0xe9\)"):
        read_split_file(split, m, tmp_path)


def test_a_manifest_with_a_byte_order_mark_reads_its_header(tmp_path: Path) -> None:
    (tmp_path / "manifest.csv").write_bytes("path,label\na.mp4,x\nb.mp4,y\n".encode("utf-8-sig"))
    assert load_manifest("csv", tmp_path, check_files=False, test_fraction=0.5).classes == ("x", "y")


def test_a_test_label_no_train_row_has_is_an_error_without_classes_txt_unless_inferred(tmp_path: Path) -> None:
    (tmp_path / "manifest.csv").write_text(
        "path,label,split\na.mp4,walk,train\nb.mp4,jump,train\nc.mp4,walk,test\nd.mp4,jupm,test\ne.mp4,run,test\n")
    with pytest.raises(ManifestError, match=rf"^{tmp_path / 'manifest.csv'} row 5: label 'jupm' is in no train row, "
                                            rf"and there is no {tmp_path / 'classes.txt'} to list the classes"):
        load_manifest("csv", tmp_path, check_files=False)
    inferred = load_manifest("csv", tmp_path, check_files=False, infer_classes=True)
    assert inferred.classes == ("jump", "jupm", "run", "walk")
    (tmp_path / "classes.txt").write_text("walk\njump\njupm\nrun\n")  # a class list says which labels are classes
    assert load_manifest("csv", tmp_path, check_files=False).classes == ("walk", "jump", "jupm", "run")


def test_data_infer_classes_reaches_the_manifest(tmp_path: Path) -> None:
    from ssl_core.config import load_config
    from ssl_core.data.splits import prepare_data

    for name in "abcd":
        _touch(tmp_path / f"{name}.mp4")
    (tmp_path / "manifest.csv").write_text("path,label,split\na.mp4,x,train\nb.mp4,x,train\nc.mp4,x,test\n"
                                           "d.mp4,y,test\n")
    sets = [f"data.root={tmp_path}", "data.synthetic.enabled=false", "data.labeled_fraction=0.5"]
    with pytest.raises(ManifestError, match="row 5: label 'y' is in no train row"):
        prepare_data(load_config(None, sets), None)
    assert prepare_data(load_config(None, [*sets, "data.infer_classes=true"]), None).manifest.classes == ("x", "y")
