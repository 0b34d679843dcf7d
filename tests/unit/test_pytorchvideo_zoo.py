"""pytorchvideo's hub models in vidssl's zoo: each entry loads a file in the published format ({"model_state": ...}
.pyth) through model.init's path and gives the logits of pytorchvideo's own module; the one-line errors of a
wrong file; widths; SlowFast from one clip; the `hub:<model>` source (offline: a file already in torch hub's
cache); a few CMPL / FixMatch steps of x3d_xs. Every entry at its published input size: tests/slow.

    pytest tests/unit/test_pytorchvideo_zoo.py
"""

from __future__ import annotations

import re
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from ssl_core.config import ConfigError, load_config, pin_paths
from ssl_core.loop import run_local
from ssl_core.models import build_model, list_models, model_inputs
from ssl_core.models.init import InitError, InitReport, load_init, read_init_source
from ssl_core.models.init_spec import init_spec_problem
from ssl_core.models.pytorchvideo_hub import ENTRIES, SLOWFAST_ALPHA, URLS
from tests.pytorchvideo_reference import fit_head_pools, hub, reference, reference_logits, save_pyth
from workflows.cli import main as cli

# pytorchvideo's Swish backward (X3D) reads ctx.saved_variables, which torch deprecates.
pytestmark = [pytest.mark.filterwarnings("ignore:'saved_variables' is deprecated:DeprecationWarning"),
              pytest.mark.usefixtures("torch_one_thread")]
DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
CLASSES = 5
# mvit_base_16x4 takes its published 16 x 224 px clip only: tests/slow/test_pytorchvideo_zoo_published.py.
SMALL = [name for name in ENTRIES if not ENTRIES[name].fixed]


@dataclass
class Loaded:
    reference: nn.Module
    path: Path  # the reference saved as a published .pyth file
    model: nn.Module  # vidssl's entry, loaded from it through model.init's path
    report: InitReport


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Loaded]:
    built: dict[str, Loaded] = {}

    def get(name: str) -> Loaded:
        if name not in built:
            torch.manual_seed(0)
            ref = reference(name, CLASSES)
            path = save_pyth(ref.state_dict(), tmp_path_factory.mktemp(name) / f"{name}.pyth")
            model = build_model(name, num_classes=CLASSES).eval()
            source = read_init_source(str(path))
            built[name] = Loaded(ref, path, model, load_init(model, source.state_dict, name="primary",
                                                              source=source.description))
        return built[name]

    return get


def clip_for(name: str) -> Tensor:
    """A small clip the entry takes (SlowFast: 8 frames, so the slow pathway is frames 0 and 7)."""
    torch.manual_seed(1)
    return torch.randn(2, 3, 2 * SLOWFAST_ALPHA if name == "slowfast_r50" else 4, 16, 16)


@pytest.mark.parametrize("name", SMALL)
def test_published_file_loads_every_key_and_gives_pytorchvideos_logits(zoo: Callable[[str], Loaded], name: str) -> None:
    loaded = zoo(name)
    assert loaded.report.matched == list(loaded.model.state_dict()), loaded.report.line()
    assert not loaded.report.unexpected and loaded.report.head == "loaded"
    clip = clip_for(name)
    with torch.no_grad():
        ours = loaded.model(clip)
        theirs = reference_logits(name, fit_head_pools(loaded.reference), clip)
    assert ours.shape == (2, CLASSES)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_at_the_published_size_the_global_head_pool_is_the_published_one(zoo: Callable[[str], Loaded]) -> None:
    """x3d_xs at 4 x 160 px against the hub module as it is built (its fixed (4, 5, 5) head pool)."""
    torch.manual_seed(0)
    published = reference("x3d_xs", CLASSES)
    published.load_state_dict(zoo("x3d_xs").reference.state_dict())
    clip = torch.randn(1, 3, 4, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(zoo("x3d_xs").model(clip), published(clip), atol=1e-4, rtol=1e-4)


def test_another_class_count_reinitialises_the_head_and_says_so(zoo: Callable[[str], Loaded], tmp_path: Path) -> None:
    state = dict(zoo("x3d_xs").reference.state_dict())
    state["blocks.5.proj.weight"], state["blocks.5.proj.bias"] = torch.zeros(400, 2048), torch.zeros(400)
    path = save_pyth(state, tmp_path / "X3D_XS.pyth")
    model = build_model("x3d_s", num_classes=CLASSES)  # X3D-XS, -S and -M share one module tree
    report = load_init(model, read_init_source(str(path)).state_dict, name="primary", source=str(path))
    assert report.reinitialised == ["blocks.5.proj.weight", "blocks.5.proj.bias"]
    assert report.head == "re-initialised (400 -> 5 classes)" and not report.missing and not report.unexpected


def test_another_architecture_is_one_line_naming_the_file_and_a_key(zoo: Callable[[str], Loaded]) -> None:
    source = zoo("slowfast_r50").path
    with pytest.raises(InitError) as err:
        load_init(zoo("slow_r50").model, read_init_source(str(source)).state_dict, name="primary", source=str(source))
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"model.init: {source} does not fit the primary model (Net): ")
    assert re.search(r"blocks\.\d\.\S+ \(", text), text


def test_truncated_file_is_one_line_naming_it(zoo: Callable[[str], Loaded], tmp_path: Path) -> None:
    path = tmp_path / "X3D_XS.pyth"
    path.write_bytes(zoo("x3d_xs").path.read_bytes()[:100_000])
    with pytest.raises(InitError) as err:
        read_init_source(str(path))
    assert "\n" not in str(err.value) and str(err.value).startswith(f"model.init: cannot read {path} as PyTorch")


def test_x3d_width_scales_the_others_refuse_it_in_one_line() -> None:
    with torch.device("meta"):
        half = build_model("x3d_xs_w0.5", num_classes=CLASSES)
        full = build_model("x3d_xs", num_classes=CLASSES)
    assert half.blocks[0].conv.conv_xy.out_channels < full.blocks[0].conv.conv_xy.out_channels
    assert sum(p.numel() for p in half.parameters()) < sum(p.numel() for p in full.parameters())
    assert build_model("x3d_xs_w0.25", num_classes=CLASSES)(torch.randn(2, 3, 2, 16, 16)).shape == (2, CLASSES)
    for name in ("slowfast_r50", "r2plus1d_r50", "csn_r101", "mvit_base_16x4"):
        with pytest.raises(ValueError, match=rf"^model '{name}_w0.5': {name} has no width variants"):
            build_model(f"{name}_w0.5", num_classes=CLASSES)  # refused by name, when a config is read


def test_slowfast_takes_one_clip_of_a_multiple_of_alpha_frames(zoo: Callable[[str], Loaded]) -> None:
    with pytest.raises(ValueError, match="slowfast_r50 takes a multiple of 4 frames"):
        zoo("slowfast_r50").model(torch.randn(1, 3, 6, 16, 16))
    with pytest.raises(ConfigError, match="data.num_frames: slowfast_r50 needs a multiple of 4, got 6"):
        load_config(None, ["model.primary=slowfast_r50", "data.num_frames=6"])
    with pytest.raises(ConfigError, match="data.num_frames: mvit_base_16x4 takes 16 frames only"):
        load_config(None, ["model.primary=mvit_base_16x4", "data.num_frames=8"])


def test_config_takes_the_published_clip_unless_set() -> None:
    cfg = load_config(None, ["model.primary=x3d_xs"])
    assert (cfg.data.num_frames, cfg.data.stride, cfg.data.size, cfg.augment.crop_size) == (4, 12, 182, 160)
    cfg = load_config(None, ["model.primary=slowfast_r50"])
    assert (cfg.data.num_frames, cfg.data.stride, cfg.data.size, cfg.augment.crop_size) == (32, 2, 256, 224)
    assert model_inputs("slow_r50") is not None and model_inputs("r3d_50") is None  # r3d_50 keeps the run's clip


def test_hub_source_reads_torch_hubs_cache_and_names_the_url_when_it_cannot_download(
    zoo: Callable[[str], Loaded], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # torch.hub.get_dir() -> $TORCH_HOME/hub
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "X3D_XS.pyth").write_bytes(zoo("x3d_xs").path.read_bytes())  # fetched before, e.g. by torch.hub
    source = read_init_source("hub:x3d_xs")
    assert source.description == "hub:x3d_xs" and source.state_dict.keys() == zoo("x3d_xs").model.state_dict().keys()
    # a workflow made it an absolute path: still the named source
    assert read_init_source(f"{tmp_path}/hub:x3d_xs").description == "hub:x3d_xs"

    def offline(url: str, dst: str, **_: object) -> None:
        raise urllib.error.URLError("no internet")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(InitError) as err:
        read_init_source("hub:x3d_m", key="model.auxiliary_init")
    assert str(err.value) == (
        f"model.auxiliary_init: hub:x3d_m: cannot download {URLS['x3d_m']} (<urlopen error no internet>); download it "
        f"on a machine with internet into {cache / 'X3D_M.pyth'}, or give the local file")
    with pytest.raises(InitError, match=r"^model.init: hub:r3d_18: pytorchvideo's hub publishes no weights for "
                                        r"'r3d_18'; hub:<model> takes csn_r101, mvit_base_16x4, "):
        read_init_source("hub:r3d_18")


def test_hub_source_form_is_checked_and_kept_by_pin_paths() -> None:
    assert init_spec_problem("hub:x3d_m") is None
    assert "expected hub:<model>" in str(init_spec_problem("hub:X3D-M"))
    cfg = load_config(DEMO, ["model.primary=x3d_m", "model.init=hub:x3d_m", "model.auxiliary=x3d_xs",
                             "model.auxiliary_init=hub:x3d_xs"])
    pinned = pin_paths(cfg.to_dict(), "sqlite:///x.db")["model"]
    assert (pinned["init"], pinned["auxiliary_init"]) == ("hub:x3d_m", "hub:x3d_xs")


def test_list_models_shows_the_hub_entries(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["list", "models"]) == 0
    out = capsys.readouterr().out
    assert set(ENTRIES) <= {name for name, _ in list_models()} <= set(re.findall(r"^(\S+)", out, flags=re.M))
    assert ("weights: pytorchvideo hub: hub:x3d_xs "
            "(https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/kinetics/X3D_XS.pyth)") in out
    assert "input: 32 frames, stride 2, crop 224 (short side 256), mean (0.450, 0.450, 0.450)" in out


@pytest.mark.parametrize(("algorithm", "auxiliary"), [("cmpl", "x3d_xs"), ("fixmatch", "x3d_xs+tg")])
def test_x3d_xs_trains_with_cmpl_and_fixmatch(synth_dataset: Path, tmp_path: Path, algorithm: str,
                                              auxiliary: str) -> None:
    """The Ray-free runner, as tests/e2e/test_e2e_train.py drives every algorithm, on 4-frame 32 px clips: CMPL's
    auxiliary for the X3D family is x3d_xs; FixMatch's companion reads the temporal gradient, as in the demo."""
    cfg = load_config(DEMO, [
        f"data.root={synth_dataset}", "data.synthetic.enabled=false", "data.labeled_fraction=0.5", "data.cache=off",
        "data.num_frames=4", "data.size=40", "data.eval_clips=1", "augment.crop_size=32",
        f"algorithm.name={algorithm}", "model.primary=x3d_xs", f"model.auxiliary={auxiliary}",
        "train.iterations=2", "train.batch_size=2", "train.mu=1", "train.log_every=2", "train.warmup_iters=1",
        "train.eval_every=2", "train.checkpoint_every=2", "algorithm.tau=0.0", f"output.storage={tmp_path}",
    ])
    steps: list[int] = []
    result = run_local(cfg, decode_threads=1, say=lambda _: None, on_report=lambda r: steps.append(r.step),
                       run_dir=tmp_path / "run")
    assert steps == [2]
    models = {k.removeprefix("top1_") for k in result if k.startswith("top1_")}
    assert models == {"primary", "auxiliary"}
    assert all(0.0 <= result[f"top1_{m}"] <= 1.0 for m in models)


def test_the_published_finetune_config_starts_from_published_files(synth_dataset: Path, tmp_path: Path) -> None:
    """configs/finetune_published.yaml (README's path for a published checkpoint) with local files in pytorchvideo's
    format for both models, on tiny clips: both load, their 400-class heads are re-initialised, CMPL trains."""
    files = {}
    for name in ("x3d_m", "x3d_xs"):
        files[name] = tmp_path / f"{name.upper()}.pyth"
        torch.save({"model_state": getattr(hub, name)(pretrained=False).state_dict()}, files[name])
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "finetune_published.yaml", [
        f"data.root={synth_dataset}", "data.labeled_fraction=0.5", "data.cache=off", "data.num_frames=4",
        "data.size=40", "data.eval_clips=1", "augment.crop_size=32", f"model.init={files['x3d_m']}",
        f"model.auxiliary_init={files['x3d_xs']}", "scaling.use_gpu=false", "train.iterations=2", "train.batch_size=2",
        "train.mu=1", "train.log_every=2", "train.warmup_iters=1", "train.eval_every=2", "train.checkpoint_every=2",
        f"output.storage={tmp_path}",
    ])
    assert (cfg.model.auxiliary, cfg.train.head_lr_scale) == ("x3d_xs", 10.0)
    said: list[str] = []
    result = run_local(cfg, decode_threads=1, say=said.append, run_dir=tmp_path / "run")
    inits = [line for line in said if line.startswith("init ")]
    assert len(inits) == 2 and all("head re-initialised (400 -> 4 classes)" in line for line in inits), inits
    assert {"top1_primary", "top1_auxiliary"} <= set(result)
