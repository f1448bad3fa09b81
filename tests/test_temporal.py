"""Trajectory mode (``environment.temporal``, issue 16): every unit sees where its atoms were in the
previous AA frame, in that frame's own local frame; trained on consecutive frames, applied to a CG
trajectory in order — resumable, and identical to frame-by-frame backmapping for the first frame."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from conftest import run_cli

from backmap.app.backmapping import backmap_to_files
from backmap.engine.loaders import load_mapping, load_topology
from backmap.engine.models import load_model
from backmap.parallel import ClusterOptions
from backmap.sampling.backmapper import BackmapSettings
from backmap.sampling.environment import Channels
from backmap.sampling.traversal import make_plans
from backmap.system.io import Frame, read_frames
from backmap.system.pairs import PairSet
from backmap.training.sequences import build_sequences

DIP = Path(__file__).parent / "data" / "dipeptide"
MAPPING = Path(__file__).parents[1] / "recipes" / "dipeptide" / "dipeptide.xml"


def _system():
    top = load_topology(DIP / "topol.top")
    return top, load_mapping(MAPPING, top).cg_topology(top)


def _pairs(aa: np.ndarray, cg_top, frames) -> PairSet:
    box = np.array([[6.0, 6.0, 6.0, 90.0, 90.0, 90.0]] * len(aa))
    return PairSet(aa, cg_top.apply(aa), box, np.asarray(frames), np.zeros(len(aa), bool))


def test_previous_index_pairs_each_frame_with_the_one_a_step_before():
    top, cg_top = _system()
    aa = np.zeros((5, top.n_atoms, 3))
    assert _pairs(aa, cg_top, [0, 1, 2, 4, 5]).previous_index().tolist() == [-1, 0, 1, -1, 3]
    assert _pairs(aa[:4], cg_top, [0, 2, 4, 8]).previous_index().tolist() == [-1, 0, 1, -1]  # the selection's step


@pytest.mark.parametrize("alignment", ["beads", "frame"])
def test_the_previous_frame_is_seen_free_of_the_molecules_rigid_motion(alignment):
    """Known answer: when frame 1 is frame 0 turned and moved as a whole, every unit's previous
    positions are exactly its current ones (both in their own frame's local coordinates); a
    changed atom shows up only in its own bead's sequences. Both alignments (beads: twist
    strength 0, the least-squares rotation of the beads)."""
    top, cg_top = _system()
    x0 = next(iter(read_frames(DIP / "traj.xtc"))).positions
    x0 = x0 - x0.mean(0) + 3.0
    turn = Rotation.from_euler("xyz", [40, -25, 70], degrees=True).as_matrix()
    x1 = (x0 - 3.0) @ turn.T + 3.0 + np.array([0.3, -0.2, 0.1])
    x1b = x1.copy()
    x1b[1, 0] += 0.05  # HH31 of the acetyl methyl (home bead CY)
    channels = Channels.from_system(cg_top)

    def sequences(frames):
        from backmap.sampling.spec import EnvironmentSpec

        spec = EnvironmentSpec(unit="bead", strip_hydrogens=False, temporal=True)
        plans = make_plans(cg_top, _dfs(), spec,
                           np.random.default_rng(0))
        return build_sequences(cg_top, plans, _pairs(np.stack(frames), cg_top, [0, 1]), channels, ("forward",),
                               strip_hydrogens=False, temporal=True, label=None, temporal_alignment=alignment)

    seqs = sequences([x0, x1])
    first, second = seqs.frame == 0, seqs.frame == 1
    assert not seqs.previous_mask[first].any() and seqs.previous_mask[second][seqs.target_mask[second]].all()
    m = seqs.target_mask[second]
    err = (seqs.previous_positions[second] - seqs.target_positions[second]).norm(dim=-1)[m]
    assert err.max() < 1e-4, err.max()  # float32 of positions ~3 nm
    moved = sequences([x0, x1b])
    err = (moved.previous_positions[second] - moved.target_positions[second]).norm(dim=-1)
    changed = (err > 1e-3) & moved.target_mask[second]
    atoms = moved.target_atoms[second][changed]
    assert atoms.tolist() == [1] and abs(float(err[changed][0]) - 0.05) < 1e-4


def _dfs():
    from backmap.engine.registry import default_registry

    return default_registry().get("traversal", "dfs", where="test").cls()


@pytest.fixture(scope="module")
def temporal_model(tmp_path_factory):
    """A small equivariant model trained in trajectory mode on 240 frames 1 ps apart."""
    tmp = tmp_path_factory.mktemp("temporal")
    recipe = tmp / "t.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: t
        seed: 3
        workdir: t
        system: {{topology: {DIP / 'topol.top'}, mapping: {MAPPING}}}
        data: {{trajectory: {DIP / 'traj.xtc'}, frames: '0:300', split: {{test_fraction: 0.2, mode: tail}}}}
        generator:
          plugin: equivariant
          environment: {{temporal: true}}
          params: {{constraints: h-bonds, width: 8, vectors: 4, tensors: 2, hidden: 32, lr: 4.0e-3}}
        steps:
          - prepare: {{}}
          - train: {{epochs: 1, batch_size: 64}}
        """))
    code, _, err = run_cli("run", recipe, catch_exceptions=False)
    assert code == 0, err
    return tmp / "t"


def _cg_frames(cg_top, n: int) -> list[Frame]:
    aa = list(read_frames(DIP / "traj.xtc", frames=slice(240, 240 + n)))
    return [Frame(cg_top.apply(f.positions), f.dimensions, f.time, f.index) for f in aa]


def _run(model, cg_top, frames, out: Path, **settings) -> np.ndarray:
    backmap_to_files(model, cg_top, DIP / "topol.top", frames, out,
                     BackmapSettings(candidates=2, gibbs_sweeps=1, **settings), seed=5,
                     cluster=ClusterOptions(frames_per_task=3))
    return np.array([f.positions for f in read_frames(out)])


def test_trajectory_mode_goes_on_from_the_previous_frame_and_resumes_identically(temporal_model, tmp_path,
                                                                                  monkeypatch):
    model = load_model(temporal_model)
    assert model.generator.environment.temporal
    _top, cg_top = _system()
    frames = _cg_frames(cg_top, 9)
    whole = _run(model, cg_top, frames, tmp_path / "a.xtc")
    single = _run(model, cg_top, frames, tmp_path / "f.xtc", frame_by_frame=True)
    # the first frame has no previous one either way (same random stream); the others differ
    assert np.array_equal(whole[0], single[0]) and not np.allclose(whole[1:], single[1:], atol=1e-3)
    # killed in the third block of three frames, then run again: the same trajectory
    from backmap.app import backmapping as apply_module

    original, calls = apply_module.BackmapJob.run_block, []

    def dying(self, block):
        calls.append(block[0].index)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, block)

    monkeypatch.setattr(apply_module.BackmapJob, "run_block", dying)
    with pytest.raises(KeyboardInterrupt):
        _run(model, cg_top, frames, tmp_path / "b.xtc")
    monkeypatch.setattr(apply_module.BackmapJob, "run_block", original)
    assert not (tmp_path / "b.xtc").exists()
    assert np.array_equal(_run(model, cg_top, frames, tmp_path / "b.xtc"), whole)


def test_a_temporal_model_refuses_nothing_frame_wise_and_torch_sees_the_previous_frame(temporal_model):
    """The model's head takes the previous frame: changing it changes the draws of a frame (same
    random stream), and no previous frame is a valid input (a trajectory's first frame)."""
    model = load_model(temporal_model)
    _top, cg_top = _system()
    frames = _cg_frames(cg_top, 2)
    from backmap.engine.assembly import make_backmapper

    bm = make_backmapper(cg_top, model.generator, BackmapSettings(candidates=2, gibbs_sweeps=1), seed=1)
    prev = list(read_frames(DIP / "traj.xtc", frames=[240]))[0].positions
    a, _ = bm.backmap_frame(frames[1], np.random.default_rng(0), None)
    b, _ = bm.backmap_frame(frames[1], np.random.default_rng(0), prev)
    c, _ = bm.backmap_frame(frames[1], np.random.default_rng(0), prev)
    assert np.array_equal(b.positions, c.positions) and not np.allclose(a.positions, b.positions, atol=1e-3)
    assert torch.isfinite(torch.as_tensor(a.positions)).all()


def test_internal_displacements_take_out_each_molecules_rigid_motion():
    """Known answer: a molecule turned and moved as a whole has no internal motion; an atom that
    moves the beads nowhere (weight 0: HH31) moves by exactly its own displacement."""
    from backmap.system.superpose import internal_displacements

    _top, cg_top = _system()
    x0 = next(iter(read_frames(DIP / "traj.xtc"))).positions
    turn = Rotation.from_euler("zyx", [100, 30, -60], degrees=True).as_matrix()
    x1 = (x0 - x0.mean(0)) @ turn.T + x0.mean(0) + np.array([0.5, 0.1, -0.3])
    assert np.abs(internal_displacements(x0, x1, cg_top)).max() < 1e-9
    x2 = x1.copy()
    x2[1] += [0.01, -0.02, 0.03]
    d = internal_displacements(x0, x2, cg_top)
    assert np.allclose(d[1], [0.01, -0.02, 0.03], atol=1e-9) and np.abs(np.delete(d, 1, 0)).max() < 1e-9


def test_the_time_step_of_pairs_is_that_of_consecutive_frames():
    top, cg_top = _system()
    aa = np.zeros((5, top.n_atoms, 3))
    pairs = _pairs(aa, cg_top, [10, 12, 14, 20, 22])
    assert pairs.time_step() is None  # no times
    pairs.times = np.array([20.0, 24.0, 28.0, 40.0, 44.0])
    assert pairs.time_step() == 4.0 and pairs.subset(np.array([1, 0, 1, 1, 1], bool)).time_step() == 4.0


def _turn(angle_deg: float, axis) -> np.ndarray:
    return Rotation.from_rotvec(np.radians(angle_deg) * np.asarray(axis, float) / np.linalg.norm(axis)).as_matrix()


def test_regularised_rotation_fits_exactly_and_shrinks_only_the_undecided_twist():
    """Known answers: strength 0 is the least-squares rotation (exact for a rigid turn); with a
    strength s the twist about the principal axis shrinks by e2 / (e2 + s e1) and the swing of the
    axis is kept; a straight chain (e2 = 0) is never twisted, whatever its beads' noise says."""
    from backmap.sampling.environment import regularised_rotation

    rng = np.random.default_rng(4)
    then = rng.normal(size=(1, 3, 3)) * [0.3, 0.15, 0.05]
    turn = _turn(70, [1, -2, 0.5])
    assert np.allclose(regularised_rotation(then, then @ turn.T, 0.0)[0], turn, atol=1e-10)
    # a pure twist about the principal axis (x here: then's spread is largest along x)
    then = np.array([[[0.3, 0.0, 0.0], [-0.3, 0.0, 0.0], [0.0, 0.1, 0.0]]])
    e = np.linalg.eigvalsh(then[0].T @ then[0])
    twist = _turn(30, [1, 0, 0])
    got = Rotation.from_matrix(regularised_rotation(then, then @ twist.T, 0.5)[0]).as_rotvec()
    assert np.allclose(got, np.radians(30) * e[1] / (e[1] + 0.5 * e[2]) * np.array([1, 0, 0]), atol=1e-10)
    # a swing of the axis is kept whole by any strength
    swing = _turn(40, [0, 0, 1])
    assert np.allclose(regularised_rotation(then, then @ swing.T, 10.0)[0], swing, atol=1e-10)
    # a nearly straight chain whose beads wobble across it: the plain fit twists it by noise, a
    # strength does not; the swing is the least-squares one (first vector up, second down: 0.02 rad)
    line = np.array([[[0.25, 0.0, 0.0], [-0.25, 0.002, 0.0]]])
    wobble = np.array([[[0.25, 0.0, 0.01], [-0.25, -0.002, 0.0]]])
    plain = Rotation.from_matrix(regularised_rotation(line, wobble, 0.0)[0]).as_rotvec()
    shrunk = Rotation.from_matrix(regularised_rotation(line, wobble, 0.1)[0]).as_rotvec()
    assert abs(plain[0]) > 0.5 and abs(shrunk[0]) < 0.01 and abs(shrunk[1] + 0.02) < 1e-3


def test_the_twist_strength_is_zero_for_rigid_motion_and_positive_where_the_beads_twist_by_noise():
    """The strength chosen from training pairs: molecules turning rigidly (the fitted twist is
    all signal) get 0; a nearly straight molecule whose beads wobble across its axis while its atoms
    do not turn gets a strength > 0 that predicts its atoms better than the plain fit."""
    from backmap.training.temporal_twist import choose_twist

    top, cg_top = _system()
    x0 = next(iter(read_frames(DIP / "traj.xtc"))).positions
    x0 = x0 - x0.mean(0) + 3.0
    rng = np.random.default_rng(2)
    frames = [x0]
    for _ in range(5):
        turn = Rotation.from_rotvec(rng.normal(scale=0.4, size=3)).as_matrix()
        frames.append((frames[-1] - 3.0) @ turn.T + 3.0)
    best, _ = choose_twist(_pairs(np.stack(frames), cg_top, np.arange(6)), cg_top)
    assert best == 0.0
    # the same molecule, unturned, with one atom per bead (weight 0 elsewhere would not move beads):
    # every heavy atom and its hydrogens jitter across the CY-N-CA direction, nothing turns
    aa = [x0 + rng.normal(scale=0.03, size=x0.shape) for _ in range(6)]
    best, residuals = choose_twist(_pairs(np.stack(aa), cg_top, np.arange(6)), cg_top)
    assert best > 0 and residuals[best] < residuals[0.0]


def test_a_trained_model_keeps_its_twist_and_older_models_read_as_frame_aligned(temporal_model, tmp_path):
    """Training chose the twist strength from the grid and the model file keeps it; a model file
    from before the option (no temporal_alignment) is read with the alignment it was trained with."""
    import json
    import shutil

    from backmap.training.temporal_twist import TWIST_GRID

    spec = load_model(temporal_model).generator.environment
    assert spec.temporal_alignment == "beads" and spec.temporal_twist in TWIST_GRID
    old = tmp_path / "old"
    shutil.copytree(temporal_model / "model", old)
    description = json.loads((old / "model.json").read_text())
    for key in ("temporal_alignment", "temporal_twist"):
        description["environment"].pop(key)
    (old / "model.json").write_text(json.dumps(description))
    assert load_model(old).generator.environment.temporal_alignment == "frame"
