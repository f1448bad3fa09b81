"""The ``openmm`` refiner: restrained Langevin dynamics with OpenMM on the CPU.

The system comes from the GROMACS topology (``GromacsTopFile``), with the run's non-bonded settings
(plain cut-off LJ, reaction-field Coulomb, no dispersion correction — it does not change forces).
Every bead's weighted centre is held to its CG position by ``CustomCentroidBondForce`` with the
mapping's weights. Per frame: optionally a restrained relaxation of a *flexible* copy of the system (bond terms
instead of constraints: badly distorted input is untangled before any constraint solver sees it);
a projection onto the bond constraints (backmap.refinement.constraints — OpenMM's CCMA diverges from far
off); restrained, constrained steepest descent (clashes; beads pulled onto the CG); a short warm-up
at a quarter time step; then the sampling steps. The OpenMM contexts are built once and reused for every
frame.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from backmap.api import BackmapError, Refiner
from backmap.api.forcefield import BOLTZMANN, excluded_pair_list, pair_list
from backmap.api.io import atomic_path, heartbeat, openmm_platform_for, to_host
from backmap.api.recipes import InputPath
from backmap.api.refinement import RefineInputs, RefineParams, RefineResult, RestrainedSystem, resolve_constraints


class OpenMMParams(RefineParams):
    integrator: Literal["langevin", "ghmc"] = Field(
        "langevin", description="langevin: OpenMM's LangevinMiddleIntegrator (a finite-time-step bias); ghmc: "
                                "generalized hybrid Monte Carlo — the same step with a Metropolis test on the total "
                                "energy and a momentum flip on rejection, partial momentum refresh at 'friction' "
                                "(exact for the restrained, constrained Boltzmann distribution at any time step; "
                                "the log gains ghmc_acceptance)")
    threads: int = Field(0, ge=0, description="CPU threads for OpenMM (0: OpenMM's default, all cores)")
    platform: Literal["auto", "CPU", "Reference", "CUDA", "OpenCL"] = Field(
        "auto", description="OpenMM platform: auto (CUDA, else OpenCL, in mixed precision on the run's GPU device; "
                            "else CPU), or one by name (backmap --version lists those installed)")
    hydrogen_mass: float | None = Field(None, gt=0, description="hydrogen mass in amu (repartitioned from the bonded "
                                                                "heavy atom; None: the topology's): the positions' "
                                                                "Boltzmann distribution does not depend on masses, "
                                                                "and heavier hydrogens allow a longer time step "
                                                                "(3–4 amu with 3–4 fs)")
    max_displacement: float = Field(0.002, gt=0, description="largest move of an atom per minimization step (nm)")
    minimize_restraint: float = Field(1.0e4, ge=0, description="restraint k while minimizing the flexible copy "
                                                               "(relax_steps), capped at 'restraint': softer than "
                                                               "the bonds, so that a far-off input is not pulled apart")
    relax_steps: int = Field(0, ge=0, description="flexible-bond restrained Langevin steps at a quarter of the "
                                                  "time step after minimizing, before the constraints are "
                                                  "imposed: untangles badly distorted input (rings, far-off beads)")
    relax_bond_k: float = Field(2.0e5, ge=0, description="lower bound of the bond force constants in the flexible "
                                                         "copy (kJ/mol/nm²): topologies made for constraints can "
                                                         "have soft bonds (sPS: 10⁴), and a hot relaxation on them "
                                                         "drifts far from the lengths the constraint solver restores")
    stiff_bonds: bool = Field(False, description="sample every frame on the flexible copy (bonds stiffened to "
                                                 "relax_bond_k, a quarter of the time step, four times the steps) "
                                                 "and project onto the constraints at the end, instead of "
                                                 "constrained dynamics: slower, but independent of OpenMM's "
                                                 "constraint solver (the last retry does this)")
    retry: bool = Field(True, description="a frame whose dynamics blow up is run again at half the time step, "
                                          "then after a flexible relaxation (retry_relax_steps), then with "
                                          "stiff bonds instead of constraints, projected at the end")
    retry_relax_steps: int = Field(1000, ge=0, description="flexible-bond restrained Langevin steps of the last "
                                                           "retry (0: no such retry)")
    warmup_steps: int = Field(100, ge=0, description="dynamics steps at a quarter of the time step first "
                                                     "(velocities meet a minimized structure)")
    trace: Path | None = Field(None, description=".npz of the positions (float32) every trace_every sampling steps "
                                                 "with the process's CPU seconds (decorrelation analysis; the "
                                                 "first frame refined only)")
    trace_every: int = Field(25, ge=1, description="sampling steps between trace records")
    stereo_reference: InputPath | None = Field(
        None, description="AA structure of the system whose stereocentres' hands the dynamics keep: a one-sided "
                          "restraint on one improper per centre, and each centre still inverted at the end reflected "
                          "back (log: centres_reinverted); in a recipe, the backmap step's stereo reference")
    stereo_k: float = Field(200.0, ge=0, description="kJ/mol of that restraint: zero while the improper has the "
                                                      "reference's sign, k·sin²(improper) beyond")
    stereo_relax_steps: int = Field(100, ge=0, description="dynamics steps after centres were reflected back, "
                                                           "the restraint on: a reflected centre's hydrogen and "
                                                           "neighbours relax instead of staying where the mirror "
                                                           "put them; centres inverted again are reflected once "
                                                           "more (log: centres_reinverted_after_relax; "
                                                           "stereo_relax_failed where the steps blew up)")


def zero_unlisted_pairs(omm, listed: np.ndarray, excluded: np.ndarray) -> int:
    """GROMACS computes nothing for an excluded pair (within ``nrexcl`` bonds, or in
    ``[ exclusions ]``) unless the topology lists it as a 1-4 pair; OpenMM's ``GromacsTopFile``
    makes 1-4 interactions for every 1-4 pair of the bonds, also in molecule types without
    ``[ pairs ]``. Those excluded and unlisted are zeroed (Coulomb and LJ); a 1-4 pair beyond
    ``nrexcl`` (``nrexcl = 2``) is an ordinary pair in GROMACS and keeps OpenMM's interaction.
    Returns how many were zeroed."""
    import openmm as mm

    keep = {(int(i), int(j)) for i, j in listed}
    drop = {(int(i), int(j)) for i, j in excluded} - keep
    zeroed = 0
    for force in omm.getForces():
        if isinstance(force, mm.NonbondedForce):
            for k in range(force.getNumExceptions()):
                i, j, q, sigma, eps = force.getExceptionParameters(k)
                if (min(i, j), max(i, j)) in drop and (q._value != 0 or eps._value != 0):
                    force.setExceptionParameters(k, i, j, 0.0, sigma, 0.0)
                    zeroed += 1
        elif isinstance(force, mm.CustomBondForce) and "r^12" in force.getEnergyFunction():  # 1-4 LJ, rules 1/3
            for k in range(force.getNumBonds()):
                i, j, values = force.getBondParameters(k)
                if (min(i, j), max(i, j)) in drop:
                    force.setBondParameters(k, i, j, [0.0] * len(values))
    return zeroed


class OpenMMRefiner(Refiner):
    name = "openmm"
    summary = "restrained Langevin dynamics in OpenMM (GROMACS topology, CPU)"
    Params = OpenMMParams

    def take_inputs(self, inputs: RefineInputs) -> None:
        """The backmapping's stereo reference, where the parameters name none."""
        if inputs.stereo_reference is not None and self.params.stereo_reference is None:
            self.params = self.params.model_copy(update={"stereo_reference": Path(inputs.stereo_reference)})

    def prepare(self, system: RestrainedSystem) -> None:
        if system.topology_path is None or system.topology_path.suffix != ".top":
            raise BackmapError("the openmm refiner reads the GROMACS .top file of the system; "
                               "give the system's topology as a .top", source=system.topology_path)
        self.system = system
        self.params = resolve_constraints(self.params, system, self.name)
        self.groups = system.bead_groups()
        self._centres = None
        if self.params.stereo_reference is not None:
            from backmap.api.sampling import load_chiral_centres

            self._centres = load_chiral_centres(system.topology, self.params.stereo_reference)
        self._contexts = None
        self._traced = False

    # ------------------------------------------------------------------ building
    def _openmm_system(self, top, constraints, k: float, box: np.ndarray):
        """An OpenMM System of the topology with the run's non-bonded settings and the restraint
        (force group 1; everything else group 0). PME as GROMACS sets it up: β from ewald-rtol and
        r_c, the grid from fourier-nx/ny/nz or fourierspacing."""
        import openmm as mm
        import openmm.app as app
        import openmm.unit as u

        nb = self.system.nonbonded
        cutoff = 1.0 if nb is None else nb.cutoff
        pme = nb is not None and nb.coulomb == "pme"
        omm = top.createSystem(nonbondedMethod=app.PME if pme else app.CutoffPeriodic,
                               nonbondedCutoff=cutoff * u.nanometer, constraints=constraints,
                               rigidWater=constraints is not None, hydrogenMass=self._hydrogen_mass(),
                               **({"ewaldErrorTolerance": nb.ewald_rtol} if pme else {}))
        if omm.getNumParticles() != self.system.n_atoms:
            raise BackmapError(f"OpenMM built {omm.getNumParticles()} particles, the topology has "
                               f"{self.system.n_atoms}", source=self.system.topology_path)
        zero_unlisted_pairs(omm, pair_list(self.system.topology), excluded_pair_list(self.system.topology))
        for force in omm.getForces():
            if isinstance(force, mm.CustomNonbondedForce):  # e.g. geometric LJ combination; constant in NVT
                force.setUseLongRangeCorrection(False)
            if isinstance(force, mm.NonbondedForce):
                force.setUseDispersionCorrection(False)
                if pme:
                    grid = [n or int(np.ceil(np.linalg.norm(row) / nb.fourier_spacing))
                            for n, row in zip(nb.fourier_n, box)]
                    force.setPMEParameters(nb.ewald_coefficient(), *grid)
                else:
                    force.setReactionFieldDielectric(1.0 if nb is None or nb.coulomb == "cutoff"
                                                     else (nb.epsilon_rf or 1e10))
                if nb is not None and nb.coulomb == "none":
                    for i in range(force.getNumParticles()):
                        _q, sig, eps = force.getParticleParameters(i)
                        force.setParticleParameters(i, 0.0, sig, eps)
            force.setForceGroup(0)
        restraint = mm.CustomCentroidBondForce(1, "0.5*k_restraint*((x1-x0)^2+(y1-y0)^2+(z1-z0)^2)")
        restraint.addGlobalParameter("k_restraint", k)
        for name in ("x0", "y0", "z0"):
            restraint.addPerBondParameter(name)
        for atoms, weights in self.groups:
            g = restraint.addGroup([int(a) for a in atoms], [float(w) for w in weights])
            restraint.addBond([g], [0.0, 0.0, 0.0])
        restraint.setForceGroup(1)
        omm.addForce(restraint)
        if self._centres is not None and self.params.stereo_k > 0:
            omm.addForce(self._stereo_force())
        return omm, restraint

    def _stereo_force(self):
        """Each stereocentre's hand held: for its heaviest neighbour triple (a, b, d) — forces on
        hydrogens would need a shorter time step — the improper (c, a, b, d) pushed back where its
        sign is not the one the reference's hand gives, by k·sin²(θ) on that side and nothing on
        the other: bounded and smooth, so a distorted centre of the input is not kicked (force
        group 0: part of the target, as a bond is)."""
        import openmm as mm

        topology, centres = self.system.topology, self._centres
        rows, slots = centres.global_rows(topology)
        sign = centres.sign[rows[:, 0], slots]
        lightest = topology.masses[rows[:, 1:]].min(1)
        best = {}
        for k in np.lexsort((-lightest, rows[:, 0])):  # per centre, the row whose lightest atom is heaviest
            best.setdefault(int(rows[k, 0]), k)
        # the improper's sign against the signed volume (a−c)·((b−c)×(d−c)): fixed for any four points
        ideal = np.array([[0, 0, 0], [1, 1, 1], [1, -1, -1], [-1, 1, -1]], float)
        volume = np.dot(ideal[1] - ideal[0], np.cross(ideal[2] - ideal[0], ideal[3] - ideal[0]))
        relative = np.sign(_dihedral(*ideal) * volume)
        force = mm.CustomTorsionForce("k_stereo*min(0, sin(s*theta))^2")
        force.addGlobalParameter("k_stereo", self.params.stereo_k)
        force.addPerTorsionParameter("s")
        for k in best.values():
            if sign[k] != 0:
                force.addTorsion(*map(int, rows[k]), [float(sign[k] * relative)])
        force.setUsesPeriodicBoundaryConditions(True)  # frames may come wrapped into the box
        force.setForceGroup(0)
        return force

    def _hydrogen_mass(self):
        import openmm.unit as u

        return None if self.params.hydrogen_mass is None else self.params.hydrogen_mass * u.amu

    def _build(self, box: np.ndarray) -> None:
        import openmm as mm
        import openmm.app as app
        import openmm.unit as u

        from backmap.api.system import gromacs_topdir

        p = self.params
        topdir = gromacs_topdir()
        try:
            top = app.GromacsTopFile(str(self.system.topology_path), periodicBoxVectors=box * u.nanometer,
                                     includeDir=str(topdir) if topdir else None)
        except Exception as exc:  # OpenMM raises ValueError/Exception for unsupported directives
            raise BackmapError(f"OpenMM cannot read the topology: {exc}", source=self.system.topology_path) from exc
        name, props = openmm_platform_for(p.platform, self.device, where=f"{self.name}: platform")
        platform = mm.Platform.getPlatformByName(name)
        if p.threads and name == "CPU":
            props["Threads"] = str(p.threads)
        constraints = {"none": None, "h-bonds": app.HBonds, "all-bonds": app.AllBonds}[p.constraints]
        omm, restraint = self._openmm_system(top, constraints, p.restraint, box)
        self._top, self._platform, self._props, self._box = top, platform, props, box
        self._systems = {"dynamics": (omm, restraint)}
        self._contexts = {}
        self._seed = None
        self._new_dynamics(0)
        if p.relax_steps:
            self._build_flexible()
        if p.constraints != "none":
            from backmap.api.refinement import BondConstraints

            pairs, lengths = self.system.constrained_bonds(p.constraints)
            self._projector = BondConstraints(pairs, lengths, self.system.topology.masses)
        self._dof = 3 * omm.getNumParticles() - omm.getNumConstraints() - 3

    def _build_flexible(self) -> None:
        """The flexible copy (bond terms, no constraints) for restrained relaxation of distorted input."""
        import openmm as mm
        import openmm.unit as u

        p = self.params
        flexible, flex_restraint = self._openmm_system(self._top, None, p.restraint, self._box)
        for force in flexible.getForces():
            if isinstance(force, mm.HarmonicBondForce):
                for b in range(force.getNumBonds()):
                    i, j, length, k = force.getBondParameters(b)
                    if k.value_in_unit(u.kilojoule_per_mole / u.nanometer**2) < p.relax_bond_k:
                        force.setBondParameters(b, i, j, length, p.relax_bond_k)
        self._systems["flexible"] = (flexible, flex_restraint)
        self._new_flexible(self._seed or 0)

    # OpenMM reads an integrator's random seed only when its Context is made (set later, even with
    # reinitialize(), the noise differs from run to run): a frame's own seed needs fresh contexts.
    def _new_dynamics(self, seed: int) -> None:
        import openmm as mm
        import openmm.unit as u

        p = self.params
        if p.integrator == "ghmc":
            self._dynamics = ghmc_integrator(p.temperature, p.friction, p.timestep)
        else:
            self._dynamics = mm.LangevinMiddleIntegrator(p.temperature * u.kelvin, p.friction / u.picosecond,
                                                         p.timestep * u.picosecond)
        self._dynamics.setConstraintTolerance(1e-6)
        self._dynamics.setRandomNumberSeed(seed)
        self._integrator = mm.CompoundIntegrator()
        self._integrator.addIntegrator(self._dynamics)
        self._integrator.addIntegrator(_steepest_descent(p.max_displacement, constrained=True))
        omm, restraint = self._systems["dynamics"]
        self._contexts["dynamics"] = (mm.Context(omm, self._integrator, self._platform, self._props), restraint)
        self._seed = seed

    def _new_flexible(self, seed: int) -> None:
        import openmm as mm
        import openmm.unit as u

        p = self.params
        langevin = mm.LangevinMiddleIntegrator(p.temperature * u.kelvin, p.friction / u.picosecond,
                                               p.timestep / 4 * u.picosecond)
        langevin.setRandomNumberSeed(seed)
        self._flexible = mm.CompoundIntegrator()
        self._flexible.addIntegrator(_steepest_descent(p.max_displacement))
        self._flexible.addIntegrator(langevin)
        flexible, flex_restraint = self._systems["flexible"]
        self._contexts["flexible"] = (mm.Context(flexible, self._flexible, self._platform, self._props),
                                      flex_restraint)

    def _reseed(self, seed: int) -> None:
        """Contexts whose Langevin noise comes from ``seed`` (made anew when the seed changes)."""
        if seed == self._seed:
            return
        self._new_dynamics(seed)
        if "flexible" in self._systems:
            self._new_flexible(seed)

    # ------------------------------------------------------------------ per frame
    def _load(self, which: str, x: np.ndarray, target: np.ndarray, box: np.ndarray):
        """Put one frame into a context: box, restraint targets, positions."""
        import openmm as mm
        import openmm.unit as u

        ctx, restraint = self._contexts[which]
        ctx.setPeriodicBoxVectors(*(mm.Vec3(*row) * u.nanometer for row in box))
        for b, r in enumerate(target):
            restraint.setBondParameters(b, [b], [float(v) for v in r])
        restraint.updateParametersInContext(ctx)
        ctx.setPositions(x * u.nanometer)
        return ctx

    @staticmethod
    def _energy(ctx, group: int) -> float:
        import openmm.unit as u

        return ctx.getState(getEnergy=True, groups={group}).getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)

    def energy_forces(self, x: np.ndarray, target: np.ndarray, box: np.ndarray) -> tuple[float, float, np.ndarray]:
        """(force-field energy, restraint energy, total forces (N, 3)) of one structure in the
        dynamics context, kJ/mol and kJ/mol/nm (for checks against backmap's own force field)."""
        import openmm.unit as u

        if self._contexts is None:
            self._build(box)
        ctx = self._load("dynamics", x, target, box)
        forces = ctx.getState(getForces=True).getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer)
        return self._energy(ctx, 0), self._energy(ctx, 1), np.asarray(forces)

    def _refine_one(self, x: np.ndarray, target: np.ndarray, box: np.ndarray, seed: int,
                    slower: int = 1, relax_steps: int | None = None,
                    minimize_steps: int | None = None, stiff: bool = False) -> tuple[np.ndarray, dict]:
        """One frame; ``slower`` divides the time step and multiplies the steps (same simulated time);
        ``relax_steps`` and ``minimize_steps`` override the parameters of those names; ``stiff``
        samples on the flexible copy (stiff bonds, a quarter of the time step) and projects onto the
        constraints at the end."""
        import openmm.unit as u

        p = self.params
        k_soft = min(p.minimize_restraint, p.restraint) or p.restraint
        relax_steps = p.relax_steps if relax_steps is None else relax_steps
        minimize_steps = p.minimize_steps if minimize_steps is None else minimize_steps
        if relax_steps or stiff:  # flexible bonds first: minimize, then restrained Langevin
            if "flexible" not in self._systems:
                self._build_flexible()
            ctx = self._load("flexible", x, target, box)
            ctx.setParameter("k_restraint", k_soft)
            self._flexible.setCurrentIntegrator(0)
            _reset_steepest_descent(self._flexible.getIntegrator(0), p.max_displacement)
            self._flexible.step(minimize_steps)
            ctx.setVelocitiesToTemperature(p.temperature * u.kelvin, seed)
            self._flexible.setCurrentIntegrator(1)
            for stage in range(1, 6):  # the restraint grows geometrically from k_soft to k: a bead far off
                # its CG position is pulled in gradually instead of being shot there
                ctx.setParameter("k_restraint", k_soft * (p.restraint / k_soft) ** (stage / 5))
                self._flexible.step(relax_steps // 5 + (stage <= relax_steps % 5))
            if stiff:
                return self._sample_stiff(ctx, slower)
            x = ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(u.nanometer)
        if p.constraints != "none":  # a robust projection first: OpenMM's CCMA diverges from far off
            projected = self._project(x)
            if projected is not None:  # else OpenMM's own solver below gets the structure as it is
                x = projected
        ctx = self._start_dynamics(x, target, box, minimize_steps, seed)
        self._warm_up(ctx, p.warmup_steps, p.timestep / 4, box)
        self._dynamics.setStepSize(p.timestep / slower)
        if p.integrator == "ghmc":  # count the sampling steps' decisions only
            self._dynamics.setGlobalVariableByName("n_trials", 0.0)
            self._dynamics.setGlobalVariableByName("n_accepted", 0.0)
        if p.trace is not None and not self._traced:
            self._traced = True
            rows = []
            _guarded_steps(self._dynamics, ctx, p.steps * slower, box, chunk=p.trace_every * slower,
                           record=lambda y: rows.append((time.process_time(), y.astype(np.float32))))
            with atomic_path(Path(p.trace)) as tmp:
                np.savez(tmp, cpu_seconds=np.array([r[0] for r in rows]), positions=np.stack([r[1] for r in rows]),
                         steps_between=p.trace_every, timestep=p.timestep / slower)
        else:
            _guarded_steps(self._dynamics, ctx, p.steps * slower, box)
        y, row = self._result(ctx, self._dof)
        if p.integrator == "ghmc":
            trials = self._dynamics.getGlobalVariableByName("n_trials")
            row["ghmc_acceptance"] = self._dynamics.getGlobalVariableByName("n_accepted") / max(trials, 1.0)
        return y, row

    def _sample_stiff(self, ctx, slower: int) -> tuple[np.ndarray, dict]:
        """The sampling steps on the relaxed flexible copy (stiff bonds, a quarter of the time step,
        the same simulated time), then a projection onto the constraints with backmap's solver —
        the fallback for structures on which OpenMM's constraint solver diverges."""
        import openmm as mm

        self._flexible.step(4 * self.params.steps * slower)
        y, row = self._result(ctx, 3 * self.system.n_atoms - 3)
        if self.params.constraints != "none":
            y = self._project(y)
            if y is None:
                raise mm.OpenMMException("the constraints cannot be imposed after stiff-bond sampling")
        return y, row | {"stiff_bonds": True}

    def _project(self, x: np.ndarray) -> np.ndarray | None:
        """``x`` projected onto the bond constraints by backmap's solver, None if it does not converge."""
        import torch

        projected, ok = self._projector.positions(torch.as_tensor(x[None]), torch.as_tensor(x[None]))
        return to_host(projected[0]) if bool(ok.all()) else None

    def _result(self, ctx, dof: int) -> tuple[np.ndarray, dict]:
        """Positions of a context after sampling and the log row (energies, kinetic temperature)."""
        import openmm as mm
        import openmm.unit as u

        state = ctx.getState(getPositions=True, getEnergy=True)
        y = state.getPositions(asNumpy=True).value_in_unit(u.nanometer)
        if not np.isfinite(y).all():
            raise mm.OpenMMException("Particle coordinate is NaN")
        kinetic = state.getKineticEnergy().value_in_unit(u.kilojoule_per_mole)
        return y, {"potential": self._energy(ctx, 0), "restraint": self._energy(ctx, 1),
                   "temperature": 2 * kinetic / (dof * BOLTZMANN)}

    def refine(self, positions: np.ndarray, targets: np.ndarray, boxes: np.ndarray,
               rng: np.random.Generator) -> RefineResult:
        import openmm as mm

        if self._contexts is None:
            self._build(boxes[0])
        out, log = np.empty_like(positions), []
        for k, (x, target, box) in enumerate(zip(positions, targets, boxes)):
            seed = int(rng.integers(1, 2**31 - 1))
            if k == 0:  # new contexts (1–2 s for a constrained system) once per call; a frame after the
                self._reseed(seed)  # first draws its velocities from its own seed, its noise continues the call's
            attempts = [{"stiff": True} if self.params.stiff_bonds else {}]
            # escalating: as given; half the time step; flexible relaxation first; stiff bonds
            if self.params.retry and not self.params.stiff_bonds:
                attempts.append({"slower": 2})
                if self.params.retry_relax_steps > self.params.relax_steps:
                    relax = {"relax_steps": self.params.retry_relax_steps,
                             "minimize_steps": max(self.params.minimize_steps, 100)}
                    attempts.append({"slower": 2, **relax})
                    if self.params.constraints != "none":  # last: no OpenMM constraint solver at all
                        attempts.append({"stiff": True, **relax})
            try:
                for n, attempt in enumerate(attempts):
                    try:
                        slower = attempt.get("slower", 1)
                        out[k], row = self._refine_one(x, target, box, seed, **attempt)
                        if n:
                            row["retried"] = n
                        break
                    except mm.OpenMMException:
                        if n == len(attempts) - 1:
                            raise
            except mm.OpenMMException as exc:
                if self.params.on_failure == "error":
                    raise BackmapError(f"openmm refiner: the dynamics blew up ({exc}); use a smaller timestep, "
                                       "more minimize_steps, warmup_steps or relax_steps, or on_failure: keep") from exc
                out[k], row = x, {"failed": str(exc).split(".")[0]}
            if self._centres is not None:  # what the dynamics inverted (distorted input) put back
                from MDAnalysis.lib.mdamath import triclinic_box

                from backmap.api.sampling import invert_flipped

                dims = triclinic_box(*box)
                out[k], row["centres_reinverted"], _ = invert_flipped(self._centres, self.system.topology, out[k],
                                                                      dims)
                if row["centres_reinverted"] and self.params.stereo_relax_steps and "failed" not in row:
                    relaxed, row["stereo_relax_tries"] = self._relax_reflected(out[k], target, box, seed, slower)
                    if relaxed is None:
                        row["stereo_relax_failed"] = 1
                    else:
                        out[k], row["centres_reinverted_after_relax"], _ = invert_flipped(
                            self._centres, self.system.topology, relaxed, dims)
            log.append(row)
        return RefineResult(out, log)

    def _relax_reflected(self, x: np.ndarray, target: np.ndarray, box: np.ndarray, seed: int,
                         slower: int = 1) -> tuple[np.ndarray | None, int]:
        """From a frame whose centres were reflected back: 20 steps of the constrained steepest
        descent (a mirrored hydrogen may sit on a neighbour), then ``stereo_relax_steps`` of the
        sampling dynamics at the time step the frame's dynamics needed (÷ ``slower``), the first
        quarter at a quarter of it, new velocities; where that blows up, once more from the
        reflected frame with 200 descent steps and a quarter of that time step. Returns the
        positions (None where both blow up: log stereo_relax_failed, the reflected frame is kept)
        and the tries made (log stereo_relax_tries)."""
        import openmm as mm

        p = self.params
        for tries, (descent, gentler) in enumerate(((20, 1), (200, 4)), 1):
            try:
                ctx = self._start_dynamics(x, target, box, descent, seed + 1)
                n, dt = p.stereo_relax_steps, p.timestep / (slower * gentler)
                self._warm_up(ctx, n // 4, dt / 4, box)
                self._dynamics.setStepSize(dt)
                _guarded_steps(self._dynamics, ctx, n - n // 4, box)
                return self._result(ctx, self._dof)[0], tries
            except mm.OpenMMException:
                continue
        return None, tries

    def _start_dynamics(self, x: np.ndarray, target: np.ndarray, box: np.ndarray, descent: int, seed: int):
        """The dynamics context holding ``x``: constraints applied, ``descent`` steps of the
        constrained steepest descent under the full restraint (bonds constrained: the restraint
        cannot pull them apart), velocities drawn at the temperature from ``seed``."""
        import openmm.unit as u

        p = self.params
        ctx = self._load("dynamics", x, target, box)
        if p.constraints != "none":
            ctx.applyConstraints(1e-6)
        if descent:
            ctx.setParameter("k_restraint", p.restraint)
            self._integrator.setCurrentIntegrator(1)
            _reset_steepest_descent(self._integrator.getIntegrator(1), p.max_displacement)
            self._integrator.step(descent)
            self._integrator.setCurrentIntegrator(0)
        ctx.setVelocitiesToTemperature(p.temperature * u.kelvin, seed)
        return ctx

    def _warm_up(self, ctx, steps: int, timestep: float, box: np.ndarray) -> None:
        """``steps`` of the sampling dynamics at a reduced ``timestep`` (fresh velocities meet the
        strain a descent left)."""
        if steps:
            self._dynamics.setStepSize(timestep)
            _guarded_steps(self._dynamics, ctx, steps, box)


def _guarded_steps(integrator, ctx, n: int, box: np.ndarray, chunk: int = 25, record=None) -> None:
    """``n`` steps in chunks, stopping with an OpenMMException as soon as an atom has left any
    sensible region (non-finite, or more than ten box lengths away): once coordinates of a blown-up
    run grow unbounded, OpenMM's CPU neighbour list can crash the process instead of raising (seen
    once in the test suite, a segmentation fault in ``step``), so the blow-up must be caught before."""
    import openmm as mm
    import openmm.unit as u

    bound = 10.0 * float(np.abs(box).max())
    done = 0
    for _ in heartbeat(range(-(-n // chunk)), description=f"openmm: the frame's dynamics, chunks of {chunk} steps"):
        m = min(chunk, n - done)
        integrator.step(m)
        done += m
        x = ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(u.nanometer)
        if not np.isfinite(x).all() or np.abs(x).max() > bound:
            raise mm.OpenMMException(f"Particle coordinate is NaN or far outside the box after {done} steps")
        if record is not None:
            record(x)


def ghmc_integrator(temperature: float, friction: float, timestep: float):
    """Generalized hybrid Monte Carlo (Horowitz 1991) as an OpenMM integrator: per step, a partial
    momentum refresh v ← √b v + √(1−b) σ ξ (b = e^(−γ dt), σ² = k_BT/m), then one velocity-Verlet
    step with RATTLE constraints, accepted with min(1, e^(−ΔH/k_BT)) on the total energy H = K + U
    (the CG restraint is part of U); a rejected step restores the positions and flips the
    velocities. Velocity Verlet with RATTLE is reversible and volume-preserving on the constraint
    manifold, so the positions' stationary distribution is exactly ∝ e^(−U/k_BT) on it (the same
    target as constrained Langevin dynamics, without its time-step error). Global variables
    ``n_trials`` and ``n_accepted`` count the decisions."""
    import openmm as mm

    g = mm.CustomIntegrator(timestep)
    g.addGlobalVariable("kT", BOLTZMANN * temperature)
    g.addGlobalVariable("b", float(np.exp(-friction * timestep)))
    g.addGlobalVariable("h_old", 0.0)
    g.addGlobalVariable("h_new", 0.0)
    g.addGlobalVariable("accept", 0.0)
    g.addGlobalVariable("kinetic", 0.0)
    g.addGlobalVariable("n_trials", 0.0)
    g.addGlobalVariable("n_accepted", 0.0)
    g.addPerDofVariable("sigma", 0.0)
    g.addPerDofVariable("x_old", 0.0)
    g.addPerDofVariable("v_old", 0.0)
    g.addPerDofVariable("x_unconstrained", 0.0)
    g.addUpdateContextState()
    g.addComputePerDof("sigma", "sqrt(kT/m)")
    g.addComputePerDof("v", "sqrt(b)*v + sqrt(1-b)*sigma*gaussian")
    g.addConstrainVelocities()
    g.addComputeSum("kinetic", "0.5*m*v*v")
    g.addComputeGlobal("h_old", "kinetic + energy")
    g.addComputePerDof("x_old", "x")
    g.addComputePerDof("v_old", "v")
    g.addComputePerDof("v", "v + 0.5*dt*f/m")
    g.addComputePerDof("x", "x + dt*v")
    g.addComputePerDof("x_unconstrained", "x")
    g.addConstrainPositions()
    g.addComputePerDof("v", "v + 0.5*dt*f/m + (x - x_unconstrained)/dt")
    g.addConstrainVelocities()
    g.addComputeSum("kinetic", "0.5*m*v*v")
    g.addComputeGlobal("h_new", "kinetic + energy")
    g.addComputeGlobal("accept", "step(exp(-(h_new - h_old)/kT) - uniform)")
    g.addComputePerDof("x", "accept*x + (1 - accept)*x_old")
    g.addComputePerDof("v", "accept*v - (1 - accept)*v_old")
    g.addComputeGlobal("n_trials", "n_trials + 1")
    g.addComputeGlobal("n_accepted", "n_accepted + accept")
    return g


def _reset_steepest_descent(sd, max_displacement: float) -> None:
    """Start the steepest descent afresh on a new structure (initial step, no stored energy)."""
    sd.setGlobalVariableByName("started", 0.0)
    sd.setGlobalVariableByName("h", max_displacement / 1.0e3)


def _steepest_descent(max_displacement: float, constrained: bool = False):
    """Restrained steepest descent as an OpenMM integrator, as GROMACS's ``steep``: every
    coordinate moves by h·F (at most ``max_displacement``), constraints are re-applied; a step that
    raises the energy is undone and h shrinks 5×, an accepted one grows h by 1.2. Robust against
    overlapping atoms and stretched bonds (OpenMM's L-BFGS with constraints stalled for minutes on
    such structures)."""
    import openmm as mm

    sd = mm.CustomIntegrator(0.001)
    sd.addGlobalVariable("dmax", max_displacement)
    sd.addGlobalVariable("h", max_displacement / 1.0e3)
    sd.addGlobalVariable("started", 0.0)  # 0: a new structure (reset_steepest_descent)
    sd.addGlobalVariable("e0", 0.0)
    sd.addGlobalVariable("e1", 0.0)
    sd.addGlobalVariable("accept", 0.0)
    sd.addPerDofVariable("x0", 0.0)
    sd.addPerDofVariable("fkeep", 0.0)  # not "f0": OpenMM reads that as the forces of group 0
    sd.beginIfBlock("started < 0.5")
    sd.addComputeGlobal("e0", "energy")
    sd.addComputePerDof("fkeep", "f")
    sd.addComputeGlobal("started", "1")
    sd.endBlock()
    sd.addComputePerDof("x0", "x")
    sd.addComputePerDof("x", "x + max(-dmax, min(dmax, h*fkeep))")
    if constrained:
        sd.addConstrainPositions()
    # one force evaluation per step: the energy and forces of the trial structure are kept when it
    # is accepted, so the next step starts from them
    sd.addComputeGlobal("e1", "energy")
    sd.addComputeGlobal("accept", "step(e0 - e1)")
    sd.addComputePerDof("fkeep", "select(accept, f, fkeep)")
    sd.addComputePerDof("x", "select(accept, x, x0)")
    sd.addComputeGlobal("e0", "select(accept, e1, e0)")
    sd.addComputeGlobal("h", "select(accept, min(1.2*h, 1.0), 0.2*h)")
    sd.addComputePerDof("v", "0")
    return sd


def _dihedral(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, p3: np.ndarray) -> float:
    """The dihedral p0–p1–p2–p3 in radians, OpenMM's (IUPAC) sign."""
    b0, b1, b2 = p1 - p0, p2 - p1, p3 - p2
    n0, n1 = np.cross(b0, b1), np.cross(b1, b2)
    return float(np.arctan2(np.dot(np.cross(n0, n1), b1) / np.linalg.norm(b1), np.dot(n0, n1)))
