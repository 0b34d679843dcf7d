"""Algorithm registry: name -> Algorithm class, filled by the @register_algorithm decorator of each algorithm module
(importing the ssl_core.algorithms package imports them all).

Try it:
    python -c "from ssl_core.algorithms import list_algorithms; print(*list_algorithms(), sep='\\n')"
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TypeVar

from ssl_core.algorithms.base import Algorithm

A = TypeVar("A", bound=type[Algorithm])
ALGORITHMS: dict[str, type[Algorithm]] = {}


def register_algorithm(name: str) -> Callable[[A], A]:
    """Class decorator: register an Algorithm subclass under `name` (also sets cls.name)."""

    def decorator(cls: A) -> A:
        if name in ALGORITHMS:
            raise ValueError(f"algorithm {name!r} is already registered")
        if not dataclasses.is_dataclass(cls.Params):
            raise TypeError(f"algorithm {name!r}: Params must be a dataclass")
        cls.name = name
        ALGORITHMS[name] = cls
        return cls

    return decorator


def get_algorithm(name: str) -> type[Algorithm]:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise KeyError(f"unknown algorithm {name!r}; available: {', '.join(sorted(ALGORITHMS))}") from None


def list_algorithms() -> list[tuple[str, str, type]]:
    """(name, one-line description, Params dataclass) of every registered algorithm, sorted by name."""
    return [(name, cls.description, cls.Params) for name, cls in sorted(ALGORITHMS.items())]
