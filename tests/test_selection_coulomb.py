"""Coulomb in the selection energy (polar liquids): switched on where LJ leaves charges bare, equal
to reaction-field Coulomb summed directly over the environment, and the rigid turn of a whole
molecule in the energy guidance keeps its mapped centre and its shape."""
import numpy as np
import pytest
import torch
from conftest import DATA, system_frame

from backmap.engine.assembly import make_backmapper
from backmap.engine.registry import default_registry
from backmap.forcefield.parameters import build_parameters
from backmap.forcefield.settings import ONE_4PI_EPS0
from backmap.sampling.backmapper import BackmapSettings
from backmap.sampling.polish import PlacementPolish, find_rotors, rotate, rotation_matrices
from backmap.sampling.sampler import needs_electrostatics

WATER = DATA / "water"


@pytest.fixture(scope="module")
def water():
    return system_frame(WATER, "water.xml", "aa.xtc")


def _sampler(cg, **kw):
    """A sampler placing whole molecules (as the equivariant generator does) with a trivial generator."""
    scatter = default_registry().get("generator", "bead_centre").cls
    gen = type("BeadScatter", (scatter,), {"unit": "bead"})({"spread": 0.05})
    return make_backmapper(cg, gen, BackmapSettings(candidates=4, gibbs_sweeps=1, **kw), seed=0).sampler


def test_auto_turns_coulomb_on_where_lj_leaves_charges_bare(water, hexane_topology):
    topo, cg, _x, _fr = water
    assert needs_electrostatics(build_parameters(topo))  # SPC/E's hydrogens: charge, no LJ
    assert not needs_electrostatics(build_parameters(hexane_topology))  # OPLS alkane H have LJ
    assert _sampler(cg).energy.coulomb is not None
    assert _sampler(cg, electrostatics="off").energy.coulomb is None


def test_unit_coulomb_is_reaction_field_summed_over_the_environment(water):
    """Selection energy with Coulomb minus without = f q_i q_j (1/r + k r² − c) over the atoms of
    other molecules in the environment (within the cut-off of the unit's bead) and within the
    cut-off of each candidate atom (minimum image), for candidates drawn around the molecules' real
    positions — a direct sum over the whole box."""
    topo, cg, x, fr = water
    on, off = _sampler(cg, electrostatics="on", epsilon_rf=80.0), _sampler(cg, electrostatics="off")
    pos = torch.as_tensor(x, dtype=torch.float32)
    placed = torch.ones(len(x), dtype=torch.bool)
    out = []
    for s in (on, off):
        s.builder.set_frame(cg.apply(x), fr.box)
        name, st, meta, groups = s._schedule()[0][0]
        _g, atoms, bead, pred, frame, first_atom, idx, est = groups[0]
        env = s.builder.build(name, atoms, bead, pred, pos, placed, frame_beads=frame, compact=True)
        gen = torch.Generator().manual_seed(1)
        cand = pos[torch.as_tensor(atoms)][:, None] + 0.03 * torch.randn(len(atoms), 3, *atoms.shape[1:], 3,
                                                                          generator=gen)
        out.append(s.energy(name, st, first_atom, cand, env, pos, placed, static=est, all_placed=True))
    got = (out[0] - out[1]).double().numpy()

    q = build_parameters(topo).charges
    rc, erf = on.options.cutoff, 80.0
    k = (erf - 1) / ((2 * erf + 1) * rc**3)
    c = 1 / rc + k * rc**2
    box = fr.dimensions[:3]
    mol = topo.molecule_index
    beads = cg.apply(x)
    cand = cand.double().numpy()
    rows = np.random.default_rng(0).choice(len(atoms), 12, replace=False)
    for b in rows:
        for kk in range(cand.shape[1]):
            e = 0.0
            d = x - beads[bead[b]]
            d -= box * np.round(d / box)
            seen = np.linalg.norm(d, axis=1) < rc  # the environment: around the bead
            for u, a in enumerate(atoms[b]):
                d = x - cand[b, kk, u]
                d -= box * np.round(d / box)
                r = np.linalg.norm(d, axis=1)
                near = (r < rc) & (mol != mol[a]) & seen
                e += ONE_4PI_EPS0 * q[a] * (q[near] * (1 / r[near] + k * r[near] ** 2 - c)).sum()
            assert got[b, kk] == pytest.approx(e, rel=2e-3, abs=0.05)
    assert np.abs(got).max() > 10  # hydrogen bonds: tens of kJ/mol per molecule


def test_rigid_turn_keeps_the_mapped_centre_and_the_shape():
    """A whole-molecule unit (water: O, H, H, mass weights 16:1:1) turns about its mapped centre:
    centre and every distance unchanged, the orientation changed; a rotation vector of 0 is the
    identity."""
    import networkx as nx

    g = nx.Graph([(0, 1), (0, 2), (1, 2)])
    rotors = find_rotors(g, np.arange(3), np.zeros(3, bool), np.array([16.0, 1.0, 1.0]))
    assert len(rotors) == 3 and rotors.a == []
    x = torch.tensor([[[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [-0.0333, 0.0943, 0.0]]], dtype=torch.float64).repeat(5, 1, 1)
    angles = torch.randn(5, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y = rotate(x, rotors, angles, None)
    w = torch.tensor([16.0, 1.0, 1.0], dtype=torch.float64) / 18
    torch.testing.assert_close((w[None, :, None] * y).sum(1), (w[None, :, None] * x).sum(1))
    torch.testing.assert_close(torch.cdist(y, y), torch.cdist(x, x))
    assert (y - x).abs().max() > 0.01
    torch.testing.assert_close(rotation_matrices(torch.zeros(2, 3, dtype=torch.float64)),
                               torch.eye(3, dtype=torch.float64).expand(2, 3, 3))
    # methanol as one unit (C, HA, HB, HC, O, H): the whole turns; its torsions stay as drawn
    meoh = nx.Graph([(0, 1), (0, 2), (0, 3), (0, 4), (4, 5)])
    rot = find_rotors(meoh, np.arange(6), np.zeros(6, bool), np.array([12.0, 1, 1, 1, 16, 1]))
    assert len(rot) == 3 and rot.a == [] and rot.centre is not None
    # a unit that is part of a bigger molecule has no rigid turn
    assert find_rotors(nx.path_graph(4), np.arange(3), np.zeros(4, bool), np.ones(3)).centre is None


def test_guidance_turns_water_into_hydrogen_bonds(water):
    """Energy guidance of whole water molecules (rigid turns only) never raises a molecule's
    selection energy and lowers the mean, from orientations scrambled about the true centres."""
    topo, cg, x, fr = water
    s = _sampler(cg, polish_steps=20)
    pos = torch.as_tensor(x, dtype=torch.float32)
    placed = torch.ones(len(x), dtype=torch.bool)
    s.builder.set_frame(cg.apply(x), fr.box)
    name, st, meta, groups = s._schedule()[0][0]
    _g, atoms, bead, pred, frame, first_atom, idx, est = groups[0]
    rows = torch.arange(0, len(atoms), 7)
    found, _inverse = s._unit_rotors(name, st, idx[rows], first_atom[rows], placed)
    rotors = found[0]
    assert rotors.centre is not None
    gen = torch.Generator().manual_seed(3)
    scrambled = rotate(pos[torch.as_tensor(atoms)][rows].double(), rotors,
                       torch.randn(len(rows), 3, generator=gen, dtype=torch.float64) * 2, None).float()
    env = s.builder.build(name, atoms[rows.numpy()], bead[rows.numpy()], pred[rows.numpy()], pos, placed,
                          frame_beads=frame[rows.numpy()], compact=True)

    def energy(c):
        return s.energy(name, st, first_atom[rows], c, env, pos, placed, all_placed=True)

    y, log = PlacementPolish(20)(scrambled, energy, rotors)
    before, after = log["e_before"], log["e_after"]
    assert (after <= before + 1e-3).all()
    assert float((before - after).mean()) > 5.0  # kJ/mol per molecule


def test_a_one_bead_molecule_is_framed_by_its_nearest_beads(water):
    """A water bead has no bonded bead: its local z axis points at its nearest bead, x towards the
    second nearest (not the lab axes, in which no orientation could be learnt)."""
    topo, cg, x, fr = water
    s = _sampler(cg)
    beads = cg.apply(x)
    s.builder.set_frame(beads, fr.box)
    name, st, meta, groups = s._schedule()[0][0]
    _g, atoms, bead, pred, frame, first_atom, idx, est = groups[0]
    env = s.builder.build(name, atoms, bead, pred, torch.as_tensor(x, dtype=torch.float32),
                          torch.ones(len(x), dtype=torch.bool), frame_beads=frame, compact=True)
    box = fr.dimensions[:3]
    for b in (0, 17, 400):
        d = beads - beads[bead[b]]
        d -= box * np.round(d / box)
        r = np.linalg.norm(d, axis=1)
        r[bead[b]] = np.inf
        first, second = np.argsort(r)[:2]
        rot = env.rotation[b].double().numpy()
        np.testing.assert_allclose(rot[2], d[first] / r[first], atol=1e-5)
        x_axis = d[second] - (d[second] @ rot[2]) * rot[2]
        np.testing.assert_allclose(rot[0], x_axis / np.linalg.norm(x_axis), atol=1e-5)
