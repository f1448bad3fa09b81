"""backmap keeps freed memory in the process (glibc): blocks of a few MB allocated and freed over
and over come back from the heap instead of fresh pages the kernel must fault in and zero — the
system time that was larger than the arithmetic in vae_mc (backmap/allocator.py)."""
import os
import subprocess
import sys

import pytest

from backmap.allocator import keep_freed_memory

CHURN = """
import resource, numpy as np, backmap
from backmap.allocator import keep_freed_memory
print(keep_freed_memory())
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rng = np.random.default_rng(0)
for i in range(100):
    blocks = [np.ones(int(n)) for n in rng.integers(50_000, 2_000_000, 6)]  # 0.4–16 MB each
    del blocks
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 100)
"""


def _churn(**env) -> tuple[bool, float]:
    out = subprocess.run([sys.executable, "-c", CHURN], capture_output=True, text=True, check=True,
                         env={**os.environ, **env}).stdout.split()
    return out[0] == "True", float(out[1])


@pytest.mark.skipif(not keep_freed_memory(), reason="not glibc on Linux: the C library's own allocator is kept")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    kept, faults = _churn()
    default_kept, default_faults = _churn(BACKMAP_MALLOC="system")
    assert kept and not default_kept
    # here: 63 page faults per round against 868 with glibc's defaults (~6000 pages touched)
    assert faults < 0.5 * default_faults, (faults, default_faults)


@pytest.mark.skipif(not keep_freed_memory(), reason="not glibc on Linux: the C library's own allocator is kept")
def test_a_dask_workers_trim_setting_is_overridden():
    """distributed's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which also pins glibc's
    mmap threshold at 128 kB: every block of a few MB becomes a fresh mapping (here 3034 faults per
    round). backmap's setting at import undoes that (61)."""
    _kept, faults = _churn(MALLOC_TRIM_THRESHOLD_="65536")
    _default, default_faults = _churn(MALLOC_TRIM_THRESHOLD_="65536", BACKMAP_MALLOC="system")
    assert faults < 0.2 * default_faults, (faults, default_faults)
