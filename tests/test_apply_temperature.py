"""A system at another temperature than the model's: ``apply --temperature``, ``angle_spread`` and ``clash_kt``."""
import math

import numpy as np
from conftest import DATA, run_cli

from backmap.engine.models import load_model

CHEAP = ["--candidates", "2", "--sweep-candidates=", "--gibbs", "0", "--regrow", "", "--repair-clashes", "0",
         "--polish", "0", "--selector", "random", "--seed", "2"]


def test_the_equivariant_model_widens_its_angles_as_the_square_root_of_t():
    gen = load_model("sps-equivariant").generator
    assert gen.at_temperature(330.0, 568.0) == {"angle_spread": round(math.sqrt(330 / 568), 4)}
    assert gen.at_temperature(330.0, None) == {}  # a card without a training temperature: nothing


def test_apply_temperature_sets_the_spread_from_the_card_unless_given(tmp_path):
    code, shown, err = run_cli("apply", "--model", "sps-equivariant", "--cg", DATA / "sps" / "cg.gro",
                               "--out", tmp_path / "a.gro", "--temperature", "330", *CHEAP)
    assert code == 0, err
    assert "at 330 K (the model was trained at 568 K): angle_spread=0.7622" in err + shown
    # the model's clash threshold is 4 kT: at 330 K, 4 × 0.0083145 × 330 kJ/mol
    assert "clash_kt at 330 K: clash_energy=10.98 kJ/mol" in err + shown
    code, shown, err = run_cli("apply", "--model", "sps-equivariant", "--cg", DATA / "sps" / "cg.gro",
                               "--out", tmp_path / "b.gro", "--temperature", "330", "--clash-energy", "50",
                               "--generator-param", "angle_spread=0.9", *CHEAP)
    assert code == 0, err
    assert "angle_spread=0.7622" not in err + shown  # the user's values stay
    assert "clash_kt" not in err + shown


def test_angle_spread_narrows_the_drawn_angles(tmp_path):
    """With the random selector (no energy picks), angle_spread 0.5 narrows the ring hydrogens'
    C_AR–C_AR–H_AR angles (σ of the head's draws halved; the spread of its means stays: 0.75 of the
    sd here, from 3 600 angles, ±2 %); 1.0 changes nothing."""
    outs = {}
    for name, params in (("default", []), ("one", ["--generator-param", "angle_spread=1.0"]),
                         ("half", ["--generator-param", "angle_spread=0.5"])):
        outs[name] = tmp_path / f"{name}.gro"
        code, _, err = run_cli("apply", "--model", "sps-equivariant", "--cg", DATA / "sps" / "cg.gro",
                               "--out", outs[name], "--no-project-cg", *params, *CHEAP)
        assert code == 0, err
    assert outs["default"].read_bytes() == outs["one"].read_bytes()
    ratio = _angle_sd(outs["half"], "C_AR", "C_AR", "H_AR") / _angle_sd(outs["default"], "C_AR", "C_AR", "H_AR")
    assert ratio < 0.9, ratio


def _angle_sd(path, a: str, centre: str, b: str) -> float:
    """sd (degrees) of the angles a–centre–b (atom types) of a backmapped frame."""
    from itertools import combinations

    from backmap.engine.loaders import load_topology
    from backmap.system.io import read_frames
    from backmap.system.pbc import Unwrapper

    top = load_topology(path.with_suffix(".top"))
    frame = next(iter(read_frames(path, top.n_atoms)))
    x = Unwrapper(top)(frame.positions, frame.dimensions)
    mt, count = top.blocks[0].moltype, top.blocks[0].count
    types = np.asarray(mt.atom_types)
    triples = np.array([(i, j, k) for j in mt.graph if types[j] == centre
                        for i, k in combinations(sorted(mt.graph[j]), 2) if {types[i], types[k]} == {a, b}])
    rows = triples[None] + (np.arange(count) * mt.n_atoms)[:, None, None]
    u, v = x[rows[..., 0]] - x[rows[..., 1]], x[rows[..., 2]] - x[rows[..., 1]]
    cos = (u * v).sum(-1) / np.linalg.norm(u, axis=-1) / np.linalg.norm(v, axis=-1)
    angles = np.degrees(np.arccos(np.clip(cos, -1, 1))).ravel()
    assert len(angles) > 1000
    return float(np.std(angles))
