"""Temporal warping augmentation (TWAug, SVFormer, Xing et al. CVPR 2023): a few keyframes of a clip are stretched
over the whole clip, each held for a random duration, so the model sees an action at uneven speeds.

Per clip, as the authors' released code draws it: with probability 1/3 each, 2 or 4 keyframes (or none: the clip is
left as it is) are chosen among the T frames, kept in order; frames before the first keyframe show the first, frames
after the last show the last, and between two keyframes s < e a random cut c in (s, e] splits the gap: frames s..c-1
show s, frames c..e-1 show e. (The released code draws c in [s, e], which can drop keyframe s altogether; here every
keyframe keeps at least its own frame.) The warp is a gather along T of the already augmented view: no pixel is
resampled, so it applies equally to views made on the training device and on the data workers.

Try it:
    python -c "import torch; from ssl_core.algorithms.temporal_warp import warp_indices; \
print(warp_indices(8, 2), warp_indices(8, 4))"
"""

from __future__ import annotations

import torch
from torch import Tensor

KEYFRAME_CHOICES = (0, 2, 4)  # 0: no warp; each drawn with probability 1/3 (the released code's choice)


def warp_indices(num_frames: int, keyframes: int, generator: torch.Generator | None = None) -> Tensor:  # (T,) int64
    """The source frame of each output frame: `keyframes` frames chosen at random, each held until a random cut
    between it and the next; the identity when keyframes is 0 or covers every frame."""
    if keyframes <= 0 or keyframes >= num_frames:
        return torch.arange(num_frames)
    keys = torch.randperm(num_frames, generator=generator)[:keyframes].sort().values.tolist()
    index = [keys[0]] * keys[0]  # the frames before the first keyframe show it
    for start, end in zip(keys[:-1], keys[1:], strict=True):
        cut = int(torch.randint(start + 1, end + 1, (1,), generator=generator))
        index += [start] * (cut - start) + [end] * (end - cut)
    index += [keys[-1]] * (num_frames - keys[-1])
    return torch.tensor(index)


def temporal_warp(video: Tensor, generator: torch.Generator | None = None) -> Tensor:  # (B, C, T, H, W), same
    """Each clip warped on its own draw (KEYFRAME_CHOICES), in the input's memory format."""
    b, _, t = video.shape[:3]
    choices = torch.randint(len(KEYFRAME_CHOICES), (b,), generator=generator).tolist()
    index = torch.stack([warp_indices(t, KEYFRAME_CHOICES[c], generator) for c in choices]).to(video.device)
    out = torch.empty_like(video)  # keeps the layout the pipeline chose (channels_last_3d or not)
    out.copy_(video.transpose(1, 2)[torch.arange(b, device=video.device)[:, None], index].transpose(1, 2))
    return out
