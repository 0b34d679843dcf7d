"""Masked video pretraining (VideoMAE: Tong et al., NeurIPS 2022, "VideoMAE: Masked Autoencoders are
Data-Efficient Learners for Self-Supervised Video Pre-Training"), `pretrain.objective: videomae`.

    clip (B, 3, T, H, W) -> tubes of 2 x 16 x 16 pixels on a t x h x w grid, in the ViT's (t, h, w) token order
    -> tube mask: int(mask_ratio * h * w) random spatial positions per clip, masked at every temporal position
       (a moving object cannot be copied from the next frame)
    -> ViT encoder (model.primary) on the visible tubes only -> LayerNorm -> Linear to the decoder width
    -> + fixed sine-cosine positions; a learned mask token + its position at every masked place
    -> decoder_depth transformer blocks -> LayerNorm -> Linear -> the 2 x 16 x 16 x 3 pixels of each masked tube
    loss = MSE(prediction, target) over the masked tubes only; target: each tube's pixels with every colour channel
           standardised over the tube's 2 x 16 x 16 values (VideoMAE's normlize_target)

The encoder is model.primary's classifier itself (ssl_core/models/vit.py), its head kept aside
(ssl_core/pretrain/backbone.py): the checkpoint's classifier is what model.init loads into a ViT classifier.
The encoder's pretraining LayerNorm lives in the decoder and is dropped with it, and the classifier's fc_norm
(it normalises the pooled features, which no decoder sees) stays frozen at its init, as VideoMAE fine-tunes a
fresh fc_norm; frozen, it also leaves no parameter without a gradient under DDP.

    python -c "import torch; from ssl_core.pretrain.videomae import tube_mask; print(tube_mask(1, (2, 2, 2), 0.5))"
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_core.models.vit import PATCH, TUBELET, Block, VideoViT, sinusoid_table
from ssl_core.pretrain.backbone import HeadAside
from ssl_core.pretrain.config import PretrainConfig, decoder_shape

TUBE_PIXELS = TUBELET * PATCH * PATCH  # pixels per tube and channel
# VideoMAE's normlize_target: added to the standard deviation, so a flat tube's target is 0, not NaN.
NORM_EPS = 1e-6


def token_grid(shape: torch.Size | tuple[int, ...]) -> tuple[int, int, int]:
    """(B, 3, T, H, W) -> the tube grid (T / 2, H / 16, W / 16)."""
    t, h, w = shape[-3:]
    if t % TUBELET or h % PATCH or w % PATCH:
        raise ValueError(f"clips (T={t}, H={h}, W={w}) do not tile into {TUBELET}x{PATCH}x{PATCH} tubes")
    return t // TUBELET, h // PATCH, w // PATCH


def masked_per_frame(patches: int, ratio: float) -> int:
    """Masked spatial positions of a clip: int(ratio x patches), VideoMAE's TubeMaskingGenerator count."""
    return int(ratio * patches)


def tube_mask(batch: int, grid: tuple[int, int, int], ratio: float, generator: torch.Generator | None = None
              ) -> Tensor:  # (batch, t * h * w) bool, True = masked, on the CPU
    """Per clip, masked_per_frame(h * w, ratio) spatial positions drawn at random, masked at every one of the t
    temporal positions; in the ViT's (t, h, w) token order."""
    t, h, w = grid
    order = torch.rand(batch, h * w, generator=generator).argsort(dim=1)
    spatial = torch.zeros(batch, h * w, dtype=torch.bool)
    spatial.scatter_(1, order[:, : masked_per_frame(h * w, ratio)], True)
    return spatial.repeat(1, t)  # the spatial mask once per temporal position: (t, h, w) order


def tube_targets(video: Tensor, normalise: bool = True) -> Tensor:  # (B, 3, T, H, W) -> (B, N, 2*16*16*3) float32
    """Every tube's pixels in (frame, row, column, channel) order, with `normalise` each channel standardised over
    the tube (unbiased variance, as VideoMAE): a per-channel affine map of the clip leaves them unchanged, so the
    clip's input normalisation does not matter; without, the clip's values as given."""
    b, c = video.shape[:2]
    t, h, w = token_grid(video.shape)
    x = video.float().reshape(b, c, t, TUBELET, h, PATCH, w, PATCH)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(b, t * h * w, TUBE_PIXELS, c)
    if normalise:
        x = (x - x.mean(dim=2, keepdim=True)) / (x.var(dim=2, keepdim=True).sqrt() + NORM_EPS)
    return x.flatten(2)


def reconstruction_loss(prediction: Tensor, video: Tensor, masked: Tensor, normalise: bool = True) -> Tensor:
    """MSE of prediction (B, N_masked, 2 * 16 * 16 * 3), the masked tubes in token order, against their
    tube_targets; visible tubes do not count."""
    target = tube_targets(video, normalise)[masked.to(video.device)].view(prediction.shape)
    return F.mse_loss(prediction.float(), target)


class MaskedDecoder(nn.Module):
    """VideoMAE's pretraining head: the encoder's LayerNorm, encoder_to_decoder, mask token, fixed positions,
    transformer blocks, LayerNorm, pixel regression. Dropped after pretraining."""

    def __init__(self, encoder_dim: int, dim: int, depth: int, heads: int, tokens: int) -> None:
        super().__init__()
        self.encoder_norm = nn.LayerNorm(encoder_dim, eps=1e-6)
        self.encoder_to_decoder = nn.Linear(encoder_dim, dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        # Fixed, so not saved; the table for the run's clip size, rebuilt for another.
        self.register_buffer("pos_embed", sinusoid_table(tokens, dim), persistent=False)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, TUBE_PIXELS * 3)
        self.apply(_xavier_init)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, visible_tokens: Tensor, masked: Tensor) -> Tensor:
        """visible_tokens (B, N_visible, encoder_dim), masked (B, N) bool -> (B, N_masked, 2 * 16 * 16 * 3)."""
        b, n = masked.shape
        x = self.encoder_to_decoder(self.encoder_norm(visible_tokens))
        table = self.pos_embed if self.pos_embed.shape[1] == n else sinusoid_table(n, x.shape[2]).to(self.pos_embed)
        pos = table.to(x.dtype).expand(b, -1, -1)
        pos_visible = pos[~masked].view(b, -1, x.shape[2])
        pos_masked = pos[masked].view(b, -1, x.shape[2])
        x = torch.cat([x + pos_visible, self.mask_token.to(x.dtype) + pos_masked], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, -pos_masked.shape[1]:]))


def _xavier_init(module: nn.Module) -> None:
    # VideoMAE's pretraining model (modeling_pretrain.py): xavier-uniform linears, zero biases, unit LayerNorms.
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class MaskedVideoNet(HeadAside):
    """The videomae network (what DDP wraps): the headless ViT classifier as encoder, and the decoder."""

    def __init__(self, classifier: nn.Module, p: PretrainConfig, *, frames: int, crop: int) -> None:
        if not isinstance(classifier, VideoViT):
            raise ValueError(f"videomae pretrains a ViT (vit_tiny, vit_s, vit_b), not {type(classifier).__name__}")
        super().__init__(classifier)
        self.encoder = classifier
        for param in classifier.fc_norm.parameters():
            param.requires_grad_(False)
        dim, heads = decoder_shape(p, classifier.dim)
        t, h, w = token_grid((frames, crop, crop))
        self.decoder = MaskedDecoder(classifier.dim, dim, p.decoder_depth, heads, t * h * w)

    def forward(self, video: Tensor, masked: Tensor) -> Tensor:
        """video (N, 3, T, H, W), masked (N, tubes) bool -> predicted pixels (N, N_masked, 2 * 16 * 16 * 3)."""
        return self.decoder(self.encoder(video, ~masked, pool=False), masked)

    @property
    def backbone(self) -> nn.Module:
        return self.encoder

    def objective_state_dict(self) -> dict[str, Any]:
        return {"decoder": self.decoder.state_dict()}

    def load_objective_state_dict(self, state: Mapping[str, Any]) -> None:
        self.decoder.load_state_dict(state["decoder"])


def masked_reconstruction(net: nn.Module, video: Tensor, ratio: float, normalise: bool = True
                          ) -> tuple[Tensor, dict[str, Tensor]]:
    """The videomae loss of a clip batch (N, 3, T, H, W) through `net` (a MaskedVideoNet, possibly DDP-wrapped):
    a fresh tube mask per clip (torch's CPU generator, so a restored RNG state replays it), the masked tubes'
    reconstruction error, and the fraction of tubes masked."""
    masked = tube_mask(len(video), token_grid(video.shape), ratio).to(video.device)
    loss = reconstruction_loss(net(video, masked), video, masked, normalise)
    metrics = {"loss/reconstruction": loss.detach(), "loss/total": loss.detach(),
               "pretrain/mask_ratio": masked.float().mean()}
    return loss, metrics
