"""(CG, AA) training pairs: built from an AA trajectory and a mapping, or read from
DeepBackmap-style folders of paired ``aa/N.gro`` + ``cg/N.gro``; split and cached."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from backmap.errors import BackmapError
from backmap.system.io import atomic_path, parse_frames, read_frames, trajectory_info
from backmap.system.mapping import CGTopology
from backmap.system.pbc import Unwrapper, minimum_image
from backmap.progress import progress

PAIRS_FORMAT = 2  # 2: frame times


@dataclass
class PairSet:
    """Paired frames. ``aa`` (F, n_atoms, 3) whole molecules and ``cg`` (F, n_beads, 3) in the
    same periodic image, in nm; ``dimensions`` (F, 6) boxes; ``frames`` the source frame numbers;
    ``is_test`` the split; ``times`` (F,) the frames' times in ps where the source has them (trajectory
    mode and the dynamics metrics need them), else None."""

    aa: np.ndarray
    cg: np.ndarray
    dimensions: np.ndarray
    frames: np.ndarray
    is_test: np.ndarray
    info: dict = field(default_factory=dict)
    times: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.frames)

    def subset(self, mask: np.ndarray) -> "PairSet":
        return PairSet(self.aa[mask], self.cg[mask], self.dimensions[mask], self.frames[mask],
                       self.is_test[mask], dict(self.info), None if self.times is None else self.times[mask])

    def previous_index(self) -> np.ndarray:
        """For each pair, the index of the pair one frame spacing earlier (the selection's step:
        the most common difference of ``frames``), or -1 if that frame is not in the set — what
        trajectory-mode training (``EnvironmentSpec.temporal``) conditions each frame on."""
        out = np.full(len(self.frames), -1)
        if len(self.frames) < 2:
            return out
        diffs = np.diff(self.frames)
        steps, counts = np.unique(diffs[diffs > 0], return_counts=True)
        if not len(steps):
            return out
        step = steps[np.argmax(counts)]
        where = {int(f): k for k, f in enumerate(self.frames)}
        for k, f in enumerate(self.frames):
            out[k] = where.get(int(f - step), -1)
        return out

    def time_step(self) -> float | None:
        """The time (ps) between each pair and its :meth:`previous_index` pair, or None (no times,
        no consecutive pairs): the τ a trajectory-mode model learns to step by."""
        prev = self.previous_index()
        has = prev >= 0
        if self.times is None or not has.any():
            return None
        return float(np.median(self.times[has] - self.times[prev[has]]))

    def train(self) -> "PairSet":
        return self.subset(~self.is_test)

    def test(self) -> "PairSet":
        return self.subset(self.is_test)

    def digest(self) -> str:
        """SHA-256 of the arrays (dtype, shape, bytes) and ``info``: stored with the pairs so that a
        cache file altered or damaged after writing is noticed, not trusted."""
        h = hashlib.sha256()
        for name in _ARRAYS + (("times",) if self.times is not None else ()):
            a = np.ascontiguousarray(getattr(self, name))
            h.update(f"{name} {a.dtype.str} {a.shape}".encode())
            h.update(a.tobytes())
        h.update(json.dumps(self.info, sort_keys=True).encode())
        return h.hexdigest()

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                extra = {} if self.times is None else {"times": self.times}
                np.savez(fh, **{name: getattr(self, name) for name in _ARRAYS}, **extra, info=json.dumps(self.info),
                         digest=self.digest())

    @classmethod
    def load(cls, path: Path) -> "PairSet":
        """Pairs written by :meth:`save`; a file that cannot be read, is cut short, lacks its content
        hash (older versions) or does not match it is a BackmapError saying why."""
        try:
            with np.load(path) as z:
                pairs = cls(*(z[name] for name in _ARRAYS), json.loads(str(z["info"])),
                            z["times"] if "times" in z.files else None)
                stored = str(z["digest"]) if "digest" in z.files else None
        except Exception as exc:  # zipfile, zlib, OSError, ValueError, KeyError, EOFError: all mean unreadable
            raise BackmapError(f"unreadable pairs file ({type(exc).__name__}: {' '.join(str(exc).split())})",
                               source=path) from exc
        if stored is None:
            raise BackmapError("the pairs file has no content hash (written by an older backmap)", source=path)
        if stored != pairs.digest():
            raise BackmapError("the pairs file does not match its content hash (altered or damaged)", source=path)
        return pairs


_ARRAYS = ("aa", "cg", "dimensions", "frames", "is_test")


def split_frames(frames: np.ndarray, test_fraction: float, mode: str, test_frames: Iterable[int] | None,
                 seed: int) -> np.ndarray:
    """Boolean test mask over ``frames`` (source frame numbers)."""
    if test_frames is not None:
        return np.isin(frames, list(test_frames))
    n_test = int(round(test_fraction * len(frames)))
    mask = np.zeros(len(frames), bool)
    if n_test:
        if mode == "tail":
            mask[-n_test:] = True
        else:
            mask[np.random.default_rng(seed).choice(len(frames), n_test, replace=False)] = True
    return mask


def pairs_from_trajectory(cg_top: CGTopology, trajectory: Path, frames: np.ndarray) -> PairSet:
    """Map selected frames of an AA trajectory; molecules are made whole first."""
    topo = cg_top.topology
    unwrap = Unwrapper(topo)
    aa, dims, times = [], [], []
    for fr in progress(read_frames(trajectory, topo.n_atoms, frames, expect=f"topology {topo.source.name}",
                                   names=topo.atom_names),
                       total=len(frames), description=f"mapping {trajectory.name}"):
        aa.append(unwrap(fr.positions, fr.dimensions).astype(np.float32))
        dims.append(fr.dimensions)
        times.append(fr.time)
    aa_arr = np.stack(aa)
    return PairSet(aa_arr, cg_top.apply(aa_arr.astype(np.float64)).astype(np.float32), np.stack(dims),
                   np.asarray(frames), np.zeros(len(frames), bool),
                   {"source": str(trajectory), "kind": "trajectory"}, np.asarray(times, np.float64))


def pair_folder_frames(folder: Path) -> list[int]:
    """Frame numbers N of the ``aa/N.gro`` files that have a ``cg/N.gro`` partner."""
    aa_dir, cg_dir = folder / "aa", folder / "cg"
    if not aa_dir.is_dir() or not cg_dir.is_dir():
        raise BackmapError("expected sub-folders aa/ and cg/ with paired N.gro files", source=folder)
    numbers = []
    for f in aa_dir.glob("*.gro"):
        if not f.stem.isdigit():
            raise BackmapError("pair files must be named N.gro with N a number", source=f)
        if not (cg_dir / f.name).is_file():
            raise BackmapError(f"aa/{f.name} has no partner cg/{f.name}", source=folder)
        numbers.append(int(f.stem))
    if not numbers:
        raise BackmapError("no aa/N.gro files", source=folder)
    return sorted(numbers)


def pairs_from_folders(cg_top: CGTopology, folder: Path, numbers: list[int]) -> PairSet:
    """Read paired snapshots; CG positions are taken from ``cg/N.gro``, moved to the periodic
    image of the mapped AA structure. The deviation from the mapping is recorded in ``info``."""
    topo = cg_top.topology
    unwrap = Unwrapper(topo)
    aa, cg, dims, devs = [], [], [], []
    for n in progress(numbers, description=f"reading {folder.name}/aa,cg"):
        fa = next(read_frames(folder / "aa" / f"{n}.gro", topo.n_atoms, expect=f"topology {topo.source.name}",
                              names=topo.atom_names))
        fc = next(read_frames(folder / "cg" / f"{n}.gro", cg_top.n_beads, expect="mapping's CG system"))
        x = unwrap(fa.positions, fa.dimensions)
        mapped = cg_top.apply(x)
        delta = minimum_image(fc.positions - mapped, fa.dimensions)
        devs.append(np.linalg.norm(delta, axis=-1))
        aa.append(x.astype(np.float32))
        cg.append((mapped + delta).astype(np.float32))
        dims.append(fa.dimensions)
    d = np.concatenate(devs)
    info = {"source": str(folder), "kind": "pairs", "cg_vs_mapping_max_nm": float(d.max()),
            "cg_vs_mapping_rms_nm": float(np.sqrt((d ** 2).mean()))}
    return PairSet(np.stack(aa), np.stack(cg), np.stack(dims), np.array(numbers), np.zeros(len(numbers), bool), info)


def file_digest(paths: Iterable[Path], extra: object = None) -> str:
    """Hash of file contents and parameters, to key the pair cache."""
    h = hashlib.sha256(f"pairs-v{PAIRS_FORMAT}".encode())
    for p in paths:
        h.update(str(p.name).encode())
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def count_frames(path: Path) -> int:
    return trajectory_info(path)[1]


def select_frames(spec: str | None, skip: list[int], n_frames: int, source: str) -> np.ndarray:
    frames = parse_frames(spec, n_frames, source)
    return frames[~np.isin(frames, skip)]
