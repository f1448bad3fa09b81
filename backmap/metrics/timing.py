"""The time step τ between the selected frames of a trajectory, which dynamics metrics need.

τ comes from the frame times stored in the file (MDAnalysis' ``ts.time``; ``ts.dt`` is the spacing
of its first two frames) or from an override in ps per frame of the file; with a frame selection
``a:b:s`` it is ``s`` times the file's spacing. A selection that is not equally spaced in time (a
comma list, skipped frames, concatenated runs), a single frame, or a file without times and no
override has no τ: dynamics metrics then skip that trajectory and say why.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

#: relative tolerance on equal spacing (the times of .xtc files are float32)
SPACING_TOLERANCE = 1e-3


@dataclass(frozen=True)
class TimeStep:
    """τ (ps) between consecutive selected frames of one trajectory, or None with the reason."""

    tau: float | None
    #: where τ came from: "frame times" (the file) or "override" (``--dt`` / the recipe's ``dt``)
    source: str = "frame times"
    reason: str = ""
    frames: int = 0

    def describe(self) -> str:
        if self.tau is None:
            return f"no τ ({self.reason})"
        return f"τ = {self.tau:g} ps ({self.source})"

    def as_dict(self) -> dict:
        return asdict(self)


def frame_times(path: str | Path, frames: np.ndarray) -> np.ndarray | None:
    """Times (ps) of ``frames`` as stored in the file, or None when the file stores none
    (MDAnalysis then numbers the frames 1 ps apart, or a LAMMPS dump gives its step numbers)."""
    from backmap.system.io import _reader

    r = _reader(Path(path))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            times = np.array([ts.time for ts in r[np.asarray(frames, int).tolist()]], np.float64)
        if any("no dt information" in str(w.message) for w in caught):
            return None
        return times
    finally:
        r.close()


def time_step(path: str | Path, frames: np.ndarray, dt: float | None = None) -> TimeStep:
    """τ of the selected ``frames`` (indices into the file); ``dt`` overrides the file's times
    (ps between consecutive frames of the file)."""
    frames = np.asarray(frames, int)
    n = len(frames)
    if n < 2:
        return TimeStep(None, reason="a single frame, not a trajectory", frames=n)
    steps = np.diff(frames)
    if dt is not None:
        if not (steps == steps[0]).all() or steps[0] <= 0:
            return TimeStep(None, "override", "selected frames not equally spaced "
                                               f"(index steps {_few(np.unique(steps))})", n)
        return TimeStep(float(dt) * int(steps[0]), "override", frames=n)
    times = frame_times(path, frames)
    if times is None:
        return TimeStep(None, reason="the file stores no frame times; give the time step (--dt)", frames=n)
    gaps = np.diff(times)
    tau = float(times[-1] - times[0]) / (n - 1)
    tol = SPACING_TOLERANCE * abs(tau) + 4 * np.finfo(np.float32).eps * float(np.abs(times).max())
    if tau <= 0 or np.abs(gaps - tau).max() > tol:
        return TimeStep(None, reason=f"frames not equally spaced in time (gaps {_few(np.unique(gaps.round(6)))} ps)",
                        frames=n)
    return TimeStep(tau, frames=n)


def _few(values: np.ndarray, k: int = 4) -> str:
    shown = ", ".join(f"{v:g}" for v in values[:k])
    return shown + (", …" if len(values) > k else "")
