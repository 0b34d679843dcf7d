"""Where a classifier's head is (the module every fine-tuning and embedding tool treats as the head), and the
features it reads (the embeddings of comatch and of bench.feature_labels).

    python -c "from ssl_core.models import build_model; from ssl_core.models.heads import head_prefix; \
print(head_prefix(build_model('frame2d', num_classes=5)))"
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor, nn

from ssl_core.unwrap import unwrap


def head_prefix(model: nn.Module) -> str | None:
    """Module name of the classifier: the model's last nn.Linear (`fc`, `fc.1` behind dropout, `blocks.5.proj`,
    `head`) or 1x1x1 nn.Conv3d (S3D's `classifier.1`)."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) or (isinstance(module, nn.Conv3d) and module.kernel_size == (1, 1, 1)):
            last = name
    return last


@contextmanager
def head_inputs(model: nn.Module) -> Iterator[list[Tensor]]:
    """The features each forward of `model` hands its classifier head, (N, D) per call, in call order."""
    net = unwrap(model)
    name = head_prefix(net)
    if name is None:
        raise ValueError(f"{type(net).__name__} has no classifier head to take embeddings before")
    seen: list[Tensor] = []

    def keep(_module: nn.Module, args: tuple[Tensor, ...]) -> None:
        x = args[0]
        seen.append(x.flatten(2).mean(-1) if x.ndim > 2 else x)  # a 1x1x1 conv head (S3D): pool its map

    hook = net.get_submodule(name).register_forward_pre_hook(keep)
    try:
        yield seen
    finally:
        hook.remove()
