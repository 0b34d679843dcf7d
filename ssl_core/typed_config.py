"""Typed YAML configuration without torch: what training (ssl_core.config) and re-encoding (workflows.reencode) share.

Sections are dataclasses; a YAML mapping becomes them with every value type-checked, and every error names
its key path (`data.synthetic.classes: expected int, got 'ten'`). Kept free of torch so that Ray Data workers
re-encoding videos need not import it:

    python -c "from ssl_core.typed_config import SyntheticConfig, build; \
print(build(SyntheticConfig, {'classes': 4}, 'data.synthetic'))"
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger("vidssl.data")


class ConfigError(ValueError):
    """A configuration problem; the message starts with the offending key path."""


@dataclass
class SyntheticConfig:
    """The generated action dataset written to a dataset root when it has no manifest.csv (the demo's default)."""

    enabled: bool = False
    classes: int = 8
    videos_per_class: int = 30
    frames: int = 32
    size: int = 80
    fps: int = 16
    seed: int = 0

    def ensure(self, root: str | Path) -> bool:
        """Generate the dataset into `root` if enabled and missing; True if this call generated it."""
        if not self.enabled or (Path(root) / "manifest.csv").exists():
            return False
        from ssl_core.data import synthetic  # PyAV: only when there is something to write

        log.info("generating the synthetic dataset in %s", root)  # expected on first use: not a warning
        synthetic.generate(Path(root), classes=self.classes, videos_per_class=self.videos_per_class,
                           seed=self.seed, frames=self.frames, size=self.size, fps=self.fps)
        return True


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A config file as its raw mapping of sections, not yet validated (callers may add keys first)."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError as err:
        raise ConfigError(f"config file not found: {path}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return raw


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set `a.b.c=value` (value parsed as YAML) in a raw mapping, creating sections on the way."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.lr=0.1")
    value = yaml.safe_load(text) if text else None
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{key}: {part} is not a section")
    node[parts[-1]] = value


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def build(cls: type, raw: Any, path: str) -> Any:
    """Dataclass `cls` from a mapping; unknown keys and wrong types are errors naming `path.key`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            raise ConfigError(f"{join(path, key)}: unknown key; known: {sorted(names)}")
    kwargs = {key: coerce(value, hints[key], join(path, key)) for key, value in raw.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:  # a section's own range checks (e.g. AugmentConfig)
        raise ConfigError(f"{path or 'config'}: {err}") from err


def coerce(value: Any, tp: Any, path: str) -> Any:
    """`value` checked against type hint `tp` (dataclass, optional, dict, Any, bool, int, float, str)."""
    if dataclasses.is_dataclass(tp):
        return build(tp, value if value is not None else {}, path)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0], path)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is bool and isinstance(value, bool):
        return value
    if tp is float and is_number:
        return float(value)
    if tp is int and is_number and isinstance(value, int):
        return value
    if tp is str and isinstance(value, str):
        return value
    raise ConfigError(f"{path}: expected {getattr(tp, '__name__', tp)}, got {value!r}")
