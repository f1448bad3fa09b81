"""The CG projection (backmap.sampling.cg_projection): a frame moved onto its CG input maps onto
it exactly, keeps every bond's length (rigid bonds at b0, the others as drawn), is the *smallest*
such move (first-order optimality: the metric-weighted move lies in the span of the constraint
normals) and is left alone when it is already consistent."""
import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spl
from conftest import HEXANE

from backmap.engine.loaders import load_mapping, load_topology
from backmap.refinement.restrained import RestrainedSystem
from backmap.sampling.cg_projection import RIDING_WEIGHT, CGProjection
from backmap.system.io import read_frames


@pytest.fixture(scope="module")
def hexane():
    top = load_topology(HEXANE / "topol.top")
    cg = load_mapping(HEXANE / "hexane.xml", top).cg_topology(top)
    frame = next(iter(read_frames(HEXANE / "traj.xtc", top.n_atoms)))
    system = RestrainedSystem(cg)
    x = system.whole(frame.positions, frame.dimensions)
    return cg, system, x, frame.dimensions


def _perturbed(x: np.ndarray, seed: int, scale: float = 0.01) -> np.ndarray:
    return x + np.random.default_rng(seed).normal(scale=scale, size=x.shape)


@pytest.mark.parametrize("rigid", ["h-bonds", "none"])
def test_projected_frame_maps_onto_its_beads_and_keeps_bond_lengths(hexane, rigid):
    cg, system, x, box = hexane
    beads = system.mapped(x)  # the CG input: the reference frame mapped
    drawn = _perturbed(x, 1)
    proj = CGProjection(cg, rigid)
    result = proj(drawn, beads, box)
    assert result.converged
    assert result.cg_rmsd_before > 0.003  # noise of 0.01 nm per atom moves the centres by ≈ 0.004
    assert np.abs(system.mapped(result.positions) - beads).max() < 1e-6
    pairs, b0 = proj.pairs, proj.b0
    before = np.linalg.norm(drawn[pairs[:, 0]] - drawn[pairs[:, 1]], axis=1)
    after = np.linalg.norm(result.positions[pairs[:, 0]] - result.positions[pairs[:, 1]], axis=1)
    rigid_mask = system.constrained_mask(rigid)
    assert np.abs(after[rigid_mask] - b0[rigid_mask]).max(initial=0.0) < 1e-9
    assert np.abs(after[~rigid_mask] - before[~rigid_mask]).max() < 1e-9


def test_the_move_is_the_smallest_one(hexane):
    """At the solution x*, G(x₀ − x*) (G: the norm in which hydrogens ride on their heavy atom) must be
    a combination of the constraint gradients (Lagrange):
    its least-squares residual against their span is round-off, while the move itself is not."""
    cg, system, x, box = hexane
    beads = system.mapped(x)
    drawn = _perturbed(x, 2)
    proj = CGProjection(cg, "none")
    result = proj(drawn, beads, box)
    assert result.closest
    moved = result.positions
    topo = cg.topology
    masses = np.concatenate([np.tile(b.moltype.masses, b.count) for b in topo.blocks])
    hydrogen = np.concatenate([np.tile(b.moltype.elements == "H", b.count) for b in topo.blocks])
    pairs = proj.pairs
    # the gradient of the riding norm ½ Σ_heavy m_group |d_a|² + ½ Σ_H w |d_h − d_parent|², term by term
    d = drawn - moved
    g = np.zeros_like(d)
    heavy = ~hydrogen
    group = masses.astype(float).copy()
    for a, b in pairs:
        if hydrogen[a] != hydrogen[b]:
            h, c = (a, b) if hydrogen[a] else (b, a)
            group[c] += masses[h]
            g[h] += RIDING_WEIGHT * (d[h] - d[c])
            g[c] -= RIDING_WEIGHT * (d[h] - d[c])
    g[heavy] += group[heavy, None] * d[heavy]
    g = g.ravel()
    r = moved[pairs[:, 0]] - moved[pairs[:, 1]]
    rows = np.repeat(np.arange(len(pairs)), 6)
    cols = np.stack([3 * pairs[:, 0] + c for c in range(3)] + [3 * pairs[:, 1] + c for c in range(3)], 1).ravel()
    bond_j = sp.csr_matrix((np.concatenate([r, -r], 1).ravel(), (rows, cols)), shape=(len(pairs), moved.size))
    jac = sp.vstack([bond_j, proj._cg_jacobian]).tocsr()
    lam = spl.lsqr(jac.T, g, atol=1e-14, btol=1e-14, iter_lim=20000)[0]
    residual = np.linalg.norm(jac.T @ lam - g) / np.linalg.norm(g)
    assert residual < 1e-6, residual
    assert np.abs(drawn - moved).max() > 1e-3  # ... and there was something to move


def test_a_consistent_frame_is_left_alone(hexane):
    cg, system, x, box = hexane
    result = CGProjection(cg, "none")(x, system.mapped(x), box)
    assert result.converged and result.largest_move < 1e-9
    # and projecting twice is projecting once
    drawn = _perturbed(x, 3)
    proj = CGProjection(cg, "h-bonds")
    once = proj(drawn, system.mapped(x), box).positions
    twice = proj(once, system.mapped(x), box)
    assert twice.largest_move < 1e-8


def test_beads_in_another_periodic_image_are_fine(hexane):
    cg, system, x, box = hexane
    beads = system.mapped(x)
    shifted = beads + np.array([box[0], 0.0, -box[2]])  # the CG input in other images
    result = CGProjection(cg, "none")(_perturbed(x, 4), shifted, box)
    assert result.converged and result.largest_move < 0.1
    assert np.abs(system.mapped(result.positions) - beads).max() < 1e-6


def test_an_impossible_molecule_is_left_as_drawn_and_the_others_projected(hexane):
    """A bead 1 nm from where its atoms are would need a move beyond max_move: that molecule is left
    exactly as drawn, every other molecule still maps onto its beads with its bonds kept."""
    cg, system, x, box = hexane
    beads = system.mapped(x)
    beads[0] += 1.0  # bead 0 belongs to molecule 0 (atoms 0..19, beads 0..2)
    drawn = _perturbed(x, 5)
    result = CGProjection(cg, "none", max_move=0.3)(drawn, beads, box)
    assert not result.converged and result.molecules_unprojected == 1
    np.testing.assert_array_equal(result.positions[:20], drawn[:20])
    assert np.abs(system.mapped(result.positions)[3:] - beads[3:]).max() < 1e-6
    pairs = system.bonds[0]
    rest = pairs[:, 0] >= 20
    lengths = lambda y: np.linalg.norm(y[pairs[rest, 0]] - y[pairs[rest, 1]], axis=1)  # noqa: E731
    np.testing.assert_allclose(lengths(result.positions), lengths(drawn), atol=1e-6)
    every = beads.copy()
    every[3::3] += 1.0  # one impossible bead in every molecule: nothing can be projected
    whole = CGProjection(cg, "none", max_move=0.3)(drawn, every, box)
    assert not whole.converged and np.array_equal(whole.positions, drawn)


def test_projecting_some_molecules_moves_them_as_the_whole_frame_does(hexane):
    """Molecules are independent: the projection of two molecules alone (CGProjection.molecules,
    what the projection move does again after a move that changed only those) gives them the
    places the whole frame's projection gives them, and the whole frame's leaves the others."""
    cg, system, x, box = hexane
    beads = system.mapped(x)
    proj = CGProjection(cg, "h-bonds")
    on = proj(_perturbed(x, 3), beads, box).positions
    chosen = np.array([2, 5])
    part, atoms, bead_rows = proj.molecules(chosen)
    assert set(np.unique(proj.molecule[atoms]).tolist()) == {2, 5} and part.n_molecules == 2
    kicked = on.copy()
    kicked[atoms] = _perturbed(on[atoms], 4)
    whole = proj(kicked, beads, box)
    alone = part(kicked[atoms], beads[bead_rows], box)
    assert whole.converged and alone.converged
    assert np.abs(alone.positions - whole.positions[atoms]).max() < 1e-6
    others = np.setdiff1d(np.arange(len(x)), atoms)
    assert np.abs(whole.positions[others] - on[others]).max() < 1e-6
    assert np.abs(whole.positions[atoms] - kicked[atoms]).max() > 1e-3  # not vacuous

