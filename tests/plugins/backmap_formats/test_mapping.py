"""Mappings: VOTCA XML and DeepBackmap .map, weights, home beads, CG topology, bad input."""
import numpy as np
import pytest

from backmap.errors import BackmapError
from backmap.engine.loaders import load_mapping

from conftest import DATA, HEXANE


def test_votca_hexane_mapping(hexane_topology):
    mapping = load_mapping(HEXANE / "hexane.xml", hexane_topology)
    mm = mapping.molecules["Protein"]
    assert mm.name == "HEX" and [b.name for b in mm.beads] == ["A1", "B", "A2"]
    assert [b.type for b in mm.beads] == ["A", "B", "A"]
    w = mm.weight_matrix
    assert w.shape == (3, 20) and np.allclose(w.sum(axis=1), 1.0)
    # mass weights: carbons 12/(2*12+5*1) in A beads
    assert w[0, 0] == pytest.approx(12 / 29) and w[1, 7] == pytest.approx(12 / 28)
    assert list(mm.home) == [0] * 7 + [1] * 6 + [2] * 7
    assert sorted(mm.bonds) == [(0, 1), (1, 2)] and mm.angles == [(0, 1, 2)]
    cg = mapping.cg_topology(hexane_topology)
    n_mol = hexane_topology.n_molecules
    assert cg.n_beads == 3 * n_mol and list(cg.bead_names[:4]) == ["A1", "B", "A2", "A1"]
    assert cg.bonds.shape == (2 * n_mol, 2) and cg.resids[-1] == n_mol


def test_cg_topology_applies_weights(hexane_topology):
    cg = load_mapping(HEXANE / "hexane.xml", hexane_topology).cg_topology(hexane_topology)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, hexane_topology.n_atoms, 3))
    beads = cg.apply(x)
    w = np.array([12, 1, 1, 1, 12, 1, 1.0])  # hexane.xml's weights for A1 (C H H H C H H)
    com = (x[1, 20:27] * w[:, None]).sum(0) / w.sum()  # molecule 1, bead A1
    np.testing.assert_allclose(beads[1, 3], com)


def test_dbm_map_matches_votca_beads(hexane_topology):
    votca = load_mapping(HEXANE / "hexane.xml", hexane_topology).molecules["Protein"]
    dbm = load_mapping(DATA / "dbm" / "Protein.map", hexane_topology).molecules["Protein"]
    assert [b.name for b in dbm.beads] == ["A1", "B1", "A2"]
    # DeepBackmap beads are centres of mass; hexane.xml rounds the masses to 12 and 1
    m = hexane_topology.blocks[0].moltype.masses
    np.testing.assert_allclose(dbm.weight_matrix[0, :7], m[:7] / m[:7].sum())
    np.testing.assert_allclose(dbm.weight_matrix, votca.weight_matrix, atol=1e-3)
    assert ((dbm.weight_matrix > 0) == (votca.weight_matrix > 0)).all()
    assert dbm.align == {0: 1, 1: 0, 2: 1} and dbm.extras["mult"] == {0: 1, 1: 1, 2: 1}
    assert sorted(dbm.bonds) == [(0, 1), (1, 2)]  # derived from AA bonds across beads


def test_dbm_sps_map(shared):
    from backmap.engine.loaders import load_topology

    topo = load_topology(shared / "sps" / "top" / "topol.top")
    mm = load_mapping(shared / "sps" / "dbm" / "PS1.map", topo).molecules["PS1"]
    assert mm.n_beads == 20 and sum(len(b.atoms) for b in mm.beads) == 162
    assert [b.type for b in mm.beads[:4]] == ["BB", "SC", "BB", "SC"]
    assert len(mm.beads[0].atoms) == 6  # H1 C2 H3 H4 C5 and the chain-end H161
    assert mm.align[0] == 2 and mm.align[1] == 0  # [align] 1->3, 2->1 (1-based)


def _xml(tmp_path, text):
    src = (HEXANE / "hexane.xml").read_text()
    path = tmp_path / "m.xml"
    path.write_text(text(src))
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.replace("1:CHL:H3", "1:CHL:H9"),
     "m.xml: molecule HEX, bead A1: atom 1:CHL:H9 is not in molecule type Protein"),
    (lambda s: s.replace(" 4:CH2:H2</beads>", "</beads>").replace("12 12 1 1 1 1 </w", "12 12 1 1 1 </w"),
     "m.xml: molecule HEX (Protein): atom 4:CH2:H2 is in no bead"),
    (lambda s: s.replace("3:CH2:C 4:CH2:C 3:CH2:H1 3:CH2:H2 4:CH2:H1 4:CH2:H2", ""),
     "m.xml: molecule HEX (Protein), bead B: empty bead"),
    (lambda s: s.replace("<weights> 12 12 1 1 1 1 </weights>", "<weights> 12 12 1 1 1 </weights>"),
     "m.xml: molecule HEX, bead B: map B has 5 weights for 6 atoms"),
    (lambda s: s.replace("<ident>Protein</ident>", "<ident>Hexane</ident>"),
     "m.xml: molecule HEX: <ident> 'Hexane' matches no molecule type"),
    (lambda s: s.replace("A1 B A2", "A1 B A3"), "m.xml: molecule HEX, angle angle: unknown bead 'A3'"),
    (lambda s: s.replace("</cg_molecule>", ""), "m.xml: not valid XML"),
])
def test_bad_votca_mapping(tmp_path, hexane_topology, edit, message):
    with pytest.raises(BackmapError) as err:
        load_mapping(_xml(tmp_path, edit), hexane_topology)
    assert str(err.value).startswith(f"{tmp_path}/{message}")
    assert "\n" not in str(err.value)


def test_bad_dbm_map(tmp_path, hexane_topology):
    path = tmp_path / "Protein.map"
    path.write_text((DATA / "dbm" / "Protein.map").read_text().replace("2 opls_140 1 A", "2 opls_999 1 A"))
    with pytest.raises(BackmapError, match=r"Protein.map:5: atom 2 has type opls_140 in the topology, not opls_999"):
        load_mapping(path, hexane_topology)


def test_shared_atom_has_one_home(tmp_path, hexane_topology):
    # atom 5 (2:CH2:C) in A1 and also, with a larger share, in B
    path = _xml(tmp_path, lambda s: s.replace("<beads>3:CH2:C", "<beads>2:CH2:C 3:CH2:C")
                .replace("<weights> 12 12 1 1 1 1 </weights>", "<weights> 12 12 12 1 1 1 1 </weights>"))
    mm = load_mapping(path, hexane_topology).molecules["Protein"]
    w = mm.weight_matrix
    assert w[0, 4] > 0 and w[1, 4] > 0 and np.allclose(w.sum(1), 1)
    # its share is 12/29 of A1 but only 12/40 of B: home is A1
    assert mm.home[4] == 0 and mm.home[7] == 1


def test_a_changed_placement_order_is_found(tmp_path):
    """apply warns when --mapping places beads in another order than the model's mapping."""
    from backmap.engine.checks import placement_order_changes
    from backmap.engine.loaders import load_topology

    top = load_topology(HEXANE / "topol.top")
    text = (HEXANE / "hexane.xml").read_text()
    reordered = tmp_path / "reordered.xml"
    reordered.write_text(text.replace("<cg_beads>", "<placement_order>A2 B A1</placement_order>\n    <cg_beads>", 1))
    trained = load_mapping(HEXANE / "hexane.xml", top)
    assert placement_order_changes(load_mapping(reordered, top), trained) == ["Protein"]  # the molecule type
    assert placement_order_changes(trained, trained) == []
