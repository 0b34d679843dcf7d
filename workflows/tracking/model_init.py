"""`model.init` / `model.auxiliary_init` on the driver (workflows.train): MLflow URIs -> local files, the check
before Ray starts, and what MLflow records.

An MLflow model URI is resolved once, on the driver, into `<run folder>/init/<key>.pt` ({"state_dict", "classes",
"source"}; ssl_core.models.init reads it like any state-dict file), so Train workers, and their restarts, never
need MLflow to start from it, and a moving alias cannot change the weights of a run that is resumed (a model in
MLflow's pickled pytorch format, logged by an older vidssl, only with model.trust_pickle). Local
sources are passed on as absolute paths (on a multi-node cluster they must be on storage every node sees).

On a fresh start the driver builds the models once and loads the weights the way the workers will
(ssl_core.train_step.init_models): another architecture stops the run with one line before Ray starts, and the
report lines (`init primary from ...: 120/122 keys matched, head re-initialised (400 -> 8 classes), 0 unexpected`)
are printed and logged: tag `init.<role>` (the line), params `init.<role>.*` (counts), and lineage tags
`vidssl.init_source` / `vidssl.auxiliary_init_source` (+ `_version`, `_run` for MLflow sources; `_run` also for a
local vidssl run folder or checkpoint in one, e.g. a workflows.pretrain run: its vidssl_run.json) on the run and
on the registered model version.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ssl_core.config import Config, ConfigError
from ssl_core.models.init import InitReport
from ssl_core.models.init_spec import is_mlflow_uri, split_role
from ssl_core.train_step import build_models, init_models

INIT_DIR = "init"
INIT_CONFIG_KEYS = ("init", "auxiliary_init")
# Run tags copied onto the registered model version.
LINEAGE_PREFIXES = tuple(f"vidssl.{key}_" for key in INIT_CONFIG_KEYS)


@dataclass
class PreparedInit:
    """sources: config key -> the local source the workers read; lineage: tags naming where the weights came
    from (set only when they were resolved in this call); reports: one per model loaded (fresh starts only)."""

    sources: dict[str, str] = field(default_factory=dict)
    lineage: dict[str, str] = field(default_factory=dict)
    reports: list[InitReport] = field(default_factory=list)

    def tags(self) -> dict[str, str]:
        return {**self.lineage, **{f"init.{r.name}": r.line() for r in self.reports}}

    def params(self) -> dict[str, Any]:
        return {k: v for r in self.reports for k, v in r.params().items()}


def resolve_sources(cfg: Config, run_dir: Path, tracking_uri: str) -> tuple[dict[str, str], dict[str, str]]:
    """(config key -> local source, lineage tags). A URI already resolved into the run folder (a resumed run)
    is reused as it is."""
    sources: dict[str, str] = {}
    lineage: dict[str, str] = {}
    for key in INIT_CONFIG_KEYS:
        spec = getattr(cfg.model, key)
        if spec is None:
            continue
        if not is_mlflow_uri(spec):
            path, role = split_role(spec)
            sources[key] = str(Path(path).expanduser().resolve()) + (f"#{role}" if role else "")
            lineage[f"vidssl.{key}_source"] = sources[key]
            run_id = _local_run_id(Path(path).expanduser().resolve())
            if run_id:  # a vidssl run folder (or a checkpoint in one): the MLflow run that made the weights
                lineage[f"vidssl.{key}_run"] = run_id
            continue
        dest = run_dir / INIT_DIR / f"{key}.pt"
        if not dest.exists():
            lineage.update(_resolve_uri(key, spec, tracking_uri, dest, cfg.model.trust_pickle))
        sources[key] = str(dest)
    return sources, lineage


def _local_run_id(path: Path) -> str | None:
    """The MLflow run id recorded in the vidssl run folder `path` is, or holds the checkpoint `path`; else None."""
    for folder in (path, path.parent):
        run_file = folder / "vidssl_run.json"  # workflows.train.RUN_FILE (workflows.pretrain writes the same)
        if run_file.is_file():
            try:
                return str(json.loads(run_file.read_text())["mlflow_run_id"])
            except (OSError, ValueError, KeyError, TypeError):
                return None
    return None


def _resolve_uri(key: str, spec: str, tracking_uri: str, dest: Path, trust_pickle: bool) -> dict[str, str]:
    # here: only an MLflow model.init needs the inference loader (Ray and MLflow with it)
    from workflows.runtime.inference import InferenceError, load_for_inference

    try:
        loaded = load_for_inference(spec, tracking_uri, trust_pickle=trust_pickle)
    except InferenceError as err:
        raise ConfigError(f"model.{key}: {err}") from err
    src = loaded.source
    # What the report and the lineage name: the registered version when there is one, else the logged model.
    pinned = f"models:/{src['name']}/{src['version']}" if src.get("name") and src.get("version") else src["uri"]
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    payload = {"state_dict": loaded.model.state_dict(), "classes": loaded.classes, "source": pinned}
    if loaded.meta.get("untrained_head"):  # a self-supervised backbone (workflows.pretrain): its head stays out
        payload["untrained_head"] = str(loaded.meta["untrained_head"])
    torch.save(payload, tmp)
    os.replace(tmp, dest)
    tags = {f"vidssl.{key}_source": pinned}
    if src.get("name") and src.get("version"):
        tags[f"vidssl.{key}_version"] = f"{src['name']}/{src['version']}"
    if src.get("run_id"):
        tags[f"vidssl.{key}_run"] = str(src["run_id"])
    return tags


def prepare_init(
    cfg: Config, run_dir: Path, tracking_uri: str, classes: Sequence[str], *, fresh: bool
) -> PreparedInit:
    """Resolve the sources; on a fresh start also load them into models built like the workers' (the check and
    the reports). A resumed run gets the sources only: its workers load them only if no checkpoint was saved."""
    sources, lineage = resolve_sources(cfg, run_dir, tracking_uri)
    reports: list[InitReport] = []
    if fresh and sources:
        reports = init_models(cfg, build_models(cfg, len(classes)), classes, sources)
    return PreparedInit(sources, lineage, reports)


def tag_registered_version(client: Any, run_id: str, name: str, version: str) -> None:
    """Copy the run's init lineage tags onto the model version it registered (also after a resume)."""
    tags = client.get_run(run_id).data.tags
    for key, value in tags.items():
        if key.startswith(LINEAGE_PREFIXES):
            client.set_model_version_tag(name, version, key, value)
