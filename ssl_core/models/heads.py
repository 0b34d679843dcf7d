"""Where a classifier's head is: the module every fine-tuning and embedding tool treats as the head.

    python -c "from ssl_core.models import build_model; from ssl_core.models.heads import head_prefix; \
print(head_prefix(build_model('frame2d', num_classes=5)))"
"""

from __future__ import annotations

from torch import nn


def head_prefix(model: nn.Module) -> str | None:
    """Module name of the classifier: the model's last nn.Linear (`fc`, `fc.1` behind dropout, `blocks.5.proj`,
    `head`) or 1x1x1 nn.Conv3d (S3D's `classifier.1`)."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) or (isinstance(module, nn.Conv3d) and module.kernel_size == (1, 1, 1)):
            last = name
    return last
