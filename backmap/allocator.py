"""Keep freed memory in the process instead of handing it back to the kernel (glibc malloc).

Monte Carlo moves allocate and free tensors of a few MB thousands of times a second (trial
configurations, network activations of hundreds of rows). With glibc's defaults each such block
comes from fresh ``mmap`` pages or a heap that was just trimmed, and the kernel zeroes every page
again on first touch: vae_mc on sPS at 32 trials spent 2100 s of system time against 1436 s of
user time (1.3·10⁹ page faults). A high mmap threshold and trim threshold keep those blocks in the
heap for reuse: system time drops to a few per cent, results are bit for bit the same.

Dask makes it worse: distributed's nanny starts every worker with ``MALLOC_TRIM_THRESHOLD_=65536``,
which also pins the mmap threshold at 128 kB, so every block above that is a fresh mapping (the
2 100 s above were on 2 workers). Setting both thresholds here overrides that.

Applied once at ``import backmap`` (so Dask workers get it too); ``BACKMAP_MALLOC=system`` keeps
the C library's defaults. Other platforms and C libraries are left alone.
"""
from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
KEEP_BYTES = 1 << 30
"""Blocks below 1 GiB come from the heap, and up to 1 GiB of free heap top is kept."""
FALLBACK_MMAP_BYTES = 32 << 20
"""The largest mmap threshold older glibc accepts (HEAP_MAX_SIZE / 2 on 64-bit)."""


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (``mallopt``); True if they were set. The trim
    threshold is set only once an mmap threshold was accepted: a fixed trim threshold with the
    default 128 kB mmap threshold would make every large block an mmap (far worse)."""
    if os.environ.get("BACKMAP_MALLOC", "").lower() == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, …)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if not (mallopt(M_MMAP_THRESHOLD, KEEP_BYTES) or mallopt(M_MMAP_THRESHOLD, FALLBACK_MMAP_BYTES)):
        return False
    return bool(mallopt(M_TRIM_THRESHOLD, KEEP_BYTES))
