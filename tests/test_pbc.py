"""Periodic boundaries: triclinic minimum images and making molecules whole."""
import numpy as np

from backmap.system.io import read_frames
from backmap.system.pbc import Unwrapper, box_dimensions, box_vectors, minimum_image
from backmap.engine.loaders import load_topology

from conftest import TRICLINIC


def _bond_lengths(topo, x):
    out = []
    for mt, start in topo.molecules():
        b = mt.bonds + start
        out.append(np.linalg.norm(x[b[:, 0]] - x[b[:, 1]], axis=1))
    return np.concatenate(out)


def test_triclinic_box_round_trip():
    dims = np.array([3.1, 3.3, 3.6, 70.0, 80.0, 90.0])
    np.testing.assert_allclose(box_dimensions(box_vectors(dims)), dims, rtol=1e-5)


def test_make_whole_triclinic():
    topo = load_topology(TRICLINIC / "topol.tpr")
    frames = list(read_frames(TRICLINIC / "traj.xtc", topo.n_atoms))
    assert not np.allclose(frames[0].dimensions[3:], 90.0)  # really triclinic
    unwrap = Unwrapper(topo)
    broken = 0
    for fr in frames:
        before = _bond_lengths(topo, fr.positions)
        broken += int((before > 0.5).sum())
        x = unwrap(fr.positions, fr.dimensions)
        after = _bond_lengths(topo, x)
        assert after.max() < 0.2  # every C-C / C-H bond whole
        # same bond vectors as the minimum-image ones, and atoms only moved by lattice vectors
        shift = np.linalg.solve(fr.box.T, (x - fr.positions).T).T
        np.testing.assert_allclose(shift, np.round(shift), atol=1e-4)
    assert broken > 0, "test data should contain molecules split by the boundary"


def test_minimum_image_triclinic_is_shortest():
    rng = np.random.default_rng(3)
    dims = np.array([3.0, 3.2, 3.4, 70.0, 80.0, 90.0])
    box = box_vectors(dims)
    d = rng.uniform(-6, 6, size=(200, 3))
    m = minimum_image(d, dims)
    # brute force over neighbouring images
    shifts = np.array([[i, j, k] for i in range(-3, 4) for j in range(-3, 4) for k in range(-3, 4)]) @ box
    best = np.linalg.norm(d[:, None] + shifts[None], axis=-1).min(1)
    np.testing.assert_allclose(np.linalg.norm(m, axis=1), best, atol=1e-5)
