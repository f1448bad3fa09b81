"""The committed data sets for temporally coherent trajectory backmapping (issue 16): the CG alanine
dipeptide run (tests/data/dipeptide_cg, scripts/make_dipeptide_cg_data.sh) and the closely spaced hexane
trajectory (tests/data/hexane_traj, scripts/make_hexane_traj_data.sh). Fast checks: they load, the frame
spacing and counts are what the READMEs say, and the CG run stays inside the mapped-AA geometry.

Trajectories are read with the low-level XTC reader, which (unlike an MDAnalysis Universe) leaves no
offset files in tests/data.
"""
from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from backmap.metrics import geometry
from conftest import DATA, REPO

DCG = DATA / "dipeptide_cg"
DIP = DATA / "dipeptide"
HXT = DATA / "hexane_traj"
MAX_SET_BYTES = 5 * 1024 * 1024
BEADS = ["CY", "N", "CA", "CB", "C", "NM"]
BONDS = [("CY", "N"), ("N", "CA"), ("CA", "CB"), ("CA", "C"), ("C", "NM")]
ANGLES = [("CY", "N", "CA"), ("N", "CA", "CB"), ("N", "CA", "C"), ("CB", "CA", "C"), ("CA", "C", "NM")]


def read_xtc(path):
    from MDAnalysis.lib.formats.libmdaxdr import XTCFile

    xs, ts = [], []
    with XTCFile(str(path)) as f:
        for fr in f:
            xs.append(np.array(fr.x, np.float64))
            ts.append(fr.time)
    return np.stack(xs), np.array(ts)


def read_gro(path):
    lines = path.read_text().splitlines()
    n = int(lines[1])
    atoms = [(ln[5:10].strip(), ln[10:15].strip(), [float(ln[20 + 8 * k:28 + 8 * k]) for k in range(3)])
             for ln in lines[2:2 + n]]
    box = [float(v) for v in lines[2 + n].split()]
    return atoms, box


def set_size(d):
    return sum(p.stat().st_size for p in d.iterdir() if p.is_file() and not p.name.startswith("."))


def dist(X, i, j):
    return geometry.distances(X, np.array([[i, j]]))[:, 0]


def angle(X, i, j, k):
    return geometry.angles(X, np.array([[i, j, k]]))[:, 0]


def dihedral(X, i, j, k, l):
    return geometry.dihedrals(X, np.array([[i, j, k, l]]))[:, 0]


# ------------------------------------------------------------------------------------ CG dipeptide
@pytest.fixture(scope="module")
def cg():
    X, t = read_xtc(DCG / "cg.xtc")
    return X, t


@pytest.fixture(scope="module")
def aa_mapped():
    """The committed AA dipeptide run at the 6 beads (each bead sits exactly on one atom)."""
    atoms, _ = read_gro(DIP / "conf.gro")
    want = [("ACE", "C"), ("ALA", "N"), ("ALA", "CA"), ("ALA", "CB"), ("ALA", "C"), ("NME", "N")]
    sel = [next(k for k, (r, a, _) in enumerate(atoms) if r.endswith(res) and a == name) for res, name in want]
    X, t = read_xtc(DIP / "traj.xtc")
    return X[:, sel], t


def test_dipeptide_cg_files_and_size():
    for f in ("README.md", "cg.gro", "cg.xtc", "cg_system.xml", "check.json"):
        assert (DCG / f).is_file(), f
    assert set_size(DCG) <= MAX_SET_BYTES


def test_dipeptide_cg_beads_match_mapping():
    root = ET.parse(REPO / "recipes" / "dipeptide" / "dipeptide.xml").getroot()
    beads = root.findall("./topology/cg_beads/cg_bead")
    names = [b.findtext("name").strip() for b in beads]
    types = [b.findtext("type").strip() for b in beads]
    assert names == BEADS
    atoms, box = read_gro(DCG / "cg.gro")
    assert len(atoms) == 6
    assert [a for _, a, _ in atoms] == names
    assert [a for _, a, _ in atoms] == types  # names = types in this mapping
    assert {r for r, _, _ in atoms} == {root.findtext("name").strip()}  # residue = the mapping's <name>
    assert box == [3.0, 3.0, 3.0]


def test_dipeptide_cg_frames_as_readme(cg):
    X, t = cg
    readme = (DCG / "README.md").read_text()
    m = re.search(r"`cg\.xtc` \| the first ([\d.]+) ns of the CG run: (\d+) frames, t = 0, 1, …, (\d+) ps", readme)
    assert m, "README does not describe cg.xtc"
    n = int(m.group(2))
    assert X.shape == (n, 6, 3)
    assert np.allclose(np.diff(t), 1.0)
    assert t[0] == 0.0 and t[-1] == float(m.group(3))
    assert np.isfinite(X).all()
    # frame 0 of the xtc is cg.gro (0.001 nm gro precision)
    atoms, _ = read_gro(DCG / "cg.gro")
    assert np.abs(np.array([x for _, _, x in atoms]) - X[0]).max() <= 0.0006


def test_dipeptide_cg_geometry_inside_aa_mapped(cg, aa_mapped):
    X, _ = cg
    A, ta = aa_mapped
    assert np.allclose(np.diff(ta), 1.0)
    stats = json.loads((DCG / "check.json").read_text())["stats"]
    idx = {b: k for k, b in enumerate(BEADS)}
    for b in BONDS:
        rc, ra = dist(X, *(idx[n] for n in b)), dist(A, *(idx[n] for n in b))
        s = stats[f"bond:{'-'.join(b)}"]
        # inside the range of the 100 ns mapped AA run (xtc rounding: 0.001 nm per coordinate)
        assert s["aa_min"] - 0.003 <= rc.min() and rc.max() <= s["aa_max"] + 0.003, b
        # and the same distribution as the committed 2 ns AA (means within 0.001 nm, widths within 25 %)
        assert abs(rc.mean() - ra.mean()) < 0.001, b
        assert 0.75 < rc.std() / ra.std() < 1.25, b
    for a in ANGLES:
        tc, tq = angle(X, *(idx[n] for n in a)), angle(A, *(idx[n] for n in a))
        assert abs(tc.mean() - tq.mean()) < 1.5, a
        assert tq.min() - 8 <= tc.min() and tc.max() <= tq.max() + 8, a
    # CA keeps its chirality (improper N-C-CA-CB of the L residue stays near +123 degrees)
    xi = dihedral(X, idx["N"], idx["C"], idx["CA"], idx["CB"])
    assert (xi > 60).all() and (dihedral(A, idx["N"], idx["C"], idx["CA"], idx["CB"]) > 60).all()
    # like the AA run, the CG stays at phi < 0 (C7eq / C5 / alphaR)
    phi = dihedral(X, idx["CY"], idx["N"], idx["CA"], idx["C"])
    assert (phi < 0).mean() > 0.99


def test_dipeptide_cg_force_field_loads(cg):
    openmm = pytest.importorskip("openmm")
    system = openmm.XmlSerializer.deserialize((DCG / "cg_system.xml").read_text())
    assert system.getNumParticles() == 6
    masses = [system.getParticleMass(k).value_in_unit(openmm.unit.dalton) for k in range(6)]
    assert abs(sum(masses) - 144.18) < 0.05  # bead masses: sum of the home atoms' masses
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    X, _ = cg
    e = []
    for x in X[:: max(1, len(X) // 20)]:
        ctx.setPositions(x)
        e.append(ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(openmm.unit.kilojoule_per_mole))
    assert np.isfinite(e).all() and np.ptp(e) < 200


def test_dipeptide_cg_check_numbers():
    ck = json.loads((DCG / "check.json").read_text())
    js = ck["jsd_bits"]
    assert set(js) >= {f"bond:{'-'.join(b)}" for b in BONDS} | {"map:phi-psi"}
    assert all(0 <= v <= 1 for v in js.values())
    assert js["map:phi-psi"] < 0.1


# ---------------------------------------------------------------------------------- hexane traj
def test_hexane_traj_frames_as_readme():
    readme = (HXT / "README.md").read_text()
    every = float(re.search(r"a frame every ([\d.]+) ps", readme).group(1))
    m = re.search(r"`traj\.xtc` \| the first (\d+) ps of the production: (\d+) frames", readme)
    assert m and every in (0.5, 1.0)
    X, t = read_xtc(HXT / "traj.xtc")
    assert X.shape == (int(m.group(2)), 4000, 3)
    assert np.allclose(np.diff(t), every)
    assert t[0] == 0.0 and np.isclose(t[-1], float(m.group(1)))
    assert set_size(HXT) <= MAX_SET_BYTES
    # frame 0 is conf.gro (molecules whole there; same positions modulo the box)
    atoms, box = read_gro(HXT / "conf.gro")
    g = np.array([x for _, _, x in atoms])
    d = X[0] - g
    d -= np.array(box[:3]) * np.round(d / np.array(box[:3]))
    assert np.abs(d).max() <= 0.0011
    # consecutive frames are close: no atom moves more than 1 nm in one frame interval
    dx = np.diff(X, axis=0)
    dx -= np.array(box[:3]) * np.round(dx / np.array(box[:3]))
    assert np.linalg.norm(dx, axis=-1).max() < 1.0


def test_hexane_traj_topology_matches():
    for f in ("topol.top", "hexane.xml"):
        assert (HXT / f).read_text() == (DATA / "hexane" / f).read_text()
    assert (HXT / "topol.tpr").is_file() and (HXT / "grompp.mdp").is_file()
