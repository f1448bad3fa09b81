"""Trajectory input and output through MDAnalysis, in GROMACS units (nm, ps), written atomically."""
from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from backmap.errors import BackmapError
from backmap.system.pbc import box_dimensions, box_vectors

READ_SUFFIXES = (".gro", ".pdb", ".xtc", ".trr")
WRITE_SUFFIXES = (".gro", ".pdb", ".xtc", ".trr")


@dataclass
class Frame:
    """One configuration: positions (n, 3) in nm, box as (a, b, c, α, β, γ) in nm/degrees."""

    positions: np.ndarray
    dimensions: np.ndarray
    time: float = 0.0
    index: int = 0
    forces: np.ndarray | None = None  # kJ/mol/nm when the file has them

    @property
    def box(self) -> np.ndarray:
        """(3, 3) box vectors in nm (rows)."""
        return box_vectors(self.dimensions)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); rename it into place only if the
    block succeeds, so that no half-written output is ever left behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; outputs get the usual permissions
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _reader(path: Path):
    import MDAnalysis as mda

    if not path.is_file():
        raise BackmapError("trajectory file not found", source=path)
    if path.suffix.lower() not in READ_SUFFIXES:
        raise BackmapError(f"cannot read {path.suffix!r} trajectories (use one of {', '.join(READ_SUFFIXES)})",
                           source=path)
    if path.stat().st_size == 0:
        raise BackmapError("the trajectory file is empty", source=path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return mda.coordinates.core.reader(str(path))
    except Exception as exc:  # MDAnalysis raises many types for corrupt files
        raise BackmapError(f"cannot read trajectory: {exc}", source=path) from exc


def trajectory_info(path: str | Path) -> tuple[int, int]:
    """(number of atoms, number of frames) of a trajectory file."""
    r = _reader(Path(path))
    try:
        return r.n_atoms, r.n_frames
    finally:
        r.close()


def read_frames(path: str | Path, n_atoms: int | None = None, frames: Sequence[int] | slice | None = None,
                expect: str = "topology") -> Iterator[Frame]:
    """Frames of a trajectory in nm. ``n_atoms`` checks the atom count against ``expect``."""
    path = Path(path)
    r = _reader(path)
    try:
        if n_atoms is not None and r.n_atoms != n_atoms:
            raise BackmapError(f"{r.n_atoms} atoms in the trajectory but {n_atoms} in the {expect}", source=path)
        if r.n_frames == 0:
            raise BackmapError("the trajectory has no frames", source=path)
        selected = r if frames is None else r[frames]
        for ts in selected:
            with warnings.catch_warnings():  # .gro files have no time step; 0 is right for them
                warnings.simplefilter("ignore")
                time = float(ts.time)
            if ts.dimensions is None:
                raise BackmapError(f"frame {ts.frame} has no box", source=path)
            # MDAnalysis: positions in Å, forces in kJ/mol/Å
            forces = ts.forces.astype(np.float64) * 10.0 if getattr(ts, "has_forces", False) else None
            yield Frame(
                positions=ts.positions.astype(np.float64) / 10.0,
                dimensions=np.r_[ts.dimensions[:3] / 10.0, ts.dimensions[3:]].astype(np.float64),
                time=time,
                index=int(ts.frame),
                forces=forces,
            )
    finally:
        r.close()


def parse_frames(spec: str | None, n_frames: int, source: str) -> np.ndarray:
    """Frame indices from a slice string ``"start:stop:step"`` or a comma list ``"0,5,9"``."""
    if spec is None or str(spec).strip() in ("", ":"):
        return np.arange(n_frames)
    spec = str(spec)
    try:
        if ":" in spec:
            parts = [int(p) if p.strip() else None for p in spec.split(":")]
            return np.arange(n_frames)[slice(*parts)]
        idx = np.array([int(p) for p in spec.split(",")])
    except ValueError:
        raise BackmapError(f"frames: cannot parse {spec!r}; use 'start:stop:step' or '0,5,9'", source=source) from None
    bad = idx[(idx < -n_frames) | (idx >= n_frames)]
    if len(bad):
        raise BackmapError(f"frames: frame {bad[0]} out of range (the trajectory has {n_frames})", source=source)
    return np.arange(n_frames)[idx]


def _universe(names, resnames, resids, n_atoms, forces: bool = False):
    import MDAnalysis as mda

    resids = np.asarray(resids)
    starts = np.r_[True, resids[1:] != resids[:-1]] if n_atoms else np.zeros(0, bool)
    resindex = np.cumsum(starts) - 1
    n_res = int(resindex.max()) + 1 if n_atoms else 0
    u = mda.Universe.empty(n_atoms, n_residues=n_res, atom_resindex=resindex, trajectory=True, forces=forces)
    u.add_TopologyAttr("name", [str(n) for n in names])
    u.add_TopologyAttr("resname", [str(resnames[i]) for i in np.flatnonzero(starts)])
    u.add_TopologyAttr("resid", resids[starts])
    return u


def write_frames(path: str | Path, frames: Iterable[Frame], names: Sequence[str], resnames: Sequence[str],
                 resids: Sequence[int]) -> int:
    """Write frames (.gro, .pdb, .xtc, .trr — full precision; several frames in one .gro/.pdb are written one after the
    other, as GROMACS does) atomically. Returns the number of frames written."""
    import MDAnalysis as mda

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WRITE_SUFFIXES:
        raise BackmapError(f"cannot write {suffix!r} files (use one of {', '.join(WRITE_SUFFIXES)})", source=path)
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise BackmapError("nothing to write: no frames", source=path)
    frames = itertools.chain([first], frames)
    with_forces = suffix == ".trr" and first.forces is not None
    u = _universe(names, resnames, resids, len(names), forces=with_forces)
    n = 0
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if suffix == ".gro":  # MDAnalysis writes one frame per .gro; concatenate them
            with open(tmp, "w") as out, tempfile.TemporaryDirectory() as scratch:
                one = Path(scratch) / "frame.gro"
                for frame in frames:
                    _set(u, frame)
                    u.atoms.write(str(one))
                    out.write(one.read_text())
                    n += 1
        else:
            kwargs = {}
            if suffix == ".pdb":  # MDAnalysis reads the box of a multi-model PDB from no model: one frame, no MODEL
                frames = list(frames)
                kwargs = {"multiframe": len(frames) > 1}
            with mda.Writer(str(tmp), n_atoms=len(names), **kwargs) as w:
                for frame in frames:
                    _set(u, frame)
                    w.write(u.atoms)
                    n += 1
    return n


def _set(u, frame: Frame) -> None:
    u.atoms.positions = np.asarray(frame.positions, np.float32) * 10.0
    if u.trajectory.ts.has_forces and frame.forces is not None:  # kJ/mol/nm → MDAnalysis' kJ/mol/Å
        u.atoms.forces = np.asarray(frame.forces, np.float32) / 10.0
    u.dimensions = np.r_[np.asarray(frame.dimensions[:3]) * 10.0, frame.dimensions[3:]]
    u.trajectory.ts.time = frame.time


__all__ = ["Frame", "atomic_path", "box_dimensions", "parse_frames", "read_frames", "trajectory_info", "write_frames"]
