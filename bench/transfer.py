"""The transfer regime: a backbone trained with every label on a SOURCE class set, saved as a plain state dict in
the layout of the model's published weights (torchvision's for torchvision's models), then fine-tuned on a TARGET
set of other classes with few labels: supervised fine-tuning vs fixmatch vs cmpl from that start, beside
supervised training from scratch.

    python -m bench.transfer --model r2plus1d_18_w0.25 --fractions 0.05,0.1 --seeds 0,1,2 --val
    python -m bench.transfer --model vit_tiny --set data.num_frames=8 --set augment.crop_size=64 --val

Sets (bench.class_sets): `source7` and `target7` split the generator's 14 classes so that each holds motion- and
appearance-defined classes and every target class has a sibling in the source (move_right <- move_left, ...): a
stand-in for Kinetics -> UCF-101. `--val` fine-tunes on `target7_val` (a fifth of the target's train videos as the
evaluation split): choose recipes there, report them on `target7`.

Steps, each skipped when its output exists (so an interrupted benchmark continues): the class sets; the source run
(`python -m ssl_core.loop`, supervised, every label); `<out>/source/<model>.pth` (its primary's weights without the
classifier, as a published backbone file: the target's head starts fresh); the target grid through
`bench.accuracy_local` (configs/bench_accuracy.yaml's recipe, `model.init` = that file) and the scratch row. Prints
both tables, then the primary's pseudo-labels over the steps of each semi-supervised run (share of them right, share
passing the threshold), read from the run logs; results.json and one log per run lie under `<out>/pretrained` and
`<out>/scratch`.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from bench.class_sets import main as make_class_sets
from ssl_core.models.heads import head_prefix
from ssl_core.models.init import read_init_source
from ssl_core.models.registry import build_model

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
GRID = Path(__file__).resolve().parents[1] / "configs" / "bench_accuracy.yaml"


def _run(cmd: list[str], log: Path) -> str:
    print(f"$ {' '.join(cmd)}  > {log}", flush=True)
    with log.open("w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, text=True, check=False)
    text = log.read_text()
    if done.returncode != 0:
        sys.exit(f"error: exit {done.returncode}, see {log}:\n" + "\n".join(text.splitlines()[-5:]))
    return text


def train_source(args: argparse.Namespace, sets: Path, out: Path) -> Path:
    """The source run's folder: every source label, supervised, the grid's budget."""
    log = out / "source.log"
    if log.exists() and "\ntop1_primary: " in log.read_text():  # a finished run's result lines
        return Path(log.read_text().split("run folder: ")[1].splitlines()[0])
    cmd = [sys.executable, "-m", "ssl_core.loop", "--config", str(DEMO), "--device", args.device,
           "--decode-threads", str(args.decode_threads)]
    for item in [f"data.root={sets / 'source7'}", "data.synthetic.enabled=false", "data.labeled_fraction=1.0",
                 "algorithm.name=supervised", f"model.primary={args.model}",
                 f"train.iterations={args.source_iterations}", f"output.storage={out / 'runs'}", *args.set]:
        cmd += ["--set", item]
    text = _run(cmd, log)
    return Path(text.split("run folder: ")[1].splitlines()[0])


def export_backbone(run_dir: Path, model: str, path: Path) -> Path:
    """The run's primary as a plain state dict, classifier left out: what a published backbone file holds."""
    if path.exists():
        return path
    state = read_init_source(str(run_dir)).state_dict
    head = head_prefix(build_model(model, num_classes=2))
    backbone = {k: v for k, v in state.items() if head is None or not k.startswith(f"{head}.")}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(backbone, path)
    print(f"{path}: {len(backbone)} tensors (head {head!r} left out)", flush=True)
    return path


def grid(args: argparse.Namespace, target: Path, out: Path, methods: str, init: Path | None) -> None:
    cmd = [sys.executable, "-m", "bench.accuracy_local", "--config", str(GRID), "--device", args.device,
           "--parallel", str(args.parallel), "--decode-threads", str(args.decode_threads), "--out", str(out),
           "--methods", methods, "--fractions", args.fractions, "--seeds", args.seeds]
    for item in [f"data.root={target}", "data.synthetic.enabled=false", f"model.primary={args.model}",
                 f"train.iterations={args.iterations}", f"output.storage={out / 'runs'}",
                 *([f"model.init={init}"] if init else []), *args.set]:
        cmd += ["--set", item]
    print(f"$ {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, check=False)


_STEP = re.compile(r"^step (\d+): (.*)$", re.MULTILINE)
TRAJECTORY_KEYS = ("pseudo/accuracy_primary", "pseudo/mask_rate_primary")


def trajectory(log_text: str, every: int = 50) -> list[tuple[int, float, float]]:
    """(step, pseudo-label accuracy, mask rate) of the primary at every `every`-th logged step that has both."""
    points = []
    for step, rest in _STEP.findall(log_text):
        values = dict(item.split("=", 1) for item in rest.split() if "=" in item)
        if int(step) % every == 0 and all(k in values for k in TRAJECTORY_KEYS):
            points.append((int(step), *(float(values[k]) for k in TRAJECTORY_KEYS)))
    return points


def trajectory_lines(folder: Path, every: int = 50) -> list[str]:
    """One markdown line per semi-supervised run log in `folder`: `acc % / mask %` of the primary over the steps."""
    lines = []
    for log in sorted(folder.glob("*.log")):
        points = trajectory(log.read_text(), every)
        if points:
            cells = " ".join(f"{step}: {100 * acc:.0f}/{100 * rate:.0f}" for step, acc, rate in points)
            lines.append(f"| {log.stem} | {cells} |")
    header = ["| run | step: pseudo-labels right % / passing % |", "|---|---|"]
    return header + lines if lines else []


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="r2plus1d_18_w0.25", help="the primary (a registered model name)")
    parser.add_argument("--sets", type=Path, default=Path("data/class_sets"), help="bench.class_sets' folder")
    parser.add_argument("--out", type=Path, help="default bench/out/transfer/<model>[_val]")
    parser.add_argument("--val", action="store_true", help="fine-tune on target7_val (the validation split)")
    parser.add_argument("--methods", default="supervised,fixmatch,cmpl")
    parser.add_argument("--fractions", default="0.05,0.1")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--source-iterations", type=int, default=1000)
    parser.add_argument("--iterations", type=int, default=1000, help="of each target run")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of every run, source and target (e.g. the clip shape a model needs)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--parallel", type=int, default=1, help="target runs at a time")
    parser.add_argument("--decode-threads", type=int, default=1)
    args = parser.parse_args(argv)
    out = args.out or Path("bench/out/transfer") / f"{args.model}{'_val' if args.val else ''}"
    out.mkdir(parents=True, exist_ok=True)
    if not (args.sets / "target7_val" / "manifest.csv").exists():
        make_class_sets(["--out", str(args.sets)])
    run_dir = train_source(args, args.sets, out)
    weights = export_backbone(run_dir, args.model, out / "source" / f"{args.model}.pth")
    target = args.sets / ("target7_val" if args.val else "target7")
    grid(args, target, out / "pretrained", args.methods, weights)
    grid(args, target, out / "scratch", "supervised", None)
    print("\n".join(trajectory_lines(out / "pretrained")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
