"""`backmap map`: AA → CG like csg_map; parity with VOTCA; the sPS mapping bound."""
import subprocess

import numpy as np
import pytest

from backmap.system.io import read_frames
from backmap.system.pbc import minimum_image

from conftest import HEXANE, REPO, TRICLINIC, need


def _deviation(a_path, b_path):
    a, b = list(read_frames(a_path)), list(read_frames(b_path))
    assert len(a) == len(b)
    return np.array([np.linalg.norm(minimum_image(x.positions - y.positions, x.dimensions), axis=1)
                     for x, y in zip(a, b)])


@pytest.mark.votca
def test_csg_map_parity(tmp_path, cli):
    """Our CG coordinates equal VOTCA csg_map's to ≤ 0.001 nm on the project's hexane data."""
    csg_map = need("csg_map")
    ours, theirs = tmp_path / "ours.trr", tmp_path / "votca.trr"  # full precision, no .xtc rounding
    code, out, err = cli("map", "--topology", HEXANE / "topol.tpr", "--traj", HEXANE / "traj.trr",
                         "--mapping", HEXANE / "hexane.xml", "--out", ours)
    assert code == 0, err
    subprocess.run([csg_map, "--top", HEXANE / "topol.tpr", "--trj", HEXANE / "traj.trr",
                    "--cg", HEXANE / "hexane.xml", "--out", theirs], check=True, capture_output=True, cwd=tmp_path)
    d = _deviation(ours, theirs)
    print(f"csg_map parity: max {d.max():.2e} nm over {d.size} beads")
    assert d.max() <= 0.001


@pytest.mark.votca
def test_csg_map_parity_triclinic(tmp_path, cli):
    csg_map = need("csg_map")
    ours, theirs = tmp_path / "ours.gro", tmp_path / "votca.gro"
    code, _, err = cli("map", "--topology", TRICLINIC / "topol.tpr", "--traj", TRICLINIC / "traj.xtc",
                       "--mapping", HEXANE / "hexane.xml", "--out", ours, "--frames", "0")
    assert code == 0, err
    subprocess.run([csg_map, "--top", TRICLINIC / "topol.tpr", "--trj", TRICLINIC / "traj.xtc", "--nframes", "1",
                    "--cg", HEXANE / "hexane.xml", "--out", theirs], check=True, capture_output=True, cwd=tmp_path)
    assert _deviation(ours, theirs).max() <= 0.0015  # .gro stores 0.001 nm


@pytest.mark.parametrize("suffix", [".gro", ".pdb", ".xtc"])
def test_map_formats_and_top_topology(tmp_path, cli, suffix):
    out = tmp_path / f"cg{suffix}"
    code, stdout, err = cli("map", "--topology", HEXANE / "topol.top", "--traj", HEXANE / "traj.xtc",
                            "--mapping", HEXANE / "hexane.xml", "--out", out, "--frames", "0:3")
    assert code == 0, err
    if suffix == ".pdb":  # a multi-model PDB has its box in the header only, which MDAnalysis does not read back
        import MDAnalysis as mda

        first = mda.coordinates.core.reader(str(out)).ts.positions / 10.0
    else:
        first = next(read_frames(out)).positions
    text = out.read_text() if suffix != ".xtc" else ""
    if suffix == ".xtc":
        n_written = len(list(read_frames(out)))
    else:
        n_written = text.count("Written by MDAnalysis" if suffix == ".gro" else "\nMODEL")
    assert n_written == 3 and first.shape == (600, 3)
    assert "3 frames, 600 beads" in stdout
    # equal to the mapping applied in memory to whole molecules, up to the format's precision
    from backmap.engine.loaders import load_mapping
    from backmap.system.pbc import Unwrapper
    from backmap.engine.loaders import load_topology

    topo = load_topology(HEXANE / "topol.top")
    cg_top = load_mapping(HEXANE / "hexane.xml", topo).cg_topology(topo)
    aa = next(read_frames(HEXANE / "traj.xtc"))
    expected = cg_top.apply(Unwrapper(topo)(aa.positions, aa.dimensions))
    assert np.abs(first - expected).max() <= 0.0006
    if suffix != ".pdb":
        np.testing.assert_allclose(next(read_frames(out)).dimensions, aa.dimensions, atol=1e-3)


def test_sps_mapping_reproduces_reference_cg(tmp_path, cli, shared):
    """recipes/sps/sps.xml maps aa.xtc onto cg.xtc within 0.005 nm over all 78 frames."""
    ev = shared / "sps" / "eval_t568"
    out = tmp_path / "cg.xtc"
    code, _, err = cli("map", "--topology", shared / "sps" / "top" / "topol.top", "--traj", ev / "aa.xtc",
                       "--mapping", REPO / "recipes" / "sps" / "sps.xml", "--out", out)
    assert code == 0, err
    d = _deviation(out, ev / "cg.xtc")
    print(f"sPS mapping deviation: max {d.max():.5f} nm, rms {np.sqrt((d**2).mean()):.5f} nm, {d.shape[0]} frames")
    assert d.shape == (78, 720) and d.max() <= 0.005


def test_sps_placement_order_variants_keep_the_mapping():
    """sps-rings-first.xml and sps-interleaved.xml are sps.xml with a placement order only: the
    same beads, atoms and weights (a copy that drifted would backmap another CG model), and an
    order that names every bead once."""
    import xml.etree.ElementTree as ET

    def content(path):
        root = ET.parse(path).getroot()
        beads = [(b.findtext("name"), b.findtext("type"), b.findtext("mapping"), b.findtext("beads").split())
                 for b in root.iter("cg_bead")]
        maps = [(m.findtext("name"), m.findtext("weights").split()) for m in root.iter("map")]
        order = root.findtext("topology/placement_order")
        return beads, maps, order

    beads, maps, order = content(REPO / "recipes" / "sps" / "sps.xml")
    assert order is None and len(beads) == 20
    for variant in ("sps-rings-first.xml", "sps-interleaved.xml"):
        b, m, o = content(REPO / "recipes" / "sps" / variant)
        assert (b, m) == (beads, maps), variant
        assert sorted(o.split()) == sorted(name for name, *_ in beads), variant
