"""The auxiliary model paired with a primary when `model.auxiliary` is not set: CMPL's smaller sibling of the
primary's family (the paper pairs R50 with R50 at 1/4 width), or FixMatch's companion.

The pairing follows the primary's base name (its width and `+tg` view suffixes aside) through `SIBLINGS`; a primary
without an entry, or an entry whose sibling is not registered in this build, gets
`FALLBACK`, the auxiliary vidssl has always defaulted to. An explicit `model.auxiliary` always wins. ModelConfig
resolves it once when a config is read, so the stored config and the logged `model.auxiliary` param name the
model that was trained.

    python -c "from ssl_core.auxiliary_pairing import paired_auxiliary; print(paired_auxiliary('vit_b'))"
"""

from __future__ import annotations

from ssl_core.models import parse_model_name

FALLBACK = "small3d_w0.5"
# A model whose family has no smaller member (Swin-T, the MViTs, S3D) gets a 1/4-width R3D-18: its own family's
# next size would cost about as much as the primary, and CMPL's auxiliary is meant to be far cheaper.
SMALL_3D_CNN = "r3d_18_w0.25"
SIBLINGS: dict[str, str] = {
    "small3d": "small3d_w0.5",
    "frame2d": "frame2d_w0.5",
    "r3d_18": "r3d_18_w0.25",
    "mc3_18": "mc3_18_w0.25",
    "r2plus1d_18": "r2plus1d_18_w0.25",
    "r3d_50": "r3d_50_w0.25",
    "vit_b": "vit_s",
    "vit_s": "vit_tiny",
    "x3d_xs": "x3d_xs_w0.5",
    "x3d_s": "x3d_xs",
    "x3d_m": "x3d_xs",
    "x3d_l": "x3d_xs",
    # pytorchvideo's larger hub models: X3D-XS is their cheapest published relative (any clip size, 3.8 M params)
    "slowfast_r50": "x3d_xs",
    "r2plus1d_r50": "x3d_xs",
    "csn_r101": "x3d_xs",
    "mvit_base_16x4": "x3d_xs",
    "slow_r50": "r3d_50_w0.25",
    "swin3d_b": "swin3d_t",
    "swin3d_s": "swin3d_t",
    "swin3d_t": SMALL_3D_CNN,
    "mvit_v1_b": SMALL_3D_CNN,
    "mvit_v2_s": SMALL_3D_CNN,
    "s3d": SMALL_3D_CNN,
}


def paired_auxiliary(primary: str) -> str:
    """The auxiliary for `primary` (a registered name, suffixes allowed): its sibling when registered here, else
    FALLBACK. An unknown primary gets FALLBACK too (ModelConfig.check names it)."""
    try:
        base, _ = parse_model_name(primary)
        sibling = SIBLINGS[base]
        parse_model_name(sibling)
    except (KeyError, ValueError):
        return FALLBACK
    return sibling
