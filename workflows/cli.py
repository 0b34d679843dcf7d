"""The `vidssl` command: one front door to the same code the `python -m workflows.*` modules run.

    vidssl synth --out data/synth --classes 8 --videos-per-class 30 --seed 0
    vidssl train --config configs/demo.yaml --set algorithm.name=fixmatch
    vidssl pretrain --config configs/pretrain_demo.yaml [--resume latest]
    vidssl sweep --config configs/sweep_demo.yaml [--dry-run] [--resume]
    vidssl evaluate --model models:/vidssl-sweep-demo-primary@champion --data data/synth_sweep/manifest.csv
    vidssl predict --model models:/vidssl-demo-primary/latest --videos data/synth --out predictions.parquet
    vidssl noisy-student --config configs/noisy_student_demo.yaml [--dry-run] [--resume]
    vidssl self-train --config configs/selftrain_appearance.yaml --set model.init=<pretraining run> [--dry-run]
    vidssl distill --teacher models:/vidssl-demo-primary/latest --student small3d_w0.25
    vidssl label-queue --model runs/<run> --videos configs/demo.yaml --budget 16 --out queue.csv
    vidssl reencode --config configs/prepare_demo.yaml [--dry-run] [--set prepare.short_side=96]
    vidssl list algorithms | vidssl list models
    vidssl config --explain [SECTION] [--markdown]     # the config keys: docs/config.md is this, as Markdown
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ssl_core.user_errors import reports_user_errors

# Subcommands that are whole workflows: `vidssl <name> ...` is `python -m workflows.<name> ...` (with - as _).
WORKFLOWS = {
    "train": "train one run",
    "pretrain": "self-supervised pretraining of a backbone on every train video (rho-MoCo / SimCLR, k-NN monitor)",
    "sweep": "Ray Tune sweep over tau, lambda and the labeled fraction",
    "evaluate": "multi-clip x multi-crop evaluation of a model, logged to MLflow",
    "predict": "batch prediction over videos into a Parquet file",
    "noisy-student": "Noisy Student rounds: teacher, pseudo-labeled sets, noised students",
    "self-train": "self-training on a pretrained backbone: a labels stage, then rounds on pseudo-labeled videos",
    "distill": "distil a model into a smaller student for deployment, with the trade-off table",
    "label-queue": "rank unlabeled videos for annotation (uncertainty, model disagreement)",
    "reencode": "re-encode a dataset into a training-friendly copy (short side, CFR, short GOP) with Ray Data",
}


def _synth(args: argparse.Namespace) -> int:
    # here: each subcommand imports only what it runs (PyAV here; torch for `list`), so `vidssl --help` is instant
    from ssl_core.data import synthetic

    start = time.perf_counter()
    manifest = synthetic.generate(
        Path(args.out), classes=args.classes, videos_per_class=args.videos_per_class, seed=args.seed,
        frames=args.frames, size=args.size,
    )
    print(f"wrote {manifest} ({args.classes} classes x {args.videos_per_class} videos) "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


def _list(args: argparse.Namespace) -> int:
    if args.what == "algorithms":
        from ssl_core.algorithms import list_algorithms  # here: as in _synth (torch)

        for name, description, params in list_algorithms():
            fields = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(params))
            print(f"{name:<14} {description}" + (f"\n{'':<14} params: {fields}" if fields else ""))
    else:
        from ssl_core.models import list_models, model_inputs, published_weights  # here: as in _synth (torch)

        for name, description in list_models():
            print(f"{name:<14} {description}")
            spec = model_inputs(name)
            if spec is None:
                print(f"{'':<14} input: the run's data.num_frames / stride / size, augment.crop_size; vidssl's "
                      "mean / std")
            else:
                stats = f"mean {_stats(spec.mean)}, std {_stats(spec.std)}"
                print(f"{'':<14} input: {spec.frames} frames, stride {spec.stride}, crop {spec.crop} (short side "
                      f"{spec.resize}), {stats}")
            print(f"{'':<14} weights: {published_weights(name)}")
    return 0


def _stats(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


def _config(args: argparse.Namespace) -> int:
    from workflows.config_reference import reference  # here: as in _synth (it imports every config section)

    sys.stdout.write(reference(args.explain or None, markdown=args.markdown))
    return 0


@reports_user_errors()
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in WORKFLOWS:
        module = importlib.import_module(f"workflows.{argv[0].replace('-', '_')}")
        return int(module.main(argv[1:]) or 0)
    parser = argparse.ArgumentParser(prog="vidssl", description="Semi-supervised video action recognition.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, what in WORKFLOWS.items():
        sub.add_parser(name, help=f"{what} (see: vidssl {name} --help)")
    synth = sub.add_parser("synth", help="write the synthetic action dataset (real mp4 files)")
    synth.add_argument("--out", required=True)
    synth.add_argument("--classes", type=int, default=8)
    synth.add_argument("--videos-per-class", type=int, default=30)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--frames", type=int, default=32)
    synth.add_argument("--size", type=int, default=80)
    listing = sub.add_parser("list", help="registered algorithms or models")
    listing.add_argument("what", choices=["algorithms", "models"])
    config = sub.add_parser("config", help="the config key reference: name, type, default and meaning of each key")
    config.add_argument("--explain", nargs="?", const="", required=True, metavar="SECTION",
                        help="print the keys of SECTION (e.g. train, data.synthetic, sweep; none: every key)")
    config.add_argument("--markdown", action="store_true", help="as Markdown tables (docs/config.md)")
    args = parser.parse_args(argv)
    return {"synth": _synth, "list": _list, "config": _config}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
