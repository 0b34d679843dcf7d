"""Video ViT in VideoMAE's fine-tuning layout (Tong et al., NeurIPS 2022): vit_tiny (CPU runs), vit_s, vit_b.

Tubelet embedding (Conv3d, 2 frames x 16 x 16 pixels), joint space-time attention over all tubes, VideoMAE's fixed
sine-cosine position table, then mean pooling + fc_norm + head. Module names are those of VideoMAE's
modeling_finetune.py, so its official checkpoints (`patch_embed.proj.weight`, `blocks.0.attn.qkv.weight`,
`blocks.0.attn.q_bias`, `fc_norm.weight`, `head.weight`, under "module" or "model") load by key, and
`transformers_to_official` maps Hugging Face transformers' VideoMAE layout onto them (ssl_core/models/init.py calls
it when a source's keys look like that layout).

For masked pretraining, `tokens(video, visible)` encodes only the visible tubes (VideoMAE's encoder) and returns
their features; `forward(video, visible)` pools those into logits, `forward(video, visible, pool=False)` returns
the tokens through the model's input hooks (ssl_core/pretrain/videomae.py).

Try it:
    python -c "import torch; from ssl_core.models import build_model; m = build_model('vit_tiny', num_classes=5); \
x = torch.randn(2, 3, 8, 64, 64); v = torch.arange(64).expand(2, 64) % 4 == 0; print(m(x).shape, m.tokens(x, v).shape)"
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_core.data.transforms import MEAN, STD
from ssl_core.models.registry import IMAGENET_MEAN, IMAGENET_STD, InputSpec, register_model

TUBELET = 2
PATCH = 16
# VideoMAE's fine-tuning default (run_class_finetuning.py --init_scale): a fresh head starts near zero, so the
# pretrained features are not scrambled by its first large gradients.
HEAD_INIT_SCALE = 1e-3


@dataclass(frozen=True)
class ViTSize:
    dim: int
    depth: int
    heads: int


SIZES = {"vit_tiny": ViTSize(192, 4, 3), "vit_s": ViTSize(384, 12, 6), "vit_b": ViTSize(768, 12, 12)}


def sinusoid_table(n: int, dim: int) -> Tensor:  # (1, n, dim) float32
    """VideoMAE's fixed position table (the Transformer's): position / 10000^(2 * (j // 2) / dim), sine on even
    channels, cosine on odd ones; computed in float64 as VideoMAE's numpy code is."""
    position = torch.arange(n, dtype=torch.float64)[:, None]
    exponent = 2 * (torch.arange(dim, dtype=torch.float64) // 2) / dim
    angle = position / torch.pow(10000.0, exponent)
    table = torch.where(torch.arange(dim) % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.to(torch.float32)[None]


class PatchEmbed(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(3, dim, kernel_size=(TUBELET, PATCH, PATCH), stride=(TUBELET, PATCH, PATCH))

    def forward(self, video: Tensor) -> Tensor:  # (B, 3, T, H, W) -> (B, T/2 * H/16 * W/16, dim), (t, h, w) order
        _, _, t, h, w = video.shape
        if t % TUBELET or h % PATCH or w % PATCH:
            raise ValueError(f"ViT input (T={t}, H={h}, W={w}): T must be a multiple of {TUBELET} and H, W of "
                             f"{PATCH} (tubelets of {TUBELET}x{PATCH}x{PATCH}); set data.num_frames / "
                             "augment.crop_size to fit")
        return self.proj(video).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """VideoMAE's attention: one qkv projection without bias, separate q and v biases (k has none)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        q, k, v = F.linear(x, self.qkv.weight, bias).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        # The fused kernel (flash / memory-efficient on GPU) computes softmax(q k^T / sqrt(d)) v as VideoMAE does.
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VideoViT(nn.Module):
    """(B, 3, T, H, W) -> logits (B, num_classes); any T, H, W that the tubelets tile (see PatchEmbed)."""

    def __init__(self, size: ViTSize, *, num_classes: int, dropout: float = 0.0, tokens: int = 0) -> None:
        super().__init__()
        self.dim = size.dim
        self.patch_embed = PatchEmbed(size.dim)
        # Not in the state dict (VideoMAE's checkpoints have no pos_embed key); kept for the registered input size
        # (`tokens`) and rebuilt for any other.
        self.register_buffer("pos_embed", sinusoid_table(tokens, size.dim), persistent=False)
        self.blocks = nn.ModuleList(Block(size.dim, size.heads) for _ in range(size.depth))
        self.fc_norm = nn.LayerNorm(size.dim, eps=1e-6)
        self.fc_dropout = nn.Dropout(dropout)
        self.head = nn.Linear(size.dim, num_classes)
        self.apply(_init_weights)
        with torch.no_grad():
            self.head.weight.mul_(HEAD_INIT_SCALE)

    def _position(self, n: int) -> Tensor:
        return self.pos_embed if self.pos_embed.shape[1] == n else sinusoid_table(n, self.dim).to(self.pos_embed)

    def tokens(self, video: Tensor, visible: Tensor | None = None) -> Tensor:
        """Features of the tubes (B, N, dim) after the last block, in (t, h, w) order; with `visible` (bool
        (B, N), the same count of True per clip), only the visible tubes are encoded and returned (B, N_visible,
        dim), as VideoMAE's pretraining encoder does."""
        x = self.patch_embed(video)
        x = x + self._position(x.shape[1]).to(x.dtype)
        if visible is not None:
            x = x[_checked_mask(visible, x.shape[:2])].view(x.shape[0], -1, x.shape[2])
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, video: Tensor, visible: Tensor | None = None, *, pool: bool = True) -> Tensor:
        """Logits (B, num_classes); `pool=False`: the tokens(video, visible) instead, reached through forward so
        that the model's input hooks (the published weights' normalisation) apply, as in masked pretraining."""
        tokens = self.tokens(video, visible)
        if not pool:
            return tokens
        return self.head(self.fc_dropout(self.fc_norm(tokens.mean(dim=1))))


def _checked_mask(visible: Tensor, shape: torch.Size) -> Tensor:
    if visible.dtype != torch.bool or tuple(visible.shape) != tuple(shape):
        raise ValueError(f"visible must be a bool tensor of shape (B, N) = {tuple(shape)}, got "
                         f"{tuple(visible.shape)} {visible.dtype}")
    counts = visible.sum(dim=1)
    if bool((counts != counts[0]).any()) or int(counts[0]) == 0:
        raise ValueError(f"visible: every clip needs the same number (>= 1) of visible tubes, got {counts.tolist()}")
    return visible


def _init_weights(module: nn.Module) -> None:
    # VideoMAE's _init_weights: truncated normal linears, zero biases, unit LayerNorms.
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# --- Hugging Face transformers' layout -------------------------------------------------------------

_HF_LAYER = re.compile(r"^(?:videomae\.)?encoder\.layer\.(\d+)\.(.+)$")
_HF_RENAMES = {
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
}
_HF_TOP = {
    "embeddings.patch_embeddings.projection": "patch_embed.proj",
    "fc_norm": "fc_norm",
    "classifier": "head",
    "layernorm": "norm",  # VideoMAEModel without mean pooling: no counterpart here, reported as unexpected
}


def is_transformers_layout(state_dict: Mapping[str, Tensor]) -> bool:
    """Keys of transformers' VideoMAE (VideoMAEForVideoClassification, VideoMAEModel, VideoMAEForPreTraining)."""
    return any(_HF_LAYER.match(k) and ".attention.attention." in k for k in state_dict)


def transformers_to_official(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """transformers' VideoMAE keys -> VideoMAE's official ones: query / key / value weights join into qkv, the
    query and value biases become q_bias / v_bias (their key has none). Keys without a counterpart (the
    pretraining decoder) are kept under their own names, so the loader reports them as unexpected."""
    out: dict[str, Tensor] = {}
    qkv: dict[str, dict[str, Tensor]] = {}
    for key, value in state_dict.items():
        layer = _HF_LAYER.match(key)
        if layer is None:
            plain = key.removeprefix("videomae.")
            module, _, param = plain.rpartition(".")
            out[f"{_HF_TOP[module]}.{param}" if module in _HF_TOP else key] = value
            continue
        i, rest = layer.groups()
        attention = re.fullmatch(r"attention\.attention\.(query|key|value)\.(weight|bias)", rest)
        if attention:
            qkv.setdefault(i, {})[".".join(attention.groups())] = value
            continue
        saved_bias = re.fullmatch(r"attention\.attention\.(q_bias|v_bias)", rest)
        if saved_bias:  # the files on the Hub (and save_pretrained's) keep the biases as the official q_bias / v_bias
            out[f"blocks.{i}.attn.{saved_bias[1]}"] = value
            continue
        module, _, param = rest.rpartition(".")
        out[f"blocks.{i}.{_HF_RENAMES.get(module, module)}.{param}"] = value
    for i, parts in qkv.items():
        weights = [parts.get(f"{p}.weight") for p in ("query", "key", "value")]
        if all(w is not None for w in weights):
            out[f"blocks.{i}.attn.qkv.weight"] = torch.cat(weights)  # type: ignore[arg-type]
        for hf, official in (("query.bias", "q_bias"), ("value.bias", "v_bias")):
            if hf in parts:
                out[f"blocks.{i}.attn.{official}"] = parts[hf]
    return out


# --- registry entries --------------------------------------------------------------------------------

_VIDEOMAE_WEIGHTS = ("VideoMAE's releases (github.com/MCG-NJU/VideoMAE, MODEL_ZOO.md: Kinetics-400, SSv2, UCF101; "
                     "official layout) or Hugging Face MCG-NJU/videomae-{size}-finetuned-kinetics (transformers "
                     "layout); a local file in either layout")


def _videomae_spec(size: str) -> InputSpec:
    # VideoMAE's Kinetics fine-tuning: 16 frames at sampling rate 4, short side 224, crop 224, ImageNet statistics.
    return InputSpec(frames=16, stride=4, crop=224, resize=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                     min_frames=TUBELET, min_side=PATCH, multiple=(TUBELET, PATCH),
                     weights=_VIDEOMAE_WEIGHTS.format(size=size))


def _builder(name: str, frames: int, crop: int):  # noqa: ANN202  (a ModelBuilder)
    def build(*, num_classes: int, width: float = 1.0, dropout: float = 0.0) -> nn.Module:
        if width != 1.0:
            raise ValueError(f"{name} supports width 1 only, got {width}")
        tokens = frames // TUBELET * (crop // PATCH) ** 2
        return VideoViT(SIZES[name], num_classes=num_classes, dropout=dropout, tokens=tokens)

    return build


# No published weights: vidssl's CPU clip defaults (data.num_frames 8, stride 2, size 72, crop 64) and statistics.
_TINY = InputSpec(frames=8, stride=2, crop=64, resize=72, mean=MEAN, std=STD, min_frames=TUBELET, min_side=PATCH,
                  multiple=(TUBELET, PATCH), weights="none published (random init)")
register_model("vit_tiny", "VideoMAE-layout ViT, dim 192, depth 4, 3 heads: for CPU runs (8 x 64 px clips)",
               inputs=_TINY, width_scalable=False)(_builder("vit_tiny", 8, 64))
register_model("vit_s", "VideoMAE ViT-S/16 (dim 384, depth 12, 6 heads), joint space-time attention",
               inputs=_videomae_spec("small"), width_scalable=False)(_builder("vit_s", 16, 224))
register_model("vit_b", "VideoMAE ViT-B/16 (dim 768, depth 12, 12 heads), joint space-time attention",
               inputs=_videomae_spec("base"), width_scalable=False)(_builder("vit_b", 16, 224))
