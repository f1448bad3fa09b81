"""Sampler core: traversal plans, local environments, forward/Gibbs, colouring, reproducibility."""
import numpy as np
import pytest
import torch

from backmap.sampling.environment import Channels, EnvironmentBuilder
from backmap.system.mapping import Bead, MoleculeMapping
from backmap.engine.loaders import load_mapping
from backmap.system.pbc import Unwrapper
from backmap.engine.registry import default_registry
from backmap.system.topology import MoleculeType
from backmap.sampling.traversal import make_plan

from conftest import HEXANE


def _moltype(name, elements, bonds):
    n = len(elements)
    return MoleculeType(name, np.array([f"{e}{i}" for i, e in enumerate(elements)]), np.array(elements),
                        np.array(elements), np.where(np.array(elements) == "H", 1.008, 12.011), np.zeros(n),
                        np.ones(n, int), np.array(["MOL"] * n), np.array(bonds))


def _traversal(name):
    return default_registry().get("traversal", name).cls()


def _one_atom_beads(mt):
    return MoleculeMapping(mt, mt.name, [Bead(f"B{i}", "X", np.array([i]), np.ones(1)) for i in range(mt.n_atoms)])


def test_dfs_bfs_on_a_branched_molecule():
    # a branch at 1: 0-1, 1-2, 2-3 and 1-4, 4-5
    mt = _moltype("BR", ["C"] * 6, [(0, 1), (1, 2), (2, 3), (1, 4), (4, 5)])
    mm = _one_atom_beads(mt)
    rng = np.random.default_rng(0)
    dfs = make_plan(mm, _traversal("dfs"), rng)
    bfs = make_plan(mm, _traversal("bfs"), rng)
    assert dfs.bead_order == [0, 1, 2, 3, 4, 5]  # root at the lowest chain end, one branch to its end
    assert bfs.bead_order == [0, 1, 2, 4, 3, 5]  # shell by shell
    # the predecessor of every bead but the root is a bonded bead placed before it
    for b in dfs.bead_order[1:]:
        p = dfs.predecessor[b]
        assert mm.graph.has_edge(b, p) and dfs.bead_order.index(p) < dfs.bead_order.index(b)


def test_ring_molecule_and_heavy_first():
    # benzene: ring carbons 0..5, hydrogens 6..11; two beads (three C and their H each)
    ring = [(i, (i + 1) % 6) for i in range(6)] + [(i, i + 6) for i in range(6)]
    mt = _moltype("BZ", ["C"] * 6 + ["H"] * 6, ring)
    beads = [Bead("R1", "R", np.array([0, 1, 2, 6, 7, 8]), np.ones(6) / 6),
             Bead("R2", "R", np.array([3, 4, 5, 9, 10, 11]), np.ones(6) / 6)]
    mm = MoleculeMapping(mt, "BZ", beads)
    plan = make_plan(mm, _traversal("dfs"), np.random.default_rng(0))
    order = list(plan.atom_order)
    assert sorted(order) == list(range(12))
    first_bead = order[:6]
    assert [mt.elements[a] for a in first_bead] == ["C"] * 3 + ["H"] * 3  # heavy atoms first
    # the second bead starts at the carbon bonded to the first bead
    assert order[6] in (3, 5)
    plan_bead = make_plan(mm, _traversal("bfs"), np.random.default_rng(0), unit="bead")
    assert len(plan_bead.units) == 2 and len(plan_bead.units[0].atoms) == 6
    rnd = [make_plan(mm, _traversal("random"), np.random.default_rng(s)).bead_order for s in range(6)]
    assert sorted(rnd[0]) == [0, 1] and len({tuple(r) for r in rnd}) == 2


@pytest.fixture(scope="module")
def hexane(hexane_frame):
    return hexane_frame


def _builder(cg, cutoff=0.7):
    plan = make_plan(cg.blocks[0].mapping, _traversal("dfs"), np.random.default_rng(0))
    return EnvironmentBuilder(cg, {"Protein": plan}, Channels.from_system(cg), cutoff=cutoff,
                              strip_hydrogens=False), plan


def _env(builder, plan, cg, x, box, placed, step=3):
    unit = plan.units[step]
    mm = cg.blocks[0].mapping
    molecules = np.arange(len(x) // 20)
    atoms = 20 * molecules[:, None] + np.array(unit.atoms)[None]
    bead = 3 * molecules + unit.bead
    pred = 3 * molecules + unit.predecessor
    frame = 3 * molecules[:, None] + np.array(mm.frame_beads(unit.bead))[None]
    builder.set_frame(cg.apply(x), box)
    return builder.build("Protein", atoms, bead, pred, torch.as_tensor(x, dtype=torch.float32),
                         torch.as_tensor(placed), frame_beads=frame)


def test_environment_is_invariant_under_rotation(hexane):
    topo, cg, x, fr = hexane
    # a big box so that rotating about its centre keeps everything inside and unwrapped
    box = np.eye(3) * 30.0
    centre = x.mean(0)
    x0 = x - centre + 15.0
    a = np.radians(37.0)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]) @ \
        np.array([[1, 0, 0], [0, np.cos(1.1), -np.sin(1.1)], [0, np.sin(1.1), np.cos(1.1)]])
    x1 = (x0 - 15.0) @ rot.T + 15.0
    builder, plan = _builder(cg)
    placed = np.ones(len(x), bool)
    e0 = _env(builder, plan, cg, x0, box, placed)
    e1 = _env(builder, plan, cg, x1, box, placed)
    assert torch.equal(e0.atom_mask, e1.atom_mask) and e0.atom_mask.sum() > 1000
    m = e0.atom_mask
    torch.testing.assert_close(e0.atom_positions[m], e1.atom_positions[m], atol=2e-5, rtol=0)
    torch.testing.assert_close(e0.frame_beads, e1.frame_beads, atol=2e-5, rtol=0)


def test_environment_across_box_edges(hexane):
    topo, cg, x, fr = hexane
    builder, plan = _builder(cg)
    box = fr.box
    placed = np.ones(len(x), bool)
    e0 = _env(builder, plan, cg, x, box, placed)
    # translate everything by half a box and wrap atoms individually: environments are unchanged
    shifted = x + 0.5 * box.sum(0)
    frac = shifted @ np.linalg.inv(box)
    wrapped = (frac - np.floor(frac)) @ box
    beads = Unwrapper(topo)(wrapped, fr.dimensions)  # the sampler's positions are whole per molecule
    e1 = _env(builder, plan, cg, beads, box, placed)
    assert torch.equal(e0.atom_mask, e1.atom_mask)
    torch.testing.assert_close(e0.atom_positions[e0.atom_mask], e1.atom_positions[e1.atom_mask], atol=3e-5, rtol=0)
    # every neighbour really is within the cut-off of the bead
    assert (torch.linalg.norm(e0.atom_positions[e0.atom_mask], dim=-1) < 0.7).all()


def test_forward_environment_sees_only_placed_atoms(hexane):
    topo, cg, x, fr = hexane
    builder, plan = _builder(cg)
    placed = np.zeros(len(x), bool)
    rank = plan.rank
    step = 5
    placed[np.flatnonzero(np.tile(rank, len(x) // 20) < step)] = True
    fwd = _env(builder, plan, cg, x, fr.box, placed, step=step)
    gibbs = _env(builder, plan, cg, x, fr.box, np.ones(len(x), bool), step=step)
    seen_fwd = fwd.atom_index[fwd.atom_mask]
    assert placed[seen_fwd.numpy()].all()
    assert gibbs.atom_mask.sum() > fwd.atom_mask.sum()
    # the unit's own atoms are never in its environment, not even in Gibbs sweeps
    own = gibbs.target_atoms[:, 0]
    assert not (gibbs.atom_index == own[:, None])[gibbs.atom_mask].any()


def _frame(bm, R, fr):
    """One frame backmapped with its moves (regrow, clash repair, …), as ``backmap apply`` makes it."""
    from backmap.system.io import Frame

    return bm.backmap_frame(Frame(R, fr.dimensions, index=0))[0].positions


def _backmapper(cg, seed=3, **kw):
    from backmap.engine.assembly import make_backmapper
    from backmap.sampling.backmapper import BackmapSettings

    gen = default_registry().get("generator", "bead_centre").cls({"spread": 0.05})
    return make_backmapper(cg, gen, BackmapSettings(**{"candidates": 4, "gibbs_sweeps": 1, **kw}), seed=seed)


def test_seeded_and_repeatable(hexane):
    topo, cg, x, fr = hexane
    from backmap.system.io import Frame

    frame = Frame(cg.apply(x), fr.dimensions)
    a = next(_backmapper(cg).run([frame]))
    b = next(_backmapper(cg).run([frame]))
    np.testing.assert_array_equal(a.positions, b.positions)
    # atoms end up near their home beads (CG-consistent to the generator's spread)
    assert np.sqrt(((cg.apply(a.positions) - frame.positions) ** 2).sum(-1).mean()) < 0.08


def test_colouring_never_moves_overlapping_units_together(hexane):
    topo, cg, x, fr = hexane
    bm = _backmapper(cg, colouring=True)
    s = bm.sampler
    s.builder.set_frame(cg.apply(x), fr.box)
    beads = 3 * np.arange(200) + 1
    groups = s._groups(beads)
    assert sorted(np.concatenate(groups).tolist()) == list(range(200)) and len(groups) > 1
    from backmap.system.pbc import minimum_image

    reach = 2 * (s.options.cutoff + s.builder.margin)
    for g in groups:
        pos = s.builder.beads[beads[g]]
        d = np.linalg.norm(minimum_image(pos[:, None] - pos[None], fr.dimensions), axis=-1)
        assert (d[np.triu_indices(len(g), 1)] >= reach).all()


def test_mapping_file_order_overrides_traversal(tmp_path, hexane_topology):
    """A placement order in the mapping file (VOTCA <placement_order>, DeepBackmap [order]) fixes
    the bead order, and each bead's atoms follow the file's listing, whatever the traversal."""
    from conftest import DATA

    xml = tmp_path / "hexane.xml"
    xml.write_text((HEXANE / "hexane.xml").read_text().replace(
        "  </cg_beads>", "  </cg_beads>\n  <placement_order>B A2 A1</placement_order>"))
    mm = load_mapping(xml, hexane_topology).molecules["Protein"]
    for name in ("dfs", "bfs", "random"):
        plan = make_plan(mm, _traversal(name), np.random.default_rng(3))
        assert [mm.beads[b].name for b in plan.bead_order] == ["B", "A2", "A1"]
        listed = [int(a) for b in plan.bead_order for a in mm.beads[b].atoms if mm.home[a] == b]
        assert plan.atom_order.tolist() == listed  # file order, hydrogens not moved to the end
    assert plan.predecessor[plan.bead_order[1]] == plan.bead_order[0]

    dbm = tmp_path / "Protein.map"
    dbm.write_text((DATA / "dbm" / "Protein.map").read_text() + "\n[order]\n3 2\n1\n[/order]\n")
    mm = load_mapping(dbm, hexane_topology).molecules["Protein"]
    assert make_plan(mm, _traversal("dfs"), np.random.default_rng(0)).bead_order == [2, 1, 0]

    from backmap.errors import BackmapError

    xml.write_text((HEXANE / "hexane.xml").read_text().replace(
        "  </cg_beads>", "  </cg_beads>\n  <placement_order>B A2</placement_order>"))
    with pytest.raises(BackmapError, match="every bead exactly once"):
        load_mapping(xml, hexane_topology)
    dbm.write_text((DATA / "dbm" / "Protein.map").read_text() + "\n[order]\n3 2 7\n[/order]\n")
    with pytest.raises(BackmapError, match=r"Protein.map:\d+.*\[order\]"):
        load_mapping(dbm, hexane_topology)


def _sampler_env(s, cg, x, box, step, placed, compact):
    """One step's environments (all molecules) from a sampler's own schedule."""
    s.builder.set_frame(cg.apply(x), box)
    name, st, meta, groups = s._schedule()[0][step]
    _g, atoms, bead, pred, frame, first_atom, idx, est = groups[0]
    env = s.builder.build(name, atoms, bead, pred, torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(placed),
                          frame_beads=frame, compact=compact)
    return name, st, first_atom, est, env


@pytest.mark.parametrize("forward", [True, False])
def test_compacted_environment_holds_the_same_neighbours(hexane, forward):
    """Compaction only drops padding: the same visible atoms, in the same order, with the same
    positions, types, interaction channels and LJ parameters; the width is the widest row's."""
    topo, cg, x, fr = hexane
    s = _backmapper(cg).sampler
    step = 7
    placed = np.ones(len(x), bool)
    if forward:
        placed[:] = False
        placed[np.flatnonzero(np.tile(s.plans["Protein"].rank, len(x) // 20) < step)] = True
    *_, full = _sampler_env(s, cg, x, fr.box, step, placed, compact=False)
    *_, comp = _sampler_env(s, cg, x, fr.box, step, placed, compact=True)
    assert comp.atom_mask.shape[1] == int(full.atom_mask.sum(1).max()) < full.atom_mask.shape[1]
    assert torch.equal(comp.atom_mask.sum(1), full.atom_mask.sum(1)) and comp.atom_mask.sum() > 100
    for b in range(full.size):
        f, c = full.atom_mask[b], comp.atom_mask[b]
        assert c[:int(c.sum())].all()  # visible atoms first
        assert torch.equal(full.atom_index[b][f], comp.atom_index[b][c])
        assert torch.equal(full.atom_positions[b][f], comp.atom_positions[b][c])
        assert torch.equal(full.atom_types[b][f], comp.atom_types[b][c])
        assert torch.equal(full.interaction[b][:, f], comp.interaction[b][:, c])
        assert torch.equal(full.pair_params[b][..., f], comp.pair_params[b][..., c])
        assert (comp.pair_params[b][..., ~c] == 0).all()


def test_prepared_statics_equal_lazy_ones(hexane):
    """The vectorised per-frame preparation gives the same environments as building each group
    on its own."""
    topo, cg, x, fr = hexane
    s = _backmapper(cg).sampler
    pos = torch.as_tensor(x, dtype=torch.float32)
    placed = torch.ones(len(x), dtype=torch.bool)
    s.builder.set_frame(cg.apply(x), fr.box)
    steps = s._schedule()[0]  # prepares every step
    lazy = EnvironmentBuilder(cg, s.plans, s.channels, cutoff=s.options.cutoff, pair_params=s.energy.pair_params)
    lazy.set_frame(cg.apply(x), fr.box)
    for name, st, meta, groups in steps[::3]:
        _g, atoms, bead, pred, frame, *_ = groups[0]
        a = s.builder.build(name, atoms, bead, pred, pos, placed, frame_beads=frame, compact=True)
        b = lazy.build(name, atoms, bead, pred, pos, placed, frame_beads=frame, compact=True)
        for f in ("centre", "rotation", "atom_positions", "atom_mask", "atom_index", "interaction", "bead_positions",
                  "bead_mask", "frame_beads", "target_atoms", "pair_params"):
            assert torch.equal(getattr(a, f), getattr(b, f)), f


def test_unit_energy_of_some_molecules_equals_those_rows_of_the_group(hexane):
    """Clash repair scores a subset of a step's molecules: the energy tables prepared for the subset
    (cached once per step) give exactly those molecules' rows of the whole group's energies."""
    topo, cg, x, fr = hexane
    s = _backmapper(cg).sampler
    pos = torch.as_tensor(x, dtype=torch.float32)
    placed = torch.ones(len(x), dtype=torch.bool)
    s.builder.set_frame(cg.apply(x), fr.box)
    name, st, meta, groups = s._schedule()[0][2]
    g, atoms, bead, pred, frame, first_atom, idx, est = groups[0]
    gen = torch.Generator().manual_seed(0)
    cand = pos[idx][:, None] + 0.02 * torch.randn(len(idx), 3, *idx.shape[1:], 3, generator=gen)
    env = s.builder.build(name, atoms, bead, pred, pos, placed, frame_beads=frame, compact=True)
    whole = s.energy(name, st, first_atom, cand, env, pos, placed, static=est, all_placed=True)
    cached = len(s.energy._cache)  # one entry per step (the schedule prepared them all)
    rows = np.array([1, len(g) - 1])
    held = torch.as_tensor(rows)
    sub_env = s.builder.build(name, atoms[rows], bead[rows], pred[rows], pos, placed, frame_beads=frame[rows],
                              compact=True)
    some = s.energy(name, st, first_atom[held], cand[held], sub_env, pos, placed, all_placed=True)
    assert torch.allclose(some, whole[held], rtol=1e-5, atol=1e-3)
    assert len(s.energy._cache) == cached == len(s._schedule()[0])  # per step, whatever molecules are asked for


def test_guidance_scores_turns_by_the_terms_a_turn_changes():
    """Energy guidance compares a placement's energies as its rotors turn, with the bonded terms
    of bond lengths and angles left out (prepare(..., turning=True)): a turn leaves those terms as
    they were, so full minus turning energy must be the same constant for every turn. On sPS (the
    shipped model's system, one frame drawn forward), whose rings turn about their bond to the chain."""
    from pathlib import Path

    from backmap.engine.assembly import make_backmapper
    from backmap.engine.loaders import load_mapping, load_topology
    from backmap.engine.models import load_model
    from backmap.sampling.backmapper import BackmapSettings
    from backmap.sampling.polish import find_rotors, rotate
    from backmap.system.io import read_frames
    from conftest import DATA

    shipped = Path(__file__).resolve().parents[1] / "models" / "sps-equivariant"
    top = load_topology(shipped / "system" / "topol.top")
    cg = load_mapping(shipped / "system" / "sps-rings-first.xml", top).cg_topology(top)
    bm = make_backmapper(cg, load_model(shipped).generator, BackmapSettings(candidates=2, gibbs_sweeps=0), seed=1)
    pos = torch.as_tensor(next(iter(bm.run([next(iter(read_frames(DATA / "sps" / "cg.gro")))]))).positions,
                          dtype=torch.float32)
    s = bm.sampler
    placed = torch.ones(len(pos), dtype=torch.bool)
    name, st, meta, groups = s._last_schedule[0][4]  # a ring
    g, atoms, bead, pred, frame, first_atom, idx, est = groups[0]
    graph = cg.topology.moltypes[name].graph
    rotors = find_rotors(graph, (idx[0] - first_atom[0]).numpy(), np.ones(graph.number_of_nodes(), bool))
    assert len(rotors) >= 1
    B, K = len(idx), 6
    ext = pos[first_atom[:, None] + torch.as_tensor(rotors.external)[None]] if len(rotors.external) else None
    angles = torch.rand(B * K, len(rotors), generator=torch.Generator().manual_seed(1)) * 4 - 2
    angles[::K] = 0.0  # each unit as it stands among its turns
    turned = rotate(pos[idx].repeat_interleave(K, 0), rotors, angles,
                    None if ext is None else ext.repeat_interleave(K, 0)).view(B, K, -1, 3)
    env = s.builder.build(name, atoms, bead, pred, pos, placed, frame_beads=frame, compact=True)
    full = s.energy(name, st, first_atom, turned, env, pos, placed, static=est, all_placed=True)
    turning = s.energy(name, st, first_atom, turned, env, pos, placed, all_placed=True,
                       static=s.energy.prepare(name, st, first_atom, idx, turning=True))
    offset = (full - turning).double()
    # float32: the turn's rounding of bond lengths (~1e-4 kJ/mol here) and of the sums' magnitudes
    # (a turn into a neighbour gives LJ energies of 1e7 kJ/mol)
    assert bool(((offset - offset[:, :1]).abs() < 0.01 + 1e-6 * full.double().abs()).all())
    assert float(offset.abs().max()) > 1.0  # the bonds' and angles' energies were left out: not vacuous
    assert float((turning - turning[:, :1]).abs().max()) > 1.0  # and the turns did change the rest


def test_unit_energy_on_compacted_lists(hexane):
    """Candidate energies do not depend on the neighbour-list layout, the Gibbs shortcut
    (``all_placed``) changes nothing when everything is placed, and in the forward pass bonded
    terms with unplaced atoms are left out."""
    topo, cg, x, fr = hexane
    s = _backmapper(cg).sampler
    gen = torch.Generator().manual_seed(0)
    pos = torch.as_tensor(x, dtype=torch.float32)
    for step, forward in ((4, True), (9, False)):
        placed = np.ones(len(x), bool)
        if forward:
            placed[:] = False
            placed[np.flatnonzero(np.tile(s.plans["Protein"].rank, len(x) // 20) < step)] = True
        pl = torch.as_tensor(placed)
        name, st, first_atom, est, comp = _sampler_env(s, cg, x, fr.box, step, placed, compact=True)
        *_, full = _sampler_env(s, cg, x, fr.box, step, placed, compact=False)
        full.pair_params = None  # the fallback path: parameters looked up on the padded list
        local = 0.1 * torch.randn(full.size, 6, 1, 3, generator=gen)
        lab = comp.to_lab(local)
        e_comp = s.energy(name, st, first_atom, lab, comp, pos, pl, local=local, static=est)
        e_full = s.energy(name, st, first_atom, lab, full, pos, pl)
        torch.testing.assert_close(e_comp, e_full, rtol=2e-4, atol=1e-3)  # float32 sums in another order
        assert e_comp.std() > 0
        if not forward:
            e_gibbs = s.energy(name, st, first_atom, lab, comp, pos, pl, local=local, static=est, all_placed=True)
            torch.testing.assert_close(e_gibbs, e_comp, rtol=0, atol=0)
        else:
            # nothing placed: only terms within the unit itself (none for one atom) and no neighbours
            none = torch.zeros(len(x), dtype=torch.bool)
            *_, empty = _sampler_env(s, cg, x, fr.box, step, np.zeros(len(x), bool), compact=True)
            e0 = s.energy(name, st, first_atom, lab, empty, pos, none, local=local, static=est)
            assert (e0 == 0).all()


def test_unit_energy_lj_against_a_direct_sum(hexane):
    """The LJ part of the candidate energy equals a direct sum over the visible neighbours that
    are not excluded pairs of the topology (r⁻¹² c12 − r⁻⁶ c6 in the unit's frame)."""
    from backmap.forcefield.parameters import excluded_pairs

    topo, cg, x, fr = hexane
    s = _backmapper(cg).sampler
    pos = torch.as_tensor(x, dtype=torch.float32)
    placed = np.ones(len(x), bool)
    name, st, first_atom, est, env = _sampler_env(s, cg, x, fr.box, 6, placed, compact=True)
    local = 0.12 * torch.randn(env.size, 3, 1, 3, generator=torch.Generator().manual_seed(1)) + 0.1
    lj = s.energy(name, st, first_atom, env.to_lab(local), env, pos, torch.as_tensor(placed), local=local,
                  static={"glob": None}).double()
    p = s.energy.params
    excl = {tuple(e) for e in excluded_pairs(topo.blocks[0].moltype).tolist()}
    n_excluded = 0
    for b in range(0, env.size, 37):
        u = int(env.target_atoms[b, 0])
        for k in range(local.shape[1]):
            ref = 0.0
            for j, xj in zip(env.atom_index[b][env.atom_mask[b]].tolist(), env.atom_positions[b][env.atom_mask[b]].double()):
                if u // 20 == j // 20 and (min(u, j) % 20, max(u, j) % 20) in excl:
                    n_excluded += k == 0
                    continue
                r2 = float(((local[b, k, 0].double() - xj) ** 2).sum())
                ti, tj = p.lj_type[u], p.lj_type[j]
                ref += p.c12[ti, tj] / r2**6 - p.c6[ti, tj] / r2**3
            assert abs(float(lj[b, k]) - ref) <= 1e-4 * abs(ref) + 1e-3
    assert n_excluded > 0


def test_cg_restraint_in_the_selection_energy(hexane):
    """With ``cg_restraint`` k the candidate energy grows by exactly ½k Σ_J |M(x)_J − R_J|² over the
    beads J the unit's atoms map onto (M applied to the whole structure with the candidate in place,
    independently of the sampler's bookkeeping); a bead with an unplaced atom is not scored."""
    topo, cg, x, fr = hexane
    k = 5.0e4
    plain, restrained = _backmapper(cg).sampler, _backmapper(cg, cg_restraint=k).sampler
    rng = np.random.default_rng(4)
    R = cg.apply(x) + rng.normal(0, 0.02, (cg.n_beads, 3))  # a CG input the AA structure misses
    pos = torch.as_tensor(x, dtype=torch.float32)
    step = 9
    placed = np.ones(len(x), bool)
    name, st, first_atom, est, env = _sampler_env(plain, cg, x, fr.box, step, placed, compact=True)
    restrained.energy.set_frame(R)
    local = 0.05 * torch.randn(env.size, 5, 1, 3, generator=torch.Generator().manual_seed(2))
    lab = env.to_lab(local)
    pl = torch.as_tensor(placed)
    e0 = plain.energy(name, st, first_atom, lab, env, pos, pl, local=local, static=est)
    e1 = restrained.energy(name, st, first_atom, lab, env, pos, pl, local=local, static=est)
    atoms = env.target_atoms[:, 0].numpy()
    unit_beads = np.nonzero(cg.blocks[0].mapping.weight_matrix[:, atoms[0] % 20])[0]
    assert len(unit_beads) == 1  # hexane: every atom belongs to one bead
    for b in range(0, env.size, 11):
        mol = atoms[b] // 20
        for c in range(local.shape[1]):
            y = x.copy()
            y[atoms[b]] = lab[b, c, 0].double().numpy()
            miss = cg.apply(y)[3 * mol + unit_beads] - R[3 * mol + unit_beads]
            expected = 0.5 * k * (miss ** 2).sum()
            # float32 totals: the difference carries the rounding of the other terms (|e0|·ε32, ε32 ≈ 1.2e-7)
            tol = 1e-4 * expected + 1e-6 * abs(float(e0[b, c])) + 2e-3
            assert abs(float(e1[b, c] - e0[b, c]) - expected) <= tol
    assert float((e1 - e0).std()) > 1.0  # the term tells the candidates apart
    # forward pass: another atom of the unit's bead not placed yet -> the bead is not scored
    bead_atoms = np.nonzero(cg.blocks[0].mapping.weight_matrix[unit_beads[0]])[0]
    other = [a for a in bead_atoms if a != atoms[0] % 20][0]
    placed[np.arange(len(x)) % 20 == other] = False
    pl = torch.as_tensor(placed)
    f0 = plain.energy(name, st, first_atom, lab, env, pos, pl, local=local, static=est)
    f1 = restrained.energy(name, st, first_atom, lab, env, pos, pl, local=local, static=est)
    torch.testing.assert_close(f1, f0, rtol=0, atol=0)


def _swept(bm, R, fr):
    """The frame as :func:`_frame` makes it, the sampler's output before the moves, and the
    beads it was told the first move draws anew."""
    seen = {}
    sweep = bm.sampler.backmap

    def recording(*args, **kwargs):
        seen["redrawn"] = list(kwargs.get("redrawn", ()))
        seen["x"] = sweep(*args, **kwargs)
        return seen["x"]

    bm.sampler.backmap = recording
    return _frame(bm, R, fr), seen["x"], seen["redrawn"]


def _bead_atoms(cg, bm, name: str) -> np.ndarray:
    """Every molecule's atoms of the units of bead ``name``."""
    a1 = [b.name for b in cg.blocks[0].mapping.beads].index(name)
    local = np.concatenate([u.atoms for u in next(iter(bm.plans.values())).units if u.bead == a1])
    return (np.arange(cg.blocks[0].block.count)[:, None] * cg.blocks[0].block.moltype.n_atoms + local[None]).ravel()


def test_regrow_moves_only_the_named_beads(hexane):
    """The block move comes after the sweeps: everything but the regrown beads' atoms stays
    where the sweeps put it."""
    topo, cg, x, fr = hexane
    R = cg.apply(x)
    bm = _backmapper(cg, 5, regrow=["A1"])
    regrown, swept, _ = _swept(bm, R, fr)
    block = _bead_atoms(cg, bm, "A1")
    rest = np.setdiff1d(np.arange(len(x)), block)
    np.testing.assert_array_equal(regrown[rest], swept[rest])
    moved = np.linalg.norm(regrown[block] - swept[block], axis=-1)
    assert (moved > 1e-6).mean() > 0.9


def test_the_last_sweep_leaves_the_units_a_regrow_draws_anew(hexane):
    """What the last Gibbs sweep would draw for the beads the regrow then draws from scratch is
    never seen: with the same seed, A1's atoms leave the sampler where the forward pass put them
    (a run without sweeps), every other unit is drawn again; without the regrow A1 is too."""
    topo, cg, x, fr = hexane
    R = cg.apply(x)
    bm = _backmapper(cg, 5, regrow=["A1"])
    assert bm.moves[0].redraws() == ["A1"]
    _, swept, redrawn = _swept(bm, R, fr)
    assert redrawn == ["A1"]
    _, forward, none = _swept(_backmapper(cg, 5, gibbs_sweeps=0), R, fr)
    _, plain, _ = _swept(_backmapper(cg, 5), R, fr)
    assert none == []
    block = _bead_atoms(cg, bm, "A1")
    rest = np.setdiff1d(np.arange(len(x)), block)
    np.testing.assert_array_equal(swept[block], forward[block])
    assert (np.linalg.norm(swept[rest] - forward[rest], axis=-1) > 1e-6).mean() > 0.9
    assert (np.linalg.norm(plain[block] - forward[block], axis=-1) > 1e-6).mean() > 0.9


def test_regrow_trials_keep_each_molecules_lowest_energy(hexane):
    """Each molecule keeps its best of T grown blocks: the frame's energy falls with T. Over 8
    seeds E(T=8)/E(T=1) = 0.938 ± 0.008 (largest 0.949); the limit 0.97 is 4 s.d. above the mean,
    while keeping a random trial instead of the best gives 1 on average."""
    from backmap.forcefield import ForceField

    topo, cg, x, fr = hexane
    R = cg.apply(x)
    ff = ForceField(topo)
    for seed in (0, 1):
        e = {}
        for t in (1, 8):
            y = _frame(_backmapper(cg, seed, regrow=["A1"], regrow_trials=t), R, fr)
            e[t] = ff.energy(y[None], fr.box[None]).total.item()
        assert e[8] < 0.97 * e[1], (seed, e)


def _regrown_sources(bm, R, fr, names):
    """The frame with its regrow (its only move), and per molecule the trial each named bead's
    atoms came from."""
    seen = {}
    step = bm.sampler._step

    def recording(*args, **kwargs):
        if kwargs.get("trials") is not None:
            seen["trials"] = kwargs["trials"]
        return step(*args, **kwargs)

    bm.sampler._step = recording
    y = _frame(bm, R, fr)
    trials = torch.stack(seen["trials"]).numpy()
    n_mol = bm.cg_topology.blocks[0].block.count
    source = {}
    for name in names:
        atoms = _bead_atoms(bm.cg_topology, bm, name).reshape(n_mol, -1)
        match = (np.abs(trials[:, atoms] - y[atoms][None]).max(-1) < 1e-6).all(-1)  # (trials, molecules)
        assert match.any(0).all()
        source[name] = match.argmax(0)
    return y, source


def test_regrow_blocks_keep_their_own_best_trial(hexane):
    """The regrow's trials are chosen per block (the hidden beads of a molecule joined by CG
    bonds), not per molecule: a hexane's two end beads, A1 and A2, not bonded to each other, come
    from different trials in many molecules; A1 with its bonded B is one block, always from one."""
    topo, cg, x, fr = hexane
    R = cg.apply(x)
    _, apart = _regrown_sources(_backmapper(cg, 0, regrow=["A1", "A2"], regrow_trials=8), R, fr, ["A1", "A2"])
    assert (apart["A1"] != apart["A2"]).mean() > 0.5  # 7/8 for independent choices
    _, joined = _regrown_sources(_backmapper(cg, 0, regrow=["A1", "B"], regrow_trials=8), R, fr, ["A1", "B"])
    np.testing.assert_array_equal(joined["A1"], joined["B"])
    assert len(set(joined["A1"].tolist())) > 1


def test_regrow_names_an_unknown_bead(hexane):
    from backmap.errors import BackmapError

    topo, cg, x, fr = hexane
    with pytest.raises(BackmapError, match="regrow: no bead named Q7"):
        _backmapper(cg, 0, regrow=["A1", "Q7"])


def test_clash_layers_separate_units_that_clash_with_each_other():
    from backmap.sampling.sampler import _clash_layers

    # a triangle 0-1-2, a pair 3-4, unit 5 alone; −1 (an atom of no flagged unit) and a unit's
    # clash with itself join nothing
    a, b = np.array([0, 1, 2, 4, -1, 5]), np.array([1, 2, 0, 3, 5, 5])
    np.testing.assert_array_equal(_clash_layers(6, a, b), [0, 1, 2, 0, 1, 0])
    np.testing.assert_array_equal(_clash_layers(3, np.array([], int), np.array([], int)), [0, 0, 0])


def test_clash_repair_never_draws_two_units_that_clash_with_each_other_together(hexane):
    """Drawn in one call, two units that clash with each other both move away from where the
    other was and can meet anew; the repair draws them in successive calls (the later sees the
    earlier's new place)."""
    from backmap.engine.assembly import make_backmapper
    from backmap.sampling.backmapper import BackmapSettings

    topo, cg, x, fr = hexane
    gen = default_registry().get("generator", "bead_centre").cls({"spread": 0.12})
    bm = make_backmapper(cg, gen, BackmapSettings(candidates=4, gibbs_sweeps=0), seed=0)
    y = _frame(bm, cg.apply(x), fr)
    sampler = bm.sampler
    i, j = sampler.clashing_pairs(torch.as_tensor(y, dtype=torch.float32))
    unit = np.full(len(y), -1)  # atom -> (molecule, bead) unit number
    for k, u in enumerate(next(iter(bm.plans.values())).units):
        mols = np.arange(cg.blocks[0].block.count)
        unit[(mols[:, None] * cg.blocks[0].block.moltype.n_atoms + np.asarray(u.atoms)[None]).ravel()] = \
            (mols[:, None] * 10 + k).ravel()
    apart = {(unit[a], unit[b]) for a, b in zip(i, j) if unit[a] != unit[b]}
    assert len(apart) > 3  # units that clash with each other
    calls = []
    propose = sampler.generator.propose

    def recording(batch, n_candidates, rng):
        calls.append(set(unit[batch.target_atoms[batch.target_atoms >= 0].numpy()].tolist()))
        return propose(batch, n_candidates, rng)

    sampler.generator.propose = recording
    _, n = sampler.repair_frame(y)
    assert n > len(apart) and len(calls) > 1
    assert all(not (u in call and v in call) for u, v in apart for call in calls)


def test_clash_repair_redraws_the_clashing_units(hexane):
    """A generator scattering atoms 0.12 nm about their bead leaves clashing atoms at K = 4 (28–51
    per frame over 10 seeds); the repair redraws their units one at a time (28–55 units). One round
    left 0–4 atoms clashing, two left none in all 10 seeds; 3 rounds are asserted to leave none.
    The clash search agrees with a brute-force minimum-image search over all pairs > 3 bonds apart."""
    from backmap.engine.assembly import make_backmapper
    from backmap.metrics.terms import pairs_within
    from backmap.sampling.backmapper import BackmapSettings
    from backmap.system.pbc import minimum_image

    topo, cg, x, fr = hexane
    R = cg.apply(x)

    def run(seed, rounds):
        gen = default_registry().get("generator", "bead_centre").cls({"spread": 0.12})
        bm = make_backmapper(cg, gen, BackmapSettings(candidates=4, gibbs_sweeps=0, repair_clashes=rounds), seed=seed)
        return bm.sampler, _frame(bm, R, fr)

    sampler, y = run(0, 0)
    found = sampler.clashing_atoms(torch.as_tensor(y, dtype=torch.float32))
    assert len(found) > 10 and sampler.repaired_units == 0
    near = set(pairs_within(topo, 3).tolist())
    n = len(y)

    def brute_force(distance):
        atoms = set()
        for a in range(n):
            r = np.linalg.norm(minimum_image(y[a + 1:] - y[a], fr.dimensions), axis=-1)
            for b in np.flatnonzero(r < distance) + a + 1:
                if a * n + b not in near:
                    atoms.update((a, int(b)))
        return atoms

    brute = brute_force(0.1)
    assert set(found.tolist()) == brute
    # --clash-distance widens what counts: the 0.1 nm clashes and more
    wider = make_backmapper(cg, default_registry().get("generator", "bead_centre").cls({"spread": 0.12}),
                            BackmapSettings(candidates=4, gibbs_sweeps=0, clash_distance=0.13, clash_energy=50),
                            seed=0).sampler
    assert wider.options.clash_distance == 0.13 and wider.options.clash_energy == 50
    sampler.options.clash_distance = 0.13
    assert set(sampler.clashing_atoms(torch.as_tensor(y, dtype=torch.float32)).tolist()) > brute
    # --clash-energy: the atoms of every pair the force field does not exclude (1-4 pairs too) whose
    # LJ energy is above it, against a brute-force search over all pairs
    from backmap.forcefield.parameters import excluded_pairs

    sampler.options.clash_distance, sampler.options.clash_energy = 1e-6, 50.0
    block = topo.blocks[0]
    excluded = {tuple(r) for r in block.global_rows(excluded_pairs(block.moltype).reshape(-1, 2)).tolist()}
    lj_type, c6, c12 = sampler.energy.lj_type.numpy(), sampler.energy.c6.numpy(), sampler.energy.c12.numpy()
    pair_energy = {}
    for a in range(n):
        r = np.linalg.norm(minimum_image(y[a + 1:] - y[a], fr.dimensions), axis=-1)
        for b in np.flatnonzero(r < 0.3) + a + 1:
            t, u = lj_type[a], lj_type[b]
            e = c12[t, u] / r[b - a - 1] ** 12 - c6[t, u] / r[b - a - 1] ** 6
            if (a, int(b)) not in excluded and (int(b), a) not in excluded:
                pair_energy[a, int(b)] = e

    def hot_above(energy):
        return {atom for pair, e in pair_energy.items() if e > energy for atom in pair}

    hot = hot_above(50.0)
    assert len(hot) > 10
    assert set(sampler.clashing_atoms(torch.as_tensor(y, dtype=torch.float32)).tolist()) == hot
    # both at once (one search to the farther reach): the union of the two
    sampler.options.clash_distance, sampler.options.clash_energy = 0.13, 5000.0
    wide, hotter = brute_force(0.13), hot_above(5000.0)
    assert wide - hotter and hotter - wide  # each finds atoms the other does not
    assert set(sampler.clashing_atoms(torch.as_tensor(y, dtype=torch.float32)).tolist()) == hotter | wide
    sampler.options.clash_distance, sampler.options.clash_energy = 0.1, 0.0
    for seed in (0, 1):
        sampler, y = run(seed, 3)
        assert sampler.repaired_units >= 20
        assert len(sampler.clashing_atoms(torch.as_tensor(y, dtype=torch.float32))) == 0


def test_clash_kt_is_the_clash_energy_at_the_systems_temperature(hexane):
    """``clash_kt`` is --clash-energy in kT: resolved at the temperature given (apply), a clash
    energy the user gives explicitly wins, and without a temperature the backmapper refuses it."""
    from backmap.constants import BOLTZMANN
    from backmap.engine.assembly import make_backmapper
    from backmap.errors import BackmapError
    from backmap.sampling.backmapper import BackmapSettings

    s = BackmapSettings(clash_kt=4.0)
    cold, changed = s.at_temperature(300.0, {"clash_kt"})
    assert cold.clash_energy == changed["clash_energy"] == round(4.0 * BOLTZMANN * 300.0, 2) and cold.clash_kt == 0
    hot = s.at_temperature(568.0, set())[0]
    assert abs(hot.clash_energy / cold.clash_energy - 568.0 / 300.0) < 1e-3
    mine = BackmapSettings(clash_kt=4.0, clash_energy=50.0).at_temperature(300.0, {"clash_energy"})[0]
    assert mine.clash_energy == 50.0 and mine.clash_kt == 0  # the user's kJ/mol
    assert BackmapSettings(clash_energy=50.0).at_temperature(300.0, set()) == (BackmapSettings(clash_energy=50.0), {})
    _topo, cg, _x, _fr = hexane
    gen = default_registry().get("generator", "bead_centre").cls({"spread": 0.12})
    with pytest.raises(BackmapError, match="clash_kt needs the system's temperature"):
        make_backmapper(cg, gen, BackmapSettings(clash_kt=4.0), seed=0)
    assert make_backmapper(cg, gen, cold, seed=0).sampler.options.clash_energy == cold.clash_energy


def test_clashes_the_cg_projection_makes_are_repaired(hexane, monkeypatch):
    """The CG projection moves atoms without looking at contacts (on sPS it made 2 clashes in 78
    frames). Here a projection that first moves an atom 0.05 nm from a hydrogen of another molecule;
    the backmapper redraws the clashing units and projects again. Over seeds 0–5: 11–28 units redrawn,
    no clash left, molecules 0 and 1 on their beads to 1e-15 nm."""
    from backmap.sampling.cg_projection import CGProjection, ProjectionResult
    from backmap.system.io import Frame

    topo, cg, x, fr = hexane
    bm = _backmapper(cg, seed=2, project_cg=True, repair_clashes=2)
    real = CGProjection.__call__
    calls = []

    def clashing_projection(self, y, beads, dims):
        out = real(self, y, beads, dims)
        calls.append(1)
        if len(calls) == 1:  # atom 0 (molecule 0) onto a hydrogen of molecule 1
            z = out.positions.copy()
            z[0] = z[25] + np.array([0.05, 0.0, 0.0])
            return ProjectionResult(z, out.cg_rmsd_before, out.cg_rmsd_after, out.largest_move, out.converged)
        return out

    monkeypatch.setattr(CGProjection, "__call__", clashing_projection)
    y = next(bm.run([Frame(cg.apply(x), fr.dimensions)])).positions
    assert len(calls) >= 2 and bm.sampler.repaired_units >= 1
    assert len(bm.sampler.clashing_atoms(torch.as_tensor(y, dtype=torch.float32))) == 0
    # projected again after the repair: molecules 0 and 1 meet their beads (this crude generator leaves
    # ~15 other molecules too far off for the projection, as drawn, with or without the clash)
    assert np.abs(cg.apply(y)[:6] - cg.apply(x)[:6]).max() < 1e-6


def test_concatenated_environments_keep_every_row(hexane):
    """Two batches of different widths (a forward and a Gibbs context, compacted) joined: each
    row keeps its visible neighbours, positions and channels; the padding is masked."""
    from backmap.sampling.environment import EnvironmentBatch

    topo, cg, x, fr = hexane
    builder, plan = _builder(cg)
    step = 5
    placed = np.zeros(len(x), bool)
    placed[np.flatnonzero(np.tile(plan.rank, len(x) // 20) < step)] = True
    unit = plan.units[step]
    molecules = np.arange(len(x) // 20)
    args = (20 * molecules[:, None] + np.array(unit.atoms)[None], 3 * molecules + unit.bead,
            3 * molecules + unit.predecessor)
    frame = 3 * molecules[:, None] + np.array(cg.blocks[0].mapping.frame_beads(unit.bead))[None]
    builder.set_frame(cg.apply(x), fr.box)
    xt = torch.as_tensor(x, dtype=torch.float32)
    a = builder.build("Protein", *args, xt, torch.as_tensor(placed), frame_beads=frame, compact=True)
    b = builder.build("Protein", *args, xt, torch.ones(len(x), dtype=torch.bool), frame_beads=frame, compact=True)
    assert a.atom_mask.shape[1] < b.atom_mask.shape[1]
    both = EnvironmentBatch.concatenate([a, b])
    n = a.size
    assert both.size == 2 * n and both.atom_mask.shape[1] == b.atom_mask.shape[1]
    for part, rows in ((a, slice(0, n)), (b, slice(n, 2 * n))):
        k = part.atom_mask.shape[1]
        assert torch.equal(both.atom_mask[rows, :k], part.atom_mask) and not both.atom_mask[rows, k:].any()
        m = part.atom_mask
        assert torch.equal(both.atom_index[rows, :k][m], part.atom_index[m])
        assert torch.equal(both.atom_positions[rows, :k][m], part.atom_positions[m])
        assert torch.equal(both.interaction[rows, :, :k], part.interaction)
        assert torch.equal(both.centre[rows], part.centre) and torch.equal(both.bead_positions[rows], part.bead_positions)


@pytest.mark.parametrize("listed, start", [([2], False), ([2, 3], False), ([2, 3], True)])
def test_sweep_candidates_set_each_sweeps_k(hexane, listed, start):
    """The first sweeps draw as many candidates as ``sweep_candidates`` lists (the forward pass
    first; a frame started from a structure begins at its first Gibbs sweep), the rest ``candidates``."""
    topo, cg, x, fr = hexane
    bm = _backmapper(cg, candidates=4, sweep_candidates=listed, gibbs_sweeps=2)
    seen = []
    propose = bm.generator.propose
    bm.generator.propose = lambda batch, k, rng: seen.append(k) or propose(batch, k, rng)
    from backmap.system.io import Frame

    bm.backmap_frame(Frame(cg.apply(x), fr.dimensions, index=0), start=x if start else None)
    sweeps = ([] if start else ["forward"]) + ["gibbs", "gibbs"]
    expected = [listed[i] if i < len(listed) else 4 for i in range(1 if start else 0, 3)]
    per_sweep = len(seen) // len(sweeps)
    assert [seen[i * per_sweep:(i + 1) * per_sweep] for i in range(len(sweeps))] == [[k] * per_sweep for k in expected]
