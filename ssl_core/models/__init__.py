"""Model registry; importing this package registers small3d, r3d_18 and r3d_50."""

from ssl_core.models import resnet3d, small3d  # noqa: F401  (imported for their registrations)
from ssl_core.models.registry import build_model, list_models, parse_model_name, register_model

__all__ = ["build_model", "list_models", "parse_model_name", "register_model"]
