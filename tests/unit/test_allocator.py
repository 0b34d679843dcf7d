"""ssl_core.allocator: with the thresholds raised, a freed 64 MiB tensor stays in the process for the next one;
with glibc's defaults it goes back to the OS (each in a fresh interpreter: the setting is process-wide)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from ssl_core import allocator
from ssl_core.allocator import keep_freed_memory
from ssl_core.config import Config

_SCRIPT = """
import sys, torch
from ssl_core import allocator
from ssl_core.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
x = torch.ones(16 * 2**20)  # 64 MiB, touched
before = rss()
del x
print((before - rss()) / 2**20)
"""

glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc's malloc")


def _released_mib(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


@glibc_only
def test_freed_memory_stays_in_the_process_only_when_kept() -> None:
    assert _released_mib("default") > 48
    assert _released_mib("keep") < 8


@glibc_only
def test_keeping_is_on_by_default_and_reports_success() -> None:
    assert Config().scaling.keep_freed_memory
    assert keep_freed_memory()


def test_configure_follows_the_setting() -> None:
    from ssl_core.config import ScalingConfig

    assert allocator.configure(ScalingConfig(keep_freed_memory=False)) is False
