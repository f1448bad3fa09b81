"""Claiming a command's outputs before anything is written.

Every file a command or step will write — the output it was given and every file it writes beside
it (``OUT.gro``, ``OUT.json``, ``OUT_cg.trr``, logs, the hidden parts folder) — is checked against
every file it reads (by resolved path and by inode, so symbolic and hard links count; a folder read
counts with every file in it, and nothing may be written inside a model package) and against device files and folders: a collision is
one line naming both, and nothing is written. The main output is then locked (an advisory
``flock`` on ``.NAME.lock`` beside it) so that a second run writing the same output, or working in
the same run folder, is refused in one line naming the first run's PID and command. The kernel drops
the lock when its process ends, however it ends: a run killed with ``kill -9`` never blocks its
resume, and a lock file left behind is taken over by the next run.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shlex
import socket
import stat
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from backmap.errors import BackmapError

#: ``(what it is, path)``: ``("--out", Path("aa.xtc"))`` or ``("OUT.json (provenance)", ...)``
Labelled = tuple[str, "Path | str | None"]


def _files_of(label: str, path: Path) -> Iterator[tuple[str, Path]]:
    """The input itself and, for a folder (a model), every file in it."""
    yield label, path
    if path.is_dir():
        for child in sorted(path.iterdir()):
            if child.is_file():
                yield label, child


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _kind(path: Path) -> str | None:
    """What an existing output path is, when it is not something a run may replace: None for a
    regular file, a missing path or a dangling link."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    return "not a regular file"


def check_outputs(outputs: Iterable[Labelled], inputs: Iterable[Labelled], where: str = "",
                  option: str = "--out", folders: Sequence[str] = ()) -> None:
    """Refuse, before anything is written, an output that is (a link to) an input, lies inside a
    model package read as input (a folder with ``model.json``), is a device file, pipe or folder (unless its label is in ``folders``:
    outputs that are folders), or is another output as well. ``option``: what the user changes to
    fix it. The error names both files."""
    prefix = f"{where}: " if where else ""
    ins = [(label, f) for label, p in inputs if p is not None for label, f in _files_of(label, Path(p))]
    # a model package (a folder with model.json) is read as a whole: nothing may be written into it
    dirs = [(label, Path(p).resolve()) for label, p in inputs
            if p is not None and Path(p).is_dir() and (Path(p) / "model.json").is_file()]
    seen: list[tuple[str, Path]] = []
    for label, out in outputs:
        if out is None:
            continue
        out = Path(out)
        kind = _kind(out)
        if kind is not None and not (kind == "a folder" and label in folders):
            raise BackmapError(f"{prefix}{label} {out} is {kind}, not a file backmap may replace; choose another "
                               f"{option}")
        for in_label, inp in ins:
            if _same_file(out, inp):
                raise BackmapError(f"{prefix}the output {out} ({label}) is the same file as an input ({in_label} "
                                   f"{inp}); nothing was written: choose another {option}")
        for in_label, folder in dirs:
            if folder in out.resolve().parents:
                raise BackmapError(f"{prefix}the output {out} ({label}) lies inside {in_label} {folder}, a folder "
                                   f"that is read; nothing was written: choose another {option}")
        for other_label, other in seen:
            if _same_file(out, other):
                raise BackmapError(f"{prefix}{label} and {other_label} would both be {out}; choose another {option}")
        seen.append((label, out))


class OutputLock:
    """An advisory lock on ``target`` (an output file or a run folder): ``.NAME.lock`` beside it, or
    ``.backmap.lock`` inside a run folder (``folder=True``), holding who took it. Taken with :meth:`acquire` (refused in
    one line when another process holds it), dropped by :meth:`release` or by the process ending."""

    def __init__(self, target: Path | str, option: str = "--out", where: str = "", folder: bool = False):
        self.target = Path(target)
        self.option = option
        self.where = where
        self.path = self.target / ".backmap.lock" if folder else self.target.with_name(f".{self.target.name}.lock")
        self._fd: int | None = None

    def acquire(self) -> "OutputLock":
        #: folders made for the lock: removed again at release when the run left them empty
        self._made = [d for d in (self.path.parent, *self.path.parent.parents) if not d.exists()]
        while True:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:  # a read-only folder, a full disk: named as the output it is for
                raise BackmapError(f"cannot write: {exc.strerror or exc}", source=self.target) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise BackmapError(self._refusal()) from None
            try:  # the file may have been removed by its holder between our open and our lock
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(holder()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # while still held: a process waiting on the old file sees it gone
        os.close(self._fd)
        self._fd = None
        for folder in self._made:  # innermost first
            try:
                folder.rmdir()
            except OSError:  # not empty: the run wrote there
                break

    def _refusal(self) -> str:
        try:
            who = json.loads(self.path.read_text())
        except (OSError, ValueError):
            who = {}
        prefix = f"{self.where}: " if self.where else ""
        pid, command = who.get("pid", "?"), who.get("command") or "command unknown"
        since = f", since {who['started']}" if who.get("started") else ""
        host = f" on {who['host']}" if who.get("host") and who["host"] != socket.gethostname() else ""
        return (f"{prefix}{self.target} is being written by another backmap run (PID {pid}{host}{since}: {command}); "
                f"wait for it to end, or choose another {self.option}")

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def holder() -> dict[str, object]:
    """Who this process is, as a lock records it."""
    command = shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "python"
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}


@contextlib.contextmanager
def claim_outputs(outputs: Sequence[Labelled], inputs: Iterable[Labelled], where: str = "", option: str = "--out",
                  folders: Sequence[str] = ()) -> Iterator[None]:
    """:func:`check_outputs`, then the first output locked (:class:`OutputLock`) for the block."""
    check_outputs(outputs, inputs, where, option, folders)
    main = next(Path(p) for _, p in outputs if p is not None)
    with OutputLock(main, option, where):
        yield


__all__ = ["OutputLock", "check_outputs", "claim_outputs", "holder"]
