"""Checks of trajectories that are wrong but readable, made when a file is read: MDAnalysis reads a
GROMACS ``.xtc``/``.trr`` whose atom count changes mid-file (garbage coordinates), or that is cut
inside a frame (a shorter file, silently), and passes boxes that are negative or absurd, or atoms far
outside the box, on to code that fails far away. Each check names the file, the frame and the atom."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from backmap.errors import BackmapError

_XTC_MAGIC, _TRR_MAGIC = 1995, 1993
#: a box edge longer than this (nm) is not a simulation box (cell lists would need exabytes)
MAX_BOX_EDGE = 1e5
#: particles per nm³ above which a box is too small for its contents (liquid water: ~100 atoms)
MAX_DENSITY = 1e3
#: an atom farther outside the box than this many of its longest edges is an error in the file
#: (unwrapped, "nojump" trajectories drift by a few boxes, not by a hundred)
MAX_BOXES_OUTSIDE = 100.0


def check_xdr_frames(path: Path) -> tuple[int, int]:
    """Walk the frame headers of a GROMACS ``.xtc`` or ``.trr``: every frame must be complete and
    hold the first frame's number of atoms. Returns (frames, atoms)."""
    suffix = path.suffix.lower()
    size = path.stat().st_size
    frames, atoms, offset = 0, None, 0
    with open(path, "rb") as fh:
        while offset < size:
            fh.seek(offset)
            try:
                n, length = (_xtc_frame if suffix == ".xtc" else _trr_frame)(fh)
            except (struct.error, ValueError) as exc:
                raise BackmapError(f"frame {frames} is cut short or damaged ({exc}): the file ends, or "
                                   f"holds something else, {size - offset} bytes after the last complete frame",
                                   source=path) from None
            if offset + length > size:
                raise BackmapError(f"frame {frames} is cut short: it needs {length} bytes but the file ends after "
                                   f"{size - offset} (a run killed while writing?); cut the file at frame "
                                   f"{frames} (gmx trjconv -e) or choose frames before it", source=path)
            if atoms is None:
                atoms = n
            elif n != atoms:
                raise BackmapError(f"frame {frames} has {n} atoms but frame 0 has {atoms}: one file must hold "
                                   "one system (files of different systems concatenated?)", source=path)
            frames += 1
            offset += length
    return frames, atoms or 0


def _ints(fh, n: int) -> tuple[int, ...]:
    data = fh.read(4 * n)
    return struct.unpack(f">{n}i", data)


def _xtc_frame(fh) -> tuple[int, int]:
    """(atoms, bytes) of the XTC frame at the file position."""
    magic, natoms, _step = _ints(fh, 3)
    if magic != _XTC_MAGIC:
        raise ValueError(f"no XTC frame header (magic {magic})")
    fh.seek(4 + 36, 1)  # time, box
    (again,) = _ints(fh, 1)
    if again != natoms:
        raise ValueError("the atom counts of its header disagree")
    head = 4 * 3 + 4 + 36 + 4
    if natoms <= 9:  # stored uncompressed
        return natoms, head + 12 * natoms
    fh.seek(4 + 24 + 4, 1)  # precision, minint, maxint, smallidx
    (nbytes,) = _ints(fh, 1)
    if nbytes < 0:
        raise ValueError("a negative byte count")
    return natoms, head + 4 + 24 + 4 + 4 + (nbytes + 3) // 4 * 4


def _trr_frame(fh) -> tuple[int, int]:
    """(atoms, bytes) of the TRR frame at the file position."""
    magic, slen, _slen2 = _ints(fh, 3)
    if magic != _TRR_MAGIC:
        raise ValueError(f"no TRR frame header (magic {magic})")
    fh.seek((slen - 1 + 3) // 4 * 4, 1)  # the version string, padded
    sizes = _ints(fh, 13)  # ir, e, box, vir, pres, top, sym, x, v, f, natoms, step, nre
    natoms = sizes[10]
    real = sizes[2] // 9 if sizes[2] else (sizes[7] // (3 * natoms) if natoms and sizes[7] else 4)
    if real not in (4, 8) or natoms < 0 or min(sizes[:10]) < 0:
        raise ValueError("sizes in its header make no sense")
    header = 12 + (slen - 1 + 3) // 4 * 4 + 13 * 4 + 2 * real
    return natoms, header + sum(sizes[:10])


def check_box(dimensions: np.ndarray, n_atoms: int, frame: int, source: Path | str) -> None:
    """A periodic box (a, b, c in nm, α, β, γ in degrees) that can hold ``n_atoms``: positive
    edges, angles that make a cell of positive volume, no edge absurdly long, not denser than any
    matter."""
    a, b, c, alpha, beta, gamma = (float(v) for v in dimensions)
    if min(a, b, c) <= 0 or max(a, b, c) > MAX_BOX_EDGE:
        raise BackmapError(f"frame {frame}: box edges {a:g}, {b:g}, {c:g} nm: each must be > 0 and ≤ {MAX_BOX_EDGE:g} "
                           "nm", source=source)
    cos = np.cos(np.radians([alpha, beta, gamma]))
    volume_factor = 1 - (cos ** 2).sum() + 2 * cos.prod()
    if not (0 < min(alpha, beta, gamma) and max(alpha, beta, gamma) < 180) or volume_factor <= 1e-6:
        raise BackmapError(f"frame {frame}: box angles {alpha:g}°, {beta:g}°, {gamma:g}° make no cell of positive "
                           "volume", source=source)
    volume = a * b * c * np.sqrt(volume_factor)
    if n_atoms / volume > MAX_DENSITY:
        raise BackmapError(f"frame {frame}: {n_atoms} particles in a box of {volume:.3g} nm³ "
                           f"({n_atoms / volume:.3g} per nm³, denser than any matter): a placeholder box (a PDB's "
                           "CRYST1 1 1 1?) or lengths in the wrong unit; backmap needs the periodic box",
                           source=source)


def check_near_box(positions: np.ndarray, dimensions: np.ndarray, frame: int, source: Path | str) -> None:
    """No atom farther outside the box than :data:`MAX_BOXES_OUTSIDE` of its longest edges."""
    edge = float(max(dimensions[:3]))
    reach = MAX_BOXES_OUTSIDE * edge
    far = np.abs(positions).max(axis=1) > reach + edge  # the box spans [0, edge] (a shifted one, a little more)
    if far.any():
        i = int(np.argmax(far))
        raise BackmapError(f"frame {frame}: atom {i + 1} at {np.round(positions[i], 3).tolist()} nm lies more than "
                           f"{MAX_BOXES_OUTSIDE:g} box lengths ({reach:.4g} nm) outside the box: a damaged file",
                           source=source)


__all__ = ["MAX_BOXES_OUTSIDE", "MAX_BOX_EDGE", "MAX_DENSITY", "check_box", "check_near_box", "check_xdr_frames"]
