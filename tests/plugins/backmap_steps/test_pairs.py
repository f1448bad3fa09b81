"""The prepare step: training pairs from a trajectory or paired folders, split, cached."""
import json
import textwrap

import numpy as np

from backmap.system.pairs import PairSet
from backmap.system.io import read_frames, write_frames
from backmap.engine.loaders import load_mapping


from conftest import HEXANE


def _recipe(tmp_path, data: str, steps: str = "[{prepare: {}}]"):
    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent(f"""
        name: pairs
        seed: 5
        workdir: work
        system:
          topology: {HEXANE / 'topol.top'}
          mapping: {HEXANE / 'hexane.xml'}
        data: {data}
        steps: {steps}
        """))
    return path


def _current(tmp_path):
    return json.loads((tmp_path / "work" / "pairs" / "current.json").read_text())


def test_pairs_from_trajectory_split_and_cache(tmp_path, cli, hexane_topology):
    path = _recipe(tmp_path, f"{{trajectory: {HEXANE / 'traj.trr'}, frames: '0:20', skip_frames: [3],"
                             " split: {test_fraction: 0.25}}")
    code, out, err = cli("run", path)
    assert code == 0, err
    cur = _current(tmp_path)
    cache = tmp_path / "work" / "pairs" / cur["file"]
    pairs = PairSet.load(cache)
    assert len(pairs) == 19 and 3 not in pairs.frames
    assert cur["test_frames"] == [15, 16, 17, 18, 19]  # the last quarter: time-correlated frames stay apart
    # AA molecules are whole and CG = mapping of them
    bonds = hexane_topology.blocks[0].moltype.bonds
    x = pairs.aa[0].reshape(-1, 20, 3)
    assert np.linalg.norm(x[:, bonds[:, 0]] - x[:, bonds[:, 1]], axis=-1).max() < 0.2
    cg_top = load_mapping(HEXANE / "hexane.xml", hexane_topology).cg_topology(hexane_topology)
    np.testing.assert_allclose(pairs.cg, cg_top.apply(pairs.aa.astype(float)), atol=1e-5)
    report = (tmp_path / "work" / "report.md").read_text()
    assert "wrote pairs-" in report and "| A-B |" in report
    run = json.loads((tmp_path / "work" / "run.json").read_text())
    assert run["seed"] == 5 and any(p["name"] == "prepare" and p["package"] == "backmap" for p in run["plugins"])
    assert (tmp_path / "work" / "recipe.yaml").is_file()

    # second run: the cache is reused, untouched
    mtime = cache.stat().st_mtime_ns
    code, out, err = cli("run", path)
    assert code == 0 and "reusing cached pairs" in err
    assert cache.stat().st_mtime_ns == mtime
    assert "reused pairs-" in (tmp_path / "work" / "report.md").read_text()

    # a different frame selection is a different cache entry
    code, _, err = cli("run", path, "data.frames=0:10")
    assert code == 0, err
    assert _current(tmp_path)["file"] != cur["file"]


def test_pairs_from_dbm_folders(tmp_path, cli, hexane_topology):
    cg_top = load_mapping(HEXANE / "hexane.xml", hexane_topology).cg_topology(hexane_topology)
    folder = tmp_path / "snapshots"
    frames = list(read_frames(HEXANE / "traj.xtc", frames=[0, 4, 8]))
    from backmap.system.pbc import Unwrapper
    unwrap = Unwrapper(hexane_topology)
    for n, fr in zip((10, 200, 30), frames):
        write_frames(folder / "aa" / f"{n}.gro", [fr], hexane_topology.atom_names, hexane_topology.resnames,
                     hexane_topology.residue_numbers())
        cg = cg_top.apply(unwrap(fr.positions, fr.dimensions))
        # the CG file wraps beads into the box, as many tools do
        from backmap.system.io import Frame
        frac = np.linalg.solve(fr.box.T, cg.T).T
        wrapped = (frac - np.floor(frac)) @ fr.box
        write_frames(folder / "cg" / f"{n}.gro", [Frame(wrapped, fr.dimensions)], cg_top.bead_names,
                     cg_top.resnames, cg_top.resids)
    path = _recipe(tmp_path, f"{{pairs: {folder}, split: {{test_frames: [200]}}}}")
    code, out, err = cli("run", path)
    assert code == 0, err
    pairs = PairSet.load(tmp_path / "work" / "pairs" / _current(tmp_path)["file"])
    assert list(pairs.frames) == [10, 30, 200] and _current(tmp_path)["test_frames"] == [200]
    assert pairs.info["cg_vs_mapping_max_nm"] < 0.001
    # CG beads moved next to their whole molecules
    mapped = cg_top.apply(pairs.aa[0].astype(float))
    assert np.abs(pairs.cg[0] - mapped).max() < 0.001


def test_missing_partner_file(tmp_path, cli):
    (tmp_path / "snap" / "aa").mkdir(parents=True)
    (tmp_path / "snap" / "cg").mkdir()
    (tmp_path / "snap" / "aa" / "1.gro").write_text("x")
    path = _recipe(tmp_path, f"{{pairs: {tmp_path / 'snap'}}}")
    code, _, err = cli("run", path)
    assert code == 2 and "aa/1.gro has no partner cg/1.gro" in err
