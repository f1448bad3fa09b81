"""The committed tetracosane data set (issue 17, item 2; tests/data/tcs, scripts/make_tcs_data.sh):
liquid n-C24H50 at 400 K, OPLS-AA and Martini 2 (6 C1 beads), and the VOTCA mapping between them.
Fast checks: files load, atom/bead counts, Martini bond lengths, the mapping reproduces mapped.xtc, the
mapped-AA bond distribution, and the densities the README reports.

Trajectories are read with the low-level XTC reader (no offset files in tests/data).
"""
from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from conftest import DATA

TCS = DATA / "tcs"
NMOL, NAPM, NB = 48, 74, 6
MAX_SET_BYTES = 5 * 1024 * 1024
M_C, M_H = 12.011, 1.008

pytestmark = pytest.mark.skipif(not (TCS / "README.md").is_file(), reason="tests/data/tcs not generated")


def read_xtc(path):
    from MDAnalysis.lib.formats.libmdaxdr import XTCFile

    xs, ts, boxes = [], [], []
    with XTCFile(str(path)) as f:
        for fr in f:
            xs.append(np.array(fr.x, np.float64))
            ts.append(fr.time)
            boxes.append(np.diag(np.array(fr.box, np.float64)))
    return np.stack(xs), np.array(ts), np.stack(boxes)


def read_gro(path):
    lines = path.read_text().splitlines()
    n = int(lines[1])
    atoms = [(ln[5:10].strip(), ln[10:15].strip(), [float(ln[20 + 8 * k:28 + 8 * k]) for k in range(3)])
             for ln in lines[2:2 + n]]
    return atoms, np.array([float(v) for v in lines[2 + n].split()[:3]])


def whole(X, box, parent):
    """Unwrap (T, nmol, n, 3) along the parent chain with the minimum image (orthorhombic)."""
    Y = X.copy()
    for a, p in enumerate(parent):
        if p < 0:
            continue
        d = Y[:, :, a] - Y[:, :, p]
        d -= box[:, None] * np.round(d / box[:, None])
        Y[:, :, a] = Y[:, :, p] + d
    return Y


def bond_lengths(B):
    return np.linalg.norm(B[:, :, 1:] - B[:, :, :-1], axis=-1)


@pytest.fixture(scope="module")
def mapping():
    root = ET.parse(TCS / "tcs.xml").getroot()
    maps = {m.findtext("name").strip(): [float(w) for w in m.findtext("weights").split()]
            for m in root.findall("./maps/map")}
    beads = []
    for b in root.findall("./topology/cg_beads/cg_bead"):
        members = b.findtext("beads").split()
        w = maps[b.findtext("mapping").strip()]
        assert len(w) == len(members)
        beads.append((b.findtext("name").strip(), b.findtext("type").strip(), members, w))
    return root, beads


@pytest.fixture(scope="module")
def stats():
    return json.loads((TCS / "stats.json").read_text())


def test_files_and_size():
    for f in ("README.md", "tcs.xml", "stats.json", "mapped.xtc",
              "aa/topol.top", "aa/tcs.itp", "aa/conf.gro", "aa/topol.tpr", "aa/traj.xtc",
              "martini/topol.top", "martini/martini_c1.itp", "martini/tcs_martini.itp",
              "martini/conf.gro", "martini/topol.tpr", "martini/traj.xtc"):
        assert (TCS / f).is_file(), f
    size = sum(p.stat().st_size for p in TCS.rglob("*") if p.is_file())
    assert size <= MAX_SET_BYTES


def test_aa_counts_and_topology():
    atoms, box = read_gro(TCS / "aa" / "conf.gro")
    assert len(atoms) == NMOL * NAPM
    names = [a for _, a, _ in atoms[:NAPM]]
    assert sum(n.startswith("C") for n in names) == 24 and sum(n.startswith("H") for n in names) == 50
    assert names[:5] == ["C1", "H1A", "H1B", "H1C", "C2"]
    assert {r for r, _, _ in atoms} == {"TCS"}
    itp = (TCS / "aa" / "tcs.itp").read_text()
    types = re.findall(r"^\s*\d+\s+(opls_\d+)\s", itp, re.M)
    assert types.count("opls_135") == 2 and types.count("opls_136") == 22 and types.count("opls_140") == 50
    assert re.search(r"^TCS\s+%d\s*$" % NMOL, (TCS / "aa" / "topol.top").read_text(), re.M)
    X, t, boxes = read_xtc(TCS / "aa" / "traj.xtc")
    assert X.shape[1:] == (NMOL * NAPM, 3) and len(X) >= 2
    assert np.allclose(np.diff(t), t[1] - t[0]) and t[0] == 0.0
    assert np.allclose(boxes, boxes[0]) and np.allclose(boxes[0], box, atol=1e-3)  # NVT


def test_aa_tpr_loads():
    mda = pytest.importorskip("MDAnalysis")
    u = mda.Universe(str(TCS / "aa" / "topol.tpr"))
    assert u.atoms.n_atoms == NMOL * NAPM and len(u.atoms.fragments) == NMOL
    assert np.isclose(u.atoms.fragments[0].masses.sum(), 24 * M_C + 50 * M_H, atol=1e-3)
    assert np.isclose(u.atoms.charges.sum(), 0.0, atol=1e-4)


def test_martini_counts_and_bonds():
    atoms, box = read_gro(TCS / "martini" / "conf.gro")
    assert len(atoms) == NMOL * NB
    assert [a for _, a, _ in atoms[:NB]] == [f"B{k}" for k in range(1, NB + 1)]
    assert "C1" in (TCS / "martini" / "martini_c1.itp").read_text()
    X, t, boxes = read_xtc(TCS / "martini" / "traj.xtc")
    assert X.shape[1:] == (NMOL * NB, 3) and len(X) >= 5
    assert np.allclose(np.diff(t), t[1] - t[0])
    B = whole(X.reshape(len(X), NMOL, NB, 3), boxes, np.arange(-1, NB - 1))
    b = bond_lengths(B)
    # Martini b0 0.47 nm, k 1250 kJ/mol/nm^2: sqrt(kT/k) = 0.052 nm at 400 K. In the dense liquid the
    # bonds are compressed on average (mean ~0.455 nm; 0.478 nm for an isolated chain) with a tail of
    # rare short bonds (down to ~0.23 nm in the 10 ns run)
    assert 0.44 < b.mean() < 0.50
    assert 0.035 < b.std() < 0.07
    assert 0.15 < b.min() and b.max() < 0.75


def test_mapping_file(mapping):
    root, beads = mapping
    assert root.findtext("ident").strip() == "TCS"
    assert [b[0] for b in beads] == [f"B{k}" for k in range(1, NB + 1)]
    assert {b[1] for b in beads} == {"C1"}
    members = [m for b in beads for m in b[2]]
    assert len(members) == NAPM and len(set(members)) == NAPM
    for k, (_, _, mem, w) in enumerate(beads):
        carbons = sorted(int(m.split(":")[2][1:]) for m in mem if m.split(":")[2].startswith("C"))
        assert carbons == list(range(4 * k + 1, 4 * k + 5))
        assert all((x == M_C) == (m.split(":")[2].startswith("C")) for m, x in zip(mem, w))
        assert all(x in (M_C, M_H) for x in w)


def test_mapped_xtc_is_the_mapping(mapping):
    """mapped.xtc (backmap map) = the mass-weighted bead centres of aa/traj.xtc, frame by frame."""
    _, beads = mapping
    atoms, _ = read_gro(TCS / "aa" / "conf.gro")
    idx = {a: k for k, (_, a, _) in enumerate(atoms[:NAPM])}
    X, t, boxes = read_xtc(TCS / "aa" / "traj.xtc")
    M, tm, _ = read_xtc(TCS / "mapped.xtc")
    assert M.shape == (len(X), NMOL * NB, 3) and np.allclose(t, tm)
    parent = np.full(NAPM, -1)
    for a, k in idx.items():  # carbons chain to the previous carbon, hydrogens to their carbon
        if a == "C1":
            continue
        c = int(a[1:]) - 1 if a.startswith("C") else int(re.match(r"H(\d+)", a).group(1))
        parent[k] = idx[f"C{c}"]
    A = whole(X.reshape(len(X), NMOL, NAPM, 3), boxes, parent)
    W = np.zeros((NB, NAPM))
    for k, (_, _, mem, w) in enumerate(beads):
        for m, x in zip(mem, w):
            W[k, idx[m.split(":")[2]]] = x
    W /= W.sum(1, keepdims=True)
    ref = np.einsum("ba,tmai->tmbi", W, A).reshape(len(X), -1, 3)
    d = ref - M
    d -= boxes[:, None] * np.round(d / boxes[:, None])
    assert np.abs(d).max() < 0.002  # xtc precision 0.001 nm


def test_mapped_aa_bond_distribution(stats):
    M, _, boxes = read_xtc(TCS / "mapped.xtc")
    B = whole(M.reshape(len(M), NMOL, NB, 3), boxes, np.arange(-1, NB - 1))
    b = bond_lengths(B).ravel()
    full = stats["aa_mapped"]
    assert 0.45 < b.mean() < 0.52 and abs(b.mean() - full["bond_mean_nm"]) < 0.01
    assert 0.30 < b.min() and b.max() < 0.60   # tight gauche-gauche turns go down to ~0.35 nm
    # the full run's histogram peaks lie in the gauche/trans window of the central C-C bond
    assert full["bond_peaks_nm"] and all(0.43 < p < 0.54 for p in full["bond_peaks_nm"])
    # the same statistics from backmap map's output
    assert abs(stats["aa_backmap_mapped"]["bond_mean_nm"] - full["bond_mean_nm"]) < 0.002


def test_readme_densities(stats):
    readme = (TCS / "README.md").read_text()
    aa = float(re.search(r"\*\*([\d.]+) g/cm³\*\* \(AA density\)", readme).group(1))
    cg = float(re.search(r"\*\*([\d.]+) g/cm³\*\* \(Martini density, bead mass 72\)", readme).group(1))
    assert 0.68 < aa < 0.80                  # liquid TCS at 400 K: ~0.72-0.74 g/cm3 (experiment)
    assert 0.60 < cg < 1.0                   # Martini mass density (72 per bead)
    d = stats["density_g_cm3"]
    assert abs(d["aa_npt_second_half"] - aa) < 1e-3 and abs(d["martini_npt_second_half_bead_mass72"] - cg) < 1e-3
    assert 0.68 < d["aa_production_box"] < 0.80
    for k in ("Re_rms_nm", "Rg_rms_nm"):
        assert 0.5 < stats["aa_mapped"][k] < 2.6 and 0.5 < stats["martini"][k] < 2.6
