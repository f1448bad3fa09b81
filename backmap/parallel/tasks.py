"""Blocks of frames as tasks: run here or on a Dask cluster, kept in a :class:`PartStore` as they
finish, handed back in frame order.

A job (:class:`FrameJob`) is sent to every worker once (``client.scatter(broadcast=True)``) and set
up there once (its model built, its refiner prepared); tasks then carry only their frames. Randomness
belongs to frames (:func:`frame_rng`), not to processes, so the result does not depend on how many
workers there are or which one ran a block. A worker that dies mid-block is replaced by Dask and its
block run again elsewhere; a block is stored once, whichever attempt finishes it.
"""
from __future__ import annotations

import time
import warnings
import weakref
from typing import Any, Iterator, Protocol, Sequence

import numpy as np

from backmap.errors import BackmapError
from backmap.parallel.cluster import ClusterOptions, limit_threads, open_client
from backmap.parallel.store import BlockResult, PartStore
from backmap.progress import progress, say


class FrameJob(Protocol):
    """Work on blocks of frames: ``setup(threads)`` once per process (build models, prepare
    refiners; ``threads``: the worker's share of the cores, None in the main process), then
    ``run_block(items)`` per block, returning arrays and ``"rows"`` (JSON-able, one per item).
    What ``setup`` builds belongs to the process: keep it in ``_local…`` attributes of a
    :class:`ProcessLocal` job, which are not pickled when Dask copies the job to another worker.

    A job whose items depend on the ones before (``chained = True``: trajectory-mode backmapping)
    runs its blocks in order in this process; before each block, ``carry_over(result)`` gets the
    previous block's result (None before the first) — also when that block came from a resumed
    run's store."""

    def setup(self, threads: int | None = None) -> None: ...

    def run_block(self, items: Sequence[Any]) -> BlockResult: ...


class ProcessLocal:
    """Base of jobs whose attributes named ``_local…`` are built in each process (models, prepared
    refiners) and never pickled: a job travels as its inputs, not as its live state."""

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_local")}


def frame_rng(seed: int, frame: int, stream: int = 0) -> np.random.Generator:
    """The random stream of one frame of a run: the same whichever process draws it, whatever frames
    come before (``stream`` separates independent uses, e.g. generator and refiner)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(frame), int(stream)]))


def blocks_of(items: Sequence[Any], size: int) -> list[list[Any]]:
    """``items`` cut into consecutive blocks of ``size``."""
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def run_blocks(job: FrameJob, blocks: Sequence[Sequence[Any]], cluster: ClusterOptions | None = None,
               store: PartStore | None = None, description: str = "frames", unit: str = "frames",
               where: str = "cluster") -> Iterator[BlockResult]:
    """Every block's result, in block order. Blocks already in ``store`` are not run again (a
    resumed run says how many); new ones are put there as they finish (without a store they are
    kept in memory). With ``cluster`` distributed, blocks run on Dask workers."""
    cluster = cluster or ClusterOptions()
    done = set(store.done()) if store is not None else set()
    if store is not None and store.restarted:
        say(f"{store.directory}: left by a run with other inputs or settings; starting over")
    if done:
        n_done = sum(len(blocks[b]) for b in done)
        say(f"resuming: {n_done} of {sum(len(b) for b in blocks)} {unit} already done ({store.directory})")
    todo = [b for b in range(len(blocks)) if b not in done]
    kept: dict[int, BlockResult] = {}

    def keep(b: int, result: BlockResult) -> None:
        if store is not None:
            store.put(b, result)
        else:
            kept[b] = result

    chained = bool(getattr(job, "chained", False))
    if todo and chained and cluster.distributed:
        say(f"{where}: trajectory mode runs the frames in order, in this process (each frame needs the one "
            "before it); the cluster is not used")
    try:
        if todo and cluster.distributed and not chained:
            _run_on_cluster(job, blocks, todo, cluster, keep, description, where)
        elif todo:
            job.setup(None)
            last: tuple[int, BlockResult] | None = None
            for b in progress(todo, total=len(todo), description=description):
                if chained:  # the block goes on from the result of the one before (kept, or from the store)
                    before = last[1] if last is not None and last[0] == b - 1 else \
                        None if b == 0 else store.get(b - 1) if store is not None else kept[b - 1]
                    job.carry_over(before)
                result = job.run_block(blocks[b])
                keep(b, result)
                last = (b, result)
    except BaseException:
        if store is not None:
            store.discard_if_empty()
        raise
    for b in range(len(blocks)):
        yield store.get(b) if store is not None else kept.pop(b)


def _run_on_cluster(job: FrameJob, blocks, todo: list[int], cluster: ClusterOptions, keep, description: str,
                    where: str) -> None:
    from distributed import as_completed
    from distributed.client import FutureCancelledError
    from distributed.scheduler import KilledWorker

    with open_client(cluster, where) as client:
        shared = client.scatter(job, broadcast=True, hash=False)  # the job travels once per worker
        tag = f"backmap-{time.time_ns():x}"
        with warnings.catch_warnings():  # the frames are the tasks' inputs: they travel with them by design
            warnings.filterwarnings("ignore", message="Sending large graph", category=UserWarning)
            futures = client.map(_run_block, [shared] * len(todo), [list(blocks[b]) for b in todo],
                                 [cluster.threads_per_worker] * len(todo), key=[f"{tag}-block-{b}" for b in todo],
                                 retries=0)
        block_of = {f.key: b for f, b in zip(futures, todo)}
        stored: set[int] = set()
        try:
            # results come with their futures, gathered in batches (not a round trip each)
            finished = as_completed(futures, with_results=True, raise_errors=False)
            for future, result in progress(finished, total=len(todo), description=f"{description} "
                                           f"({len(client.scheduler_info()['workers'])} workers)"):
                b = block_of[future.key]
                if future.status == "error":
                    exc = result[1] if isinstance(result, tuple) else result
                    if isinstance(exc, KilledWorker):
                        raise BackmapError(f"{where}: block {b} (items {_span(blocks[b])}) killed every worker "
                                           "that ran it; run it alone to see why (too little memory?)") from None
                    raise exc
                if isinstance(result, FutureCancelledError) or future.status == "cancelled":
                    raise BackmapError(f"{where}: the cluster cancelled block {b}; are its workers alive?") from None
                if b not in stored:  # exactly once, whichever attempt finished it
                    keep(b, result)
                    stored.add(b)
                future.release()
        finally:
            client.cancel(futures)


#: jobs set up in this process: a job copied here from another worker (Dask moves data between
#: workers when one dies) is a new object and is set up again
_READY: "weakref.WeakValueDictionary[int, Any]" = weakref.WeakValueDictionary()


def _run_block(job: FrameJob, items: list[Any], threads: int) -> BlockResult:
    """On a worker: set the job up on its first block there, then run the block."""
    if _READY.get(id(job)) is not job:
        limit_threads(threads)
        job.setup(threads)
        _READY[id(job)] = job
    return job.run_block(items)


def _span(items: Sequence[Any]) -> str:
    ids = [getattr(i, "index", None) for i in items]
    ids = [i for i in ids if i is not None]
    return f"{ids[0]}–{ids[-1]}" if ids else f"{len(items)} items"
