"""Restrained refinement: the OpenMM refiner against backmap's own force field, the restraint's
statistics, constraints, and the ``refine`` command / recipe step on the hexane test data."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
import yaml

from backmap.forcefield import ForceField, NonbondedSettings
from backmap.system.io import Frame, read_frames, write_frames
from backmap.engine.loaders import load_mapping
from backmap.engine.loaders import make_plugin
from backmap.refinement.restrained import BOLTZMANN, RestrainedSystem
from backmap.engine.loaders import load_topology
from conftest import HEXANE

pytest.importorskip("openmm")

# a short cut-off keeps the tests fast: OpenMM evaluates OPLS's geometric LJ rule as a (slow) custom force
SETTINGS = NonbondedSettings(rvdw=0.6, rcoulomb=0.6, coulomb="reaction-field", epsilon_rf=1.0)


@pytest.fixture(scope="module")
def system() -> RestrainedSystem:
    top = load_topology(HEXANE / "topol.top")
    return RestrainedSystem(load_mapping([HEXANE / "hexane.xml"], top).cg_topology(top), HEXANE / "topol.top",
                            SETTINGS)


@pytest.fixture(scope="module")
def frame(system):
    """A hexane frame (whole molecules) and its own CG image as restraint targets."""
    aa = next(read_frames(HEXANE / "traj.xtc", frames=[3]))
    cg = Frame(system.mapped(system.whole(aa.positions, aa.dimensions)), aa.dimensions, index=3)
    x, targets = system.prepare(aa, cg)
    return x, targets, aa.box


def test_openmm_forces_match_backmap_forcefield(system, frame):
    """The GROMACS topology read by OpenMM gives the same forces as backmap's force field (itself
    checked against GROMACS): same topology conversion, cut-off and reaction field."""
    x, targets, box = frame
    refiner = make_plugin("refiner", "openmm", {"constraints": "none", "threads": 1})
    refiner.prepare(system)
    shifted = targets + 0.01  # a restraint that pulls: its forces must match too
    u_omm, r_omm, f_omm = refiner.energy_forces(x, shifted, box)
    ff = ForceField(system.topology, SETTINGS, dtype=torch.float64)
    xt = torch.as_tensor(x[None]).requires_grad_(True)
    dims = np.array([[*np.linalg.norm(box, axis=1), 90.0, 90.0, 90.0]])
    restraint = system.restraint_energy(xt, torch.as_tensor(shifted[None]), refiner.params.restraint)
    total = ff.energy(xt, dims).total + restraint
    f_ours = -torch.autograd.grad(total.sum(), xt)[0][0].numpy()
    assert np.abs(f_omm - f_ours).max() < 0.05  # kJ/mol/nm, out of forces of ~10³
    assert np.linalg.norm(f_omm - f_ours) / np.linalg.norm(f_ours) < 1e-5
    assert r_omm == pytest.approx(float(restraint.detach()), rel=1e-6)
    assert r_omm == pytest.approx(0.5 * refiner.params.restraint * 0.01 ** 2 * 3 * system.n_beads, rel=1e-6)


def test_restraint_holds_beads_with_thermal_spread(system, frame):
    """After dynamics at T under ½k|M(x) − R|², each bead's deviation has ⟨|d|²⟩ ≈ 3k_BT/k when the
    restraint is much stiffer than the molecule: the mean restraint energy is ≈ 3/2 k_BT per bead;
    bonds to hydrogen stay at their constrained lengths."""
    x, targets, box = frame
    k, temperature = 2.0e5, 300.0
    refiner = make_plugin("refiner", "openmm", {"temperature": temperature, "steps": 200, "restraint": k, "friction": 20.0,
                                      "timestep": 0.001, "constraints": "h-bonds", "threads": 1, "minimize_steps": 0})
    refiner.prepare(system)
    result = refiner.refine(x[None], targets[None], box[None], np.random.default_rng(0))
    y = result.positions[0]
    kt = BOLTZMANN * temperature
    per_bead = result.log[0]["restraint"] / system.n_beads
    # slightly below 1: the molecule's own stiffness narrows the bead's spread a little (0.93 measured)
    assert 0.85 < per_bead / (1.5 * kt) < 1.1
    rmsd = float(system.cg_rmsd(y, targets))
    assert 0.9 < rmsd / np.sqrt(3 * kt / k) < 1.05
    pairs, lengths = system.constrained_bonds("h-bonds")
    assert len(pairs) == 14 * 200
    assert np.abs(np.linalg.norm(y[pairs[:, 0]] - y[pairs[:, 1]], axis=1) - lengths).max() < 1e-5
    assert 250 < result.log[0]["temperature"] < 350
    assert np.median(np.linalg.norm(y - x, axis=1)) > 0.01  # it moved


def test_refine_command_writes_trajectory_log_and_plot(system, tmp_path, cli):
    aa = tmp_path / "aa.xtc"
    cg = tmp_path / "cg.xtc"
    frames = list(read_frames(HEXANE / "traj.xtc", frames=[0, 5]))
    write_frames(aa, frames, system.topology.atom_names, system.topology.resnames, system.topology.residue_numbers())
    ct = system.cg_topology
    write_frames(cg, [Frame(system.mapped(system.whole(f.positions, f.dimensions)), f.dimensions, index=f.index)
                      for f in frames], ct.bead_names, ct.resnames, ct.resids)
    out = tmp_path / "out" / "refined.xtc"
    code, stdout, stderr = cli("refine", "--topology", HEXANE / "topol.top", "--mapping", HEXANE / "hexane.xml",
                               "--cg", cg, "--traj", aa, "--out", out, "--temperature", 300, "--steps", 20, "--minimize", 10,
                               "--cutoff", 0.6,
                               "--param", "threads=1", "--seed", 1)
    assert code == 0, stderr
    assert "2 frames" in stdout
    refined = list(read_frames(out))
    assert len(refined) == 2
    rows = list(csv.DictReader(open(out.with_name("refined.log.csv"))))
    assert [int(r["frame"]) for r in rows] == [0, 1]
    assert all(float(r["cg_rmsd"]) < 0.02 for r in rows)
    assert out.with_name("refined.log.png").stat().st_size > 1000

    # frame counts that do not pair up are an error naming the file, and nothing is written
    one = tmp_path / "one.gro"
    write_frames(one, frames[:1], system.topology.atom_names, system.topology.resnames,
                 system.topology.residue_numbers())
    bad = tmp_path / "bad.xtc"
    code, _, stderr = cli("refine", "--topology", HEXANE / "topol.top", "--mapping", HEXANE / "hexane.xml",
                          "--cg", cg, "--traj", one, "--out", bad)
    assert code == 2 and "1 AA frames but 2 CG frames" in stderr and not bad.exists()
    code, _, stderr = cli("refine", "--topology", HEXANE / "topol.top", "--mapping", HEXANE / "hexane.xml",
                          "--cg", cg, "--traj", aa, "--out", bad, "--refiner", "nosuch")
    assert code == 2 and "nosuch" in stderr
    code, _, stderr = cli("refine", "--topology", HEXANE / "topol.top", "--mapping", HEXANE / "hexane.xml",
                          "--cg", cg, "--traj", aa, "--out", bad, "--param", "constraint=all")
    assert code == 2 and "constraint" in stderr and "constraints" in stderr  # did-you-mean


def test_refine_step_in_a_recipe(tmp_path, cli):
    """prepare → train (template) → backmap → refine, on the hexane test data."""
    data = tmp_path / "data"
    shutil.copytree(HEXANE, data)
    recipe = {
        "name": "refine-test", "seed": 3, "workdir": str(tmp_path / "run"),
        "system": {"topology": str(data / "topol.top"), "mapping": str(data / "hexane.xml")},
        "data": {"trajectory": str(data / "traj.xtc"), "split": {"test_fraction": 0.2}},
        "generator": {"plugin": "template"},
        "refiners": [{"plugin": "openmm", "params": {"temperature": 300, "steps": 20, "minimize_steps": 10,
                                                          "threads": 1}}],
        "steps": [{"prepare": {}}, {"train": {}}, {"backmap": {"candidates": 1, "gibbs_sweeps": 0}},
                  {"refine": {"frames": "0:1", "mdp": str(tmp_path / "short.mdp"),
                              "aa": "workdir:backmap/aa.xtc"}}],  # a file the backmap step writes
    }
    (tmp_path / "short.mdp").write_text("coulombtype = reaction-field\nrcoulomb = 0.6\nrvdw = 0.6\n")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code, stdout, stderr = cli("run", path)
    assert code == 0, stderr
    out = tmp_path / "run" / "refine" / "aa.xtc"
    assert len(list(read_frames(out))) == 1
    report = (tmp_path / "run" / "report.md").read_text()
    assert "refine" in report and "CG RMSD after" in report

    # the trained model applied with --refine: backmapped and refined in one command
    applied = tmp_path / "applied.gro"
    code, stdout, stderr = cli("apply", "--model", tmp_path / "run", "--cg", tmp_path / "run" / "backmap" / "aa_cg.trr",
                               "--frames", "0:1", "--candidates", 1, "--gibbs", 0, "--out", applied,
                               "--refine", "openmm", "--steps", 10, "--temperature", 300,
                               "--mdp", tmp_path / "short.mdp", "--param", "threads=1", "--param", "minimize_steps=10")
    assert code == 0, stderr
    provenance = json.loads((tmp_path / "applied.json").read_text())
    assert provenance["refiner"]["plugin"] == "openmm" and provenance["summary"]["refiner"] == "openmm"
    assert len(list(read_frames(applied))) == 1
    assert len(list(read_frames(tmp_path / "applied_unrefined.gro"))) == 1  # the generator's own output
    assert (tmp_path / "applied_refine.csv").is_file() and (tmp_path / "applied_refine.png").is_file()

    # the model package copied elsewhere (it carries its topology and mapping)
    shipped = tmp_path / "shipped" / "sps-like"
    shipped.mkdir(parents=True)
    shutil.copytree(tmp_path / "run" / "model", shipped, dirs_exist_ok=True)
    code, _, stderr = cli("apply", "--model", shipped, "--cg", tmp_path / "run" / "backmap" / "aa_cg.trr",
                          "--frames", "0:1", "--candidates", 1, "--gibbs", 0, "--out", tmp_path / "shipped.gro")
    assert code == 0, stderr
    # a stereo reference that is not the AA system: refused before any work, naming the file
    code, _, stderr = cli("apply", "--model", shipped, "--cg", tmp_path / "run" / "backmap" / "aa_cg.trr",
                          "--stereo-reference", tmp_path / "run" / "backmap" / "aa_cg.trr", "--out", tmp_path / "stereo.gro")
    assert code != 0 and "aa_cg.trr" in stderr and "atoms" in stderr and not (tmp_path / "stereo.gro").exists()

    recipe["refiners"] = []
    path.write_text(yaml.safe_dump(recipe))
    code, _, stderr = cli("run", path, "--steps", "refine")
    assert code == 2 and "no 'refiners'" in stderr


def test_openmm_repairs_clashes_and_misplaced_molecules(system, frame):
    """Generator-like damage: one molecule moved 1 nm off its beads (recentred first), another
    squeezed onto its neighbour (clashes), a stretched bond — the refiner's minimization, flexible
    relaxation and constraint projection bring every frame back to the CG input with exact bonds."""
    x, targets, box = frame
    bad = x.copy()
    n = system.topology.blocks[0].moltype.n_atoms
    bad[0:n] += np.array([1.0, 0.0, 0.0])                     # molecule 0: 1 nm off
    bad[n:2 * n] = 0.5 * (bad[n:2 * n] + bad[2 * n:3 * n])     # molecule 1 pushed halfway into molecule 2
    bad[3 * n + 1] += 0.05                                     # a C–H bond of molecule 3 stretched by 0.05 nm
    refiner = make_plugin("refiner", "openmm", {"temperature": 300, "steps": 50, "constraints": "h-bonds", "threads": 1,
                                      "relax_steps": 50, "timestep": 0.002, "minimize_steps": 50})
    refiner.prepare(system)
    moved, shift = system.recentre(bad, targets)
    assert shift > 0.95  # the largest molecule shift: molecule 0 (or the squeezed one)
    result = refiner.refine(moved[None], targets[None], box[None], np.random.default_rng(1))
    y = result.positions[0]
    assert "failed" not in result.log[0]
    assert float(system.cg_rmsd(y, targets)) < 0.02
    pairs, lengths = system.constrained_bonds("h-bonds")
    assert np.abs(np.linalg.norm(y[pairs[:, 0]] - y[pairs[:, 1]], axis=1) - lengths).max() < 1e-5
    assert result.log[0]["potential"] < 0.5 * refiner.energy_forces(moved, targets, box)[0]


def test_openmm_escalates_until_a_badly_damaged_frame_survives(system, frame):
    """Damage that blows up the dynamics at the time step and at half of it (no minimization, no
    warm-up; a molecule squeezed into its neighbour, a C–H bond stretched by 0.5 nm): the last retry
    — minimization and a flexible relaxation with a growing restraint first — refines it; without
    that retry the frame is reported failed and kept as it was."""
    x, targets, box = frame
    n = system.topology.blocks[0].moltype.n_atoms
    bad = x.copy()
    bad[n:2 * n] = 0.5 * (bad[n:2 * n] + bad[2 * n:3 * n])
    bad[3 * n + 1] += 0.3
    base = {"temperature": 300, "steps": 20, "constraints": "h-bonds", "threads": 1, "minimize_steps": 0,
            "warmup_steps": 0, "timestep": 0.002, "on_failure": "keep"}
    for extra, rescued in (({}, True), ({"retry_relax_steps": 0}, False)):
        refiner = make_plugin("refiner", "openmm", base | extra)
        refiner.prepare(system)
        result = refiner.refine(bad[None], targets[None], box[None], np.random.default_rng(1))
        y, row = result.positions[0], result.log[0]
        if rescued:
            assert row.get("retried") == 2 and "failed" not in row
            assert float(system.cg_rmsd(y, targets)) < 0.02
            pairs, lengths = system.constrained_bonds("h-bonds")
            assert np.abs(np.linalg.norm(y[pairs[:, 0]] - y[pairs[:, 1]], axis=1) - lengths).max() < 1e-5
        else:
            assert "failed" in row
            np.testing.assert_array_equal(y, bad)


def test_openmm_stiff_bond_sampling_ends_on_the_constraints(system, frame):
    """``stiff_bonds`` (the last retry, and a mode of its own) samples without OpenMM's constraint
    solver — bonds stiffened, a quarter of the time step — and projects onto the constraints at
    the end: bond lengths exact, beads on the CG input, a temperature near the target."""
    x, targets, box = frame
    refiner = make_plugin("refiner", "openmm", {"temperature": 300, "steps": 25, "constraints": "h-bonds", "threads": 1,
                                      "timestep": 0.002, "minimize_steps": 20, "relax_steps": 100, "stiff_bonds": True})
    refiner.prepare(system)
    result = refiner.refine(x[None], targets[None], box[None], np.random.default_rng(2))
    y, row = result.positions[0], result.log[0]
    assert row["stiff_bonds"] and "failed" not in row and "retried" not in row
    pairs, lengths = system.constrained_bonds("h-bonds")
    assert np.abs(np.linalg.norm(y[pairs[:, 0]] - y[pairs[:, 1]], axis=1) - lengths).max() < 1e-5
    assert float(system.cg_rmsd(y, targets)) < 0.02
    assert 150 < row["temperature"] < 450
    assert np.abs(y - x).max() > 0.01  # it moved


def test_openmm_frame_depends_only_on_its_own_stream(system, frame):
    """A frame refined with a given random stream comes out the same from a fresh refiner and from
    one that refined another frame first (OpenMM reads an integrator's seed only when its Context is
    made): what makes frame-parallel runs independent of the number of workers (docs/scale-out.md)."""
    x, targets, box = frame
    params = {"constraints": "h-bonds", "threads": 1, "steps": 20, "minimize_steps": 10, "temperature": 300}
    fresh = make_plugin("refiner", "openmm", params)
    fresh.prepare(system)
    used = make_plugin("refiner", "openmm", params)
    used.prepare(system)
    used.refine(x[None], targets[None], box[None], np.random.default_rng(1))
    a = fresh.refine(x[None], targets[None], box[None], np.random.default_rng(2)).positions
    b = used.refine(x[None], targets[None], box[None], np.random.default_rng(2)).positions
    c = used.refine(x[None], targets[None], box[None], np.random.default_rng(3)).positions
    assert np.array_equal(a, b) and not np.allclose(a, c)


def test_stalled_unit_types_names_the_types_that_almost_never_move():
    """The vae_mc log of the voxel GAN's sPS output (docs/vae-sps.md): B10 accepted 0.005 of its moves;
    the warning names it (and a schedule stage's), not the types that move, and skips failed frames."""
    from backmap.refinement.restrained import STALLED_ACCEPTANCE, stalled_unit_types

    rows = [{"acceptance": 0.28, "acceptance[PS1:B1]": 0.49, "acceptance[PS1:B10]": 0.012},
            {"acceptance": 0.21, "acceptance[PS1:B1]": 0.43, "acceptance[PS1:B10]": 0.0},
            {"failed": True, "acceptance[PS1:B1]": 0.0}]
    line = stalled_unit_types(rows)
    assert line is not None and "PS1:B10 0.006" in line and "B1 " not in line
    assert stalled_unit_types(rows[:1]) is None                      # 0.012 is above the threshold
    assert stalled_unit_types([{"acceptance": 0.0}]) is None         # no per-type columns: nothing to say
    schedule = [{"0:vae_mc:acceptance[PS1:S10]": STALLED_ACCEPTANCE / 2, "1:mala:acceptance": 0.0}]
    assert "PS1:S10 (0:vae_mc)" in stalled_unit_types(schedule)
