"""Energy guidance (backmap.sampling.polish): rotors turn only what lies beyond a rotatable bond,
keep every bond length and bond angle, and the descent never raises a placement's energy and
finds a known minimum."""
import math

import networkx as nx
import numpy as np
import torch
from conftest import HEXANE

from backmap.engine.loaders import load_topology
from backmap.forcefield.geometry import dihedral
from backmap.sampling.polish import PlacementPolish, find_rotors, rotate
from backmap.system.io import read_frames


def _toluene() -> nx.Graph:
    """Ring 0–5, methyl carbon 6 on atom 0, ring hydrogens 7–11 on 1–5, methyl hydrogens 12–14."""
    g = nx.cycle_graph(6)
    g.add_edge(0, 6)
    g.add_edges_from((k, 6 + k) for k in range(1, 6))
    g.add_edges_from((6, h) for h in (12, 13, 14))
    return g


def test_rotors_are_the_bonds_whose_far_side_is_the_unit():
    g = _toluene()
    ring = np.array([0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11])
    placed = np.zeros(15, bool)
    placed[[6, 12, 13, 14]] = True  # the methyl group is placed: the ring turns about 6–0
    rotors = find_rotors(g, ring, placed)
    assert len(rotors) == 1 and rotors.a == [-1] and rotors.b == [0] and rotors.external.tolist() == [6]
    assert rotors.moves[0].tolist() == [False] + [True] * 10  # every ring atom but the axis atom
    # nothing placed around it (a chain's first unit): no axis to turn about; ring bonds never are one
    assert len(find_rotors(g, ring, np.zeros(15, bool))) == 0
    # the methyl group as the unit, the ring placed: it turns about 0–6, its hydrogens move
    methyl = np.array([6, 12, 13, 14])
    rot = find_rotors(g, methyl, ~np.isin(np.arange(15), methyl))
    assert len(rot) == 1 and rot.moves[0].tolist() == [False, True, True, True]


def test_rotation_keeps_bond_lengths_and_angles_and_changes_dihedrals():
    """Hexane, the atoms of its last carbons as the unit and the rest placed: random rotor angles
    leave every bond and bond angle as it was (the point of turning rotors instead of moving
    atoms) and change the dihedrals that cross the rotors."""
    top = load_topology(HEXANE / "topol.top")
    mt = top.blocks[0].moltype
    x0 = next(iter(read_frames(HEXANE / "conf.gro"))).positions[:mt.n_atoms]
    g = mt.graph
    carbons = [i for i in range(mt.n_atoms) if mt.elements[i] == "C"]
    end = nx.node_connected_component(g.subgraph([i for i in g if i not in carbons[:3]]), carbons[3])
    unit = np.array(sorted(end))
    placed = ~np.isin(np.arange(mt.n_atoms), unit)
    rotors = find_rotors(g, unit, placed)
    assert len(rotors) >= 2  # about the bond into the unit, and the methyl group's
    ext = torch.as_tensor(x0[rotors.external], dtype=torch.float64)[None].repeat(8, 1, 1)
    x = torch.as_tensor(x0[unit], dtype=torch.float64)[None].repeat(8, 1, 1)
    angles = torch.rand(8, len(rotors), generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 6 - 3
    y = rotate(x, rotors, angles, ext)
    full = torch.as_tensor(x0, dtype=torch.float64)[None].repeat(8, 1, 1)
    full[:, unit] = y
    before = torch.as_tensor(x0, dtype=torch.float64)
    bonds = torch.as_tensor(mt.bonds)
    length = lambda p: (p[..., bonds[:, 0], :] - p[..., bonds[:, 1], :]).norm(dim=-1)  # noqa: E731
    assert (length(full) - length(before)[None]).abs().max() < 1e-9
    triples = torch.as_tensor([(i, j, k) for j in g for i in g[j] for k in g[j] if i < k])
    def cos(p):
        u, v = p[..., triples[:, 0], :] - p[..., triples[:, 1], :], p[..., triples[:, 2], :] - p[..., triples[:, 1], :]
        return (u * v).sum(-1) / u.norm(dim=-1) / v.norm(dim=-1)
    assert (cos(full) - cos(before)[None]).abs().max() < 1e-9
    c = torch.as_tensor(carbons[1:5])
    phi = dihedral(*(full[:, c[k]] for k in range(4)))
    phi0 = dihedral(*(before[c[k]] for k in range(4)))
    assert (torch.remainder(phi - phi0 + math.pi, 2 * math.pi) - math.pi).abs().min() > 1e-3


def _one_rotor():
    """a (placed) – b – c: c turns on a circle about the a–b axis."""
    g = nx.path_graph(3)
    rotors = find_rotors(g, np.array([1, 2]), np.array([True, False, False]))
    ext = torch.zeros(1, 1, 3)
    x = torch.tensor([[[0.0, 0.0, 0.15], [0.1, 0.0, 0.2]]])
    return rotors, ext, x


def test_descent_reaches_a_known_minimum_and_never_goes_up():
    rotors, ext, x = _one_rotor()
    B = 16
    turn = torch.rand(B, 1, generator=torch.Generator().manual_seed(1)) * 6.2
    starts = rotate(x.repeat(B, 1, 1), rotors, turn, ext.repeat(B, 1, 1))
    target = torch.tensor([-0.1, 0.0, 0.2])  # c's position turned by π: the only minimum
    energy = lambda y: 1e4 * ((y[..., 1, :] - target) ** 2).sum(-1)  # noqa: E731  (B, K, U, 3) -> (B, K)
    out, log = PlacementPolish(60)(starts, energy, rotors, ext.repeat(B, 1, 1))
    assert (out[:, 1] - target).norm(dim=-1).max() < 1e-3
    assert (out[:, 0] - x[0, 0]).abs().max() < 1e-6  # the axis atom stays
    # a rugged energy (threefold, with a tilt): it never rises, and drops where the start is not a minimum
    rugged = lambda y: 10 * torch.cos(3 * torch.atan2(y[..., 1, 1], y[..., 1, 0])) + y[..., 1, 0]  # noqa: E731
    out, log = PlacementPolish(20)(starts, rugged, rotors, ext.repeat(B, 1, 1))
    assert (log["e_after"] <= log["e_before"] + 1e-6).all()
    assert (log["e_before"] - log["e_after"]).max() > 1.0 and log["accepted"] > 0
