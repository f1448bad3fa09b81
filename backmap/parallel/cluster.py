"""Where frame tasks run: in this process, on a local Dask cluster, on a running Dask scheduler, or
on a batch-scheduler cluster through ``dask-jobqueue``. We do not write a distribution layer:
Dask schedules, retries tasks of workers that die and serves the dashboard."""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel, ConfigDict, Field, model_validator

from backmap.errors import BackmapError
from backmap.progress import say

#: the batch systems ``scheduler: <name>`` reaches through dask-jobqueue
JOBQUEUE = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "lsf": "LSFCluster", "sge": "SGECluster",
            "htcondor": "HTCondorCluster"}
#: the command each batch system submits jobs with (must be on PATH where backmap runs)
SUBMIT = {"slurm": "sbatch", "pbs": "qsub", "lsf": "bsub", "sge": "qsub", "htcondor": "condor_submit"}


class ClusterOptions(BaseModel):
    """How frames are spread over processes (``--workers`` / ``--scheduler``, recipe key ``cluster``).

    - neither: every frame in this process (torch uses the machine's threads);
    - ``workers: N``: a local Dask cluster of N single-threaded worker processes;
    - ``scheduler: tcp://host:8786`` (or a scheduler file, ``.json``): a running Dask cluster;
    - ``scheduler: slurm`` (pbs, lsf, sge, htcondor): a cluster of batch jobs through dask-jobqueue,
      configured in ``~/.config/dask/jobqueue.yaml`` (docs/scale-out.md), ``workers`` jobs.
    """

    model_config = ConfigDict(extra="forbid")
    workers: int | None = Field(None, ge=1, description="local worker processes (or batch jobs with a jobqueue "
                                                        "scheduler); default: none, all frames in this process")
    scheduler: str | None = Field(None, description="address (tcp://…) or scheduler file (.json) of a running Dask "
                                                    "scheduler, or slurm/pbs/lsf/sge/htcondor (dask-jobqueue)")
    threads_per_worker: int = Field(1, ge=1, description="torch/OpenMM threads of each worker process")
    frames_per_task: int = Field(1, ge=1, description="frames a task handles (more: less scheduling overhead)")

    @model_validator(mode="after")
    def _one_kind(self) -> "ClusterOptions":
        if self.scheduler is not None and self.scheduler.lower() not in JOBQUEUE and self.workers is not None:
            raise ValueError("give either 'workers' (a local cluster) or 'scheduler' (a running one), not both")
        cores = usable_cores()
        if self.scheduler is None and self.workers is not None and self.workers * self.threads_per_worker > cores:
            raise ValueError(f"{self.workers} local workers × {self.threads_per_worker} threads > the {cores} cores "
                             "this process may use: a local cluster runs at most one thread per core (give a "
                             "'scheduler' for more processes than that)")
        return self

    @property
    def distributed(self) -> bool:
        return self.workers is not None or self.scheduler is not None


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, else the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def open_client(options: ClusterOptions, where: str = "cluster") -> Iterator[Any]:
    """A ``distributed.Client`` for ``options`` (which must be :attr:`~ClusterOptions.distributed`),
    closed (and a cluster it started shut down) on exit. Prints where the dashboard is."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:  # pragma: no cover - a dependency of backmap
        raise BackmapError(f"{where}: Dask's 'distributed' is not installed (pip install distributed)") from None
    cluster = None
    sched = options.scheduler
    quiet = {"silence_logs": logging.ERROR}
    logging.getLogger("distributed").setLevel(logging.WARNING)  # not its INFO lines on every close
    try:
        if sched is None:
            cluster = LocalCluster(n_workers=options.workers, threads_per_worker=1, processes=True,
                                   dashboard_address=":0", **quiet)
            client = Client(cluster)
        elif sched.lower() in JOBQUEUE:
            cluster = _jobqueue_cluster(sched.lower(), options, where)
            client = Client(cluster)
        elif sched.endswith(".json"):
            if not Path(sched).is_file():
                raise BackmapError(f"{where}: no Dask scheduler file {sched} (--scheduler, recipe key cluster.scheduler)")
            client = Client(scheduler_file=sched, timeout="10s")
        else:
            client = Client(sched, timeout="10s")
    except BackmapError:
        raise
    except (OSError, TimeoutError) as exc:
        if cluster is not None:
            cluster.close()
        raise BackmapError(f"{where}: cannot reach the Dask scheduler {sched!r} (--scheduler, recipe key "
                           f"cluster.scheduler): {exc}") from None
    try:
        n = len(client.scheduler_info().get("workers", {}))
        link = client.dashboard_link
        say(f"dask: {n} worker{'s' if n != 1 else ''} at {client.scheduler.address}"
            + (f"; dashboard {link}" if link else "") + ("; waiting for workers (queued jobs?)" if not n else ""))
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _jobqueue_cluster(kind: str, options: ClusterOptions, where: str):
    try:
        import dask_jobqueue
    except ImportError:
        raise BackmapError(f"{where}: --scheduler {kind} needs dask-jobqueue (pip install 'backmap[jobqueue]')") from None
    try:
        cluster = getattr(dask_jobqueue, JOBQUEUE[kind])()
    except (ValueError, TypeError) as exc:  # e.g. no cores/memory in ~/.config/dask/jobqueue.yaml
        first = str(exc).strip().splitlines()[0]
        raise BackmapError(f"{where}: --scheduler {kind}: {first} (configure ~/.config/dask/jobqueue.yaml, "
                           "docs/scale-out.md)") from None
    if shutil.which(SUBMIT[kind]) is None:
        cluster.close()
        raise BackmapError(f"{where}: --scheduler {kind}: {SUBMIT[kind]} not found; run backmap on a machine "
                           f"of the {kind.upper()} cluster (a login node)")
    cluster.scale(jobs=options.workers or 1)
    return cluster


def limit_threads(threads: int) -> None:
    """Make this (worker) process use ``threads`` threads for torch, BLAS/OpenMP and OpenMM, so
    that worker processes do not fight over the cores."""
    import torch

    os.environ["OPENMM_CPU_THREADS"] = str(threads)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except ImportError:  # optional: without it the BLAS/OpenMP pools keep their size
        pass
