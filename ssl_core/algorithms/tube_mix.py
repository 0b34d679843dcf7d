"""Tube TokenMix (SVFormer, Xing et al. CVPR 2023) on pixels: two clips mixed through a spatial mask that is the same
in every frame (a tube), drawn on a grid of `cell` x `cell` pixel cells.

Model-agnostic by construction. For a ViT whose tubelets are t x cell x cell pixels (the zoo's vit_*: 2 x 16 x 16,
cell 16) the pixel mix IS the paper's token mix: the patch embedding is linear in each tubelet's pixels and the mask
is constant over a tubelet, so embed(m * a + (1 - m) * b) = m * embed(a) + (1 - m) * embed(b) token by token (before
the position table is added, where the paper mixes). For any other model (a 3D CNN) it is a CutMix over space-time
tubes of that cell size.

Try it:
    python -c "import torch; from ssl_core.algorithms.tube_mix import tube_mask; \
m = tube_mask(2, 32, 48, 16, 0.5); print(m.shape, m.float().mean(dim=(1, 2, 3, 4)))"
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def tube_mask(
    batch: int,
    height: int,
    width: int,
    cell: int,
    ratio: float,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:  # (B, 1, 1, H, W) bool: True where the pixel comes from the first clip
    """Per clip, round(ratio * n) of the n = ceil(H / cell) * ceil(W / cell) cells, chosen at random, are True; one
    (H, W) mask per clip, broadcast over channels and frames (the tube). Drawn on the CPU (a few hundred numbers)."""
    if cell <= 0:
        raise ValueError(f"tube_mask: cell must be > 0, got {cell}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"tube_mask: ratio must be in [0, 1], got {ratio}")
    rows, cols = math.ceil(height / cell), math.ceil(width / cell)
    cells = rows * cols
    chosen = torch.rand(batch, cells, generator=generator).argsort(dim=1)[:, : round(ratio * cells)]
    grid = torch.zeros(batch, cells, dtype=torch.bool).scatter_(1, chosen, True).view(batch, rows, cols)
    pixels = grid.repeat_interleave(cell, dim=1).repeat_interleave(cell, dim=2)[:, :height, :width]
    return pixels[:, None, None].to(device)


def tube_mix(
    first: Tensor,  # (B, C, T, H, W)
    second: Tensor,  # (B, C, T, H, W)
    mask: Tensor,  # (B, 1, 1, H, W) bool (tube_mask)
) -> tuple[Tensor, Tensor]:  # mixed clips (B, C, T, H, W), share of each mixed clip's pixels from `first` (B,)
    """first where the mask is True, second elsewhere; the share is exact for any cell size (partial edge cells
    included), so targets weighted by it match what the model sees."""
    if first.shape != second.shape:
        raise ValueError(f"tube_mix: clip shapes differ, {tuple(first.shape)} vs {tuple(second.shape)}")
    if mask.shape != (first.shape[0], 1, 1, *first.shape[-2:]):
        raise ValueError(f"tube_mix: mask {tuple(mask.shape)} must be (B, 1, 1, H, W) for clips {tuple(first.shape)}")
    return torch.where(mask, first, second), mask.float().mean(dim=(1, 2, 3, 4))
