"""What every pretraining network shares: model.primary's classifier with its last Linear kept aside.

The classifier's own last Linear (`fc` for small3d / r3d_18, `blocks.5.proj` for r3d_50, `head` for the ViTs) is
replaced by nn.Identity, so the classifier returns its features, and kept at its fresh init as a plain state dict
(not trained, not wrapped by DDP). A checkpoint holds the full classifier's state dict (the trained backbone plus
that head), so model.init, workflows.evaluate and model_from_state read it like any vidssl checkpoint; its meta
names the head `untrained_head` and model.init leaves a training run's classifier at its own fresh init.

    python -c "from ssl_core.models import build_model; from ssl_core.pretrain.config import PretrainConfig; \
from ssl_core.pretrain.step import PretrainNet; \
print(PretrainNet(build_model('small3d', num_classes=5), PretrainConfig()).head_name)"
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ssl_core.models.heads import head_prefix


class HeadAside(nn.Module, ABC):
    """Base of the pretraining networks (what DDP wraps). Subclasses hold the headless classifier as a submodule
    and name it in `backbone` (features (N, feature_dim) of a clip batch: the k-NN monitor's), and give the state
    of what else they train (`objective_state_dict`: the projector, a decoder) for the pretraining checkpoint."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        head = head_prefix(classifier)
        if head is None:
            raise ValueError(f"{type(classifier).__name__} has no nn.Linear classifier to take features before")
        linear = classifier.get_submodule(head)
        assert isinstance(linear, nn.Linear)
        self.head_name = head
        self.feature_dim = linear.in_features
        self.num_classes = linear.out_features
        # A plain attribute, not a submodule: not trained, not wrapped by DDP, saved with the backbone.
        self.head_state = {f"{head}.{k}": v.detach().cpu().clone() for k, v in linear.state_dict().items()}
        classifier.set_submodule(head, nn.Identity())

    @property
    @abstractmethod
    def backbone(self) -> nn.Module: ...

    def classifier_state_dict(self) -> dict[str, Tensor]:
        """The full classifier's state dict: the trained backbone plus the untouched head."""
        state = {k: v.detach().cpu().clone() for k, v in self.backbone.state_dict().items()}
        state.update(self.head_state)
        return state

    def load_classifier_state_dict(self, state: Mapping[str, Tensor]) -> None:
        prefix = f"{self.head_name}."
        self.head_state = {k: v.detach().cpu().clone() for k, v in state.items() if k.startswith(prefix)}
        self.backbone.load_state_dict({k: v for k, v in state.items() if not k.startswith(prefix)})

    @abstractmethod
    def objective_state_dict(self) -> dict[str, Any]: ...

    @abstractmethod
    def load_objective_state_dict(self, state: Mapping[str, Any]) -> None: ...
