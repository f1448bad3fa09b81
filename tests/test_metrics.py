"""Metrics building blocks: divergences, binning, geometry, term lists, RDF, clashes, stereo, (φ, ψ)."""
from pathlib import Path

import numpy as np
import pytest

from backmap.forcefield import NonbondedSettings
from backmap.system.io import read_frames
from backmap.metrics import (
    Binning,
    EvalContext,
    FrameBatch,
    Histogram,
    Observable,
    geometry,
    jsd,
    stereo,
    terms,
    wasserstein,
)
from backmap.metrics.compare import compare
from backmap.metrics.divergence import histogram, wasserstein_histogram
from backmap.system.topology import MoleculeBlock, MoleculeType, Topology

from conftest import HEXANE


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Many small tensor operations: a second OpenMP thread only spin-waits (badly, on a busy machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- divergences

def test_jsd_known_values():
    rng = np.random.default_rng(0)
    p = rng.random(50)
    assert jsd(p, p) == 0.0
    assert jsd(p, 3 * p) == pytest.approx(0.0, abs=1e-12)  # counts or probabilities alike
    assert jsd([1, 1, 0, 0], [0, 0, 2, 5]) == pytest.approx(1.0)  # disjoint: 1 bit
    q = rng.random(50)
    assert jsd(p, q) == pytest.approx(jsd(q, p))
    assert 0 < jsd(p, q) < 1
    assert np.isnan(jsd([0, 0], [1, 2]))


def test_wasserstein_shift_linear_and_circular():
    rng = np.random.default_rng(1)
    u = rng.normal(0.15, 0.01, 5000)
    assert wasserstein(u, u + 0.02) == pytest.approx(0.02, rel=1e-9)
    a = rng.uniform(170, 179.9, 4000)  # straddles ±180 after the shift
    b = (a + 5.0 + 180) % 360 - 180
    assert wasserstein(a, b, period=360.0) == pytest.approx(5.0, rel=1e-6)
    assert wasserstein(a, b) > 100  # the linear distance is fooled by the wrap
    edges = np.arange(-180, 181, 5.0)
    ha, hb = histogram(a, edges), histogram(b, edges)
    assert wasserstein_histogram(ha, hb, edges, periodic=True) == pytest.approx(5.0, abs=2.5)


def test_binning_fixed_width_anchored_and_clipped():
    b = Binning(width=0.0025)
    e = b.edges(np.array([0.1512, 0.1551]), [np.array([0.149])])
    assert np.allclose(e / 0.0025, np.round(e / 0.0025))  # edges at multiples of the width
    assert e[0] <= 0.149 and e[-1] > 0.1551
    # one absurd candidate value does not create millions of bins; it lands in the end bin
    e = b.edges(np.array([0.15, 0.16]), [np.array([0.15, 1e4])])
    assert len(e) < 2000
    h = histogram(np.array([0.15, 1e4]), e)
    assert h.sum() == 2 and h[-1] == 1


def test_binning_n_bins_over_widened_reference():
    ref = np.linspace(-250, -150, 100)
    e = Binning(n_bins=80, widen=0.2).edges(ref)
    assert len(e) == 81 and e[0] == pytest.approx(-270) and e[-1] == pytest.approx(-130)
    assert jsd(histogram(ref, e), histogram(ref - 500, e)) == pytest.approx(1.0)  # far outside: disjoint


def test_compare_scores_states_and_noise_floor():
    rng = np.random.default_rng(2)
    obs = Observable("x", "distribution", "bond", "nm", Binning(width=0.01))
    ref = rng.normal(1.0, 0.1, (40, 20))
    c = compare(obs, {"reference": ref, "same": ref.copy(), "shifted": ref + 0.3}, "reference", ["same", "shifted"])
    assert c.result["candidates"]["same"]["jsd"] == 0.0
    assert c.result["candidates"]["shifted"]["w1"] == pytest.approx(0.3)
    assert 0 < c.result["noise_floor"]["jsd"] < c.result["candidates"]["shifted"]["jsd"]
    state = Observable("s", "state", "stereo")
    signs = np.ones((4, 10), np.int8)
    flipped = signs.copy()
    flipped[:, :3] = -1
    c = compare(state, {"reference": signs, "a": flipped}, "reference", ["a"])
    assert c.result["candidates"]["a"]["preserved"] == pytest.approx(0.7)
    hist = Observable("h", "histogram", "rdf", "nm", Binning(width=0.1, lo=0.0, hi=1.0))
    counts = rng.poisson(50, (6, 10)).astype(float)
    c = compare(hist, {"reference": Histogram(counts, np.full((6, 10), 50.0)),
                       "b": Histogram(counts, np.full((6, 10), 50.0))}, "reference", ["b"])
    assert c.result["candidates"]["b"]["jsd"] == 0.0 and len(c.densities["b"]) == 10


# --------------------------------------------------------------------------- geometry and terms

def test_geometry_known_values():
    x = np.array([[[1.0, 0, 0], [0, 0, 0], [0, 1.0, 0], [0, 1.0, 1.0]]])
    assert geometry.distances(x, np.array([[0, 1]]))[0, 0] == pytest.approx(1.0)
    assert geometry.angles(x, np.array([[0, 1, 2]]))[0, 0] == pytest.approx(90.0)
    assert abs(geometry.dihedrals(x, np.array([[0, 1, 2, 3]]))[0, 0]) == pytest.approx(90.0)
    cis = np.array([[[1.0, 0, 0], [0, 0, 0], [0, 1.0, 0], [1.0, 1.0, 0]]])
    assert geometry.dihedrals(cis, np.array([[0, 1, 2, 3]]))[0, 0] == pytest.approx(0.0, abs=1e-9)
    v = geometry.signed_volumes(x, np.array([[1, 0, 2, 3]]))
    mirrored = x * np.array([-1.0, 1, 1])
    assert np.sign(geometry.signed_volumes(mirrored, np.array([[1, 0, 2, 3]]))) == -np.sign(v)


def test_bonded_terms_grouped_by_types(hexane_topology, hexane_tpr):
    found, source = terms.bonded_terms(hexane_topology)
    assert source == "force field"
    types = terms.per_atom(hexane_topology, "atom_types")
    groups = terms.group_by_types(found["bond"], types)
    assert set(groups) == {"opls_135-opls_136", "opls_135-opls_140", "opls_136-opls_136", "opls_136-opls_140"}
    assert sum(len(g) for g in groups.values()) == 19 * 200
    # a tuple and its reverse are one group
    assert terms.canonical(("opls_140", "opls_135", "opls_136")) == ("opls_136", "opls_135", "opls_140")
    # without parameters (.tpr) the bond graph gives the same bonds, angles and dihedrals
    graph, source = terms.bonded_terms(hexane_tpr)
    assert source == "bond graph"
    for fam in ("bond", "angle", "dihedral"):
        canon = lambda a: {min(tuple(r), tuple(r[::-1])) for r in a.tolist()}  # noqa: E731
        assert canon(graph[fam]) == canon(found[fam]), fam
    assert len(found["dihedral"]) == 45 * 200  # RB dihedrals, once per quadruple


def _toy(names, elements, bonds, resids=None, resnames=None, count=1) -> Topology:
    n = len(names)
    mt = MoleculeType(name="TOY", atom_names=np.array(names), atom_types=np.array(elements),
                      elements=np.array(elements), masses=np.ones(n), charges=np.zeros(n),
                      resids=np.array(resids or [1] * n), resnames=np.array(resnames or ["TOY"] * n),
                      bonds=np.array(bonds).reshape(-1, 2))
    return Topology(Path("toy"), [MoleculeBlock(mt, count, 0)])


def test_ring_angles_use_the_vertex_atom():
    # benzene-like ring 0-5 with one substituent 6 on atom 0 and its hydrogen 7
    ring = [(k, (k + 1) % 6) for k in range(6)]
    top = _toy([f"A{k}" for k in range(8)], ["C"] * 7 + ["H"], ring + [(0, 6), (6, 7)])
    idx = np.array([[0, 1, 2], [6, 0, 1], [0, 6, 7]])
    assert terms.ring_angles(top, idx).tolist() == [True, True, False]


def test_peptide_backbone_detection():
    names = ["N", "CA", "C", "O"] * 3
    top = _toy(names, ["N", "C", "C", "O"] * 3,
               [(0, 1), (1, 2), (2, 3), (2, 4), (4, 5), (5, 6), (6, 7), (6, 8), (8, 9), (9, 10), (10, 11)],
               resids=[1] * 4 + [2] * 4 + [3] * 4, resnames=["ALA"] * 12)
    bb = terms.peptide_backbone(top)
    assert bb.tolist() == [[-1, 0, 1, 2, 4], [2, 4, 5, 6, 8], [6, 8, 9, 10, -1]]
    assert len(terms.peptide_backbone(_toy(["C1", "C2"], ["C", "C"], [(0, 1)]))) == 0


# --------------------------------------------------------------------------- non-bonded structure

@pytest.fixture(scope="module")
def hexane_context(hexane_topology):
    frame = next(read_frames(HEXANE / "traj.xtc"))
    ctx = EvalContext(hexane_topology, NonbondedSettings(rvdw=0.8, rcoulomb=0.8, vdw_modifier="none"))
    ctx.reference_frame = ctx.unwrapper(frame.positions, frame.dimensions)
    return ctx, frame


def test_rdf_of_an_ideal_gas_is_one(hexane_context):
    from backmap_metrics.structure import Rdf

    ctx, frame = hexane_context
    rng = np.random.default_rng(3)
    box = frame.dimensions[:3]
    x = rng.uniform(0, 1, (2, ctx.n_atoms, 3)) * box
    batch = FrameBatch(ctx, x, np.tile(frame.dimensions, (2, 1)), np.arange(2))
    rdf = Rdf({"r_max": 0.8})
    rdf.prepare(ctx)
    for name, h in rdf.samples(batch, ctx).items():
        counts, expected = h.counts.sum(0), h.expected.sum(0)
        g = counts / expected
        assert abs(counts.sum() / expected.sum() - 1) < 0.01, name
        sigma = 1 / np.sqrt(expected)  # Poisson
        assert np.all(np.abs(g - 1) < 5 * sigma + 1e-9), name


def test_clashes_count_pairs_more_than_three_bonds_apart(hexane_context):
    import networkx as nx
    from backmap_metrics.structure import Clashes

    ctx, frame = hexane_context
    x = ctx.reference_frame.copy()
    metric = Clashes()
    metric.prepare(ctx)
    dist = dict(nx.all_pairs_shortest_path_length(ctx.topology.blocks[0].moltype.graph))

    def clashes(pos):
        batch = FrameBatch(ctx, pos[None], frame.dimensions[None], np.arange(1))
        return round(metric.samples(batch, ctx)["clash_fraction"][0, 0] * ctx.n_atoms)

    def brute(pos, moved):  # pairs of the moved atom with every other, minimum image (cubic box)
        d = pos - pos[moved]
        d -= frame.dimensions[:3] * np.round(d / frame.dimensions[:3])
        close = [k for k in np.flatnonzero((d**2).sum(-1) < 0.01) if k != moved]
        return sum(k // 20 != moved // 20 or dist[k % 20][moved % 20] > 3 for k in close)

    assert clashes(x) == 0
    a, b = 3 * 20 + 4, 10 * 20 + 7  # atoms of two different molecules
    y = x.copy()
    y[b] = y[a] + [0.05, 0, 0]
    assert clashes(y) == brute(y, b) >= 1
    near = next((i, j) for i in range(20) for j in range(20) if dist[i][j] == 2)
    far = next((i, j) for i in range(20) for j in range(20) if dist[i][j] == 5)
    for (i, j), counted in ((near, False), (far, True)):  # within one molecule (molecule 0)
        y = x.copy()
        y[j] = y[i] + [0.0, 0.06, 0]
        assert clashes(y) == brute(y, j)
        assert (clashes(y) > 0) == counted


def test_exact_lj_equals_force_field_without_close_contacts(hexane_context):
    from backmap_metrics.energy import Energy

    ctx, frame = hexane_context
    m = Energy()
    m.prepare(ctx)
    batch = FrameBatch(ctx, frame.positions[None], frame.dimensions[None], np.arange(1))
    ff = batch.energies()
    np.testing.assert_allclose(m._exact_lj(batch, ctx), ff["lj"], atol=1e-6)
    pairs = batch.pairs(0.8)  # recorded from the force field's own search
    assert len(pairs) == 1 and len(pairs[0][0]) > 100_000


# --------------------------------------------------------------------------- stereo

def _chiral_toy():
    # C with H, F, Cl, Br on a tetrahedron
    top = _toy(["C", "H", "F", "Cl", "Br"], ["C", "H", "F", "Cl", "Br"], [(0, 1), (0, 2), (0, 3), (0, 4)])
    t = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) * 0.063
    return top, np.vstack([[0.0, 0, 0], t])


def test_stereo_centre_perceived_and_flips_under_reflection():
    from rdkit import Chem
    from rdkit.Geometry import Point3D

    top, x = _chiral_toy()
    found = stereo.perceive(top, x)
    assert found.centres.shape == (1, 4) and found.centres[0, 0] == 0
    mirror = x * [-1, 1, 1]
    signs = stereo.chirality(np.stack([x, mirror]), found.centres)
    assert signs[0, 0] == -signs[1, 0] != 0
    # the same flip as RDKit's CIP label from 3-D coordinates

    def cip(pos):
        mol = Chem.RWMol()
        for e in ["C", "H", "F", "Cl", "Br"]:
            mol.AddAtom(Chem.Atom(e))
        for k in range(1, 5):
            mol.AddBond(0, k, Chem.BondType.SINGLE)
        conf = Chem.Conformer(5)
        for k, p in enumerate(pos * 10):
            conf.SetAtomPosition(k, Point3D(*map(float, p)))
        m = mol.GetMol()
        m.AddConformer(conf)
        Chem.AssignStereochemistryFrom3D(m)
        return m.GetAtomWithIdx(0).GetProp("_CIPCode")

    assert {cip(x), cip(mirror)} == {"R", "S"}


def test_cis_trans_of_a_double_bond():
    # 2-butene: C0-C1=C2-C3 with hydrogens
    names = ["C0", "C1", "C2", "C3"] + [f"H{k}" for k in range(8)]
    bonds = [(0, 1), (1, 2), (2, 3), (0, 4), (0, 5), (0, 6), (1, 7), (2, 8), (3, 9), (3, 10), (3, 11)]
    top = _toy(names, ["C"] * 4 + ["H"] * 8, bonds)
    cis = np.array([[-0.07, 0.12, 0], [0, 0, 0], [0.134, 0, 0], [0.204, 0.12, 0],
                    [-0.17, 0.1, 0], [-0.05, 0.18, 0.09], [-0.05, 0.18, -0.09], [-0.05, -0.1, 0],
                    [0.184, -0.1, 0], [0.304, 0.1, 0], [0.184, 0.18, 0.09], [0.184, 0.18, -0.09]])
    found = stereo.perceive(top, cis)
    assert len(found.double_bonds) == 1
    trans = cis.copy()
    trans[[3, 9, 10, 11, 8]] *= [1, -1, 1]  # mirror the far end through the bond axis plane
    out = stereo.cis_trans(np.stack([cis, trans]), found.double_bonds)
    assert out[0, 0] == -out[1, 0]


def test_ramachandran_metric_and_map_figure(tmp_path):
    from backmap_metrics.ramachandran import Ramachandran

    from backmap.metrics.report import _figures

    names = ["N", "CA", "C", "O"] * 3
    top = _toy(names, ["N", "C", "C", "O"] * 3,
               [(0, 1), (1, 2), (2, 3), (2, 4), (4, 5), (5, 6), (6, 7), (6, 8), (8, 9), (9, 10), (10, 11)],
               resids=[1] * 4 + [2] * 4 + [3] * 4, resnames=["ALA"] * 12)
    ctx = EvalContext(top, NonbondedSettings())
    metric = Ramachandran()
    obs = {o.name: o for o in metric.prepare(ctx)}
    assert set(obs) == {"rama:phi", "rama:psi", "rama:phi_psi"}
    rng = np.random.default_rng(5)
    x = np.cumsum(rng.normal(0, 0.1, (40, 12, 3)), axis=1) + 2.0  # random chains inside a 10 nm box
    batch = FrameBatch(ctx, x, np.tile([10.0, 10, 10, 90, 90, 90], (40, 1)), np.arange(40))
    s = metric.samples(batch, ctx)
    assert s["rama:phi"].shape == (40, 2) and s["rama:psi"].shape == (40, 2) and s["rama:phi_psi"].shape == (40, 1, 2)
    np.testing.assert_allclose(s["rama:phi_psi"][:, 0, 0], geometry.dihedrals(x, np.array([[2, 4, 5, 6]]))[:, 0])
    c = compare(obs["rama:phi_psi"], {"reference": s["rama:phi_psi"], "same": s["rama:phi_psi"]}, "reference", ["same"])
    assert c.result["candidates"]["same"]["jsd"] == 0.0 and c.densities["same"].shape == (36, 36)
    figures = _figures(tmp_path, [c], ["same"])
    assert [p.name for _, p in figures] == ["rama_phi_psi.png"] and figures[0][1].stat().st_size > 1000


def test_sps_chirality_signs_agree_with_rdkit_cip_labels(shared):
    """On real data: 'same sign as the reference' is 'same R/S label as the reference'."""
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds
    from rdkit.Geometry import Point3D

    from backmap.system.pbc import Unwrapper
    from backmap.engine.loaders import load_topology

    sps = shared / "sps"
    top = load_topology(sps / "top" / "topol.top")
    unwrap = Unwrapper(top)
    ref, base = (next(read_frames(sps / "eval_t568" / f"{name}.xtc")) for name in ("aa", "baseline"))
    x = np.stack([unwrap(f.positions, f.dimensions) for f in (ref, base)])
    found = stereo.perceive(top, x[0])
    same_sign = (stereo.chirality(x, found.centres)[0] == stereo.chirality(x, found.centres)[1])
    mt = top.blocks[0].moltype

    def labels(pos, first):
        mol = Chem.RWMol()
        for e in mt.elements:
            atom = Chem.Atom(str(e))
            atom.SetNoImplicit(True)
            mol.AddAtom(atom)
        for i, j in mt.bonds.tolist():
            mol.AddBond(i, j, Chem.BondType.SINGLE)
        m = mol.GetMol()
        conf = Chem.Conformer(mt.n_atoms)
        for k, p in enumerate(pos[first:first + mt.n_atoms] * 10):
            conf.SetAtomPosition(k, Point3D(*map(float, p)))
        m.AddConformer(conf)
        rdDetermineBonds.DetermineBondOrders(m, charge=0)
        Chem.AssignStereochemistryFrom3D(m)
        return {a.GetIdx(): a.GetProp("_CIPCode") for a in m.GetAtoms() if a.HasProp("_CIPCode")}

    cache = {}
    same_label = []
    for c in found.centres[:, 0]:
        first = c - c % mt.n_atoms
        if first not in cache:
            cache[first] = labels(x[0], first), labels(x[1], first)
        a, b = cache[first]
        same_label.append(a[c - first] == b[c - first])
    assert len(same_label) == 324
    np.testing.assert_array_equal(same_sign, same_label)
    assert 0.2 < np.mean(same_sign) < 0.8  # the baseline scrambles about half of them


def test_broken_bonds_count_bonds_far_from_their_reference_length(hexane_context):
    """A bond stretched by more than the tolerance counts, one stretched by less does not; the
    reference itself has none (the bond-length JSD alone hides a few broken bonds among many)."""
    from backmap_metrics.bonded import BrokenBonds

    ctx, frame = hexane_context
    x = ctx.reference_frame.copy()
    metric = BrokenBonds()
    metric.prepare(ctx)
    n_bonds = len(metric.bonds)
    assert n_bonds == 19 * ctx.topology.blocks[0].count  # hexane: 19 bonds per molecule

    def broken(pos):
        batch = FrameBatch(ctx, pos[None], frame.dimensions[None], np.arange(1))
        return round(metric.samples(batch, ctx)["broken_bond_fraction"][0, 0] * n_bonds)

    assert broken(x) == 0
    mt = ctx.topology.blocks[0].moltype
    h = next(j for i, j in mt.bonds if mt.elements[j] == "H" and mt.elements[i] == "C")  # a C–H bond's H
    c = next(i for i, j in mt.bonds if j == h)
    for molecules, factor, expected in (([0, 5, 9], 1.5, 3), ([0, 5, 9], 1.1, 0)):
        y = x.copy()
        for m in molecules:  # move the H along its bond: only that bond's length changes
            a, b = 20 * m + c, 20 * m + h
            y[b] = y[a] + factor * (y[b] - y[a])
        assert broken(y) == expected
