"""The compiled placement kernel's cell grid (``group_energies(..., environment_fixed=True)``): in a
box so small that a group reaches two images of the same atom, every image within the cut-off
counts once, against the energies of the groups' subsets (an independent neighbour search)."""
import numpy as np
import pytest
import torch
from conftest import TRICLINIC
from test_group_energies import RTOL, ATOL, _displaced, _pad, _reference, _system

from backmap.forcefield import NonbondedSettings
from backmap.forcefield.neighbors import box_heights


@pytest.fixture(scope="module")
def triclinic():
    """Triclinic box (70/80/90°, heights 2.26–2.40 nm, cut-off 1.0 nm), 60 hexanes, made whole."""
    settings = NonbondedSettings.from_mdp(TRICLINIC / "grompp.mdp").model_copy(update={"coulomb": "cutoff"})
    return _system(TRICLINIC, settings, frame=1)


def _images_within_cutoff(x, box, group, cutoff):
    """Per atom outside ``group``: the set of its images (lattice offsets, -2..2 per axis) within
    the cut-off of some atom of the group."""
    offsets = np.stack(np.meshgrid(*[np.arange(-2, 3)] * 3, indexing="ij"), -1).reshape(-1, 3)
    others = np.setdiff1d(np.arange(len(x)), group)
    d = x[others][:, None, None] + (offsets @ box)[None, :, None] - x[group][None, None]  # (P, O, A, 3)
    hit = (np.linalg.norm(d, axis=-1) < cutoff).any(2)
    return {int(j): {tuple(o) for o in offsets[h]} for j, h in zip(others, hit) if h.any()}


def _groups(ff, x, box, anchor=0):
    """Wide groups around atom ``anchor``: its hexane and the nearest other one, atoms within
    0.9 nm (a sphere wider than half the box) and atoms near opposite corners of the cell around
    it (wider than the box); and hexane 17."""
    mol = ff.params.molecule
    inv = np.linalg.inv(box)
    frac = x @ inv - x[anchor] @ inv
    frac -= np.rint(frac)
    dist = np.linalg.norm(frac @ box, axis=1)
    order = np.argsort(dist)
    other = mol[order[np.flatnonzero(mol[order] != mol[anchor])[0]]]
    return [np.flatnonzero((mol == mol[anchor]) | (mol == other)), order[dist[order] < 0.9][::8],
            np.r_[anchor, np.flatnonzero((frac > 0.3).all(1))[:4], np.flatnonzero((frac < -0.3).all(1))[:3]],
            np.flatnonzero(mol == 17)]


def test_small_box_every_image_once(triclinic):
    """Each group on its own, trials displaced and moved as a whole (C = 4), with padded slots,
    the whole system also translated across the faces (by a lattice vector and off the lattice):
    the compiled kernel's energies equal the subset energies. Each group has atoms of which two
    images are within the cut-off (of different group atoms), so a missed or repeated image shows."""
    ff, x, box = triclinic
    cutoff = ff.settings.cutoff
    assert box_heights(box).max() < 2 * (cutoff + 0.5)  # a group's reach exceeds half the box
    rng = np.random.default_rng(11)
    shifts = [np.zeros(3), np.array([0.7, -1.9, 3.1]), -2 * box[0] + box[2], 0.5 * box.sum(0)]
    for group in _groups(ff, x, box):
        group = np.asarray(group)
        # the groups' atoms as one piece (nearest images of the first atom), as a Monte Carlo unit is
        frac = (x[group] - x[group[0]]) @ np.linalg.inv(box)
        xg = x.copy()
        xg[group] -= np.rint(frac) @ box
        assert max(len(i) for i in _images_within_cutoff(xg, box, group, cutoff).values()) >= 2
        X = [xg, _displaced(xg, group, rng, 0.03), _displaced(xg, group, rng, 0.1)]
        step = rng.normal(size=3)
        moved = _displaced(xg, group, rng, 0.02)
        moved[group] += 0.3 * step / np.linalg.norm(step)
        X = np.stack(X + [moved])
        ref = _reference(ff, X, box, [group])
        for shift in shifts:
            with torch.no_grad():
                ours = ff.group_energies(torch.as_tensor(X + shift), box, _pad([group], len(group) + 5),
                                         environment_fixed=True)
            torch.testing.assert_close(ours, ref, rtol=RTOL, atol=ATOL)


def test_small_box_overlapping_groups_one_call(triclinic):
    """All wide groups in one call (one configuration: groups may overlap in reach), padded to a
    common width: each entry is its subset's energy."""
    ff, x, box = triclinic
    groups, used = [], np.zeros(ff.n_atoms, bool)
    for k, anchor in enumerate((0, 700, 1100, 0)):  # disjoint: each group without the atoms before it
        g = _groups(ff, x, box, anchor)[k]
        groups.append(g[~used[g]])
        used[g] = True
    assert min(len(g) for g in groups) >= 5
    with torch.no_grad():
        ours = ff.group_energies(torch.as_tensor(x[None]), box, _pad(groups, 48), environment_fixed=True)
    torch.testing.assert_close(ours, _reference(ff, x[None], box, groups), rtol=RTOL, atol=ATOL)


def test_many_trials_and_a_group_of_over_64_atoms(triclinic):
    """The kernel's other paths: a compact group of more than 64 atoms (those in the 0.9 nm cube
    around the atom with most such, pieces of molecules excluded with atoms outside: clusters of at
    most 64 atoms, one bit each in the exclusion masks) with nine placements (from six on, each
    atom's own neighbours are copied out first), and with only the first two: each equals the
    subset energy."""
    ff, x, box = triclinic
    inv = np.linalg.inv(box)

    def cube(anchor):
        frac = (x - x[anchor]) @ inv
        frac -= np.rint(frac)
        return np.flatnonzero((np.abs(frac @ box) < 0.45).all(1))

    group = cube(max(range(ff.n_atoms), key=lambda a: len(cube(a))))
    mol = ff.params.molecule
    assert len(group) > 64 and not np.isin(np.flatnonzero(np.isin(mol, mol[group])), group).all()
    xg = x.copy()
    xg[group] -= np.rint((x[group] - x[group[0]]) @ inv) @ box  # one piece, as a unit is
    rng = np.random.default_rng(13)
    X = [xg] + [_displaced(xg, group, rng, s) for s in (0.01, 0.03, 0.1)]
    for _ in range(5):
        step = rng.normal(size=3)
        moved = _displaced(xg, group, rng, 0.02)
        moved[group] += 0.4 * step / np.linalg.norm(step)
        X.append(moved)
    X = np.stack(X)
    ref = _reference(ff, X, box, [group])
    for C in (len(X), 2):
        with torch.no_grad():
            ours = ff.group_energies(torch.as_tensor(X[:C]), box, _pad([group], len(group) + 3),
                                     environment_fixed=True)
        torch.testing.assert_close(ours, ref[:C], rtol=RTOL, atol=ATOL)
