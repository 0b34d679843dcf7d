"""An import made inside a function says why, in a comment on its line or on the line just above (e.g.
`# here: PyAV is absent on GPU machines`); consecutive imports (blank lines between them aside) share the comment
of the first. Imports belong at the
top: a deferred one hides what a module needs, and once hid import circles.

    .venv/bin/python -m pytest -q tests/unit/test_deferred_imports.py
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("ssl_core", "workflows", "bench")
# Tool directives say nothing about why.
_PRAGMA = re.compile(r"^(noqa\b.*|type:\s*ignore\b.*|pragma\b.*|isort:.*)$")


def _explained_lines(source: str) -> set[int]:
    """Lines holding a comment that is more than a tool directive."""
    lines = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            text = token.string.lstrip("#").strip()
            if text and not _PRAGMA.match(text):
                lines.add(token.start[0])
    return lines


def _function_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found.extend(n for n in ast.walk(node) if isinstance(n, ast.Import | ast.ImportFrom))
    return sorted(set(found), key=lambda n: n.lineno)  # nested functions are walked twice


def unexplained_imports(source: str) -> list[int]:
    """Line numbers of the function-level imports of `source` that no comment explains."""
    comments = _explained_lines(source)
    lines = source.splitlines()
    explained_ends: set[int] = set()  # the last lines of explained imports
    missing = []
    for node in _function_imports(ast.parse(source)):
        end = node.end_lineno or node.lineno
        previous = node.lineno - 1  # the last line above that is not blank
        while previous > 0 and not lines[previous - 1].strip():
            previous -= 1
        if any(line in comments for line in range(node.lineno - 1, end + 1)) or previous in explained_ends:
            explained_ends.add(end)
        else:
            missing.append(node.lineno)
    return missing


def test_a_deferred_import_without_a_comment_is_found() -> None:
    source = '''
import os


def explained():
    # here: torch is heavy and this path does not need it
    import torch
    from torch import nn

    from ssl_core import config
    import numpy  # here: the same reason
    return torch, nn, config, numpy, os


def bare():
    x = 1
    import json  # noqa: PLC0415
    return json, x


class Holder:
    async def method(self):
        from pathlib import Path

        def inner():
            import csv
            return csv

        return Path, inner
'''
    assert unexplained_imports(source) == [17, 23, 26]


def test_every_deferred_import_says_why() -> None:
    missing = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for line in unexplained_imports(path.read_text()):
                missing.append(f"{path.relative_to(ROOT)}:{line}")
    assert not missing, "imports inside functions without a comment saying why:\n" + "\n".join(missing)
