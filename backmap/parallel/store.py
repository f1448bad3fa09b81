"""Finished blocks of frames on disk, so that a killed run resumes where it stopped.

A :class:`PartStore` is a hidden folder beside the output (``.NAME.parts/``) holding a
``manifest.json`` — the identity of the run (a digest of its inputs and settings) and its block
count — and one ``block_NNNNNN.npz`` per finished block, each written atomically. A run with the
same identity finds the blocks already there and computes only the others; a run whose identity
differs (another model, other frames or settings) starts the folder afresh and says so. The caller
removes the folder once its outputs are written (:meth:`PartStore.remove`).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from backmap.errors import BackmapError
from backmap.system.io import atomic_path

TMP_SUFFIX = ".part"

#: a block's result: arrays by name, plus JSON-able records under ``"rows"`` (one per frame)
BlockResult = dict[str, Any]


def identity_digest(identity: dict[str, Any]) -> str:
    """A short digest of a JSON-able description of a run (what must match for a resume)."""
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def file_identity(path: str | Path) -> dict[str, Any]:
    """What identifies an input file cheaply: its resolved path, size and modification time."""
    p = Path(path)
    st = p.stat()
    return {"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


class PartStore:
    """Blocks of a run's frames, finished and kept on disk until the run's outputs are written."""

    def __init__(self, directory: str | Path, identity: dict[str, Any], n_blocks: int):
        self.directory = Path(directory)
        self.digest = identity_digest(identity)
        self.n_blocks = n_blocks
        self.restarted = False
        manifest = self.directory / "manifest.json"
        if self.directory.exists():
            try:
                old = json.loads(manifest.read_text())
                same = old.get("identity") == self.digest and old.get("blocks") == n_blocks
            except (OSError, ValueError):
                same = False
            if not same:  # another run's (or a torn) store: nothing in it is ours
                shutil.rmtree(self.directory)
                self.restarted = True
        #: folders this store made (removed with it when it ends without a finished block)
        self._made = [d for d in (self.directory, *self.directory.parents) if not d.exists()]
        if not self.directory.exists():
            self.directory.mkdir(parents=True)
            with atomic_path(manifest) as tmp:
                tmp.write_text(json.dumps({"identity": self.digest, "blocks": n_blocks, "identity_of": identity},
                                          indent=1, default=str))
        for stale in self.directory.glob(f".block_*{TMP_SUFFIX}"):  # of a killed writer: never a block
            stale.unlink(missing_ok=True)

    @classmethod
    def beside(cls, output: str | Path, identity: dict[str, Any], n_blocks: int) -> "PartStore":
        """The store of ``output``: :meth:`folder_of` it."""
        return cls(cls.folder_of(output), identity, n_blocks)

    @staticmethod
    def folder_of(output: str | Path) -> Path:
        """Where the store of ``output`` lives: ``.NAME.parts`` in the output's folder."""
        out = Path(output)
        return out.with_name(f".{out.name}.parts")

    def _path(self, block: int) -> Path:
        return self.directory / f"block_{block:06d}.npz"

    def done(self) -> list[int]:
        """Blocks already finished (whose files are complete)."""
        out = []
        for b in range(self.n_blocks):
            p = self._path(b)
            if p.is_file():
                out.append(b)
        return out

    def put(self, block: int, result: BlockResult) -> None:
        """Keep one finished block (atomically: a killed write leaves no block file, only a
        temporary that the next run's store removes). Not :func:`atomic_path`, whose scan for stale
        temporaries of the folder would make 10⁵ blocks cost O(n²)."""
        arrays = {f"a_{k}": np.asarray(v) for k, v in result.items() if k != "rows"}
        arrays["rows"] = np.frombuffer(json.dumps(result.get("rows", []), default=_json).encode(), dtype=np.uint8)
        path = self._path(block)
        tmp = path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")
        try:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def get(self, block: int) -> BlockResult:
        """A finished block, as :meth:`put` was given it (arrays come back as numpy arrays)."""
        path = self._path(block)
        try:
            with np.load(path) as data:
                out: BlockResult = {k[2:]: data[k] for k in data.files if k.startswith("a_")}
                out["rows"] = json.loads(data["rows"].tobytes().decode())
        except (OSError, ValueError, KeyError) as exc:
            raise BackmapError(f"a finished block is unreadable ({exc}); remove {self.directory} to start over",
                               source=path) from None
        return out

    def blocks(self) -> Iterator[BlockResult]:
        """Every block in order (all must be finished)."""
        for b in range(self.n_blocks):
            yield self.get(b)

    def remove(self) -> None:
        """Delete the store (its run's outputs are written)."""
        shutil.rmtree(self.directory, ignore_errors=True)

    def discard_if_empty(self) -> None:
        """After a failure: a store without a finished block holds nothing worth resuming; remove it
        and the (empty) folders it made, so that a failed command leaves nothing behind."""
        if self.done():
            return
        self.remove()
        for d in self._made[1:]:
            try:
                d.rmdir()
            except OSError:  # not empty (something else was written there) or already gone
                break


def _json(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return str(value)
    raise TypeError(f"not JSON-able: {type(value).__name__}")
