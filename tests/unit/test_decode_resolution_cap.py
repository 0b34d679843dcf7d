"""data.max_decode_pixels: a video whose frames exceed the cap is refused from its stream header, before any frame is
decoded, as a DecodeError naming the file and its frame size; a training stream skips and counts it like any
unreadable video.

    .venv/bin/python -m pytest -q tests/unit/test_decode_resolution_cap.py
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from ssl_core.config import load_config
from ssl_core.data import clip_cache, decode
from ssl_core.data.decode_base import DEFAULT_MAX_DECODE_PIXELS, DecodeError
from ssl_core.data.decoders import get_decoder, torchcodec_unavailable
from tests.unit.odd_videos import half_white, write_video

W, H = 64, 48  # 3072 pixels
ROOT = Path(__file__).resolve().parents[2]
CLIP = {"num_frames": 4, "stride": 1, "size": 16}
BACKENDS = ["pyav", pytest.param("torchcodec", marks=pytest.mark.skipif(
    torchcodec_unavailable() is not None, reason="torchcodec unavailable here"))]


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(write_video(tmp_path_factory.mktemp("cap") / "wide.mp4", half_white(n=6, h=H, w=W)))


def _no_frame_decoding(backend: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the backend decodes a frame."""
    def decoded(*args: object, **kwargs: object) -> None:
        raise AssertionError("a frame was decoded")

    if backend is decode:
        monkeypatch.setattr(decode, "_nearest_frames", decoded)
    else:
        monkeypatch.setattr(backend._Video, "frames", decoded)


@pytest.mark.parametrize("name", BACKENDS)
def test_a_video_above_the_cap_is_refused_before_any_frame_is_decoded(
        video: str, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = get_decoder(name)
    _no_frame_decoding(backend, monkeypatch)
    with pytest.raises(DecodeError) as clip_error:
        backend.decode_clip(video, **CLIP, start_s=0.0, max_pixels=W * H - 1)
    with pytest.raises(DecodeError) as eval_error:
        backend.decode_eval_clips(video, **CLIP, num_clips=2, max_pixels=W * H - 1)
    for err in (clip_error.value, eval_error.value):
        message = str(err)
        assert "\n" not in message and message.startswith(f"{video}: {W}x{H} frames")
        assert f"data.max_decode_pixels={W * H - 1}" in message


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("cap", [W * H, None, DEFAULT_MAX_DECODE_PIXELS])
def test_a_video_at_or_below_the_cap_decodes(video: str, name: str, cap: int | None) -> None:
    backend = get_decoder(name)
    assert backend.decode_clip(video, **CLIP, start_s=0.0, max_pixels=cap).shape == (4, 16, 16, 3)
    assert backend.decode_eval_clips(video, **CLIP, num_clips=2, max_pixels=cap).shape == (2, 4, 16, 16, 3)


def test_the_clip_cache_build_records_the_refusal(video: str) -> None:
    got = clip_cache.decode_all_frames(video, 16, max_pixels=W * H - 1)
    assert got.frames is None and isinstance(got.error, DecodeError) and f"{W}x{H}" in str(got.error)
    assert clip_cache.decode_all_frames(video, 16, max_pixels=W * H).frames is not None


class _Counter:
    def __init__(self) -> None:
        self.added: dict[str, str] = {}
        self.add = self

    def remote(self, path: str, reason: str) -> None:
        self.added[path] = reason


class _Ref:  # stands for the table's Ray object ref (streams._table keys its per-process copy by hex())
    def hex(self) -> str:
        return "cap-test-table"


def test_a_training_stream_skips_and_counts_a_video_above_data_max_decode_pixels(
        video: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from workflows.runtime import streams

    small = str(write_video(tmp_path / "small.mp4", half_white(n=6, h=16, w=16)))  # 256 pixels
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "demo.yaml",
                      [f"data.max_decode_pixels={16 * 16}"])
    table = {"path": np.array([video, small], dtype=object), "label": np.array([0, 1], dtype=np.int64)}
    monkeypatch.setitem(streams._TABLES, _Ref().hex(), table)
    counter = _Counter()
    opts = {**CLIP, "decoder": "pyav", "timeout_s": 10.0, "max_pixels": cfg.data.max_decode_pixels, "threads": 1}
    [batch] = streams.train_batches({"start": np.array([0]), "stop": np.array([2])}, table=_Ref(), seed=0,
                                    label_key="label", cfg=opts, counter=counter, chunk=2)
    assert batch["clip"].shape == (1, 4, 16, 16, 3) and batch["label"].tolist() == [1]
    assert list(counter.added) == [video] and f"{W}x{H} frames" in counter.added[video]


@pytest.mark.parametrize("module", ["ssl_core.loop", "ssl_core.pretrain.__main__"])
def test_the_ray_free_runners_take_the_configs_cap(
    module: str, synth_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cap below the generated videos' frames refuses every one of them: the runner names the split it cannot
    read instead of training on it (with the decoders' default cap the same set trains)."""
    main = importlib.import_module(module).main
    config = ROOT / "configs" / ("demo.yaml" if module == "ssl_core.loop" else "pretrain_demo.yaml")
    overrides = [f"data.root={synth_dataset}", "data.synthetic.enabled=false", "data.cache=off", "data.num_frames=4",
                 "data.size=40", "augment.crop_size=32", "model.primary=small3d_w0.25", "train.iterations=1",
                 "train.batch_size=2", "data.max_decode_pixels=100", f"output.storage={tmp_path / 'runs'}"]
    if module == "ssl_core.loop":
        overrides.append("algorithm.name=supervised")
    assert main(["--config", str(config), *[a for o in overrides for a in ("--set", o)]]) == 2
    err = capsys.readouterr().err
    assert "decodes" in err and "exceed data.max_decode_pixels=100" in err
