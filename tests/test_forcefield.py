"""The torch force field: against GROMACS (double precision) term by term, and its own invariants."""
import numpy as np
import pytest
import torch

from backmap.errors import BackmapError
from backmap.forcefield import ForceField, NonbondedSettings
from backmap.forcefield import neighbors
from backmap.forcefield.neighbors import neighbour_pairs
from backmap.system.io import read_frames
from backmap.system.pbc import box_vectors, minimum_image
from backmap.engine.loaders import load_topology

from conftest import HEXANE, TRICLINIC, need

BONDED_TOL, NONBONDED_TOL, FORCE_TOL = 1e-4, 1e-3, 0.01


def _frames(path, n):
    frames = list(read_frames(path))[:n]
    x = np.stack([f.positions for f in frames]).astype(np.float32).astype(np.float64)
    boxes = np.stack([f.box for f in frames]).astype(np.float32).astype(np.float64)
    return x, boxes


def _compare(top, structure, traj, settings, n_frames=2):
    from backmap.system.gmx import rerun, rerun_mdp

    need("gmx_d")
    x, boxes = _frames(traj, n_frames)
    mdp = rerun_mdp(settings.rcoulomb) | settings.mdp()
    ref = rerun(top, structure, x, boxes, mdp, double=True)
    ff = ForceField(load_topology(top), settings)
    energies, forces = ff.forces(x, boxes)
    ours = energies.numpy()
    report = {}
    for term, theirs in ref.energies.items():
        rel = np.abs(ours[term] - theirs).max() / max(np.abs(theirs).max(), 1e-6)
        report[term] = rel
        tol = NONBONDED_TOL if term in ("lj", "coulomb", "potential") else BONDED_TOL
        assert rel <= tol, f"{term}: ours {ours[term]} GROMACS {theirs}"
    force_err = np.abs(forces.numpy() - ref.forces).max()
    print({k: f"{v:.1e}" for k, v in report.items()}, f"max |ΔF| = {force_err:.1e} kJ/mol/nm")
    assert force_err <= FORCE_TOL
    return report


@pytest.mark.gromacs
def test_hexane_opls_matches_gromacs():
    """OPLS-AA: RB dihedrals, combination rule 3, pairs with fudge 0.5, reaction field ε_rf = ∞."""
    report = _compare(HEXANE / "topol.top", HEXANE / "conf.gro", HEXANE / "traj.trr",
                      NonbondedSettings(rvdw=1.0, rcoulomb=1.0, epsilon_rf=0))
    assert {"bond", "angle", "rb", "lj14", "coulomb14", "lj", "coulomb"} <= set(report)


@pytest.mark.gromacs
def test_triclinic_plain_cutoff_matches_gromacs():
    """Triclinic box (70/80/90°), plain cut-off Coulomb (Verlet: reaction field with ε_rf = 1), no LJ shift."""
    from backmap.system.gmx import rerun, rerun_mdp

    need("gmx_d")
    settings = NonbondedSettings(rvdw=1.0, rcoulomb=1.0, coulomb="cutoff", vdw_modifier="none")
    x, boxes = _frames(TRICLINIC / "traj.xtc", 2)
    mdp = rerun_mdp(1.0, coulomb="cut-off", vdw_modifier="None")
    ref = rerun(TRICLINIC / "topol.top", TRICLINIC / "conf.gro", x, boxes, mdp, double=True)
    e, f = ForceField(load_topology(TRICLINIC / "topol.top"), settings).forces(x, boxes)
    for term in ("lj", "coulomb"):
        np.testing.assert_allclose(e.numpy()[term], ref.energies[term], rtol=NONBONDED_TOL)
    assert np.abs(f.numpy() - ref.forces).max() <= FORCE_TOL


@pytest.mark.gromacs
def test_sps_matches_gromacs(shared):
    """sPS: combination rule 2, harmonic impropers, [ exclusions ], nrexcl 2, reaction field ε_rf = 2.5."""
    sps = shared / "sps"
    report = _compare(sps / "top" / "topol.top", sps / "eval_t568" / "aa.gro", sps / "eval_t568" / "aa.xtc",
                      NonbondedSettings.from_mdp(sps / "top" / "md.mdp"))
    assert {"bond", "angle", "proper", "improper", "lj", "coulomb"} <= set(report)


@pytest.fixture(scope="module")
def hexane_ff():
    return ForceField(load_topology(HEXANE / "topol.top"), NonbondedSettings(epsilon_rf=0))


def test_forces_are_the_gradient(hexane_ff):
    x, boxes = _frames(HEXANE / "traj.xtc", 1)
    e, f = hexane_ff.forces(x, boxes)
    rng = np.random.default_rng(0)
    for atom in rng.choice(x.shape[1], 3, replace=False):
        for dim in range(3):
            h = 1e-6
            xp, xm = x.copy(), x.copy()
            xp[0, atom, dim] += h
            xm[0, atom, dim] -= h
            with torch.no_grad():
                num = -(hexane_ff.energy(xp, boxes).total - hexane_ff.energy(xm, boxes).total) / (2 * h)
            assert float(num) == pytest.approx(float(f[0, atom, dim]), abs=0.05, rel=1e-4)


def test_per_molecule_and_subset_decompose_the_total(hexane_ff):
    x, boxes = _frames(HEXANE / "traj.xtc", 2)
    with torch.no_grad():
        e = hexane_ff.energy(x, boxes, per_molecule=True)
        for term, per_mol in e.per_molecule.items():
            torch.testing.assert_close(per_mol.sum(1), e.terms[term])
        everything = hexane_ff.energy(x, boxes, subset=np.ones(x.shape[1], bool))
        torch.testing.assert_close(everything.total, e.total)
        # the energy of molecule 7's interactions = its intramolecular terms + all pairs touching it
        mol = np.zeros(x.shape[1], bool)
        mol[140:160] = True
        sub = hexane_ff.energy(x, boxes, subset=mol)
        torch.testing.assert_close(sub.terms["bond"], e.per_molecule["bond"][:, 7])
        assert (sub.terms["lj"] < 0.5 * e.terms["lj"] / 200 * 3).all()  # a share, not the whole


def test_invariant_under_translation_and_wrapping(hexane_ff):
    x, boxes = _frames(HEXANE / "traj.xtc", 1)
    with torch.no_grad():
        e0 = hexane_ff.energy(x, boxes).total
        moved = x + np.array([1.3, -0.7, 2.9])  # molecules cross the boundary, some atoms leave the box
        e1 = hexane_ff.energy(moved, boxes).total
    torch.testing.assert_close(e0, e1, rtol=1e-9, atol=1e-6)


def test_overlapping_atoms_give_finite_forces(hexane_ff):
    x, boxes = _frames(HEXANE / "traj.xtc", 1)
    x[0, 25] = x[0, 5]  # an atom of molecule 1 exactly on an atom of molecule 0
    x[0, 45] = x[0, 5] + 1e-4
    e, f = hexane_ff.forces(x, boxes)
    assert torch.isfinite(e.total).all() and torch.isfinite(f).all()
    assert float(e.terms["lj"][0].detach()) > 1e3  # strongly repulsive, but finite


@pytest.mark.parametrize("screen", ["padded", "listed"])
@pytest.mark.parametrize("cutoff, n_atoms, least", [(1.1, 700, 1000), (0.12, 3000, 800)])
def test_neighbour_list_skewed_triclinic_equals_brute_force(cutoff, n_atoms, least, screen, monkeypatch):
    """A long cut-off (cells one cut-off high) and a short one (cells of MIN_CELL, several cut-offs),
    each screened as padded cell blocks and as a list of cell pairs."""
    monkeypatch.setattr(neighbors, "SPARSE_PADDING", 0 if screen == "listed" else np.inf)
    rng = np.random.default_rng(2)
    dims = np.array([4.1, 2.9, 2.5, 90.0, 90.0, 119.0])  # as skewed as the sPS reference boxes
    V = box_vectors(dims)
    x = rng.uniform(-2, 6, size=(n_atoms, 3))
    i, j, shift = neighbour_pairs(x, V, cutoff, np.zeros(0, np.int64))
    d = np.linalg.norm(x[j] + shift - x[i], axis=1)
    got = {(a, b) for a, b, r in zip(i, j, d) if r < cutoff}
    ii, jj = np.triu_indices(len(x), 1)
    dist = np.linalg.norm(minimum_image(x[jj] - x[ii], dims), axis=1)
    want = set(zip(ii[dist < cutoff], jj[dist < cutoff]))
    assert got == want and len(want) > least
    np.testing.assert_allclose(d[d < cutoff], np.linalg.norm(minimum_image(x[j] - x[i], dims), axis=1)[d < cutoff])


@pytest.mark.parametrize("cutoff", [0.3, 0.9])
def test_neighbour_list_is_the_same_screened_either_way(cutoff, monkeypatch):
    """The listed screening returns the padded one's pairs in the same order (callers' sums keep their bits)."""
    rng = np.random.default_rng(3)
    dims = np.array([4.1, 2.9, 2.5, 90.0, 90.0, 119.0])
    x = rng.uniform(-2, 6, size=(2000, 3))
    excluded = np.unique(rng.integers(0, 2000 * 2000, 5000))
    found = []
    for padding in (np.inf, 0):
        monkeypatch.setattr(neighbors, "SPARSE_PADDING", padding)
        found.append(neighbour_pairs(x, box_vectors(dims), cutoff, excluded))
    (i0, j0, s0), (i1, j1, s1) = found
    inside = np.linalg.norm(x[j0] + s0 - x[i0], axis=1) < cutoff  # the skin's float32/float64 edge aside
    inside1 = np.linalg.norm(x[j1] + s1 - x[i1], axis=1) < cutoff
    assert inside.sum() > 1000
    np.testing.assert_array_equal(i0[inside], i1[inside1])
    np.testing.assert_array_equal(j0[inside], j1[inside1])
    np.testing.assert_array_equal(s0[inside], s1[inside1])


def test_cutoff_larger_than_half_box_is_an_error(hexane_ff):
    x, boxes = _frames(TRICLINIC / "traj.xtc", 1)
    ff = ForceField(load_topology(TRICLINIC / "topol.top"), NonbondedSettings(rvdw=1.5, rcoulomb=1.5))
    with pytest.raises(BackmapError, match="more than half the box height"):
        ff.energy(x, boxes)


def test_mdp_settings(tmp_path):
    ewald = tmp_path / "ewald.mdp"
    ewald.write_text("rcoulomb = 1.0\ncoulombtype = Ewald\n")
    with pytest.raises(BackmapError, match=r"ewald.mdp:2: coulombtype = ewald is not supported"):
        NonbondedSettings.from_mdp(ewald)
    mdp = tmp_path / "rf.mdp"
    mdp.write_text("coulombtype = Reaction-Field\nrcoulomb = 1.1\nrvdw = 1.1 ; nm\nepsilon_rf = 2.5\n")
    s = NonbondedSettings.from_mdp(mdp)
    assert (s.coulomb, s.rcoulomb, s.rvdw, s.epsilon_rf, s.vdw_modifier) == ("reaction-field", 1.1, 1.1, 2.5,
                                                                             "potential-shift")


def test_sps_mdp(shared):
    """DBM's md.mdp spells coulomb_type / vdw_type / epsilon_rf with underscores, as GROMACS allows."""
    s = NonbondedSettings.from_mdp(shared / "sps" / "top" / "md.mdp")
    assert (s.coulomb, s.epsilon_rf, s.rcoulomb, s.rvdw) == ("reaction-field", 2.5, 1.0, 1.0)


def test_tpr_has_no_parameters():
    with pytest.raises(BackmapError, match="use the GROMACS .top topology"):
        ForceField(load_topology(HEXANE / "topol.tpr"))


# ---------------------------------------------------------------------------- PME


def _coul_recip(workdir):
    """GROMACS's "Coul. recip." per frame from a kept rerun directory."""
    from backmap.system.gmx import run

    run(["energy", "-f", "rerun.edr", "-o", "recip.xvg"], workdir, stdin="Coul.-recip.\n\n", double=True)
    rows = [line.split() for line in (workdir / "recip.xvg").read_text().splitlines() if line and line[0] not in "#@"]
    return np.array(rows, float)[:, 1]


def _compare_pme(top, structure, traj, settings, workdir, n_frames=2):
    from backmap.forcefield.energy import _box_vectors
    from backmap.forcefield.pme import grid_size
    from backmap.system.gmx import rerun, rerun_mdp

    need("gmx_d")
    x, boxes = _frames(traj, n_frames)
    mdp = rerun_mdp(settings.rcoulomb, coulomb="PME",
                    vdw_modifier="None" if settings.vdw_modifier == "none" else "Potential-shift") | settings.mdp()
    ref = rerun(top, structure, x, boxes, mdp, workdir=workdir, double=True)
    recip = _coul_recip(workdir)
    log = (workdir / "rerun.log").read_text()
    grid = tuple(int(log.split(f"fourier-n{d}")[1].split("=")[1].split()[0]) for d in "xyz")
    assert grid == grid_size(_box_vectors(boxes[:1], 1)[0], settings.fourier_spacing, settings.fourier_n)
    ff = ForceField(load_topology(top), settings)
    energies, forces = ff.forces(x, boxes)
    ours = energies.numpy()
    with torch.no_grad():
        ours_recip = np.array([float(ff._pme.energy(torch.as_tensor(x[b]), ff._q, _box_vectors(boxes, len(x))[b]).sum())
                               for b in range(len(x))])
    theirs = ref.energies["coulomb"] + recip  # Coulomb (SR) + Coul. recip.
    rel = np.abs(ours["coulomb"] - theirs).max() / np.abs(theirs).max()
    rel_recip = np.abs(ours_recip - recip).max() / np.abs(recip).max()
    rel_lj = np.abs(ours["lj"] - ref.energies["lj"]).max() / np.abs(ref.energies["lj"]).max()
    force_err = np.abs(forces.numpy() - ref.forces).max()
    print(f"grid {grid}: Coulomb (SR + recip.) {rel:.1e}, Coul. recip. {rel_recip:.1e}, LJ {rel_lj:.1e}, "
          f"max |ΔF| = {force_err:.1e} kJ/mol/nm")
    assert rel <= NONBONDED_TOL and rel_recip <= NONBONDED_TOL and rel_lj <= NONBONDED_TOL
    assert force_err <= FORCE_TOL


@pytest.mark.gromacs
def test_hexane_pme_matches_gromacs(tmp_path):
    """The hexane data's own production settings (grompp.mdp): PME, r_c 1.2 nm, spacing 0.12, order 4."""
    settings = NonbondedSettings.from_mdp(HEXANE / "grompp.mdp")
    assert (settings.coulomb, settings.rcoulomb, settings.pme_order, settings.ewald_rtol) == ("pme", 1.2, 4, 1e-5)
    _compare_pme(HEXANE / "topol.top", HEXANE / "conf.gro", HEXANE / "traj.trr", settings, tmp_path)


@pytest.mark.gromacs
def test_triclinic_pme_matches_gromacs(tmp_path):
    """Triclinic box (70/80/90°), non-default PME parameters: spacing 0.1 nm, order 5, ewald-rtol 1e-6."""
    settings = NonbondedSettings(rvdw=1.0, rcoulomb=1.0, coulomb="pme", fourier_spacing=0.1, pme_order=5,
                                 ewald_rtol=1e-6)
    _compare_pme(TRICLINIC / "topol.top", TRICLINIC / "conf.gro", TRICLINIC / "traj.xtc", settings, tmp_path)


def test_pme_decomposes_and_is_the_gradient():
    from backmap.forcefield.pme import ewald_coefficient, grid_size

    assert grid_size(np.eye(3) * 3.54319, 0.12) == (32, 32, 32)
    assert grid_size(np.eye(3) * 10.0, 0.12) == (84, 84, 84)
    assert ewald_coefficient(1.2, 1e-5) == pytest.approx(1 / 0.384195, rel=1e-6)  # GROMACS's log
    settings = NonbondedSettings.from_mdp(HEXANE / "grompp.mdp")
    ff = ForceField(load_topology(HEXANE / "topol.top"), settings)
    x, boxes = _frames(HEXANE / "traj.xtc", 1)
    e, f = ff.forces(x, boxes, per_molecule=True)
    torch.testing.assert_close(e.per_molecule["coulomb"].sum(1), e.terms["coulomb"])
    mol = np.zeros(x.shape[1], bool)
    mol[140:160] = True
    with torch.no_grad():
        # Coulomb interactions of molecule 7 = all − those left when its charges are switched off
        sub = ff.energy(x, boxes, subset=mol, terms=["coulomb"]).terms["coulomb"]
        q = ff._q.clone()
        ff._q[torch.as_tensor(mol)] = 0.0
        others = ff.energy(x, boxes, terms=["coulomb"]).terms["coulomb"]
        ff._q = q
        torch.testing.assert_close(sub, e.terms["coulomb"].detach() - others, rtol=1e-9, atol=1e-7)
        rest = ff.subsystem(np.flatnonzero(~mol))
    atom, dim, h = 147, 1, 1e-6
    xp, xm = x.copy(), x.copy()
    xp[0, atom, dim] += h
    xm[0, atom, dim] -= h
    with torch.no_grad():
        num = -(ff.energy(xp, boxes).total - ff.energy(xm, boxes).total) / (2 * h)
    assert float(num) == pytest.approx(float(f[0, atom, dim]), abs=0.05, rel=1e-4)
    with pytest.raises(BackmapError, match="PME needs a periodic box"):
        rest.energy(x[:, ~mol], None)


def test_with_cutoff_is_the_force_field_with_shorter_cutoffs(hexane_ff):
    """A clash remover's cheap energy: the same parameters, LJ and Coulomb cut at 0.7 nm — what a
    force field built with those settings gives; never longer than the original cut-offs."""
    x, boxes = _frames(HEXANE / "traj.xtc", 1)
    short = hexane_ff.with_cutoff(0.7)
    built = ForceField(load_topology(HEXANE / "topol.top"), NonbondedSettings(epsilon_rf=0, rvdw=0.7, rcoulomb=0.7))
    a, b = short.energy(x, boxes).numpy(), built.energy(x, boxes).numpy()
    assert a["lj"] == pytest.approx(b["lj"], rel=1e-12) and a["coulomb"] == pytest.approx(b["coulomb"], rel=1e-12)
    assert abs(float(a["lj"][0]) - float(hexane_ff.energy(x, boxes).numpy()["lj"][0])) > 1.0  # it is shorter
    assert hexane_ff.with_cutoff(5.0) is hexane_ff and short.settings.rvdw == 0.7
