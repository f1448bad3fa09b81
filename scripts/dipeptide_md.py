#!/usr/bin/env python
"""Helper of ``scripts/make_dipeptide_data.sh``: alanine dipeptide (ACE-ALA-NME) in vacuum.

Subcommands (run ``python scripts/dipeptide_md.py SUBCOMMAND -h``):

  pdb        write the heavy atoms of ACE-ALA-NME built from standard internal coordinates
             (Engh & Huber-like bond lengths and angles; trans peptide bonds; L-alanine), for
             ``gmx pdb2gmx -ignh`` to add the hydrogens
  md         OpenMM Langevin MD from a GROMACS topol.top + .gro, in vacuum or in OBC implicit water
             (``--implicit-solvent obc``): minimise, equilibrate, production; writes conf.gro (first
             production frame), traj.xtc, energies.csv
  crosscheck backmap's own force field (``backmap.forcefield.ForceField``) against OpenMM's
             potential energy on frames of the trajectory
  analyse    (phi, psi) basin populations of a trajectory
  cut        the first N frames of traj.xtc (coordinates copied unchanged) and of energies.csv

Everything is in GROMACS units (nm, ps, kJ/mol). No network access, no downloaded inputs.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

BOX_NM = 3.0  # cubic box written into conf.gro / traj.xtc (no PBC in the simulation itself)


# --------------------------------------------------------------------------------------- pdb
def _place(a: np.ndarray, b: np.ndarray, c: np.ndarray, bond: float, angle: float, torsion: float) -> np.ndarray:
    """NeRF: the atom d with |cd| = bond, angle(b, c, d) = angle, dihedral(a, b, c, d) = torsion
    (lengths in Å, angles in degrees)."""
    angle, torsion = np.radians(angle), np.radians(torsion)
    bc = c - b
    bc /= np.linalg.norm(bc)
    n = np.cross(b - a, bc)
    n /= np.linalg.norm(n)
    m = np.cross(n, bc)
    d2 = np.array([-bond * np.cos(angle), bond * np.sin(angle) * np.cos(torsion), bond * np.sin(angle) * np.sin(torsion)])
    return c + d2[0] * bc + d2[1] * m + d2[2] * n


def dihedral(p0, p1, p2, p3) -> np.ndarray:
    """Dihedral angle(s) in degrees (IUPAC sign convention); inputs (..., 3)."""
    b0, b1, b2 = p0 - p1, p2 - p1, p3 - p2
    b1n = b1 / np.linalg.norm(b1, axis=-1, keepdims=True)
    v = b0 - (b0 * b1n).sum(-1, keepdims=True) * b1n
    w = b2 - (b2 * b1n).sum(-1, keepdims=True) * b1n
    x = (v * w).sum(-1)
    y = (np.cross(b1n, v) * w).sum(-1)
    return np.degrees(np.arctan2(y, x))


def build_heavy_atoms(phi: float = -80.0, psi: float = 80.0, omega: float = 180.0) -> list[tuple[str, str, int, np.ndarray]]:
    """(atom name, residue name, residue number, xyz Å) of the 10 heavy atoms of ACE-ALA-NME."""
    ch3 = np.array([0.0, 0.0, 0.0])
    c0 = np.array([1.52, 0.0, 0.0])
    dummy = np.array([2.0, 1.4, 0.0])  # only fixes the orientation of the first plane
    n1 = _place(dummy, ch3, c0, 1.33, 116.2, 180.0)
    ca = _place(ch3, c0, n1, 1.46, 121.7, omega)           # omega of ACE-ALA
    c1 = _place(c0, n1, ca, 1.52, 111.2, phi)              # phi  = C0-N1-CA-C1
    cb = _place(c1, n1, ca, 1.53, 110.5, -122.5)           # L-Ala: dihedral C1-N1-CA-CB = -122.5 (checked below)
    n2 = _place(n1, ca, c1, 1.33, 116.2, psi)              # psi  = N1-CA-C1-N2
    ch3b = _place(ca, c1, n2, 1.46, 121.7, omega)           # omega of ALA-NME
    o0 = _place(ca, n1, c0, 1.23, 122.7, 0.0)              # O cis to CA about C-N (trans peptide)
    o1 = _place(ch3b, n2, c1, 1.23, 122.7, 0.0)
    # L-alanine = (S): (N - CA) . ((C - CA) x (CB - CA)) > 0
    if np.dot(n1 - ca, np.cross(c1 - ca, cb - ca)) <= 0:
        raise AssertionError("built D-alanine; flip the CB torsion")
    return [("CH3", "ACE", 1, ch3), ("C", "ACE", 1, c0), ("O", "ACE", 1, o0),
            ("N", "ALA", 2, n1), ("CA", "ALA", 2, ca), ("CB", "ALA", 2, cb), ("C", "ALA", 2, c1), ("O", "ALA", 2, o1),
            ("N", "NME", 3, n2), ("CH3", "NME", 3, ch3b)]


def cmd_pdb(args) -> None:
    atoms = build_heavy_atoms(args.phi, args.psi)
    xyz = np.array([a[3] for a in atoms])
    xyz -= xyz.mean(0)
    xyz += 10 * BOX_NM / 2  # centre in the box
    lines = [f"REMARK   ACE-ALA-NME heavy atoms from standard internal coordinates (phi {args.phi:g}, psi {args.psi:g})",
             f"CRYST1{10 * BOX_NM:9.3f}{10 * BOX_NM:9.3f}{10 * BOX_NM:9.3f}  90.00  90.00  90.00 P 1           1"]
    for i, ((name, res, resid, _), p) in enumerate(zip(atoms, xyz), 1):
        el = name[0]
        aname = f" {name:<3s}" if len(name) < 4 else name
        lines.append(f"ATOM  {i:5d} {aname} {res:3s} A{resid:4d}    {p[0]:8.3f}{p[1]:8.3f}{p[2]:8.3f}  1.00  0.00          {el:>2s}")
    lines += ["TER", "END"]
    Path(args.out).write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------- md
# OBC generalized-Born parameters (radius nm, Hawkins-Cramer-Truhlar scale) per AMBER atom type, as
# OpenMM's amber99_obc.xml has them for these residues (ACE, ALA, NME)
OBC_PARAMETERS = {"N": (0.1706, 0.79), "H": (0.115, 0.85), "CT": (0.19, 0.72), "H1": (0.125, 0.85),
                  "HC": (0.125, 0.85), "C": (0.1875, 0.72), "O": (0.148, 0.85)}


def add_obc_solvent(system, top_path: str, solvent_dielectric: float = 78.5) -> None:
    """Add OpenMM's GBSAOBCForce (OBC II, with the ACE surface-area term) to a vacuum ``system`` made
    from the GROMACS topology file ``top_path`` (atom types read by backmap's topology reader):
    implicit water around the NoCutoff solute."""
    import openmm

    from backmap.engine.loaders import load_topology

    gb = openmm.GBSAOBCForce()
    gb.setNonbondedMethod(openmm.GBSAOBCForce.NoCutoff)
    gb.setSoluteDielectric(1.0)
    gb.setSolventDielectric(solvent_dielectric)
    nb = next(f for f in system.getForces() if isinstance(f, openmm.NonbondedForce))
    types = [str(t) for t in load_topology(top_path).atom_types]
    if len(types) != system.getNumParticles():
        raise SystemExit(f"error: {len(types)} atom types for {system.getNumParticles()} particles")
    for i, atom_type in enumerate(types):
        if atom_type not in OBC_PARAMETERS:
            raise SystemExit(f"error: no OBC parameters for atom type {atom_type!r} (atom {i + 1})")
        charge = nb.getParticleParameters(i)[0]
        radius, scale = OBC_PARAMETERS[atom_type]
        gb.addParticle(charge, radius, scale)
    system.addForce(gb)


def _write_gro(path: Path, u, pos_nm: np.ndarray, title: str) -> None:
    u.atoms.positions = pos_nm * 10.0
    u.dimensions = [10 * BOX_NM] * 3 + [90.0] * 3
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        u.atoms.write(str(path))
    # MDAnalysis writes its own title; keep ours
    lines = path.read_text().splitlines(True)
    lines[0] = title + "\n"
    path.write_text("".join(lines))


def cmd_md(args) -> None:
    import MDAnalysis as mda
    import openmm
    from openmm import app, unit

    t0 = time.time()
    gro = app.GromacsGroFile(args.gro)
    top = app.GromacsTopFile(args.top, includeDir=args.include_dir)
    system = top.createSystem(nonbondedMethod=app.NoCutoff, constraints=app.HBonds)
    if args.implicit_solvent == "obc":
        add_obc_solvent(system, args.top)
    # no centre-of-mass motion remover: vacuum Langevin dynamics; the molecule is centred on output
    for i in reversed(range(system.getNumForces())):
        if isinstance(system.getForce(i), openmm.CMMotionRemover):
            system.removeForce(i)
    integrator = openmm.LangevinMiddleIntegrator(args.temperature * unit.kelvin, args.friction / unit.picosecond,
                                                 args.dt * unit.picoseconds)
    integrator.setRandomNumberSeed(args.seed)
    platform = openmm.Platform.getPlatformByName(args.platform)
    props = {"Threads": str(args.threads)} if args.platform == "CPU" else {}
    sim = app.Simulation(top.topology, system, integrator, platform, props)
    sim.context.setPositions(gro.positions)
    e0 = sim.context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    sim.minimizeEnergy(tolerance=1.0 * unit.kilojoule_per_mole / unit.nanometer, maxIterations=0)
    e_min = sim.context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    sim.context.setVelocitiesToTemperature(args.temperature * unit.kelvin, args.seed)
    steps_per_ps = round(1.0 / args.dt)
    t_setup = time.time() - t0

    t1 = time.time()
    sim.step(round(args.equil_ps * steps_per_ps))
    t_equil = time.time() - t1

    every = round(args.every_ps * steps_per_ps)
    n_frames = round(args.prod_ps / args.every_ps)
    n_atoms = system.getNumParticles()
    masses = np.array([system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(n_atoms)])
    u = mda.Universe(args.gro)
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    centre = np.full(3, BOX_NM / 2)
    energies = np.empty(n_frames)
    kinetic = np.empty(n_frames)
    t2 = time.time()
    dof = 3 * n_atoms - system.getNumConstraints()
    R = unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin)
    with mda.Writer(str(out / "traj.xtc"), n_atoms=n_atoms) as w:
        for k in range(n_frames):
            if k:  # frame 0 = end of equilibration, t = 0
                sim.step(every)
            st = sim.context.getState(getPositions=True, getEnergy=True)
            x = st.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
            x = x - (masses[:, None] * x).sum(0) / masses.sum() + centre
            energies[k] = st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
            kinetic[k] = st.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole)
            u.atoms.positions = x * 10.0
            u.dimensions = [10 * BOX_NM] * 3 + [90.0] * 3
            u.trajectory.ts.time = k * args.every_ps
            w.write(u.atoms)
            if k == 0:
                _write_gro(out / "conf.gro", u, x,
                           f"ACE-ALA-NME vacuum, amber99sb-ildn, {args.temperature:g} K, t= 0.00000 (OpenMM, seed {args.seed})")
            if args.progress and k and k % args.progress == 0:
                el = time.time() - t2
                print(f"  frame {k}/{n_frames}  {el:.0f} s  ({k * args.every_ps / 1000 / (el / 86400):.0f} ns/day)",
                      flush=True)
    t_prod = time.time() - t2
    times = np.arange(n_frames) * args.every_ps
    np.savetxt(out / "energies.csv", np.c_[times, energies], delimiter=",", fmt=["%.1f", "%.6f"],
               header="time_ps,potential_kJ_mol", comments="")
    T = 2 * kinetic / (dof * R)
    info = {
        "openmm_version": openmm.__version__, "platform": args.platform, "threads": args.threads,
        "implicit_solvent": args.implicit_solvent, "seed": args.seed, "temperature_K": args.temperature, "friction_per_ps": args.friction, "dt_ps": args.dt,
        "equil_ps": args.equil_ps, "prod_ps": args.prod_ps, "every_ps": args.every_ps, "n_frames": n_frames,
        "n_atoms": n_atoms, "n_constraints": system.getNumConstraints(), "dof": dof,
        "potential_initial": e0, "potential_minimised": e_min,
        "potential_mean": float(energies.mean()), "potential_std": float(energies.std()),
        "temperature_mean_K": float(T.mean()),
        "seconds_setup": t_setup, "seconds_equil": t_equil, "seconds_prod": t_prod,
        "ns_per_day": args.prod_ps / 1000 / (t_prod / 86400) if t_prod > 0 else None,
    }
    (out / "md_info.json").write_text(json.dumps(info, indent=1) + "\n")
    print(json.dumps(info, indent=1))


# -------------------------------------------------------------------------------- crosscheck
def cmd_crosscheck(args) -> None:
    import MDAnalysis as mda
    import openmm
    from openmm import app, unit

    from backmap.engine.loaders import load_topology
    from backmap.forcefield import ForceField
    from backmap.forcefield.settings import NonbondedSettings

    topology = load_topology(args.top)
    settings = NonbondedSettings(rvdw=args.cutoff, rcoulomb=args.cutoff, coulomb="reaction-field", epsilon_rf=1.0,
                                 vdw_modifier="none")
    ff = ForceField(topology, settings)
    u = mda.Universe(args.gro, args.xtc)
    idx = np.unique(np.linspace(0, len(u.trajectory) - 1, args.n_frames).round().astype(int))
    X = np.stack([u.trajectory[i].positions.copy() / 10.0 for i in idx])  # nm
    box = np.tile([args.box, args.box, args.box, 90.0, 90.0, 90.0], (len(X), 1))
    X = X - X.mean(1, keepdims=True) + args.box / 2
    terms = ff.energy(X, box).numpy()
    ours = terms["potential"]

    # OpenMM on the same (xtc-rounded) coordinates, with and without per-force groups
    top = app.GromacsTopFile(args.top, includeDir=args.include_dir)
    system = top.createSystem(nonbondedMethod=app.NoCutoff, constraints=None)
    names = {}
    for i, f in enumerate(system.getForces()):
        f.setForceGroup(i)
        names[i] = type(f).__name__
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    omm = np.empty(len(X))
    omm_groups = {n: np.empty(len(X)) for n in names.values()}
    for k, x in enumerate(X):
        ctx.setPositions(x)
        omm[k] = ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        for g, n in names.items():
            omm_groups[n][k] = ctx.getState(getEnergy=True, groups={g}).getPotentialEnergy().value_in_unit(
                unit.kilojoule_per_mole)
    # the constant reaction-field (epsilon_rf = 1: plain cut-off) shift: -f q_i q_j / r_c over non-excluded
    # pairs and excluded pairs, and -f q_i^2 / (2 r_c) per atom, i.e. -f (sum q)^2 / (2 r_c) in all
    q = ff.params.charges
    c_shift = -138.935458 * q.sum() ** 2 / (2 * args.cutoff)
    diff = ours - omm
    # per-term comparison: bonded terms map onto OpenMM forces one-to-one
    pairs = {"bond": ["HarmonicBondForce"], "angle": ["HarmonicAngleForce"],
             "proper": ["PeriodicTorsionForce"]}
    per_term = {}
    for ours_name, omm_names in pairs.items():
        o = sum(omm_groups[n] for n in omm_names if n in omm_groups)
        per_term[ours_name] = {"max_abs_diff": float(np.abs(terms.get(ours_name, 0) - o).max())}
    nb_ours = sum(terms[k] for k in ("lj", "coulomb", "lj14", "coulomb14") if k in terms)
    nb_omm = omm_groups.get("NonbondedForce", 0)
    per_term["nonbonded (lj+coulomb+14)"] = {"mean_diff": float((nb_ours - nb_omm).mean()),
                                             "std_diff": float((nb_ours - nb_omm).std())}
    result = {
        "frames": idx.tolist()[:5] + (["..."] if len(idx) > 5 else []), "n_frames": len(idx),
        "settings": settings.model_dump(include={"rvdw", "rcoulomb", "coulomb", "epsilon_rf", "vdw_modifier"}),
        "box_nm": args.box,
        "mean_diff_ours_minus_openmm": float(diff.mean()), "std_diff": float(diff.std()),
        "max_abs_dev_from_mean": float(np.abs(diff - diff.mean()).max()),
        "expected_constant_shift_-f(sum q)^2/(2rc)": float(c_shift),
        "net_charge": float(q.sum()),
        "openmm_potential_mean": float(omm.mean()), "ours_potential_mean": float(ours.mean()),
        "per_term": per_term,
        "ours_terms_frame0": {k: float(v[0]) for k, v in terms.items()},
        "openmm_forces_frame0": {n: float(v[0]) for n, v in omm_groups.items()},
    }
    if args.energies:  # OpenMM energies at full precision (energies.csv) vs the xtc-rounded coordinates
        e_full = np.loadtxt(args.energies, delimiter=",", skiprows=1)[idx, 1]
        result["xtc_rounding_openmm_minus_energies_csv"] = {"mean": float((omm - e_full).mean()),
                                                           "std": float((omm - e_full).std())}
    if args.gmx_rerun:  # third opinion: GROMACS mdrun -rerun with the same settings (single precision)
        from backmap.system.gmx import rerun, rerun_mdp

        mdp = rerun_mdp(args.cutoff, coulomb="reaction-field", epsilon_rf=1.0, vdw_modifier="None")
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:  # grompp checks the cut-off against the .gro's box
            gro = Path(tmp) / "box.gro"
            lines = Path(args.gro).read_text().splitlines()
            gro.write_text("\n".join(lines[:-1] + [f"{args.box:10.5f}" * 3]) + "\n")
            rr = rerun(Path(args.top), gro, X, np.tile(np.eye(3) * args.box, (len(X), 1, 1)), mdp)
        g = rr.energies["potential"]
        result["gromacs_rerun"] = {"mean_diff_ours_minus_gmx": float((ours - g).mean()),
                                   "std_diff_ours_minus_gmx": float((ours - g).std()),
                                   "std_diff_gmx_minus_openmm": float((g - omm).std())}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if not result["std_diff"] < args.tol:
        print(f"error: ours - OpenMM spread {result['std_diff']:.3g} kJ/mol exceeds {args.tol}", file=sys.stderr)
        sys.exit(2)


# ----------------------------------------------------------------------------------- analyse
def basin_of(phi: np.ndarray, psi: np.ndarray) -> np.ndarray:
    """Basin label of each (phi, psi) (degrees), a coarse partition for vacuum alanine dipeptide.
    phi is first wrapped to [-240, 120) so that the extended region across phi = ±180 stays on the
    phi < 0 side. C5 (extended): phi < -120 and (psi >= 120 or psi < -150); C7eq: the rest of
    phi < 0, psi >= 0 (includes the PII region, C7eq's shoulder in vacuum); alphaR: phi < 0,
    -120 <= psi < 0; C7ax: 0 <= phi < 120, psi < 0; alphaL: 0 <= phi < 120, psi >= 0; other: the rest
    of phi < 0, psi < -120."""
    phi = wrap_phi(phi)
    lab = np.full(phi.shape, "other", dtype=object)
    left = phi < 0
    lab[left & (psi >= 0)] = "C7eq"
    lab[left & (phi < -120) & ((psi >= 120) | (psi < -150))] = "C5"
    lab[left & (psi < 0) & (psi >= -120)] = "alphaR"
    lab[~left & (psi < 0)] = "C7ax"
    lab[~left & (psi >= 0)] = "alphaL"
    return lab


def wrap_phi(phi: np.ndarray) -> np.ndarray:
    """phi (degrees) in [-240, 120)."""
    return np.where(phi >= 120, phi - 360, phi)


def phi_psi(gro: str, xtc: str) -> tuple[np.ndarray, np.ndarray]:
    import MDAnalysis as mda

    u = mda.Universe(gro, xtc)
    sel = lambda res, name: u.select_atoms(f"resname {res} and name {name}")[0].index
    c0, n1, ca, c1, n2 = sel("ACE", "C"), sel("ALA", "N"), sel("ALA", "CA"), sel("ALA", "C"), sel("NME", "N")
    X = np.stack([ts.positions[[c0, n1, ca, c1, n2]].copy() for ts in u.trajectory])
    return dihedral(X[:, 0], X[:, 1], X[:, 2], X[:, 3]), dihedral(X[:, 1], X[:, 2], X[:, 3], X[:, 4])


def cmd_analyse(args) -> None:
    phi, psi = phi_psi(args.gro, args.xtc)
    lab = basin_of(phi, psi)
    n = len(lab)
    pops = {b: float((lab == b).mean()) for b in ("C7eq", "C5", "alphaR", "C7ax", "alphaL", "other")}
    # transitions between phi < 0 and 0 <= phi < 120 (C7eq/C5 <-> C7ax/alphaL: slow in vacuum)
    side = wrap_phi(phi) >= 0
    result = {"n_frames": n, "populations": pops, "phi_sign_changes": int(np.count_nonzero(np.diff(side))),
              "frames_0_le_phi_lt_120": int(side.sum()),
              "definitions": "phi wrapped to [-240, 120); C5: phi<-120 and (psi>=120 or psi<-150); C7eq: other "
                             "phi<0, psi>=0; alphaR: phi<0, -120<=psi<0; C7ax: phi>=0, psi<0; alphaL: phi>=0, "
                             "psi>=0; other: rest of phi<0, psi<-120"}
    if args.mean_phipsi:
        for b in ("C7eq", "C5", "alphaR", "C7ax"):
            m = lab == b
            if m.any():
                result[f"mean_phi_psi_{b}"] = [float(np.degrees(np.angle(np.exp(1j * np.radians(a[m])).mean())))
                                              for a in (phi, psi)]
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


# --------------------------------------------------------------------------------------- cut
def copy_xtc_frames(source, target, frames: int) -> None:
    """The first ``frames`` frames of the xtc ``source`` into ``target``, coordinates copied exactly
    (same precision); an error if it has fewer. Also used by dipeptide_cg.py."""
    from MDAnalysis.lib.formats.libmdaxdr import XTCFile

    n = 0
    with XTCFile(str(source)) as src, XTCFile(str(target), "w") as dst:
        for frame in src:
            if n == frames:
                break
            # xtc keeps ≤ 9 atoms uncompressed, without a precision (read back as ~0): write those at 1000
            dst.write(frame.x, frame.box, frame.step, frame.time, frame.prec if frame.prec > 1 else 1000.0)
            n += 1
    if n != frames:
        raise SystemExit(f"error: {source} has only {n} frames, {frames} asked for")


def cmd_cut(args) -> None:
    """The first N frames of an xtc (coordinates copied exactly: same precision) and energies.csv."""
    import MDAnalysis as mda

    copy_xtc_frames(args.xtc, args.out_xtc, args.frames)
    if args.energies:
        lines = Path(args.energies).read_text().splitlines(True)
        Path(args.out_energies).write_text("".join(lines[: args.frames + 1]))
    # check
    u = mda.Universe(args.gro, args.out_xtc) if args.gro else None
    if u is not None and len(u.trajectory) != args.frames:
        raise SystemExit("error: frame count of the cut trajectory is wrong")


# -------------------------------------------------------------------------------------- main
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("pdb", help="heavy-atom PDB of ACE-ALA-NME")
    s.add_argument("--out", required=True)
    s.add_argument("--phi", type=float, default=-80.0)
    s.add_argument("--psi", type=float, default=80.0)
    s.set_defaults(func=cmd_pdb)

    s = sub.add_parser("md", help="OpenMM MD, vacuum or OBC implicit water")
    s.add_argument("--top", required=True)
    s.add_argument("--gro", required=True)
    s.add_argument("--include-dir", default="/usr/share/gromacs/top")
    s.add_argument("--outdir", required=True)
    s.add_argument("--seed", type=int, default=2024)
    s.add_argument("--temperature", type=float, default=300.0)
    s.add_argument("--friction", type=float, default=1.0, help="1/ps")
    s.add_argument("--implicit-solvent", choices=["none", "obc"], default="none",
                   help="obc: OpenMM GBSAOBCForce (OBC II, water dielectric 78.5, ACE surface term)")
    s.add_argument("--dt", type=float, default=0.002, help="ps")
    s.add_argument("--equil-ps", type=float, default=100.0)
    s.add_argument("--prod-ps", type=float, default=1000.0)
    s.add_argument("--every-ps", type=float, default=1.0)
    s.add_argument("--platform", default="CPU")
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--progress", type=int, default=0, help="print progress every N frames")
    s.set_defaults(func=cmd_md)

    s = sub.add_parser("crosscheck", help="backmap ForceField vs OpenMM")
    s.add_argument("--top", required=True)
    s.add_argument("--gro", required=True)
    s.add_argument("--xtc", required=True)
    s.add_argument("--include-dir", default="/usr/share/gromacs/top")
    s.add_argument("--n-frames", type=int, default=20)
    s.add_argument("--cutoff", type=float, default=2.0)
    s.add_argument("--box", type=float, default=5.0)
    s.add_argument("--tol", type=float, default=0.05, help="fail if std(ours - OpenMM) exceeds this (kJ/mol)")
    s.add_argument("--energies", help="energies.csv of the run, to show the effect of xtc rounding")
    s.add_argument("--gmx-rerun", action="store_true", help="also gmx grompp + mdrun -rerun the same frames")
    s.add_argument("--out")
    s.set_defaults(func=cmd_crosscheck)

    s = sub.add_parser("analyse", help="(phi, psi) basin populations")
    s.add_argument("--gro", required=True)
    s.add_argument("--xtc", required=True)
    s.add_argument("--mean-phipsi", action="store_true")
    s.add_argument("--out")
    s.set_defaults(func=cmd_analyse)

    s = sub.add_parser("cut", help="first N frames of traj.xtc (and energies.csv)")
    s.add_argument("--xtc", required=True)
    s.add_argument("--frames", type=int, required=True)
    s.add_argument("--out-xtc", required=True)
    s.add_argument("--energies")
    s.add_argument("--out-energies")
    s.add_argument("--gro", help="check the result against this structure")
    s.set_defaults(func=cmd_cut)
    args = p.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
