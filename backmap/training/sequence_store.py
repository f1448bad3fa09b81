"""Training sequences streamed from disk, so that training memory does not grow with the data.

The teacher-forced sequences of a large system are big: one SPC/E water frame of 13 000 molecules
gives 26 000 sequences of ~160 neighbour atoms and ~200 neighbour beads, 280 MB in memory. A
:class:`SequenceStore` keeps them as shards, one per training frame (and system), each padded to its
own sizes and written as one ``.npy`` of records (one record per sequence, compact integer types).
A batch is read record by record (``pread``; no memory map, whose touched pages would count against
the process) and padded to the batch's largest sizes — exactly the batch the in-memory sequences
give after :func:`backmap.training.loop.trim`. What stays in memory is the batch, one frame while
the store is built and an index of the shards.

The store's folder is named by everything the sequences depend on (environment spec, plans,
channels, contexts, backmap's version) and each shard by its frame's coordinates, so a training run
that was killed reuses the shards already written; the train step removes the folder when training
has finished.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from backmap.devices import to_host
from backmap.errors import BackmapError
from backmap.system.io import atomic_path
from backmap.training.sequences import _FIELDS, BeadSequences

#: bump when what a shard holds or how it is built changes: old shards are then not reused
SHARD_FORMAT = 1

#: the type a field is stored in on disk (the integers are small; read back as :data:`_FIELDS` says)
STORAGE_TYPES = {"atom_types": np.int16, "atom_index": np.int32, "slot": np.int16, "bead_types": np.int16,
                 "target_types": np.int16, "target_atoms": np.int32, "frame": np.int32, "bead": np.int32,
                 "context": np.int8}

#: fields whose stored values are atom, bead or frame numbers: shifted when systems are joined
_SHIFTED = {"atom_index": "atoms", "target_atoms": "atoms", "bead": "beads", "frame": "frames"}


def _record_type(part: dict[str, np.ndarray]) -> np.dtype:
    """One record per sequence: every field at its shape in ``part`` (rows dropped)."""
    return np.dtype([(name, STORAGE_TYPES.get(name, part[name].dtype), part[name].shape[1:]) for name in _FIELDS])


def _records(parts: list[dict[str, np.ndarray]]) -> np.ndarray:
    """The parts of one frame (all contexts, in order) as one record array, each field padded
    to the widest part."""
    shapes = {name: tuple(max(p[name].shape[a] for p in parts) for a in range(1, parts[0][name].ndim))
              for name in _FIELDS}
    dtype = np.dtype([(name, STORAGE_TYPES.get(name, parts[0][name].dtype), shapes[name]) for name in _FIELDS])
    out = np.zeros(sum(len(p["bead"]) for p in parts), dtype)
    for name, (_axes, fill, _dtype) in _FIELDS.items():
        out[name] = fill
    row = 0
    for p in parts:
        n = len(p["bead"])
        for name in _FIELDS:
            x = p[name]
            out[name][(slice(row, row + n),) + tuple(slice(0, k) for k in x.shape[1:])] = x
        row += n
    return out


@dataclass
class Shard:
    """The sequences of one frame: ``rows`` per context, ``n_contexts`` blocks of them
    (context-major), in memory (``data``) or in an ``.npy`` file of records (``path``)."""

    rows: int
    n_contexts: int
    digest: str
    data: np.ndarray | None = None
    path: Path | None = None
    shift: dict[str, int] = field(default_factory=dict)
    _dtype: np.dtype | None = field(default=None, repr=False)
    _offset: int = field(default=0, repr=False)
    _fd: int | None = field(default=None, repr=False)

    @classmethod
    def open(cls, path: Path, rows: int, n_contexts: int, digest: str) -> "Shard":
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, _fortran, dtype = read_header(fh)
            offset = fh.tell()
        if shape != (rows * n_contexts,):
            raise BackmapError(f"training sequence shard holds {shape[0]} sequences, its index says "
                               f"{rows * n_contexts}; remove the folder to rebuild it", source=path.parent)
        return cls(rows, n_contexts, digest, path=path, _dtype=dtype, _offset=offset)

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype if self.data is not None else self._dtype

    def read(self, rows: np.ndarray) -> np.ndarray:
        """The records at ``rows`` (shard-local, context-major)."""
        if self.data is not None:
            return self.data[rows]
        out = np.empty(len(rows), self._dtype)
        size = self._dtype.itemsize
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        view = memoryview(out.view(np.uint8))
        k = 0
        while k < len(rows):  # consecutive rows in one read
            j = k + 1
            while j < len(rows) and rows[j] == rows[j - 1] + 1:
                j += 1
            want = (j - k) * size
            got = os.preadv(self._fd, [view[k * size:j * size]], self._offset + int(rows[k]) * size)
            if got != want:
                raise BackmapError(f"training sequence shard is shorter than its header says; remove the folder "
                                   f"to rebuild it", source=self.path)
            k = j
        return out

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __getstate__(self):  # a copy (another process) opens the file itself
        return {**self.__dict__, "_fd": None}

    def __del__(self):
        self.close()


class SequenceStore:
    """Sequences of many frames, read a batch at a time. Ids are those of
    :func:`backmap.training.sequences.build_sequences`: sequence ``c·n + i`` is bead-frame ``i``
    (frame after frame, system after system) in context ``c``."""

    def __init__(self, shards: list[Shard], n_contexts: int):
        if not shards:
            raise BackmapError("no training sequences: the pair set has no frames")
        self.shards, self.n_contexts = shards, n_contexts
        self._starts = np.concatenate([[0], np.cumsum([s.rows for s in shards])])
        self.n = int(self._starts[-1])  # bead-frames per context
        #: every field's shape (rows dropped) padded to the widest shard
        self.shapes = {name: tuple(max(s.dtype[name].shape[a] for s in shards)
                                   for a in range(len(shards[0].dtype[name].shape))) for name in _FIELDS}

    def __len__(self) -> int:
        return self.n * self.n_contexts

    def select(self, index) -> BeadSequences:
        """The sequences at ``index`` (ids: tensor, array or slice), padded to the widest shard
        (:func:`~backmap.training.loop.trim` cuts a batch to its own sizes)."""
        ids = np.arange(len(self))[index] if isinstance(index, slice) else \
            to_host(index) if torch.is_tensor(index) else np.asarray(index)
        ids = ids.reshape(-1).astype(np.int64)
        if len(ids) and (ids.min() < 0 or ids.max() >= len(self)):
            raise IndexError(f"sequence id out of range (0..{len(self) - 1})")
        context, bead_frame = np.divmod(ids, self.n)
        which = np.searchsorted(self._starts, bead_frame, side="right") - 1
        local = bead_frame - self._starts[which]
        pieces: list[tuple[np.ndarray, np.ndarray]] = []  # (positions in the batch, records)
        for s in np.unique(which):
            shard = self.shards[s]
            at = np.nonzero(which == s)[0]
            rows = context[at] * shard.rows + local[at]
            order = np.argsort(rows, kind="stable")
            records = shard.read(rows[order])
            pieces.append((at[order], _shifted(records, shard.shift)))
        return _gather(pieces, len(ids), self.shapes)

    def all(self) -> BeadSequences:
        """Every sequence in memory (small sets; tests)."""
        return self.select(slice(None))

    def __getattr__(self, name: str):
        """A plugin written for the in-memory sequences reads their fields (``seqs.bead_types``):
        the whole set is then read into memory, once. :meth:`select` reads only what it asks for."""
        if name in _FIELDS or name == "lengths":
            if self.__dict__.get("_all") is None:
                self.__dict__["_all"] = self.all()
            return getattr(self.__dict__["_all"], name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def digest(self) -> str:
        """What the sequences are (their shards' reference positions), for checkpoint fingerprints."""
        h = hashlib.sha256(f"{self.n_contexts}".encode())
        for s in self.shards:
            h.update(f"{s.digest}/{sorted(s.shift.items())}".encode())
        return h.hexdigest()

    @classmethod
    def concatenate(cls, stores: list["SequenceStore"], shifts: list[dict[str, int]]) -> "SequenceStore":
        """Several systems' stores as one, each system's beads, atoms and frames shifted by
        ``shifts`` (``beads``, ``atoms``, ``frames``)."""
        if len({s.n_contexts for s in stores}) != 1:
            raise BackmapError("training systems with different contexts cannot be joined")
        shards = [Shard(**{**sh.__dict__, "_fd": None, "shift": {k: sh.shift.get(k, 0) + v for k, v in shift.items()}})
                  for store, shift in zip(stores, shifts) for sh in store.shards]
        return cls(shards, stores[0].n_contexts)

    def nbytes(self) -> int:
        """Bytes of the sequences as stored."""
        return sum(s.rows * s.n_contexts * s.dtype.itemsize for s in self.shards)


def _shifted(records: np.ndarray, shift: dict[str, int]) -> dict[str, np.ndarray]:
    out = {name: records[name] for name in _FIELDS}
    for name, kind in _SHIFTED.items():
        k = shift.get(kind, 0)
        if k:
            x = out[name].astype(np.int64)
            out[name] = np.where(x >= 0, x + k, x) if name in ("atom_index", "target_atoms") else x + k
    return out


_NUMPY_TYPES = {torch.float32: np.float32, torch.long: np.int64, torch.bool: np.bool_, torch.uint8: np.uint8}


def _gather(pieces: list[tuple[np.ndarray, dict[str, np.ndarray]]], n: int,
            shapes: dict[str, tuple[int, ...]]) -> BeadSequences:
    """Records of several shards into one batch in id order, each field padded to ``shapes``
    (the widest shard's: the arrays the in-memory sequences give, strides included)."""
    out = {}
    for name, (_axes, fill, dtype) in _FIELDS.items():
        arr = np.full((n, *shapes[name]), fill, dtype=_NUMPY_TYPES[dtype])  # on the host (the loop moves batches)
        for at, rec in pieces:
            x = rec[name]
            arr[(at,) + tuple(slice(0, k) for k in x.shape[1:])] = x
        out[name] = torch.from_numpy(arr)
    return BeadSequences(**out)


# ---------------------------------------------------------------------------------------------- building
def store_key(*parts: Any) -> str:
    """A name for everything the sequences depend on (pickled; a part that does not pickle is
    described by its ``repr``)."""
    h = hashlib.sha256(f"format {SHARD_FORMAT}".encode())
    from backmap._version import __version__
    h.update(__version__.encode())
    for p in parts:
        try:
            h.update(pickle.dumps(p, protocol=4))
        except Exception:  # noqa: BLE001 - only a cache key
            h.update(repr(p).encode())
    return h.hexdigest()[:16]


def frame_key(*arrays: np.ndarray | None) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(b"none" if a is None else np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def build_store(frames: Iterable[tuple[int, str, list[list[dict[str, np.ndarray]]] | None]], n_contexts: int,
                folder: Path | None, done: dict[int, Shard]) -> SequenceStore:
    """A store from ``frames`` — (frame, frame key, its parts per context as
    :func:`~backmap.training.sequences.frame_sequences` yields them, or None where ``done`` holds
    the frame's shard already) — written to ``folder`` (None: kept in memory)."""
    shards = []
    for f, key, parts in frames:
        if parts is None:
            shards.append(done[f])
            continue
        records = _records([p for context_parts in parts for p in context_parts])
        rows = len(records) // n_contexts
        digest = hashlib.sha256(np.ascontiguousarray(records["target_positions"]).tobytes()).hexdigest()[:16]
        if folder is None:
            shards.append(Shard(rows, n_contexts, digest, data=records))
            continue
        path = folder / f"frame{f:06d}-{key}.npy"
        with atomic_path(path) as tmp:
            np.save(tmp, records)
        with atomic_path(path.with_suffix(".json")) as tmp:
            tmp.write_text(json.dumps({"rows": rows, "contexts": n_contexts, "digest": digest}))
        del records
        shards.append(Shard.open(path, rows, n_contexts, digest))
    return SequenceStore(shards, n_contexts)


def existing_shards(folder: Path | None, keys: dict[int, str], n_contexts: int) -> dict[int, Shard]:
    """The shards of ``folder`` that a killed run left complete, by frame (their index file is
    written last); stale folders beside it (other data or settings) are removed."""
    if folder is None:
        return {}
    if folder.parent.is_dir():
        for other in folder.parent.iterdir():
            if other.is_dir() and other != folder:
                shutil.rmtree(other, ignore_errors=True)
    out = {}
    for f, key in keys.items():
        path = folder / f"frame{f:06d}-{key}.npy"
        index = path.with_suffix(".json")
        if path.is_file() and index.is_file():
            try:
                meta = json.loads(index.read_text())
                if meta.get("contexts") == n_contexts:
                    out[f] = Shard.open(path, int(meta["rows"]), n_contexts, str(meta["digest"]))
            except (ValueError, KeyError, OSError, BackmapError):
                continue
    return out
