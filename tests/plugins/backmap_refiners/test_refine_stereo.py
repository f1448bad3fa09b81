"""The openmm refiner keeps a stereo reference's hands: a one-sided improper restraint per centre
and, at the end, each centre still inverted reflected back (tests/data/chiral: 27 CHFClBr)."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import DATA, chiral_molecules

from backmap.engine.loaders import load_mapping, load_topology, make_plugin
from backmap.forcefield import NonbondedSettings
from backmap.refinement.restrained import RestrainedSystem
from backmap.sampling.chirality import chiral_centres
from backmap.system.io import Frame, write_frames

pytest.importorskip("openmm")

CHIRAL = DATA / "chiral"
BOX = np.eye(3) * 3.0


@pytest.fixture(scope="module")
def chiral(tmp_path_factory):
    top = load_topology(CHIRAL / "chiral.top")
    system = RestrainedSystem(load_mapping([CHIRAL / "chiral.xml"], top).cg_topology(top), CHIRAL / "chiral.top",
                              NonbondedSettings(rvdw=0.9, rcoulomb=0.9, coulomb="cutoff"))
    x = chiral_molecules()
    reference = tmp_path_factory.mktemp("stereo") / "reference.gro"
    write_frames(reference, [Frame(x, np.array([3.0, 3.0, 3.0, 90, 90, 90]))], top.atom_names, top.resnames,
                 top.residue_numbers())
    mirrored = x.copy()
    for m in range(0, 27, 2):  # 14 molecules mirrored through their carbon: every one of their centres inverted
        mol = slice(5 * m, 5 * m + 5)
        mirrored[mol] = 2 * x[5 * m] - x[mol]
    return system, top, x, mirrored, reference


def _refiner(system, reference, **extra):
    params = {"temperature": 300, "steps": 50, "constraints": "none", "threads": 1, "timestep": 0.001} | extra
    refiner = make_plugin("refiner", "openmm", params | ({"stereo_reference": reference} if reference else {}))
    refiner.prepare(system)
    return refiner


def test_the_restraint_is_zero_on_the_reference_hands_and_pushes_inverted_ones(chiral):
    system, _top, x, mirrored, reference = chiral
    free, held = _refiner(system, None), _refiner(system, reference)
    targets = system.mapped(x)
    assert held.energy_forces(x, targets, BOX)[0] == pytest.approx(free.energy_forces(x, targets, BOX)[0], abs=1e-3)
    extra = held.energy_forces(mirrored, targets, BOX)[0] - free.energy_forces(mirrored, targets, BOX)[0]
    # 14 inverted centres, each k·sin²(θ) of its improper (C, F, Cl, Br), the same in every molecule
    c, f, cl, br = x[[0, 2, 3, 4]]
    b0, b1, b2 = f - c, cl - f, br - cl
    n0, n1 = np.cross(b0, b1), np.cross(b1, b2)
    cos = np.dot(n0, n1) / np.linalg.norm(n0) / np.linalg.norm(n1)
    assert extra == pytest.approx(14 * 200 * (1 - cos ** 2), rel=1e-3)  # float32 platforms: ~1e-6


def test_refinement_ends_with_every_centre_of_the_reference(chiral):
    system, top, x, mirrored, reference = chiral
    centres = chiral_centres(top, x)
    targets = system.mapped(mirrored)
    free = _refiner(system, None).refine(mirrored[None], targets[None], BOX[None], np.random.default_rng(0))
    assert centres.kept(top, free.positions[0]) == pytest.approx(13 / 27)  # dynamics alone do not turn them
    held = _refiner(system, reference).refine(mirrored[None], targets[None], BOX[None], np.random.default_rng(0))
    assert centres.kept(top, held.positions[0]) == 1.0
    assert held.log[0]["centres_reinverted"] == 14


def test_reflected_centres_relax_with_the_restraint_on(chiral):
    """After the reflection, stereo_relax_steps of dynamics move the mirrored hydrogens off the
    mirror's positions and no centre inverts again (the restraint holds it)."""
    system, top, x, mirrored, reference = chiral
    centres = chiral_centres(top, x)
    targets = system.mapped(mirrored)
    runs = {n: _refiner(system, reference, stereo_relax_steps=n).refine(mirrored[None], targets[None], BOX[None],
                                                                         np.random.default_rng(0))
            for n in (0, 100)}
    assert "centres_reinverted_after_relax" not in runs[0].log[0]
    assert runs[100].log[0]["centres_reinverted"] == 14
    assert runs[100].log[0]["centres_reinverted_after_relax"] == 0
    assert centres.kept(top, runs[100].positions[0]) == 1.0
    moved = np.linalg.norm(runs[100].positions[0] - runs[0].positions[0], axis=1)
    assert moved.mean() > 0.005  # 0.1 ps at 300 K: thermal displacements of ~0.02 nm
