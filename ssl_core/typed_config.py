"""Typed YAML configuration without torch: the one builder every config file goes through.

A config file is a tree of dataclasses. Each field is declared with `setting(default, doc)`: its one-line doc sits
next to its type and default, and `describe` turns them into the key reference (`vidssl config --explain`,
docs/config.md). `build` turns a YAML mapping into the dataclasses with every value type-checked, then runs each
section's own `check()` (declared beside its fields); every error names its key path
(`data.synthetic.classes: expected int, got 'ten'`). Kept free of torch so that Ray Data workers re-encoding
videos need not import it:

    python -c "from ssl_core.typed_config import SyntheticConfig, build; \
print(build(SyntheticConfig, {'classes': 4}, 'data.synthetic'))"
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ssl_core.user_errors import UserError, read_text

log = logging.getLogger("vidssl.data")

MISSING: Any = dataclasses.MISSING


class ConfigError(UserError, ValueError):
    """A configuration problem; the message starts with the offending key path."""


class FieldError(ValueError):
    """A section's check() rejecting one of its keys; `build` prefixes the section's path."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


def require(ok: bool, key: str, message: str) -> None:
    """In a section's check(): `key` (relative to the section, "" for the section itself) is wrong unless `ok`."""
    if not ok:
        raise FieldError(key, message)


def setting(default: Any = MISSING, doc: str = "", *, factory: Callable[[], Any] | Any = MISSING) -> Any:
    """A config field and its one-line documentation (shown by `vidssl config --explain` and in docs/config.md)."""
    return field(default=default, default_factory=factory, metadata={"doc": doc})


@dataclass
class SyntheticConfig:
    """The generated action dataset written to a dataset root when it has no manifest.csv (the demo's default)."""

    enabled: bool = setting(False, "generate the synthetic action dataset into the root when it has no manifest.csv")
    classes: int = setting(8, "number of action classes")
    videos_per_class: int = setting(30, "videos generated per class")
    frames: int = setting(32, "frames per generated video")
    size: int = setting(80, "frame side in pixels")
    fps: int = setting(16, "frame rate of the generated videos")
    seed: int = setting(0, "seed of the generator: the same seed writes the same videos")

    def check(self) -> None:
        require(self.classes >= 2, "classes", "must be >= 2")
        require(self.videos_per_class >= 2, "videos_per_class", "must be >= 2")

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
    if not Path(path).exists():
        raise ConfigError(f"config file not found: {path}")
    if Path(path).is_dir():
        raise ConfigError(f"{path}: is a folder, not a config file (a YAML file such as configs/demo.yaml)")
    try:
        raw = yaml.safe_load(read_text(Path(path), ConfigError)) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return raw


def load_file(cls: type, path: str | Path) -> Any:
    """A whole file as dataclass `cls`, checked; an error names the key and the file."""
    raw = read_config_file(path)
    try:
        return build(cls, raw, "")
    except ConfigError as err:
        raise ConfigError(f"{err} (in {path})") from err


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
    if not key:
        return path
    return f"{path}.{key}" if path else key


def build(cls: type, raw: Any, path: str) -> Any:
    """Dataclass `cls` from a mapping, checked: unknown or missing keys, wrong types and values that the section's
    check() rejects are errors naming `path.key`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in raw:
        if key not in fields:
            raise ConfigError(f"{join(path, str(key))}: unknown key; known: {sorted(fields)}")
    for name, f in fields.items():
        if name not in raw and f.default is MISSING and f.default_factory is MISSING:
            raise ConfigError(f"{join(path, name)}: required")
    kwargs = {key: coerce(value, hints[key], join(path, key)) for key, value in raw.items()}
    try:
        section = cls(**kwargs)
    except (TypeError, ValueError) as err:  # range checks in a __post_init__ (e.g. AugmentConfig)
        raise ConfigError(f"{path or 'config'}: {err}") from err
    return checked(section, path)


def checked(section: Any, path: str) -> Any:
    """`section` once its own check() (where it declares one) passed; a rejected key is named `path.key`."""
    check = getattr(section, "check", None)
    if check is not None:
        try:
            check()
        except FieldError as err:
            raise ConfigError(f"{join(path, err.key) or 'config'}: {err.message}") from err
    return section


def coerce(value: Any, tp: Any, path: str) -> Any:
    """`value` checked against type hint `tp` (dataclass, union, dict, list, Any, bool, int, float, str)."""
    if dataclasses.is_dataclass(tp):
        return build(tp, value if value is not None else {}, path)  # type: ignore[arg-type]
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return coerce(value, inner[0], path)
        for alternative in inner:
            try:
                return coerce(value, alternative, path)
            except ConfigError:
                continue
        raise ConfigError(f"{path}: expected {type_name(tp)}, got {value!r}")
    if origin is dict:
        if value is None:  # `key:` with nothing after it, as for a section
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        _, value_type = typing.get_args(tp) or (str, Any)
        return {str(k): coerce(v, value_type, join(path, str(k))) for k, v in value.items()}
    if origin is list:
        if value is None:
            return []
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        (item_type,) = typing.get_args(tp) or (Any,)
        return [coerce(v, item_type, f"{path}[{i}]") for i, v in enumerate(value)]
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


# --- the key reference ---------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyDoc:
    """One documented key: its dotted name, type, default (as YAML) and one-line doc."""

    key: str
    type: str
    default: str
    doc: str


def describe(cls: type, path: str) -> list[KeyDoc]:
    """Every key of dataclass `cls` under `path`, sub-sections (a row, then their keys) in declaration order."""
    hints = typing.get_type_hints(cls)
    rows: list[KeyDoc] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp, key, doc = hints[f.name], join(path, f.name), f.metadata.get("doc", "")
        if dataclasses.is_dataclass(tp):
            rows.append(KeyDoc(key, "section", "", doc))
            rows += describe(tp, key)  # type: ignore[arg-type]
            continue
        rows.append(KeyDoc(key, type_name(tp), _default_text(f), doc))
    return rows


def type_name(tp: Any) -> str:
    """A type hint as written in the reference: `int`, `str | None`, `dict[str, Any]`, `list[str]`."""
    if tp is type(None):
        return "None"
    if tp is Any:
        return "Any"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return f"{origin.__name__}[{', '.join(type_name(a) for a in typing.get_args(tp))}]"
    return getattr(tp, "__name__", str(tp))


def _default_text(f: dataclasses.Field[Any]) -> str:
    if f.default is not MISSING:
        value = f.default
    elif f.default_factory is not MISSING:
        value = f.default_factory()
    else:
        return "required"
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("...").strip()
