"""The ``openmm`` refiner: restrained Langevin dynamics with OpenMM on the CPU.

The system comes from the GROMACS topology (``GromacsTopFile``), with the run's non-bonded settings
(plain cut-off LJ, reaction-field Coulomb, no dispersion correction — it does not change forces).
Every bead's weighted centre is held to its CG position by ``CustomCentroidBondForce`` with the
mapping's weights. One OpenMM context is reused for all frames: per frame only the box, the
positions, the restraint targets and fresh velocities change.
"""
from __future__ import annotations

import numpy as np
from pydantic import Field

from backmap import BackmapError, Refiner
from backmap.refine import RefineParams, RefineResult, RestrainedSystem


class OpenMMParams(RefineParams):
    threads: int = Field(0, ge=0, description="CPU threads for OpenMM (0: OpenMM's default, all cores)")
    platform: str = Field("CPU", description="OpenMM platform (CPU or Reference)")
    minimize_steps: int = Field(100, ge=0, description="restrained steepest-descent steps first, each atom moving "
                                                       "at most max_displacement: generator output can hold "
                                                       "clashes that blow up the dynamics")
    max_displacement: float = Field(0.002, gt=0, description="largest move of an atom per minimization step (nm)")
    warmup_steps: int = Field(0, ge=0, description="steps at a quarter of the time step first: generator "
                                                     "output has stiff local strain that a full step can blow up")


class OpenMMRefiner(Refiner):
    name = "openmm"
    summary = "restrained Langevin dynamics in OpenMM (GROMACS topology, CPU)"
    Params = OpenMMParams

    def prepare(self, system: RestrainedSystem) -> None:
        if system.topology_path is None or system.topology_path.suffix != ".top":
            raise BackmapError("the openmm refiner reads the GROMACS .top file of the system; "
                               "give the system's topology as a .top", source=system.topology_path)
        self.system = system
        self.groups = system.bead_groups()
        self._sim = None

    def _build(self, box: np.ndarray):
        import openmm as mm
        import openmm.app as app
        import openmm.unit as u

        p, nb = self.params, self.system.nonbonded
        constraints = {"none": None, "h-bonds": app.HBonds, "all-bonds": app.AllBonds}[p.constraints]
        from backmap.gmx import gromacs_topdir

        topdir = gromacs_topdir()
        try:
            top = app.GromacsTopFile(str(self.system.topology_path), periodicBoxVectors=box * u.nanometer,
                                     includeDir=str(topdir) if topdir else None)
        except Exception as exc:  # OpenMM raises ValueError/Exception for unsupported directives
            raise BackmapError(f"OpenMM cannot read the topology: {exc}", source=self.system.topology_path) from exc
        cutoff = 1.0 if nb is None else nb.cutoff
        omm = top.createSystem(nonbondedMethod=app.CutoffPeriodic, nonbondedCutoff=cutoff * u.nanometer,
                               constraints=constraints, rigidWater=constraints is not None)
        if omm.getNumParticles() != self.system.n_atoms:
            raise BackmapError(f"OpenMM built {omm.getNumParticles()} particles, the topology has "
                               f"{self.system.n_atoms}", source=self.system.topology_path)
        for force in omm.getForces():
            if isinstance(force, mm.CustomNonbondedForce):  # e.g. geometric LJ combination; constant in NVT
                force.setUseLongRangeCorrection(False)
            if isinstance(force, mm.NonbondedForce):
                force.setUseDispersionCorrection(False)
                eps_rf = 1.0 if nb is None or nb.coulomb == "cutoff" else (nb.epsilon_rf or 1e10)
                force.setReactionFieldDielectric(eps_rf)
                if nb is not None and nb.coulomb == "none":
                    for i in range(force.getNumParticles()):
                        q, sig, eps = force.getParticleParameters(i)
                        force.setParticleParameters(i, 0.0, sig, eps)
            force.setForceGroup(0)
        restraint = mm.CustomCentroidBondForce(1, "0.5*k_restraint*((x1-x0)^2+(y1-y0)^2+(z1-z0)^2)")
        restraint.addGlobalParameter("k_restraint", p.restraint)
        for name in ("x0", "y0", "z0"):
            restraint.addPerBondParameter(name)
        for atoms, weights in self.groups:
            g = restraint.addGroup([int(a) for a in atoms], [float(w) for w in weights])
            restraint.addBond([g], [0.0, 0.0, 0.0])
        restraint.setForceGroup(1)
        omm.addForce(restraint)
        dynamics = mm.LangevinMiddleIntegrator(p.temperature * u.kelvin, p.friction / u.picosecond,
                                               p.timestep * u.picosecond)
        dynamics.setConstraintTolerance(1e-6)
        integrator = mm.CompoundIntegrator()
        integrator.addIntegrator(dynamics)
        integrator.addIntegrator(_steepest_descent(p.max_displacement))
        platform = mm.Platform.getPlatformByName(p.platform)
        props = {"Threads": str(p.threads)} if p.threads and p.platform == "CPU" else {}
        self._sim = app.Simulation(top.topology, omm, integrator, platform, props)
        self._restraint = restraint
        self._dynamics = dynamics
        self._dof = 3 * omm.getNumParticles() - omm.getNumConstraints() - 3

    def _load(self, x: np.ndarray, target: np.ndarray, box: np.ndarray) -> None:
        """Put one frame into the context: box, restraint targets, positions (constrained)."""
        import openmm as mm
        import openmm.unit as u

        ctx = self._sim.context
        ctx.setPeriodicBoxVectors(*(mm.Vec3(*row) * u.nanometer for row in box))
        for b, r in enumerate(target):
            self._restraint.setBondParameters(b, [b], [float(v) for v in r])
        self._restraint.updateParametersInContext(ctx)
        ctx.setPositions(x * u.nanometer)
        if self.params.constraints != "none":
            ctx.applyConstraints(1e-6)

    def energy_forces(self, x: np.ndarray, target: np.ndarray, box: np.ndarray) -> tuple[float, float, np.ndarray]:
        """(force-field energy, restraint energy, total forces (N, 3)) of one structure, kJ/mol and
        kJ/mol/nm — what the dynamics sees (for checks against backmap's own force field)."""
        import openmm.unit as u

        if self._sim is None:
            self._build(box)
        self._load(x, target, box)
        ctx = self._sim.context
        forces = ctx.getState(getForces=True).getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer)
        energy = [ctx.getState(getEnergy=True, groups={g}).getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
                  for g in (0, 1)]
        return energy[0], energy[1], np.asarray(forces)

    def _run(self, ctx, frame_index: int) -> None:
        import openmm as mm

        p, compound, integrator = self.params, self._sim.integrator, self._dynamics
        try:
            if p.minimize_steps:
                compound.setCurrentIntegrator(1)
                compound.step(p.minimize_steps)
            compound.setCurrentIntegrator(0)
            if p.warmup_steps:
                integrator.setStepSize(p.timestep / 4)
                integrator.step(p.warmup_steps)
            integrator.setStepSize(p.timestep)
            integrator.step(p.steps)
        except mm.OpenMMException as exc:
            raise BackmapError(f"openmm refiner: the dynamics blew up on frame {frame_index} of this batch ({exc}); "
                               "use a smaller timestep, more warmup_steps or minimize_steps") from exc

    def refine(self, positions: np.ndarray, targets: np.ndarray, boxes: np.ndarray,
               rng: np.random.Generator) -> RefineResult:
        import openmm.unit as u

        if self._sim is None:
            self._build(boxes[0])
        p, sim = self.params, self._sim
        ctx = sim.context
        out, log = np.empty_like(positions), []
        for x, target, box in zip(positions, targets, boxes):
            self._load(x, target, box)
            seed = int(rng.integers(1, 2**31 - 1))
            self._dynamics.setRandomNumberSeed(seed)
            ctx.setVelocitiesToTemperature(p.temperature * u.kelvin, seed)
            self._run(ctx, frame_index=len(log))
            state = ctx.getState(getPositions=True, getEnergy=True)
            out_x = state.getPositions(asNumpy=True).value_in_unit(u.nanometer)
            out[len(log)] = out_x
            kinetic = state.getKineticEnergy().value_in_unit(u.kilojoule_per_mole)
            log.append({
                "potential": ctx.getState(getEnergy=True, groups={0}).getPotentialEnergy()
                .value_in_unit(u.kilojoule_per_mole),
                "restraint": ctx.getState(getEnergy=True, groups={1}).getPotentialEnergy()
                .value_in_unit(u.kilojoule_per_mole),
                "temperature": 2 * kinetic / (self._dof * 0.0083144626181532),
            })
        return RefineResult(out, log)


def _steepest_descent(max_displacement: float):
    """Restrained steepest descent as an OpenMM integrator: every coordinate moves along its force,
    by at most ``max_displacement`` (forces above 10⁴ kJ/mol/nm are capped there), then constraints
    are re-applied. Crude but robust against overlapping atoms, and as cheap per step as dynamics
    (OpenMM's L-BFGS with constraints can stall for minutes on such structures)."""
    import openmm as mm

    sd = mm.CustomIntegrator(0.001)
    sd.addGlobalVariable("dmax", max_displacement)
    sd.addGlobalVariable("h", max_displacement / 1.0e4)
    sd.addComputePerDof("x", "x + max(-dmax, min(dmax, h*f))")
    sd.addConstrainPositions()
    sd.addComputePerDof("v", "0")
    return sd
