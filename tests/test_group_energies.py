"""ForceField.group_energies: the local (Monte Carlo) energies of atom groups, against energy(subset=...)."""
import numpy as np
import pytest
import torch
from conftest import HEXANE, TRICLINIC
from test_forcefield import _frames

from backmap.engine.loaders import load_topology
from backmap.errors import BackmapError
from backmap.forcefield import ForceField, NonbondedSettings
from backmap.system.pbc import box_dimensions, minimum_image

RTOL, ATOL = 1e-9, 1e-6  # float64 round-off (kJ/mol)


def _system(data, settings, frame=0):
    """Force field, whole-molecule positions (N, 3) of one frame and its box vectors (3, 3)."""
    ff = ForceField(load_topology(data / "topol.top"), settings)
    x, boxes = _frames(data / "traj.xtc", frame + 1)
    return ff, ff.make_whole(x[frame], box_dimensions(boxes[frame])), boxes[frame]


@pytest.fixture(scope="module")
def hexane():
    """Cubic box, 200 hexanes; the data's PME replaced by reaction field (ε_rf = ∞), LJ potential-shift."""
    settings = NonbondedSettings.from_mdp(HEXANE / "grompp.mdp").model_copy(
        update={"coulomb": "reaction-field", "epsilon_rf": 0.0, "vdw_modifier": "potential-shift"})
    return _system(HEXANE, settings)


@pytest.fixture(scope="module")
def triclinic():
    """Triclinic box (70/80/90°), 60 hexanes, broken in the frame (made whole); plain cut-off Coulomb."""
    settings = NonbondedSettings.from_mdp(TRICLINIC / "grompp.mdp").model_copy(update={"coulomb": "cutoff"})
    return _system(TRICLINIC, settings, frame=1)


def _pad(groups, width=None):
    width = width or max(len(g) for g in groups)
    out = np.full((len(groups), width), -1)
    for row, g in zip(out, groups):
        row[:len(g)] = g
    return torch.as_tensor(out)


def _mask(n, atoms):
    m = np.zeros(n, bool)
    m[np.asarray(atoms, int)] = True
    return m


def _pair_lists(ff, X, box, skin=0.0):
    return [ff.pairs(xc, box, skin) for xc in X]


def _reference(ff, X, box, groups):
    """(C, G) from energy(subset=...), one call per group (one neighbour search per configuration)."""
    lists = _pair_lists(ff, X, box)
    with torch.no_grad():
        return torch.stack([ff.energy(X, box[None], subset=_mask(ff.n_atoms, g), pair_lists=lists, whole=True).total
                            for g in groups], 1)


def _displaced(x, atoms, rng, scale=0.05):
    y = x.copy()
    y[atoms] += rng.normal(0.0, scale, (len(atoms), 3))
    return y


def _far_apart(ff, x, box, candidates, rng, limit, gap=0.3):
    """Greedily, candidate atom sets of different molecules with no pair closer than the cut-off
    + ``gap`` (room to move without interacting)."""
    dims = box_dimensions(box)
    chosen = []
    for i in rng.permutation(len(candidates)):
        c = candidates[i]
        if any(ff.params.molecule[c[0]] == ff.params.molecule[o[0]] for o in chosen):
            continue
        if all(np.linalg.norm(minimum_image(x[c][:, None] - x[o][None], dims), axis=-1).min() > ff.settings.cutoff + gap
               for o in chosen):
            chosen.append(c)
        if len(chosen) == limit:
            break
    return chosen


@pytest.mark.parametrize("system", ["hexane", "triclinic"])
def test_each_group_equals_energy_of_its_subset(system, request):
    """Known answer: any atom sets (a molecule, single atoms, scattered atoms, overlapping neighbours,
    a group wider than the box, an empty group), at the frame and with the groups' atoms displaced."""
    ff, x, box = request.getfixturevalue(system)
    rng = np.random.default_rng(1)
    N = ff.n_atoms
    # a group wider than the box (atoms near opposite corners of the unit cell around atom 0): its
    # neighbours are searched in images two cells away too
    frac = x @ np.linalg.inv(box) - x[0] @ np.linalg.inv(box)
    frac -= np.rint(frac)
    wide = [0, *np.flatnonzero((frac > 0.3).all(1))[:8], *np.flatnonzero((frac < -0.3).all(1))[:1]]
    groups = [np.arange(140, 160), [7], [N - 1], rng.choice(N, 7, replace=False), np.arange(300, 303),
              np.arange(303, 318), wide, []]
    atoms = np.concatenate([g for g in groups if len(g)]).astype(int)
    X = np.stack([x, _displaced(x, atoms, rng), _displaced(x, atoms, rng, 0.1)])
    with torch.no_grad():
        ours = ff.group_energies(torch.as_tensor(X), box, _pad(groups, 20))
    ref = _reference(ff, X, box, groups)
    assert ours.shape == (3, len(groups)) and float(ours[:, -1].abs().max()) == 0.0
    torch.testing.assert_close(ours, ref, rtol=RTOL, atol=ATOL)


def test_translated_across_the_box_faces(triclinic):
    """A rigid translation moves groups across faces of the skewed box: same energies."""
    ff, x, box = triclinic
    groups = [np.arange(20 * m, 20 * m + 20) for m in (3, 17, 41)] + [[5], [1000]]
    shifts = [np.zeros(3), np.array([1.3, -0.7, 2.9]), 0.5 * box.sum(0)]
    X = np.stack([x + s for s in shifts])
    with torch.no_grad():
        ours = ff.group_energies(torch.as_tensor(X), box, _pad(groups))
    torch.testing.assert_close(ours, ours[:1].expand_as(ours), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(ours[:1], _reference(ff, X[:1], box, groups), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("system", ["hexane", "triclinic"])
def test_non_interacting_groups_add_up_and_give_the_energy_change(system, request):
    """Groups that do not interact: the sum over groups is the energy of their union, and moving
    one group's atoms changes the total energy by that group's change."""
    ff, x, box = request.getfixturevalue(system)
    rng = np.random.default_rng(2)
    chunks = [np.arange(s, s + 2) for s in range(0, ff.n_atoms, 2)]  # 2 consecutive atoms of one molecule
    groups = _far_apart(ff, x, box, chunks, rng, limit=6)
    assert len(groups) >= 3, len(groups)
    with torch.no_grad():
        ours = ff.group_energies(torch.as_tensor(x[None]), box, _pad(groups), check=True)
        union = ff.energy(x[None], box[None], subset=_mask(ff.n_atoms, np.concatenate(groups))).total
        torch.testing.assert_close(ours.sum(1), union, rtol=RTOL, atol=ATOL)
        lists = _pair_lists(ff, [x, x], box, skin=0.12)  # reused: the moved atoms stay within the skin
        for g in range(len(groups)):
            step = rng.normal(size=(len(groups[g]), 3))
            moved = x.copy()
            moved[groups[g]] += 0.05 * step / np.linalg.norm(step, axis=1, keepdims=True)  # 0.05 nm each
            pair = ff.group_energies(torch.as_tensor(np.stack([x, moved])), box, _pad(groups))
            full = ff.energy(np.stack([x, moved]), box[None], pair_lists=lists, whole=True).total
            torch.testing.assert_close(pair[1, g] - pair[0, g], full[1] - full[0], rtol=RTOL, atol=ATOL)
            others = [h for h in range(len(groups)) if h != g]  # a non-local move would show here
            torch.testing.assert_close(pair[1, others], pair[0, others], rtol=RTOL, atol=ATOL)


def test_without_box_and_gradient(hexane):
    """No periodic boundaries (a subsystem, as local environments use), and the gradient is the
    subset energy's."""
    ff, x, _ = hexane
    atoms = np.flatnonzero(np.linalg.norm(x - x[150], axis=1) < 1.6)  # whole molecules around molecule 7
    atoms = np.flatnonzero(np.isin(ff.params.molecule, np.unique(ff.params.molecule[atoms])))
    sub = ff.subsystem(atoms)
    xs = x[atoms]
    local = np.searchsorted(atoms, np.arange(140, 160))
    groups = [local, local[:3], [0]]
    X = torch.as_tensor(np.stack([xs, _displaced(xs, local, np.random.default_rng(3))]))
    with torch.no_grad():
        ours = sub.group_energies(X, None, _pad(groups))
        ref = torch.stack([sub.energy(X, None, subset=_mask(len(atoms), g)).total for g in groups], 1)
    torch.testing.assert_close(ours, ref, rtol=RTOL, atol=ATOL)
    Xg = X.clone().requires_grad_(True)
    grad, = torch.autograd.grad(sub.group_energies(Xg, None, _pad(groups))[:, 0].sum(), Xg)
    _, forces = sub.forces(X, None, subset=_mask(len(atoms), groups[0]))
    torch.testing.assert_close(grad, -forces, rtol=1e-7, atol=1e-6)


def test_check_and_refusals(hexane):
    ff, x, box = hexane
    X = torch.as_tensor(x[None])
    halves = _pad([np.arange(140, 150), np.arange(150, 160)])  # bonded to each other
    ff.group_energies(X, box, halves)  # unchecked: the caller's guarantee
    with pytest.raises(BackmapError, match=r"groups interact: a bonded term \(bond\) spans two groups"):
        ff.group_energies(X, box, halves, check=True)
    # two atoms of different molecules 0.5 nm apart: a pair within the cut-off
    d = np.linalg.norm(minimum_image(x[None, 200:] - x[:200, None], box_dimensions(box)), axis=-1)
    i, j = np.argwhere((d > 0.4) & (d < 0.6))[0]
    with pytest.raises(BackmapError, match="a pair within the cut-off spans two groups"):
        ff.group_energies(X, box, _pad([[i], [200 + j]]), check=True)
    with pytest.raises(BackmapError, match="groups overlap"):
        ff.group_energies(X, box, _pad([[1, 2], [2, 3]]), check=True)
    with pytest.raises(BackmapError, match="out of range"):
        ff.group_energies(X, box, _pad([[ff.n_atoms]]))
    pme = ForceField(ff.topology, NonbondedSettings.from_mdp(HEXANE / "grompp.mdp"))
    with pytest.raises(BackmapError, match="PME's reciprocal-space part is not"):
        pme.group_energies(X, box, _pad([[1]]))
    wide = ForceField(ff.topology, NonbondedSettings(rvdw=1.8, rcoulomb=1.8))
    with pytest.raises(BackmapError, match="more than half the box height"):
        wide.group_energies(X, box, _pad([[1]]))


@pytest.mark.parametrize("system", ["hexane", "triclinic"])
def test_fixed_environment_trials_equal_the_general_path(system, request):
    """Monte Carlo trials (configurations that differ only in the atoms of groups that do not
    interact): the single neighbour search of ``environment_fixed`` — compiled without gradients,
    torch with them — gives the general path's energies, for whole molecules and pieces of them
    (padded rows), with trials near (0.02 nm) and far (0.3 nm: overlapping the environment); and
    for a group wider than the box on its own."""
    ff, x, box = request.getfixturevalue(system)
    rng = np.random.default_rng(4)
    size = int(np.bincount(ff.params.molecule).min())
    pieces = [np.arange(s, s + size) for s in range(0, ff.n_atoms - size + 1, size)]
    pieces += [np.arange(s, s + 3) for s in range(1, ff.n_atoms - 3, size)]
    groups = _far_apart(ff, x, box, pieces, rng, limit=4, gap=0.6)
    frac = x @ np.linalg.inv(box) - x[0] @ np.linalg.inv(box)
    frac -= np.rint(frac)
    wide = [0, *np.flatnonzero((frac > 0.3).all(1))[:6]]
    for chosen in (groups, [wide]):
        atoms = np.concatenate(chosen).astype(int)
        X = [x] + [_displaced(x, atoms, rng, s) for s in (0.02, 0.05)]
        for _ in range(2):  # each group shifted by 0.25 nm as a whole (groups 0.6 nm apart stay apart)
            y = _displaced(x, atoms, rng, 0.02)
            for g in chosen:
                step = rng.normal(size=3)
                y[g] += 0.25 * step / np.linalg.norm(step)
            X.append(y)
        X = np.stack(X)
        padded = _pad(chosen, 24)
        with torch.no_grad():
            general = ff.group_energies(torch.as_tensor(X), box, padded)
            compiled = ff.group_energies(torch.as_tensor(X), box, padded, environment_fixed=True, check=True)
        torch.testing.assert_close(compiled, general, rtol=RTOL, atol=ATOL)
        Xg = torch.as_tensor(X).requires_grad_(True)
        with_grad = ff.group_energies(Xg, box, padded, environment_fixed=True)
        torch.testing.assert_close(with_grad.detach(), general, rtol=RTOL, atol=ATOL)
        grad, = torch.autograd.grad(with_grad[2].sum(), Xg)  # trial 2's energy: only trial 2's group atoms
        assert float(grad[2, atoms].abs().max()) > 0 and float(grad[[1, 3, 4]].abs().max()) == 0.0


def test_fixed_environment_without_box_and_its_check(hexane):
    ff, x, box = hexane
    atoms = np.flatnonzero(np.linalg.norm(x - x[150], axis=1) < 1.6)
    atoms = np.flatnonzero(np.isin(ff.params.molecule, np.unique(ff.params.molecule[atoms])))
    sub = ff.subsystem(atoms)
    xs = x[atoms]
    local = np.searchsorted(atoms, np.arange(140, 160))
    rng = np.random.default_rng(5)
    X = torch.as_tensor(np.stack([xs] + [_displaced(xs, local, rng) for _ in range(3)]))
    with torch.no_grad():
        torch.testing.assert_close(sub.group_energies(X, None, _pad([local]), environment_fixed=True),
                                   sub.group_energies(X, None, _pad([local])), rtol=RTOL, atol=ATOL)
        moved = X.clone()
        moved[1, 0] += 0.1  # an atom outside the group differs between configurations
        with pytest.raises(BackmapError, match="differ in atoms outside the groups"):
            sub.group_energies(moved, None, _pad([local[1:]]), environment_fixed=True, check=True)


def test_group_index_kept_per_distinct_groups(hexane, monkeypatch):
    """group_energies keeps what depends on the groups alone (touching terms, exclusions, self
    terms) per distinct groups array: calls that reuse, interleave and evict those entries give
    the energies of the known answer, each group's subset energy."""
    import backmap.forcefield.group_energy as energy

    monkeypatch.setattr(energy, "GROUP_INDEX_CACHE", 2)
    ff, x, box = hexane
    rng = np.random.default_rng(4)
    sets = {"A": [np.arange(140, 160), [7]], "B": [np.arange(300, 318)], "C": [np.arange(20, 40), [900]]}  # C: the shape of A
    X = torch.as_tensor(np.stack([x, _displaced(x, np.arange(ff.n_atoms), rng, 0.02)]))
    expected = {k: _reference(ff, X.numpy(), box, g) for k, g in sets.items()}
    with torch.no_grad():
        for k in "ABACBCA":
            torch.testing.assert_close(ff.group_energies(X, box, _pad(sets[k])), expected[k], rtol=RTOL, atol=ATOL)
    assert len(ff._groups._group_indices) == 2
