"""Every pytorchvideo hub entry at its published input size (mvit_base_16x4: 16 x 224 px, SlowFast: 32 frames)
against the hub module exactly as pytorchvideo builds it (its fixed head pools), loaded from a file in the
published .pyth format through model.init's path: the same logits. Minutes on 2 CPU cores (tests/unit holds the
small-clip version).

    pytest tests/slow/test_pytorchvideo_zoo_published.py
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ssl_core.models import build_model
from ssl_core.models.init import load_init, read_init_source
from ssl_core.models.pytorchvideo_hub import ENTRIES
from tests.pytorchvideo_reference import reference, reference_logits, save_pyth

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.mark.parametrize("name", list(ENTRIES))
def test_published_size_gives_pytorchvideos_logits(tmp_path: Path, name: str) -> None:
    torch.manual_seed(0)
    theirs_model = reference(name, 400)
    path = save_pyth(theirs_model.state_dict(), tmp_path / f"{name}.pyth")
    model = build_model(name, num_classes=400).eval()
    report = load_init(model, read_init_source(str(path)).state_dict, name="primary", source=str(path))
    assert report.matched == list(model.state_dict()) and not report.unexpected
    entry = ENTRIES[name]
    clip = torch.randn(1, 3, entry.frames, entry.crop, entry.crop)
    with torch.no_grad():
        torch.testing.assert_close(model(clip), reference_logits(name, theirs_model, clip), atol=1e-4, rtol=1e-4)
