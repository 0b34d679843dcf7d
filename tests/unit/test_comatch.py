"""Tests for comatch: the graph-contrastive loss, the memory smoothing, the head-input embeddings, one step.

Expected values are worked out here with math.exp / math.log on explicit numbers, never by calling the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from ssl_core.algorithms import get_algorithm
from ssl_core.algorithms.comatch import EmbeddingMemory, graph_contrast
from ssl_core.config import load_config
from ssl_core.models import build_model
from ssl_core.models.heads import head_inputs
from tests.unit.handmade import ce

COMATCH = get_algorithm("comatch")


def test_graph_contrast_targets_the_rows_of_the_thresholded_pseudo_label_graph() -> None:
    # Clips 0 and 1 agree (q0 . q1 = 0.9 * 0.8 + 0.1 * 0.2 = 0.74 >= 0.7), clip 2 agrees with neither.
    q = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.0, 1.0]], dtype=torch.float64)
    z_strong = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=torch.float64)
    z_weak = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.8, 0.6]], dtype=torch.float64)
    t = 0.5
    sims = [[sum(a * b for a, b in zip(s, w, strict=True)) / t for w in z_weak.tolist()] for s in z_strong.tolist()]
    log_p = [[v - math.log(sum(math.exp(u) for u in row)) for v in row] for row in sims]
    # Row targets: clip 0 -> (1, 0.74) / 1.74, clip 1 -> (0.74, 1) / 1.74, clip 2 -> itself alone.
    expected = -(
        (log_p[0][0] + 0.74 * log_p[0][1]) / 1.74 + (0.74 * log_p[1][0] + log_p[1][1]) / 1.74 + log_p[2][2]
    ) / 3
    assert graph_contrast(q, z_strong, z_weak, 0.7, t).item() == pytest.approx(expected, rel=1e-9)


def test_graph_contrast_is_plain_instance_contrast_when_no_pseudo_labels_agree() -> None:
    q = torch.eye(3, dtype=torch.float64)
    z = torch.eye(3, dtype=torch.float64)
    t = 0.1
    # Each strong view's own weak view at similarity 1, the others at 0.
    expected = -(1 / t - math.log(math.exp(1 / t) + 2))
    assert graph_contrast(q, z, z, 0.8, t).item() == pytest.approx(expected, rel=1e-9)


def test_memory_smoothing_mixes_in_the_neighbours_targets_by_embedding_similarity() -> None:
    memory = EmbeddingMemory(size=3)
    probs = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    z = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    assert torch.equal(memory.smooth(probs, z, 0.9, 0.2), probs)  # empty: the prediction itself
    memory.push(torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64),
                torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64))
    near, far = math.exp(1 / 0.2), math.exp(0.0)
    a = near / (near + far)
    expected = [0.9 * 0.5 + 0.1 * a, 0.9 * 0.5 + 0.1 * (1 - a)]
    assert memory.smooth(probs, z, 0.9, 0.2)[0].tolist() == pytest.approx(expected, rel=1e-9)


def test_memory_keeps_the_newest_entries() -> None:
    memory = EmbeddingMemory(size=3)
    for value in (1.0, 2.0):
        memory.push(torch.full((2, 1), value), torch.full((2, 1), value))
    assert memory.z is not None and memory.p is not None
    assert memory.z.flatten().tolist() == [2.0, 2.0, 1.0]
    assert memory.p.flatten().tolist() == [2.0, 2.0, 1.0]


def test_head_inputs_are_the_features_the_classifier_reads() -> None:
    torch.manual_seed(0)
    model = build_model("frame2d", num_classes=4).eval()
    video = torch.randn(2, 3, 4, 32, 32)
    with head_inputs(model) as seen:
        logits = model(video)
    assert len(seen) == 1 and seen[0].shape == (2, model.fc.in_features)
    assert torch.allclose(model.fc(seen[0]), logits)
    model(video)
    assert len(seen) == 1  # the hook is gone after the block


class MeanLinear(nn.Module):
    """Logits = fc(each channel's mean over the clip): the head input is that mean, known without the model."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2, bias=False, dtype=torch.float64)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]]))

    def forward(self, video: Tensor) -> Tensor:
        return self.fc(video.mean(dim=(2, 3, 4)))


def clips(*channel_values: list[float]) -> Tensor:  # (B, 3, 2, 2, 2), each channel constant over the clip
    return torch.tensor(channel_values, dtype=torch.float64).view(-1, 3, 1, 1, 1).expand(-1, 3, 2, 2, 2).clone()


def test_one_step_adds_the_class_and_contrast_terms_and_remembers_weak_and_labeled_clips() -> None:
    algo = COMATCH({"primary": MeanLinear()}, COMATCH.Params(tau=0.8, lambda_c=0.5, contrast_threshold=0.99))
    labeled = {"video": clips([1.0, 0.0, 0.0]), "label": torch.tensor([0])}
    weak = clips([2.0, 0.0, 0.0], [0.0, 0.1, 0.0])  # confident class 0 (p = 1 / (1 + e^-4)); unsure
    strong = clips([0.0, 1.0, 0.0], [1.0, 0.0, 0.0])
    out = algo.train_step(labeled, {"weak": weak, "strong": strong})
    sup = ce([2.0, 0.0], 0)
    unsup = ce([0.0, 2.0], 0) / 2  # only the first clip passes tau; divided by the whole batch
    # Embeddings: the normalised channel means; q of the two clips is far from agreeing (< 0.99): instance contrast.
    z_s, z_w = [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    t = 0.2
    rows = [[sum(a * b for a, b in zip(s, w, strict=True)) / t for w in z_w] for s in z_s]
    contrast = -sum(row[i] - math.log(sum(math.exp(v) for v in row)) for i, row in enumerate(rows)) / 2
    assert out.loss.item() == pytest.approx(sup + unsup + 0.5 * contrast, rel=1e-6)  # embeddings in float32
    assert out.metrics["pseudo/mask_rate_primary"].item() == 0.5
    assert algo.memory.z is not None and algo.memory.p is not None
    assert algo.memory.z.shape == (3, 3)  # two weak views + the labeled clip
    assert algo.memory.p[2].tolist() == [1.0, 0.0]  # the labeled clip's one-hot label


def test_comatch_trains_from_a_config() -> None:
    cfg = load_config(None, ["algorithm.name=comatch", "algorithm.comatch.lambda_c=2", "model.primary=frame2d"])
    params = cfg.algorithm.resolved_params()
    assert params.lambda_c == 2.0
    model = build_model("frame2d", num_classes=3)
    algo = COMATCH({"primary": model}, params)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    labeled = {"video": torch.randn(3, 3, 2, 16, 16), "label": torch.tensor([0, 1, 2])}
    unlabeled = {"weak": torch.randn(4, 3, 2, 16, 16), "strong": torch.randn(4, 3, 2, 16, 16)}
    before = [p.detach().clone() for p in model.parameters()]
    out = algo.train_step(labeled, unlabeled)
    out.loss.backward()
    opt.step()
    assert math.isfinite(out.loss.item())
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
