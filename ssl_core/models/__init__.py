"""Model registry; importing this package registers small3d, frame2d, r3d_18, r3d_50, the VideoMAE ViTs (vit.py),
torchvision's video classifiers (torchvision_video.py) and pytorchvideo's hub models (pytorchvideo_hub.py):
`vidssl list models`."""

from ssl_core.models import (  # noqa: F401  (imported for their registrations)
    frame2d,
    pytorchvideo_hub,
    resnet3d,
    small3d,
    torchvision_video,
    vit,
)
from ssl_core.models.registry import (
    InputSpec,
    build_model,
    list_models,
    model_inputs,
    parse_model_name,
    published_weights,
    register_model,
)

__all__ = ["InputSpec", "build_model", "list_models", "model_inputs", "parse_model_name", "published_weights",
           "register_model"]
