"""Shared fixtures: the project's own test data, the shared reference sets, external programs."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

os.environ.setdefault("BACKMAP_NO_PROGRESS", "1")

DATA = Path(__file__).parent / "data"
HEXANE = DATA / "hexane"
TRICLINIC = DATA / "hexane_triclinic"
REPO = Path(__file__).parent.parent
SHARED = REPO.parent / "shared" / "data"


@pytest.fixture
def shared() -> Path:
    """The large reference sets beside the repo (present in CI; skipped where absent)."""
    if not SHARED.is_dir():
        pytest.skip(f"reference data {SHARED} not present")
    return SHARED


def need(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{program} must be installed in CI (.ci/run installs it)")
        pytest.skip(f"{program} not installed (apt-get install gromacs votca)")
    return path


@pytest.fixture(scope="session")
def hexane_topology():
    from backmap.engine.loaders import load_topology

    return load_topology(HEXANE / "topol.top")


@pytest.fixture(scope="session")
def hexane_frame():
    """The hexane topology, its CG topology, the first frame whole (N, 3) and the frame itself."""
    from backmap.engine.loaders import load_mapping, load_topology
    from backmap.system.io import read_frames
    from backmap.system.pbc import Unwrapper

    topo = load_topology(HEXANE / "topol.top")
    cg = load_mapping(HEXANE / "hexane.xml", topo).cg_topology(topo)
    fr = next(read_frames(HEXANE / "traj.xtc"))
    return topo, cg, Unwrapper(topo)(fr.positions, fr.dimensions), fr


@pytest.fixture(scope="session")
def hexane_tpr():
    from backmap.engine.loaders import load_topology

    return load_topology(HEXANE / "topol.tpr")


def run_cli(*args, catch_exceptions: bool = True) -> tuple[int, str, str]:
    """Run the real ``backmap`` command line in-process; returns (exit code, stdout, stderr).
    ``catch_exceptions=False`` lets a crash surface as its traceback (for fixtures that build on a run)."""
    from backmap.cli import cli as app

    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=catch_exceptions)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def cli():
    """:func:`run_cli` as a fixture."""
    return run_cli


def one_line_error(code: int, err: str) -> str:
    """The error line: exit 2, no traceback, one ``error:`` line, last (``run`` prints step rules before)."""
    assert code == 2, err
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == lines[-1:] and "Traceback" not in err, err
    return errors[0]
