"""Label-free-training monitors on frozen features: weighted k-NN (InstDisc / DINO) and a linear probe.

Features are the backbone's (the input of the classifier's last Linear), averaged over a video's evaluation
clips (centre crop) and L2-normalised. Labels are used here only, never in a pretraining loss.

k-NN (Wu et al. 2018; Caron et al. 2021): the k most cosine-similar memory-bank videos vote for their class
with weight exp(sim / T); the class with the largest summed weight wins.

    python -c "import torch; from ssl_core.pretrain.knn import knn_scores; \
bank = torch.eye(3); print(knn_scores(bank, torch.tensor([0, 1, 2]), torch.eye(3)[:2], 3, k=2).argmax(1))"
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_core.data.transforms import AugmentConfig, eval_view


@torch.no_grad()
def video_features(
    backbone: Callable[[Tensor], Tensor],  # video (N, 3, T, h, w) -> features (N, F)
    clips: Tensor,  # (B, C, T, H, W, 3) uint8: C evaluation clips per video
    aug: AugmentConfig,
    device: torch.device,
) -> Tensor:  # (B, F) float32, L2-normalised, on the CPU
    b, c = clips.shape[:2]
    video = eval_view(clips.flatten(0, 1).to(device), aug)
    feats = backbone(video).float().view(b, c, -1).mean(dim=1)
    return F.normalize(feats, dim=1).cpu()


def knn_scores(bank: Tensor, bank_labels: Tensor, queries: Tensor, num_classes: int, *, k: int = 20,
               temperature: float = 0.07) -> Tensor:
    """(M, num_classes) summed vote weights of the k nearest bank rows (cosine similarity of normalised
    features) for each query row; k is capped at the bank's size."""
    sim = queries @ bank.T  # (M, N)
    k = min(k, bank.shape[0])
    top_sim, top_idx = sim.topk(k, dim=1)
    weights = (top_sim / temperature).exp()
    votes = torch.zeros(queries.shape[0], num_classes, dtype=weights.dtype)
    votes.scatter_add_(1, bank_labels[top_idx], weights)
    return votes


def topk_accuracy(scores: Tensor, labels: Tensor, k: int) -> float:
    k = min(k, scores.shape[1])
    return float((scores.topk(k, dim=1).indices == labels[:, None]).any(dim=1).float().mean())


def knn_accuracy(bank: Tensor, bank_labels: Tensor, queries: Tensor, query_labels: Tensor, num_classes: int, *,
                 k: int = 20, temperature: float = 0.07) -> dict[str, float]:
    """{"knn/top1", "knn/top5"} of the weighted k-NN classifier."""
    scores = knn_scores(bank, bank_labels, queries, num_classes, k=k, temperature=temperature)
    return {"knn/top1": topk_accuracy(scores, query_labels, 1), "knn/top5": topk_accuracy(scores, query_labels, 5)}


def linear_probe(train: Tensor, train_labels: Tensor, test: Tensor, test_labels: Tensor, num_classes: int, *,
                 steps: int = 200, weight_decay: float = 1e-4) -> dict[str, float]:
    """Multinomial logistic regression on frozen features (standardised with the train rows' statistics),
    full-batch LBFGS for `steps` iterations; {"probe/top1", "probe/top5"} on the test rows."""
    mean = train.mean(dim=0)
    std = train.std(dim=0).clamp(min=1e-6) if len(train) > 1 else torch.ones(train.shape[1])
    x, xt = (train - mean) / std, (test - mean) / std
    torch.manual_seed(0)
    head = nn.Linear(x.shape[1], num_classes)
    optimizer = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(head(x), train_labels) + weight_decay * head.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        scores = head(xt)
    return {"probe/top1": topk_accuracy(scores, test_labels, 1), "probe/top5": topk_accuracy(scores, test_labels, 5)}
