"""`python -m ssl_core.pretrain --config F [--set k=v] [--device cuda]`: pretraining without Ray or MLflow."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from ssl_core.pretrain.config import load_pretrain_config, next_command
from ssl_core.user_errors import reports_user_errors


@reports_user_errors()
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Ray-free self-supervised pretraining (same step as the Ray worker).")
    parser.add_argument("--config", help="pretraining YAML file (e.g. configs/pretrain_demo.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--decode-threads", type=int, default=2, help="threads decoding clips ahead of the step")
    args = parser.parse_args(argv)
    setup = load_pretrain_config(args.config, args.set)
    # here: the runner loads PyAV and the models; a config error is reported before that
    from ssl_core.pretrain.local import run_local_pretrain

    torch.set_num_threads(max(1, setup.base.scaling.torch_threads))
    result = run_local_pretrain(setup, device=args.device, decode_threads=args.decode_threads)
    for key, value in result.items():
        if isinstance(value, float):
            print(f"{key}: {value:.4f}")
    print(f"run folder: {result['run_dir']}")
    print(f"next: {next_command(setup, result['run_dir'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
