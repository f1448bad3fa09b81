"""Trajectory input and output through MDAnalysis, in GROMACS units (nm, ps), written atomically."""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import socket
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from backmap.errors import BackmapError
from backmap.system.frame_checks import check_box, check_near_box, check_xdr_frames
from backmap.system.pbc import box_dimensions, box_vectors

WRITE_SUFFIXES = (".gro", ".pdb", ".xtc", ".trr")
#: LAMMPS suffixes MDAnalysis does not know by extension (it knows .lammpsdump and .data itself)
LAMMPS_SUFFIXES = {".lammpstrj": "LAMMPSDUMP", ".dump": "LAMMPSDUMP", ".lammpsdump": "LAMMPSDUMP",
                   ".lmp": "DATA", ".data": "DATA"}
#: MDAnalysis readers that take Python objects, streams or explicit options, never a file by its suffix
_NOT_FILE_FORMATS = {"CHAIN", "MEMORY", "CHEMFILES", "IMD"}
#: LAMMPS data files' ``Atoms # style`` hint → columns for MDAnalysis, which otherwise guesses
#: full (7 columns) or molecular (else) and so misreads atomic or charge files
_DATA_COLUMNS = {"atomic": "id type x y z", "charge": "id type charge x y z", "bond": "id resid type x y z",
                 "angle": "id resid type x y z", "molecular": "id resid type x y z",
                 "full": "id resid type charge x y z"}
#: forces MDAnalysis leaves in the file's units → kJ/mol/Å: LAMMPS dumps in ``units real`` (kcal/mol/Å)
_FORCE_TO_KJ = {"LAMMPSDUMP": 4.184}


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


#: marks temporaries of :func:`atomic_path`: ``.NAME.backmap-tmp-PID@HOST-XXXX.SUFFIX``
_TMP_TAG = ".backmap-tmp-"
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); rename it into place only if the
    block succeeds, so that no half-written output is ever left behind.

    A run killed outright (``kill -9``, power loss) cannot delete its temporary, so the name says
    whose it is: ``.NAME.backmap-tmp-PID@HOST-XXXX.SUFFIX``. Before writing, temporaries of the
    same target left by processes of this host that no longer exist are removed: a killed run's
    outputs are started again from scratch when the target is written next — writing never resumes
    inside a half-written file. Temporaries of live processes (two runs writing into one folder),
    of other hosts (a shared file system) and of older backmap versions are left alone."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{_TMP_TAG}{os.getpid()}@{_HOST}-", suffix=path.suffix,
                               dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; outputs get the usual permissions
        os.replace(tmp, path)
    except OSError as exc:  # an OS write error (ENOSPC from a plain write) names no file: name the output
        if exc.errno is not None and (exc.filename is None or str(exc.filename) == str(tmp)):
            exc.filename = str(path)
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _remove_stale_temporaries(path: Path) -> None:
    """Delete ``path``'s temporaries whose writer (a process of this host) is gone."""
    prefix = f".{path.name}{_TMP_TAG}"
    with os.scandir(path.parent) as entries:
        for entry in entries:
            if not entry.name.startswith(prefix) or not entry.name.endswith(path.suffix):
                continue
            owner, _, _ = entry.name[len(prefix):].partition("-")
            pid, _, host = owner.partition("@")
            if host == _HOST and pid.isdigit() and not _process_alive(int(pid)):
                Path(entry.path).unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists but belongs to another user
        return True
    return True


def check_finite(positions: np.ndarray, dimensions: np.ndarray | None, frame: int, source: str | Path,
                 names: Sequence[str] | None = None) -> None:
    """Refuse a frame with a NaN or infinite coordinate or box value: MDAnalysis, the SVD of the
    alignment and the force field fail far away (SIGFPE, LinAlgError) or silently spread it. Names
    the frame (0-based, as ``--frames`` counts) and the first bad atom (1-based, as .gro files)."""
    if np.isfinite(positions).all() and (dimensions is None or np.isfinite(dimensions).all()):
        return
    rows = ~np.isfinite(positions).all(axis=-1)
    if rows.any():
        i = int(np.argmax(rows))
        value = positions[i][~np.isfinite(positions[i])][0]
        name = f" ({names[i]})" if names is not None and i < len(names) else ""
        raise BackmapError(f"frame {frame}: atom {i + 1}{name} has a non-finite coordinate ({value})", source=source)
    raise BackmapError(f"frame {frame}: the box has a non-finite value ({' '.join(map(str, dimensions))})",
                       source=source)


def read_formats() -> dict[str, str]:
    """Readable suffix (lower case, with the dot) → MDAnalysis format: every coordinate reader
    MDAnalysis registers (it picks them by upper-cased suffix) plus the usual LAMMPS suffixes."""
    from MDAnalysis import _READERS  # MDAnalysis' registry of readers, filled as it defines them

    formats = {f".{name.lower()}": name for name, cls in _READERS.items()
               if name not in _NOT_FILE_FORMATS and "." not in name  # CIF.GZ: .gz is looked through anyway
               and cls.__module__.startswith("MDAnalysis.coordinates.")}
    return formats | LAMMPS_SUFFIXES


def _format(path: Path) -> str:
    """The MDAnalysis format of ``path`` from its suffix (``.gz``/``.bz2`` looked through, as
    MDAnalysis does); an unknown suffix is an error that lists the readable ones."""
    suffixes = [s.lower() for s in path.suffixes] or [""]
    suffix = suffixes[-2] if suffixes[-1] in (".gz", ".bz2") and len(suffixes) > 1 else suffixes[-1]
    formats = read_formats()
    if suffix not in formats:
        raise BackmapError(f"cannot read {suffix or 'suffix-less'!r} trajectories; MDAnalysis reads "
                           f"{' '.join(sorted(formats))}", source=path)
    return formats[suffix]


def _reader(path: Path):
    """An open MDAnalysis reader of ``path``; every failure becomes a BackmapError naming the file."""
    import MDAnalysis as mda

    if not path.is_file():
        raise BackmapError("trajectory file not found", source=path)
    fmt = _format(path)
    if path.stat().st_size == 0:
        raise BackmapError("the trajectory file is empty", source=path)
    if fmt == "GRO":
        check_gro_complete(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if fmt == "DATA":  # the DATA reader needs the atom count, which the DATA topology parser reads
                style = _data_atom_style(path)
                kwargs = {"atom_style": _DATA_COLUMNS[style]} if style in _DATA_COLUMNS else {}
                return mda.Universe(str(path), format="DATA", topology_format="DATA", **kwargs).trajectory
            return mda.coordinates.core.reader(str(path), format=fmt)
    except Exception as exc:  # MDAnalysis raises many types for corrupt files
        raise BackmapError(f"cannot read {fmt} trajectory: {_failure(exc)}", source=path) from exc


def _data_atom_style(path: Path) -> str | None:
    """The atom style LAMMPS' ``write_data`` names on the ``Atoms`` line (``Atoms # full``), if any."""
    import MDAnalysis.lib.util as mdautil

    with mdautil.anyopen(str(path)) as f:
        for line in f:
            if line.startswith("Atoms"):
                return line.partition("#")[2].strip().lower() or None
    return None


def _failure(exc: Exception) -> str:
    """MDAnalysis' message; readers raise a bare EOFError when the file ends inside a frame."""
    if isinstance(exc, EOFError) and not str(exc):
        return "the file ends inside a frame"
    return str(exc) or type(exc).__name__


def _timesteps(r, frames: Sequence[int] | slice | None, path: Path, fmt: str) -> Iterator:
    """MDAnalysis' time steps of ``frames``; a frame it cannot read (corrupt, cut short, a LAMMPS
    dump whose atom count changes) is a BackmapError, like a file it cannot open."""
    last = None
    it = iter(r if frames is None else r[frames])
    while True:
        try:
            with warnings.catch_warnings():  # e.g. a LAMMPS dump has no time step: its time is the step number
                warnings.simplefilter("ignore")
                ts = next(it)
        except StopIteration:
            return
        except Exception as exc:  # as in _reader: many types
            after = "" if last is None else f" after frame {last}"
            raise BackmapError(f"cannot read {fmt} trajectory{after}: {_failure(exc)}", source=path) from exc
        last = ts.frame
        yield ts


def trajectory_info(path: str | Path) -> tuple[int, int]:
    """(number of atoms, number of frames) of a trajectory file."""
    r = _reader(Path(path))
    try:
        return r.n_atoms, r.n_frames
    finally:
        r.close()


def read_frames(path: str | Path, n_atoms: int | None = None, frames: Sequence[int] | slice | None = None,
                expect: str = "topology", names: Sequence[str] | None = None) -> Iterator[Frame]:
    """Frames of a trajectory in nm, from any coordinate file MDAnalysis reads (:func:`read_formats`).
    ``n_atoms`` checks the atom count against ``expect``. Every frame must have a periodic box, and
    finite positions and box (:func:`check_finite`; ``names``, if given, name the bad atom).

    MDAnalysis returns Å and converts formats that declare their units. LAMMPS dumps and data files
    carry none: their lengths are taken as Å and dump forces as kcal/mol/Å, i.e. ``units real``
    (``metal`` lengths are Å too; ``lj``/``nano``/``si`` files must be converted first). Dump atoms
    come in ``id`` order, positions shifted so the box starts at the origin (scaled ``xs ys zs``
    dumps whose box does not start at 0 are shifted by its lower corner once more: MDAnalysis issue
    #4788; a rigid translation, which backmapping does not mind), and a dump's time is its step
    number (the file has no time step). Data files keep their coordinates as they are."""
    path = Path(path)
    if path.suffix.lower() in (".xtc", ".trr"):  # complete frames, one atom count (MDAnalysis reads past both)
        check_xdr_frames(path)
    r, fmt = _reader(path), _format(path)
    try:
        if n_atoms is not None and r.n_atoms != n_atoms:
            raise BackmapError(f"{r.n_atoms} atoms in the trajectory but {n_atoms} in the {expect}", source=path)
        if r.n_frames == 0:
            raise BackmapError("the trajectory has no frames", source=path)
        for ts in _timesteps(r, frames, path, fmt):
            with warnings.catch_warnings():  # .gro files have no time step; 0 is right for them
                warnings.simplefilter("ignore")
                time = float(ts.time)
            if ts.dimensions is None:
                raise BackmapError(f"frame {ts.frame} has no box (backmap needs the periodic box; "
                                   f"this {fmt} file does not store one)", source=path)
            check_finite(ts.positions, ts.dimensions, ts.frame, path, names)
            # MDAnalysis: positions in Å, forces in kJ/mol/Å
            forces = ts.forces.astype(np.float64) * 10.0 * _FORCE_TO_KJ.get(fmt, 1.0) \
                if getattr(ts, "has_forces", False) else None
            positions = ts.positions.astype(np.float64) / 10.0
            dimensions = np.r_[ts.dimensions[:3] / 10.0, ts.dimensions[3:]].astype(np.float64)
            check_box(dimensions, len(positions), ts.frame, path)
            check_near_box(positions, dimensions, ts.frame, path)
            yield Frame(
                positions=positions,
                dimensions=dimensions,
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
    other, as GROMACS does) atomically. Returns the number of frames written. A frame with a non-finite
    position or box is refused (the output's frame number, 0-based) and nothing is written: MDAnalysis
    would store NaN in .xtc/.trr, and readers die on it later with SIGFPE."""
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
    from_input: list[OSError] = []
    frames = _marking_errors(frames, from_input)
    with _blaming_output(path, from_input), atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if suffix == ".gro":  # MDAnalysis writes one frame per .gro; concatenate them
            with open(tmp, "w") as out, tempfile.TemporaryDirectory() as scratch:
                one = Path(scratch) / "frame.gro"
                for frame in frames:
                    check_finite(frame.positions, frame.dimensions, n, path, names)
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
                    check_finite(frame.positions, frame.dimensions, n, path, names)
                    _set(u, frame)
                    w.write(u.atoms)
                    n += 1
    return n


def _marking_errors(frames: Iterable[Frame], seen: list[OSError]) -> Iterator[Frame]:
    """Pass ``frames`` on, noting an ``OSError`` the input itself raises (reading a trajectory) in
    ``seen``, so that :func:`_blaming_output` does not blame the output for it."""
    try:
        yield from frames
    except OSError as exc:
        seen.append(exc)
        raise


@contextlib.contextmanager
def _blaming_output(path: Path, from_input: list[OSError]) -> Iterator[None]:
    """Turn an ``OSError`` of writing ``path`` (its folder read-only, the disk full, …) into a
    :class:`BackmapError` naming ``path`` rather than a temporary. Errors of the input, and those
    naming another file (a folder on the way that is a file), pass unchanged: the CLI names that file."""
    try:
        yield
    except OSError as exc:
        other = exc.filename is not None and _TMP_TAG not in str(exc.filename) and Path(str(exc.filename)) != path
        if other or any(exc is e for e in from_input):
            raise
        # MDAnalysis' XDR writers raise errno-less IOErrors ("XTC write error = compression" on a full disk)
        reason = exc.strerror or str(exc)
        hint = " (is the disk full?)" if exc.errno is None and "write error" in reason else ""
        raise BackmapError(f"cannot write: {reason}{hint}", source=path) from exc


def write_lammps_dump(path: str | Path, frames: Iterable[Frame], types: Sequence[str] | None = None,
                      decimals: int = 5) -> int:
    """Write frames as a LAMMPS text dump (``ITEM: ATOMS id type x y z``), atomically: CG input in
    the form LAMMPS-based CG tools (VOTCA's IBI) produce. Lengths in Å (``units real``) with
    ``decimals`` digits, the box from the origin (triclinic boxes as LAMMPS' bounds and tilt
    factors); ``types`` (one name per atom) become LAMMPS' integer types 1, 2, … in order of first
    appearance; each frame's TIMESTEP is its index. Returns the number of frames written."""
    path = Path(path)
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise BackmapError("nothing to write: no frames", source=path)
    n_atoms = len(first.positions)
    names = [str(t) for t in types] if types is not None else ["1"] * n_atoms
    if len(names) != n_atoms:
        raise BackmapError(f"{len(names)} atom types for {n_atoms} atoms", source=path)
    codes = {t: k + 1 for k, t in enumerate(dict.fromkeys(names))}
    ids_types = np.column_stack([np.arange(1, n_atoms + 1), [codes[t] for t in names]])
    f = f"%.{decimals}f"
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w") as out:
        for frame in itertools.chain([first], frames):
            if len(frame.positions) != n_atoms:
                raise BackmapError(f"frame {frame.index} has {len(frame.positions)} atoms, the first {n_atoms}",
                                   source=path)
            check_finite(frame.positions, frame.dimensions, n, path)
            a, b, c = box_vectors(frame.dimensions) * 10.0  # a along x, b in the xy plane: LAMMPS' form
            xy, xz, yz = b[0], c[0], c[1]
            out.write(f"ITEM: TIMESTEP\n{frame.index}\nITEM: NUMBER OF ATOMS\n{n_atoms}\n")
            if max(abs(xy), abs(xz), abs(yz)) >= 0.5 * 10.0 ** -decimals:
                lo = (min(0.0, xy, xz, xy + xz), min(0.0, yz), 0.0)  # LAMMPS' bounding box of the tilted cell
                hi = (a[0] + max(0.0, xy, xz, xy + xz), b[1] + max(0.0, yz), c[2])
                out.write("ITEM: BOX BOUNDS xy xz yz pp pp pp\n")
                out.writelines(f"{f % l} {f % h} {f % t}\n" for l, h, t in zip(lo, hi, (xy, xz, yz)))
            else:
                out.write("ITEM: BOX BOUNDS pp pp pp\n")
                out.writelines(f"{f % 0.0} {f % h}\n" for h in (a[0], b[1], c[2]))
            out.write("ITEM: ATOMS id type x y z\n")
            np.savetxt(out, np.column_stack([ids_types, np.asarray(frame.positions, np.float64) * 10.0]),
                       fmt=["%d", "%d", f, f, f])
            n += 1
    return n


def _set(u, frame: Frame) -> None:
    u.atoms.positions = np.asarray(frame.positions, np.float32) * 10.0
    if u.trajectory.ts.has_forces and frame.forces is not None:  # kJ/mol/nm → MDAnalysis' kJ/mol/Å
        u.atoms.forces = np.asarray(frame.forces, np.float32) / 10.0
    u.dimensions = np.r_[np.asarray(frame.dimensions[:3]) * 10.0, frame.dimensions[3:]]
    u.trajectory.ts.time = frame.time


__all__ = ["Frame", "atomic_path", "box_dimensions", "check_finite", "parse_frames", "read_formats", "read_frames",
           "trajectory_info", "write_frames", "write_lammps_dump"]


def check_gro_complete(path: Path) -> None:
    """Refuse a ``.gro`` cut short before its first frame's box line: MDAnalysis otherwise fails
    with messages about its own variables (``cannot access local variable 'unitcell'``)."""
    with open(path, errors="replace") as f:
        head = list(itertools.islice(f, 2))
        if len(head) < 2 or not head[1].strip().isdigit():
            raise BackmapError("not a .gro file: the second line must be the number of atoms", source=path)
        n = int(head[1])
        lines = sum(1 for _ in itertools.islice(f, n + 1))
    if lines < n + 1:
        found = min(lines, n)
        raise BackmapError(f"the file ends after {found} of the {n} atoms its second line announces"
                           f"{'' if found < n else ', before the box line'} (truncated?)", source=path)
