"""What the driver hands each Ray Train worker (training and pretraining), typed.

Ray Train's `train_loop_config` is a dict: the arguments travel under one key (`loop_config()`) and the worker
reads them back with `WorkerArgs.of(loop_config)`. Ray pickles them into the workers with its actor handles.

    python -m workflows.train --config configs/demo.yaml     # fit() passes WorkerArgs(...).loop_config()
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

KEY = "args"


@dataclass(frozen=True)
class WorkerArgs:
    config: dict[str, Any]  # Config.to_dict() (training) or PretrainSetup.to_dict() (pretraining)
    classes: list[str]
    tracking_uri: str
    mlflow_run_id: str
    skip_counter: Any  # workflows.runtime.streams.SkipCounter actor: data/skipped_videos
    progress: Any = None  # the driver's progress channel (workflows.console.terminal), None: no progress bar
    init: Mapping[str, str] | None = None  # model.init key -> the local file the driver resolved an MLflow URI into
    queue_size: int = 0  # pretraining's negative keys (PretrainSetup.queue_size of the train videos)
    # --resume: the checkpoint to load when Ray Train has none of its own (its latest did not load; resume.py)
    resume_from: str | None = None

    def loop_config(self) -> dict[str, WorkerArgs]:
        return {KEY: self}

    @staticmethod
    def of(loop_config: Mapping[str, Any]) -> WorkerArgs:
        args = loop_config[KEY]
        if not isinstance(args, WorkerArgs):
            raise TypeError(f"train_loop_config[{KEY!r}] is a {type(args).__name__}, not WorkerArgs")
        return args
