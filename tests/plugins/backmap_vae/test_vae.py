"""The VAE sampler (plugins/backmap_vae): a trained ``vae`` generator has exact joint densities
(its decoder's density is the known answer of its own draws), the ``vae_mc`` refiner's local
target is the full restrained energy difference of a move, and the refiner moves units with a
logged acceptance and refuses what it cannot sample exactly."""
import textwrap

import numpy as np
import pytest
import torch
from conftest import HEXANE, run_cli

from backmap import BackmapError
from backmap.engine.loaders import load_mapping, load_topology
from backmap.engine.models import load_model
from backmap.forcefield.settings import NonbondedSettings
from backmap.refinement.restrained import RestrainedSystem
from backmap.system.io import read_frames
from backmap_vae.refiner import VAEMCRefiner


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    """A small vae model trained on hexane (flexible bonds, as the reference MD), with the block
    context of the block A1+B, backmapped once."""
    tmp = tmp_path_factory.mktemp("vae")
    recipe = tmp / "vae.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: vae
        seed: 3
        workdir: vae
        system: {{topology: {HEXANE / 'topol.top'}, mapping: {HEXANE / 'hexane.xml'}}}
        data: {{trajectory: {HEXANE / 'traj.xtc'}, frames: '0:4', split: {{test_fraction: 0.25, mode: tail}}}}
        generator: {{plugin: vae, params: {{constraints: none, latent: 2, width: 8, vectors: 4, tensors: 2, hidden: 32,
                     lr: 4.0e-3, blocks: ['A1,B']}}}}
        steps:
          - prepare: {{}}
          - train: {{epochs: 12, batch_size: 64}}
          - backmap: {{candidates: 4, gibbs_sweeps: 1}}
        """))
    (tmp / "rf.mdp").write_text("coulombtype = reaction-field\nrcoulomb = 0.9\nrvdw = 0.9\n")
    code, _, err = run_cli("run", recipe, catch_exceptions=False)
    assert code == 0, err
    return tmp


def _system(tmp):
    top = load_topology(HEXANE / "topol.top")
    cg = load_mapping(HEXANE / "hexane.xml", top).cg_topology(top)
    return RestrainedSystem(cg, HEXANE / "topol.top", NonbondedSettings.from_mdp(tmp / "rf.mdp"))


def _refiner(tmp, **params):
    refiner = VAEMCRefiner({"model": tmp / "vae" / "model", "temperature": 300, "constraints": "none", "steps": 1,
                            "restraint": 2.0e4, "minimize_steps": 0, **params})
    refiner.prepare(_system(tmp))
    return refiner


def _frame(tmp, refiner):
    system = refiner.system
    aa = next(iter(read_frames(tmp / "vae" / "backmap" / "aa.xtc")))
    cg = next(iter(read_frames(tmp / "vae" / "backmap" / "aa_cg.trr")))
    return system.prepare(aa, cg), aa.box


def test_decoder_density_is_the_density_of_its_draws(vae_run):
    """ln P(x | z, env) from the teacher-forced pass equals what the autoregressive draw computed
    as it drew — with the latent in the decoder's context, for raw (unprojected) draws."""
    refiner = _refiner(vae_run)
    (x, targets), box = _frame(vae_run, refiner)
    groups = refiner.sampler.frame_groups(targets, box)
    gen = refiner.generator
    for group in (groups[0], groups[-1]):
        env = refiner.sampler.environment(group, torch.as_tensor(x, dtype=torch.float32))
        model = gen.latent_model(env)
        g = torch.Generator().manual_seed(1)
        _x, z = model.generate(3, g)
        v = dict(model.v, latent=z.reshape(-1, z.shape[-1]))
        drawn_x, drawn = gen._sample(v, 3, torch.Generator().manual_seed(2), with_log_prob=True, raw=True)
        joint = model.log_joint(drawn_x, z)
        assert torch.isfinite(joint.decoder).all() and torch.isfinite(joint.encoder).all()
        assert torch.allclose(joint.decoder, drawn.double(), atol=1e-3), (joint.decoder - drawn).abs().max()


def test_local_target_is_the_restrained_energy_difference(vae_run):
    """Moving the units of one group changes U + restraint by exactly the sum of their local
    energies' changes (the units of a group do not interact)."""
    refiner = _refiner(vae_run)
    (x, targets), box = _frame(vae_run, refiner)
    groups = refiner.sampler.frame_groups(targets, box)
    group = max(groups, key=lambda g: len(g.atoms))
    assert len(group.atoms) >= 2
    st = refiner.targets.tables(group)
    pos = torch.as_tensor(x, dtype=torch.float64)
    moved = pos.clone()
    idx = st["index"]
    moved[idx] += 0.03 * torch.randn(idx.shape + (3,), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    vectors = np.asarray(box, float).reshape(3, 3)
    t = torch.as_tensor(targets, dtype=torch.float64)
    with torch.no_grad():
        local = sum(refiner.targets.energies(torch.stack([pos, moved]), st, t, vectors))  # (2, B)
    system = refiner.system

    def full(y):
        return (refiner.ff.energy(y[None], vectors[None], whole=True).total
                + system.restraint_energy(y[None], t[None], refiner.params.restraint))[0]

    with torch.no_grad():
        want = float(full(moved) - full(pos))
    assert float((local[1] - local[0]).sum()) == pytest.approx(want, abs=1e-6, rel=1e-9)


def test_trials_of_a_unit_see_the_other_units_where_they_are(vae_run):
    """A unit's trial energies take the group's other units at their current placements, not at
    their own trials: with unit 1's trial 0 put onto unit 0's atoms, unit 0's trial that is its
    current placement still scores exactly as the current state (sequential decisions correct
    for accepted moves from there; seeing another unit's trial would bias every such move)."""
    refiner = _refiner(vae_run)
    (x, targets), box = _frame(vae_run, refiner)
    groups = refiner.targets.frame_groups(targets, box, interacting=True)
    group = max(groups, key=lambda g: len(g.atoms))
    assert len(group.atoms) >= 2
    vectors = np.asarray(box, float).reshape(3, 3)
    units = refiner.targets.bind(group, torch.as_tensor(x, dtype=torch.float64),
                                 torch.as_tensor(targets, dtype=torch.float64), vectors)
    current = units.local()  # (B, U, 3)
    trials = current[:, None].repeat(1, 2, 1, 1)
    lab0 = units.to_lab(current)[0]  # unit 0's atoms, lab frame
    onto = (lab0[: (units.index[1] >= 0).sum()] + 0.05 - units.centre[1]) @ units.rotation[1].T
    trials[1, 0, : len(onto)] = onto.to(trials.dtype)  # unit 1's trial 0 sits on unit 0
    with torch.no_grad():
        now = units.log_target(current[:, None])[:, 0]
        got = units.log_target(trials)
    # float64 energies of ~10³ kJ/mol: 1e-6 is rounding with margin; seeing the trial is off by 10⁴
    assert float(got[0, 1]) == pytest.approx(float(now[0]), abs=1e-6)
    assert float(got[0, 0]) == pytest.approx(float(now[0]), abs=1e-6)


def test_refiner_moves_units_and_logs_acceptance(vae_run, tmp_path):
    log = tmp_path / "sweeps.csv"
    refiner = _refiner(vae_run, steps=2, sweep_log=log, trials=2, blocks=[])  # [] turns the model's blocks off
    (x, targets), box = _frame(vae_run, refiner)
    result = refiner.refine(x[None], targets[None], np.asarray(box).reshape(1, 3, 3), np.random.default_rng(0))
    row = result.log[0]
    assert 0.0 < row["acceptance"] <= 1.0 and row["invalid"] == 0
    per_type = {k: v for k, v in row.items() if k.startswith("acceptance[")}
    assert set(per_type) == {"acceptance[Protein:A1]", "acceptance[Protein:A2]", "acceptance[Protein:B]"}
    moved = np.linalg.norm(result.positions[0] - x, axis=-1) > 1e-6
    assert 0 < moved.mean() < 1 and np.isfinite(result.positions).all()
    lines = log.read_text().splitlines()
    assert lines[0] == "frame,sweep,unit,accepted,proposed,invalid" and len(lines) == 1 + 2 * 3


def test_vae_every_leaves_the_network_moves_to_every_nth_sweep(vae_run, tmp_path):
    """``vae_every: 2``: the whole-bead VAE moves in sweeps 0 and 2 only, the turns in every sweep;
    without local moves the option is refused (the other sweeps would move nothing)."""
    import csv

    from pydantic import ValidationError

    log = tmp_path / "sweeps.csv"
    refiner = _refiner(vae_run, steps=4, sweep_log=log, blocks=[], turns=1, vae_every=2)
    (x, targets), box = _frame(vae_run, refiner)
    refiner.refine(x[None], targets[None], np.asarray(box).reshape(1, 3, 3), np.random.default_rng(0))
    sweeps: dict[str, set[int]] = {}
    for row in csv.DictReader(log.open()):
        sweeps.setdefault("turn" if row["unit"].endswith(" turn") else "vae", set()).add(int(row["sweep"]))
    assert sweeps == {"vae": {0, 2}, "turn": {0, 1, 2, 3}}
    with pytest.raises(ValidationError, match="vae_every"):
        VAEMCRefiner({"model": vae_run / "vae" / "model", "vae_every": 2})
    with pytest.raises(ValidationError, match="local_decide: independent"):  # a heat bath is decided at once
        VAEMCRefiner({"model": vae_run / "vae" / "model", "turns": 1, "rotation_candidates": 4})


def test_a_local_move_kind_with_nothing_to_move_is_named_once(vae_run, caplog):
    """hexane has turns (its end beads hang on one bond) but no crank cluster (the middle bead with
    both ends is the whole molecule, held by no bond): ``cranks`` then does nothing, and the refiner
    says so once, naming the parameter — not per frame, and not for the kinds that do move."""
    refiner = _refiner(vae_run, steps=1, blocks=[], turns=1, cranks=2)
    (x, targets), box = _frame(vae_run, refiner)
    with caplog.at_level("WARNING", logger="backmap"):
        for seed in (0, 1):
            refiner.refine(x[None], targets[None], np.asarray(box).reshape(1, 3, 3), np.random.default_rng(seed))
    said = [r.getMessage() for r in caplog.records if "does nothing" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("vae_mc: cranks = 2 does nothing"), said


@pytest.mark.parametrize("local", [{"local_decide": "sequential"},
                                   {"local_decide": "independent", "rotation_candidates": 3}])
def test_inner_moves_keep_every_bond_and_move_every_bead_type(vae_run, tmp_path, local):
    """``inner`` moves in the refiner: with the VAE moves in sweep 0 only, sweeps 1–3 make inner moves
    alone. Those keep every bond length (hexane's bonds are flexible here, so only the moves' geometry
    keeps them) while the bond angles change, and every bead type logs inner moves, some accepted:
    in molecule-wide groups decided in turn (their rows stacked from several bead types, padded) and
    in groups beyond the cut-off with a heat bath."""
    import csv

    log, trace = tmp_path / "sweeps.csv", tmp_path / "trace.npz"
    refiner = _refiner(vae_run, steps=4, sweep_log=log, trace=trace, blocks=[], inner=3, inner_step=0.02,
                       vae_every=10, project_output=False, **local)
    (x, targets), box = _frame(vae_run, refiner)
    refiner.refine(x[None], targets[None], np.asarray(box).reshape(1, 3, 3), np.random.default_rng(0))
    accepted: dict[str, int] = {}
    network = set()  # the bead types the VAE moved in sweep 0
    for row in csv.DictReader(log.open()):
        if row["unit"].endswith(" inner"):
            accepted[row["unit"]] = accepted.get(row["unit"], 0) + int(row["accepted"])
        else:
            network.add(row["unit"])
    assert set(accepted) == {f"{label} inner" for label in network} and len(network) == 3
    assert all(n > 0 for n in accepted.values()), accepted
    positions = np.load(trace)["positions"].astype(np.float64)  # after sweeps 0 … 3
    bonds = np.asarray(refiner.system.bonds[0]).reshape(-1, 2)
    length = lambda p: np.linalg.norm(p[bonds[:, 0]] - p[bonds[:, 1]], axis=-1)  # noqa: E731
    assert np.abs(length(positions[3]) - length(positions[0])).max() < 1e-5
    assert np.abs(positions[3] - positions[0]).max() > 1e-3  # and yet the atoms moved


def test_refiner_refuses_what_it_cannot_sample_exactly(vae_run, tmp_path):
    from backmap import BackmapError

    pme = tmp_path / "pme.mdp"
    pme.write_text("coulombtype = PME\nrcoulomb = 0.9\nrvdw = 0.9\n")
    top = load_topology(HEXANE / "topol.top")
    cg = load_mapping(HEXANE / "hexane.xml", top).cg_topology(top)
    refiner = VAEMCRefiner({"model": vae_run / "vae" / "model", "constraints": "none"})
    with pytest.raises(BackmapError, match="PME"):
        refiner.prepare(RestrainedSystem(cg, HEXANE / "topol.top", NonbondedSettings.from_mdp(pme)))


def test_vae_generator_backmaps_like_any_generator(vae_run):
    model = load_model(vae_run / "vae" / "model")
    assert model.generator.name == "vae" and not model.generator.has_log_prob
    frames = list(read_frames(vae_run / "vae" / "backmap" / "aa.xtc"))
    assert len(frames) == 1 and np.isfinite(frames[0].positions).all()


def test_refine_step_gives_vae_mc_the_backmapped_model_inside_a_schedule(vae_run):
    """A run without a train step: the refine step offers ``vae_mc`` the model the backmap step used
    (``steps.backmap.model``) and its stereo reference, also through a ``schedule`` (100 minimization steps — the small model
    leaves clashes —, one vae_mc sweep, then three MALA steps);
    both stages log, and the structure stays on its CG input at the temperature."""
    import csv

    recipe = vae_run / "schedule.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: schedule
        seed: 3
        workdir: schedule
        system: {{topology: {HEXANE / 'topol.top'}, mapping: {HEXANE / 'hexane.xml'}}}
        data: {{trajectory: {HEXANE / 'traj.xtc'}, frames: '0:4', split: {{test_fraction: 0.25, mode: tail}}}}
        generator: {{plugin: vae, params: {{constraints: none, latent: 2, width: 8, vectors: 4, tensors: 2, hidden: 32}}}}
        refiners:
          - plugin: schedule
            params: {{temperature: 300, restraint: 2.0e+4, constraints: none, cycles: 1, minimize_steps: 100,
                      stages: [{{plugin: vae_mc, params: {{steps: 1, trials: 2}}}},
                               {{plugin: mala, params: {{steps: 3, timestep: 0.0005}}}}]}}
        steps:
          - prepare: {{}}
          - backmap: {{model: {vae_run / 'vae' / 'model'}, candidates: 2, gibbs_sweeps: 0,
                       stereo_reference: {HEXANE / 'conf.gro'}}}
          - refine: {{mdp: rf.mdp}}
        """))
    code, _, err = run_cli("run", recipe, catch_exceptions=False)
    assert code == 0, err
    (row,) = list(csv.DictReader(open(vae_run / "schedule" / "refine" / "aa.log.csv")))
    # the backmap step's stereo reference reached vae_mc's target too (hexane: no centres, all kept)
    assert float(row["0:vae_mc:stereocentres_kept_refined"]) == 1.0
    for key in ("0:vae_mc:acceptance", "0:vae_mc:acceptance[Protein:B]", "1:mala:acceptance"):
        assert 0.0 <= float(row[key]) <= 1.0, key  # both stages ran and logged (this small model's
        # whole-bead moves are seldom accepted, and MALA rejects most steps on strained output)
    assert float(row["cg_rmsd"]) < 0.03  # thermal: √(3k_BT/k) = 0.019 nm
    assert float(row["1:mala:temperature"]) < 600  # no heat from clashes released


def _block(refiner, spec, targets, box):
    """The largest colour group's move of the block ``spec``."""
    from backmap.sampling.blocks import parse_blocks
    from backmap_vae.blocks import block_moves

    (block,) = parse_blocks([spec], refiner.system.cg_topology, refiner.sampler.plans, "test")
    groups = refiner.targets.frame_groups(targets, box, interacting=True)
    moves = block_moves(refiner.targets, block, groups, refiner.params.temperature)
    molecules = np.concatenate([m.steps[0].molecules for m in moves])
    assert len(np.unique(molecules)) == len(molecules) == sum(len(g.molecules) for g in groups if g.step == 0)
    return max(moves, key=lambda m: len(m.block_atoms))


def test_block_draws_have_the_density_the_move_scores(vae_run):
    """Known answer of a block move's exactness: the proposal density Σ_s ln P̃_s of each drawn
    block (unit s drawn seeing the block's units before it at their new places) is what the move
    evaluates for a block standing there with the same latents; nothing outside the blocks moves."""
    refiner = _refiner(vae_run)
    (x, targets), box = _frame(vae_run, refiner)
    move = _block(refiner, "A1,B", targets, box)
    pos = torch.as_tensor(x, dtype=torch.float64)
    with torch.no_grad():
        trial_pos, drawn, _outside, latents = move.draw(pos, 3, torch.Generator().manual_seed(4))
        for m in range(3):
            scored, _, _ = move.log_density(trial_pos[m], torch.Generator(), [z[m] for z in latents])
            # float32 networks and float32-rounded positions: ~3e-5 relative; a unit scored in the
            # wrong context (another visibility) is off by nats
            assert torch.allclose(scored, drawn[m], rtol=2e-4, atol=1e-3), (scored - drawn[m]).abs().max()
    others = torch.ones(len(pos), dtype=torch.bool)
    others[move.block_atoms.reshape(-1)] = False
    assert torch.equal(trial_pos[:, others], pos[others].expand(3, -1, -1))
    assert not torch.allclose(trial_pos[:, ~others], pos[~others].expand(3, -1, -1))


def test_block_target_is_the_restrained_energy_difference(vae_run):
    """ln π of a block's trial is −β times the change of U + restraint when only that block moves
    (the other blocks where they are), as the unit moves' target."""
    refiner = _refiner(vae_run)
    (x, targets), box = _frame(vae_run, refiner)
    move = _block(refiner, "B,A2", targets, box)
    pos = torch.as_tensor(x, dtype=torch.float64)
    t = torch.as_tensor(targets, dtype=torch.float64)
    vectors = np.asarray(box, float).reshape(3, 3)
    with torch.no_grad():
        trial_pos, _, outside, _ = move.draw(pos, 2, torch.Generator().manual_seed(5))
        got = move._log_target(torch.cat([pos[None], pos[None], trial_pos]), t, vectors,
                               torch.zeros(3, len(move.block_atoms), dtype=torch.bool))

        def full(y):
            return float((refiner.ff.energy(y[None], vectors[None], whole=True).total
                          + refiner.system.restraint_energy(y[None], t[None], refiner.params.restraint))[0])

        atoms = move.block_atoms
        for b in range(min(3, len(atoms))):
            y = pos.clone()
            y[atoms[b]] = trial_pos[1, atoms[b]]
            want = -refiner.targets.beta * (full(y) - full(pos))
            assert float(got[2, b] - got[0, b]) == pytest.approx(want, abs=1e-6, rel=1e-9)


def test_refiner_moves_blocks_and_names_bad_ones(vae_run, tmp_path):
    """The model's blocks by default (trained with their context, tests/test_blocks.py), logged."""
    refiner = _refiner(vae_run, steps=2, block_trials=4)
    assert refiner.generator.training_contexts() == ("forward", "gibbs", "block")
    (x, targets), box = _frame(vae_run, refiner)
    result = refiner.refine(x[None], targets[None], np.asarray(box).reshape(1, 3, 3), np.random.default_rng(0))
    row = result.log[0]
    (label,) = [k for k in row if "+" in k]
    assert label in ("acceptance[Protein:A1+B]", "acceptance[Protein:B+A1]") and 0.0 <= row[label] <= 1.0
    assert row["invalid"] == 0 and np.isfinite(result.positions).all()
    for spec, words in [("A1", "two or more"), ("A1,Q", "no molecule type has"), ("A1,A1", "twice"),
                        ("Water:A1,B", "no molecule type 'Water'")]:
        with pytest.raises(BackmapError, match=words):
            _refiner(vae_run, blocks=[spec])


def test_stereo_reference_takes_inverted_centres_back(vae_run, monkeypatch):
    """With a stereo reference the target costs ``stereo_weight`` per neighbour triple signed
    against the reference, exactly (the local target's change), and a start with inverted centres
    leaves them: its weight π / P̃ is ~e^(−βw), so the first proposal with the right hand beats
    it, and a proposal that inverts a centre is rejected. Hexane has no stereocentres, so its CH₂
    carbons are named as centres and their two hydrogens swapped (the model learnt their labels)."""
    import backmap_vae.refiner as vae_refiner
    from backmap.sampling.chirality import chiral_centres
    from backmap.system.pbc import Unwrapper

    system = _system(vae_run)
    top = system.topology
    mt = top.blocks[0].moltype
    graph = mt.graph
    ch2 = [c for c in graph.nodes if mt.elements[c] == "C" and sum(mt.elements[k] == "H" for k in graph[c]) == 2]
    aa = next(iter(read_frames(vae_run / "vae" / "backmap" / "aa.xtc")))
    reference = Unwrapper(top)(aa.positions, aa.dimensions)
    centres = chiral_centres(top, reference, centres={mt.name: ch2})
    monkeypatch.setattr(vae_refiner, "load_chiral_centres", lambda *_a, **_k: centres)
    refiner = _refiner(vae_run, blocks=[], stereo_reference=vae_run / "vae" / "backmap" / "aa.xtc")
    (x, targets), box = _frame(vae_run, refiner)
    swapped = x.copy()
    for block in top.blocks:
        for m in range(block.count):
            c = block.first_atom + m * mt.n_atoms + ch2[1]  # one CH₂ per molecule
            h1, h2 = (block.first_atom + m * mt.n_atoms + k for k in graph[ch2[1]] if mt.elements[k] == "H")
            swapped[[h1, h2]] = swapped[[h2, h1]]
    rows, signs = (torch.as_tensor(a) for a in centres.touching(top, np.arange(top.n_atoms)[None]))
    vectors = np.asarray(box, float).reshape(3, 3)

    def flipped(y):
        return int(centres.inversions(torch.as_tensor(y)[None], rows, signs, vectors).sum())

    assert flipped(x) == 0 and flipped(swapped) >= 2 * top.n_molecules
    # the local target: exactly w per flipped triple on top of the (unchanged: same atom types) energy
    group = next(g for g in refiner.targets.frame_groups(targets, box) if np.isin(g.atoms, c).any())
    st = refiner.targets.tables(group)
    t = torch.as_tensor(targets, dtype=torch.float64)
    with torch.no_grad():
        ff, bias = refiner.targets.energies(torch.as_tensor(np.stack([x, swapped])), st, t, vectors)
    n = centres.inversions(torch.as_tensor(np.stack([x, swapped])), st["chiral"], st["chiral_sign"], vectors)
    assert (n[1] >= 2).all() and torch.allclose(bias[1] - bias[0], centres.weight * n[1], rtol=1e-9)
    # the chain: this 12-epoch model labels the hydrogens at random often (without the reference
    # its draws flip more triples than the start has) and its draws clash (a clash can cost more
    # than w), so not every centre comes back in 3 sweeps; 3 seeds: 1288–1362 flipped without,
    # 188–201 with, from 740
    after = {}
    for reference in (None, vae_run / "vae" / "backmap" / "aa.xtc"):
        refiner = _refiner(vae_run, steps=3, trials=16, blocks=[], stereo_reference=reference)
        result = refiner.refine(swapped[None], targets[None], vectors[None], np.random.default_rng(0))
        after[reference is not None] = flipped(result.positions[0])
        assert ("stereocentres_kept_refined" in result.log[0]) == (reference is not None)
    before = flipped(swapped)
    assert after[True] < 0.4 * before and after[False] > before, (before, after)


def test_stereo_reference_must_exist(vae_run, tmp_path):
    with pytest.raises(Exception, match="stereo_reference"):
        _refiner(vae_run, stereo_reference=tmp_path / "missing.gro")


def test_schedule_stage_paths_resolve_against_the_recipe(tmp_path):
    """A stage's path parameters (vae_mc's model, stereo_reference) resolve against the recipe's
    directory, as the top-level refiners' do; elsewhere (the CLI) against the working directory."""
    from backmap_refiners.schedule import ScheduleParams

    (tmp_path / "m").mkdir()
    (tmp_path / "ref.gro").write_text("")
    raw = {"stages": [{"plugin": "vae_mc", "params": {"model": "m", "stereo_reference": "ref.gro", "steps": 1}},
                      {"plugin": "mala", "params": {"steps": 2}}]}
    p = ScheduleParams.model_validate(raw, context={"base_dir": tmp_path, "check_files": True})
    assert p.stages[0].params == {"model": str(tmp_path / "m"), "stereo_reference": str(tmp_path / "ref.gro"),
                                  "steps": 1}
    assert p.stages[1].params == {"steps": 2}
    assert ScheduleParams.model_validate(raw).stages[0].params["model"] == "m"


def test_minimize_after_relaxes_the_chain_mid_run_then_samples(vae_run, monkeypatch):
    """``minimize_after: [1]`` minimizes the chain's state after sweep 1 (burn-in) and lowers its
    restrained energy; the sweeps after it are the exact chain (``exact_sweeps`` in the log).
    Sweeps outside 1 … steps − 1, or no minimization steps, are refused naming the key."""
    refiner = _refiner(vae_run, steps=3, trials=4, blocks=[], minimize_steps=30, minimize_after=[1])
    (x, targets), box = _frame(vae_run, refiner)
    vectors = np.asarray(box, float).reshape(3, 3)
    t = torch.as_tensor(targets, dtype=torch.float64)[None]
    calls = []
    relaxed = refiner._relaxed

    def spy(y, *args):
        out = relaxed(y, *args)
        energy = [float(refiner.ff.energy(torch.as_tensor(np.asarray(z, np.float64))[None], vectors[None]).total[0]
                        + refiner.system.restraint_energy(torch.as_tensor(np.asarray(z, np.float64))[None], t,
                                                          0.5 * refiner.params.restraint)[0]) for z in (y, out)]
        calls.append(energy)
        return out

    monkeypatch.setattr(refiner, "_relaxed", spy)
    result = refiner.refine(x[None], targets[None], vectors[None], np.random.default_rng(0))
    assert len(calls) == 2  # the start, and after sweep 1
    assert calls[1][1] < calls[1][0] - 1.0, calls  # the mid-run minimization relaxed the chain's state
    assert result.log[0]["exact_sweeps"] == 2
    for bad, words in [({"minimize_after": [3]}, "minimize_after"), ({"minimize_after": [0]}, "minimize_after"),
                       ({"minimize_after": [1], "minimize_steps": 0}, "minimize_steps")]:
        with pytest.raises(Exception, match=words):
            _refiner(vae_run, steps=3, **({"minimize_steps": 30} | bad))


def test_frames_in_lockstep_each_sample_their_own_frame(vae_run, tmp_path):
    """Two frames refined in one call run as two chains in lockstep (one network call per plan
    step for both): a copy of the frame shifted by 0.7 nm (AA and CG) is sampled in its own
    environments and against its own CG — its acceptance is like the original's, and each refined
    frame stays on its own CG beads (a frame mix-up would draw the copy's units around the
    original's beads: rejected, or pulled 0.7 nm off). The sweep log has both frames."""
    log = tmp_path / "sweeps.csv"
    refiner = _refiner(vae_run, steps=3, trials=2, blocks=[], sweep_log=log)
    (x, targets), box = _frame(vae_run, refiner)
    shift = np.array([0.7, -0.4, 0.3])
    xs, ts = np.stack([x, x + shift]), np.stack([targets, targets + shift])
    boxes = np.repeat(np.asarray(box, float).reshape(1, 3, 3), 2, 0)
    result = refiner.refine(xs, ts, boxes, np.random.default_rng(0))
    acc = [row["acceptance"] for row in result.log]
    # seeds 0–5: 0.151–0.173 for both, ratio ≤ 1.15; with the copy's units drawn in the original's
    # environments (the sampler's frame not switched): 0.17 against 0.60
    assert min(acc) > 0.03 and max(acc) < 1.6 * min(acc), acc
    own = refiner.system.cg_rmsd(result.positions, ts)  # seeds 0–5: 0.036–0.042 nm
    other = refiner.system.cg_rmsd(result.positions, ts[::-1])  # the shift: 0.86 nm
    assert (own < 0.1).all() and (other > 0.6).all(), (own, other)
    for k in range(2):
        moved = np.linalg.norm(result.positions[k] - xs[k], axis=-1) > 1e-6
        assert moved.mean() > 0.2
    frames = [line.split(",")[0] for line in log.read_text().splitlines()[1:]]
    assert sorted(set(frames)) == ["0", "1"] and frames.count("0") == frames.count("1") == 3 * 3


def test_lockstep_moves_every_group_of_every_frame_once_in_plan_order():
    """The k-th colour of a plan step of every frame moves in one batch; frames with more colours
    of a step than others get batches of their own; every group once, steps in plan order."""
    from backmap.sampling.sampler import UnitGroup
    from backmap_vae.refiner import _lockstep

    def groups(colours):  # colours per plan step
        return [UnitGroup("M", s, {}, np.arange(1), np.zeros((1, 1), int), np.arange(1), np.arange(1), None)
                for s, n in enumerate(colours) for _ in range(n)]

    frames = [groups([2, 1, 3]), groups([1, 2, 3]), groups([2, 1, 2])]
    batches = _lockstep(frames)
    seen = [(f, id(g)) for batch in batches for f, g in batch]
    assert sorted(seen) == sorted((f, id(g)) for f, gs in enumerate(frames) for g in gs)
    assert [[f for f, _ in b] for b in batches] == [[0, 1, 2], [0, 2], [0, 1, 2], [1], [0, 1, 2], [0, 1, 2], [0, 1]]
    steps = [b[0][1].step for b in batches]
    assert steps == sorted(steps) and all(len({g.step for _, g in b}) == 1 for b in batches)
    single = groups([2, 1])
    assert [b[0][1] for b in _lockstep([single])] == single


def _bond_lengths(x, pairs):
    return np.linalg.norm(x[:, pairs[:, 0]] - x[:, pairs[:, 1]], axis=-1)


def test_a_continued_chain_keeps_its_springs_where_a_new_one_projects_them(vae_run):
    """With rigid bonds the hexane model (trained flexible) holds none: every bond is a spring of
    the target. A new chain (start_projection: all) puts them at their lengths first; a continued
    one (held: the input is a draw of the target) must not — projecting its springs would be a
    step off the target (the LJ energy of sPS sits ~190 kJ/mol lower with springs than with
    constraints, docs/vae.md)."""
    new = _refiner(vae_run, steps=0, constraints="all-bonds", project_output=False)
    kept = _refiner(vae_run, steps=0, constraints="all-bonds", project_output=False, start_projection="held")
    bonds = new.bond_model()
    assert len(bonds.held) == 0 and len(bonds.sprung) == len(new.system.constrained_bonds("all-bonds")[0]) > 0
    (x, targets), box = _frame(vae_run, new)
    y = (x + np.random.default_rng(0).normal(0, 0.003, x.shape))[None]
    boxes = np.asarray(box, float).reshape(1, 3, 3)
    stretched = np.abs(_bond_lengths(y, bonds.sprung) - bonds.sprung_lengths).max()
    projected = new.refine(y, targets[None], boxes, np.random.default_rng(0)).positions
    assert np.abs(_bond_lengths(projected, bonds.sprung) - bonds.sprung_lengths).max() < 1e-8 < 1e-3 < stretched
    as_given = kept.refine(y, targets[None], boxes, np.random.default_rng(0)).positions
    assert np.array_equal(as_given, y)


def test_schedule_continues_vae_mc_chains_after_its_first_call(vae_run, monkeypatch):
    """A schedule's first call meets the structure from elsewhere (vae_mc projects every rigid
    bond); every later vae_mc call continues the shared target's chain (springs kept)."""
    from backmap.engine.loaders import make_plugin

    schedule = make_plugin("refiner", "schedule", {
        "temperature": 300, "restraint": 2.0e4, "constraints": "all-bonds", "cycles": 2, "minimize_steps": 0,
        "stages": [{"plugin": "vae_mc", "params": {"model": str(vae_run / "vae" / "model"), "steps": 0}},
                   {"plugin": "mala", "params": {"steps": 1, "timestep": 0.0002}}]})
    schedule.prepare(_system(vae_run))
    seen = []
    stage = schedule.stages[0]
    real = type(stage).refine
    monkeypatch.setattr(type(stage), "refine", lambda self, *a: seen.append(self.params.start_projection) or real(self, *a))
    (x, targets), box = _frame(vae_run, stage)
    schedule.refine(x[None], targets[None], np.asarray(box, float).reshape(1, 3, 3), np.random.default_rng(0))
    assert seen == ["all", "held"]


@torch.no_grad()  # as in the refiner
def _rotation_samples_quadrature(refiner, x, targets, box, group, axes, seed: int = 0, candidates: int = 1,
                                 moved=None, move=None, orbit=None) -> np.ndarray:
    """Rigid rotations of a group's units about ``axes`` (``turn_move``, uniform ±π proposals), all
    else fixed: each unit's angle φ has the 1-D density ∝ π(x rotated by φ), known by quadrature on
    720 angles. Pooled over the units the chain's probability-integral transforms u = CDF(φ) must
    be uniform (each quartile's share within 5 standard errors of 0.25, errors from batch means);
    every distance inside a unit and from it to its axis atoms must be kept (1e-9 nm). ``moved``
    (B, U): the atoms that rotate (default: the whole unit); ``move(part, gen)``: the move, giving
    (accepted, new, invalid, angle) (default: ``turn_move`` by up to ±π); ``orbit(local, pivot,
    axis, φ)``: the placements (B, U, 3) at angle φ from ``local`` (default: ``moved`` turned; a
    shift's carried atoms follow; the distance check is then the caller's)."""
    from backmap_vae.rotations import turn_geometry, turn_move, turned

    vectors = np.asarray(box, np.float64).reshape(3, 3)
    pos = torch.tensor(np.asarray(x), dtype=torch.float64)  # a copy: x is the reference below
    cg = torch.as_tensor(targets, dtype=torch.float64)
    start = refiner.targets.bind_unrotated(group, pos, cg, vectors)
    local0, pivot, axis = turn_geometry(start, axes)
    B = len(axes)
    moved = torch.as_tensor(start.index.numpy() >= 0 if moved is None else moved)
    if move is None:
        move = lambda part, gen: turn_move(part, axes, np.pi, gen, candidates)  # noqa: E731
    grid = torch.linspace(-np.pi, np.pi, 721, dtype=torch.float64)[:-1]
    rigid = orbit is None  # then every distance among the moved atoms is kept (checked below)
    if rigid:
        orbit = lambda local, pivot, axis, g: torch.where(  # noqa: E731
            moved[..., None], turned(local, pivot, axis, torch.full((B,), g)), local)
    at = lambda g: orbit(local0, pivot, axis, g)  # noqa: E731
    logp = torch.stack([start.log_target(at(g)[:, None])[:, 0] for g in grid], 1)  # (B, G): the units do not interact, so each is its own 1-D target
    cdf = torch.cumsum(torch.softmax(logp, 1), 1).numpy()
    gen, phi, us, accepted = torch.Generator().manual_seed(seed), torch.zeros(B, dtype=torch.float64), [], 0
    for _ in range(600):
        part = refiner.targets.bind_unrotated(group, pos, cg, vectors)
        acc, new, invalid, angle = move(part, gen)[:4]
        assert not invalid.any()
        pos[part.index[acc]] = part.to_lab(new)[acc]
        phi = torch.where(acc, torch.remainder(phi + angle + np.pi, 2 * np.pi) - np.pi, phi)
        k = np.clip(np.searchsorted(grid.numpy(), phi.numpy()), 1, len(grid) - 1)
        us.append(cdf[np.arange(B), k - 1])
        accepted += int(acc.sum())
    quartile = np.minimum((np.stack(us) * 4).astype(int), 3)  # (steps, B)
    share = np.stack([(quartile == q) for q in range(4)], -1).astype(float)  # (steps, B, 4)
    batches = share.reshape(6, -1, B, 4).mean(1).reshape(-1, 4)  # batch means: 6 per unit
    z = (share.mean((0, 1)) - 0.25) / (batches.std(0, ddof=1) / np.sqrt(len(batches)))
    assert accepted > 100, accepted
    assert np.abs(z).max() < 5, (share.mean((0, 1)), z)
    if not rigid:  # a shift: every bond keeps its length
        bonds = torch.as_tensor(np.asarray(refiner.system.bonds[0]).reshape(-1, 2))
        length = lambda p: (p[bonds[:, 0]] - p[bonds[:, 1]]).norm(dim=-1)  # noqa: E731
        assert torch.allclose(length(pos), length(torch.as_tensor(x, dtype=torch.float64)), atol=1e-9)
        return z
    # the rotation kept every distance among the atoms it moved and to the atoms on their axes
    d = lambda p, i, j: (p[i] - p[j]).norm(dim=-1)  # noqa: E731
    ref = torch.as_tensor(x, dtype=torch.float64)
    for row, ends, mine in zip(part.index.numpy(), axes, moved.numpy()):
        u_atoms = row[(row >= 0) & mine]
        i, j = torch.as_tensor(u_atoms[:, None]), torch.as_tensor(np.concatenate([u_atoms, ends])[None, :])
        assert torch.allclose(d(pos, i, j), d(ref, i, j), atol=1e-9)
    return z


def test_turn_moves_sample_the_turn_angle_by_quadrature(vae_run):
    """A unit bonded to the rest by one bond turned rigidly about it (``turns``) samples its turn
    angle's density (:func:`_rotation_samples_quadrature`). At 1000 K seeds 0–9 give |z| ≤ 2.4;
    a kernel that accepts every turn fails at z = −69 (one that samples π^½ passes here: at this
    temperature the test cannot tell a factor 2 in T)."""
    from backmap_vae.rotations import turn_axes

    # hot (1000 K): more turns accepted, so the independence chain holds no state for long and the
    # batch means measure its error (at 300 K a seed in ten put one quartile 6 errors off)
    refiner = _refiner(vae_run, temperature=1000)
    (x, targets), box = _frame(vae_run, refiner)
    bonds = np.asarray(refiner.system.bonds[0]).reshape(-1, 2)
    groups = [(g, a) for g in refiner.targets.frame_groups(targets, box, interacting=False)
              if (a := turn_axes(g.atoms, bonds)) is not None]
    assert groups, "hexane's chain-end beads hang on one bond"
    group, axes = max(groups, key=lambda ga: len(ga[1]))
    _rotation_samples_quadrature(refiner, x, targets, box, group, axes)


def test_crank_moves_sample_the_crank_angle_by_quadrature(vae_run):
    """A unit held by two bonds (hexane's middle bead) rotated rigidly about the axis through the
    two atoms outside it (``cranks``, a crankshaft) samples its angle's density, the wall kept at
    each atom's own bead (:func:`_rotation_samples_quadrature`), with the heat-bath choice among 8
    angles (``rotation_candidates``). Seeds 0–5 give |z| ≤ 2.7; a choice that ignores π (uniform
    among the candidates) fails at z = −86, one that accepts every Metropolis crank at −90."""
    from backmap_vae.rotations import crank_groups

    refiner = _refiner(vae_run, temperature=1000)
    (x, targets), box = _frame(vae_run, refiner)
    bonds = np.asarray(refiner.system.bonds[0]).reshape(-1, 2)
    groups = refiner.targets.frame_groups(targets, box, interacting=True)
    middle = [g for g in groups if refiner.targets.labels[g.moltype][g.meta["bead"]] == "B"]
    cranks = crank_groups(refiner.targets, groups, bonds, [(middle[0].moltype, (middle[0].step,))])
    crank = max(cranks, key=lambda c: len(c.axes))
    assert len(crank.axes) >= 3 and (crank.axes[:, 0] != crank.axes[:, 1]).all()
    _rotation_samples_quadrature(refiner, x, targets, box, crank.group, crank.axes, candidates=8)


def _one_inner_kind(refiner, targets, box, pick):
    """The colour group (of units decided at once) with the most units that have an inner move of
    the kind ``pick(moved atoms, axis)`` selects, reduced to that one kind per unit."""
    from backmap_vae.inner import InnerGroup, inner_group, neighbours

    nbrs = neighbours(refiner.system.bonds[0], refiner.system.n_atoms)
    best = None
    for g in refiner.targets.frame_groups(targets, box, interacting=False):
        moves = inner_group(g, nbrs)
        if moves is None:
            continue
        chosen = [next((k for k in range(int(moves.kinds[u]))
                        if pick(g.atoms[u][moves.masks[u, k].numpy()], moves.axes[u, k].numpy())), None)
                  for u in range(len(g.atoms))]
        if None in chosen:
            continue
        rows = torch.arange(len(chosen))
        one = InnerGroup(g, moves.masks[rows, chosen][:, None], moves.axes[rows, chosen][:, None],
                         torch.ones(len(chosen), dtype=torch.long))
        if best is None or len(chosen) > len(best.kinds):
            best = one
    assert best is not None, "no colour group whose units all have the kind"
    return best


def _quartile_z(us: np.ndarray) -> np.ndarray:
    """z of each quartile's share of probability-integral transforms ``us`` (steps, B) against
    0.25, standard errors from 6 batch means per unit."""
    B = us.shape[1]
    quartile = np.minimum((us * 4).astype(int), 3)
    share = np.stack([(quartile == q) for q in range(4)], -1).astype(float)
    batches = share.reshape(6, -1, B, 4).mean(1).reshape(-1, 4)
    return (share.mean((0, 1)) - 0.25) / (batches.std(0, ddof=1) / np.sqrt(len(batches)))


@pytest.mark.parametrize("seed", [0, 1])
@torch.no_grad()
def test_inner_pivots_sample_a_hydrogen_on_its_sphere_by_quadrature(vae_run, seed):
    """An inner pivot moves one hydrogen on the sphere around its carbon (random axis, angle
    ±step/r). All else fixed, the hydrogen's direction u has the 2-D density ∝ π(x with H at
    C + b·u) on the sphere, known by quadrature (180 polar bins × 180 azimuthal angles, sin θ weights, linear within a bin).
    The chain's probability-integral transforms of cos θ (θ from the start's C→H direction) must be
    uniform per quartile within 5 standard errors; the C–H distance is kept to 1e-9 nm. Seeds 0–5
    give |z| ≤ 3.1; accepting every pivot fails at z = −80 to −113. The steps are large (0.3 nm):
    one hydrogen's density has a second mode ~100° away, which 0.05 nm steps cross too rarely for
    600 moves to sample."""
    from backmap_vae.inner import inner_move

    refiner = _refiner(vae_run, temperature=1000)
    (x, targets), box = _frame(vae_run, refiner)
    nbrs_h = lambda moved, axis: len(moved) == 1 and axis[1] < 0 and refiner.system.topology.masses[moved[0]] < 2  # noqa: E731
    moves = _one_inner_kind(refiner, targets, box, nbrs_h)
    vectors = np.asarray(box, np.float64).reshape(3, 3)
    pos, cg = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(targets, dtype=torch.float64)
    rows = torch.arange(len(moves.kinds))
    h_slot = moves.masks[:, 0].int().argmax(1)
    h = moves.group.atoms[rows.numpy(), h_slot.numpy()]
    c = moves.axes[:, 0, 0].numpy()
    bond = (pos[h] - pos[c]).norm(dim=-1)
    z0 = (pos[h] - pos[c]) / bond[:, None]
    # a frame per unit with z along the start's C→H; the quadrature over the sphere in it
    e1 = torch.linalg.cross(z0, torch.tensor([[0.6, 0.8, 0.0]], dtype=torch.float64).expand_as(z0))
    e1 = e1 / e1.norm(dim=-1, keepdim=True)
    e2 = torch.linalg.cross(z0, e1)
    theta = (torch.arange(180, dtype=torch.float64) + 0.5) * np.pi / 180
    phi = torch.arange(180, dtype=torch.float64) * 2 * np.pi / 180
    start = refiner.targets.bind_unrotated(moves.group, pos, cg, vectors)
    local0 = start.local().double()
    cdf = []
    for t in theta:
        dirs = (torch.cos(t) * z0[:, None] + torch.sin(t) * (torch.cos(phi)[None, :, None] * e1[:, None]
                                                             + torch.sin(phi)[None, :, None] * e2[:, None]))
        lab = pos[c][:, None] + bond[:, None, None] * dirs  # (B, 180, 3)
        placements = local0[:, None].repeat(1, len(phi), 1, 1)
        placements[rows, :, h_slot] = lab - start.centre[:, None]
        cdf.append(torch.logsumexp(start.log_target(placements), 1) + torch.log(torch.sin(t)))
    mass = torch.softmax(torch.stack(cdf, 1), 1).numpy()  # (B, bins): each polar bin's probability
    below = np.cumsum(mass, 1) - mass  # the CDF at each bin's lower edge
    gen, us, accepted = torch.Generator().manual_seed(seed), [], 0
    for i in range(700):  # the first 100 moves are burn-in: the start sits where 300 K put it
        part = refiner.targets.bind_unrotated(moves.group, pos, cg, vectors)
        acc, new, invalid, _angle, kind = inner_move(part, moves, 0.3, gen)
        assert not invalid.any() and (kind == 0).all()
        pos[part.index[acc]] = part.to_lab(new)[acc]
        cos = (((pos[h] - pos[c]) / bond[:, None]) * z0).sum(-1).clamp(-1, 1)
        where = torch.arccos(cos).numpy() / (np.pi / len(theta))  # in bins; linear within a bin
        k = np.minimum(where.astype(int), len(theta) - 1)
        if i >= 100:
            us.append(below[rows.numpy(), k] + mass[rows.numpy(), k] * (where - k))
        accepted += int(acc.sum())
    z = _quartile_z(np.stack(us))
    assert accepted > 100, accepted
    assert np.abs(z).max() < 5, z
    assert torch.allclose((pos[h] - pos[c]).norm(dim=-1), bond, atol=1e-9)


def test_inner_cranks_sample_an_atom_and_its_hydrogens_about_their_partners_by_quadrature(vae_run):
    """An inner crank turns a carbon and its hydrogens about the line through its two bonded
    partners, the rest of the unit fixed: the same 1-D quadrature check as the turns'
    (:func:`_rotation_samples_quadrature`), with the heat bath among 8 angles spaced up to ±π and
    more apart (step 1 nm over a reach < 0.2 nm). Seeds 0–5 give |z| ≤ 3.2; a choice that ignores π
    (uniform among the candidates) fails at z = −105."""
    from backmap_vae.inner import inner_move

    refiner = _refiner(vae_run, temperature=1000)
    (x, targets), box = _frame(vae_run, refiner)
    heavy = lambda moved, axis: axis[1] >= 0 and (refiner.system.topology.masses[moved] > 2).sum() == 1  # noqa: E731
    moves = _one_inner_kind(refiner, targets, box, heavy)
    assert len(moves.kinds) >= 2
    with torch.no_grad():
        _rotation_samples_quadrature(refiner, x, targets, box, moves.group, moves.axes[:, 0].numpy(),
                                     moved=moves.masks[:, 0], move=lambda part, gen: inner_move(part, moves, 1.0, gen, 8))


def test_inner_kinds_move_what_no_held_bond_holds():
    """The inner moves of a unit: every hydrogen pivots about its carbon; an atom with its
    hydrogens is pivoted (held by one bond) or cranked (by two); a branch that hangs on an atom goes
    with it, or is carried along (a shift: the atom with its hydrogens rotated, the branch translated
    with it); a unit on one bond wobbles. Across a crank cluster's units only the moves that span
    two units are made: a CH with its ring, about its two backbone partners, rotated together or
    the ring carried. Kinds as (rotated atoms, axis, carried atoms)."""
    from backmap_vae.inner import inner_kinds, neighbours

    def kinds(row, nbrs, units=None):
        row = np.asarray(row)
        out = []
        for mask, axis, carried, anchor in inner_kinds(row, nbrs, units):
            assert mask[anchor]  # the atom whose displacement a shift's branch follows is rotated
            out.append((tuple(int(a) for a in row[mask]), axis,
                        () if carried is None else tuple(int(a) for a in row[carried])))
        return sorted(out)

    # a chain end: C0 (H 1–3) – C4 (H 5, 6) – C7 (outside the unit)
    nbrs = neighbours(np.array([[0, 1], [0, 2], [0, 3], [0, 4], [4, 5], [4, 6], [4, 7]]), 8)
    assert kinds([0, 1, 2, 3, 4, 5, 6, -1], nbrs) == sorted([
        ((1,), (0, -1), ()), ((2,), (0, -1), ()), ((3,), (0, -1), ()), ((5,), (4, -1), ()), ((6,), (4, -1), ()),
        ((0, 1, 2, 3), (4, -1), ()),  # the CH3 about C4
        ((4, 5, 6), (0, 7), ()),  # the CH2 cranked about its partners
        ((4, 5, 6), (7, -1), (0, 1, 2, 3)),  # the CH2 pivoted about C7, its CH3 carried along
        ((0, 1, 2, 3, 4, 5, 6), (7, -1), ())])  # the whole unit about the atom it hangs on
    # a backbone CH (1, H 2) between C0 and C3 carrying a three-membered "ring" 4–5–6 on atom 4
    nbrs = neighbours(np.array([[0, 1], [1, 3], [1, 2], [1, 4], [4, 5], [5, 6], [6, 4]]), 7)
    assert kinds([1, 2], nbrs) == [((2,), (1, -1), ())]  # held by three bonds, the CH alone cannot move
    cluster = kinds([1, 2, 4, 5, 6], nbrs, np.array([10, 10, 11, 11, 11]))
    assert cluster == [((1, 2), (0, 3), (4, 5, 6)), ((1, 2, 4, 5, 6), (0, 3), ())]


def test_crank_clusters_join_a_unit_and_the_units_hanging_on_it():
    """A unit held by two or more bonds is cranked with the units hanging on it, where that cluster is
    held by one bond (a turn about it) or two (a crankshaft); a lone hanger is the turns' business."""
    from backmap.sampling.sampler import UnitGroup
    from backmap_vae.rotations import crank_clusters, rotation_axis

    # units s0 … s4 in a row, two atoms each, and s5 hanging on s2
    atoms = [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11]]
    bonds = np.array([[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11], [1, 2], [3, 4], [5, 6], [7, 8], [4, 10]])
    groups = [UnitGroup("M", s, {"bead": s}, np.zeros(1, int), np.array([a]), np.array([s]), np.array([-1]), None)
              for s, a in enumerate(atoms)]
    assert crank_clusters(groups, bonds) == [("M", (1, 0)), ("M", (2, 5)), ("M", (3, 4))]
    assert rotation_axis(np.array([4, 5, 10, 11]), bonds) == (3, 6)  # a crankshaft: the two atoms outside
    assert rotation_axis(np.array([0, 1, 2, 3]), bonds) == (4, 3)  # one bond: (outside, inside)
    assert rotation_axis(np.array([4, 5]), bonds) is None  # three bonds to the rest


def _stacked_inner_groups(refiner, targets, box):
    """The inner moves in groups of every molecule's units decided one after the other
    (``local_decide: sequential``): the frame's plan steps stacked by colour."""
    from backmap_vae.blocks import step_groups
    from backmap_vae.inner import inner_group, neighbours
    from backmap_vae.local_groups import coloured_groups

    nbrs = neighbours(refiner.system.bonds[0], refiner.system.n_atoms)
    groups = refiner.targets.frame_groups(targets, box, interacting=True)
    return groups, [(g, inner_group(g, nbrs)) for g, _ in coloured_groups(refiner.targets, step_groups(groups))]


def test_local_groups_hold_every_unit_once_and_no_two_that_share_a_term(vae_run):
    """Stacked groups for sequential local moves: every unit of the frame in exactly one group, and
    no two units of a group joined by a bonded term, an excluded pair or a restrained bead (the
    terms the couplings leave out); hexane's three beads need three groups (A1 and A2 share a
    dihedral), each holding every molecule's bead."""
    refiner = _refiner(vae_run)
    (_x, targets), box = _frame(vae_run, refiner)
    groups, stacked = _stacked_inner_groups(refiner, targets, box)
    rows = np.concatenate([g.atoms[g.atoms >= 0] for g, _ in stacked])
    assert sorted(rows.tolist()) == sorted(np.concatenate([g.atoms[g.atoms >= 0] for g in groups]).tolist())
    assert [len(g.atoms) for g, _ in stacked] == [len(targets) // 3] * 3
    params = refiner.targets.ff.params
    for g, _ in stacked:
        owner = np.full(refiner.system.n_atoms, -1)
        for r, atoms in enumerate(g.atoms):
            owner[atoms[atoms >= 0]] = r
        for terms in [t.atoms for t in params.bonded.values() if len(t.atoms)] + [params.exclusions]:
            who = owner[np.asarray(terms).reshape(len(terms), -1)]
            first = np.where(who >= 0, who, who.max(1, keepdims=True)).min(1, keepdims=True)  # a unit it touches
            assert ((who < 0) | (who == first)).all(), "a term joins two units of one group"
        beads = [b for atoms in g.atoms for b in {b for a in atoms[atoms >= 0] for b in refiner.targets.bead_of_atom[int(a)]}]
        assert len(beads) == len(set(beads))


@torch.no_grad()
def test_sequential_local_decisions_are_those_of_one_unit_at_a_time(vae_run):
    """Local moves of a stacked group decided at once with their pair couplings
    (:meth:`BoundUnits.decide_in_turn`, compiled) make exactly the decisions of a scan that moves
    one unit at a time, each scored with the full local energy of that unit alone at the positions
    left by the units before it (same uniforms): turns of hexane's end beads by up to 1 rad, and
    inner moves (scored with the terms of their moved atoms only), 3 seeds each, 200 units per
    group at 300 K. The couplings matter: a decision that ignored them differs from the scan's in
    12 of the 1 200 turns."""
    from backmap.sampling.sampler import UnitGroup
    from backmap_vae.inner import inner_rotation
    from backmap_vae.rotations import rotation_groups, rotation_proposals, turn_geometry

    refiner = _refiner(vae_run)
    (x, targets), box = _frame(vae_run, refiner)
    bonds = np.asarray(refiner.system.bonds[0]).reshape(-1, 2)
    turns, _cranks = rotation_groups(refiner.targets, targets, box, bonds, apart=False)
    _groups, inner = _stacked_inner_groups(refiner, targets, box)
    assert [len(g.atoms) for g, _ in turns] == [len(targets) // 3] * 2
    pos = torch.as_tensor(x, dtype=torch.float64)
    cg = torch.as_tensor(targets, dtype=torch.float64)
    vectors = np.asarray(box, np.float64).reshape(3, 3)
    differ = 0
    for seed in range(3):
        for kind, group, how in [("turn", g, axes) for g, axes in turns] + [("inner", g, m) for g, m in inner]:
            part = refiner.targets.bind_unrotated(group, pos, cg, vectors)
            gen = torch.Generator().manual_seed(seed)
            if kind == "turn":
                (local, pivot, axis), moved, width = turn_geometry(part, how), part.index >= 0, 1.0
                carried = anchor = None
            else:  # shifts among them: their carried atoms move too
                local, pivot, axis, moved, width, _kind, carried, anchor = inner_rotation(part, how, 0.15, gen)
            _angles, placements = rotation_proposals(local, pivot, axis, moved, width, gen, 1, carried, anchor)
            moved = moved if carried is None else moved | carried
            logp = part.log_target(placements, None if kind == "turn" else moved)
            state = gen.get_state()
            accepted, invalid = part.decide_in_turn(local, placements[:, 1], moved, logp[:, 1] - logp[:, 0], gen)
            log_u = torch.log(torch.rand(len(local), generator=torch.Generator().set_state(state),
                                         dtype=torch.float64))
            assert not invalid.any() and 0.1 < float(accepted.double().mean()) < 0.9
            # the compiled scan, against the current state: the same decisions from the same uniforms
            compiled, compiled_invalid = part.scan_in_turn(placements[:, 1], moved, torch.Generator().set_state(state))
            assert torch.equal(compiled, accepted) and not compiled_invalid.any()
            scan = pos.clone()
            for k in range(len(local)):  # the reference: one unit at a time, full local energies
                one = UnitGroup(group.moltype, group.step, {**group.meta}, group.molecules[k:k + 1],
                                group.atoms[k:k + 1], group.bead[k:k + 1], group.predecessor[k:k + 1], None)
                lp = refiner.targets.bind_unrotated(one, scan, cg, vectors).log_target(placements[k:k + 1])[0]
                take = bool(log_u[k] < lp[1] - lp[0])
                assert take == bool(accepted[k]), f"{kind} {k}, seed {seed}: the scan says {take}"
                if take:
                    real = group.atoms[k] >= 0
                    scan[group.atoms[k][real]] = part.to_lab(placements[:, 1])[k][torch.as_tensor(real)]
            if kind == "turn":
                differ += int(((log_u < logp[:, 1] - logp[:, 0]) != accepted).sum())
    assert differ >= 5, f"{differ} decisions depended on a coupling: too few to test them"


@torch.no_grad()
def test_a_stacked_group_of_two_bead_types_moves_only_its_atoms_and_logs_each_type(vae_run):
    """Rows of two bead types of different widths in one group (sPS stacks its beads so; on hexane:
    the end bead of even molecules with the middle bead of odd ones): inner moves decided in turn
    move only the rows' own atoms (the padding never writes), keep every bond, and are logged per
    bead type."""
    from collections import defaultdict
    from dataclasses import replace

    from backmap_vae.blocks import step_groups
    from backmap_vae.inner import inner_group, inner_move, neighbours
    from backmap_vae.local_groups import stack
    from backmap_vae.refiner import _keep, _tally

    refiner = _refiner(vae_run, temperature=1000)
    (x, targets), box = _frame(vae_run, refiner)
    groups = refiner.targets.frame_groups(targets, box, interacting=True)
    end, middle = [g for g in step_groups(groups) if refiner.targets.label(g).endswith((":A1", ":B"))]

    def pick(g, parity):  # the group's units in molecules of one parity
        rows = g.molecules % 2 == parity
        return replace(g, molecules=g.molecules[rows], atoms=g.atoms[rows], bead=g.bead[rows],
                       predecessor=g.predecessor[rows], frame=None)

    group = stack([pick(end, 0), pick(middle, 1)], -1,
                  [refiner.targets.label(end), refiner.targets.label(middle)])
    widths = {end.atoms.shape[1], middle.atoms.shape[1]}
    assert len(widths) == 2 and (group.atoms == -1).any()  # padded rows
    moves = inner_group(group, neighbours(refiner.system.bonds[0], refiner.system.n_atoms))
    pos = torch.as_tensor(x, dtype=torch.float64)
    start = pos.clone()
    cg = torch.as_tensor(targets, dtype=torch.float64)
    vectors = np.asarray(box, np.float64).reshape(3, 3)
    gen = torch.Generator().manual_seed(0)
    tallies = defaultdict(lambda: [0, 0, 0])
    for _ in range(3):
        part = refiner.targets.bind_unrotated(group, pos, cg, vectors)
        acc, new, invalid, _angle, _kind = inner_move(part, moves, 0.05, gen, sequential=True)
        _keep(pos, part, new, acc)
        _tally(tallies, part, " inner", acc, invalid)
    mine = np.zeros(len(pos), bool)
    mine[group.atoms[group.atoms >= 0]] = True
    assert torch.equal(pos[~torch.as_tensor(mine)], start[~torch.as_tensor(mine)])
    assert (pos[torch.as_tensor(mine)] != start[torch.as_tensor(mine)]).any()
    bonds = np.asarray(refiner.system.bonds[0]).reshape(-1, 2)
    length = lambda p: (p[bonds[:, 0]] - p[bonds[:, 1]]).norm(dim=-1)  # noqa: E731
    assert float((length(pos) - length(start)).abs().max()) < 1e-9
    labels = [refiner.targets.label(end) + " inner", refiner.targets.label(middle) + " inner"]
    assert sorted(tallies) == sorted(labels)
    assert [tallies[lab][1] for lab in labels] == [3 * int((end.molecules % 2 == 0).sum()),
                                                   3 * int((middle.molecules % 2 == 1).sum())]
    assert all(tallies[lab][0] > 0 for lab in labels)
    first = torch.arange(len(acc)) < int((end.molecules % 2 == 0).sum())  # only the end beads' rows made a move
    some = defaultdict(lambda: [0, 0, 0])
    _tally(some, part, " inner", acc, invalid, first)
    assert list(some) == labels[:1] and some[labels[0]][1] == int(first.sum())


def test_inner_shifts_sample_their_angle_by_quadrature(vae_run):
    """A shift: hexane's CH₂ of an end bead with its hydrogens turned about a fixed line through the
    next carbon (and the one after), its CH₃ carried along by the CH₂'s displacement. The family is
    a one-parameter group that keeps volume, so the angle has the 1-D density ∝ π along the orbit
    (:func:`_rotation_samples_quadrature`, heat bath among 8 angles); every bond is kept. Seeds 0–5
    give |z| ≤ 3.1; carrying the CH₃ by the wrong atom's displacement (a hydrogen's) fails the bond
    check, and ignoring π in the choice fails at z = −170."""
    _shift_quadrature(vae_run, seed=0)


def _shift_quadrature(vae_run, seed: int, anchor_of=None) -> np.ndarray:
    """:func:`test_inner_shifts_sample_their_angle_by_quadrature` with a seed; its quartile z."""
    from backmap_vae.inner import InnerGroup, inner_group, inner_move, neighbours
    from backmap_vae.rotations import turned

    refiner = _refiner(vae_run, temperature=1000)
    (x, targets), box = _frame(vae_run, refiner)
    nbrs = neighbours(refiner.system.bonds[0], refiner.system.n_atoms)
    heavy = refiner.system.topology.masses > 2
    best = None
    for g in refiner.targets.frame_groups(targets, box, interacting=False):
        moves = inner_group(g, nbrs)
        if moves is None or moves.carried is None:
            continue
        rows, kinds = np.nonzero(moves.carried.any(-1).numpy())
        if len(set(rows.tolist())) == len(g.atoms) and (best is None or len(g.atoms) > len(best[0].atoms)):
            best = (g, moves, kinds[np.unique(rows, return_index=True)[1]])
    assert best is not None
    group, moves, kind = best
    rows = torch.arange(len(group.atoms))
    kind = torch.as_tensor(kind)
    masks, carried, anchors = moves.masks[rows, kind], moves.carried[rows, kind], moves.anchors[rows, kind]
    if anchor_of is not None:  # a mutant's anchor
        anchors = anchor_of(masks, anchors)
    axes = moves.axes[rows, kind].clone()
    assert (axes[:, 1] < 0).all()  # on hexane a pivot about the next carbon: fix its line through the one after
    axes[:, 1] = torch.as_tensor([next(n for n in nbrs[int(p)] if heavy[n] and n not in group.atoms[u])
                                  for u, p in enumerate(axes[:, 0])])
    one = InnerGroup(group, masks[:, None], axes[:, None], torch.ones(len(rows), dtype=torch.long), carried[:, None],
                     anchors[:, None])

    def orbit(local, pivot, axis, g):
        new = turned(local, pivot, axis, torch.full((len(local),), g))
        shift = (new[rows, anchors] - local[rows, anchors])[:, None]
        return torch.where(masks[..., None], new, torch.where(carried[..., None], local + shift, local))

    with torch.no_grad():
        return _rotation_samples_quadrature(refiner, x, targets, box, group, axes.numpy(), seed, orbit=orbit,
                                            move=lambda part, gen: inner_move(part, one, 1.0, gen, 8))
