"""Files, progress and threads: outputs checked and locked before writing, atomic writes, trajectory frames, progress bars, torch threads.

Part of :mod:`backmap.api`, the one surface plugins import."""
from __future__ import annotations

from backmap.system.claim import OutputLock, check_outputs, claim_outputs  # noqa: F401
from backmap.system.io import Frame, atomic_path, check_gro_complete, write_frames  # noqa: F401
from backmap.engine.pipeline import write_text  # noqa: F401
from backmap.progress import heartbeat, progress  # noqa: F401
from backmap.threads import torch_threads  # noqa: F401
from backmap.devices import (host_random, on_device, openmm_platform_for, openmm_platforms, resolve_device,  # noqa: F401
                             to_host, torch_devices)

__all__ = ['Frame', 'OutputLock', 'atomic_path', 'check_gro_complete', 'check_outputs', 'claim_outputs', 'heartbeat', 'host_random', 'on_device', 'openmm_platform_for', 'openmm_platforms', 'resolve_device', 'to_host', 'torch_devices', 'progress',
           'torch_threads', 'write_frames', 'write_text']
