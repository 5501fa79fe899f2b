"""The process heap: keep freed memory for the next training step instead of handing it back to the OS.

glibc's malloc serves large blocks (a CIFAR feature map at batch 64 is
megabytes) with fresh ``mmap`` pages, or trims the heap as soon as they are
freed, so every training step touches new pages and pays a page fault per
4 KiB of every activation, gradient and temporary it allocates (AFD's
per-map reductions over the teacher's 27 maps were fault-bound on two CPU
cores). Raising the mmap and trim thresholds lets freed blocks be reused
step after step (``tests/test_runtime.py`` counts the faults); the memory
stays with the process until it ends, which a training job wants anyway.
"""

from __future__ import annotations

import ctypes
import sys

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 << 20  # glibc's upper limit on 64-bit: larger blocks still get their own mapping
_TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Set the thresholds for the rest of the process; False where the C library has no glibc ``mallopt``."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the allocator this process already uses
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
