"""The C allocator's settings for a training or evaluation process (docs/performance.md#the-allocator).

glibc serves every allocation above its mmap threshold (128 KiB at start, raised as large blocks
are freed) with a fresh mmap and gives it back on free, so each activation of a round costs page
faults and the kernel's zeroing of its pages again, every forward. Raising the threshold to its
maximum (32 MiB on 64-bit) and never trimming the heap keeps the freed memory in the process for
the next forward. The arithmetic is untouched (the same results bit for bit); where the C library
is not glibc nothing changes."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 1 << 30
_done = False


def keep_freed_memory() -> bool:
    """Apply the settings once per process; True where they took effect. T2I_RL_BENCH_MALLOC=0
    leaves the allocator as it is (the benchmark's switch)."""
    global _done
    if _done:
        return True
    if os.environ.get("T2I_RL_BENCH_MALLOC", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done


def release_freed_memory() -> bool:
    """Give the heap's free pages back to the system (glibc's malloc_trim(0)), once, between two
    phases of a round whose memory the second does not reuse: the bounded sampling graph's
    backward and the recompute of the round's other samples (bench/train/loop.py), so that the
    process's peak is the larger phase's, not their sum. The arithmetic is untouched; False where
    the C library has no malloc_trim."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return bool(trim(0))
