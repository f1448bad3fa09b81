"""The ``vae_mc`` refiner: Metropolis–Hastings moves of whole units (beads) proposed by a trained
``vae`` model through its latent space (Monroe & Shen eq. 9), exact for the restrained target

    π(x | R) ∝ exp(−β [U(x) + ½ k Σ_I |M_I(x) − R_I|² + ½ k_c Σ_rigid (|r_ij| − b_ij)²])

on the manifold where the bonds inside each unit are at their topology length (the decoder builds
them so; see docs/vae.md for why the bonds between units and ring closures are stiff springs).

One sweep moves every unit once: units of one plan step, split by the core's colouring so that no
two units moved together see each other or share an interaction, move simultaneously and are
accepted independently. Energies are local (:meth:`ForceField.group_energies`, float64).
"""
from __future__ import annotations

import csv
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from backmap.api import BackmapError, Refiner
from backmap.api.forcefield import minimize_restrained
from backmap.api.io import atomic_path, torch_threads
from backmap.api.recipes import InputPath, load_model
from backmap.api.refinement import (
    BondConstraints,
    BondModel,
    RefineInputs,
    RefineParams,
    RefineResult,
    RestrainedSystem,
    resolve_constraints,
    vae_move,
    vae_move_sequential,
)
from backmap.api.sampling import UnitGroup, load_chiral_centres, parse_blocks
from backmap.api.system import Unwrapper, box_dimensions
from backmap_vae.blocks import block_moves, step_groups
from backmap_vae.local_groups import coloured_groups
from backmap_vae.inner import InnerGroup, inner_group, inner_move, neighbours
from backmap_vae.rotations import crank_clusters, rotation_groups, turn_move
from backmap_vae.targets import StackedUnits, UnitTargets

log = logging.getLogger("backmap")


class VAEMCParams(RefineParams):
    model: InputPath | None = Field(None, description="a trained vae model folder (e.g. models/sps-vae); default: the "
                                                 "model at hand (the run's trained model, backmap apply --model)")
    steps: int = Field(20, ge=0, description="Monte Carlo sweeps per frame (every unit is moved once per sweep)")
    trials: int = Field(1, ge=1, description="proposals per move (M): one is selected ∝ its importance weight and "
                                              "accepted with W_F/W_B (appendix A); 1 = plain eq. 9")
    decide: Literal["sequential", "independent"] = Field(
        "sequential", description="units moved together never see each other; sequential (default): they may "
                                  "interact, and their moves are decided one after the other, each with the energy "
                                  "changes of those accepted before it (groups ~2.5× larger on sPS); independent: they "
                                  "are also beyond each other's force-field cut-off and decided at once")
    blocks: list[str] | None = Field(
        None, description="runs of beads of one molecule moved together once per sweep, e.g. 'B9,S9,B10,S10' (bead "
                          "names; 'TYPE:B9,S9' picks the molecule type): redrawn one after the other in plan order, "
                          "with the product of their densities — exact; for beads that whole-bead moves leave where "
                          "they started (chain ends packed badly; docs/vae.md). Default: the blocks the model was "
                          "trained on (its 'blocks' parameter); [] turns them off")
    stereo_reference: InputPath | None = Field(
        None, description="AA structure of the system (first frame) whose stereocentres' hands the target keeps: "
                          "a triple of a centre's neighbours signed against it costs stereo_weight (the force field "
                          "has no term that tells syndiotactic from atactic). A start with inverted centres then "
                          "leaves them at the first move that redraws them with the right hand (docs/vae.md)")
    stereo_weight: float = Field(1.0e5, gt=0, description="kJ/mol per inverted neighbour triple (stereo_reference)")
    block_trials: int | None = Field(None, ge=1, description="proposals per block move (default: trials)")
    turns: int = Field(0, ge=0, description="local moves per sweep of every unit bonded to the rest of its molecule by "
                                            "one bond (sPS's phenyl rings): a rigid turn about that bond by an angle "
                                            "uniform in ±turn_width, accepted with π(x')/π(x) — exact, and far more "
                                            "acceptable than a whole-bead redraw in a packed melt (docs/vae-sps.md, "
                                            "'Ring turns'); 0: none")
    turn_width: float = Field(0.5, gt=0, le=np.pi, description="largest turn angle (rad)")
    cranks: int = Field(0, ge=0, description="local moves per sweep of every unit bonded to the rest by two or more "
                                             "bonds, together with the units hanging on it (sPS: a backbone bead and "
                                             "its ring), where that cluster is held by two bonds (or one): a rigid "
                                             "rotation about the axis through the two atoms outside (a crankshaft) "
                                             "by an angle uniform in ±crank_width, accepted with π(x')/π(x) — exact; "
                                             "for the beads no turn reaches (docs/vae-sps.md, 'Cranks'); 0: none")
    crank_width: float = Field(0.1, gt=0, le=np.pi, description="largest crank angle (rad)")
    inner: int = Field(0, ge=0, description="local moves per sweep of the geometry inside every unit: a hydrogen (or "
                                            "a group hanging on one bond) pivoted about the atom it hangs on, an atom "
                                            "with its hydrogens cranked about the line through its two partners, a "
                                            "unit hanging on one bond wobbled about its anchor — one kind drawn per "
                                            "unit and move, accepted with π(x')/π(x): exact; for the bond angles and "
                                            "hydrogens that only a whole-bead redraw moves otherwise (docs/vae-sps.md, "
                                            "'Inner moves'); 0: none")
    inner_step: float = Field(0.04, gt=0, le=0.2, description="largest displacement (nm) of an inner move: the angle "
                                                              "is uniform in ±inner_step/r, r the moved atoms' "
                                                              "largest distance from the axis")
    rotation_candidates: int = Field(1, ge=1, description="angles scored per turn, crank or inner move: 1, Metropolis with one "
                                                          "angle uniform in ±width; n > 1, a heat-bath choice among n "
                                                          "angles a random spacing apart, the current one among them "
                                                          "(exact; n placements cost little more than one)")
    local_decide: Literal["sequential", "independent"] = Field(
        "sequential", description="turns, cranks and inner moves: sequential (default): one group per plan step (or "
                                  "crank kind) with the units of every molecule, decided one after the other, each "
                                  "with the energy changes of those accepted before it (exact; ~10× fewer, larger "
                                  "groups than independent on sPS: the cost per sweep is mostly per group); "
                                  "independent: groups of units beyond each other's cut-off, decided at once (needed "
                                  "for rotation_candidates > 1)")
    local_scoring: Literal["compiled", "torch"] = Field(
        "compiled", description="local_decide: sequential: compiled (default): each move scored and decided in one "
                                "compiled loop against the state the moves before it left; torch: the group scored "
                                "in torch against the state before it, then decided with the pair couplings — the "
                                "same decisions up to rounding, several times slower (a reference for checks)")
    vae_every: int = Field(1, ge=1, description="make the VAE moves (and block moves) in every n-th sweep only, the "
                                                "local turns and cranks in every sweep (they cost no network call)")
    closure_stiffness: float = Field(1.0e6, gt=0, description="k_c (kJ/mol/nm²) of the stiff spring on rigid bonds "
                                                               "the decoder does not hold exactly (between units, "
                                                               "ring closures)")
    extent: float = Field(0.5, gt=0, description="hard wall of the target: a unit atom farther than this (nm) from "
                                                 "its bead's CG position has zero probability (physically never: "
                                                 "the restraint holds the centre, the bonds the shape); it bounds how "
                                                 "far a move reaches, so that units moved together never interact")
    minimize_steps: int = Field(300, ge=0, description="restrained minimization steps before sampling: whole-bead "
                                                       "moves relax clashes and strained angles slowly (docs/vae.md)")
    minimize_after: list[int] = Field(
        [], description="burn-in: sweeps (counted from 1) after which the frame is minimized again (restrained, "
                        "minimize_steps), e.g. [10]: the clashes that whole-bead moves leave — those of stereocentres "
                        "put right, of packing — are relaxed collectively, and the sweeps after the last one are the "
                        "exact chain (docs/vae-sps.md, 'Fidelity')")
    start_projection: Literal["all", "held"] = Field(
        "all", description="at the start of a chain put every rigid bond at its length ('all': a structure from "
                           "elsewhere, a generator's output) or only the bonds the decoder holds ('held': the input is "
                           "already a draw of vae_mc's own target — a schedule's later stage, a continued chain — whose "
                           "springs projecting would move off the target; a schedule sets it)")
    project_output: bool = Field(True, description="put the final structure's rigid bonds back at their lengths "
                                                   "(SHAKE; atoms move ~0.004 nm): the chain samples them as stiff "
                                                   "springs, the reference MD held them rigid")
    sweep_log: Path | None = Field(None, description="CSV of acceptance per frame, sweep and unit type")
    trace: Path | None = Field(None, description=".npz of the Lennard-Jones energy (total and per molecule) and the "
                                                 "positions (float32) after every sweep, with the CPU seconds "
                                                 "(decorrelation analysis)")
    threads: int = Field(1, ge=1, description="torch threads")

    @model_validator(mode="after")
    def _burn_in(self) -> "VAEMCParams":
        late = [s for s in self.minimize_after if not 1 <= s < self.steps]
        if late:
            raise ValueError(f"minimize_after: {late} must lie in 1 … steps − 1 = {self.steps - 1} (the chain ends "
                             "with sweeps after the last minimization: a minimized structure is not a sample)")
        if self.vae_every > 1 and not (self.turns or self.cranks or self.inner):
            raise ValueError("vae_every > 1 needs turns, cranks or inner: the other sweeps would move nothing")
        if self.rotation_candidates > 1 and self.local_decide == "sequential":
            raise ValueError("rotation_candidates > 1 (a heat-bath choice) needs local_decide: independent")
        if self.minimize_after and not self.minimize_steps:
            raise ValueError("minimize_after needs minimize_steps > 0")
        return self


class VAEMCRefiner(Refiner):
    name = "vae_mc"
    summary = "exact VAE Monte Carlo moves of whole beads with a trained vae model (restrained Boltzmann target)"
    Params = VAEMCParams

    def take_inputs(self, inputs: RefineInputs) -> None:
        """The model and stereo reference at hand, where the parameters name none."""
        update = {k: Path(v) for k, v in (("model", inputs.model), ("stereo_reference", inputs.stereo_reference))
                  if v is not None and getattr(self.params, k) is None}
        if update:
            self.params = self.params.model_copy(update=update)

    def prepare(self, system: RestrainedSystem) -> None:
        if self.params.model is None:
            raise BackmapError("vae_mc: no model: give the refiner's 'model' parameter (a vae model folder, e.g. "
                               "--param model=models/sps-vae), or refine where a model is at hand (a recipe with a "
                               "train step, backmap apply --model)")
        p = self.params = resolve_constraints(self.params, system, self.name)
        self.system = system
        model = load_model(p.model)
        model.check_system(system.cg_topology)
        self.generator = gen = model.generator
        if not hasattr(gen, "latent_model"):
            raise BackmapError(f"vae_mc: the model in {p.model} is a {gen.name!r} generator; it needs a latent-variable "
                               "model with exact densities (plugin: vae)")
        chirality = None
        if p.stereo_reference is not None:
            chirality = load_chiral_centres(system.topology, p.stereo_reference, p.stereo_weight)
        self.targets = UnitTargets(system, gen, model.channels, p.temperature, p.restraint, p.closure_stiffness,
                                   p.extent, p.constraints, chirality=chirality)
        self.unwrap = Unwrapper(system.topology) if chirality is not None else None  # built once, not per frame
        self.ff, self.sampler = self.targets.ff, self.targets.sampler
        specs = gen.params.blocks if p.blocks is None else p.blocks
        self.blocks = parse_blocks(specs, system.cg_topology, self.sampler.plans,
                                   "vae_mc: blocks" if p.blocks is not None else f"{p.model}: generator blocks")
        pairs, lengths = system.constrained_bonds(p.constraints)
        self.constraints = BondConstraints(pairs, lengths, system.topology.masses, tolerance=1e-10,
                                           dtype=torch.float64)
        bonds = self.bond_model()
        self.held_constraints = (self.constraints if bonds is None else
                                 BondConstraints(bonds.held, bonds.held_lengths, system.topology.masses,
                                                 tolerance=1e-10, dtype=torch.float64))
        self.sweep_rows: list[dict] = []
        self._frames = 0  # frames refined so far (the sweep log's frame number)
        self.trace_rows: list[tuple] = []
        self._clusters = None  # crank clusters (molecule type, plan steps), found once
        self._neighbours = None  # bonded partners per atom (inner moves), found once
        self._idle_warned = False  # a local move kind asked for that finds nothing to move: said once
        self._recording = 0.0  # CPU seconds spent in _record

    def bond_model(self) -> BondModel | None:
        """The target's rigid bonds: those the decoder builds inside a bead held (δ measure), the
        others (between beads, ring closures) springs of ``closure_stiffness``. A schedule hands
        it to its mala / langevin stages, which then sample the same target. None without rigid
        bonds (``constraints: none``): then every refiner samples the same target already."""
        held = self.targets.held_bonds()
        pairs, lengths = self.system.constrained_bonds(self.params.constraints)
        pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
        if not len(pairs) and not len(held):
            return None
        key = lambda a: np.minimum(a[:, 0], a[:, 1]) * self.system.n_atoms + np.maximum(a[:, 0], a[:, 1])  # noqa: E731
        is_held = np.isin(key(pairs), key(held))
        if is_held.sum() != len(held):
            raise BackmapError(f"vae_mc: the model {self.params.model} builds bonds inside beads that "
                               f"constraints '{self.params.constraints}' does not hold rigid")
        return BondModel(pairs[is_held], np.asarray(lengths)[is_held], pairs[~is_held], np.asarray(lengths)[~is_held],
                         self.params.closure_stiffness, source=f"vae_mc ({self.params.model})")

    # ------------------------------------------------------------------ sampling
    def refine(self, positions: np.ndarray, targets: np.ndarray, boxes: np.ndarray,
               rng: np.random.Generator) -> RefineResult:
        """Refine F frames: one chain each, run in lockstep (``backmap refine --batch F``): the
        units of a plan step in every frame move in one network call (:class:`StackedUnits`)."""
        # params.seed is the caller's business (refine_files, apply: a stream per frame drawn from it)
        out = np.array(positions, np.float64)
        with torch.no_grad(), torch_threads(self.params.threads):
            # a seed per frame, as ever; the batch moves with the first frame's stream (one frame: as before)
            seeds = [int(rng.integers(2**62)) for _ in range(len(out))]
            gen = torch.Generator().manual_seed(seeds[0])
            chains = [self._start(out[f], targets[f], boxes[f], self._frames + f) for f in range(len(out))]
            self._frames += len(out)
            for sweep in range(self.params.steps):
                self._sweep(chains, sweep, gen)
            rows = []
            for f, chain in enumerate(chains):
                out[f], row = self._finish(chain)
                rows.append(row)
        if self.params.sweep_log is not None:
            self._write_sweep_log()
        if self.params.trace is not None:
            self._write_trace()
        return RefineResult(out, rows)

    def _relaxed(self, x: np.ndarray, targets: np.ndarray, box: np.ndarray) -> torch.Tensor:
        """``x`` after ``minimize_steps`` of restrained minimization, on its rigid bonds (N, 3): all
        of them, or with ``start_projection: held`` those the decoder holds (the springs as they are)."""
        p = self.params
        constraints = self.held_constraints if p.start_projection == "held" else self.constraints
        if p.minimize_steps:
            with torch.enable_grad():
                x = minimize_restrained(self.ff, x, box, self.system.cg_topology, targets,
                                        restraint=0.5 * p.restraint, steps=p.minimize_steps).positions
        xt = torch.as_tensor(x, dtype=torch.float64)
        xt, ok = constraints.positions(xt[None], xt[None])
        if not bool(ok.all()):  # a few badly stretched bonds: minimize first, then constrain
            with torch.enable_grad():
                x = minimize_restrained(self.ff, x, box, self.system.cg_topology, targets,
                                        restraint=0.5 * p.restraint, steps=200).positions
            xt = torch.as_tensor(x, dtype=torch.float64)
            xt, ok = constraints.positions(xt[None], xt[None])
        if not bool(ok.all()):
            raise BackmapError("vae_mc: the structure's rigid bonds could not be satisfied even after 200 "
                               "minimization steps (try minimize_steps)")
        return xt[0].clone()

    def _start(self, x: np.ndarray, targets: np.ndarray, box: np.ndarray, frame: int) -> "_Chain":
        """A frame's chain: its relaxed start, colour groups, block moves and kept sampler frame."""
        p = self.params
        pos = self._relaxed(x, targets, box)
        groups = self.targets.frame_groups(targets, box, interacting=p.decide == "sequential")
        moves = [move for block in self.blocks for move in block_moves(self.targets, block, groups, p.temperature)]
        rotations, inner = [], []
        if p.turns or p.cranks or p.inner:  # local moves: turns of hanging units, cranks of clusters
            bonds = np.asarray(self.system.bonds[0], np.int64).reshape(-1, 2)
            if self._clusters is None:
                self._clusters = crank_clusters(groups, bonds)
            apart = p.local_decide == "independent"
            turns, cranks = rotation_groups(self.targets, targets, box, bonds, groups, self._clusters, apart)
            rotations = ([_Rotations(g, axes, p.turn_width, p.turns, " turn") for g, axes in turns if p.turns]
                         + [_Rotations(c.group, c.axes, p.crank_width, p.cranks) for c in cranks if p.cranks])
            if p.inner:  # inner moves of every unit, and those across a crank cluster's units
                if self._neighbours is None:
                    self._neighbours = neighbours(bonds, self.system.n_atoms)
                moved = (self.targets.frame_groups(targets, box, interacting=False) if apart
                         else [g for g, _ in coloured_groups(self.targets, step_groups(groups))])
                inner = [m for g in moved if (m := inner_group(g, self._neighbours)) is not None]
                inner += [m for c in cranks if (m := inner_group(c.group, self._neighbours, spanning=True)) is not None]
            self._warn_idle(turns, cranks, inner)
        return _Chain(frame, pos, targets, torch.as_tensor(targets, dtype=torch.float64), box,
                      np.asarray(box, np.float64).reshape(3, 3), groups, moves, self.sampler.keep_frame(), rotations,
                      inner)

    def _warn_idle(self, turns: list, cranks: list, inner: list) -> None:
        """Say once when a local move kind the recipe asks for finds no unit in this system (hexane has
        no crank cluster): the parameter then costs nothing and does nothing, which a user should know."""
        if self._idle_warned:
            return
        p = self.params
        idle = [(name, why) for name, asked, found, why in (
            ("turns", p.turns, turns, "no unit is bonded to the rest of its molecule by exactly one bond"),
            ("cranks", p.cranks, cranks, "no unit (with the units hanging on it) is held by one or two bonds"),
            ("inner", p.inner, inner, "no unit has a hydrogen or an atom to pivot or crank")) if asked and not found]
        for name, why in idle:
            log.warning("vae_mc: %s = %d does nothing on this system: %s", name, getattr(p, name), why)
        self._idle_warned = True

    def _sweep(self, chains: list["_Chain"], sweep: int, gen: torch.Generator) -> None:
        """Move every unit of every chain once (one network call per plan step and colour for all
        chains), then the block moves, the burn-in minimization and the trace."""
        p = self.params
        tallies = [defaultdict(lambda: [0, 0, 0]) for _ in chains]  # per chain: accepted, proposed, invalid
        network = sweep % p.vae_every == 0  # the VAE (and block) moves of this sweep; turns and cranks every sweep
        sequential = p.local_decide == "sequential"
        compiled = p.local_scoring == "compiled"
        for batch in _lockstep([c.groups for c in chains]) if network else []:
            parts = []
            for f, group in batch:
                self.sampler.use_frame(chains[f].frame_state)
                parts.append((f, self.targets.bind(group, chains[f].pos, chains[f].target_t, chains[f].vectors)))
            units = StackedUnits(parts)
            model = self.generator.latent_model(units.env, p.temperature)  # a T-conditioned model at vae_mc's T
            if p.decide == "sequential":
                move = vae_move_sequential(model, units.local(), units.log_target, units.coupling, gen, p.trials,
                                           units.near())
            else:
                move = vae_move(model, units.local(), units.log_target, gen, p.trials)
            for f, part, r in units.slices():
                acc = move.accepted[r]
                if bool(acc.any()):
                    chains[f].pos[part.index[acc]] = part.to_lab(move.x[r])[acc]
                _count(tallies[f][part.label], acc, move.invalid[r])
        for f, chain in enumerate(chains):
            self.sampler.use_frame(chain.frame_state)
            for block in chain.moves if network else []:
                move = block.move(chain.pos, chain.target_t, chain.vectors, gen, p.block_trials or p.trials)
                if bool(move.accepted.any()):
                    chain.pos[block.block_atoms[move.accepted]] = move.x[move.accepted]
                _count(tallies[f][block.label], move.accepted, move.invalid)
            for r in range(max(p.turns, p.cranks, p.inner)):
                for rot in chain.rotations:
                    if r >= rot.rounds:
                        continue
                    part = self.targets.bind_unrotated(rot.group, chain.pos, chain.target_t, chain.vectors)
                    acc, new, invalid, _angle = turn_move(part, rot.axes, rot.width, gen, p.rotation_candidates,
                                                          sequential, compiled)
                    _keep(chain.pos, part, new, acc)
                    _tally(tallies[f], part, rot.suffix, acc, invalid)
                for moves in chain.inner if r < p.inner else []:
                    part = self.targets.bind_unrotated(moves.group, chain.pos, chain.target_t, chain.vectors)
                    acc, new, invalid, _angle, _kind = inner_move(part, moves, p.inner_step, gen,
                                                                  p.rotation_candidates, sequential, compiled)
                    _keep(chain.pos, part, new, acc)
                    _tally(tallies[f], part, " inner", acc, invalid, moves.kinds > 0)
            if sweep + 1 in p.minimize_after:  # burn-in: a collective relaxation, then the chain goes on
                chain.pos = self._relaxed(chain.pos.numpy(), chain.targets, chain.box)
            if p.trace is not None:
                self._record(chain.frame, sweep, chain.pos, chain.vectors)
            for label, c in tallies[f].items():
                self.sweep_rows.append({"frame": chain.frame, "sweep": sweep, "unit": label, "accepted": c[0],
                                        "proposed": c[1], "invalid": c[2]})
                for k in range(3):
                    chain.counts[label][k] += c[k]

    def _finish(self, chain: "_Chain") -> tuple[np.ndarray, dict]:
        """The chain's final structure (rigid bonds projected) and its log row."""
        p, pos, vectors = self.params, chain.pos, chain.vectors
        if p.project_output:
            projected, ok = self.constraints.positions(pos[None], pos[None])
            if bool(ok.all()):
                pos = projected[0]
        x = pos.numpy()
        e = self.ff.energy(pos[None], vectors[None], whole=True)
        row = {"potential": float(e.total[0]),
               "restraint": float(self.system.restraint_energy(pos[None], chain.target_t[None], p.restraint)[0]),
               "constraint_residual": float(self.constraints.residual(pos[None])[0])}
        if self.targets.chirality is not None:  # whole molecules: the reference's rows need no box
            whole = self.unwrap(x, box_dimensions(vectors))
            row["stereocentres_kept_refined"] = self.targets.chirality.kept(self.system.topology, whole)
        counts = chain.counts
        total = [sum(c[k] for c in counts.values()) for k in range(3)]
        row["acceptance"] = total[0] / max(total[1], 1)
        if p.minimize_after:
            row["exact_sweeps"] = p.steps - max(p.minimize_after)
        row["invalid"] = total[2]
        for label, c in sorted(counts.items()):
            row[f"acceptance[{label}]"] = c[0] / max(c[1], 1)
        return x, row

    def _record(self, frame: int, sweep: int, pos: torch.Tensor, vectors: np.ndarray) -> None:
        """A trace row; its CPU seconds leave out the time spent recording (the sampler's own cost)."""
        start = time.process_time()
        e = self.ff.energy(pos[None], vectors[None], whole=True, per_molecule=True, terms=("lj",))
        self.trace_rows.append((frame, sweep, start - self._recording, float(e.total[0]),
                                e.per_molecule["lj"][0].numpy().copy(), pos.numpy().astype(np.float32)))
        self._recording += time.process_time() - start

    def _write_trace(self) -> None:
        rows = self.trace_rows
        with atomic_path(Path(self.params.trace)) as tmp:
            np.savez(tmp, frame=np.array([r[0] for r in rows]), sweep=np.array([r[1] for r in rows]),
                     cpu_seconds=np.array([r[2] for r in rows]), lj=np.array([r[3] for r in rows]),
                     lj_per_molecule=np.stack([r[4] for r in rows]) if rows else np.zeros((0, 0)),
                     positions=np.stack([r[5] for r in rows]) if rows else np.zeros((0, 0, 3), np.float32))

    def _write_sweep_log(self) -> None:
        path = Path(self.params.sweep_log)
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["frame", "sweep", "unit", "accepted", "proposed", "invalid"])
            writer.writeheader()
            writer.writerows(self.sweep_rows)


def _keep(pos: torch.Tensor, part, new: torch.Tensor, accepted: torch.Tensor) -> None:
    """Write the accepted units' new local placements (B, U, 3) into ``pos`` (their atoms only:
    rows of a stacked group are padded)."""
    if bool(accepted.any()):
        slots = accepted[:, None] & (part.index >= 0)
        pos[part.index[slots]] = part.to_lab(new)[slots]


def _tally(tallies: dict, part, suffix: str, accepted: torch.Tensor, invalid: torch.Tensor,
           made: torch.Tensor | None = None) -> None:
    """Count a group's moves under its unit type's label (plus ``suffix``), or each row's when the
    group stacks several types (``meta['row_labels']``, :mod:`backmap_vae.local_groups`); only the
    rows ``made`` (B,) bool, if given (a stacked group's rows without a move of the kind are not
    counted)."""
    labels = part.group.meta.get("row_labels")
    if labels is None:
        labels = np.full(len(accepted), part.label, dtype=object)
    made = np.ones(len(accepted), bool) if made is None else np.asarray(made, bool)
    for label in dict.fromkeys(labels[made]):
        rows = torch.as_tensor((labels == label) & made)
        _count(tallies[label + suffix], accepted[rows], invalid[rows])


def _count(counts: list[int], accepted: torch.Tensor, invalid: torch.Tensor) -> None:
    """Add moves' accepted, proposed and invalid counts to ``counts``."""
    counts[0] += int(accepted.sum())
    counts[1] += len(accepted)
    counts[2] += int(invalid.sum())


@dataclass
class _Chain:
    """One frame's Markov chain in a lockstep batch: its frame number, positions (N, 3, float64),
    CG targets, box, colour groups, block moves, the sampler's kept frame and acceptance counts."""

    frame: int
    pos: torch.Tensor
    targets: np.ndarray
    target_t: torch.Tensor
    box: np.ndarray
    vectors: np.ndarray
    groups: list[UnitGroup]
    moves: list
    frame_state: object
    rotations: list["_Rotations"] = field(default_factory=list)  # units turned, clusters cranked
    inner: list[InnerGroup] = field(default_factory=list)  # inner moves, per colour group
    counts: dict = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0]))


@dataclass
class _Rotations:
    """A colour group of local rigid rotations (turns or cranks): the units (or clusters), the atom
    pairs they rotate about, the largest angle, the rounds per sweep and the log label's suffix."""

    group: UnitGroup
    axes: np.ndarray
    width: float
    rounds: int
    suffix: str = ""


def _lockstep(groups: list[list[UnitGroup]]) -> list[list[tuple[int, UnitGroup]]]:
    """The moves of a sweep over several frames' colour groups: the k-th colour of a plan step in
    every frame that has it, as (frame slot, group) lists, in plan order. One frame: its groups
    as they are. (Any fixed order of exact updates is a valid scan.)"""
    if len(groups) == 1:
        return [[(0, g)] for g in groups[0]]
    slots: dict[tuple, list[tuple[int, UnitGroup]]] = defaultdict(list)
    first: dict[tuple, int] = {}
    for f, frame_groups in enumerate(groups):
        seen: dict[tuple, int] = defaultdict(int)
        for g in frame_groups:
            step = (g.moltype, g.step)
            first.setdefault(step, len(first))
            slots[(step, seen[step])].append((f, g))
            seen[step] += 1
    return [slots[key] for key in sorted(slots, key=lambda key: (first[key[0]], key[1]))]
