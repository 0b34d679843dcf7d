"""The bare model inside a DistributedDataParallel wrapper: what checkpoints save and EMA copies average.

Below the algorithms and the checkpoint code, which both need it, so that neither imports the other for it.

Try it:
    python -c "import torch; from ssl_core.unwrap import unwrap; m = torch.nn.Linear(2, 2); print(unwrap(m) is m)"
"""

from __future__ import annotations

from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a DistributedDataParallel wrapper."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
