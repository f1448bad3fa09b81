"""Data-free training of the ``vae`` generator by reverse KL (seed ``003``; docs/reverse-kl.md).

The target of a unit (bead) is vae_mc's: p(x | env, R) ∝ exp(−βU − β[restraint + springs] − wall)
(:mod:`backmap_vae.targets`), with U tempered from β ≈ 0 to 1/k_BT by the core's
:class:`~backmap.training.reverse_kl.ReverseKLTrainer`. The model q(x, z | env) = P(z | env)
P(x | z, env) draws reparameterized samples (implicit gradients for the von Mises dihedrals), and
its encoder q(z | x, env) is the auxiliary r(z | x) that bounds the entropy.

Environments without atomistic data: every training CG frame holds a *pool* of atom positions,
started by a forward pass of the untrained model (whose head predicts the force field's θ₀ and b₀
with random torsions: bonded geometry right, packing wrong) and replaced unit by unit by the
model's own samples as training goes. Before reverse KL, the decoder is fitted by maximum
likelihood to that starting pool (``pretrain_epochs``): it learns where a bead's atoms sit around
its CG bead and the force field's bonded geometry, which gradients through samples alone learn
slowly; no atomistic data enters either way (one sample of every unit trained on), so the environments
the units see move with the model toward backmapped structures — the ones it will meet in a
forward pass and Gibbs sweeps. The reference angles and bond lengths the decoder's head predicts
offsets from come from the force field (θ₀, b₀), not from data.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from backmap.api.forcefield import BOLTZMANN, molecule_terms
from backmap.api.io import atomic_path, host_random
from backmap.api.sampling import invert_flipped, load_chiral_centres
from backmap.api.training import ReverseKLOptions, Target
from backmap_vae.targets import BoundUnits, UnitTargets



class VAEGenerator(Protocol):
    """What data-free training uses of :class:`backmap_vae.generator.VAEGenerator` (a protocol:
    the generator module imports this one)."""

    tables: Any
    params: Any
    conditions_on_temperature: bool
    frame_temperatures: torch.Tensor | None

    def fit(self, data: Any, context: Any) -> dict[str, Any]: ...


class BoundLatentModel(Protocol):
    """A latent model bound to units (:class:`backmap_vae.generator.BoundLatentModel`)."""

    def generate(self, n: int, generator: torch.Generator, raw: bool = False,
                 reparameterized: bool = False) -> Any: ...

    def log_joint(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor: ...

    def encode(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor: ...

#: draws from one training frame before the next is chosen
FRAME_STEPS = 10


def forcefield_reference_ics(generator: "VAEGenerator", cg_topology, temperature: float
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per slot of the generator's tables: the reference bond angle θ₀ (rad) and its thermal spread
    √(k_BT/k_θ) where the slot's (atom, parent, grandparent) is an angle of the force field, and
    the bond length b₀ where (atom, parent) is a bond; elsewhere 1.9 ± 0.3 rad and 0.15 nm."""
    t = generator.tables
    moltypes = {cb.block.moltype.name: cb.block.moltype for cb in cg_topology.blocks}
    n = t.n_slots
    theta, spread, r = torch.full((n,), 1.9), torch.full((n,), 0.3), torch.full((n,), 0.15)
    angle_cache: dict[str, dict] = {}
    kt = BOLTZMANN * temperature
    for k, table in enumerate(t.tables):
        if table.moltype not in angle_cache:
            atoms, params = molecule_terms(moltypes[table.moltype])["angle"]
            angle_cache[table.moltype] = {}
            for (i, j, l), (theta0, k_theta) in zip(np.asarray(atoms).tolist(), np.asarray(params).tolist()):
                angle_cache[table.moltype][(i, j, l)] = angle_cache[table.moltype][(l, j, i)] = (theta0, k_theta)
        angles = angle_cache[table.moltype]
        u, e = len(table.atoms), len(table.external)

        def atom_of(code: int) -> int | None:
            if 0 <= code < u:
                return table.atoms[code]
            if u <= code < u + e:
                return table.external[code - u]
            return None  # a virtual point

        for i in range(u):
            atom = table.atoms[table.order[i]]
            for row in range(table.triples.shape[1]):
                codes = table.triples[i, row]
                if codes[0] < 0:
                    continue
                slot = int(t.slot[k, i, row])
                if table.bond[i, row] > 0:
                    r[slot] = float(table.bond[i, row])
                parent, grand = atom_of(int(codes[0])), atom_of(int(codes[1]))
                hit = angles.get((atom, parent, grand)) if parent is not None and grand is not None else None
                if hit is not None:
                    theta[slot] = hit[0]
                    spread[slot] = math.sqrt(kt / hit[1]) if hit[1] > 0 else 0.3
    return theta, spread.clamp(0.02, 1.0), r


def frame_temperatures(low: float, high: float, n: int, seed: int) -> np.ndarray:
    """One temperature (K) per training frame for a model learning ``low``–``high``: evenly spaced
    in β (the midpoints of n equal slices of [1/high, 1/low]), in a seeded random order over the
    frames, so that each frame's pool is thermalized at its own temperature."""
    beta = 1 / high + (1 / low - 1 / high) * (np.arange(n) + 0.5) / n
    return 1 / beta[np.random.default_rng(seed).permutation(n)]


def starting_pool(targets: UnitTargets, cg: np.ndarray, dimensions: np.ndarray, minimize_steps: int,
                  cutoff: float | None = None, refiner=None, seed: int = 0, stereo=None,
                  say=lambda _msg: None) -> list[np.ndarray]:
    """Atom positions for every training CG frame without atomistic data: a forward pass of the
    model as it is (untrained: bonds at b₀, angles near θ₀, random torsions, each bead turned
    towards its CG position), then ``minimize_steps`` of restrained energy minimization with
    non-bonded terms cut at ``cutoff`` — the classic data-free start (Backward/initram): bonded
    neighbours consistent, no overlaps — and, with a ``refiner`` (prepared for the targets'
    system; or a list, one per frame, e.g. at each frame's temperature), its restrained dynamics
    from there: thermal structures of the force field. ``stereo``: the
    :class:`~backmap.sampling.chirality.ChiralCentres` of a stereo reference: after the
    minimization, every centre of the other handedness is inverted (the centre reflected through
    the plane of its heavy neighbours, its hydrogen put back opposite them;
    :func:`~backmap.sampling.chirality.invert_flipped`) and, without a refiner, minimized again.
    The untrained model's draws of one unit barely differ in their torsions, so choosing among
    candidates (the backmap step's way) cannot set a centre; a force field without impropers on
    its stereocentres (sPS) never does: its pool would be atactic."""
    from backmap.api.forcefield import minimize_restrained
    from backmap.api.io import progress
    from backmap.api.io import Frame
    from backmap.api.system import box_vectors

    out = []
    for c, d in progress(list(zip(cg, dimensions)), description="starting pool: forward pass + minimization"):
        box = np.asarray(box_vectors(d), np.float64).reshape(3, 3)
        with torch.no_grad():
            x = targets.sampler.backmap(c, box)

        def minimize(x):
            return minimize_restrained(targets.ff, x, box, targets.system.cg_topology, c, restraint=0.5 * targets.restraint,
                                       steps=minimize_steps, cutoff=cutoff).positions

        if minimize_steps:
            x = minimize(x)
        if stereo is not None:
            topology = targets.system.cg_topology.topology
            before = stereo.kept(topology, x)
            x, inverted, left = invert_flipped(stereo, topology, np.asarray(x, np.float64), d)
            if minimize_steps and refiner is None:
                x = minimize(x)
            say(f"starting pool: stereocentres kept {before:.3f} → {stereo.kept(topology, x):.3f} "
                f"({inverted} inverted, {left} without a terminal neighbour)")
        out.append(np.asarray(x, np.float64))
    if refiner is None:
        return out
    refiners = refiner if isinstance(refiner, list) else [refiner] * len(out)
    rng = np.random.default_rng(seed)
    for k in progress(range(len(out)), description=f"starting pool: {refiners[0].name} refiner"):
        x, target = targets.system.prepare(Frame(out[k], dimensions[k]), Frame(cg[k], dimensions[k]))
        box = np.asarray(box_vectors(dimensions[k]), np.float64).reshape(3, 3)
        out[k] = np.asarray(refiners[k].refine(x[None], target[None], box[None], rng).positions[0], np.float64)
    return out


def cached_pool(directory, key: dict, make) -> list[np.ndarray]:
    """``make()`` once per ``key`` (the starting pool's minimization takes minutes): kept in
    ``directory``/starting_pool.npz beside the trainer's checkpoint, so a killed run resumes
    without redoing it; a different key (frames, steps, cut-off) makes it afresh."""
    if directory is None:
        return make()
    path = Path(directory) / "starting_pool.npz"
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    if path.exists():
        with np.load(path) as saved:
            if str(saved["key"]) == digest:
                return list(saved["pool"])
    pool = make()
    with atomic_path(path) as tmp:
        np.savez(tmp, pool=np.stack(pool), key=np.array(digest))
    return pool


def pool_refiner(options: ReverseKLOptions, system, temperature: float | None = None):
    """The ``thermalize`` refiner (recipe key steps.train.reverse_kl.thermalize), prepared for the
    system, at ``temperature`` if given (else its own, by default the target's)."""
    from backmap.api.recipes import default_registry

    ref = options.thermalize
    params = dict(ref.params) if temperature is None else {**ref.params, "temperature": float(temperature)}
    refiner = default_registry().get("refiner", ref.plugin, where="steps.train.reverse_kl.thermalize.plugin").cls(params)
    refiner.prepare(system)
    return refiner


def data_free_pool(generator: "VAEGenerator", targets: UnitTargets, train, system, options: ReverseKLOptions,
                   context) -> tuple[list[np.ndarray], np.ndarray | None]:
    """The starting pool of a data-free run (:func:`starting_pool`, cached per key beside the
    checkpoint) and, for a temperature-conditioned model with ``thermalize``, the temperature each
    frame was thermalized at (:func:`frame_temperatures`; else None)."""
    key = {"cg": hashlib.sha256(np.ascontiguousarray(train.cg).tobytes()).hexdigest(), "seed": context.seed,
           "generator": generator.params.model_dump(mode="json"), "steps": options.minimize_steps,
           "cutoff": options.minimize_cutoff, "restraint": options.restraint, "temperature": options.temperature}
    temperatures = None
    centres = None
    if options.stereo_reference is not None:  # (absent otherwise: cached pools stay valid)
        key["stereo_reference"] = hashlib.sha256(Path(options.stereo_reference).read_bytes()).hexdigest()
        centres = load_chiral_centres(targets.system.cg_topology.topology, options.stereo_reference)
    if options.thermalize is not None:  # (absent otherwise: pools cached before it existed stay valid)
        key["thermalize"] = options.thermalize.model_dump(mode="json")
        if generator.conditions_on_temperature:
            temperatures = frame_temperatures(*generator.params.temperatures, len(train.cg), context.seed)
            key["frame temperatures"] = temperatures.round(3).tolist()

    def make() -> list[np.ndarray]:
        refiners = None
        if options.thermalize is not None:
            refiners = (pool_refiner(options, system) if temperatures is None
                        else [pool_refiner(options, system, t) for t in temperatures])
        return starting_pool(targets, train.cg, train.dimensions, options.minimize_steps, options.minimize_cutoff,
                             refiners, context.seed, centres, context.say)

    pool = cached_pool(context.directory, key, make)
    if centres is not None:
        topology = targets.system.cg_topology.topology
        kept = [centres.kept(topology, x) for x in pool]
        context.say(f"starting pool: stereocentres kept {np.mean(kept):.4f} (lowest {np.min(kept):.4f} of "
                    f"{len(kept)} frames)")
    return pool, temperatures


def pretrain_on_pool(generator: "VAEGenerator", data, train, pool: list[np.ndarray], epochs: int, context,
                     temperatures: np.ndarray | None = None) -> dict:
    """Maximum likelihood on the starting pool's structures (the generator's own training loop):
    the decoder learns where a bead's atoms go around its CG position and the force field's bonded
    geometry before reverse KL starts, which by gradients through the samples alone took thousands
    of steps (the untrained decoder's raw draws sit 0.2 nm off their beads). ``temperatures``: the
    temperature each frame of the pool was thermalized at, the networks' input for its units (a
    temperature-conditioned model); else every unit is at the model's reference temperature."""
    from backmap.api.system import PairSet
    from backmap.api.training import FitContext, TrainingData, TrainOptions

    pseudo = PairSet(np.stack(pool).astype(train.aa.dtype), train.cg, train.dimensions, train.frames,
                     np.zeros(len(train), bool), dict(train.info), train.times)
    pseudo_data = TrainingData(pseudo, data.cg_topology, data.spec, data.channels, data.plans, seed=data.seed)
    directory = None if context.directory is None else context.directory / "pretrain"
    options = TrainOptions(epochs=epochs, batch_size=64, log_every=10)
    generator.frame_temperatures = None if temperatures is None else torch.as_tensor(temperatures, dtype=torch.float32)
    try:
        return generator.fit(pseudo_data, FitContext(options, directory=directory, seed=context.seed, say=context.say))
    finally:
        generator.frame_temperatures = None


class _Units:
    """A bound latent model as the trainer samples it: raw, reparameterized draws."""

    def __init__(self, bound: "BoundLatentModel"):
        self.bound = bound

    def generate(self, n: int, generator: torch.Generator):
        return self.bound.generate(n, generator, raw=True, reparameterized=True)

    def log_joint(self, x: torch.Tensor, z: torch.Tensor):
        return self.bound.log_joint(x, z)

    def encode(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.bound.encode(x, generator)


class _UnitTarget(Target):
    """The tempered force field and the untempered restraint, springs and wall of bound units.
    ``scale`` = β_unit/β (one per unit; 1 but for a temperature-conditioned model, whose units
    each have a temperature of their own): the trainer tempers β toward the target, so a unit's
    force field enters as (β_k/β) β_unit U and its restraint at β_unit."""

    def __init__(self, units: BoundUnits, beta: float, wall: float, cap: float, stats: dict[str, list[float]],
                 scale: torch.Tensor | None = None):
        super().__init__(energy=None, beta=beta)
        self.units, self.wall_slope, self.cap, self.stats = units, wall, cap, stats
        self.scale = torch.ones(()) if scale is None else scale.double()[:, None]

    def terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ff, bias = self.units.energies(x)
        outside = self.units.outside(x)
        with torch.no_grad():
            for key, value in (("u_forcefield", ff.median()), ("u_restraint", bias.median()),
                               ("outside", (outside > 0).double().mean())):
                self.stats.setdefault(key, []).append(float(value))
        return (self.scale * log_capped(ff, self.cap),
                self.scale * self.beta * log_capped(bias, self.cap / 2) + self.wall_slope * outside)


def log_capped(u: torch.Tensor, cap: float) -> torch.Tensor:
    """u below ``cap``, cap + ln(1 + u − cap) above: the energy regularization of Boltzmann
    generators (Noé et al. 2019) — an overlap of two atoms (10⁵–10⁸ kJ/mol) otherwise dominates
    every gradient; configurations this high have no weight in the target anyway."""
    return torch.where(u > cap, cap + torch.log1p((u - cap).clamp(min=0)), u)


class UnitProblem:
    """The reverse-KL problem over the units of the training CG frames (see the module doc)."""

    def __init__(self, generator: "VAEGenerator", targets: UnitTargets, cg: np.ndarray, dimensions: np.ndarray,
                 options: ReverseKLOptions, pool: list[np.ndarray]):
        from backmap.api.system import box_vectors

        self.g, self.targets, self.options = generator, targets, options
        self.beta = targets.beta
        self.cg = [torch.as_tensor(c, dtype=torch.float64) for c in cg]
        self.vectors = [np.asarray(box_vectors(d), np.float64).reshape(3, 3) for d in dimensions]
        self.pool = [torch.as_tensor(x, dtype=torch.float64) for x in pool]
        self._frame, self._groups, self._draws = -1, [], 0
        self._pairs: list = []
        self._stats: dict[str, list[float]] = {}
        self._drawn: list[tuple[int, BoundUnits]] = []

    def draw(self, generator: torch.Generator):
        """Colour groups of one training frame until ``units`` units are drawn; a new random frame
        every ``FRAME_STEPS`` draws (the sampler's environment builder holds one frame at a time,
        and setting it up costs as much as a step)."""
        if self._frame < 0 or self._draws % FRAME_STEPS == 0:
            f = int(host_random(torch.randint, len(self.cg), (1,), generator=generator))
            if f != self._frame:
                self._groups = self.targets.frame_groups(self.cg[f].numpy(), self.vectors[f])
                self._frame = f
        self._draws += 1
        f = self._frame
        pairs, self._drawn, n = [], [], 0
        while n < self.options.units:
            group = self._groups[int(host_random(torch.randint, len(self._groups), (1,), generator=generator))]
            units = self.targets.bind(group, self.pool[f], self.cg[f], self.vectors[f])
            temperature, scale = self._temperatures(len(group.atoms), generator)
            pairs.append((_Units(self.g.latent_model(units.env, temperature)),
                          _UnitTarget(units, self.beta, self.options.wall, self.options.energy_cap, self._stats,
                                      scale)))
            self._drawn.append((f, units))
            n += len(group.atoms)
        self._pairs = pairs
        return pairs

    def _temperatures(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Per unit, a temperature drawn uniformly in β over the generator's ``temperatures`` and its
        β/β_ref (None, None for a model of one temperature)."""
        if not self.g.conditions_on_temperature:
            return None, None
        lo, hi = self.g.params.temperatures
        beta = 1 / hi + (1 / lo - 1 / hi) * host_random(torch.rand, n, generator=generator, dtype=torch.float64)
        return 1 / beta, beta * self.g.reference_temperature

    def observe(self, xs: list[torch.Tensor], generator: torch.Generator) -> None:
        """The drawn units take a new placement in their frame's pool, made as a backmapping run
        makes one: ``pool_candidates`` draws of the model recentred on their beads, the one of
        lowest energy kept (the lowest_energy selector; 1: the draw as it is)."""
        with torch.no_grad():
            for (f, units), (model, _target) in zip(self._drawn, self._pairs):
                x = model.bound.generate(self.options.pool_candidates, generator, raw=False)[0]
                ff, bias = units.energies(x)
                best = (ff + bias).argmin(1)
                chosen = x[torch.arange(len(best)), best]
                self.pool[f][units.index] = units.to_lab(chosen).double()

    def log_stats(self) -> dict[str, float]:
        """Means since the last call, for the training log: the median force-field and restraint
        energy per unit (kJ/mol; the means are ruled by rare overlaps) and the share of samples
        beyond the wall."""
        out = {k: float(np.mean(v)) for k, v in self._stats.items() if v}
        self._stats.clear()
        return out

    def state_dict(self) -> dict:
        """The pools and the frame in use (for the trainer's checkpoint: a resumed run continues
        from the environments it had)."""
        return {"pool": torch.stack(self.pool), "frame": self._frame, "draws": self._draws}

    def load_state_dict(self, state: dict) -> None:
        self.pool = list(state["pool"].unbind(0))
        self._draws = int(state["draws"])
        f = int(state["frame"])
        if f >= 0:
            self._groups = self.targets.frame_groups(self.cg[f].numpy(), self.vectors[f])
        self._frame = f
