"""The form of a `model.init` / `model.auxiliary_init` source (a path, `PATH#role`, an MLflow model URI,
`torchvision:<model>:<weights>`, `hub:<model>`, `hf:<org>/<repo>[@<revision>]`), checked without reading anything:
config validation takes these, ssl_core/models/init.py reads the weights.

Try it:
    python -c "from ssl_core.models.init_spec import init_spec_problem; print(init_spec_problem('https://x/w.pth'))"
"""

from __future__ import annotations

import re
from pathlib import Path

MLFLOW_SCHEMES = ("models:/", "runs:/")
TORCHVISION_SOURCE = re.compile(r"torchvision:[a-z0-9_]+:[A-Z0-9_]+")
HUB_SOURCE = re.compile(r"hub:[a-z0-9_]+")  # pytorchvideo's published weights of a vidssl entry (pytorchvideo_hub.py)
HF_SOURCE = re.compile(r"hf:[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?")  # a Hugging Face Hub model repository
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_mlflow_uri(spec: str) -> bool:
    return spec.startswith(MLFLOW_SCHEMES)


def named_source(spec: str) -> str | None:
    """`torchvision:<model>:<weights>`, `hub:<model>` or `hf:<org>/<repo>[@<revision>]` named by `spec`, or None.
    Also found at the end of a path: a workflow that resolves every non-MLflow source into an absolute path turns
    it into `<cwd>/hub:...`."""
    hf_at = spec.rfind("/hf:")
    for candidate in (spec, spec.rpartition("/")[2], spec[hf_at + 1:] if hf_at >= 0 else ""):
        named = (TORCHVISION_SOURCE.fullmatch(candidate) or HUB_SOURCE.fullmatch(candidate)
                 or HF_SOURCE.fullmatch(candidate))
        if named and not Path(spec).expanduser().exists():
            return candidate
    return None


def split_role(spec: str) -> tuple[str, str | None]:
    """`PATH#role` -> (PATH, role) for a vidssl checkpoint's other model (e.g. CMPL's `#auxiliary`); a path that
    exists as written (a '#' in a file name) or has no `#role` -> (spec, None)."""
    path, sep, role = spec.rpartition("#")
    if not sep or not path or not role or Path(spec).expanduser().exists():
        return spec, None
    return path, role


def init_spec_problem(spec: str) -> str | None:
    """Why `spec` cannot be a model.init source (config validation: the form only, not whether it exists, since
    a resumed run or a worker validates the config again after the source may have moved), or None."""
    if not spec.strip():
        return ("must be a checkpoint directory, a run folder, a state-dict file (.pt/.pth) or an MLflow model URI "
                "(models:/name@alias, models:/name/3, runs:/<run id>/model), torchvision:<model>:<weights>, "
                "hub:<model>, hf:<org>/<repo>, or null")
    if spec.startswith("models:/"):
        if not re.fullmatch(r"[^/@\s]+(@[^/@\s]+|/[^/\s]+)?/?", spec.removeprefix("models:/")):
            return f"{spec!r}: expected models:/<name>@<alias>, models:/<name>/<version> or models:/m-<model id>"
        return None
    if spec.startswith("runs:/"):
        if not re.fullmatch(r"[^/\s]+/\S+", spec.removeprefix("runs:/")):
            return f"{spec!r}: expected runs:/<run id>/<artifact path>, e.g. runs:/<run id>/model"
        return None
    if spec.startswith("torchvision:"):
        if not TORCHVISION_SOURCE.fullmatch(spec):
            return (f"{spec!r}: expected torchvision:<model>:<weights>, e.g. torchvision:swin3d_t:KINETICS400_V1 "
                    "(`vidssl list models` shows each entry's)")
        return None
    if spec.startswith("hub:"):
        if not HUB_SOURCE.fullmatch(spec):
            return (f"{spec!r}: expected hub:<model>, a pytorchvideo hub entry, e.g. hub:x3d_m (`vidssl list models` "
                    "shows each entry's)")
        return None
    if spec.startswith("hf:"):
        if not HF_SOURCE.fullmatch(spec):
            return (f"{spec!r}: expected hf:<org>/<repo>[@<revision>], a Hugging Face Hub model repository, e.g. "
                    "hf:MCG-NJU/videomae-base")
        return None
    if _URL.match(spec):
        return (f"{spec!r}: URLs are not downloaded at run time; download the weights once and give the local file "
                "(a .pt/.pth state dict), or an MLflow model URI (models:/..., runs:/...)")
    return None
