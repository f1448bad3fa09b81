"""Restrained Boltzmann refinement: sample p(x | R) ∝ exp(−[U(x) + ½ k Σ_I |M_I(x) − R_I|²] / k_B T).

The ideal backmapping samples the AA Boltzmann distribution restricted to structures that map onto
the CG input (thesis eq. 2.47); the harmonic restraint on every bead's mapped centre M_I(x) (the
mapping's own weights) approximates that restriction, with ⟨|M_I − R_I|²⟩ = 3 k_B T / k per bead
for a stiff restraint. A refiner plugin receives whole molecules and the CG targets already placed
in the same periodic image, so it never has to know about the mapping's file format or PBC.

This module is the public API refiner plugins build on: :class:`RefineParams` (shared settings),
:class:`RestrainedSystem` (restraint groups, constraints, restraint energy, CG deviation) and
:func:`refine_frames` (the driver of refinement; :mod:`backmap.app.refine` runs it over files).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterable, Iterator, Literal, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from backmap.errors import BackmapError
from backmap.forcefield.settings import NonbondedSettings
from backmap.system.io import Frame
from backmap.system.mapping import CGTopology
from backmap.system.pbc import Unwrapper, minimum_image
from backmap.progress import progress, say
from backmap.system.topology import Topology

from backmap.constants import BOLTZMANN  # noqa: F401  (re-exported: kJ/mol/K)

Constraints = Literal["none", "h-bonds", "all-bonds"]


class RefineParams(BaseModel):
    """Settings every restrained refiner understands (units: K, ps, kJ/mol/nm²)."""

    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(300.0, gt=0, description="sampling temperature (K)")
    steps: int = Field(1000, ge=0, description="integration (or Monte Carlo) steps per frame")
    timestep: float = Field(0.001, gt=0, description="time step (ps)")
    friction: float = Field(10.0, gt=0, description="Langevin friction (1/ps): strong coupling re-thermalizes "
                                                    "minimized or strained input within ~0.1 ps")
    restraint: float = Field(2.0e5, ge=0, description="k of ½k|M(x) − R|² per bead (kJ/mol/nm²); "
                                                         "RMS deviation ≈ √(3k_BT/k)")
    constraints: Constraints | None = Field(
        None, description="bond constraints: none, h-bonds or all-bonds; default (null): the .mdp's 'constraints' "
                          "(--mdp, the step's mdp), without an .mdp h-bonds (printed)")
    minimize_steps: int = Field(100, ge=0, description="restrained minimization steps before sampling: generator "
                                                       "output can hold clashes and stretched bonds that make the "
                                                       "first steps hot or blow them up")
    recentre: bool = Field(True, description="first translate every molecule so that its beads' mean deviation "
                                             "from the CG input is zero (repairs misplaced molecules)")
    seed: int | None = Field(None, description="random seed (default: the run's seed)")
    on_failure: Literal["error", "keep"] = Field("error", description="a frame the refiner cannot handle: stop "
                                                                      "with an error, or keep it unrefined (logged)")


@dataclass
class RestrainedSystem:
    """What a refiner needs to know about the system: the AA topology (and its file, for engines
    that read GROMACS topologies themselves), the mapping, and the non-bonded settings."""

    cg_topology: CGTopology
    topology_path: Path | None = None
    nonbonded: NonbondedSettings | None = None

    @property
    def topology(self) -> Topology:
        return self.cg_topology.topology

    @property
    def n_atoms(self) -> int:
        return self.topology.n_atoms

    @property
    def n_beads(self) -> int:
        return self.cg_topology.n_beads

    @cached_property
    def _unwrap(self) -> Unwrapper:
        return Unwrapper(self.topology)

    def bead_groups(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per bead, in CG order: the global atom indices and their weights (centroid restraints)."""
        out = []
        for cb in self.cg_topology.blocks:
            mt, w = cb.block.moltype, cb.mapping.weight_matrix
            for c in range(cb.block.count):
                first = cb.block.atom_slice.start + c * mt.n_atoms
                for row in w:
                    idx = np.nonzero(row)[0]
                    out.append((first + idx, row[idx]))
        return out

    @cached_property
    def bonds(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The topology's harmonic bonds: (B, 2) global atom pairs, b0 (nm), k_b (kJ/mol/nm²) and
        a type label per bond (the two atom types, sorted, e.g. ``opls_135-opls_140``)."""
        from backmap.forcefield.parameters import build_parameters

        bonds = build_parameters(self.topology).bonded["bond"]
        pairs = bonds.atoms.astype(int).reshape(-1, 2)
        types = np.concatenate([np.tile(b.moltype.atom_types, b.count) for b in self.topology.blocks]).astype(str)
        labels = np.array(["-".join(sorted(t)) for t in types[pairs]], dtype=str)
        return pairs, bonds.params[:, 0].astype(float), bonds.params[:, 1].astype(float), labels

    def constrained_mask(self, kind: Constraints) -> np.ndarray:
        """Which of :attr:`bonds` ``kind`` holds fixed: every bond (``all-bonds``), bonds with a
        hydrogen (``h-bonds``) or none."""
        pairs = self.bonds[0]
        if kind == "none":
            return np.zeros(len(pairs), bool)
        if kind == "all-bonds":
            return np.ones(len(pairs), bool)
        hydrogen = np.concatenate([np.tile(b.moltype.elements == "H", b.count) for b in self.topology.blocks])
        return hydrogen[pairs].any(axis=1)

    def constrained_bonds(self, kind: Constraints) -> tuple[np.ndarray, np.ndarray]:
        """(C, 2) global atom pairs and their (C,) lengths b0 (nm) to hold fixed: every bond
        (``all-bonds``), bonds with a hydrogen (``h-bonds``) or none."""
        if kind == "none":
            return np.zeros((0, 2), int), np.zeros(0)
        keep = self.constrained_mask(kind)
        return self.bonds[0][keep], self.bonds[1][keep]

    def prepare(self, aa: Frame, cg: Frame) -> tuple[np.ndarray, np.ndarray]:
        """Whole AA molecules and the CG targets in the periodic image nearest each bead's mapped
        centre, so that M(x) − R is the minimum-image deviation."""
        if aa.positions.shape != (self.n_atoms, 3):
            raise BackmapError(f"AA frame {aa.index} has {len(aa.positions)} atoms, the topology {self.n_atoms}")
        if cg.positions.shape != (self.n_beads, 3):
            raise BackmapError(f"CG frame {cg.index} has {len(cg.positions)} beads, the mapping {self.n_beads}")
        x = self.whole(aa.positions, aa.dimensions)
        mapped = self.mapped(x)
        targets = mapped + minimum_image(cg.positions - mapped, cg.dimensions)
        return x, targets

    def whole(self, positions: np.ndarray, dimensions: np.ndarray) -> np.ndarray:
        """Positions with every molecule made whole across the box."""
        return self._unwrap(positions, dimensions)

    def recentre(self, x: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, float]:
        """Translate every molecule of ``x`` (N, 3) by the mean of R − M(x) over its beads; returns
        the moved positions and the largest shift (nm)."""
        d = targets - self.mapped(x)
        out, largest = x.copy(), 0.0
        for cb in self.cg_topology.blocks:
            n, nb = cb.block.moltype.n_atoms, cb.mapping.n_beads
            shift = d[cb.first_bead:cb.first_bead + cb.n_beads].reshape(cb.block.count, nb, 3).mean(1)
            sl = cb.block.atom_slice
            out[sl] = (x[sl].reshape(cb.block.count, n, 3) + shift[:, None]).reshape(-1, 3)
            largest = max(largest, float(np.linalg.norm(shift, axis=1).max(initial=0.0)))
        return out, largest

    def mapped(self, x: np.ndarray) -> np.ndarray:
        """Bead centres M(x) of whole-molecule positions (..., n_atoms, 3)."""
        return self.cg_topology.apply(x)

    def cg_rmsd(self, x: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """RMS over beads of ‖M(x) − R‖ (nm), per frame for (..., n_atoms, 3)."""
        d = self.mapped(x) - targets
        return np.sqrt((d ** 2).sum(-1).mean(-1))

    def restraint_energy(self, x: torch.Tensor, targets: torch.Tensor, k: float) -> torch.Tensor:
        """½ k Σ_I ‖M_I(x) − R_I‖² for positions (F, N, 3), targets (F, M, 3) → (F,)."""
        d = self.mapped_torch(x) - targets
        return 0.5 * k * (d ** 2).sum(dim=(1, 2))

    def mapped_torch(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable M(x) for positions (F, N, 3) → (F, n_beads, 3)."""
        out = []
        for cb in self.cg_topology.blocks:
            n = cb.block.moltype.n_atoms
            w = torch.as_tensor(cb.mapping.weight_matrix, dtype=x.dtype)
            xb = x[:, cb.block.atom_slice].reshape(x.shape[0], cb.block.count, n, 3)
            out.append(torch.einsum("ba,fcai->fcbi", w, xb).reshape(x.shape[0], cb.n_beads, 3))
        return torch.cat(out, dim=1)


#: constraints when neither the refiner's parameters nor an .mdp name them
DEFAULT_CONSTRAINTS: Constraints = "h-bonds"
#: a bond length farther than this many thermal s.d. √(k_BT/k_b) from b0 counts as "wide"
WIDE_SIGMAS = 4.0
#: share of a bond type's bonds allowed beyond WIDE_SIGMAS before a refinement is flagged (Gaussian: 6·10⁻⁵)
WIDE_SHARE = 0.01
#: unconstrained bonds with a thermal s.d. above this (nm) get a note: soft bonds of a topology made for
#: constraints (sPS: k_b = 10⁴ kJ/mol/nm², 0.022 nm at 568 K; ordinary C–C/C–H bonds: 0.003–0.005 nm)
SOFT_BOND_NM = 0.01
#: a unit type whose moves are accepted less often than this over a run is named as stalled
#: (docs/vae-sps.md, "Why whole-bead moves stall": the chain-end bead of the voxel GAN's sPS output, 0.005, keeps its start's overlaps)
STALLED_ACCEPTANCE = 0.01


def stalled_unit_types(rows: list[dict], threshold: float = STALLED_ACCEPTANCE) -> str | None:
    """None, or one line naming the unit types whose mean acceptance over the refined frames
    (log columns ``acceptance[TYPE]``: vae_mc's, also inside a schedule's stages) is below
    ``threshold``. Whole-unit moves are independence proposals: a state the model finds far less
    likely than the force field does is sticky, and those units keep what the start gave them."""
    columns = sorted({k for r in rows for k in r if "acceptance[" in k and k.endswith("]")})
    stalled = []
    for column in columns:
        values = [r[column] for r in rows if column in r and not r.get("failed")]
        if values and float(np.mean(values)) < threshold:
            stage, unit = column[:-1].split("acceptance[", 1)  # a schedule's columns: "0:vae_mc:acceptance[…]"
            stalled.append(f"{unit}{f' ({stage[:-1]})' if stage else ''} {float(np.mean(values)):.3f}")
    if not stalled:
        return None
    return (f"unit types that almost never move (acceptance < {threshold:g}): {', '.join(stalled)}; they keep "
            "the start's geometry: mix in local moves (refiner schedule with mala, docs/refine-schedule.md)")


def resolve_constraints(params: RefineParams, system: RestrainedSystem, refiner: str) -> RefineParams:
    """``params`` with ``constraints`` decided: the explicit value, else the .mdp's ``constraints``
    (carried by ``system.nonbonded``), else :data:`DEFAULT_CONSTRAINTS`; an implicit choice is
    printed, and so are unconstrained bonds soft enough to spread far at the temperature."""
    kind = params.constraints
    if kind is None:
        mdp = getattr(system.nonbonded, "constraints", None)
        if mdp is not None and mdp not in ("none", "h-bonds", "all-bonds"):
            raise BackmapError(f"{refiner} refiner: the .mdp says constraints = {mdp}, which the refiners do not "
                               "support (none, h-bonds, all-bonds): set the refiner's constraints explicitly "
                               "(--constraints, or 'constraints' in its params)")
        kind = mdp or DEFAULT_CONSTRAINTS
        say(f"{refiner} refiner: constraints = {kind} ({'from the .mdp' if mdp else 'default, no .mdp given'}); "
            "set --constraints or the refiner's 'constraints' parameter to change it")
        params = params.model_copy(update={"constraints": kind})
    temperature = getattr(params, "temperature", None)
    try:
        _pairs, _b0, kb, labels = system.bonds
    except BackmapError:  # a topology without parameters: nothing to say
        return params
    free = ~system.constrained_mask(kind) & (kb > 0)
    if temperature and free.any():
        sigma = np.sqrt(BOLTZMANN * temperature / kb[free])
        worst = int(np.argmax(sigma))
        if sigma[worst] > SOFT_BOND_NM:
            say(f"{refiner} refiner: note: unconstrained bond type {labels[free][worst]} has k_b = "
                f"{kb[free][worst]:.3g} kJ/mol/nm², a thermal s.d. of {sigma[worst]:.3f} nm at {temperature:g} K; "
                "if the reference MD constrained these bonds, use constraints: all-bonds")
    return params


class BondSpread:
    """Counts, per bond type, the unconstrained bonds of refined frames whose length is farther than
    :data:`WIDE_SIGMAS` thermal s.d. √(k_BT/k_b) from the topology's b0 — a refinement that left
    bonds hot or strained (an equilibrated one has ~6·10⁻⁵ of them)."""

    def __init__(self, system: RestrainedSystem, temperature: float, constraints: Constraints):
        pairs, b0, kb, labels = system.bonds
        keep = ~system.constrained_mask(constraints) & (kb > 0)
        self.pairs, self.b0 = pairs[keep], b0[keep]
        self.sigma = np.sqrt(BOLTZMANN * temperature / kb[keep])
        self.types, self.index = np.unique(labels[keep], return_inverse=True)
        self.wide = np.zeros(len(self.types))
        self.total = np.zeros(len(self.types))
        self.frames = 0

    def add(self, x: np.ndarray) -> None:
        """Bonds of whole-molecule positions (N, 3) of one refined frame."""
        d = np.linalg.norm(x[self.pairs[:, 0]] - x[self.pairs[:, 1]], axis=-1)
        far = np.abs(d - self.b0) > WIDE_SIGMAS * self.sigma
        self.wide += np.bincount(self.index, far, len(self.types))
        self.total += np.bincount(self.index, minlength=len(self.types))
        self.frames += 1

    def warning(self) -> str | None:
        """None, or one line naming the worst bond type when any type has more than
        :data:`WIDE_SHARE` of its bonds beyond :data:`WIDE_SIGMAS` s.d."""
        if not self.total.sum():
            return None
        share = self.wide / np.maximum(self.total, 1)
        worst = int(np.argmax(share))
        if share[worst] <= WIDE_SHARE:
            return None
        return (f"bonds wider than thermal after refinement: {share[worst]:.1%} of the {self.types[worst]} bonds "
                f"({self.frames} frames) are more than {WIDE_SIGMAS:g} thermal s.d. "
                f"(√(kT/k_b) = {self.sigma[self.index == worst].max():.4f} nm) from b0 — the frames are not "
                "equilibrated (more minimize_steps or steps, a smaller timestep) or too hot")

    @classmethod
    def of(cls, refiner, system: RestrainedSystem) -> "BondSpread | None":
        """The check for ``refiner`` (its resolved temperature and constraints), None where it
        cannot be made (no such parameters, no bond parameters)."""
        temperature, kind = (getattr(refiner.params, k, None) for k in ("temperature", "constraints"))
        if not temperature or kind not in ("none", "h-bonds", "all-bonds"):
            return None
        try:
            return cls(system, temperature, kind)
        except BackmapError:
            return None


@dataclass
class RefineResult:
    """Refined positions (F, N, 3) and one log row per frame (energy, restraint, CG RMSD, …)."""

    positions: np.ndarray
    log: list[dict]


def refine_batch(refiner, system: RestrainedSystem, aa_frames: Sequence[Frame], cg_frames: Sequence[Frame],
                 rng: np.random.Generator) -> list[tuple[Frame, dict]]:
    """Refine AA frames paired with CG frames in one call of ``refiner.refine``: the refined frames
    (whole molecules) with their log rows (time, CG RMSD before and after, the refiner's own)."""
    recentre = getattr(refiner.params, "recentre", False)
    t0 = time.perf_counter()
    pending = []
    for aa, cg in zip(aa_frames, cg_frames):
        x, targets = system.prepare(aa, cg)
        rmsd = float(system.cg_rmsd(x, targets))
        shift = 0.0
        if recentre:
            x, shift = system.recentre(x, targets)
        pending.append((aa, x, targets, rmsd, shift))
    x = np.stack([p[1] for p in pending])
    targets = np.stack([p[2] for p in pending])
    boxes = np.stack([p[0].box for p in pending])
    try:
        result = refiner.refine(x, targets, boxes, rng)
    except BackmapError as exc:
        raise BackmapError(f"frames {[p[0].index for p in pending]}: {exc}") from exc
    seconds = (time.perf_counter() - t0) / len(pending)
    rmsd_after = system.cg_rmsd(result.positions, targets)
    out = []
    for k, (fr, _x, _t, rmsd_before, shift) in enumerate(pending):
        row = {"frame": fr.index, "seconds": round(seconds, 3), "cg_rmsd_before": rmsd_before,
               "cg_rmsd": float(rmsd_after[k]), "recentred_nm": shift, **result.log[k]}
        out.append((Frame(result.positions[k], fr.dimensions, fr.time, fr.index), row))
    return out


def refine_frames(refiner, system: RestrainedSystem, aa_frames: Iterable[Frame], cg_frames: Iterable[Frame],
                  rng: np.random.Generator, batch: int = 1, total: int | None = None,
                  spread: BondSpread | None = None) -> Iterator[tuple[Frame, dict]]:
    """Refine AA frames paired with CG frames, ``batch`` frames per call of ``refiner.refine``
    (:func:`refine_batch`); yields refined frames (whole molecules) with their log rows. At the end,
    prints a warning when the refined bonds are far wider than thermal (:class:`BondSpread`; pass
    one to read it)."""
    spread = spread or BondSpread.of(refiner, system)
    pending: list[tuple[Frame, Frame]] = []
    rows: list[dict] = []

    def flush():
        out = refine_batch(refiner, system, [p[0] for p in pending], [p[1] for p in pending], rng)
        pending.clear()
        rows.extend(row for _frame, row in out)
        if spread is not None:
            for frame, row in out:
                if not row.get("failed"):
                    spread.add(frame.positions)
        return out

    for aa, cg in progress(zip(aa_frames, cg_frames), total=total, description=f"refining ({refiner.name})"):
        pending.append((aa, cg))
        if len(pending) == batch:
            yield from flush()
    if pending:
        yield from flush()
    report_after_refinement(refiner, spread, rows)


def report_after_refinement(refiner, spread: BondSpread | None, rows: list[dict]) -> dict[str, str]:
    """Print the checks on a finished refinement as warnings and return them by summary key:
    ``warning`` (bonds wider than thermal, :class:`BondSpread`) and ``stalled units``
    (:func:`stalled_unit_types`)."""
    found = {}
    if spread is not None and (warning := spread.warning()):
        found["warning"] = warning
    if stalled := stalled_unit_types(rows):
        found["stalled units"] = stalled
    for text in found.values():
        say(f"warning: {refiner.name} refiner: {text}")
    return found


def write_log(path: Path, rows: list[dict]) -> None:
    """The per-frame refinement log as CSV (atomic)."""
    import csv

    from backmap.system.io import atomic_path

    keys = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, keys)
            writer.writeheader()
            writer.writerows(rows)


def plot_log(path: Path, rows: list[dict], title: str = "") -> None:
    """Per-frame CG deviation before/after and the energies of the refinement (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from backmap.system.io import atomic_path

    frames = [r["frame"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].plot(frames, [r["cg_rmsd_before"] for r in rows], "o-", ms=3, label="input")
    axes[0].plot(frames, [r["cg_rmsd"] for r in rows], "o-", ms=3, label="refined")
    axes[0].set(xlabel="frame", ylabel="CG RMSD (nm)", title="consistency with the CG input")
    axes[0].legend()
    for key in ("potential", "restraint"):
        if any(key in r for r in rows):
            axes[1].plot(frames, [r.get(key, np.nan) for r in rows], "o-", ms=3, label=key)
    axes[1].set(xlabel="frame", ylabel="energy (kJ/mol)", title="after refinement")
    axes[1].legend()
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def limit_refiner_threads(refiner, threads: int | None) -> None:
    """On a worker (``threads`` given), a refiner's own ``threads`` parameter (OpenMM's) takes the
    worker's share of the cores: N workers with all cores each would fight over them."""
    if threads is not None and getattr(refiner.params, "threads", None) not in (None, threads):
        refiner.params = refiner.params.model_copy(update={"threads": threads})
