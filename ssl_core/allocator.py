"""Keep freed memory in the process: glibc's malloc then reuses a step's big buffers instead of handing them
back to the OS and page-faulting fresh ones in on the next step.

    python -c "from ssl_core.allocator import keep_freed_memory; print(keep_freed_memory())"

glibc serves allocations above its mmap threshold (128 KiB, adapting up to 32 MiB) with mmap and unmaps them
on free, and gives the heap's free top back above its trim threshold. A CPU training step allocates and frees
tensors of many MiB (activations, a batch's augmented views), so every step faults its memory in afresh: page
faults, costly in a virtual machine. PyTorch's CPU performance guide suggests jemalloc or tcmalloc (LD_PRELOAD)
for the same reason; raising glibc's two thresholds needs no preload. The price: the process keeps up to
_KEEP_BYTES of freed memory (its resident size stays near its peak). Set by `scaling.keep_freed_memory` in the
training and pretraining processes; bench.augment_speed measures with and without (docs/benchmarks.md).
"""

from __future__ import annotations

import ctypes
import platform
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ssl_core.config import ScalingConfig

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_KEEP_BYTES = 1 << 30  # heap top kept before trimming
_MMAP_ABOVE = 1 << 28  # allocations above this still get their own mapping


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; True if set, False without glibc (macOS,
    musl), where nothing changes."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_ABOVE)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))


def configure(scaling: ScalingConfig) -> bool:
    """The process's allocator as `scaling.keep_freed_memory` asks (called where a training process starts);
    True if freed memory is now kept."""
    return scaling.keep_freed_memory and keep_freed_memory()
