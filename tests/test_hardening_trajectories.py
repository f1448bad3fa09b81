"""Trajectories that are wrong but readable (backmap.system.frame_checks): an atom count that
changes mid-file, a frame cut short, absurd boxes, an atom far outside the box — each refused in one
line naming the file, the frame and (where it is one atom) the atom, by every command that reads."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from backmap.errors import BackmapError
from backmap.system.frame_checks import check_xdr_frames
from backmap.system.io import Frame, read_frames, write_frames

from conftest import HEXANE, one_line_error, run_cli


def _frames(n: int = 3, atoms: int = 12, box: float = 3.0) -> list[Frame]:
    rng = np.random.default_rng(0)
    return [Frame(rng.random((atoms, 3)) * box, np.array([box, box, box, 90, 90, 90.0]), float(k), k)
            for k in range(n)]


def _write(path: Path, frames: list[Frame]) -> Path:
    n = len(frames[0].positions)
    write_frames(path, frames, ["C"] * n, ["X"] * n, np.arange(n) + 1)
    return path


@pytest.mark.parametrize("suffix", [".xtc", ".trr"])
def test_an_atom_count_that_changes_mid_file_is_refused(tmp_path, suffix):
    """Two systems' files concatenated: MDAnalysis reads the second's frames as the first's atoms."""
    a, b = _write(tmp_path / f"a{suffix}", _frames(2, 12)), _write(tmp_path / f"b{suffix}", _frames(2, 10))
    both = tmp_path / f"both{suffix}"
    both.write_bytes(a.read_bytes() + b.read_bytes())
    with pytest.raises(BackmapError, match="frame 2 has 10 atoms but frame 0 has 12"):
        list(read_frames(both))


@pytest.mark.parametrize("suffix", [".xtc", ".trr"])
@pytest.mark.parametrize("where", ["in its header", "in its middle", "4 bytes before its end"])
def test_a_frame_cut_short_is_refused_naming_it(tmp_path, suffix, where):
    """MDAnalysis reads such a file as a shorter, complete one."""
    full = _write(tmp_path / f"full{suffix}", _frames(3, 40))
    start = _write(tmp_path / f"two{suffix}", _frames(2, 40)).stat().st_size  # where frame 2 begins
    end = full.stat().st_size
    at = {"in its header": start + 8, "in its middle": (start + end) // 2, "4 bytes before its end": end - 4}[where]
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(full.read_bytes()[:at])
    assert check_xdr_frames(full) == (3, 40)
    with pytest.raises(BackmapError, match="frame 2 is cut short"):
        list(read_frames(cut))


@pytest.mark.parametrize("box, message", [
    ("-4.0 4.0 4.0", "box edges -4, 4, 4 nm: each must be > 0"),
    ("1e9 4.0 4.0", "≤ 100000 nm"),
    ("0.01 0.01 0.01", "denser than any matter"),
])
def test_absurd_boxes_are_one_line_for_a_command(tmp_path, box, message):
    lines = (HEXANE / "conf.gro").read_text().splitlines()
    bad = tmp_path / "bad.gro"
    bad.write_text("\n".join(lines[:-1] + [f"   {box}"]) + "\n")
    code, _, err = run_cli("map", "--topology", HEXANE / "topol.top", "--traj", bad, "--mapping",
                           HEXANE / "hexane.xml", "--out", tmp_path / "cg.gro")
    line = one_line_error(code, err)
    assert "bad.gro: frame 0:" in line and message in line
    assert not (tmp_path / "cg.gro").exists()


def test_an_atom_far_outside_the_box_is_named(tmp_path):
    frames = _frames(2, 12)
    frames[1].positions[4, 0] = 1e5
    path = _write(tmp_path / "far.xtc", frames)
    with pytest.raises(BackmapError, match=r"frame 1: atom 5 at \[100000.0\d*, .* outside the box"):
        list(read_frames(path))


def test_unwrapped_molecules_a_few_boxes_away_still_read(tmp_path):
    """A "nojump" trajectory drifts by a few box lengths: that is data, not damage."""
    frames = _frames(2, 12)
    frames[1].positions += 20.0  # ~7 boxes
    assert len(list(read_frames(_write(tmp_path / "drift.xtc", frames)))) == 2
