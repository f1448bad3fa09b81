"""Frame-parallel execution: blocks of frames as tasks, here or on a Dask cluster (local processes,
a running scheduler, or SLURM/PBS/LSF through dask-jobqueue), kept on disk as they finish so that a
killed run resumes (docs/scale-out.md)."""
from backmap.parallel.cluster import ClusterOptions, open_client
from backmap.parallel.store import PartStore, file_identity
from backmap.parallel.tasks import FrameJob, ProcessLocal, blocks_of, frame_rng, run_blocks

__all__ = ["ClusterOptions", "FrameJob", "PartStore", "ProcessLocal", "blocks_of", "file_identity", "frame_rng",
           "open_client", "run_blocks"]
