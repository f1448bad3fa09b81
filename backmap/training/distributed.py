"""Data-parallel training across processes: what ``torch.nn.parallel.DistributedDataParallel``
does (parameters broadcast from rank 0 once, gradients all-reduced before every optimizer step, gloo
on CPU), done by the core's training loop so that it works for every :class:`NetworkGenerator`.

Why not wrap the networks in ``DistributedDataParallel`` itself: a generator's ``train_step`` owns
its optimizer steps over several networks that are not called through one ``forward`` (the
equivariant encoder, its head, the VAE's latent networks), and the last batch of an epoch splits
unevenly. The loop therefore all-reduces the gradients itself, each process's share weighted by the
size of its part of the loss (its atoms), so that the update equals that of one process on the
whole global batch: a run on 2 processes follows the loss curve of a run on 1 at the same
``batch_size`` (every random draw is made for the global batch and sliced, see
:meth:`~backmap.training.loop.TrainingLoop.local`).

Launch with ``torchrun --nproc-per-node N $(which backmap) run recipe.yaml --steps train``
(docs/scale-out.md); without torchrun everything here is the identity.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch

from backmap.errors import BackmapError


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place among the training processes (``size`` 1: a serial run)."""

    rank: int = 0
    size: int = 1

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """The process that writes checkpoints, logs, the model and prints."""
        return self.rank == 0

    def rows(self, n: int) -> tuple[np.ndarray, bool]:
        """This process's rows of a global batch of ``n`` (contiguous shares, the first ones one
        larger), and whether the share is empty — then row 0 stands in with weight 0, so that every
        process still runs the same collective operations."""
        if not self.active:
            return np.arange(n), False
        mine = np.array_split(np.arange(n), self.size)[self.rank]
        return (mine, False) if len(mine) else (np.zeros(1, np.int64), True)

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum over processes (in place; float64 for the bookkeeping)."""
        if self.active:
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor

    def broadcast_parameters(self, parameters: Iterable[torch.Tensor]) -> None:
        """Every process starts from rank 0's parameters (as DistributedDataParallel does)."""
        if not self.active:
            return
        with torch.no_grad():
            for p in parameters:
                torch.distributed.broadcast(p.data, src=0)

    def reduce_gradients(self, parameters: Iterable[torch.Tensor], weight: float) -> float:
        """Replace each parameter's gradient by the weighted mean over processes,
        ``Σ_r w_r g_r / Σ_r w_r`` (``weight`` = this process's share of the loss normaliser, e.g.
        its atoms), in one all-reduce. A gradient that no process has stays ``None`` (an optimizer
        skips it, as in a serial run). Returns ``Σ_r w_r``."""
        params = list(parameters)
        if not self.active:
            return weight
        has = torch.tensor([p.grad is not None for p in params] + [0.0], dtype=torch.float64)
        has[-1] = weight
        self.all_sum(has)
        total = float(has[-1])
        if total <= 0:
            raise BackmapError("distributed training: a batch with no atoms on any process")
        used = [p for p, h in zip(params, has[:-1]) if h > 0]
        for p in used:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if not used:
            return total
        flat = torch.cat([p.grad.reshape(-1) for p in used]) * (weight / total)
        self.all_sum(flat)
        offset = 0
        for p in used:
            k = p.grad.numel()
            p.grad.copy_(flat[offset:offset + k].view_as(p.grad))
            offset += k
        return total

    def average(self, stats: dict[str, float], weight: float) -> dict[str, float]:
        """Logged numbers averaged over processes with the same weights as the gradients."""
        if not self.active or not stats:
            return stats
        keys = sorted(stats)
        values = torch.tensor([stats[k] * weight for k in keys] + [weight], dtype=torch.float64)
        self.all_sum(values)
        total = float(values[-1])
        return {k: float(v) / total if total > 0 else float("nan") for k, v in zip(keys, values[:-1])}

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()


SERIAL = ProcessGroup()


def launched_by_torchrun() -> bool:
    """``torchrun`` (or any launcher of the same environment contract) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def join_process_group() -> ProcessGroup:
    """Join the processes ``torchrun`` started (gloo: CPU), or the serial group without it."""
    if not launched_by_torchrun():
        return SERIAL
    if not torch.distributed.is_initialized():
        try:
            torch.distributed.init_process_group("gloo")
        except Exception as exc:  # noqa: BLE001 — rendezvous failures come in many types
            raise BackmapError(f"distributed training: cannot join the torchrun process group ({exc})") from None
    return current_group()


def current_group() -> ProcessGroup:
    """The process group this process has joined (serial if none)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return ProcessGroup(torch.distributed.get_rank(), torch.distributed.get_world_size())
    return SERIAL
