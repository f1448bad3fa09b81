"""Torch's thread count for a block of work.

The tensors of one sampler step or one training environment are small: torch's fork-join
overhead across threads then dominates, and becomes severe when the other core is busy (building
hexane training sequences took 28–31 s with 2 threads on a loaded 2-core machine, 1.7–2.7 s with
one). Such work runs single-threaded; the caller's setting is restored afterwards."""
from __future__ import annotations

import contextlib
from typing import Iterator


@contextlib.contextmanager
def torch_threads(n: int | None = 1) -> Iterator[None]:
    """Run the block with ``n`` torch threads (None: unchanged), restoring the previous number."""
    import torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
