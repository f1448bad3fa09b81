"""Stereocentres by tacticity (``backmap.sampling.chirality``: ``backbone_centres``,
``tacticity_centres``; the move ``invert_stereocentres``), on the shipped sPS model's output for the
project's own CG frame (tests/data/sps/cg.gro: 36 chains of 10 styrene units)."""
import numpy as np
import pytest
from conftest import DATA, run_cli

from backmap.engine.loaders import load_topology
from backmap.metrics.stereo import backbone_dyads, dyads
from backmap.errors import BackmapError
from backmap.sampling.backmapper import BackmapSettings
from backmap.sampling.chirality import backbone_centres, invert_flipped, tacticity_centres
from backmap.system.io import read_frames
from backmap.system.pbc import Unwrapper


def hands(top, x) -> np.ndarray:
    """(chains, centres) sign of (previous, next, side) at every backbone centre, in chain order."""
    mt = top.blocks[0].moltype
    rows = backbone_centres(mt, x[:mt.n_atoms])
    g = rows[None] + (np.arange(top.blocks[0].count) * mt.n_atoms)[:, None, None]
    d = x[g[..., 1:4]] - x[g[..., :1]]
    return np.sign(np.einsum("...i,...i", d[..., 0, :], np.cross(d[..., 1, :], d[..., 2, :])))


@pytest.fixture(scope="module")
def isotactic(tmp_path_factory):
    """The shipped sPS model (trained on syndiotactic chains) asked for isotactic ones."""
    out = tmp_path_factory.mktemp("tacticity") / "aa.gro"
    code, shown, err = run_cli("apply", "--model", "sps-equivariant", "--cg", DATA / "sps" / "cg.gro", "--out", out,
                               "--tacticity", "isotactic", "--seed", "3", catch_exceptions=False)
    assert code == 0, err
    top = load_topology(out.with_suffix(".top"))
    frame = next(iter(read_frames(out, top.n_atoms)))
    return top, Unwrapper(top)(frame.positions, frame.dimensions), shown


def test_the_backbone_centres_of_polystyrene_are_its_ring_carrying_ch_in_chain_order(isotactic):
    top, x, _ = isotactic
    mt = top.blocks[0].moltype
    rows = backbone_centres(mt, x[:mt.n_atoms])
    assert rows.shape == (9, 5)  # the tenth CH ends the chain: two heavy neighbours
    assert all(mt.atom_types[s] == "C_AR" and mt.elements[h] == "H" for s, h in rows[:, 3:])
    backbone = set(rows[:, 1]) | set(rows[:, 2])
    assert not backbone & set(rows[:, 3]) and len(backbone) == 10  # the 10 CH2 between and around them


def test_tacticity_makes_every_chain_isotactic_keeping_bonds(isotactic):
    _, x, shown = isotactic
    h = hands(*isotactic[:2])
    assert (np.abs(h.sum(1)) == h.shape[1]).all()  # one hand along each chain
    inverted = int(shown.split("centres_inverted ")[1].split(",")[0])
    # the model draws syndiotactic chains (alternating hands): about half the centres turn — twice
    # with the shipped clash repair, which draws reflected units again in the model's hand
    assert 100 < inverted < 2 * 224, shown
    assert "broken bonds 0.0000" in shown


def test_a_pattern_is_kept_in_either_phase_and_restored_by_reflection(isotactic):
    top, x, _ = isotactic
    for y in (x, x * [-1, 1, 1]):  # the mirror image is the other phase of the same pattern
        centres, chains = tacticity_centres(top, y, "isotactic")
        assert chains == 36 and centres.kept(top, y) == 1.0
    centres, _ = tacticity_centres(top, x, "syndiotactic")
    kept = centres.kept(top, x)
    assert 0.4 < kept < 0.7  # an isotactic chain is half right as a syndiotactic one (the majority phase)
    y, inverted, left = invert_flipped(centres, top, x)
    assert left == 0 and inverted == round((1 - kept) * 324)
    assert centres.kept(top, y) == 1.0
    h = hands(top, y)
    assert (h[:, 1:] == -h[:, :-1]).all()  # alternating
    rows, pairs = backbone_dyads(top, x)
    assert pairs.shape == (36 * 8, 2)  # evaluate's stereo:dyads: all meso before, all racemo after
    assert (dyads(x[None], rows, pairs) == 1).all() and (dyads(y[None], rows, pairs) == -1).all()
    moved = np.flatnonzero(np.abs(y - x).max(1) > 1e-9)
    assert len(moved) == 2 * inverted  # each centre and its hydrogen, nothing else
    bonds = top.blocks[0].moltype.bonds
    lengths = lambda z: np.linalg.norm(z[bonds[:, 0]] - z[bonds[:, 1]], axis=1)  # noqa: E731
    heavy = np.array([top.atom_names[i][0] != "H" and top.atom_names[j][0] != "H" for i, j in bonds])
    assert np.allclose(lengths(y[:162])[heavy], lengths(x[:162])[heavy], atol=1e-6)


def test_the_hands_are_given_once(tmp_path):
    settings = BackmapSettings(tacticity="syndiotactic")
    assert [m.name for m in settings.move_choices()] == ["invert_stereocentres"]
    assert BackmapSettings(tacticity="syndiotactic", invert_stereo=False).move_choices() == []
    with pytest.raises(BackmapError, match="tacticity"):
        tacticity_centres(None, np.zeros((0, 3)), "atactic")
    gro = tmp_path / "ref.gro"
    gro.write_text("x\n0\n 1 1 1\n")
    code, _, err = run_cli("apply", "--model", "sps-equivariant", "--cg", DATA / "sps" / "cg.gro", "--out",
                           tmp_path / "aa.gro", "--tacticity", "syndiotactic", "--stereo-reference", gro)
    assert code != 0 and "stereo_reference or tacticity, not both" in err
    code, _, err = run_cli("apply", "--model", "sps-equivariant", "--cg", DATA / "sps" / "cg.gro", "--out",
                           tmp_path / "aa.gro", "--move", "invert_stereocentres")
    assert code != 0 and "stereo_reference or a tacticity" in err
    assert not (tmp_path / "aa.gro").exists()
