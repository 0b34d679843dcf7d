"""Trained model -> video scores: the part `workflows.evaluate` and `workflows.predict` share.

    python -m workflows.evaluate --model models:/vidssl-demo-primary/latest --data configs/demo.yaml
    python -m workflows.predict --model runs/cmpl-20250101-120000 --videos data/synth --out predictions.parquet

`load_for_inference` accepts an MLflow model URI (models:/name@alias, models:/name/3, models:/m-<model id>,
runs:/<run id>/model) or a downloaded MLflow model folder (holding MLmodel), a checkpoint directory, or a
training run folder (its latest checkpoint; append `#auxiliary` for another model role it holds, e.g. CMPL's
auxiliary), and returns the model with its metadata (class names, clip shape; see ssl_core.checkpoint.model_meta)
and where it came from. Workflows.train_loop loads frozen teachers through it too. MLflow models are read in
vidssl's pickle-free format (workflows/tracking/safe_model.py: safetensors + spec.json); one logged by an older
vidssl in MLflow's pickled pytorch format is refused unless `trust_pickle` (--trust-pickle, model.trust_pickle).

`score_videos` is the Ray Data pipeline:
    rows {path, label}
    -> decode tasks (fractional CPUs): clips x crops square views per video at the model's decode size; an
       unreadable file becomes an `error` string and zero views instead of a failure
    -> an actor pool, one model per actor (a GPU each when the cluster has GPUs): per video the softmax
       averaged over its views (ssl_core.evaluate.video_probs), NaN for rows with an error.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import ray

from ssl_core.data.decode import decode_eval_clips
from ssl_core.data.decode_base import DecodeError, spatial_crops

if TYPE_CHECKING:  # the decode tasks import this module: keep torch and the model zoo out of them
    from torch import nn

log = logging.getLogger("vidssl.inference")
META_KEYS: tuple[str, ...] = ("classes", "num_frames", "stride", "size", "crop_size")


class InferenceError(ValueError):
    """A model spec that cannot be loaded for inference; the message starts with the spec."""


@dataclass(frozen=True)
class InferenceModel:
    model: nn.Module  # eval mode, on the CPU
    meta: dict[str, Any]  # META_KEYS, see ssl_core.checkpoint.model_meta
    # spec (as given), kind ("mlflow" | "checkpoint"), uri (pins this exact model: a logged model id or a
    # checkpoint directory, so that actors load what the driver resolved even if an alias moves meanwhile),
    # tracking_uri (resolved), name / version (registered models), model_id, run_id (the training run),
    # checkpoint / step. None where they do not apply.
    source: dict[str, Any]
    # Loaded by unpickling an mlflow.pytorch model (--trust-pickle): the scoring actors reload it the same way.
    pickle_trusted: bool = False

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])


def _check_meta(spec: str, meta: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    missing = [k for k in META_KEYS if k not in (meta or {})]
    if missing:
        raise InferenceError(
            f"{spec}: the {what} carries no vidssl model metadata (missing {', '.join(missing)}); it was saved "
            "without class names and clip shape, so it cannot be used for inference (retrain it with this version)"
        )
    return dict(meta or {})


def _registered_version(spec: str, model_id: str | None, client: Any) -> tuple[str | None, str | None]:
    """(name, version) of a models:/ URI naming a registered model. (None, None) for runs:/... and
    models:/m-<id>: they name a logged model, not a registry entry (even when it was registered too)."""
    if not spec.startswith("models:/"):
        return None, None
    name, _, rest = spec.removeprefix("models:/").rstrip("/").partition("/")
    if "@" in name:
        name, alias = name.split("@", 1)
        return name, str(client.get_model_version_by_alias(name, alias).version)
    if not rest:
        return None, None
    if rest.isdigit():
        return name, rest
    # models:/name/latest (or a legacy stage): the highest version holding the model that was resolved.
    # The SQL store leaves ModelVersion.model_id empty; the version's source is the logged model's URI.
    versions = [int(v.version) for v in client.search_model_versions(f"name='{name}'")
                if model_id is not None and model_id in (v.model_id, v.source.removeprefix("models:/"))]
    return name, (str(max(versions)) if versions else None)


def _load_mlflow(spec: str, tracking_uri: str, trust_pickle: bool) -> InferenceModel:
    # here: MLflow takes seconds to load; neither a checkpoint folder nor the decode tasks need it
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from ssl_core.models.saved_model import SavedModelError
    from workflows.tracking.safe_model import is_safe_model, load_safe_model

    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    name = version = model_id = run_id = None
    try:
        if spec.startswith(("models:/", "runs:/")):
            info = mlflow.models.get_model_info(spec)  # reads the MLmodel YAML file only
            flavors, metadata, model_id, run_id = info.flavors, info.metadata, info.model_id, info.run_id
            name, version = _registered_version(spec, info.model_id, client)
            # Load what was resolved: an alias that moves while a long job runs must not change the model.
            pinned = info.model_uri if info.model_id else spec
        else:  # a model folder: the ids in its MLmodel name another store's entries, so they are left out
            pinned = str(Path(spec).expanduser().resolve())
            mlmodel = mlflow.models.Model.load(pinned)
            flavors, metadata = mlmodel.flavors, mlmodel.metadata
        meta = _check_meta(spec, (metadata or {}).get("vidssl"), "MLflow model")
        safe = is_safe_model(flavors)
        if safe:
            model, _ = load_safe_model(pinned, flavors)
        else:
            model = _load_pickled(spec, pinned, name, version, flavors, trust_pickle)
    except MlflowException as err:
        raise InferenceError(f"{spec}: {err.message}") from err
    except SavedModelError as err:
        raise InferenceError(f"{spec}: {err}") from err
    source = {"spec": spec, "kind": "mlflow", "uri": pinned, "tracking_uri": tracking_uri, "name": name,
              "version": version, "model_id": model_id, "run_id": run_id, "checkpoint": None, "step": None}
    return InferenceModel(model.eval(), meta, source, pickle_trusted=not safe)


def _load_pickled(spec: str, pinned: str, name: str | None, version: str | None, flavors: Mapping[str, Any],
                  trust_pickle: bool) -> nn.Module:
    """A model in MLflow's pytorch format (what vidssl logged before its safetensors format): unpickling it runs
    code stored in the artifact, so it is loaded only when the caller trusts it."""
    what = f"version {version} of {name}" if name and version else pinned
    if "pytorch" not in flavors:
        raise InferenceError(f"{spec} ({what}) is neither a vidssl model (safetensors + spec.json) nor an "
                             f"mlflow.pytorch model; its flavors: {', '.join(sorted(flavors)) or 'none'}")
    if not trust_pickle:
        raise InferenceError(f"{spec} ({what}) is a pickled mlflow.pytorch model, and unpickling runs code stored in "
                             "it: refused; pass --trust-pickle (config: model.trust_pickle: true) only if you trust "
                             "whoever logged it")
    # here: MLflow's pytorch flavour only for a model the caller chose to trust
    import mlflow.pytorch

    log.warning("%s (%s): unpickling a mlflow.pytorch model (--trust-pickle)", spec, what)
    return mlflow.pytorch.load_model(pinned, map_location="cpu")


def _checkpoint_role(spec: str) -> tuple[str, str]:
    """`PATH#role` names another model of a checkpoint (e.g. CMPL's `#auxiliary`); a plain PATH its primary."""
    path, sep, role = spec.rpartition("#")
    if not sep or not path or not role or Path(spec).expanduser().exists():
        return spec, "primary"
    return path, role


def _load_checkpoint(spec: str) -> InferenceModel:
    # here: the decode tasks import this module: keep torch and the model zoo out of them
    from ssl_core.checkpoint import CheckpointError, latest_intact_checkpoint, model_from_state

    path, role = _checkpoint_role(spec)
    try:
        # Absolute: Ray workers reload it from their own working directory. A run folder's unreadable newest
        # checkpoint is skipped with a warning; a named checkpoint directory that does not load is an error.
        directory, state = latest_intact_checkpoint(Path(path).expanduser().resolve())
    except FileNotFoundError as err:
        raise InferenceError(
            f"{spec}: not an MLflow model URI (models:/..., runs:/...) nor a checkpoint directory or run folder"
        ) from err
    except CheckpointError as err:
        raise InferenceError(str(err)) from err
    meta = _check_meta(spec, state.get("meta"), f"checkpoint {directory}")
    if len(meta["classes"]) != state["num_classes"]:
        raise InferenceError(f"{spec}: checkpoint {directory} names {len(meta['classes'])} classes but its models "
                             f"have {state['num_classes']} outputs")
    try:
        model = model_from_state(state, role, directory)
    except KeyError as err:
        raise InferenceError(f"{spec}: {err.args[0]}") from err
    # The role travels in the uri: the scoring actors reload the model from it.
    uri = str(directory) if role == "primary" else f"{directory}#{role}"
    source = {"spec": spec, "kind": "checkpoint", "uri": uri, "tracking_uri": None, "name": None,
              "version": None, "model_id": None, "run_id": None, "checkpoint": str(directory),
              "step": int(state["step"])}
    return InferenceModel(model.eval(), meta, source)


def load_for_inference(spec: str, tracking_uri: str | None, *, trust_pickle: bool = False) -> InferenceModel:
    """The model named by `spec` in eval mode, its metadata and its source (see InferenceModel).

    `tracking_uri` (None: $MLFLOW_TRACKING_URI or ./mlflow.db) serves models:/ and runs:/ specs. An MLflow model
    in vidssl's format (workflows.tracking.safe_model) loads without unpickling; one in MLflow's pickled pytorch
    format (older vidssl versions) is an InferenceError unless `trust_pickle` (--trust-pickle)."""
    if spec.startswith(("models:/", "runs:/")) or (Path(spec).expanduser() / "MLmodel").is_file():
        from workflows.tracking.tracker import resolve_uri  # here: as in _load_mlflow

        return _load_mlflow(spec, resolve_uri(tracking_uri), trust_pickle)
    return _load_checkpoint(spec)


def _decode_views(row: dict[str, Any], *, clip_cfg: dict[str, int], crops: int) -> dict[str, Any]:
    """All clips x crops views of one video, (V, T, size, size, 3) uint8, or zero views and the error."""
    try:
        clips = decode_eval_clips(row["path"], keep_aspect=True, **clip_cfg)
        views = spatial_crops(clips, crops)
        views = views.reshape(-1, *views.shape[2:])
        error = ""
    except Exception as err:  # one bad file (not only DecodeError: e.g. a resolution change) must not stop the job
        log.warning("unreadable video %s: %s", row["path"], err)
        size = clip_cfg["size"]
        views = np.zeros((0, clip_cfg["num_frames"], size, size, 3), np.uint8)
        error = str(err) if isinstance(err, DecodeError) else f"{row['path']}: {type(err).__name__}: {err}"
    return {"path": row["path"], "label": row["label"], "views": views, "error": error}


class _Scorer:
    """Actor-pool UDF: the model, loaded once per actor, scores batches of decoded videos."""

    def __init__(self, uri: str, tracking_uri: str | None, trust_pickle: bool) -> None:
        # here: the decode tasks import this module: keep torch and the model zoo out of them
        import torch

        from ssl_core.data.transforms import AugmentConfig

        loaded = load_for_inference(uri, tracking_uri, trust_pickle=trust_pickle)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = loaded.model.to(self.device)
        self.num_classes = len(loaded.classes)
        # Only crop_size matters: video_probs applies the evaluation transform (resize + centre crop).
        self.aug = AugmentConfig(crop_size=int(loaded.meta["crop_size"]))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # here: the decode tasks import this module: keep torch and the model zoo out of them
        import torch

        from ssl_core.evaluate import video_probs

        n = len(batch["path"])
        probs = np.full((n, self.num_classes), np.nan, np.float32)
        ok = [i for i in range(n) if not batch["error"][i]]
        if ok:
            views = torch.from_numpy(np.stack([batch["views"][i] for i in ok]))
            probs[ok] = video_probs(self.model, views, self.aug, self.device).cpu().numpy()
        return {"path": batch["path"], "label": batch["label"], "probs": probs, "error": batch["error"]}


def score_videos(
    items: Sequence[Mapping[str, Any]],  # {"path": str, "label": int (-1 when unknown)}
    loaded: InferenceModel,
    *,
    clips: int,
    crops: int,
    batch_size: int = 4,
    decode_cpus: float = 0.5,
    actors: int | None = None,
) -> ray.data.Dataset:  # rows {"path", "label", "probs": (C,) float32, "error": str, "" when fine}
    """The lazy scoring pipeline (see the module docstring); iterate it to run it. Row order is not kept."""
    if clips < 1 or crops < 1 or batch_size < 1:
        raise ValueError(f"clips, crops and batch_size must be >= 1, got {clips}, {crops}, {batch_size}")
    if not items:
        raise ValueError("no videos to score")
    meta = loaded.meta
    clip_cfg = {"num_frames": int(meta["num_frames"]), "stride": int(meta["stride"]), "size": int(meta["size"]),
                "num_clips": clips}
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if actors is None:
        # One actor per GPU; on CPUs leave most cores to the decode tasks, which are the slower stage there.
        actors = gpus or max(1, int(resources.get("CPU", 1)) // 4)
    rows = [{"path": str(it["path"]), "label": int(it["label"])} for it in items]
    ds = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / batch_size)))
    ds = ds.map(_decode_views, fn_kwargs={"clip_cfg": clip_cfg, "crops": crops}, num_cpus=decode_cpus)
    return ds.map_batches(
        _Scorer,
        fn_constructor_kwargs={"uri": loaded.source["uri"], "tracking_uri": loaded.source["tracking_uri"],
                               "trust_pickle": loaded.pickle_trusted},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=1 if gpus else 0,
    )


def add_scoring_args(parser: argparse.ArgumentParser, *, clips: int, crops: int, clips_help: str) -> None:
    """The options evaluate and predict share: the model, the views per video, the pipeline's resources."""
    parser.add_argument("--model", required=True, metavar="SPEC",
                        help="models:/name@alias, models:/name/N, runs:/<run id>/model, an MLflow model folder, "
                             "a checkpoint directory or a training run folder (its latest checkpoint)")
    parser.add_argument("--clips", type=int, default=clips, help=clips_help)
    parser.add_argument("--crops", type=int, default=crops,
                        help=f"square crops along the long side (default {crops}{': centre' if crops == 1 else ''})")
    parser.add_argument("--batch-size", type=int, default=4, help="videos per forward pass of an actor")
    parser.add_argument("--actors", type=int, default=None,
                        help="model replicas (default: one per GPU, else a quarter of the CPUs)")
    parser.add_argument("--decode-cpus", type=float, default=0.5, help="CPUs per decode task")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI for models:/ and runs:/ (default: $MLFLOW_TRACKING_URI, "
                             "else sqlite ./mlflow.db)")
    add_trust_pickle_arg(parser)


def add_trust_pickle_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust-pickle", action="store_true",
                        help="load an MLflow model logged by an older vidssl in MLflow's pickled pytorch format; "
                             "unpickling runs code stored in the artifact (without this flag it is refused)")
