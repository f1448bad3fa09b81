"""Keeping stereocentres: handedness from a reference structure, and the sampler's selection
penalty for candidates that invert a centre (tests/data/chiral: 27 CHFClBr molecules)."""
import numpy as np
import pytest
from conftest import DATA, chiral_molecules

from backmap.engine.assembly import make_backmapper
from backmap.sampling.backmapper import BackmapSettings
from backmap.sampling.chirality import centre_rows, chiral_centres, load_chiral_centres
from backmap.errors import BackmapError
from backmap.system.io import Frame, write_frames
from backmap.engine.loaders import load_mapping
from backmap.engine.registry import default_registry
from backmap.engine.loaders import load_topology

CHIRAL = DATA / "chiral"
BOX = 3.0


@pytest.fixture(scope="module")
def system():
    top = load_topology(CHIRAL / "chiral.top")
    cg = load_mapping(CHIRAL / "chiral.xml", top).cg_topology(top)
    x = chiral_molecules()
    return top, cg, x


def _write(path, top, x):
    write_frames(path, [Frame(x, np.array([BOX, BOX, BOX, 90, 90, 90.0]))], top.atom_names, top.resnames,
                 top.residue_numbers())
    return path


def test_centre_uses_heavy_neighbours_and_flips_under_reflection(system):
    top, _cg, x = system
    mt = top.blocks[0].moltype
    rows, slots = centre_rows(mt, x[:5])  # C with every triple of H, F, Cl, Br
    assert rows.tolist() == [[0, 1, 2, 3], [0, 1, 2, 4], [0, 1, 3, 4], [0, 2, 3, 4]] and slots.tolist() == [0, 1, 2, 3]
    centres = chiral_centres(top, x)
    assert (centres.sign[0::5] != 0).all() and (centres.sign[1::5] == 0).all()
    assert centres.kept(top, x) == 1.0
    assert centres.kept(top, x * [-1, 1, 1]) == 0.0
    half = x.copy()
    half[:5 * 13] *= [1, 1, -1]
    assert centres.kept(top, half) == pytest.approx(14 / 27)
    # the heavy skeleton right, the hydrogen reflected through the carbon onto the halogens' side
    h_through = x.copy()
    h_through[1::5] = 2 * x[0::5] - x[1::5]
    assert centres.kept(top, h_through) == 0.0


def test_stereo_reference_errors_name_the_file(system, tmp_path):
    top, _cg, _x = system
    with pytest.raises(BackmapError, match="not found"):
        load_chiral_centres(top, tmp_path / "missing.gro")
    short = _write(tmp_path / "short.gro", load_topology(DATA / "dimer" / "dimer.top"), np.zeros((2, 3)))
    with pytest.raises(BackmapError, match="short.gro"):
        load_chiral_centres(top, short)


def test_sampler_keeps_the_reference_handedness(system, tmp_path):
    """A generator that scatters atoms at random around the bead makes either handedness, and
    mostly distorted centres, with equal energy; the selection penalty makes most molecules the
    reference's (all would need a candidate inside every centre's cone among the K)."""
    top, cg, x = system
    ref = _write(tmp_path / "ref.gro", top, x)
    beads = cg.apply(x)
    kept = {}
    for restrained in (False, True):
        generator = default_registry().get("generator", "bead_centre").cls({"spread": 0.08})
        settings = BackmapSettings(candidates=128, gibbs_sweeps=1, stereo_reference=ref if restrained else None,
                                   invert_stereo=False)  # the selection alone (the inversion: test_tacticity)
        bm = make_backmapper(cg, generator, settings, seed=4)
        out = list(bm.run([Frame(beads, np.array([BOX, BOX, BOX, 90, 90, 90.0]))]))[0].positions
        kept[restrained] = chiral_centres(top, x).kept(top, out)
        assert bm.chirality_kept == ([kept[True]] if restrained else [])
        # either way the candidates are chemically sensible: bonds near their lengths
        d = np.linalg.norm(out.reshape(27, 5, 3)[:, 1:] - out.reshape(27, 5, 3)[:, :1], axis=-1)
        assert np.abs(d - [0.109, 0.135, 0.177, 0.194]).mean() < 0.03
    assert kept[False] < 0.45 and kept[True] > 0.75, kept  # 5 seeds: 0.19–0.33 and 0.81–0.96


def test_invert_flipped_gives_the_reference_handedness_and_keeps_bond_lengths(system):
    """A mirror image, and a correct skeleton with each hydrogen pushed through its carbon, both
    come back to the reference's handedness; the bonds keep their lengths, a correct structure
    does not move, and atoms far from an inverted centre stay where they were."""
    from backmap.sampling.chirality import invert_flipped

    top, _cg, x = system
    centres = chiral_centres(top, x)
    mirror = x * [-1, 1, 1] + [BOX, 0, 0]
    h_through = x.copy()
    h_through[1::5] = 2 * x[0::5] - x[1::5]
    for start, reflected in ((mirror, 27), (h_through, 0)):
        assert centres.kept(top, start) == 0.0
        out, inverted, left = invert_flipped(centres, top, start, np.array([BOX, BOX, BOX, 90, 90, 90.0]))
        assert centres.kept(top, out) == 1.0 and (inverted, left) == (reflected, 0)
        bonds = lambda y: np.linalg.norm(y.reshape(27, 5, 3)[:, 1:] - y.reshape(27, 5, 3)[:, :1], axis=-1)
        assert np.allclose(bonds(out), bonds(start), atol=1e-9)
        heavy = np.ones(len(x), bool)
        heavy[0::5] = heavy[1::5] = False  # only the carbon and its hydrogen move
        assert np.array_equal(out[heavy], start[heavy])
    same, inverted, _left = invert_flipped(centres, top, x)
    assert np.array_equal(same, x) and inverted == 0


def test_inversions_count_the_flipped_triples_across_the_box(system):
    """The target term of vae_mc's stereo reference: 0 at the reference, 4 triples per mirrored
    molecule, 3 where only the hydrogen went through its carbon (the heavy triple stays right),
    and the same counts with atoms wrapped into other periodic images (minimum image)."""
    import torch

    top, _cg, x = system
    centres = chiral_centres(top, x)
    molecules = np.arange(len(x)).reshape(27, 5)
    rows, signs = centres.touching(top, molecules)
    assert rows.shape == (27, 4, 4) and (signs != 0).all()
    # a unit of the hydrogen alone can flip only the three triples that contain it
    only_h, _ = centres.touching(top, molecules[:1, 1:2])
    assert np.array_equal(only_h[0], rows[0][(rows[0] == 1).any(1)])
    h_through = x.copy()
    h_through[1::5] = 2 * x[0::5] - x[1::5]
    mirror = x.copy()
    mirror[:5 * 13] *= [-1, 1, 1]
    wrapped = h_through.copy()
    wrapped[2::5] += [BOX, 0, -BOX]  # the fluorines in other images
    configs = torch.as_tensor(np.stack([x, mirror, h_through, wrapped]))
    vectors = np.diag([BOX] * 3)
    n = centres.inversions(configs, torch.as_tensor(rows), torch.as_tensor(signs), vectors).numpy()
    assert (n[0] == 0).all()
    assert (n[1, :13] == 4).all() and (n[1, 13:] == 0).all()
    assert (n[2] == 3).all() and (n[3] == 3).all()
    assert (n[1] == 0).mean() == pytest.approx(centres.kept(top, mirror))


def test_centres_can_be_named_instead_of_perceived(system):
    """``centres`` picks the atoms (here the bromine, which has one neighbour: no triple) instead
    of RDKit's; an empty list keeps none."""
    top, _cg, x = system
    name = top.blocks[0].moltype.name
    assert (chiral_centres(top, x, centres={name: []}).sign == 0).all()
    named = chiral_centres(top, x, centres={name: [0]})
    assert np.array_equal(named.sign, chiral_centres(top, x).sign)
