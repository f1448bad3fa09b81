"""LocalMetropolis (compiled local Monte Carlo moves decided in turn): each move's energy change
against the total energy of the whole system, restraints and springs included."""
import numpy as np
import pytest
import test_group_energies
import torch

from backmap.sampling.local_mc import LocalMetropolis

hexane, triclinic = test_group_energies.hexane, test_group_energies.triclinic  # their systems (fixtures)

ATOL = 1e-6  # kJ/mol: float64 round-off of a difference of two total energies (~1e4 kJ/mol)
K_BEAD, K_SPRING = 2.0e4, 5.0e5


def _target(ff, x, rng):
    """A LocalMetropolis with beads of 4 consecutive atoms (unequal weights) restrained near their
    centres, springs on every third bond, and the total of its terms (a reference, numpy)."""
    N = ff.n_atoms
    beads = [(np.arange(a, a + 4), (w := rng.uniform(0.5, 1.5, 4)) / w.sum()) for a in range(0, N - 3, 4)]
    bonds = ff.params.bonded["bond"].atoms[::3]
    lengths = np.linalg.norm(x[bonds[:, 0]] - x[bonds[:, 1]], axis=1) + rng.normal(0, 0.002, len(bonds))
    targets = np.stack([w @ x[a] for a, w in beads]) + rng.normal(0, 0.01, (len(beads), 3))
    local = LocalMetropolis(ff, beads, K_BEAD, bonds, lengths, K_SPRING)

    def total(y, box):
        with torch.no_grad():
            u = float(ff.energy(torch.as_tensor(y)[None], None if box is None else box[None], whole=True).total[0])
        m = np.stack([w @ y[a] for a, w in beads])
        r = np.linalg.norm(y[bonds[:, 0]] - y[bonds[:, 1]], axis=1)
        return u + 0.5 * K_BEAD * ((m - targets) ** 2).sum() + 0.5 * K_SPRING * ((r - lengths) ** 2).sum()

    return local, targets, total


def _moves(ff, x, rng, n):
    """n moves of a few atoms each (an atom, a CH₂ / CH₃ with its hydrogens, 12 atoms of a molecule),
    displaced at random by ~0.03 nm (some by ~0.3), padded rows of 12."""
    rows = np.full((n, 12), -1)
    moved = np.zeros((n, 12), bool)
    new = np.zeros((n, 12, 3))
    starts = rng.choice(ff.n_atoms - 12, n, replace=False)
    for g, a in enumerate(starts):
        size = [1, 3, 4, 12][g % 4]
        rows[g, :12] = np.arange(a, a + 12)
        moved[g, :size] = True
        scale = 0.3 if g % 7 == 0 else 0.03
        new[g] = x[rows[g]] + moved[g][:, None] * rng.normal(0, scale, (12, 3))
    return rows, moved, new


@pytest.mark.parametrize("system", ["hexane", "triclinic", "no box"])
def test_each_move_changes_the_total_energy_by_its_delta(system, request):
    """Known answer: every move, all rejected (ln u = +inf: each from the same state), has ΔE equal to
    the change of the whole system's energy (force field, restraints, springs) when only its atoms
    move; the state is left as it was. "no box": the triclinic system's molecules without periodic
    images."""
    ff, x, box = request.getfixturevalue("triclinic" if system == "no box" else system)
    box = None if system == "no box" else box
    rng = np.random.default_rng(3)
    local, targets, total = _target(ff, x, rng)
    rows, moved, new = _moves(ff, x, rng, 24)
    walls = np.repeat(x[rows.clip(0)].mean(1, keepdims=True), 12, 1)
    accepted, invalid, delta, y = local.scan(x, rows, moved, new, np.full(24, np.inf), 1.0, box, walls, 10.0,
                                             targets)
    assert not accepted.any() and not invalid.any() and np.array_equal(y, x)
    e0 = total(x, box)
    for g in range(24):
        z = x.copy()
        z[rows[g][moved[g]]] = new[g][moved[g]]
        assert abs(delta[g] - (total(z, box) - e0)) < ATOL, f"move {g}"
    assert np.abs(delta).max() > 100  # the large displacements make clashes: a test with teeth


def test_moves_accepted_in_turn_see_the_moves_before_them(hexane):
    """All accepted (ln u = −inf), moves of neighbouring atoms: the k-th ΔE is the total energy change
    from the state the k − 1 moves before it left, and the final state has every move."""
    ff, x, box = hexane
    rng = np.random.default_rng(4)
    local, targets, total = _target(ff, x, rng)
    rows = np.array([np.arange(a, a + 3) for a in (40, 43, 46, 49, 60, 64)])  # neighbours along chains
    moved = np.ones_like(rows, bool)
    new = x[rows] + rng.normal(0, 0.03, (*rows.shape, 3))
    walls = x[rows]
    accepted, invalid, delta, y = local.scan(x, rows, moved, new, np.full(len(rows), -np.inf), 1.0, box, walls, 1.0,
                                             targets)
    assert accepted.all() and not invalid.any()
    z = x.copy()
    for g in range(len(rows)):
        before = total(z, box)
        z[rows[g]] = new[g]
        assert abs(delta[g] - (total(z, box) - before)) < ATOL, f"move {g}"
    np.testing.assert_array_equal(y, z)


def test_the_wall_rejects_and_a_state_beyond_it_is_invalid(hexane):
    """A proposal with an atom beyond ``extent`` of its wall centre is rejected (ΔE = +inf), even with
    ln u = −inf; a current state beyond it is counted invalid (NaN), and nothing moves."""
    ff, x, box = hexane
    local, targets, _total = _target(ff, x, np.random.default_rng(5))
    rows = np.array([[10, 11, 12], [100, 101, 102]])
    moved = np.ones_like(rows, bool)
    new = x[rows] + np.array([0.2, 0.0, 0.0])
    walls = x[rows].copy()
    walls[1, 2] += 0.5  # the second row's third atom lies 0.5 nm from its wall now
    accepted, invalid, delta, y = local.scan(x, rows, moved, new, np.full(2, -np.inf), 1.0, box, walls, 0.15,
                                             targets)
    assert not accepted.any() and list(invalid) == [False, True]
    assert delta[0] == np.inf and np.isnan(delta[1]) and np.array_equal(y, x)


def test_rigid_bodies_leave_out_only_what_does_not_change(triclinic):
    """Moves of 12 atoms: 8 turned about their centroid together (body 1), 4 translated together
    (body 2), labelled so: the terms and pairs inside each body are skipped, and ΔE is still the total
    energy change (and the unlabelled ΔE)."""
    ff, x, box = triclinic
    rng = np.random.default_rng(6)
    local, targets, total = _target(ff, x, rng)
    G = 12
    rows = np.stack([np.arange(a, a + 12) for a in rng.choice(ff.n_atoms - 12, G, replace=False)])
    moved = np.ones((G, 12), bool)
    bodies = np.repeat([[1] * 8 + [2] * 4], G, 0)
    new = x[rows].copy()
    for g in range(G):
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        angle = rng.uniform(-0.3, 0.3)
        k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        turn = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
        centre = new[g, :8].mean(0)
        new[g, :8] = (new[g, :8] - centre) @ turn.T + centre
        new[g, 8:] += rng.normal(0, 0.03, 3)
    walls = x[rows].copy()
    args = (x, rows, moved, new, np.full(G, np.inf), 1.0, box, walls, 10.0, targets)
    _acc, _inv, labelled, _y = local.scan(*args, rigid=bodies)
    _acc, _inv, plain, _y = local.scan(*args)
    e0 = total(x, box)
    for g in range(G):
        z = x.copy()
        z[rows[g]] = new[g]
        assert abs(labelled[g] - (total(z, box) - e0)) < ATOL, f"move {g}"
    np.testing.assert_allclose(labelled, plain, rtol=0, atol=ATOL)
