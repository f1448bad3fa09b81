"""Morphing (issue 17, thesis ch. 7): the resolution bottleneck e_s as a mapping, the flat-bottom
selection energy with limits from the target, chain observables (R_e², R_g², contour length) and the
``morph`` step / ``backmap morph`` command on the project's tetracosane data (tests/data/tcs)."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import one_line_error, run_cli

from backmap.engine.loaders import load_mapping, load_topology
from backmap.errors import BackmapError
from backmap.forcefield import NonbondedSettings
from backmap.sampling.flat_bottom import FlatBottomEnergy, FlatBottomLimits
from backmap.system.bottleneck import bottleneck_mapping, chain_order, write_votca_mapping
from backmap.system.io import read_frames, write_frames
from backmap.system.pbc import Unwrapper

TCS = Path(__file__).parent / "data" / "tcs"
MARTINI_TOP = TCS / "martini" / "topol.top"
MARTINI_TPR = TCS / "martini" / "topol.tpr"
HEXANE = Path(__file__).parent / "data" / "hexane"


@pytest.fixture(scope="module")
def martini():
    return load_topology(MARTINI_TPR)


def _frames(path, n=None):
    return [(f.positions, f.dimensions) for f in list(read_frames(path))[:n]]


# --- the bottleneck -------------------------------------------------------------------------------

def test_bottleneck_groups_consecutive_particles_along_the_chain(martini, tmp_path):
    mm = bottleneck_mapping(martini, 2).molecules["TCS"]
    assert [b.atoms.tolist() for b in mm.beads] == [[0, 1], [2, 3], [4, 5]]
    assert mm.bonds == [(0, 1), (1, 2)] and mm.angles == [(0, 1, 2)]
    four = bottleneck_mapping(martini, 4).molecules["TCS"]  # 6 = 4 + 2: the remainder is its own type
    assert [(b.atoms.tolist(), b.type) for b in four.beads] == [([0, 1, 2, 3], "E4"), ([4, 5], "E2")]
    # written as VOTCA XML and read back by the ordinary reader: the same beads and weights
    path = write_votca_mapping(bottleneck_mapping(martini, 3), tmp_path / "e3.xml", "test")
    back = load_mapping(path, martini).molecules["TCS"]
    assert [b.atoms.tolist() for b in back.beads] == [[0, 1, 2], [3, 4, 5]]
    assert np.allclose(back.beads[0].weights, 1 / 3) and back.bonds == [(0, 1)]


def test_bottleneck_follows_bonds_not_the_particle_order(martini):
    mt = martini.moltypes["TCS"]
    order = chain_order(mt)
    assert order.tolist() == [0, 1, 2, 3, 4, 5]
    import dataclasses

    shuffled = dataclasses.replace(mt, bonds=np.array([[0, 2], [2, 1], [1, 3], [3, 5], [5, 4]]))
    shuffled.__dict__.pop("graph", None)
    assert chain_order(shuffled).tolist() == [0, 2, 1, 3, 5, 4]


def test_bottleneck_refuses_branched_molecules():
    hexane = load_topology(HEXANE / "topol.top")  # all-atom: carbons carry hydrogens
    with pytest.raises(BackmapError, match="not a linear chain: particle 1 .* has 4 bonds"):
        bottleneck_mapping(hexane, 2)


def test_recipe_takes_exactly_one_of_mapping_and_bottleneck(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: r
        system: {{topology: {MARTINI_TPR}, mapping: {TCS / 'tcs.xml'}, bottleneck: 2}}
        steps: [{{prepare: {{}}}}]
        """))
    code, _, err = run_cli("check", recipe)
    assert code == 2 and "exactly one of 'mapping' or 'bottleneck'" in err


def test_martini_top_is_read_for_structure_with_a_clear_energy_error():
    top = load_topology(MARTINI_TOP)  # G96 angles (function 2): parmed has no parameters for them
    assert top.n_atoms == 288 and top.moltypes["TCS"].bonds.tolist() == [[0, 1], [1, 2], [2, 3], [3, 4], [4, 5]]
    from backmap.forcefield.parameters import build_parameters

    with pytest.raises(BackmapError, match="no usable force-field parameters: .*structure only"):
        build_parameters(top)


# --- chain observables ----------------------------------------------------------------------------

def test_chain_observables_of_a_straight_chain_have_the_known_values(martini):
    """Known answer: n beads b apart on a line: R_e = (n − 1) b, R_g² = b² (n² − 1) / 12, L = (n − 1) b."""
    from backmap.metrics import EvalContext, FrameBatch
    from backmap_metrics.chains import Chains

    n, b = 6, 0.47
    x = np.zeros((martini.n_atoms, 3))
    for m in range(48):
        x[6 * m:6 * m + 6] = np.array([[k * b, 0.5 * (m % 7), 0.5 * (m // 7)] for k in range(n)])
    ctx = EvalContext(martini, NonbondedSettings())
    metric = Chains()
    names = [o.name for o in metric.prepare(ctx)]
    assert names == ["chain:Re2:TCS", "chain:Rg2:TCS", "chain:contour:TCS"]
    s = metric.samples(FrameBatch(ctx, x[None], np.array([[20.0, 20, 20, 90, 90, 90]]), np.array([0])), ctx)
    assert np.allclose(s["chain:Re2:TCS"], ((n - 1) * b) ** 2)
    assert np.allclose(s["chain:Rg2:TCS"], b * b * (n * n - 1) / 12)
    assert np.allclose(s["chain:contour:TCS"], (n - 1) * b)


def test_chain_observables_match_the_data_scripts_statistics(martini):
    """The metric and scripts/tcs_data.py (its own code) agree on the target's √⟨R_e²⟩ (stats.json,
    over the frames committed here)."""
    from backmap.metrics import EvalContext, FrameBatch
    from backmap_metrics.chains import Chains

    ctx = EvalContext(martini, NonbondedSettings())
    metric = Chains()
    metric.prepare(ctx)
    frames = list(read_frames(TCS / "mapped.xtc"))
    batch = FrameBatch(ctx, np.stack([f.positions for f in frames]), np.stack([f.dimensions for f in frames]),
                       np.arange(len(frames)))
    s = metric.samples(batch, ctx)
    u = Unwrapper(martini)
    own = np.array([[np.sum((c[-1] - c[0]) ** 2) for c in u(f.positions, f.dimensions).reshape(48, 6, 3)]
                    for f in frames])
    assert np.allclose(s["chain:Re2:TCS"], own, atol=1e-9)
    stats = json.loads((TCS / "stats.json").read_text())["aa_mapped"]
    assert np.sqrt(own.mean()) == pytest.approx(stats["Re_rms_nm"], rel=0.08)  # 11 of its frames


def test_chain_metric_skips_branched_molecules():
    from backmap.metrics import EvalContext
    from backmap_metrics.chains import Chains, backbone

    hexane = load_topology(HEXANE / "topol.top")
    assert backbone(hexane.moltypes[next(iter(hexane.moltypes))]).tolist() == [0, 4, 7, 10, 13, 16]  # carbons
    sps = Chains()
    sps.prepare(EvalContext(load_topology(HEXANE / "topol.top"), NonbondedSettings()))
    assert sps.skipped is None


# --- flat-bottom selection energy -----------------------------------------------------------------

def test_flat_bottom_limits_bracket_the_target_and_tighten_with_the_quantile(martini):
    frames = _frames(TCS / "mapped.xtc")
    full = FlatBottomLimits.from_frames(martini, frames)
    q = FlatBottomLimits.from_frames(martini, frames, quantile=0.01)
    lo, hi = full.bond["C1-C1"]
    assert 0.30 < lo < q.bond["C1-C1"][0] < 0.474 < q.bond["C1-C1"][1] < hi < 0.60
    assert full.nonbonded["C1-C1"] < q.nonbonded["C1-C1"] < 0.47
    assert 1.0 < full.angle["C1-C1-C1"][0] < np.radians(147) < full.angle["C1-C1-C1"][1] <= np.pi


def test_flat_bottom_energy_is_zero_on_the_target_and_rises_outside(martini):
    """Candidates for one unit: its own target placement (limits from that same frame: no penalty)
    and the same with the unit pushed onto a neighbour chain (non-bonded penalty) or stretched."""
    cg_top = bottleneck_mapping(martini, 2).cg_topology(martini)
    (x, box), = _frames(TCS / "mapped.xtc", 1)
    x = Unwrapper(martini)(x, box)
    limits = FlatBottomLimits.from_frames(martini, [(x, box)])
    energy = FlatBottomEnergy(cg_top, limits)
    units = torch.tensor([[2, 3]])  # molecule 0, middle unit
    first = torch.tensor([0])
    pos = torch.as_tensor(x, dtype=torch.float32)
    st = energy.prepare("TCS", 1, first, units)
    assert set(st) == {"bond", "angle"}

    class Env:  # the environment as the sampler's builder gives it: neighbours in the unit's frame
        centre = torch.zeros(1, 3)
        rotation = torch.eye(3)[None]
        target_atoms = units
        pair_params = None
    others = torch.arange(6, martini.n_atoms)
    Env.atom_index = others[None]
    Env.atom_positions = pos[others][None]
    Env.atom_mask = torch.ones(1, len(others), dtype=torch.bool)
    own = pos[units[0]]
    nearest = others[torch.cdist(own[:1], pos[others]).argmin()]
    onto = own + (pos[nearest] - own[0])  # unit's first particle on top of another chain's particle
    stretched = own.clone()
    stretched[1] = own[0] + 2.0 * (own[1] - own[0])
    cands = torch.stack([own, onto, stretched])[None]
    e = energy("TCS", 1, first, cands, Env, pos, torch.ones(len(pos), dtype=torch.bool), all_placed=True)
    assert float(e[0, 0]) == pytest.approx(0.0, abs=1e-3)
    assert float(e[0, 1]) > 10 and float(e[0, 2]) > 100


# --- the morph step and command -------------------------------------------------------------------

@pytest.fixture(scope="module")
def morph_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("morph")
    recipe = tmp / "m.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: m
        seed: 5
        workdir: w
        system: {{topology: {MARTINI_TPR}, bottleneck: 2}}
        data: {{trajectory: {TCS / 'mapped.xtc'}, split: {{test_fraction: 0.2}}}}
        generator:
          plugin: equivariant
          params: {{constraints: none, width: 8, vectors: 4, tensors: 2, hidden: 16, recentre_by: rotation+shift}}
          environment: {{cutoff: 1.0}}
        steps:
          - prepare: {{}}
          - train: {{epochs: 1, batch_size: 64}}
          - morph: {{input: {TCS / 'martini' / 'traj.xtc'}, frames: '0:3', scheme: A, topology: {MARTINI_TOP}}}
          - morph: {{input: {TCS / 'martini' / 'traj.xtc'}, frames: '0:3', scheme: B, candidates: 4,
                    flat_bottom: {{quantile: 0.01}}, label: B_fb}}
          - morph: {{input: {TCS / 'martini' / 'traj.xtc'}, frames: '0:3', scheme: B, candidates: 4,
                    flat_bottom: {{quantile: 0.01}}, label: B_ibi,
                    ibi: {{temperature: 400, iterations: 2, fit_frames: '0:4:2'}}}}
        """))
    code, _, err = run_cli("run", recipe, catch_exceptions=False)
    assert code == 0, err
    return tmp / "w"


def _bottleneck_rmsd(martini, out: Path, cg: Path) -> float:
    cg_top = bottleneck_mapping(martini, 2).cg_topology(martini)
    u = Unwrapper(martini)
    return max(float(np.sqrt(((cg_top.apply(u(a.positions, a.dimensions)) - c.positions) ** 2).sum(-1).mean()))
               for a, c in zip(read_frames(out), read_frames(cg)))


def test_morph_writes_the_top_down_models_files(morph_run, martini):
    a = morph_run / "morph" / "A.xtc"
    frames = list(read_frames(a))
    assert len(frames) == 3 and frames[0].positions.shape == (288, 3)
    assert (morph_run / "morph" / "A.top").read_text().count("tcs_martini.itp") == 1  # X's own topology
    gro = (morph_run / "morph" / "A.gro").read_text().splitlines()
    assert gro[2].split()[:2] == ["1TCS", "B1"]  # X's names
    record = json.loads((morph_run / "morph" / "A.json").read_text())
    assert record["scheme"] == "A" and record["model"].endswith("model")
    outputs = json.loads((morph_run / "outputs.json").read_text())
    assert {"morph_A.aa", "morph_B_fb.aa"} <= set(outputs)
    # the bottleneck is kept exactly (recentre_by: rotation+shift): the top-down model's large scales survive
    assert _bottleneck_rmsd(martini, a, morph_run / "morph" / "A_cg.trr") < 2e-3


def test_scheme_b_starts_from_the_original_structure(morph_run, martini):
    """Gibbs sweeps only, with flat-bottom scoring: every particle has been re-placed, but no
    further from where it was than a unit's size, and the bottleneck is kept."""
    b = morph_run / "morph" / "B_fb.xtc"
    u = Unwrapper(martini)
    orig = [u(f.positions, f.dimensions) for f in list(read_frames(TCS / "martini" / "traj.xtc"))[:3]]
    moved = np.array([np.linalg.norm(u(f.positions, f.dimensions) - o, axis=1) for f, o in zip(read_frames(b), orig)])
    assert np.median(moved) > 1e-3 and moved.max() < 1.0
    assert _bottleneck_rmsd(martini, b, morph_run / "morph" / "B_fb_cg.trr") < 2e-3
    limits = json.loads((morph_run / "morph" / "B_fb.json").read_text())["settings"]["flat_bottom"]
    assert limits["quantile"] == 0.01 and set(limits["nonbonded"]) == {"C1-C1"}


def test_backmap_morph_command(morph_run, tmp_path):
    out = tmp_path / "b.xtc"
    code, stdout, err = run_cli("morph", "--model", morph_run / "model", "--input", TCS / "martini" / "traj.xtc",
                                "--frames", "0:2", "--scheme", "B", "--out", out, "--flat-bottom", TCS / "mapped.xtc",
                                "--candidates", "2")
    assert code == 0, err
    assert "2 frames of 288 particles morphed by scheme B" in stdout
    assert len(list(read_frames(out))) == 2


def test_ibi_tables_are_fitted_written_and_read_back_by_the_command(morph_run, tmp_path):
    """The morph step fits IBI tables (2 rounds on 2 frames), writes them with a plot, morphs with
    them (Boltzmann selection at their temperature) and ``backmap morph --ibi`` uses the file."""
    tables = json.loads((morph_run / "morph" / "B_ibi_ibi.json").read_text())
    assert (morph_run / "morph" / "B_ibi_ibi.png").stat().st_size > 10_000
    assert [e["round"] for e in tables["log"]] == [0, 1] and set(tables["tables"]) == {"bond", "angle", "nonbonded"}
    assert max(abs(v) for v in tables["tables"]["bond"]["C1-C1"]) > 0.1  # the morphs' bonds are not the target's
    settings = json.loads((morph_run / "morph" / "B_ibi.json").read_text())["settings"]
    assert settings["selector"] == "boltzmann" and settings["selector_params"] == {"temperature": 400.0}
    assert settings["ibi"]["log"] == tables["log"]
    out = tmp_path / "c.xtc"
    code, _, err = run_cli("morph", "--model", morph_run / "model", "--input", TCS / "martini" / "traj.xtc",
                           "--frames", "0:1", "--scheme", "B", "--out", out, "--flat-bottom", TCS / "mapped.xtc",
                           "--ibi", morph_run / "morph" / "B_ibi_ibi.json", "--candidates", "2")
    assert code == 0, err
    assert json.loads(out.with_suffix(".json").read_text())["settings"]["ibi"]["temperature"] == 400.0
    bad = tmp_path / "bad.json"
    bad.write_text('{"tables": {}}')
    code, _, err = run_cli("morph", "--model", morph_run / "model", "--input", TCS / "martini" / "traj.xtc",
                           "--out", tmp_path / "d.xtc", "--ibi", bad)
    assert "bad.json" in err and "not IBI tables" in one_line_error(code, err)
    code, _, err = run_cli("morph", "--model", morph_run / "model", "--input", TCS / "martini" / "traj.xtc",
                           "--out", tmp_path / "e.xtc", "--ibi-rounds", "2")
    assert "--ibi-rounds" in one_line_error(code, err) and not (tmp_path / "e.xtc").exists()


def test_generator_params_change_sampling_not_the_trained_model(morph_run, tmp_path):
    from backmap.engine.models import load_model

    gen = load_model(morph_run / "model").generator
    assert gen.params.recentre_by == "rotation+shift"
    turned = gen.for_inference({"recentre_by": "rotation"})
    assert turned.params.recentre_by == "rotation" and gen.params.recentre_by == "rotation+shift"
    assert turned.params.width == gen.params.width
    with pytest.raises(BackmapError, match=r"generator_params\.width: not a parameter .* recentre_by"):
        gen.for_inference({"width": 4})
    with pytest.raises(BackmapError, match=r"generator_params\.recentre_by"):
        gen.for_inference({"recentre_by": "spin"})
    code, _, err = run_cli("morph", "--model", morph_run / "model", "--input", TCS / "martini" / "traj.xtc",
                           "--frames", "0:1", "--out", tmp_path / "g.xtc", "--generator-param", "width=3")
    assert "--generator-param.width" in one_line_error(code, err) and not (tmp_path / "g.xtc").exists()
    out = tmp_path / "h.xtc"
    code, _, err = run_cli("morph", "--model", morph_run / "model", "--input", TCS / "martini" / "traj.xtc",
                           "--frames", "0:1", "--out", out, "--generator-param", "recentre_by=rotation")
    assert code == 0, err
    assert json.loads(out.with_suffix(".json").read_text())["settings"]["generator_params"] == {"recentre_by": "rotation"}


def test_morph_errors_name_the_problem(morph_run, tmp_path):
    code, _, err = run_cli("morph", "--model", morph_run / "model", "--input", TCS / "martini" / "traj.xtc",
                           "--scheme", "B", "--gibbs", "0", "--out", tmp_path / "x.xtc")
    assert "scheme B is Gibbs sweeps only" in one_line_error(code, err)
    assert not (tmp_path / "x.xtc").exists()
    code, _, err = run_cli("morph", "--model", morph_run / "model", "--input", TCS / "aa" / "traj.xtc",
                           "--out", tmp_path / "y.xtc")
    assert "atoms" in one_line_error(code, err) or "particles" in err


def test_check_names_a_morph_input_of_the_wrong_resolution(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: bad
        system: {{topology: {MARTINI_TPR}, bottleneck: 2}}
        data: {{trajectory: {TCS / 'mapped.xtc'}}}
        generator: {{plugin: equivariant, params: {{constraints: none}}}}
        steps: [{{prepare: {{}}}}, {{morph: {{input: {TCS / 'aa' / 'traj.xtc'}}}}}]
        """))
    code, _, err = run_cli("check", recipe)
    assert code == 2 and "steps[1].morph.input" in err and "3552 atoms in the file but 288" in err


def test_morph_refuses_a_file_it_writes_beside_out_that_is_its_input(morph_run, tmp_path):
    """``--input run_cg.trr --out run.xtc`` would write the frames as used onto the input."""
    frames = list(read_frames(TCS / "martini" / "traj.xtc"))[:2]
    n = len(frames[0].positions)
    source = tmp_path / "run_cg.trr"
    write_frames(source, frames, ["C"] * n, ["X"] * n, list(range(1, n + 1)))
    before = source.read_bytes()
    code, _, err = run_cli("morph", "--model", morph_run / "model", "--input", source, "--out", tmp_path / "run.xtc",
                           "--candidates", "2")
    line = one_line_error(code, err)
    assert "run_cg.trr" in line and "same file as an input" in line
    left = sorted(p.name for p in tmp_path.iterdir() if "_offsets." not in p.name)  # MDAnalysis' read cache
    assert source.read_bytes() == before and left == ["run_cg.trr"]
