"""Feature channels: the default derivation from the topology and DeepBackmap-style channel maps."""
import numpy as np
import pytest

from backmap.sampling.environment import Channels
from backmap.errors import BackmapError
from backmap.engine.loaders import load_mapping
from backmap.engine.loaders import load_topology

from conftest import HEXANE, REPO

# a channel map for hexane in DBM's ff.txt layout: CH3/CH2 carbons share channels, H–C–H its own
HEXANE_FF = """
[bond_types]
; i j channel func b0 kb
opls_135 opls_136 0 1 0.1529 224262
opls_136 opls_136 0 1 0.1529 224262
opls_135 opls_140 1 1 0.109 284512
opls_136 opls_140 1 1 0.109 284512
[/bond_types]
[angle_types]
opls_140 opls_135 opls_140 2 1 107.8 276
opls_140 opls_136 opls_140 2 1 107.8 276
opls_135 opls_136 opls_136 3 1 112.7 488
opls_136 opls_136 opls_136 3 1 112.7 488
[/angle_types]
[dihedral_types]
opls_135 opls_136 opls_136 opls_136 4 3
[/dihedral_types]
[lj_types]
opls_135 opls_135 5
opls_135 opls_136 5
opls_136 opls_136 5
opls_135 opls_140 6
opls_136 opls_140 6
opls_140 opls_140 7
[/lj_types]
[bead_types]
A 8
B 9
[/bead_types]
"""


@pytest.fixture(scope="module")
def hexane_cg():
    topo = load_topology(HEXANE / "topol.top")
    return load_mapping(HEXANE / "hexane.xml", topo).cg_topology(topo)


def test_channel_map_assigns_channels_by_path(hexane_cg, tmp_path):
    ff = tmp_path / "ff.txt"
    ff.write_text(HEXANE_FF)
    ch = Channels.from_dbm_ff(ff, hexane_cg)
    mt = hexane_cg.blocks[0].block.moltype
    m = ch.pair_channels(mt)
    assert ch.n_interactions == 8 and list(ch.bead_types) == ["A", "B"]
    assert m[0, 4] == 0 and m[4, 0] == 0           # C1–C2 bond (CH3–CH2), either direction
    assert m[0, 1] == 1                            # C–H bond
    assert m[1, 2] == 2                            # H–C–H angle of the CH3 group
    assert m[0, 7] == 3                            # C1–C2–C3 angle
    assert m[0, 10] == 4                           # C1…C4 dihedral
    assert m[1, 5] == 7                            # H–C–C–H dihedral: not listed → LJ channel of H–H
    assert m[0, 13] == 5                           # C1…C5: beyond dihedrals → LJ C–C
    table = ch.lj_table()
    t = ch.atom_types
    assert table[t["opls_140"], t["opls_140"]] == 7 and table[t["opls_135"], t["opls_140"]] == 6


def test_default_channels_are_unchanged(hexane_cg):
    ch = Channels.from_system(hexane_cg)
    m = ch.pair_channels(hexane_cg.blocks[0].block.moltype)
    assert ch.n_interactions == 4
    assert (m[0, 4], m[0, 7], m[0, 10], m[0, 13]) == (0, 1, 2, 3)
    assert np.all(ch.lj_table() == 3)


def test_channel_map_errors(hexane_cg, tmp_path):
    ff = tmp_path / "ff.txt"
    ff.write_text("[bond_types]\nopls_135 opls_136 x\n[/bond_types]\n")
    with pytest.raises(BackmapError, match=r"ff.txt:2"):
        Channels.from_dbm_ff(ff, hexane_cg)
    ff.write_text(HEXANE_FF.replace("A 8\n", ""))
    with pytest.raises(BackmapError, match="bead types"):
        Channels.from_dbm_ff(ff, hexane_cg)


def test_dbm_sps_channel_map(shared):
    """DBM's own sPS ff.txt: 19 channels, the phenyl ring's aromatic bonds on channel 2."""
    topo = load_topology(shared / "sps" / "top" / "topol.top")
    cg = load_mapping(REPO / "recipes" / "sps" / "sps.xml", topo).cg_topology(topo)
    ch = Channels.from_dbm_ff(shared / "sps" / "dbm" / "ff.txt", cg)
    mt = cg.blocks[0].block.moltype
    m = ch.pair_channels(mt)
    types = [str(x) for x in mt.atom_types]
    ring = [(a, b) for a, b in mt.bonds if types[a] == types[b] == "C_AR"]
    assert ring and all(m[a, b] == 2 for a, b in ring)
    assert ch.n_interactions == 17 and set(ch.bead_types) == {"B", "S"}


def test_recipe_channel_map_is_what_the_model_is_trained_and_used_with(tmp_path, cli):
    """``system.channels`` feeds training; the channels are saved in the model and used when it
    backmaps (a map with fewer channels than the defaults shows in the trained layout)."""
    import json
    import textwrap

    ff = tmp_path / "ff.txt"
    ff.write_text(HEXANE_FF)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: r
        workdir: work
        system: {{topology: {HEXANE / 'topol.top'}, mapping: {HEXANE / 'hexane.xml'}, channels: {ff}}}
        data: {{trajectory: {HEXANE / 'traj.xtc'}, frames: '0:2', split: {{test_fraction: 0.5}}}}
        generator: {{plugin: voxel_gan, params: {{preset: tiny, regularizer_samples: 0}}}}
        steps:
          - prepare: {{}}
          - train: {{max_iterations: 1, batch_size: 8}}
          - backmap: {{candidates: 1, gibbs_sweeps: 0}}
        """))
    code, _, err = cli("run", recipe)
    assert code == 0, err
    model = json.loads((tmp_path / "work" / "model" / "model.json").read_text())
    expected = Channels.from_dbm_ff(ff, load_mapping(HEXANE / "hexane.xml", load_topology(HEXANE / "topol.top"))
                                    .cg_topology(load_topology(HEXANE / "topol.top")))
    assert model["channels"]["by_path"] and model["state"]["layout"][1] == expected.n_interactions
    assert Channels.from_json(model["channels"]).interactions == expected.interactions
