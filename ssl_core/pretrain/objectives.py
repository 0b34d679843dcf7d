"""Self-supervised objectives: InfoNCE with a momentum encoder and a queue (rho-MoCo), SimCLR's NT-Xent.

    InfoNCE  L = -log exp(q.k+ / T) / (exp(q.k+ / T) + sum_neg exp(q.k- / T))      (q, k L2-normalised)

rho-MoCo (Feichtenhofer et al. 2021, "A Large-Scale Study on Unsupervised Spatiotemporal Representation
Learning"): every one of the rho clips of a video is a query (query encoder) and a key (momentum encoder);
each ordered pair (i, j), i != j, is one InfoNCE term with the queue's keys as negatives, averaged. One key per
video (its first clip's) enters the queue. SimCLR: one encoder, every other clip of the batch is a negative.

Under DDP the new keys are all-gathered before they are enqueued, so every worker holds the same queue.

    python -c "import torch; from ssl_core.pretrain.objectives import info_nce; \
q = torch.nn.functional.normalize(torch.randn(4, 8), dim=1); \
print(info_nce(q, q, torch.nn.functional.normalize(torch.randn(16, 8), dim=1), 0.1)[0])"
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def info_nce(q: Tensor, k: Tensor, negatives: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Mean InfoNCE of queries q (B, D) against their positive keys k (B, D) and shared negatives (K, D), all
    L2-normalised; returns (loss, logits (B, 1 + K) with the positive in column 0)."""
    positive = (q * k).sum(dim=1, keepdim=True)
    logits = torch.cat([positive, q @ negatives.T], dim=1) / temperature
    target = torch.zeros(len(q), dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, target), logits


def rho_info_nce(q: Tensor, k: Tensor, negatives: Tensor, temperature: float) -> tuple[Tensor, dict[str, Tensor]]:
    """rho-MoCo's loss: q, k (rho, B, D) normalised; the mean InfoNCE over the ordered clip pairs i != j (query i,
    positive key j: another clip of the same video). Metrics: instance accuracy (the positive outscores every
    negative), mean positive / negative similarity."""
    rho = q.shape[0]
    losses, hits, pos, neg = [], [], [], []
    for i in range(rho):
        for j in range(rho):
            if i == j:
                continue
            loss, logits = info_nce(q[i], k[j], negatives, temperature)
            losses.append(loss)
            hits.append((logits.argmax(dim=1) == 0).float().mean())
            pos.append(logits[:, 0].mean() * temperature)
            neg.append(logits[:, 1:].mean() * temperature)
    metrics = {"pretrain/instance_acc": torch.stack(hits).mean(), "pretrain/pos_sim": torch.stack(pos).mean(),
               "pretrain/neg_sim": torch.stack(neg).mean()}
    return torch.stack(losses).mean(), metrics


def nt_xent(z: Tensor, temperature: float) -> tuple[Tensor, dict[str, Tensor]]:
    """SimCLR's loss generalised to rho clips per video: z (rho, B, D) normalised. For every anchor and every
    other clip of its video, -log softmax over all other clips of the batch at that positive; averaged."""
    rho, b = z.shape[:2]
    flat = z.transpose(0, 1).reshape(b * rho, -1)  # video-major: rows v*rho .. v*rho + rho-1 are video v
    video = torch.arange(b, device=z.device).repeat_interleave(rho)
    sim = flat @ flat.T / temperature
    self_mask = torch.eye(b * rho, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, -math.inf)
    log_prob = sim.log_softmax(dim=1)
    positive = (video[:, None] == video[None, :]) & ~self_mask
    loss = -(log_prob[positive]).mean()
    masked = sim.masked_fill(positive, -math.inf)
    hardest_negative = masked.max(dim=1).values
    top_positive = sim.masked_fill(~positive, -math.inf).max(dim=1).values
    metrics = {"pretrain/instance_acc": (top_positive > hardest_negative).float().mean(),
               "pretrain/pos_sim": (sim[positive] * temperature).mean(),
               "pretrain/neg_sim": (sim[~positive & ~self_mask] * temperature).mean()}
    return loss, metrics


def momentum_at(step: int, total: int, base: float, anneal: bool) -> float:
    """The momentum encoder's m at `step` of `total`: `base`, or with `anneal` a half cosine from base (step 0)
    to 1 (step total): m = 1 - (1 - base) (cos(pi step / total) + 1) / 2 (BYOL, rho-MoCo)."""
    if not anneal:
        return base
    progress = min(max(step / max(total, 1), 0.0), 1.0)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


@torch.no_grad()
def momentum_update(online: nn.Module, target: nn.Module, m: float) -> None:
    """theta_target <- m theta_target + (1 - m) theta_online over the parameters (buffers stay the target's own:
    the key encoder runs in training mode, on its batches' statistics)."""
    for p_online, p_target in zip(online.parameters(), target.parameters(), strict=True):
        p_target.mul_(m).add_(p_online.detach(), alpha=1.0 - m)


def gather_keys(keys: Tensor) -> Tensor:
    """All workers' keys (rank order) when a process group is running (Ray Train's DDP); else keys."""
    if not (dist.is_available() and dist.is_initialized()):
        return keys
    keys = keys.contiguous()
    parts = [torch.empty_like(keys) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, keys)
    return torch.cat(parts)


class KeyQueue(nn.Module):
    """A FIFO ring of the last `size` keys (L2-normalised, dim D). Starts as random unit vectors, as MoCo's: the
    first steps then have negatives too. `enqueue` overwrites the oldest entries."""

    def __init__(self, size: int, dim: int, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"queue size and dim must be >= 1, got {size}, {dim}")
        self.register_buffer("keys", F.normalize(torch.randn(size, dim, generator=generator), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))  # real keys held (<= size)

    @property
    def size(self) -> int:
        return int(self.keys.shape[0])

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Append keys (N, D); when N > size only the newest `size` are kept."""
        keys = keys.detach().to(self.keys.dtype)[-self.size :]
        n, start = len(keys), int(self.ptr)
        index = (start + torch.arange(n, device=self.keys.device)) % self.size
        self.keys[index] = keys
        self.ptr.fill_((start + n) % self.size)
        self.filled.fill_(min(self.size, int(self.filled) + n))

    @torch.no_grad()
    def enqueue_gathered(self, keys: Tensor) -> Tensor:
        """Enqueue every worker's keys (all_gather under DDP: the same queue everywhere); returns what went in."""
        gathered = gather_keys(keys.detach())
        self.enqueue(gathered)
        return gathered

    def negatives(self) -> Tensor:
        """The queue as negatives (a copy: the loss keeps it for backward, enqueue writes in place)."""
        return self.keys.clone()


def projection_mlp(
    in_dim: int, hidden_dim: int, out_dim: int, layers: int, *, batch_norm: bool = True
) -> nn.Sequential:
    """`layers` Linear layers with [BatchNorm and] ReLU between them (SimCLR v2 / rho-MoCo / MoCo v3 heads).

    The BatchNorm matters where the backbone ends in ReLU + pooling (small3d, the ResNets): its features are
    all positive with a large shared mean (cosine ~0.94 between random clips at init), which a plain MLP passes
    on; every embedding then starts in one spot and the contrastive loss sits at its uniform value."""
    mods: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(dim, hidden_dim, bias=not batch_norm)]
        mods += [nn.BatchNorm1d(hidden_dim)] if batch_norm else []
        mods += [nn.ReLU(inplace=True)]
        dim = hidden_dim
    mods.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*mods)
