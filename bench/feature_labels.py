"""How well frozen features could label the unlabeled clips: k-NN, a linear probe and label spreading.

    python -m bench.feature_labels --config configs/demo.yaml --init <pretraining run folder> \
        --set data.root=data/class_sets/appearance6_val --set data.synthetic.enabled=false \
        --set model.primary=frame2d --fractions 0.05 0.1 --seeds 0 1 2

The features are what the classifier head reads (evaluation view, `data.eval_clips` averaged, L2-normalised), taken
once per video. For each labeled split (fraction x split seed) the labeled rows alone label the test rows by a
weighted k-NN vote and by a linear probe (the pretraining monitors), and label spreading (Zhou et al. 2004) carries
their labels over the k-NN graph of every train and test video: its top-1 on the unlabeled rows is what
pseudo-labels drawn from the feature graph could be worth before any fine-tuning. Prints one table row per split,
the means, and the k-NN vote's confusion matrix of the first split (rows: true class).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_core.config import Config, ConfigError, load_config
from ssl_core.data.clip_cache import cache_for_config
from ssl_core.data.decode import decode_eval_clips
from ssl_core.data.decode_base import DecodeError
from ssl_core.data.splits import prepare_data
from ssl_core.metrics import confusion_matrix
from ssl_core.models.heads import head_inputs
from ssl_core.models.init import InitError, load_init, read_init_source
from ssl_core.models.registry import build_model
from ssl_core.pretrain.knn import knn_accuracy, knn_scores, linear_probe, video_features


def label_spreading(features: Tensor, labels: Tensor, labeled: Tensor, num_classes: int, *, k: int = 10,
                    alpha: float = 0.9) -> Tensor:
    """Zhou et al. 2004 in closed form, F = (I - alpha S)^-1 Y over the symmetric k-NN graph of cosine similarities
    (S = D^-1/2 W D^-1/2); (N,) predicted class of every row. `labels` is read only where `labeled` is True."""
    sim = features @ features.T
    sim.fill_diagonal_(-float("inf"))
    top = sim.topk(min(k, len(features) - 1), dim=1)
    w = torch.zeros_like(sim).scatter_(1, top.indices, top.values.clamp_min(0))
    w = torch.maximum(w, w.T)
    d = w.sum(dim=1).clamp_min(1e-12).rsqrt()
    s = d[:, None] * w * d[None, :]
    y = torch.zeros(len(features), num_classes, dtype=features.dtype)
    y[labeled] = F.one_hot(labels[labeled], num_classes).to(features.dtype)
    return torch.linalg.solve(torch.eye(len(features), dtype=features.dtype) - alpha * s, y).argmax(dim=1)


@torch.no_grad()
def video_embeddings(cfg: Config, init: str, paths: Sequence[str], num_classes: int) -> Tensor:
    """(N, D) L2-normalised head inputs of `paths` for model.primary loaded from `init`."""
    model = build_model(cfg.model.primary, num_classes=num_classes)
    source = read_init_source(init, key="--init")
    print(load_init(model, source.state_dict, name="primary", source=source.description, key="--init").line())
    model.eval()
    d = cfg.data
    cache, _ = cache_for_config(cfg, paths, workers=1)
    read = cache.decode_eval_clips if cache is not None else decode_eval_clips

    def embed(video: Tensor) -> Tensor:
        with head_inputs(model) as seen:
            model(video)
        return seen[0]

    out = []
    for start in range(0, len(paths), 16):
        clips = np.stack([read(p, num_frames=d.num_frames, stride=d.stride, size=d.size, num_clips=d.eval_clips,
                               max_pixels=d.max_decode_pixels) for p in paths[start:start + 16]])
        out.append(video_features(embed, torch.from_numpy(clips), cfg.augment, torch.device("cpu")))
    return torch.cat(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--init", required=True, help="the weights, as model.init takes them (a run folder, ...)")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.1])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    if not all(0 < f < 1 for f in args.fractions):
        parser.error(f"--fractions must lie strictly between 0 and 1 (unlabeled rows are needed), got {args.fractions}")
    try:
        cfg = load_config(args.config, args.set)
        data = prepare_data(cfg, None)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    classes = list(data.manifest.classes)
    records = [*data.labeled, *data.unlabeled, *data.test]
    paths = sorted({r.path for r in records})
    try:
        feats = video_embeddings(cfg, args.init, paths, len(classes))
    except (InitError, DecodeError) as err:  # every video is scored, so one that cannot be read stops the table
        print(f"error: {err}", file=sys.stderr)
        return 2
    row_of = {p: i for i, p in enumerate(paths)}
    print("| fraction | split seed | labeled | k-NN test % | probe test % | spreading test % | spreading unlabeled % |")
    print("|---|---|---|---|---|---|---|")
    results, confusion = [], None
    for fraction in args.fractions:
        for seed in args.seeds:
            split = prepare_data(replace(cfg, data=replace(cfg.data, labeled_fraction=fraction, split_seed=seed)),
                                 None, needs_unlabeled=True)
            parts = [split.labeled, split.unlabeled, split.test]
            x = [feats[[row_of[r.path] for r in part]] for part in parts]
            y = [torch.tensor([r.label for r in part]) for part in parts]
            knn = knn_accuracy(x[0], y[0], x[2], y[2], len(classes))["knn/top1"]
            probe = linear_probe(x[0], y[0], x[2], y[2], len(classes))["probe/top1"]
            known = torch.zeros(sum(map(len, parts)), dtype=torch.bool)
            known[: len(parts[0])] = True
            spread = label_spreading(torch.cat(x), torch.cat(y), known, len(classes))
            n_lab, n_unl = len(parts[0]), len(parts[1])
            row = [knn, probe, (spread[n_lab + n_unl:] == y[2]).float().mean().item(),
                   (spread[n_lab:n_lab + n_unl] == y[1]).float().mean().item()]
            results.append(row)
            print(f"| {fraction:g} | {seed} | {n_lab} | " + " | ".join(f"{100 * v:.1f}" for v in row) + " |")
            if confusion is None:
                confusion = confusion_matrix(knn_scores(x[0], y[0], x[2], len(classes)).argmax(dim=1), y[2],
                                             len(classes))
    means = np.mean(results, axis=0)
    print("| mean | | | " + " | ".join(f"{100 * v:.1f}" for v in means) + " |")
    print("k-NN vote, first split, rows = true class:", ", ".join(classes))
    print(confusion)
    return 0


if __name__ == "__main__":
    sys.exit(main())
