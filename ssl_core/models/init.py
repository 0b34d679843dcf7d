"""Start a model from pretrained weights (`model.init`, `model.auxiliary_init`): read a source, map its keys onto
the vidssl model, report what loaded.

Sources read here (no MLflow: workflows/tracking/model_init.py turns an MLflow model URI into a local file first):
  - a vidssl checkpoint directory or a run folder (its latest checkpoint): the deployed weights (EMA when the
    run kept one) of its primary, or of another role with `PATH#auxiliary`;
  - a PyTorch state-dict file (.pt / .pth / .pyth), read with torch.load(weights_only=True): the dict itself or
    under "state_dict" / "model" / "model_state" / "module". torchvision's video weights files fit the entry of
    the same name (r3d_18, swin3d_t, ...: built by torchvision's constructors), pytorchvideo's hub slow_r50 file
    (SLOW_8x8_R50.pyth, {"model_state": ...}) fits `r3d_50` (pytorchvideo's create_resnet, same module tree),
    VideoMAE's released checkpoints ({"module": ...} or {"model": ...}) fit `vit_s` / `vit_b`, and a state dict
    in Hugging Face transformers' VideoMAE layout is mapped onto them (ssl_core/models/vit.py);
    pytorchvideo's other published .pyth files fit the hub entries of the same name (x3d_m, slowfast_r50, ...:
    ssl_core/models/pytorchvideo_hub.py);
  - `torchvision:<model>:<weights>` (torchvision:swin3d_t:KINETICS400_V1), downloaded through torchvision's weights
    enum, and `hub:<model>` (hub:x3d_m), pytorchvideo's published file of a hub entry, downloaded from its URL: both
    into torch hub's cache (`$TORCH_HOME/hub/checkpoints`, where pytorchvideo's own hub keeps them too), so only
    on a machine with internet, or with the file already there;
  - `hf:<org>/<repo>[@<revision>]` (hf:MCG-NJU/videomae-base-finetuned-kinetics): a Hugging Face Hub model
    repository's weights (model.safetensors, else pytorch_model.bin) and its class names (config.json's id2label),
    through huggingface_hub into its cache (`$HF_HOME`); transformers' VideoMAE layout maps onto `vit_s` / `vit_b`.
    A local .safetensors file reads like a .pt one. Nothing else is downloaded.

Mapping (load_init): a prefix common in saved models ("module.", "model.", "backbone.", "_orig_mod.", and
"encoder." of VideoMAE's pretraining checkpoints) is removed when that makes more keys match; every other key must
match by name and shape. The classifier (the model's last nn.Linear or 1x1x1 Conv3d: torchvision / small3d `fc`,
pytorchvideo `blocks.5.proj`, ViT / Swin `head`, S3D `classifier.1`) is left at its fresh init when its shape
differs (another class count) or the source names other classes, and reported as re-initialised. A backbone key
whose shape differs, or fewer than half of the backbone keys found, is a one-line InitError naming the key.

Try it:
    python -c "import torch, torchvision; from ssl_core.models import build_model; \
from ssl_core.models.init import load_init; \
print(load_init(build_model('r3d_18', num_classes=8), torchvision.models.video.r3d_18(num_classes=400).state_dict(), \
name='primary', source='torchvision').line())"
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import Tensor, nn
from torchvision.models import get_model_weights

from ssl_core.checkpoint import CheckpointError, deployed_weights, latest_intact_checkpoint
from ssl_core.models.heads import head_prefix
from ssl_core.models.init_spec import is_mlflow_uri, named_source, split_role
from ssl_core.models.pytorchvideo_hub import URLS as HUB_URLS
from ssl_core.models.vit import is_transformers_layout, transformers_to_official
from ssl_core.typed_config import ConfigError

# Where common checkpoint formats keep the weights: Lightning / timm ("state_dict"), DeiT-style ("model"),
# pytorchvideo / SlowFast ("model_state"), DeepSpeed (VideoMAE's releases: "module").
WRAPPER_KEYS = ("state_dict", "model", "model_state", "module")
# Added by DataParallel / DDP, wrapper modules, backbone-only exports, torch.compile, VideoMAE's pretraining model.
PREFIXES = ("module.", "model.", "backbone.", "_orig_mod.", "encoder.")
# Fewer backbone keys found than this fraction means another architecture, not a partial checkpoint.
MIN_BACKBONE_FRACTION = 0.5
_SHOWN = 3  # names listed per category in a report line


class InitError(ConfigError):
    """Pretrained weights that cannot start this model; one line starting with the config key."""


@dataclass
class InitSource:
    """Weights read from a source, what reports call it, and its class names when it records them."""

    state_dict: dict[str, Tensor]
    description: str
    classes: list[str] | None = None
    # A pretraining checkpoint's objective (projector, momentum encoder, queue): where a pretraining continues.
    objective_state: dict[str, Any] | None = None


def read_init_source(spec: str, *, key: str = "model.init") -> InitSource:
    """The weights named by `spec` (a checkpoint directory, a run folder, `PATH#role`, a state-dict file)."""
    named = named_source(spec)
    if named is not None:
        readers = {"hub:": _from_hub, "hf:": _from_hf, "torchvision:": _from_torchvision}
        return next(read for prefix, read in readers.items() if named.startswith(prefix))(named, key)
    if is_mlflow_uri(spec):
        raise InitError(f"{key}: {spec} is an MLflow model URI: python -m workflows.train resolves it into a local "
                        "file before training; the Ray-free loop takes a checkpoint directory, a run folder or a "
                        "state-dict file (.pt/.pth)")
    path_text, role = split_role(spec)
    path = Path(path_text).expanduser()
    if path.is_dir():
        try:
            _, state = latest_intact_checkpoint(path)
        except (FileNotFoundError, CheckpointError) as err:
            raise InitError(f"{key}: {err}") from err
        return _from_training_state(state, role, spec, key)
    if not path.is_file():
        raise InitError(f"{key}: no such file or directory: {path_text} (expected a vidssl checkpoint directory, a "
                        "run folder, a state-dict file .pt/.pth, or an MLflow model URI models:/..., runs:/...)")
    try:
        obj = _load_file(path)
    except Exception as err:  # one pickling Python objects (weights_only refuses those), or not a torch file
        text = str(err)
        refused = re.search(r"WeightsUnpickler error: (.*?)(?: was not|\.?\n|$)", text)
        if refused:
            raise InitError(f"{key}: {path} holds pickled Python objects, which torch.load(weights_only=True) refuses "
                            f"({refused[1].strip()}): save the weights alone, torch.save(model.state_dict(), path)"
                            ) from err
        raise InitError(f"{key}: cannot read {path} as PyTorch weights (torch.load(weights_only=True)): "
                        f"{type(err).__name__}: {' '.join(text.split())[:200]}") from err
    if isinstance(obj, Mapping) and "models" in obj and "model_names" in obj:  # a vidssl state.pt given directly
        return _from_training_state(obj, role, spec, key)
    if role is not None:
        raise InitError(f"{key}: {spec}: '#{role}' picks a model of a vidssl checkpoint; {path} is a plain state dict")
    classes = obj.get("classes") if isinstance(obj, Mapping) else None
    description = obj.get("source") if isinstance(obj, Mapping) and isinstance(obj.get("source"), str) else spec
    state_dict = _unwrap(obj)
    if isinstance(obj, Mapping) and state_dict:
        state_dict, description = _drop_untrained_head(state_dict, obj.get("untrained_head"), description)
    if not state_dict:
        found = sorted(map(str, obj))[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise InitError(f"{key}: {path} holds no state dict (parameter name -> tensor, directly or under "
                        f"{' / '.join(WRAPPER_KEYS)}); found {found}")
    ok_classes = isinstance(classes, list) and all(isinstance(c, str) for c in classes)
    return InitSource(state_dict, description, list(classes) if ok_classes else None)


def _from_torchvision(spec: str, key: str) -> InitSource:
    """`torchvision:<model>:<weights>` through torchvision's weights enum (downloads once into torch hub's cache)."""
    _, model, weights = spec.split(":", 2)
    try:
        enum = get_model_weights(model)
    except ValueError as err:
        raise InitError(f"{key}: {spec}: torchvision has no model {model!r}") from err
    if weights not in enum.__members__:
        raise InitError(f"{key}: {spec}: {enum.__name__} has no {weights!r}; it has {', '.join(enum.__members__)}")
    entry = enum[weights]
    try:
        state_dict = entry.get_state_dict(progress=False)
    except OSError as err:  # URLError is an OSError: no internet on this machine
        raise InitError(f"{key}: {spec}: cannot download {entry.url} ({err}); download it on a machine with "
                        "internet and give the local file") from err
    return InitSource(dict(state_dict), spec, list(entry.meta.get("categories") or []) or None)


def _from_hub(spec: str, key: str) -> InitSource:
    """`hub:<model>`: pytorchvideo's published file, downloaded once into torch hub's cache (the path
    torch.hub.load_state_dict_from_url uses), then read like any local .pyth file (its checks and messages)."""
    name = spec.removeprefix("hub:")
    url = HUB_URLS.get(name)
    if url is None:
        raise InitError(f"{key}: {spec}: pytorchvideo's hub publishes no weights for {name!r}; hub:<model> takes "
                        f"{', '.join(sorted(HUB_URLS))}")
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        try:  # into a temporary file first, then renamed: an interrupted download leaves nothing half-written
            torch.hub.download_url_to_file(url, str(cached), progress=False)
        except OSError as err:  # URLError is an OSError: no internet on this machine
            raise InitError(f"{key}: {spec}: cannot download {url} ({err}); download it on a machine with internet "
                            f"into {cached}, or give the local file") from err
    source = read_init_source(str(cached), key=key)
    return InitSource(source.state_dict, spec, source.classes)


def _load_file(path: Path) -> Any:
    """A weights file's content: safetensors by its suffix (Hugging Face's format), else torch.load without pickle."""
    if path.suffix == ".safetensors":
        # here: only .safetensors sources need the reader
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # what a transformers model repository holds, preferred first


def _from_hf(spec: str, key: str) -> InitSource:
    """`hf:<org>/<repo>[@<revision>]`: the repository's weights file and config.json through huggingface_hub (its
    cache, its token and offline settings), then read like a local file; id2label names the head's classes."""
    try:
        # here: only hf: sources need huggingface_hub, installed with transformers (the dev extra) or by hand
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError
    except ImportError as err:
        raise InitError(f"{key}: {spec} needs huggingface_hub: pip install huggingface_hub") from err
    repo, _, revision = spec.removeprefix("hf:").partition("@")
    path = None
    for filename in HF_WEIGHTS:
        try:
            path = Path(hf_hub_download(repo, filename, revision=revision or None))
            break
        except EntryNotFoundError:
            continue
        except Exception as err:  # no internet, no such repository, a private one without a token
            raise InitError(f"{key}: {spec}: cannot fetch {filename} from the Hugging Face Hub "
                            f"({type(err).__name__}: {' '.join(str(err).split())[:200]}); download the repository on a "
                            "machine with internet (huggingface-cli download) or give the local file") from err
    if path is None:
        raise InitError(f"{key}: {spec}: the repository holds none of {', '.join(HF_WEIGHTS)}")
    source = read_init_source(str(path), key=key)
    classes = None
    try:
        config = json.loads(Path(hf_hub_download(repo, "config.json", revision=revision or None)).read_text())
        labels = config.get("id2label") or {}
        classes = [labels[k] for k in sorted(labels, key=int)] if labels else None
    except (EntryNotFoundError, ValueError, KeyError):
        classes = None  # no class names: the head is kept or re-initialised by its shape alone
    return InitSource(source.state_dict, spec, classes)


def _from_training_state(state: Mapping[str, Any], role: str | None, spec: str, key: str) -> InitSource:
    role = role or "primary"
    if role not in state["models"]:
        raise InitError(f"{key}: {spec}: the checkpoint has no {role!r} model; it has {sorted(state['models'])}")
    meta = state.get("meta") or {}
    classes = meta.get("classes")
    weights, description = dict(deployed_weights(state, role)), f"{spec} (step {int(state['step'])})"
    if role == "primary":
        weights, description = _drop_untrained_head(weights, meta.get("untrained_head"), description)
    objective = state.get("algorithm") if meta.get("stage") == "pretrain" and role == "primary" else None
    return InitSource(weights, description, list(classes) if classes else None, objective)


def _drop_untrained_head(state_dict: dict[str, Tensor], head: Any, description: str) -> tuple[dict[str, Tensor], str]:
    """A self-supervised backbone (ssl_core.pretrain) saves its classifier's never-trained head, named in its
    meta as `untrained_head`: left out here, so the model's classifier keeps its own fresh init and the report
    says so."""
    if not isinstance(head, str) or not head:
        return state_dict, description
    kept = {k: v for k, v in state_dict.items() if not k.startswith(f"{head}.")}
    return kept, f"{description} [self-supervised backbone; its untrained head {head} left out]"


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def _unwrap(obj: Any) -> dict[str, Tensor]:
    for _ in range(3):  # e.g. {"model": {"state_dict": ...}}
        if not isinstance(obj, Mapping) or _is_state_dict(obj):
            break
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        return {}
    return {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}


# --- mapping -------------------------------------------------------------------------------------------


@dataclass
class InitReport:
    """What load_init did to one model. Key lists are in the model's order; `reinitialised` holds the classifier
    keys left at their fresh init, `missing` the other model keys the source lacks (also fresh)."""

    name: str
    source: str
    total: int
    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    head: str = "loaded"  # "loaded" | "re-initialised (400 -> 8 classes)" | ...
    stripped: str = ""  # the key prefix removed from the source
    layout: str = ""  # the source's key layout when it was mapped ("transformers' VideoMAE")

    def line(self) -> str:
        """`init primary from X: 120/122 keys matched, head re-initialised (400 -> 8 classes), 0 unexpected`."""
        parts = [f"{len(self.matched)}/{self.total} keys matched"]
        if self.missing:
            parts.append(f"{len(self.missing)} missing ({_first(self.missing)})")
        parts.append(f"head {self.head}")
        parts.append(f"{len(self.unexpected)} unexpected" + (f" ({_first(self.unexpected)})" if self.unexpected
                                                            else ""))
        if self.stripped:
            parts.append(f"prefix {self.stripped!r} removed")
        if self.layout:
            parts.append(f"{self.layout} layout mapped")
        return f"init {self.name} from {self.source}: " + ", ".join(parts)

    def params(self) -> dict[str, Any]:
        """MLflow params `init.<role>.*`: the counts."""
        p = f"init.{self.name}"
        return {f"{p}.source": self.source, f"{p}.keys": self.total, f"{p}.matched": len(self.matched),
                f"{p}.missing": len(self.missing), f"{p}.unexpected": len(self.unexpected),
                f"{p}.reinitialised": len(self.reinitialised)}


def _first(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (", ..." if len(names) > _SHOWN else "")


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _head_aliases(head: str) -> list[str]:
    # r3d_18 with dropout wraps its fc as Sequential(Dropout, Linear): `fc.1.*` there, `fc.*` in torchvision's.
    return [head, head.removesuffix(".1")] if head.endswith(".1") else [head, f"{head}.1"]


def _strip_prefixes(sd: dict[str, Tensor], wanted: set[str]) -> tuple[dict[str, Tensor], str]:
    """The source with the prefix (one of PREFIXES or a chain of up to 3, e.g. "module.backbone.") removed that
    makes the most keys match the model's; unchanged when none helps."""
    best, best_hits, removed = sd, len(wanted.intersection(sd)), ""
    chains = [p for n in (1, 2, 3) for p in itertools.product(PREFIXES, repeat=n)]
    for chain in chains:
        prefix = "".join(chain)
        if not any(k.startswith(prefix) for k in sd):
            continue
        candidate = {k.removeprefix(prefix): v for k, v in sd.items()}
        hits = len(wanted.intersection(candidate))
        if hits > best_hits:
            best, best_hits, removed = candidate, hits, prefix
    return best, removed


def load_init(
    model: nn.Module,
    source_state_dict: Mapping[str, Tensor],
    *,
    name: str,
    source: str = "a state dict",
    key: str = "model.init",
    source_classes: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
) -> InitReport:
    """Load the matching weights of `source_state_dict` into `model` in place and report (see the module doc).

    name: the model's role in reports ("primary"); source: how reports name the weights; key: the config key
    errors start with. `source_classes` / `classes`: the class names of the source and of this run, when known;
    a source naming other classes (even as many) leaves the classifier fresh, or its logits would mean others.
    Raises InitError for another architecture; the model is unchanged then."""
    target = model.state_dict()
    head = head_prefix(model)
    head_keys = [k for k in target if head is not None and k.startswith(f"{head}.")]
    wanted = set(target)
    if head is not None:
        wanted |= {alias + k[len(head):] for k in head_keys for alias in _head_aliases(head)}
    sd, layout = dict(source_state_dict), ""
    if is_transformers_layout(sd):
        sd, layout = transformers_to_official(sd), "transformers' VideoMAE"
    sd, stripped = _strip_prefixes(sd, wanted)
    classes_differ = source_classes is not None and classes is not None and list(source_classes) != list(classes)
    report = InitReport(name=name, source=source, total=len(target), stripped=stripped, layout=layout)
    loaded: dict[str, Tensor] = {}
    used: set[str] = set()
    head_from: tuple[int, ...] | None = None
    for k, t in target.items():
        src = k if k in sd else None
        if src is None and k in head_keys and head is not None:
            src = next((a + k[len(head):] for a in _head_aliases(head) if a + k[len(head):] in sd), None)
        if src is None:
            (report.reinitialised if k in head_keys else report.missing).append(k)
            continue
        used.add(src)
        value = sd[src]
        if k in head_keys and (_shape(value) != _shape(t) or classes_differ):
            report.reinitialised.append(k)
            if head_from is None or k.endswith(".weight"):
                head_from = _shape(value)
            continue
        if _shape(value) != _shape(t):
            raise InitError(f"{key}: {source} does not fit the {name} model ({type(model).__name__}): {k} is "
                            f"{_shape(value)} in the source, {_shape(t)} in the model")
        loaded[k] = value
        report.matched.append(k)
    report.unexpected = [k for k in sd if k not in used]
    backbone = [k for k in target if k not in head_keys]
    found = len(backbone) - len(report.missing)
    if backbone and (found == 0 or found < MIN_BACKBONE_FRACTION * len(backbone)):
        first = report.missing[0]
        example = next(iter(report.unexpected), None)
        hint = f"; the source's keys look like {example} {_shape(sd[example])}" if example is not None else ""
        raise InitError(f"{key}: {source} does not fit the {name} model ({type(model).__name__}): only "
                        f"{found}/{len(backbone)} backbone keys found; {first} {_shape(target[first])} is not in "
                        f"the source{hint}")
    if report.reinitialised:
        out = target[head_keys[0]].shape[0] if head_keys else "?"
        if classes_differ and head_from is not None and head_from[:1] == (out,):
            report.head = "re-initialised (the source's classes differ from this run's)"
        elif head_from is not None:
            report.head = f"re-initialised ({head_from[0]} -> {out} classes)"
        else:
            report.head = "re-initialised (not in the source)"
    target.update({k: v.to(dtype=target[k].dtype) for k, v in loaded.items()})
    model.load_state_dict(target)
    return report
