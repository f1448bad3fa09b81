"""Backmapping without atomistic data (objective ``reverse_kl`` of the train step; the ``vae``
generator; docs/reverse-kl.md): the run reads no AA coordinates, its samples are differentiable
in the networks (the gradients that carry the forces), and generators without exact densities
refuse the objective with a clear error."""
import textwrap

import numpy as np
import pytest
import torch
from conftest import HEXANE, run_cli

from backmap.engine.models import load_model

RF = "coulombtype = reaction-field\nrcoulomb = 0.9\nrvdw = 0.9\n"


def _recipe(tmp, plugin="vae", extra="", rkl_extra=""):
    (tmp / "rf.mdp").write_text(RF)
    recipe = tmp / "df.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: df
        seed: 3
        workdir: run
        system: {{topology: {HEXANE / 'topol.top'}, mapping: {HEXANE / 'hexane.xml'}}}
        data: {{trajectory: {HEXANE / 'traj.xtc'}, frames: '0:4', split: {{test_fraction: 0.25, mode: tail}}}}
        generator: {{plugin: {plugin}, params: {{constraints: none, width: 8, vectors: 4, tensors: 2, hidden: 32{extra}}}}}
        steps:
          - prepare: {{}}
          - train: {{objective: reverse_kl, mdp: rf.mdp, reverse_kl: {{samples: 2, units: 8, dbeta_max: 0.25,
                     steps_per_beta: 1, final_steps: 2, minimize_steps: 20, pretrain_epochs: 1, log_every: 2{rkl_extra}}}}}
          - backmap: {{candidates: 2, gibbs_sweeps: 0}}
        """))
    return recipe


@pytest.fixture(scope="module")
def data_free_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("df")
    code, out, err = run_cli("run", _recipe(tmp, extra=", latent: 2"), catch_exceptions=False)
    assert code == 0, err
    return tmp


def test_data_free_run_trains_tempers_and_backmaps(data_free_run):
    """The run tempers β to 1/k_BT at 300 K, logs the energy terms, and its model backmaps. The
    generator got the pairs with every AA coordinate NaN: a model that had read one would be NaN."""
    import csv

    run = data_free_run / "run"
    rows = list(csv.DictReader(open(run / "training" / "vae" / "reverse_kl_log.csv")))
    assert rows and {"beta", "mean_u", "entropy", "u_forcefield", "u_restraint", "kl"} <= set(rows[0])
    assert float(rows[-1]["beta"]) == pytest.approx(1 / (0.0083144626181532 * 300), rel=1e-5)  # CSV: 6 digits
    assert (run / "training" / "vae" / "reverse_kl.png").is_file()
    assert "reverse_kl.png" in (run / "report.md").read_text()  # the log's plot is in the report
    model = load_model(run / "model")
    weights = [p for p in model.generator.parameters()]
    assert all(bool(torch.isfinite(p).all()) for p in weights)
    from backmap.system.io import read_frames

    frame = next(iter(read_frames(run / "backmap" / "aa.xtc")))
    assert np.isfinite(frame.positions).all()
    report = (run / "run.json").read_text()
    assert "no AA coordinates read" in report


def test_raw_samples_are_differentiable_and_unchanged_by_reparameterization(data_free_run):
    """Reparameterized draws equal the plain draws of the same seed, and the gradient of a
    function of them reaches the head, the encoder and the latent networks."""
    from backmap.refinement.restrained import RestrainedSystem
    from backmap.engine.loaders import load_mapping, load_topology
    from backmap.forcefield.settings import NonbondedSettings
    from backmap_vae.targets import UnitTargets

    model = load_model(data_free_run / "run" / "model")
    gen = model.generator
    top = load_topology(HEXANE / "topol.top")
    cg_top = load_mapping(HEXANE / "hexane.xml", top).cg_topology(top)
    system = RestrainedSystem(cg_top, HEXANE / "topol.top", NonbondedSettings.from_mdp(data_free_run / "rf.mdp"))
    targets = UnitTargets(system, gen, model.channels, 300, 2e4, 1e6, 0.5, "none")
    from backmap.system.io import read_frames

    aa = next(iter(read_frames(data_free_run / "run" / "backmap" / "aa.xtc")))
    cg = next(iter(read_frames(data_free_run / "run" / "backmap" / "aa_cg.trr")))
    x, beads = system.prepare(aa, cg)
    group = targets.frame_groups(beads, np.asarray(aa.box).reshape(3, 3))[0]
    env = targets.sampler.environment(group, torch.as_tensor(x, dtype=torch.float32))
    bound = gen.latent_model(env)
    with torch.no_grad():
        plain, _ = bound.generate(3, torch.Generator().manual_seed(7), raw=True)
    rep, z = bound.generate(3, torch.Generator().manual_seed(7), raw=True, reparameterized=True)
    assert torch.allclose(plain, rep.detach(), atol=1e-5)
    (rep.norm(dim=-1).sum() + z.sum()).backward()
    for part in (gen.head, gen.encoder, gen.latent_nets):
        grads = [p.grad for p in part.parameters() if p.grad is not None]
        assert grads and sum(float(g.abs().sum()) for g in grads) > 0


def test_generators_without_densities_refuse_the_objective(tmp_path):
    code, _out, err = run_cli("run", _recipe(tmp_path, plugin="equivariant"))
    assert code != 0
    assert "steps.train.objective" in err and "reverse_kl" in err and "vae" in err


def test_energy_cap_is_continuous_and_keeps_low_energies():
    from backmap_vae.data_free import log_capped

    u = torch.tensor([-50.0, 999.0, 1000.0, 1001.0, 1e8], dtype=torch.float64, requires_grad=True)
    v = log_capped(u, 1000.0)
    assert torch.equal(v[:3].detach(), u[:3].detach())
    assert float(v[3]) == pytest.approx(1000 + np.log(2.0)) and float(v[4]) < 1000 + 19
    v.sum().backward()
    assert torch.allclose(u.grad, torch.tensor([1.0, 1.0, 1.0, 0.5, 1 / (1e8 - 999)], dtype=torch.float64))


def test_starting_pool_is_cached_per_key(tmp_path):
    """The starting pool's minimization (minutes) is done once per key: a resumed run loads it, a
    different key (frames, steps, cut-off) makes it afresh; without a directory nothing is kept."""
    from backmap_vae.data_free import cached_pool

    calls = []

    def make(value):
        def build():
            calls.append(value)
            return [np.full((4, 3), value), np.full((4, 3), value + 1)]
        return build

    first = cached_pool(tmp_path, {"steps": 300}, make(1.0))
    again = cached_pool(tmp_path, {"steps": 300}, make(9.0))
    assert calls == [1.0] and all(np.array_equal(a, b) for a, b in zip(first, again))
    other = cached_pool(tmp_path, {"steps": 100}, make(2.0))
    assert calls == [1.0, 2.0] and other[0][0, 0] == 2.0
    cached_pool(None, {"steps": 100}, make(3.0))
    assert calls == [1.0, 2.0, 3.0] and [p.name for p in tmp_path.iterdir()] == ["starting_pool.npz"]


def test_temperature_is_an_input_of_a_model_trained_over_a_range(tmp_path):
    """``temperatures: [lo, hi]``: the data-free model takes T as an input (its draws at 280 K and
    330 K differ from the same noise), is saved with its training temperature, samples at the
    ``temperature`` inference parameter and refuses one outside the range; maximum likelihood on
    AA data (one temperature) refuses the range."""
    from backmap.engine.loaders import load_mapping, load_topology
    from backmap.errors import BackmapError
    from backmap.forcefield.settings import NonbondedSettings
    from backmap.refinement.restrained import RestrainedSystem
    from backmap.system.io import read_frames
    from backmap_vae.targets import UnitTargets

    recipe = _recipe(tmp_path, extra=", latent: 2, temperatures: [280, 330]")
    thermalize = "thermalize: {plugin: langevin, params: {steps: 2, minimize_steps: 0, constraints: none}}"
    recipe.write_text(recipe.read_text().replace("log_every: 2}", f"log_every: 2, {thermalize}}}"))
    code, _out, err = run_cli("run", recipe, catch_exceptions=False)
    assert code == 0, err
    # each training frame's pool was thermalized at its own temperature, spread over the range
    import json

    train = [s for s in json.loads((tmp_path / "run" / "run.json").read_text())["steps"] if s["name"] == "train"][-1]
    temps = train["summary"]["pool temperatures (K)"]
    assert len(temps) == 3 and len(set(temps)) == 3 and all(280 <= t <= 330 for t in temps)
    model = load_model(tmp_path / "run" / "model")
    gen = model.generator
    assert gen.reference_temperature == 300 and gen.conditions_on_temperature
    feature = gen.temperature_feature(torch.tensor([280.0, 300.0, 330.0]))
    assert feature[1] == 0 and feature[0] > 0 > feature[2]
    with pytest.raises(BackmapError, match="outside the range"):
        gen.temperature_feature(400.0)
    hot = gen.for_inference({"temperature": 330})
    assert gen.params.temperature is None and hot.params.temperature == 330
    cg_file = tmp_path / "run" / "backmap" / "aa_cg.trr"
    code, out, err = run_cli("apply", "--model", tmp_path / "run" / "model", "--cg", cg_file, "--out",
                             tmp_path / "hot.gro", "--generator-param", "temperature=330", "--candidates", "1",
                             "--gibbs", "0")
    assert code == 0 and (tmp_path / "hot.gro").is_file(), err
    code, _out, err = run_cli("apply", "--model", tmp_path / "run" / "model", "--cg", cg_file, "--out",
                              tmp_path / "cold.gro", "--generator-param", "temperature=200")
    assert code != 0 and "--generator-param.temperature: 200 K is outside the range" in err, err
    assert not (tmp_path / "cold.gro").exists()

    # the same environments and noise, two temperatures: different draws
    frame = next(iter(read_frames(tmp_path / "run" / "backmap" / "aa.xtc")))
    cg = next(iter(read_frames(tmp_path / "run" / "backmap" / "aa_cg.trr")))
    top = load_topology(HEXANE / "topol.top")
    cg_top = load_mapping(HEXANE / "hexane.xml", top).cg_topology(top)
    system = RestrainedSystem(cg_top, HEXANE / "topol.top", NonbondedSettings.from_mdp(tmp_path / "rf.mdp"))
    x, beads = system.prepare(frame, cg)
    targets = UnitTargets(system, gen, model.channels, 300, 2e4, 1e6, 0.5, "none")
    group = targets.frame_groups(beads, np.asarray(frame.box).reshape(3, 3))[0]
    env = targets.sampler.environment(group, torch.as_tensor(x, dtype=torch.float32))
    with torch.no_grad():
        cold = gen.latent_model(env, 280.0).generate(2, torch.Generator().manual_seed(1))[0]
        warm = gen.latent_model(env, 330.0).generate(2, torch.Generator().manual_seed(1))[0]
        again = gen.latent_model(env, 280.0).generate(2, torch.Generator().manual_seed(1))[0]
    assert torch.equal(cold, again) and not torch.allclose(cold, warm)

    # maximum likelihood cannot learn a range of temperatures from one temperature's data
    ml = tmp_path / "ml"
    ml.mkdir()
    recipe = _recipe(ml, extra=", latent: 2, temperatures: [280, 330]")
    text = recipe.read_text().replace("objective: reverse_kl, ", "epochs: 1, ").replace(
        "reverse_kl: {samples: 2, units: 8, dbeta_max: 0.25,\n             steps_per_beta: 1, final_steps: 2, "
        "minimize_steps: 20, pretrain_epochs: 1, log_every: 2}", "")
    recipe.write_text(text)
    code, _out, err = run_cli("run", recipe)
    assert code != 0 and "generator.params.temperatures" in err, err


def test_a_model_of_one_temperature_refuses_another(data_free_run):
    from backmap.errors import BackmapError

    gen = load_model(data_free_run / "run" / "model").generator
    assert not gen.conditions_on_temperature
    with pytest.raises(BackmapError, match="generator_params.temperature: this vae model learnt one temperature"):
        gen.for_inference({"temperature": 350})


def test_thermalize_runs_the_refiner_on_the_minimized_starting_pool(data_free_run):
    """``reverse_kl.thermalize``: each minimized starting structure goes through the refiner once,
    with its own frame's CG beads as restraint targets (minimum image, as system.prepare gives
    them) and box, and what the refiner returns is the pool."""
    from backmap.engine.loaders import load_mapping, load_topology
    from backmap.forcefield.settings import NonbondedSettings
    from backmap.refinement.restrained import RefineResult, RestrainedSystem
    from backmap.system.io import read_frames
    from backmap_vae.data_free import starting_pool
    from backmap_vae.targets import UnitTargets

    model = load_model(data_free_run / "run" / "model")
    top = load_topology(HEXANE / "topol.top")
    cg_top = load_mapping(HEXANE / "hexane.xml", top).cg_topology(top)
    system = RestrainedSystem(cg_top, HEXANE / "topol.top", NonbondedSettings.from_mdp(data_free_run / "rf.mdp"))
    targets = UnitTargets(system, model.generator, model.channels, 300, 2e4, 1e6, 0.5, "none")
    cg = next(iter(read_frames(data_free_run / "run" / "backmap" / "aa_cg.trr")))
    beads = np.stack([cg.positions, cg.positions + 0.1])
    dims = np.stack([cg.dimensions, cg.dimensions])

    class Stub:
        name = "stub"
        calls = []

        def refine(self, positions, targets_, boxes, rng):
            self.calls.append((positions.copy(), targets_.copy(), boxes.copy()))
            return RefineResult(positions + 0.01, [{}])

    stub = Stub()
    pool = starting_pool(targets, beads, dims, minimize_steps=2, refiner=stub)
    assert len(stub.calls) == 2 and len(pool) == 2
    for k, (x, t, box) in enumerate(stub.calls):
        assert x.shape == (1, system.n_atoms, 3) and t.shape == (1, system.n_beads, 3)
        assert np.allclose(box[0], np.asarray(cg.box).reshape(3, 3))
        mapped = system.mapped(x[0])
        assert np.abs(t[0] - mapped).max() < 0.5 * float(np.min(cg.dimensions[:3]))  # the image nearest each bead
        shift = (t[0] - beads[k]) / cg.dimensions[:3]
        assert np.allclose(shift, np.round(shift), atol=1e-4)  # the frame's own beads, whole boxes apart
        assert np.allclose(pool[k], x[0] + 0.01)


def test_thermalize_names_an_unknown_refiner_or_parameter(tmp_path):
    for bad, words in (("{plugin: langevn}", ["thermalize.plugin", "langevin"]),
                       ("{plugin: langevin, params: {stepz: 3}}", ["thermalize.params.stepz"])):
        recipe = _recipe(tmp_path)
        recipe.write_text(recipe.read_text().replace("log_every: 2}", f"log_every: 2, thermalize: {bad}}}"))
        code, _out, err = run_cli("run", recipe)
        assert code != 0 and all(w in err for w in words) and "train.reverse_kl" in err, err
        assert not (tmp_path / "run").exists()


def test_frame_temperatures_are_even_in_beta_and_seeded():
    from backmap_vae.data_free import frame_temperatures

    t = frame_temperatures(280.0, 360.0, 8, seed=4)
    beta = np.sort(1 / t)
    assert np.allclose(np.diff(beta), (1 / 280 - 1 / 360) / 8)  # evenly spaced in β
    assert beta[0] > 1 / 360 and beta[-1] < 1 / 280  # slice midpoints: inside the range
    assert np.array_equal(t, frame_temperatures(280.0, 360.0, 8, seed=4))
    assert not np.array_equal(t, frame_temperatures(280.0, 360.0, 8, seed=5))


def test_stereo_reference_sets_the_starting_pools_handedness(tmp_path):
    """``reverse_kl.stereo_reference``: the starting pool's forward pass keeps the stereocentres of
    the reference (tests/data/chiral: 27 CHFClBr, whose force field gives both enantiomers the same
    energy, as sPS's gives every tacticity). The untrained model makes either handedness; with the
    reference, or with its mirror image, the pool follows whichever it was given."""
    from conftest import DATA

    from backmap.engine.loaders import load_topology
    from backmap.sampling.chirality import load_chiral_centres
    from backmap.system.io import Frame, write_frames

    chiral, box = DATA / "chiral", 3.0
    top = load_topology(chiral / "chiral.top")
    t = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / np.sqrt(3)
    arms = np.vstack([[0, 0, 0], t * np.array([0.109, 0.135, 0.177, 0.194])[:, None]])
    rng = np.random.default_rng(5)

    def structure():  # one enantiomer on a 3×3×3 grid, each molecule turned at random (a proper rotation)
        mols = []
        for centre in np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3):
            q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
            mols.append(0.5 + centre + arms @ (q * np.sign(np.linalg.det(q))).T)
        return np.concatenate(mols)

    dims = np.array([box, box, box, 90, 90, 90.0])

    def write(path, frames):
        write_frames(path, [Frame(x, dims) for x in frames], top.atom_names, top.resnames, top.residue_numbers())
        return path

    traj = write(tmp_path / "traj.xtc", [structure(), structure()])
    x = structure()
    references = {"ref": write(tmp_path / "ref.gro", [x]),
                  "mirror": write(tmp_path / "mirror.gro", [x * [-1, 1, 1] + [box, 0, 0]])}
    (tmp_path / "rf.mdp").write_text(RF)
    kept = {}
    for name, ref in references.items():
        recipe = tmp_path / f"{name}.yaml"
        recipe.write_text(textwrap.dedent(f"""
            name: stereo
            seed: 3
            workdir: run-{name}
            system: {{topology: {chiral / 'chiral.top'}, mapping: {chiral / 'chiral.xml'}}}
            data: {{trajectory: {traj}, split: {{test_fraction: 0.0}}}}
            generator: {{plugin: vae, params: {{constraints: none, width: 8, vectors: 4, tensors: 2, hidden: 32,
                                                 latent: 2}}}}
            steps:
              - prepare: {{}}
              - train: {{objective: reverse_kl, mdp: rf.mdp, reverse_kl: {{samples: 2, units: 8, beta0: 1.0,
                         final_steps: 0, minimize_steps: 20, pretrain_epochs: 0, stereo_reference: {ref}}}}}
            """))
        code, out, err = run_cli("run", recipe, catch_exceptions=False)
        assert code == 0, err
        (saved,) = (tmp_path / f"run-{name}").rglob("starting_pool.npz")
        pool = np.load(saved)["pool"]
        assert pool.shape == (2, top.n_atoms, 3)
        kept[name] = {other: [load_chiral_centres(top, path).kept(top, p) for p in pool]
                      for other, path in references.items()}
        assert "stereocentres kept" in out + err
    # each pool follows its own reference (the untrained model alone: about half either way)
    assert min(kept["ref"]["ref"]) > 0.75 and min(kept["mirror"]["mirror"]) > 0.75, kept
    assert max(kept["ref"]["mirror"]) < 0.25 and max(kept["mirror"]["ref"]) < 0.25, kept


def test_importance_weighted_entropy_runs_on_the_vae_generator(tmp_path):
    """``entropy_samples`` > 0 on a molecular generator: the bound's extra encoder draws take the
    (B, n, U, 3) unit coordinates, training finishes with finite weights and a finite entropy
    estimate in the log (the toy tests check the bound's value; this one its plumbing)."""
    import csv

    code, out, err = run_cli("run", _recipe(tmp_path, extra=", latent: 2", rkl_extra=", entropy_samples: 2"),
                             catch_exceptions=False)
    assert code == 0, err
    run = tmp_path / "run"
    rows = list(csv.DictReader(open(run / "training" / "vae" / "reverse_kl_log.csv")))
    assert rows and all(np.isfinite(float(r["entropy"])) for r in rows)
    model = load_model(run / "model")
    assert all(bool(torch.isfinite(p).all()) for p in model.generator.parameters())
