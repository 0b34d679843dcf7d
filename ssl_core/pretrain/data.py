"""One pretraining sample: rho clips of the same video at independent random times (+ pretext labels).

Shared by the Ray Data decode tasks (workflows/runtime/pretrain_streams.py) and the Ray-free loop
(ssl_core.pretrain.local), so both see the same clips for the same row seed. No torch here: the decode tasks import it.

Pretext labels (pretrain.pretext), one per clip, drawn from the row seed:
  speed: 1 = the clip was taken at twice data.stride (played 2x faster), 0 = at data.stride;
  arrow: 1 = the clip's frames are reversed in time, 0 = forwards;
  none:  all 0.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class ClipReader(Protocol):
    def decode_clip(self, path: str, *, num_frames: int, stride: int, size: int,
                    rng: np.random.Generator | None = None, **kwargs: Any) -> np.ndarray: ...


def pretext_labels(seed: int, rho: int, pretext: str) -> np.ndarray:
    """(rho,) int64 labels of the pretext task for a row seed (zeros without a task)."""
    if pretext == "none":
        return np.zeros(rho, dtype=np.int64)
    return np.random.default_rng([int(seed), 7919]).integers(0, 2, size=rho).astype(np.int64)


def decode_views(
    reader: ClipReader,  # ssl_core.data.decode (module), a ClipCache, or the torchcodec backend
    path: str,
    seed: int,
    *,
    rho: int,
    num_frames: int,
    stride: int,
    size: int,
    pretext: str = "none",
    **decode_opts: Any,  # timeout_s, max_pixels, threads
) -> tuple[np.ndarray, np.ndarray]:  # (rho, T, size, size, 3) uint8, (rho,) int64
    """rho clips of `path`, each at its own random start (rng seeded by (seed, i)), and their pretext labels.
    Raises the backend's DecodeError for an unreadable video."""
    labels = pretext_labels(seed, rho, pretext)
    clips = []
    for i in range(rho):
        clip_stride = stride * 2 if pretext == "speed" and labels[i] else stride
        clip = reader.decode_clip(path, num_frames=num_frames, stride=clip_stride, size=size,
                                  rng=np.random.default_rng([int(seed), i]), **decode_opts)
        if pretext == "arrow" and labels[i]:
            clip = clip[::-1]
        clips.append(np.ascontiguousarray(clip))
    return np.stack(clips), labels
