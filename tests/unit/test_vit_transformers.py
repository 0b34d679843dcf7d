"""vidssl's ViT against transformers' VideoMAEForVideoClassification: a state dict in transformers' layout, built
here from random weights, loads through the key map and gives the same logits (transformers is a dev dependency,
never imported by vidssl itself).

    pytest tests/unit/test_vit_transformers.py
"""

from __future__ import annotations

import torch
from transformers import VideoMAEConfig, VideoMAEForVideoClassification

from ssl_core.models import build_model
from ssl_core.models.init import load_init


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
