"""Keeping stereocentres: handedness from a reference structure, and the sampler's selection
penalty for candidates that invert a centre (tests/data/chiral: 27 CHFClBr molecules)."""
import numpy as np
import pytest

from backmap.backmapping import Backmapper, BackmapSettings
from backmap.chirality import centre_rows, chiral_centres, load_chiral_centres
from backmap.errors import BackmapError
from backmap.io import Frame, write_frames
from backmap.mapping import load_mapping
from backmap.registry import default_registry
from backmap.topology import load_topology

from conftest import DATA

CHIRAL = DATA / "chiral"
BOX = 3.0


@pytest.fixture(scope="module")
def system():
    top = load_topology(CHIRAL / "chiral.top")
    cg = load_mapping(CHIRAL / "chiral.xml", top).cg_topology(top)
    # one enantiomer on a 3×3×3 grid, each molecule randomly rotated (rotations keep handedness)
    rng = np.random.default_rng(2)
    t = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / np.sqrt(3)
    lengths = np.array([0.109, 0.135, 0.177, 0.194])[:, None]
    mols = []
    for k, centre in enumerate(np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3)):
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        q *= np.sign(np.linalg.det(q))  # a proper rotation
        mols.append(0.5 + centre + np.vstack([[0, 0, 0], t * lengths]) @ q.T)
    x = np.concatenate(mols)
    return top, cg, x


def _write(path, top, x):
    write_frames(path, [Frame(x, np.array([BOX, BOX, BOX, 90, 90, 90.0]))], top.atom_names, top.resnames,
                 top.residue_numbers())
    return path


def test_centre_uses_heavy_neighbours_and_flips_under_reflection(system):
    top, _cg, x = system
    mt = top.blocks[0].moltype
    assert centre_rows(mt, x[:5]).tolist() == [[0, 2, 3, 4]]  # C with F, Cl, Br (H is placed last)
    centres = chiral_centres(top, x)
    assert (centres.sign[0::5] != 0).all() and (centres.sign[1::5] == 0).all()
    assert centres.kept(top, x) == 1.0
    assert centres.kept(top, x * [-1, 1, 1]) == 0.0
    half = x.copy()
    half[:5 * 13] *= [1, 1, -1]
    assert centres.kept(top, half) == pytest.approx(14 / 27)


def test_stereo_reference_errors_name_the_file(system, tmp_path):
    top, _cg, x = system
    with pytest.raises(BackmapError, match="not found"):
        load_chiral_centres(top, tmp_path / "missing.gro")
    short = _write(tmp_path / "short.gro", load_topology(DATA / "dimer" / "dimer.top"), np.zeros((2, 3)))
    with pytest.raises(BackmapError, match="short.gro"):
        load_chiral_centres(top, short)


@pytest.mark.parametrize("restrained", [False, True])
def test_sampler_keeps_the_reference_handedness(system, tmp_path, restrained):
    """A generator that scatters atoms at random around the bead makes either enantiomer with
    equal energy; only the selection penalty makes every molecule the reference's."""
    top, cg, x = system
    ref = _write(tmp_path / "ref.gro", top, x)
    generator = default_registry().get("generator", "bead_centre").cls({"spread": 0.12})
    settings = BackmapSettings(candidates=32, gibbs_sweeps=2, stereo_reference=ref if restrained else None)
    bm = Backmapper(cg, generator, settings, seed=4)
    beads = cg.apply(x)
    out = list(bm.run([Frame(beads, np.array([BOX, BOX, BOX, 90, 90, 90.0]))]))[0].positions
    kept = chiral_centres(top, x).kept(top, out)
    if restrained:
        assert kept == 1.0 and bm.chirality_kept == [1.0]
    else:
        assert 0.2 < kept < 0.8, kept  # a coin flip per molecule
    # either way the candidates are chemically sensible: bonds near their lengths
    d = np.linalg.norm(out.reshape(27, 5, 3)[:, 1:] - out.reshape(27, 5, 3)[:, :1], axis=-1)
    assert np.abs(d - [0.109, 0.135, 0.177, 0.194]).mean() < 0.03
