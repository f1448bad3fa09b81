"""Turning free-standing units towards their partners and docking units drawn in free space
(backmap.sampling.orientation), on the project's hexane frame: known answers, not tuned numbers."""
import numpy as np
import pytest
import torch

from backmap.engine.registry import default_registry
from backmap.errors import BackmapError
from backmap.sampling.orientation import PartnerOrientation, _turn
from backmap.sampling.traversal import make_plan
from backmap.system.io import Frame


@pytest.fixture(scope="module")
def hexane(hexane_frame):
    topo, cg, x, fr = hexane_frame
    plan = make_plan(cg.blocks[0].mapping, default_registry().get("traversal", "dfs").cls(),
                     np.random.default_rng(0), unit="bead")
    return topo, cg, x, fr, plan


def _rotations(n, seed):
    q = torch.randn(n, 4, generator=torch.Generator().manual_seed(seed))
    q = q / q.norm(dim=-1, keepdim=True)
    w, a, b, c = q.unbind(-1)
    return torch.stack([1 - 2 * (b * b + c * c), 2 * (a * b - c * w), 2 * (a * c + b * w),
                        2 * (a * b + c * w), 1 - 2 * (a * a + c * c), 2 * (b * c - a * w),
                        2 * (a * c - b * w), 2 * (b * c + a * w), 1 - 2 * (a * a + b * b)], -1).view(n, 3, 3)


def _pairwise(y):
    return torch.cdist(y, y)


#: float32 positions of up to ~3.5 nm carry ~2.4e-7 nm per rounding; a turn, a slide and a distance
#: stack tens of them, so geometry is compared to 2e-5 nm — still 500x below a bond off by 0.01 nm
GEOMETRY_ATOL = 2e-5


def test_turn_points_one_direction_with_the_least_rotation_and_recovers_a_rotation():
    u = torch.randn(50, 1, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    v = torch.randn(50, 1, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    r = _turn(u, v)
    turned = (r @ u[:, 0, :, None])[..., 0]
    cos = torch.nn.functional.cosine_similarity(turned, v[:, 0], dim=-1)
    assert float((1 - cos).max()) < 1e-5
    # the least rotation: its angle is the angle between u and v
    angle = torch.arccos(((torch.diagonal(r, dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1))
    between = torch.arccos(torch.nn.functional.cosine_similarity(u[:, 0], v[:, 0], dim=-1))
    assert float((angle - between).abs().max()) < 1e-2
    # three orthogonal directions rotated by a known rotation: Kabsch finds it, up to the pull
    # towards no rotation (IDENTITY_PULL = 1e-3 against singular values of 1: a bias below 1e-3)
    rot = _rotations(20, 3).double()
    d = _rotations(20, 4).double()  # rows: three orthonormal directions
    found = _turn(d, d @ rot.transpose(1, 2))
    assert float((found - rot).abs().max()) < 2e-3


def test_free_unit_is_turned_to_its_partners_estimates_keeping_its_bead(hexane):
    """The first bead's unit, drawn with a random orientation about its mapped centre, ends up
    with its anchor (the carbon bonded to the next bead) pointing at that partner's estimate from
    the CG beads; rigidly, and with its bead's mapped centre where it was."""
    topo, cg, x, fr, plan = hexane
    mapping = cg.blocks[0].mapping
    orient = PartnerOrientation(cg, {"Protein": plan})
    step = 0
    unit = plan.units[step]
    slots, partners, estimate, centre, _bead, _length = orient.tables[("Protein", step)]
    assert len(slots) == 1  # hexane's end bead: one carbon bonded to the middle bead
    n_mol, K = 12, 5
    first_atom = torch.arange(n_mol) * 20
    atoms = (first_atom[:, None] + torch.as_tensor(unit.atoms)[None]).numpy()
    true = torch.as_tensor(x[atoms], dtype=torch.float32)  # (B, U, 3)
    w = torch.as_tensor(mapping.weight_matrix[unit.bead, list(unit.atoms)], dtype=torch.float32)
    c = (w[:, None] * true).sum(1) / w.sum()
    rot = _rotations(n_mol * K, 5).view(n_mol, K, 3, 3)
    drawn = c[:, None, None] + torch.einsum("nkij,nuj->nkui", rot, true - c[:, None])
    beads = cg.apply(x)
    placed = torch.zeros(len(x), dtype=torch.bool)
    out = orient("Protein", step, drawn, first_atom, 3 * np.arange(n_mol) + unit.bead, beads, placed,
                 torch.as_tensor(x, dtype=torch.float32))
    torch.testing.assert_close(_pairwise(out), _pairwise(drawn), atol=GEOMETRY_ATOL, rtol=0)
    torch.testing.assert_close((w[None, None, :, None] * out).sum(2) / w.sum(), c[:, None].expand(-1, K, -1),
                               atol=GEOMETRY_ATOL, rtol=0)
    target = torch.einsum("ab,nbi->nai", estimate, torch.as_tensor(beads, dtype=torch.float32).view(-1, 3, 3)[:n_mol])
    anchor = out[:, :, slots[0]] - c[:, None]
    cos = torch.nn.functional.cosine_similarity(anchor, (target[:, 0] - c)[:, None], dim=-1)
    assert float((1 - cos).max()) < 1e-5
    # a unit bonded to a placed atom is left as drawn
    placed[(first_atom + partners[0]).long()] = True
    kept = orient("Protein", step, drawn, first_atom, 3 * np.arange(n_mol) + unit.bead, beads, placed,
                  torch.as_tensor(x, dtype=torch.float32))
    assert torch.equal(kept, drawn)


def test_docked_unit_meets_its_placed_partner_at_the_bond_length(hexane):
    """The last bead's unit, drawn anywhere with any orientation, is moved rigidly so that its
    anchor carbon sits at the force field's b0 from the placed carbon it bonds to, on the line
    from its mapped centre through that carbon."""
    topo, cg, x, fr, plan = hexane
    mapping = cg.blocks[0].mapping
    orient = PartnerOrientation(cg, {"Protein": plan}, orient=False, dock=("A",))
    step = len(plan.units) - 1
    unit = plan.units[step]
    assert mapping.beads[unit.bead].type == "A" and orient.blind("Protein", step)
    assert not orient.blind("Protein", 1)  # the middle bead is of type B
    slots, partners, _estimate, centre, _bead, length = orient.tables[("Protein", step)]
    n_mol, K = 10, 4
    first_atom = torch.arange(n_mol) * 20
    atoms = (first_atom[:, None] + torch.as_tensor(unit.atoms)[None]).numpy()
    true = torch.as_tensor(x[atoms], dtype=torch.float32)
    rot = _rotations(n_mol * K, 6).view(n_mol, K, 3, 3)
    shift = 0.3 * torch.randn(n_mol, K, 1, 3, generator=torch.Generator().manual_seed(7))
    drawn = torch.einsum("nkij,nuj->nkui", rot, true) + shift
    placed = torch.zeros(len(x), dtype=torch.bool)
    for u in plan.units[:step]:
        placed[(first_atom[:, None] + torch.as_tensor(u.atoms)[None]).reshape(-1)] = True
    positions = torch.as_tensor(x, dtype=torch.float32)
    out = orient("Protein", step, drawn, first_atom, 3 * np.arange(n_mol) + unit.bead, cg.apply(x), placed, positions)
    torch.testing.assert_close(_pairwise(out), _pairwise(drawn), atol=GEOMETRY_ATOL, rtol=0)
    known = placed[first_atom[:, None] + partners[None]]
    assert bool((known.sum(1) == 1).all())
    a = int(known[0].to(torch.int64).argmax())
    partner = positions[first_atom + partners[a]]  # (B, 3)
    anchor = out[:, :, slots[a]]
    b0 = float(length[a])
    assert 0.14 < b0 < 0.16  # a C–C bond, from the topology
    torch.testing.assert_close((anchor - partner[:, None]).norm(dim=-1), torch.full((n_mol, K), b0), atol=GEOMETRY_ATOL, rtol=0)
    c = torch.einsum("u,nkui->nki", centre, out)
    cos = torch.nn.functional.cosine_similarity(anchor - c, partner[:, None] - c, dim=-1)
    assert float((1 - cos).max()) < 1e-5


def test_dock_in_the_sampler_draws_blind_and_bonds_at_b0(hexane, monkeypatch):
    """Through the sampler: the docked beads' units are proposed with no atom in their
    environment, and come out bonded to their placed partner at b0 (the bead-centre generator
    alone puts them anywhere within its spread)."""
    from backmap.engine.assembly import make_backmapper
    from backmap.sampling.backmapper import BackmapSettings
    from backmap.forcefield.parameters import molecule_terms

    topo, cg, x, fr, plan = hexane
    gen = default_registry().get("generator", "bead_centre").cls({"spread": 0.05})
    seen = []
    propose = type(gen).propose

    def spy(self, batch, n, rng):
        seen.append((batch.meta["bead"], int(batch.atom_mask.sum())))
        return propose(self, batch, n, rng)

    monkeypatch.setattr(type(gen), "propose", spy)
    frame = Frame(cg.apply(x), fr.dimensions)
    bonds, params = molecule_terms(topo.blocks[0].moltype)["bond"]
    b0 = {tuple(sorted(b)): p[0] for b, p in zip(bonds, params)}

    def run(dock):
        seen.clear()
        bm = make_backmapper(cg, gen, BackmapSettings(candidates=4, gibbs_sweeps=0, dock=dock), seed=3)
        return next(bm.run([frame])).positions, bm.plans["Protein"]

    y, units = run(["A"])
    mapping = cg.blocks[0].mapping
    typ = {k: mapping.beads[u.bead].type for k, u in enumerate(units.units)}
    assert any(n == 0 for b, n in seen if mapping.beads[b].type == "A")  # drawn blind
    assert all(n > 0 for b, n in seen[len(seen) // 2:] if mapping.beads[b].type == "B")
    rank = units.rank
    docked, free = [], []
    for k, u in enumerate(units.units):  # units with exactly one bond to an atom placed before them
        outside = [(a, p) for a in u.atoms for p in topo.blocks[0].moltype.graph.neighbors(a) if p not in u.atoms]
        before = [(a, p) for a, p in outside if rank[p] < rank[a]]
        if len(before) == 1:
            (docked if typ[k] == "A" else free).append(before[0])
    assert docked and free
    n_mol = topo.blocks[0].count
    for (a, p), expect in [(d, True) for d in docked] + [(f, False) for f in free]:
        d = np.linalg.norm(y[a + 20 * np.arange(n_mol)] - y[p + 20 * np.arange(n_mol)], axis=-1)
        assert np.allclose(d, b0[tuple(sorted((a, p)))], atol=GEOMETRY_ATOL) == expect, (a, p)


def test_dock_names_a_bead_type_with_nothing_to_dock_onto(hexane):
    """One bead per hexane: no atom bonds outside its unit, so there is nothing to dock onto."""
    from backmap.system.mapping import Bead, CGTopology, MoleculeMapping

    topo, cg, x, fr, plan = hexane
    mt = topo.blocks[0].moltype
    whole = MoleculeMapping(mt, "Protein", [Bead("M", "M", np.arange(mt.n_atoms), np.ones(mt.n_atoms) / mt.n_atoms)])
    one = make_plan(whole, default_registry().get("traversal", "dfs").cls(), np.random.default_rng(0), unit="bead")
    with pytest.raises(BackmapError, match="dock: bead M of Protein has no bond"):
        PartnerOrientation(CGTopology(topo, {"Protein": whole}), {"Protein": one}, dock=("M",))


def test_dock_names_an_unknown_bead_type(hexane):
    topo, cg, x, fr, plan = hexane
    with pytest.raises(BackmapError, match="dock: no bead of type S in the mapping .*A, B"):
        PartnerOrientation(cg, {"Protein": plan}, dock=("S",))


def test_a_blind_environment_has_the_same_local_frame(hexane):
    """Docking draws in an environment without atoms and places in the full one: both must share
    the local frame (it is built from CG beads only), or the drawn unit would be turned."""
    from backmap.engine.assembly import make_backmapper
    from backmap.sampling.backmapper import BackmapSettings

    topo, cg, x, fr, plan = hexane
    gen = default_registry().get("generator", "bead_centre").cls({"spread": 0.05})
    s = make_backmapper(cg, gen, BackmapSettings(candidates=2, gibbs_sweeps=0), seed=3).sampler
    s.builder.set_frame(cg.apply(x), fr.box)
    pos = torch.as_tensor(x, dtype=torch.float32)
    placed = torch.zeros(len(x), dtype=torch.bool)
    placed[: len(x) // 2] = True
    for name, _s, meta, groups in s._schedule()[0]:
        _g, atoms, bead, pred, frame, *_ = groups[0]
        full = s.builder.build(name, atoms, bead, pred, pos, placed, frame_beads=frame, compact=True)
        blind = s.builder.build(name, atoms, bead, pred, pos, torch.zeros_like(placed), frame_beads=frame,
                                compact=True)
        assert int(blind.atom_mask.sum()) == 0
        local = torch.randn(full.size, 2, len(meta["unit_atoms"]), 3, generator=torch.Generator().manual_seed(1))
        assert torch.equal(full.to_lab(local), blind.to_lab(local))
