"""Shared fixtures: the project's own test data, the shared reference sets, external programs."""
from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

os.environ.setdefault("BACKMAP_NO_PROGRESS", "1")

DATA = Path(__file__).parent / "data"
HEXANE = DATA / "hexane"
TRICLINIC = DATA / "hexane_triclinic"
REPO = Path(__file__).parent.parent
SHARED = REPO.parent / "shared" / "data"


@pytest.fixture
def shared() -> Path:
    """The large reference sets beside the repo (present in CI; skipped where absent)."""
    if not SHARED.is_dir():
        pytest.skip(f"reference data {SHARED} not present")
    return SHARED


def need(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{program} must be installed in CI (.ci/run installs it)")
        pytest.skip(f"{program} not installed (apt-get install gromacs votca)")
    return path


@pytest.fixture(scope="session")
def hexane_topology():
    from backmap.engine.loaders import load_topology

    return load_topology(HEXANE / "topol.top")


def chiral_molecules(seed: int = 2):
    """tests/data/chiral's 27 CHFClBr molecules, one enantiomer, on a 3×3×3 grid in a 3 nm box, each
    randomly rotated (rotations keep the hand): positions (135, 3) nm."""
    import numpy as np

    rng = np.random.default_rng(seed)
    t = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / np.sqrt(3)
    lengths = np.array([0.109, 0.135, 0.177, 0.194])[:, None]
    mols = []
    for centre in np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3):
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        q *= np.sign(np.linalg.det(q))  # a proper rotation
        mols.append(0.5 + centre + np.vstack([[0, 0, 0], t * lengths]) @ q.T)
    return np.concatenate(mols)


def system_frame(folder: Path, mapping: str, trajectory: str, index: int = 0):
    """A committed system's topology, its CG topology, frame ``index`` of ``trajectory`` whole
    (N, 3) and the frame itself."""
    from backmap.engine.loaders import load_mapping, load_topology
    from backmap.system.io import read_frames
    from backmap.system.pbc import Unwrapper

    topo = load_topology(folder / "topol.top")
    cg = load_mapping(folder / mapping, topo).cg_topology(topo)
    fr = list(read_frames(folder / trajectory))[index]
    return topo, cg, Unwrapper(topo)(fr.positions, fr.dimensions), fr


@pytest.fixture(scope="session")
def hexane_frame():
    """The hexane topology, its CG topology, the first frame whole (N, 3) and the frame itself."""
    return system_frame(HEXANE, "hexane.xml", "traj.xtc")


@pytest.fixture(scope="session")
def hexane_tpr():
    from backmap.engine.loaders import load_topology

    return load_topology(HEXANE / "topol.tpr")


def run_cli(*args, catch_exceptions: bool = True) -> tuple[int, str, str]:
    """Run the real ``backmap`` command line in-process; returns (exit code, stdout, stderr).
    ``catch_exceptions=False`` lets a crash surface as its traceback (for fixtures that build on a run)."""
    from backmap.cli import cli as app

    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=catch_exceptions)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def cli():
    """:func:`run_cli` as a fixture."""
    return run_cli


@pytest.fixture(scope="session")
def template_model(tmp_path_factory) -> Path:
    """A run folder with the template baseline trained on the shipped hexane frames (``model/``)
    and its 4 backmapped test frames (``backmap/aa_cg.trr`` is CG input of the mapping)."""
    tmp = tmp_path_factory.mktemp("template")
    recipe = tmp / "r.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: tpl
        seed: 3
        workdir: run
        system: {{topology: {HEXANE / 'topol.top'}, mapping: {HEXANE / 'hexane.xml'}}}
        data: {{trajectory: {HEXANE / 'traj.xtc'}, frames: '0:20', split: {{test_fraction: 0.2, mode: tail}}}}
        generator: {{plugin: template, params: {{kick: 0.004}}}}
        steps: [{{prepare: {{}}}}, {{train: {{}}}}, {{backmap: {{candidates: 2, gibbs_sweeps: 0}}}}]
        """))
    code, _, err = run_cli("run", recipe, catch_exceptions=False)
    assert code == 0, err
    return tmp / "run"


def one_line_error(code: int, err: str) -> str:
    """The error line: exit 2, no traceback, one ``error:`` line, last (``run`` prints step rules before)."""
    assert code == 2, err
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == lines[-1:] and "Traceback" not in err, err
    return errors[0]


def tcs_in_hexane_beads(path: Path) -> Path:
    """Tetracosane in hexane's beads: 12 beads of two carbons and their hydrogens, the chain ends
    type A (CH3–CH2, as hexane's ends), the rest type B (CH2–CH2, as hexane's middle)."""
    beads = []
    for k in range(12):
        carbons = (2 * k + 1, 2 * k + 2)
        hydrogens = [f"H{c}{x}" for c in carbons for x in ("ABC" if c in (1, 24) else "AB")]
        atoms = " ".join(f"1:TCS:{a}" for a in [f"C{c}" for c in carbons] + hydrogens)
        kind = "A" if k in (0, 11) else "B"
        beads.append(f"<cg_bead><name>P{k + 1}</name><type>{kind}</type><mapping>{kind}{len(hydrogens)}</mapping>"
                     f"<beads>{atoms}</beads></cg_bead>")
    maps = "".join(f"<map><name>{kind}{n}</name><weights>{' '.join(['12.011'] * 2 + ['1.008'] * n)}</weights></map>"
                   for kind, n in (("A", 5), ("B", 4)))
    bonds = " ".join(f"P{k + 1} P{k + 2}" for k in range(11))
    path.write_text(f"<cg_molecule><name>TCS</name><ident>TCS</ident><topology><cg_beads>{''.join(beads)}</cg_beads>"
                    f"<cg_bonded><bond><name>b</name><beads>{bonds}</beads></bond></cg_bonded></topology>"
                    f"<maps>{maps}</maps></cg_molecule>")
    return path


#: tests left out of the fast tier (`bash scripts/test.sh`; `--all` runs them): each took 8 s or more
#: with --durations=0 on 2 busy cores; per file, the test functions (every parametrization)
SLOW: dict[str, frozenset[str]] = {
    "test_assess.py": frozenset({
        "test_assess_ranks_the_good_model_first_beyond_the_spread_over_halves",
        "test_the_command_reuses_finished_sets_and_gives_the_same_numbers",
    }),
    "test_bond_check.py": frozenset({
        "test_no_check_without_bond_parameters",
    }),
    "test_contract.py": frozenset({
        "test_conformance_kit_passes_on_built_in_generators",
        "test_refined_multi_frame_structure_output_refines_every_frame",
    }),
    "test_data_free.py": frozenset({
        "test_data_free_run_trains_tempers_and_backmaps",
        "test_importance_weighted_entropy_runs_on_the_vae_generator",
        "test_temperature_is_an_input_of_a_model_trained_over_a_range",
        "test_thermalize_runs_the_refiner_on_the_minimized_starting_pool",
    }),
    "test_distributed_training.py": frozenset({
        "test_two_processes_follow_the_one_process_loss_curve",
    }),
    "test_equivariant.py": frozenset({
        "test_a_hexane_model_backmaps_tetracosane",
        "test_conformance_kit_passes",
        "test_energy_guidance_lowers_the_energy_and_keeps_bonds_and_cg",
        "test_the_hand_comes_from_the_training_data",
        "test_the_models_sampling_settings_apply_unless_given",
    }),
    "test_evaluate.py": frozenset({
        "test_perturbed_candidate_scores_worse_than_the_reference",
    }),
    "test_example_plugin.py": frozenset({
        "test_a_model_pack_installed_with_pip_is_listed_and_applies_by_name",
        "test_a_move_plugin_installed_with_pip_moves_every_frame",
        "test_example_plugin_installs_trains_backmaps_and_evaluates",
    }),
    "test_forcefield.py": frozenset({
        "test_forces_are_the_gradient",
        "test_hexane_opls_matches_gromacs",
        "test_hexane_pme_matches_gromacs",
        "test_triclinic_plain_cutoff_matches_gromacs",
    }),
    "test_fuzz.py": frozenset({
        "test_fuzz_check",
        "test_fuzz_run_prepare",
    }),
    "test_group_energies.py": frozenset({
        "test_non_interacting_groups_add_up_and_give_the_energy_change",
    }),
    "test_hardening_files.py": frozenset({
        "test_corrupt_pairs_cache_is_rebuilt_with_a_note",
    }),
    "test_hardening_refine.py": frozenset({
        "test_openmm_refiner_runs_pme_from_the_mdp",
    }),
    "test_latent_moves.py": frozenset({
        "test_chain_from_the_wrong_well_reaches_the_target",
        "test_sequential_moves_of_interacting_systems_are_exact",
    }),
    "test_local_mc.py": frozenset({
        "test_each_move_changes_the_total_energy_by_its_delta",
        "test_moves_accepted_in_turn_see_the_moves_before_them",
    }),
    "test_model_packages.py": frozenset({
        "test_shipped_sps_models_are_listed_shown_and_apply_from_anywhere",
        "test_the_card_is_written_at_training_and_kept_by_evaluate",
    }),
    "test_molecule_vae.py": frozenset({
        "test_vae_monte_carlo",
    }),
    "test_parallel.py": frozenset({
        "test_a_worker_killed_mid_frame_loses_and_duplicates_nothing",
        "test_an_interrupted_apply_resumes_from_the_frames_already_written",
        "test_apply_and_evaluate_on_a_running_scheduler",
        "test_output_is_byte_identical_with_one_and_two_workers",
        "test_recipe_cluster_key_runs_the_backmap_step_on_workers",
        "test_refine_on_workers_equals_one_worker",
        "test_the_serial_path_gives_the_workers_result",
    }),
    "test_refine.py": frozenset({
        "test_openmm_escalates_until_a_badly_damaged_frame_survives",
        "test_openmm_frame_depends_only_on_its_own_stream",
        "test_openmm_repairs_clashes_and_misplaced_molecules",
        "test_openmm_stiff_bond_sampling_ends_on_the_constraints",
        "test_refine_command_writes_trajectory_log_and_plot",
        "test_refine_step_in_a_recipe",
        "test_restraint_holds_beads_with_thermal_spread",
    }),
    "test_refine_exact.py": frozenset({
        "test_constrained_trimer_samples_the_mass_weighted_surface_measure",
        "test_fixman_potential_gives_the_stiff_spring_measure",
        "test_ghmc_samples_the_constrained_chain_angle_measure",
        "test_rigid_dimer_orientation_uniform_and_centre_gaussian",
        "test_sprung_bond_has_the_spring_density",
    }),
    "test_reverse_kl.py": frozenset({
        "test_a_killed_run_resumes_bit_identically",
        "test_double_well_mixture_prior_keeps_the_minor_mode",
        "test_double_well_reverse_kl_learns_the_major_mode_without_data",
    }),
    "test_sampler.py": frozenset({
        "test_regrow_trials_keep_each_molecules_lowest_energy",
    }),
    "test_temporal.py": frozenset({
        "test_trajectory_mode_goes_on_from_the_previous_frame_and_resumes_identically",
    }),
    "test_topology.py": frozenset({
        "test_gro_topology_guesses_bonds_and_molecules",
    }),
    "test_training_systems.py": frozenset({
        "test_a_recipe_trains_on_two_systems_and_backmaps_another",
    }),
    "test_vae.py": frozenset({
        "test_a_local_move_kind_with_nothing_to_move_is_named_once",
        "test_decoder_density_is_the_density_of_its_draws",
        "test_frames_in_lockstep_each_sample_their_own_frame",
        "test_inner_cranks_sample_an_atom_and_its_hydrogens_about_their_partners_by_quadrature",
        "test_inner_moves_keep_every_bond_and_move_every_bead_type",
        "test_inner_pivots_sample_a_hydrogen_on_its_sphere_by_quadrature",
        "test_local_target_is_the_restrained_energy_difference",
        "test_minimize_after_relaxes_the_chain_mid_run_then_samples",
        "test_refine_step_gives_vae_mc_the_backmapped_model_inside_a_schedule",
        "test_refiner_moves_blocks_and_names_bad_ones",
        "test_refiner_moves_units_and_logs_acceptance",
        "test_sequential_local_decisions_are_those_of_one_unit_at_a_time",
        "test_stereo_reference_takes_inverted_centres_back",
        "test_turn_moves_sample_the_turn_angle_by_quadrature",
        "test_vae_every_leaves_the_network_moves_to_every_nth_sweep",
    }),
    "test_voxel_gan.py": frozenset({
        "test_recipe_trains_and_backmaps_hexane",
        "test_tiny_training_lowers_the_wasserstein_estimate",
    }),
}


def pytest_collection_modifyitems(config, items):
    """Mark the tests of :data:`SLOW` ``slow`` (the fast tier deselects them with ``-m "not slow"``)."""
    for item in items:
        if getattr(item, "originalname", item.name) in SLOW.get(item.path.name, ()):
            item.add_marker(pytest.mark.slow)
