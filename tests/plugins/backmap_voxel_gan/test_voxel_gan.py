"""The voxel GAN generator (DeepBackmap): voxelization, unrolled training, Wasserstein estimate,
checkpoint resume, proposals, and a recipe run on the hexane test data."""
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from backmap.training.data import TrainOptions
from backmap.training.loop import TrainingLoop
from backmap.training.sequences import BeadSequences
from backmap_voxel_gan.generator import VoxelGAN
from backmap_voxel_gan.model import VoxelGANModel
from backmap_voxel_gan.params import VoxelGANParams
from backmap_voxel_gan.voxel import VoxelGrid

from conftest import HEXANE, REPO
from toys import toy_gan, toy_layout, toy_sequences

torch.set_num_threads(1)

LAYOUT = toy_layout()


def tiny(**kw) -> VoxelGANParams:
    return VoxelGANParams(preset="tiny", **kw)


def test_voxelization_round_trip():
    grid = VoxelGrid(8, 1.2, 0.1)  # DBM's grid (its sigma 0.02 = 2σ²)
    r = (torch.rand(500, 3, generator=torch.Generator().manual_seed(0)) - 0.5) * 0.6  # within 0.3 nm
    back = grid.coordinate(grid.atom(r))
    assert float((back - r).norm(dim=-1).max()) <= 0.005
    # channel densities are sums of single-atom densities
    w = torch.zeros(1, 500, 3)
    w[0, :, 1] = (torch.arange(500) % 2).float()
    dens = grid.density(r[None], w)
    torch.testing.assert_close(dens[0, 1], grid.atom(r[1::2]).sum(0), atol=1e-4, rtol=1e-5)
    assert float(dens[0, [0, 2]].abs().max()) == 0.0


def test_presets_fill_and_explicit_keys_win():
    p = VoxelGANParams(preset="dbm")
    assert (p.width, p.grid, p.length, p.n_critic, p.lr_generator) == (64, 8, 1.2, 4, 5e-5)
    assert VoxelGANParams(preset="dbm", width=8).width == 8
    with pytest.raises(ValueError, match="even"):
        VoxelGANParams(grid=7)


def test_unrolled_training_backpropagates_into_earlier_steps():
    seqs = toy_sequences(8)
    for unroll in (True, False):
        torch.manual_seed(0)
        model = VoxelGANModel(LAYOUT, tiny())
        noise = torch.randn(8, 2, model.noise_dim, generator=torch.Generator().manual_seed(1))
        fake = model.generate(seqs, noise, unroll=unroll)
        first = fake.steps[0]
        first.retain_grad()
        # the critic's score of the second step only
        score = model.critic(fake.envs[:, 1], fake.atoms[:, 1], model.features.target_type(seqs.target_types[:, 1]))
        score.sum().backward()
        if unroll:
            assert first.grad is not None and float(first.grad.abs().sum()) > 0
            grads_unrolled = [p.grad.clone() for p in model.generator.parameters()]
        else:
            assert first.grad is None or float(first.grad.abs().sum()) == 0.0
            grads_cut = [p.grad.clone() for p in model.generator.parameters()]
    assert any(not torch.allclose(a, b) for a, b in zip(grads_unrolled, grads_cut))


def train_toy(seed: int, iterations: int = 100) -> tuple[VoxelGAN, TrainingLoop, BeadSequences]:
    seqs = toy_sequences(256, steps=1)
    gen = toy_gan(seed, rotate=False)
    loop = TrainingLoop(gen, seqs, 1, TrainOptions(epochs=100, max_iterations=iterations, batch_size=32, log_every=5),
                        seed=seed)
    loop.run()
    return gen, loop, seqs


def placement_error(gen: VoxelGAN, seqs: BeadSequences) -> float:
    with torch.no_grad():
        fake = gen.model.generate(seqs, torch.randn(len(seqs), 1, gen.model.noise_dim,
                                                    generator=torch.Generator().manual_seed(2)))
    return float((fake.coords[:, 0] - seqs.target_positions[:, 0]).norm(dim=-1).mean())


def test_tiny_training_lowers_the_wasserstein_estimate():
    """100 iterations of the tiny GAN learn to place an atom 0.15 nm above a random anchor.

    GAN training is chaotic: across CPUs and library versions a seed is effectively a new random
    draw, so single-seed thresholds are not portable (seed 0 gave 0.0574 on one machine and 0.0619
    on another). Measured here over seeds 0–7: placement error 0.074 ± 0.036 nm (s.d.), 7 of 8 runs
    0.045–0.081 nm and one that had not converged by 100 iterations (0.158, its Wasserstein estimate
    still at 0.7 of its peak); untrained 0.198 nm. Over four seeds the test asserts the mean error
    is below 0.6 × the untrained mean (0.119 nm): that fails only if two or more of the four runs do
    not converge (< 0.3 % at the measured 1-in-8 rate); a loop or loss that does not learn stays at
    ≈ 0.2 nm. The Wasserstein estimate must rise (the critic learns) and fall back below half its
    peak (the generator catches up) in most runs (median)."""
    errors, untrained, ratios = [], [], []
    for seed in (0, 1, 2, 3):
        gen, loop, seqs = train_toy(seed)
        assert loop.iteration == 100
        w = np.array([r["wasserstein"] for r in loop.log.rows])
        assert w.max() > 0.05, w.round(3)
        ratios.append(w[-3:].mean() / w.max())
        errors.append(placement_error(gen, seqs))
        untrained.append(placement_error(toy_gan(seed), seqs))
    assert np.median(ratios) < 0.5, np.round(ratios, 3)
    assert np.mean(errors) < 0.6 * np.mean(untrained), (np.round(errors, 4), np.round(untrained, 4))


class _Kill(Exception):
    pass


def test_checkpoint_resume_is_bit_identical(tmp_path):
    seqs = toy_sequences(64)
    options = TrainOptions(epochs=2, batch_size=16, checkpoint_every=3, log_every=2)

    def loop(directory, n_critic=2):
        gen = toy_gan(0, n_critic=n_critic)
        return TrainingLoop(gen, seqs, 1, options, seed=3, directory=directory)

    straight = loop(tmp_path / "a")
    straight.run()  # 8 iterations
    killed = loop(tmp_path / "b")

    def kill(t):
        if t.iteration == 5:  # after the checkpoint at 3: iterations 4 and 5 are lost
            raise _Kill

    with pytest.raises(_Kill):
        killed.run(callback=kill)
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["iteration"] == 3
    resumed = loop(tmp_path / "b")
    resumed.run()
    assert resumed.iteration == straight.iteration == 8
    a, b = straight.generator.model, resumed.generator.model
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    untimed = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert untimed(straight.log.rows) == untimed(resumed.log.rows) and len(resumed.log.rows) == 4
    assert (tmp_path / "b" / "training.png").is_file()
    # a checkpoint made with other parameters is refused, not silently mixed in
    with pytest.raises(Exception, match="other training parameters"):
        loop(tmp_path / "b", n_critic=1).run()
    # a truncated checkpoint is a clear error, not a traceback from torch
    (tmp_path / "b" / "checkpoint.pt").write_bytes((tmp_path / "a" / "checkpoint.pt").read_bytes()[:100])
    with pytest.raises(Exception, match="cannot read the training checkpoint"):
        loop(tmp_path / "b").run()


def _hexane_recipe(tmp_path, extra_train="") -> Path:
    recipe = tmp_path / "hexane-gan.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: hexane-gan
        seed: 2
        workdir: work
        system: {{topology: {HEXANE / 'topol.top'}, mapping: {HEXANE / 'hexane.xml'}}}
        data: {{trajectory: {HEXANE / 'traj.xtc'}, frames: '0:2', split: {{test_fraction: 0.5, mode: tail}}}}
        generator: {{plugin: voxel_gan, params: {{preset: tiny, regularizer_samples: 2}}}}
        regularizers: [{{plugin: energy_match, params: {{weight: 0.001}}}}]
        steps:
          - prepare: {{}}
          - train: {{epochs: 1, batch_size: 16, checkpoint_every: 2, max_iterations: 4, log_every: 2{extra_train}}}
          - backmap: {{candidates: 2, gibbs_sweeps: 1}}
        """))
    return recipe


def test_recipe_trains_and_backmaps_hexane(tmp_path, cli):
    recipe = _hexane_recipe(tmp_path)
    code, _, err = cli("run", recipe)
    assert code == 0, err
    work = tmp_path / "work"
    description = json.loads((work / "model" / "model.json").read_text())
    assert description["plugin"] == "voxel_gan" and description["params"]["width"] == 4
    assert description["environment"]["cutoff"] == 0.7 and description["environment"]["unit"] == "atom"
    for name in ("checkpoint.pt", "train_log.csv", "training.png"):
        assert (work / "training" / "voxel_gan" / name).is_file(), name
    log = (work / "training" / "voxel_gan" / "train_log.csv").read_text().splitlines()
    assert log[0].startswith("iteration,epoch,seconds") and "reg_energy_match" in log[0] and "gen_bond" in log[0]
    assert len(log) == 3  # rows at iterations 2 and 4
    report = (work / "report.md").read_text()
    assert "training.png" in report
    from backmap.system.io import read_frames
    from backmap.engine.loaders import load_mapping
    from backmap.engine.loaders import load_topology

    frame = next(read_frames(work / "backmap" / "aa.xtc"))
    assert (work / "backmap" / "aa.top").is_file() and (work / "backmap" / "aa.gro").is_file()
    assert frame.positions.shape == (4000, 3) and np.isfinite(frame.positions).all()
    # every atom ended up within its bead's reach (the grid spans ±0.6 nm around the bead)
    topo = load_topology(HEXANE / "topol.top")
    cg = load_mapping(HEXANE / "hexane.xml", topo).cg_topology(topo)
    ref = next(read_frames(work / "backmap" / "aa_cg.trr"))
    from backmap.system.pbc import Unwrapper, minimum_image

    x = Unwrapper(topo)(frame.positions, frame.dimensions)
    d = np.linalg.norm(minimum_image(cg.apply(x) - ref.positions, frame.dimensions), axis=1)
    assert d.max() < 0.6


def test_propose_is_seeded_and_in_the_unit_frame():
    from backmap.sampling.environment import EnvironmentBatch
    from backmap_voxel_gan.generator import VoxelGAN

    gen = toy_gan(0)
    seqs = toy_sequences(3)
    batch = EnvironmentBatch(
        centre=torch.zeros(3, 3), rotation=torch.eye(3).repeat(3, 1, 1), atom_positions=seqs.atom_positions,
        atom_types=seqs.atom_types, atom_mask=seqs.visible[:, 0], interaction=seqs.interaction[:, :1].long(),
        bead_positions=seqs.bead_positions, bead_types=seqs.bead_types, bead_mask=seqs.bead_mask,
        target_types=seqs.target_types[:, :1], target_mask=seqs.target_mask[:, :1])
    a = gen.propose(batch, 5, np.random.default_rng(1))
    b = gen.propose(batch, 5, np.random.default_rng(1))
    assert a.shape == (3, 5, 1, 3) and torch.equal(a, b)
    assert float(a.abs().max()) < 0.6  # inside the grid
    # rotating the candidates' environments about z and back: with one candidate and no rotation the
    # output equals the generator's own placement
    gen.params.rotate_candidates = False
    c = gen.propose(batch, 1, np.random.default_rng(4))
    rng = np.random.default_rng(4)
    rng.uniform(0, 2 * np.pi, 3)  # the draw propose makes for the angles (unused without rotation)
    assert c.shape == (3, 1, 1, 3)
    state = gen.state_dict()
    again = VoxelGAN({"preset": "tiny", "rotate_candidates": False})
    again.load_state_dict(state)
    torch.testing.assert_close(again.propose(batch, 1, np.random.default_rng(4)), c)


def test_shipped_sps_model_loads():
    """The sPS model in models/ loads without unpickling anything (its networks' state matches the
    classes), from its folder, and carries the repository's mapping inside its package."""
    from backmap.engine.models import load_model

    folder = REPO.resolve() / "models" / "sps-voxel-gan"
    model = load_model(folder)
    generator = model.generator
    assert generator.name == "voxel_gan" and generator.params.preset == "cpu"
    assert generator.environment.cutoff == 0.7 and generator.environment.traversal == "dfs"
    assert model.mapping[0] == folder / "system" / "sps.xml"
    assert model.mapping[0].read_bytes() == (folder.parent.parent / "recipes" / "sps" / "sps.xml").read_bytes()
    assert not list(folder.glob("*.pkl"))
    n = sum(p.numel() for p in generator.model.generator.parameters())
    assert 50_000 < n < 5_000_000
