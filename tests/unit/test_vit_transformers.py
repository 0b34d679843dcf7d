"""vidssl's ViT against transformers' VideoMAEForVideoClassification: a state dict in transformers' layout, built
here from random weights, loads through the key map and gives the same logits (transformers is a dev dependency,
never imported by vidssl itself); `hf:<org>/<repo>` reads such a repository (safetensors, id2label).

    pytest tests/unit/test_vit_transformers.py
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import VideoMAEConfig, VideoMAEForVideoClassification

from ssl_core.models import build_model
from ssl_core.models.init import InitError, load_init, read_init_source
from ssl_core.models.init_spec import init_spec_problem


def test_transformers_layout_loads_and_gives_transformers_logits() -> None:
    torch.manual_seed(0)
    # vit_tiny's sizes; VideoMAE's LayerNorm eps (transformers' fc_norm keeps its 1e-5: well inside the tolerance)
    config = VideoMAEConfig(image_size=64, num_frames=8, hidden_size=192, num_hidden_layers=4, num_attention_heads=3,
                            intermediate_size=768, num_labels=5, layer_norm_eps=1e-6)
    reference = VideoMAEForVideoClassification(config).eval()
    with torch.no_grad():
        for p in reference.parameters():  # random everywhere: a swapped q / k / v or bias would show
            p.normal_(0.0, 0.5)
    state = reference.state_dict()

    model = build_model("vit_tiny", num_classes=5).eval()
    report = load_init(model, state, name="primary", source="hf")
    assert (len(report.matched), report.total, report.unexpected, report.head) == (58, 58, [], "loaded")
    assert report.line().endswith("transformers' VideoMAE layout mapped")

    video = torch.randn(2, 3, 8, 64, 64)  # vit_tiny's statistics are vidssl's: no input adapter in between
    with torch.no_grad():
        ours = model(video)
        theirs = reference(pixel_values=video.transpose(1, 2)).logits  # transformers takes (B, T, 3, H, W)
    assert ours.abs().max() > 1.0
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)

    # VideoMAEModel's own keys (no "videomae." prefix, no head): the encoder loads, the head stays fresh.
    encoder = {k.removeprefix("videomae."): v for k, v in state.items() if k.startswith("videomae.")}
    fresh = build_model("vit_tiny", num_classes=5)
    report = load_init(fresh, encoder, name="primary", source="hf encoder")
    assert report.missing == ["fc_norm.weight", "fc_norm.bias"] and report.reinitialised == ["head.weight",
                                                                                          "head.bias"]
    torch.testing.assert_close(fresh.blocks[3].attn.qkv.weight, model.blocks[3].attn.qkv.weight, atol=0, rtol=0)


def test_hf_source_reads_a_repository_with_its_class_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`hf:<org>/<repo>`: huggingface_hub's download (its cache) stands in for the Hub here: a repository saved
    by transformers' save_pretrained (model.safetensors + config.json) loads with its id2label as the classes."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    config = VideoMAEConfig(image_size=64, num_frames=8, hidden_size=192, num_hidden_layers=4, num_attention_heads=3,
                            intermediate_size=768, layer_norm_eps=1e-6,
                            id2label={0: "bike", 1: "violin", 2: "hair"}, label2id={"bike": 0, "violin": 1, "hair": 2})
    reference = VideoMAEForVideoClassification(config).eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.normal_(0.0, 0.5)
    reference.save_pretrained(tmp_path / "repo")  # the Hub's files keep the biases as q_bias / v_bias
    asked = []

    def download(repo_id: str, filename: str, revision: str | None = None) -> str:
        asked.append((repo_id, filename, revision))
        if not (tmp_path / "repo" / filename).exists():
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(tmp_path / "repo" / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    source = read_init_source("hf:org/videomae-tiny@v1")
    assert source.classes == ["bike", "violin", "hair"] and source.description == "hf:org/videomae-tiny@v1"
    assert asked[0] == ("org/videomae-tiny", "model.safetensors", "v1")
    model = build_model("vit_tiny", num_classes=3)
    report = load_init(model, source.state_dict, name="primary", source="hf",
                       source_classes=source.classes, classes=["bike", "violin", "hair"])
    assert len(report.matched) == report.total and report.head == "loaded"
    video = torch.randn(1, 3, 8, 64, 64)
    with torch.no_grad():
        theirs = reference(pixel_values=video.transpose(1, 2)).logits
        torch.testing.assert_close(model.eval()(video), theirs, atol=1e-4, rtol=0)

    # no safetensors: the .bin next; neither: one line naming both
    (tmp_path / "repo" / "model.safetensors").rename(tmp_path / "repo" / "pytorch_model.bin.safetensors")
    torch.save(source.state_dict, tmp_path / "repo" / "pytorch_model.bin")
    assert read_init_source("hf:org/videomae-tiny").state_dict.keys() == source.state_dict.keys()
    (tmp_path / "repo" / "pytorch_model.bin").unlink()
    with pytest.raises(InitError, match="holds none of model.safetensors, pytorch_model.bin"):
        read_init_source("hf:org/videomae-tiny")

    def offline(repo_id: str, filename: str, revision: str | None = None) -> str:
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(InitError, match=r"^model.init: hf:org/videomae-tiny: cannot fetch model.safetensors .*OSError"):
        read_init_source("hf:org/videomae-tiny")
    assert init_spec_problem("hf:videomae") is not None and init_spec_problem("hf:MCG-NJU/videomae-base") is None


def test_a_local_safetensors_file_is_a_state_dict(tmp_path: Path) -> None:
    weights = build_model("vit_tiny", num_classes=4).state_dict()
    save_file(weights, tmp_path / "w.safetensors")
    assert read_init_source(str(tmp_path / "w.safetensors")).state_dict.keys() == weights.keys()
