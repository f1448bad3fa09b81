"""Hardening against the operating system: read-only folders, a full disk, a work directory that is
a file (docs/errors.md, "Operating-system errors"), and plain progress lines when stderr is not a
terminal."""
from __future__ import annotations

import errno
import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from backmap.system.io import Frame, write_frames

from conftest import HEXANE, one_line_error

def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".backmap-tmp-" in p.name]


def _recipe(tmp_path: Path) -> Path:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: r
        seed: 2
        workdir: {tmp_path / 'work'}
        system: {{topology: {HEXANE / 'topol.top'}, mapping: {HEXANE / 'hexane.xml'}}}
        data: {{trajectory: {HEXANE / 'traj.xtc'}, frames: '0:5', split: {{test_fraction: 0.2, mode: tail}}}}
        steps: [{{prepare: {{}}}}]"""))
    return recipe


def _map(out: Path) -> list:
    return ["map", "--topology", HEXANE / "topol.top", "--traj", HEXANE / "traj.xtc", "--mapping",
            HEXANE / "hexane.xml", "--out", out, "--frames", "0:3"]


@pytest.fixture
def read_only(tmp_path, monkeypatch):
    """A folder without write permission (0o500). As root (the tests run as root here) ``chmod`` does
    not stop writes, which is detected by trying one; then creating files and folders in it and
    renaming into it are made to fail with EACCES the way the kernel would (``os.open`` with O_CREAT,
    which ``tempfile.mkstemp`` uses, ``os.mkdir``, ``os.replace``)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    probe = folder / "probe"
    try:
        probe.write_text("")
    except PermissionError:
        pass
    else:
        probe.unlink()

        def inside(path) -> bool:  # an entry of the folder (the folder itself is its parent's)
            return folder.resolve() in Path(os.fsdecode(path)).resolve().parents

        def denied(path):
            return PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))

        real_open, real_mkdir, real_replace = os.open, os.mkdir, os.replace

        def fake_open(path, flags, *args, **kwargs):
            if flags & os.O_CREAT and inside(path):
                raise denied(path)
            return real_open(path, flags, *args, **kwargs)

        def fake_mkdir(path, *args, **kwargs):
            if inside(path):
                raise denied(path)
            return real_mkdir(path, *args, **kwargs)

        def fake_replace(src, dst, *args, **kwargs):
            if inside(dst):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(src), None,
                                      os.fsdecode(dst))
            return real_replace(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, "open", fake_open)
        monkeypatch.setattr(os, "mkdir", fake_mkdir)
        monkeypatch.setattr(os, "replace", fake_replace)
    yield folder
    folder.chmod(0o700)


# --------------------------------------------------------------------------- read-only folders
def test_read_only_output_folder_names_the_output(cli, read_only):
    """Issue item 5: "OS errors give raw tracebacks: read-only output directory, …": `map` into a
    folder it may not write names the output; nothing is left in the folder."""
    out = read_only / "cg.xtc"
    line = one_line_error(*cli(*_map(out))[::2])
    assert line == f"error: {out}: cannot write: Permission denied", line
    assert list(read_only.iterdir()) == []


def test_read_only_rename_names_the_target_not_the_temporary(cli, tmp_path, monkeypatch):
    """Issue item 5 (read-only output directory): a failing rename of the finished temporary (a
    read-only bind mount, EROFS) names the output, and the temporary is removed."""

    def fake_replace(src, dst, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(src), None, os.fsdecode(dst))

    monkeypatch.setattr(os, "replace", fake_replace)
    out = tmp_path / "out" / "cg.gro"
    line = one_line_error(*cli(*_map(out))[::2])
    assert line == f"error: {out}: cannot write: Read-only file system", line
    assert not out.parent.exists() or list(out.parent.iterdir()) == []  # nothing left, nor the folder made for it


def test_read_only_work_directory_is_one_line(cli, tmp_path, read_only):
    """Issue item 5: "OS errors give raw tracebacks: read-only output directory, …": a `run` into a
    read-only work directory is one line naming what it could not write, no temporaries left."""
    code, _, err = cli("run", _recipe(tmp_path), "--workdir", read_only)
    line = one_line_error(code, err)
    assert line.startswith(f"error: {read_only}") and line.endswith("Permission denied"), line
    assert _temporaries(read_only) == []


# --------------------------------------------------------------------------- disk full
@pytest.mark.parametrize("raised, reason", [
    (OSError("XTC write error = compression"), "XTC write error = compression (is the disk full?)"),
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "No space left on device"),
])
def test_disk_full_names_the_output_and_leaves_nothing(cli, tmp_path, monkeypatch, raised, reason):
    """Issue item 5: "disk full (`XTC write error = compression`)": MDAnalysis' XTC writer raises an
    errno-less ``OSError`` (libmdaxdr) when xdrfile cannot write; a Python write an ENOSPC one."""
    from MDAnalysis.coordinates.XTC import XTCWriter

    def full(self, *args, **kwargs):
        raise raised

    monkeypatch.setattr(XTCWriter, "_write_next_frame", full)
    out = tmp_path / "out" / "cg.xtc"
    line = one_line_error(*cli(*_map(out))[::2])
    assert line == f"error: {out}: cannot write: {reason}", line
    assert not out.parent.exists() or list(out.parent.iterdir()) == []  # nothing left, nor the folder made for it


def test_write_frames_passes_input_errors_on_unchanged(tmp_path):
    """An ``OSError`` of reading the frames is the input's, not the output's: ``write_frames`` does
    not turn it into an error naming the output."""

    def frames():
        yield Frame(np.zeros((2, 3), np.float32), np.array([3, 3, 3, 90, 90, 90], np.float32))
        raise OSError("XTC read error = endoffile")

    with pytest.raises(OSError, match="read error"):
        write_frames(tmp_path / "out.xtc", frames(), ["A", "B"], ["R", "R"], [1, 1])
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- work directory a file
def test_work_directory_that_is_a_file(cli, tmp_path):
    """Issue item 5: "OS errors give raw tracebacks: … a work directory that is a file."
    `backmap run recipe --workdir somefile` (or a folder below it) is one line; the file is untouched."""
    somefile = tmp_path / "somefile"
    somefile.write_text("keep me\n")
    line = one_line_error(*cli("run", _recipe(tmp_path), "--workdir", somefile)[::2])
    assert line == f"error: {somefile}: File exists and is not a folder", line
    line = one_line_error(*cli("run", _recipe(tmp_path), "--workdir", somefile / "sub")[::2])
    assert line == f"error: {somefile / 'sub'}: Not a directory", line
    assert somefile.read_text() == "keep me\n" and sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml", "somefile"]


def test_debug_shows_the_traceback(cli, tmp_path):
    """``--debug`` lets the ``OSError`` through (a traceback), as it does a ``BackmapError``."""
    from click.testing import CliRunner

    from backmap.cli import cli as app

    somefile = tmp_path / "somefile"
    somefile.write_text("")
    result = CliRunner().invoke(app, ["--debug", "run", str(_recipe(tmp_path)), "--workdir", str(somefile)])
    assert isinstance(result.exception, FileExistsError)


# --------------------------------------------------------------------------- progress without a terminal
class _Sized:
    """An iterable with a length (as lists and ranges have), whose items come out one by one."""

    def __init__(self, items: Iterator[int], n: int) -> None:
        self.items, self.n = items, n

    def __iter__(self) -> Iterator[int]:
        return self.items

    def __len__(self) -> int:
        return self.n


def _run(monkeypatch, n: int, seconds_per_item: float, sized: bool = True) -> None:
    """Drive ``progress()`` over ``n`` items that each take ``seconds_per_item`` on a patched clock,
    with progress turned on (conftest turns it off) and stderr captured (not a terminal)."""
    from backmap import progress as module

    clock = [1000.0]
    monkeypatch.setattr(module.time, "monotonic", lambda: clock[0])
    monkeypatch.delenv("BACKMAP_NO_PROGRESS", raising=False)

    def slow() -> Iterator[int]:
        for i in range(n):
            clock[0] += seconds_per_item  # the work for item i
            yield i

    items = _Sized(slow(), n) if sized else slow()
    assert list(module.progress(items, description="backmapping")) == list(range(n))


def test_progress_prints_plain_lines_when_stderr_is_not_a_terminal(monkeypatch, capsys):
    """Issue item 20: "Long commands are silent when output is not a terminal (print a progress line
    per N frames to stderr instead)." At most one line per 30 s, and one at the end."""
    _run(monkeypatch, 71, 12.3)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "backmapping: 3/71 (4 %), 12.3 s/item, about 14 min left", lines
    assert len(lines) == 71 // 3 + 1  # every third item (36.9 s), the end
    assert lines[-1] == "backmapping: 71/71 (100 %), 12.3 s/item, 15 min in all", lines


def test_progress_without_a_total(monkeypatch, capsys):
    """Issue item 20: a loop of unknown length still says how far it got."""
    _run(monkeypatch, 4, 20.0, sized=False)
    assert capsys.readouterr().err.splitlines() == ["backmapping: 2, 20 s/item", "backmapping: 4, 20 s/item"]


def test_progress_is_quiet_for_short_loops_and_when_turned_off(monkeypatch, capsys):
    """Issue item 20: short commands (and the test suite) stay quiet; ``BACKMAP_NO_PROGRESS`` silences it."""
    _run(monkeypatch, 50, 0.5)  # 25 s in all
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("BACKMAP_NO_PROGRESS", "1")
    from backmap.progress import progress

    assert list(progress(range(3))) == [0, 1, 2] and capsys.readouterr().err == ""


def test_progress_inside_a_long_item_prints_plain_lines_also_on_a_terminal(monkeypatch, capsys):
    """A long frame (the openmm refiner's dynamics of a 40 000-atom PME system take minutes) says
    how far it got even while the frames' progress bar owns the terminal: ``heartbeat`` prints plain
    lines only, and stays quiet with ``BACKMAP_NO_PROGRESS``."""
    from backmap import progress as module

    clock = [1000.0]
    monkeypatch.setattr(module.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(module, "enabled", lambda: True)  # a terminal: progress() would draw a bar
    monkeypatch.delenv("BACKMAP_NO_PROGRESS", raising=False)

    def chunks():
        for i in range(40):
            clock[0] += 20.0  # 25 steps of a large system
            yield i

    assert list(module.heartbeat(chunks(), 40, "openmm: the frame's dynamics")) == list(range(40))
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "openmm: the frame's dynamics: 2/40 (5 %), 20 s/item, about 13 min left", lines
    assert lines[-1] == "openmm: the frame's dynamics: 40/40 (100 %), 20 s/item" and len(lines) == 20, lines
    monkeypatch.setenv("BACKMAP_NO_PROGRESS", "1")
    assert list(module.heartbeat(range(3))) == [0, 1, 2] and capsys.readouterr().err == ""


def test_a_full_disk_names_any_atomic_output(tmp_path):
    """A write error without a file name (Python's ENOSPC from a plain write) names the output that
    was being written, for every output written through atomic_path (pair caches, metrics, …)."""
    import errno

    from backmap.system.io import atomic_path

    target = tmp_path / "metrics.json"
    with pytest.raises(OSError) as info:
        with atomic_path(target):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert info.value.filename == str(target) and not list(tmp_path.iterdir())
