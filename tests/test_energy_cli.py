"""`backmap energy`: per-term energies per frame, bead forces, JSON, errors."""
import json

import numpy as np
import torch

from backmap.forcefield import ForceField, NonbondedSettings
from backmap.system.io import read_frames
from backmap.engine.loaders import load_topology

from conftest import HEXANE


def test_energy_json_matches_the_force_field(cli):
    code, out, err = cli("energy", "--topology", HEXANE / "topol.top", "--traj", HEXANE / "traj.xtc",
                         "--frames", "0:2", "--epsilon-rf", "0", "--cutoff", "0.9", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["settings"]["rvdw"] == 0.9 and len(doc["frames"]) == 2
    ff = ForceField(load_topology(HEXANE / "topol.top"), NonbondedSettings(rvdw=0.9, rcoulomb=0.9, epsilon_rf=0))
    fr = next(read_frames(HEXANE / "traj.xtc"))
    with torch.no_grad():
        e = ff.energy(fr.positions, fr.box).numpy()
    for term, value in doc["frames"][0]["energies"].items():
        assert value == __import__("pytest").approx(float(e[term][0]), rel=1e-9)


def test_energy_table_and_bead_forces(cli, tmp_path):
    out_trr = tmp_path / "cg_forces.trr"
    code, out, err = cli("energy", "--topology", HEXANE / "topol.top", "--traj", HEXANE / "traj.trr",
                         "--frames", "0,3", "--mapping", HEXANE / "hexane.xml", "--forces-out", out_trr)
    assert code == 0, err
    assert "potential" in out and "AA forces summed per bead" in out
    frames = list(read_frames(out_trr))
    assert len(frames) == 2 and frames[0].forces.shape == (600, 3)
    # bead forces of a molecule add up to the total AA force on that molecule
    ff = ForceField(load_topology(HEXANE / "topol.top"))
    aa = next(read_frames(HEXANE / "traj.trr"))
    _, f = ff.forces(aa.positions, aa.box)
    f = f.detach().numpy()[0]
    np.testing.assert_allclose(frames[0].forces[:3].sum(0), f[:20].sum(0), atol=0.05)


def test_energy_errors(cli, tmp_path):
    code, _, err = cli("energy", "--topology", HEXANE / "topol.tpr", "--traj", HEXANE / "traj.xtc")
    assert code == 2 and "use the GROMACS .top topology" in err
    code, _, err = cli("energy", "--topology", HEXANE / "topol.top", "--traj", HEXANE / "traj.xtc",
                       "--forces-out", tmp_path / "x.trr")
    assert code == 2 and "--forces-out needs --mapping" in err
    ewald = tmp_path / "ewald.mdp"
    ewald.write_text("coulombtype = Ewald\n")
    code, _, err = cli("energy", "--topology", HEXANE / "topol.top", "--traj", HEXANE / "traj.xtc",
                       "--mdp", ewald)
    assert code == 2 and "coulombtype = ewald is not supported" in err


def test_energy_with_pme_from_the_mdp(cli):
    """The hexane data's own grompp.mdp (PME, r_c 1.2 nm): `backmap energy --mdp` uses PME."""
    code, out, err = cli("energy", "--topology", HEXANE / "topol.top", "--traj", HEXANE / "traj.trr",
                         "--frames", "0", "--mdp", HEXANE / "grompp.mdp", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["settings"]["coulomb"] == "pme" and doc["settings"]["rcoulomb"] == 1.2
    ff = ForceField(load_topology(HEXANE / "topol.top"), NonbondedSettings.from_mdp(HEXANE / "grompp.mdp"))
    fr = next(read_frames(HEXANE / "traj.trr"))
    with torch.no_grad():
        e = ff.energy(fr.positions, fr.box).numpy()
    assert doc["frames"][0]["energies"]["coulomb"] == __import__("pytest").approx(float(e["coulomb"][0]), rel=1e-9)
    # GROMACS 2022 (double precision) on this frame: Coulomb (SR) 2259.65463 + Coul. recip. 30.083141
    assert float(e["coulomb"][0]) == __import__("pytest").approx(2259.65463 + 30.083141, rel=1e-6)
