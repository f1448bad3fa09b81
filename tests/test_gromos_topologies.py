"""GROMOS-style topologies (``[ defaults ]`` combination rule 1: C6/C12 in ``[ atomtypes ]`` and
``[ pairtypes ]``) and ``gen-pairs`` without ``[ pairs ]``: read right by the torch force field and
by the openmm refiner, against a known answer and against a GROMACS rerun.

The known answer: OPLS-AA hexane rewritten with C6 = 4εσ⁶, C12 = 4εσ¹² under combination rule 1
(geometric means of C6 and C12 are geometric means of σ and ε, rule 3) is the same force field, so
every energy term must equal the OPLS topology's."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from backmap.errors import BackmapError
from backmap.engine.loaders import load_topology
from backmap.forcefield import ForceField, NonbondedSettings
from backmap.forcefield.parameters import excluded_pair_list, pair_list
from backmap.system.io import read_frames

from conftest import HEXANE

SETTINGS = NonbondedSettings(rvdw=1.0, rcoulomb=1.0, epsilon_rf=0)


def gromos_style(folder: Path, pairs: bool = True) -> Path:
    """Hexane's topology in C6/C12 under combination rule 1 (gen-pairs yes, fudgeLJ = fudgeQQ = 0.5
    as OPLS), with or without its ``[ pairs ]`` section."""
    from backmap.system.gmx import gromacs_topdir

    head = ["#define _FF_OPLS", "#define _FF_OPLSAA", "", "[ defaults ]", "1 1 yes 0.5 0.5", ""]
    for line in (gromacs_topdir() / "oplsaa.ff" / "ffnonbonded.itp").read_text().splitlines():
        words = line.split(";")[0].split()
        if len(words) >= 8 and words[0].startswith("opls_"):  # name bond_type Z mass charge ptype σ ε
            s, e = float(words[-2]), float(words[-1])
            line = " ".join(words[:-2] + [f"{4 * e * s**6:.12e}", f"{4 * e * s**12:.12e}"])
        head.append(line)
    head += ["", '#include "oplsaa.ff/ffbonded.itp"', ""]
    body = (HEXANE / "topol.top").read_text().split("\n", 1)[1]
    if not pairs:
        body = re.sub(r"\[ pairs \].*?(?=\[ angles \])", "", body, flags=re.S)
    path = folder / ("c6c12.top" if pairs else "c6c12_nopairs.top")
    path.write_text("\n".join(head) + body)
    return path


def _energies(top: Path) -> dict[str, float]:
    frames = list(read_frames(HEXANE / "traj.trr"))[:2]
    x = np.stack([f.positions for f in frames])
    boxes = np.stack([f.box for f in frames])
    energies, _ = ForceField(load_topology(top), SETTINGS, dtype=torch.float64).forces(x, boxes)
    return energies.numpy()


def test_combination_rule_1_is_read_as_c6_and_c12(tmp_path):
    """Before, the C6/C12 columns were read as σ/ε: every LJ term was about 0."""
    ours, opls = _energies(gromos_style(tmp_path)), _energies(HEXANE / "topol.top")
    assert set(ours) == set(opls)
    for term in opls:
        assert np.allclose(ours[term], opls[term], rtol=1e-9, atol=1e-9), term
    assert abs(opls["lj"]).min() > 1000 and abs(opls["lj14"]).min() > 100


def test_gen_pairs_without_a_pairs_section_computes_no_1_4_pairs(tmp_path):
    top = load_topology(gromos_style(tmp_path, pairs=False))
    assert len(pair_list(top)) == 0 and len(pair_list(load_topology(HEXANE / "topol.top"))) == 200 * 45
    ours = _energies(gromos_style(tmp_path, pairs=False))
    assert not ours["lj14"].any() and not ours["coulomb14"].any() and ours["lj"].all()


@pytest.mark.gromacs
@pytest.mark.parametrize("pairs", [True, False], ids=["pairs", "no pairs"])
def test_combination_rule_1_matches_gromacs(tmp_path, pairs):
    from test_forcefield import _compare

    report = _compare(gromos_style(tmp_path, pairs), HEXANE / "conf.gro", HEXANE / "traj.trr", SETTINGS)
    assert ("lj14" in report) == pairs and "lj" in report


def _openmm_system(top: Path):
    import openmm.app as app
    import openmm.unit as u

    from backmap.system.gmx import gromacs_topdir
    from backmap_refiners.openmm_refiner import zero_unlisted_pairs

    box = next(read_frames(HEXANE / "conf.gro")).box
    gmx = app.GromacsTopFile(str(top), periodicBoxVectors=box * u.nanometer, includeDir=str(gromacs_topdir()))
    system = gmx.createSystem(nonbondedMethod=app.CutoffPeriodic, nonbondedCutoff=1.0 * u.nanometer)
    topology = load_topology(top)
    return system, zero_unlisted_pairs(system, pair_list(topology), excluded_pair_list(topology))


def _nonzero_pairs(system) -> int:
    import openmm as mm

    force = next(f for f in system.getForces() if isinstance(f, mm.NonbondedForce))
    return sum(1 for k in range(force.getNumExceptions())
               if force.getExceptionParameters(k)[2]._value != 0 or force.getExceptionParameters(k)[4]._value != 0)


@pytest.mark.parametrize("variant", ["opls", "rule 1", "rule 1, no pairs"])
def test_the_openmm_refiner_computes_the_pairs_gromacs_computes(tmp_path, variant):
    """OpenMM's GromacsTopFile makes a 1-4 pair of every 1-4 atom pair when gen-pairs = yes, also
    with no [ pairs ] section (9 000 here): the refiner zeroes those GROMACS does not compute."""
    pytest.importorskip("openmm")
    top = {"opls": HEXANE / "topol.top", "rule 1": gromos_style(tmp_path),
           "rule 1, no pairs": gromos_style(tmp_path, pairs=False)}[variant]
    system, zeroed = _openmm_system(top)
    listed = len(pair_list(load_topology(top)))
    assert _nonzero_pairs(system) == listed
    assert zeroed == (9000 if variant.endswith("no pairs") else 0)


def test_a_1_4_pair_beyond_nrexcl_keeps_its_interaction(tmp_path):
    """With nrexcl = 2 (as DeepBackmap's sPS topology has) a 1-4 pair is not excluded: GROMACS
    computes it as an ordinary non-bonded pair, so the refiner keeps OpenMM's 9 000 1-4
    interactions (zeroing them, as a refiner that zeroed every unlisted pair did, removed the
    1-4 repulsion of every sPS dihedral)."""
    pytest.importorskip("openmm")
    top = gromos_style(tmp_path, pairs=False)
    top.write_text(re.sub(r"(\[ moleculetype \]\n;[^\n]*\n\S+\s+)3", r"\g<1>2", top.read_text()))
    assert load_topology(top).blocks[0].moltype.nrexcl == 2
    system, zeroed = _openmm_system(top)
    assert zeroed == 0 and _nonzero_pairs(system) == 9000


def test_a_pair_with_only_c12_is_refused_by_name(tmp_path):
    """σ and ε cannot express a purely repulsive 1-4 pair: refused, naming the pair (not silently 0)."""
    path = gromos_style(tmp_path)
    path.write_text(path.read_text().replace('#include "oplsaa.ff/ffbonded.itp"',
                                             "[ pairtypes ]\n CT HC 1 0.0 1e-6\n\n#include \"oplsaa.ff/ffbonded.itp\""))
    with pytest.raises(BackmapError, match="C6 = 0, C12 = 1e-06"):
        ForceField(load_topology(path), SETTINGS)


def _openmm_terms(system, positions: np.ndarray) -> dict[str, float]:
    """Energy per OpenMM force (kJ/mol); the NonbondedForce's 1-4 exceptions alone as ``coulomb14``
    (its particles' charges and LJ switched off: what is left is the exceptions' plain Coulomb)."""
    import openmm as mm
    import openmm.unit as u

    names = {mm.HarmonicBondForce: "bond", mm.HarmonicAngleForce: "angle", mm.RBTorsionForce: "rb",
             mm.CustomBondForce: "lj14", mm.NonbondedForce: "coulomb14"}
    for k, force in enumerate(system.getForces()):
        force.setForceGroup(k)
        if isinstance(force, mm.NonbondedForce):
            for i in range(force.getNumParticles()):
                force.setParticleParameters(i, 0.0, 1.0, 0.0)
    context = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions * u.nanometer)
    out = {}
    for k, force in enumerate(system.getForces()):
        if type(force) in names:
            state = context.getState(getEnergy=True, groups={k})
            out[names[type(force)]] = state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
    return out


@pytest.mark.parametrize("pairs", [True, False], ids=["pairs", "no pairs"])
def test_the_openmm_refiner_system_matches_backmap_term_by_term(tmp_path, pairs):
    """Bonded and 1-4 terms of the refiner's OpenMM system equal backmap's (which equal GROMACS's,
    above) on whole molecules, with and without [ pairs ] — before, OpenMM added 9 000 Coulomb 1-4
    pairs to the second. (The non-bonded cut-off terms differ by convention — OpenMM shifts no LJ —
    and are not compared.)"""
    pytest.importorskip("openmm")
    from backmap.system.pbc import Unwrapper

    top_path = gromos_style(tmp_path, pairs)
    topology = load_topology(top_path)
    frame = next(read_frames(HEXANE / "conf.gro"))
    x = Unwrapper(topology)(frame.positions, frame.dimensions)
    system, _ = _openmm_system(top_path)
    theirs = _openmm_terms(system, x)
    ours = ForceField(topology, SETTINGS, dtype=torch.float64).energy(
        torch.as_tensor(x)[None], frame.box).numpy()
    for term in ("bond", "angle", "rb", "lj14", "coulomb14"):
        want = float(ours[term][0]) if term in ours else 0.0
        assert abs(theirs.get(term, 0.0) - want) <= 1e-4 * max(abs(want), 1.0), (term, theirs.get(term), want)
    assert (abs(theirs["coulomb14"]) > 1) == pairs
