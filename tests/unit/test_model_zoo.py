"""The backbone zoo: VideoMAE-layout ViTs (official checkpoints by key, masked encoding), torchvision's video
classifiers (published module trees, equal logits), per-entry input specs (config defaults, normalisation), and
the one-line errors of a wrong weights file.

    pytest tests/unit/test_model_zoo.py
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torchvision.models import get_model, get_model_weights

from ssl_core.config import ConfigError, load_config, pin_paths
from ssl_core.data.transforms import MEAN, STD
from ssl_core.models import build_model, list_models, model_inputs
from ssl_core.models.heads import head_prefix
from ssl_core.models.init import InitError, load_init, read_init_source
from ssl_core.models.init_spec import init_spec_problem
from ssl_core.models.torchvision_video import ENTRIES
from workflows.cli import main as cli

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
TORCHVISION = ["r3d_18", *ENTRIES]


def official_videomae_shapes(dim: int, depth: int, classes: int) -> dict[str, tuple[int, ...]]:
    """The state dict of VideoMAE's modeling_finetune.VisionTransformer (qkv_bias=True, mean pooling, no layer
    scale), written out from its code: what its released fine-tuned checkpoints hold."""
    shapes: dict[str, tuple[int, ...]] = {"patch_embed.proj.weight": (dim, 3, 2, 16, 16),
                                          "patch_embed.proj.bias": (dim,)}
    for i in range(depth):
        b = f"blocks.{i}"
        shapes |= {f"{b}.norm1.weight": (dim,), f"{b}.norm1.bias": (dim,), f"{b}.attn.q_bias": (dim,),
                   f"{b}.attn.v_bias": (dim,), f"{b}.attn.qkv.weight": (3 * dim, dim),
                   f"{b}.attn.proj.weight": (dim, dim), f"{b}.attn.proj.bias": (dim,),
                   f"{b}.norm2.weight": (dim,), f"{b}.norm2.bias": (dim,),
                   f"{b}.mlp.fc1.weight": (4 * dim, dim), f"{b}.mlp.fc1.bias": (4 * dim,),
                   f"{b}.mlp.fc2.weight": (dim, 4 * dim), f"{b}.mlp.fc2.bias": (dim,)}
    return shapes | {"fc_norm.weight": (dim,), "fc_norm.bias": (dim,), "head.weight": (classes, dim),
                     "head.bias": (classes,)}


def shapes_of(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize(("name", "dim", "depth"), [("vit_s", 384, 12), ("vit_b", 768, 12), ("vit_tiny", 192, 4)])
def test_vit_state_dict_is_videomae_official_layout(name: str, dim: int, depth: int) -> None:
    with torch.device("meta"):  # shapes only: no weights initialised
        model = build_model(name, num_classes=400)
    assert shapes_of(model) == official_videomae_shapes(dim, depth, 400)


@pytest.mark.parametrize("wrapper", ["module", "model"])
def test_official_checkpoint_loads_by_key(tmp_path: Path, wrapper: str) -> None:
    """A released checkpoint ({"module": ...} from DeepSpeed, {"model": ...} otherwise), other class count."""
    torch.manual_seed(0)
    state = {k: torch.randn(s) for k, s in official_videomae_shapes(192, 4, 400).items()}
    path = tmp_path / "videomae.pth"
    torch.save({wrapper: state, "epoch": 149}, path)
    source = read_init_source(str(path))
    model = build_model("vit_tiny", num_classes=8)
    report = load_init(model, source.state_dict, name="primary", source=source.description)
    assert report.reinitialised == ["head.weight", "head.bias"] and not report.missing and not report.unexpected
    assert report.head == "re-initialised (400 -> 8 classes)"
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if not k.startswith("head."))


def test_videomae_pretraining_checkpoint_loads_its_encoder() -> None:
    """modeling_pretrain's keys: encoder.* (with a per-token norm) beside the decoder's."""
    shapes = official_videomae_shapes(192, 4, 400)
    state = {f"encoder.{k}": torch.zeros(s) for k, s in shapes.items() if not k.startswith(("fc_norm", "head"))}
    state |= {"encoder.norm.weight": torch.ones(192), "mask_token": torch.zeros(1, 1, 96),
              "encoder_to_decoder.weight": torch.zeros(96, 192)}
    report = load_init(build_model("vit_tiny", num_classes=5), state, name="primary", source="pretrained")
    assert report.stripped == "encoder." and report.missing == ["fc_norm.weight", "fc_norm.bias"]
    assert len(report.matched) == 54 and sorted(report.unexpected) == ["encoder_to_decoder.weight", "mask_token",
                                                                        "norm.weight"]


def test_masked_encoding_sees_only_the_visible_tubes() -> None:
    torch.manual_seed(0)
    model = build_model("vit_tiny", num_classes=5).eval()
    video = torch.randn(2, 3, 8, 64, 64)
    n = 4 * 4 * 4  # 8 frames / 2 x (64 / 16)^2 tubes, in (t, h, w) order
    visible = torch.zeros(2, n, dtype=torch.bool)
    visible[0, :16] = True  # clip 0: the first two frames; clip 1: every fourth tube
    visible[1, ::4] = True
    with torch.no_grad():
        tokens = model.tokens(video, visible)
        assert tokens.shape == (2, 16, 192)
        assert model(video, visible).shape == (2, 5)
        changed = video.clone()
        changed[0, :, 2:] = 0  # clip 0's hidden frames
        torch.testing.assert_close(model.tokens(changed, visible)[0], tokens[0], atol=0, rtol=0)
        everything = torch.ones(2, n, dtype=torch.bool)
        torch.testing.assert_close(model(video, everything), model(video))
        assert model.tokens(video).shape == (2, n, 192)
    uneven = visible.clone()
    uneven[1, 1] = True
    with pytest.raises(ValueError, match=r"same number .* got \[16, 17\]"):
        model.tokens(video, uneven)


def test_vit_input_must_tile_into_tubelets() -> None:
    with pytest.raises(ValueError, match="T must be a multiple of 2 and H, W of 16"):
        build_model("vit_tiny", num_classes=5)(torch.randn(1, 3, 8, 72, 72))


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_entries_have_the_published_module_tree(name: str) -> None:
    with torch.device("meta"):
        ours = build_model(name, num_classes=7)
        theirs = get_model(name, weights=None, num_classes=7)
    assert shapes_of(ours) == shapes_of(theirs)
    # the classifier vidssl re-initialises for another class count: torchvision's head
    assert head_prefix(ours) == {"s3d": "classifier.1", "mvit_v1_b": "head.1", "mvit_v2_s": "head.1"}.get(
        name, "head" if name.startswith("swin3d") else "fc")


@pytest.mark.parametrize(
    ("name", "dropout_at"),
    [("swin3d_t", "head.0"), ("mvit_v2_s", "head.0"), ("s3d", "classifier.0"), ("mc3_18", "fc.0"),
     ("vit_tiny", "fc_dropout")],
)
def test_model_dropout_is_before_the_classifier(name: str, dropout_at: str) -> None:
    with torch.device("meta"):
        model = build_model(name, num_classes=7, dropout=0.3)
    dropout = model.get_submodule(dropout_at)
    assert isinstance(dropout, nn.Dropout) and dropout.p == 0.3


@pytest.mark.parametrize("name", list(ENTRIES))
def test_input_specs_follow_torchvision_weights_meta(name: str) -> None:
    """crop / resize / mean / std are read from the weights' transforms; frames and stride must match the clip
    length and frame rate the weights were evaluated at (stride 2 at 15 fps of ~30 fps sources)."""
    spec = model_inputs(name)
    weights = next(iter(get_model_weights(name)))
    docs = weights.meta["_docs"]
    assert spec is not None and str(spec.frames) == re.search(r"clip_len=(\d+)", docs)[1]
    assert spec.stride == round(30 / float(re.search(r"frame_rate=([\d.]+)", docs)[1]))
    preset = weights.transforms()
    assert (spec.crop, spec.mean, spec.std) == (preset.crop_size[0], tuple(preset.mean), tuple(preset.std))


@pytest.mark.parametrize("name", ["mc3_18", "r2plus1d_18"])  # the small ones (r3d_18: test_model_init.py)
def test_torchvision_state_dict_loads_with_equal_logits(tmp_path: Path, name: str) -> None:
    """torchvision's module saved as a weights file: vidssl's entry loads it by key and, fed vidssl's normalised
    clip, gives the logits torchvision's module gives on the clip normalised as its weights expect."""
    torch.manual_seed(0)
    reference = get_model(name, weights=None, num_classes=400).eval()
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)
    model = build_model(name, num_classes=400).eval()
    report = load_init(model, read_init_source(str(path)).state_dict, name="primary", source=str(path))
    assert report.matched == list(model.state_dict()) and not report.unexpected
    pixels = torch.rand(2, 3, 4, 32, 32)
    spec = model_inputs(name)
    assert spec is not None and spec.mean != MEAN
    with torch.no_grad():
        ours = model(_normalised(pixels, MEAN, STD))
        theirs = reference(_normalised(pixels, spec.mean, spec.std))
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def _normalised(pixels: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    return (pixels - torch.tensor(mean).view(1, 3, 1, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1, 1)


def test_input_normalisation_is_outside_the_state_dict_and_survives_a_copy() -> None:
    model = build_model("mc3_18", num_classes=3)
    assert "input_scale" not in model.state_dict() and hasattr(model, "input_scale")
    twin = copy.deepcopy(model).eval()
    x = torch.randn(1, 3, 2, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), model.eval()(x))
    assert not hasattr(build_model("vit_tiny", num_classes=3), "input_scale")  # vidssl's statistics already


@pytest.mark.parametrize(
    ("source", "model_name", "message"),
    [
        ("r3d", "vit_tiny", r"only 0/56 backbone keys found; patch_embed\.proj\.weight \(192, 3, 2, 16, 16\) is not "
                            r"in the source; the source's keys look like stem\.0\.weight"),
        ("vit_s", "vit_tiny", r"patch_embed\.proj\.weight is \(384, 3, 2, 16, 16\) in the source, "
                              r"\(192, 3, 2, 16, 16\) in the model"),
    ],
)
def test_another_architecture_is_one_line(tmp_path: Path, source: str, model_name: str, message: str) -> None:
    if source == "r3d":
        state = get_model("r3d_18", weights=None, num_classes=400).state_dict()
    else:
        state = {k: torch.zeros(s) for k, s in official_videomae_shapes(384, 12, 400).items()}
    path = tmp_path / "w.pth"
    torch.save(state, path)
    with pytest.raises(InitError) as err:
        load_init(build_model(model_name, num_classes=5), read_init_source(str(path)).state_dict, name="primary",
                  source=str(path))
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"model.init: {path} does not fit the primary model (VideoViT)")
    assert re.search(message, text), text


def test_truncated_file_is_one_line_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "vit_b.pth"
    torch.save({k: torch.zeros(s) for k, s in official_videomae_shapes(192, 4, 400).items()}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InitError) as err:
        read_init_source(str(path))
    assert "\n" not in str(err.value) and str(err.value).startswith(f"model.init: cannot read {path} as PyTorch")


def test_torchvision_named_sources_are_checked_without_downloading(tmp_path: Path) -> None:
    assert init_spec_problem("torchvision:swin3d_t:KINETICS400_V1") is None
    assert "expected torchvision:<model>:<weights>" in str(init_spec_problem("torchvision:swin3d_t"))
    with pytest.raises(InitError, match="Swin3D_T_Weights has no 'NOPE'; it has KINETICS400_V1"):
        read_init_source("torchvision:swin3d_t:NOPE")
    with pytest.raises(InitError, match="torchvision has no model 'nope'"):
        read_init_source("torchvision:nope:KINETICS400_V1")
    # a workflow that made every local source absolute: still the named source, not a missing file
    with pytest.raises(InitError, match="model.auxiliary_init: torchvision:swin3d_t:NOPE: Swin3D_T_Weights"):
        read_init_source(f"{tmp_path}/torchvision:swin3d_t:NOPE", key="model.auxiliary_init")
    cfg = load_config(DEMO, ["model.primary=swin3d_t", "model.init=torchvision:swin3d_t:KINETICS400_V1"])
    assert pin_paths(cfg.to_dict(), "sqlite:///x.db")["model"]["init"] == "torchvision:swin3d_t:KINETICS400_V1"


def test_config_takes_the_primary_model_input_unless_set() -> None:
    cfg = load_config(None, ["model.primary=vit_b"])
    assert (cfg.data.num_frames, cfg.data.stride, cfg.data.size, cfg.augment.crop_size) == (16, 4, 224, 224)
    cfg = load_config(None, ["model.primary=swin3d_t", "data.num_frames=8", "augment.crop_size=112"])
    assert (cfg.data.num_frames, cfg.data.stride, cfg.data.size, cfg.augment.crop_size) == (8, 2, 256, 112)
    demo = load_config(DEMO)  # small3d: no input spec, the file's values
    assert (demo.data.num_frames, demo.data.size, demo.augment.crop_size) == (8, 72, 64)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.primary=mvit_v1_b", "data.num_frames=8"], "data.num_frames: mvit_v1_b takes 16 frames only"),
        (["model.primary=vit_tiny", "augment.crop_size=56"], "augment.crop_size: vit_tiny needs a multiple of 16"),
        (["model.primary=vit_tiny", "data.num_frames=5"], "data.num_frames: vit_tiny needs a multiple of 2"),
        (["model.primary=s3d", "augment.crop_size=112"], "augment.crop_size: s3d needs >= 224 px"),
        (["model.primary=vit_b", "data.size=128"],
         "augment.crop_size: must be <= data.size (128) (vit_b takes 224 px where augment.crop_size is not set)"),
    ],
)
def test_config_refuses_input_the_model_cannot_take(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, overrides)


def test_list_models_shows_inputs_and_weights(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["list", "models"]) == 0
    out = capsys.readouterr().out
    assert {name for name, _ in list_models()} <= set(re.findall(r"^(\S+)", out, flags=re.M))
    assert ("input: 16 frames, stride 4, crop 224 (short side 224), mean (0.485, 0.456, 0.406), "
            "std (0.229, 0.224, 0.225)") in out
    assert "torchvision:swin3d_b:KINETICS400_IMAGENET22K_V1" in out and "MCG-NJU/videomae-base-finetuned" in out
