"""System model from GROMACS topologies: .top (parmed), .tpr and .gro (MDAnalysis)."""
import numpy as np
import pytest

from backmap.errors import BackmapError
from backmap.engine.loaders import load_topology

from conftest import HEXANE


def test_hexane_top_atoms_and_parameters(hexane_topology):
    topo = hexane_topology
    (block,) = topo.blocks
    mt = block.moltype
    assert mt.name == "Protein" and mt.n_atoms == 20 and block.count * 20 == topo.n_atoms
    assert list(mt.atom_names[:5]) == ["C", "H1", "H2", "H3", "C"]
    assert list(mt.atom_types[:5]) == ["opls_135", "opls_140", "opls_140", "opls_140", "opls_136"]
    assert list(mt.resnames[[0, 4, 19]]) == ["CHL", "CH2", "CHR"]
    assert list(mt.resids[[0, 4, 19]]) == [1, 2, 6]
    assert (mt.elements == np.where(mt.masses > 2, "C", "H")).all()
    assert mt.masses.sum() == pytest.approx(6 * 12.011 + 14 * 1.008)
    assert mt.charges.sum() == pytest.approx(0.0, abs=1e-9)
    assert mt.charges[0] == pytest.approx(-0.18)
    assert len(mt.bonds) == 19 and mt.nrexcl == 3
    # the bond graph is the hexane skeleton: 6 carbons in a path, each H on one carbon
    carbons = [n for n, d in mt.graph.nodes(data=True) if d["element"] == "C"]
    assert len(carbons) == 6
    assert sorted(d for _, d in mt.graph.subgraph(carbons).degree()) == [1, 1, 2, 2, 2, 2]
    # force-field parameters are kept for the force field: OPLS defaults and RB dihedrals
    assert topo.defaults == {"nbfunc": 1, "comb_rule": 3, "gen_pairs": "yes", "fudge_lj": 0.5, "fudge_qq": 0.5}
    params = mt.parameters  # parmed structure of one molecule, parametrized from oplsaa.ff
    assert len(params.atoms) == 20 and len(params.rb_torsions) == 45 and len(params.adjusts) == 45
    assert params.bonds[0].type.req == pytest.approx(1.09)  # C-H, Å in parmed
    assert params.atoms[0].sigma > 0 and params.rb_torsions[0].type is not None


def test_tpr_and_top_agree(hexane_topology, hexane_tpr):
    a, b = hexane_topology.blocks[0], hexane_tpr.blocks[0]
    assert (a.count, a.moltype.name) == (b.count, b.moltype.name)
    for attr in ("atom_names", "atom_types", "resnames", "resids", "elements"):
        assert (getattr(a.moltype, attr) == getattr(b.moltype, attr)).all(), attr
    np.testing.assert_allclose(a.moltype.masses, b.moltype.masses, rtol=1e-6)
    np.testing.assert_allclose(a.moltype.charges, b.moltype.charges, atol=1e-6)
    assert {tuple(sorted(x)) for x in a.moltype.bonds.tolist()} == {tuple(sorted(x)) for x in b.moltype.bonds.tolist()}


def test_gro_topology_guesses_bonds_and_molecules(hexane_topology):
    topo = load_topology(HEXANE / "conf.gro")
    assert topo.n_atoms == hexane_topology.n_atoms
    assert topo.meta["guessed"]
    # molecules straddling the box are split by a distance guess; all whole ones have 19 bonds
    sizes = [b.moltype.n_atoms for b in topo.blocks]
    assert max(sizes) == 20
    whole = [b for b in topo.blocks if b.moltype.n_atoms == 20]
    assert all(len(b.moltype.bonds) == 19 for b in whole)


def test_sps_itp(shared):
    topo = load_topology(shared / "sps" / "top" / "topol.top")
    (block,) = topo.blocks
    mt = block.moltype
    assert (mt.name, mt.n_atoms, block.count, mt.nrexcl) == ("PS1", 162, 36, 2)
    assert topo.defaults["comb_rule"] == 2
    assert set(mt.atom_types) == {"C", "C_AR", "H", "H_AR"}
    assert (mt.elements == np.where(np.char.startswith(mt.atom_types.astype(str), "C"), "C", "H")).all()
    assert len(mt.bonds) == 171 and len(mt.parameters.impropers) == 120
    assert mt.parameters.bonds[0].type.k > 0


def test_missing_include_is_a_clear_error(tmp_path):
    top = tmp_path / "bad.top"
    top.write_text('#include "nowhere.ff/forcefield.itp"\n[ system ]\nx\n[ molecules ]\nX 1\n')
    with pytest.raises(BackmapError, match="bad.top: cannot read GROMACS topology"):
        load_topology(top)


def test_unknown_format(tmp_path):
    f = tmp_path / "system.psf"
    f.write_text("")
    with pytest.raises(BackmapError, match=r"system.psf: no topology reader for '.psf'"):
        load_topology(f)


def test_defines_and_includes_are_preprocessed(tmp_path):
    """#define / #ifdef select topology lines; #include resolves beside the file and in GROMACS's share dir."""
    src = (HEXANE / "topol.top").read_text()
    first_atom = next(line for line in src.splitlines() if line.strip().startswith("1   opls_135"))
    charged = first_atom.replace("-0.18", "-0.50")
    body = src.replace(first_atom, f"#ifdef CHARGED\n{charged}\n#else\n{first_atom}\n#endif")
    (tmp_path / "hexane.itp").write_text(body.split("[ system ]")[0].replace('#include "oplsaa.ff/forcefield.itp"', ""))
    (tmp_path / "topol.top").write_text('#define CHARGED\n#include "oplsaa.ff/forcefield.itp"\n#include "hexane.itp"\n'
                                        "[ system ]\nx\n[ molecules ]\nProtein 3\n")
    topo = load_topology(tmp_path / "topol.top")
    assert topo.n_atoms == 60 and topo.blocks[0].moltype.charges[0] == pytest.approx(-0.50)
    (tmp_path / "topol.top").write_text((tmp_path / "topol.top").read_text().replace("#define CHARGED\n", ""))
    assert load_topology(tmp_path / "topol.top").blocks[0].moltype.charges[0] == pytest.approx(-0.18)
