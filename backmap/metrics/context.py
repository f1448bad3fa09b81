"""What metric plugins see: the system (:class:`EvalContext`) and a batch of frames
(:class:`FrameBatch`) whose expensive derived data — whole molecules, energies, neighbour pairs —
is computed once per batch and shared by all metrics.

Batches are independent, so they can be sampled in any order by any process. A metric that needs
*consecutive* frames (velocities) calls :meth:`EvalContext.need_frame_pairs` in ``prepare``: every
batch then also carries the selected frame before its first one (:attr:`FrameBatch.previous`), so
the pairs (t − τ, t) ending in a batch are complete whatever the batch size or worker count, and
:attr:`FrameBatch.time_step` is its trajectory's τ (:mod:`backmap.metrics.timing`)."""
from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import numpy as np

from backmap.errors import BackmapError
import backmap.metrics.terms as terms
from backmap.system.pbc import Unwrapper, box_vectors, minimum_image
from backmap.system.topology import Topology

if TYPE_CHECKING:
    from backmap.metrics.timing import TimeStep

T = TypeVar("T")
#: smallest cut-off of a neighbour search; shorter pair lists are filtered from it
SEARCH_MIN = 0.4

if TYPE_CHECKING:
    from backmap.forcefield import ForceField, NonbondedSettings, Parameters
    from backmap.system.mapping import CGTopology


class EvalContext:
    """The evaluated system: topology, non-bonded settings, optional CG topology (for CG
    consistency) and the first reference frame (made whole), plus static data metrics share."""

    def __init__(self, topology: Topology, settings: "NonbondedSettings",
                 cg_topology: "CGTopology | None" = None, reference_frame: np.ndarray | None = None,
                 has_cg_input: bool | None = None,
                 time_steps: "dict[str, TimeStep] | Callable[[], dict[str, TimeStep]] | None" = None):
        self.topology = topology
        self.settings = settings
        #: the mapping onto CG (bead forces, CG consistency), when one was given
        self.cg_topology = cg_topology
        #: whether (some) trajectories come with the CG input they were made from (batches then carry ``cg``)
        self.has_cg_input = cg_topology is not None if has_cg_input is None else has_cg_input
        #: whole positions (N, 3) of the first reference frame (e.g. for stereo perception)
        self.reference_frame = reference_frame
        #: the largest neighbour-pair distance any metric asked for (:meth:`need_pairs`)
        self.pair_radius = 0.0
        #: whether batches carry the frame before their first one (:meth:`need_frame_pairs`)
        self.frame_pairs = False
        self._time_steps = time_steps
        self._shared: dict[str, Any] = {}

    def shared(self, key: str, make: Callable[[], T]) -> T:
        """Static data several metrics need (e.g. the bonded term lists), made once by whichever
        metric asks first."""
        if key not in self._shared:
            self._shared[key] = make()
        return self._shared[key]

    def need_frame_pairs(self) -> None:
        """Called by a metric's ``prepare``: it needs consecutive frames, so every batch will also
        read the selected frame before its first (:attr:`FrameBatch.previous`)."""
        self.frame_pairs = True

    @property
    def time_steps(self) -> "dict[str, TimeStep]":
        """τ of every trajectory by label (``reference`` and the candidates), determined on first
        use (it reads the frame times); empty when the evaluation did not say."""
        source = self._time_steps
        if source is None:
            return {}
        return self.shared("time_steps", source if callable(source) else lambda: source)

    @property
    def has_time_steps(self) -> bool:
        """Whether :attr:`time_steps` was asked for (the evaluation then reports every τ)."""
        return "time_steps" in self._shared

    @property
    def n_atoms(self) -> int:
        return self.topology.n_atoms

    @cached_property
    def atom_types(self) -> np.ndarray:
        return terms.per_atom(self.topology, "atom_types").astype(str)

    @cached_property
    def elements(self) -> np.ndarray:
        return terms.per_atom(self.topology, "elements").astype(str)

    @cached_property
    def unwrapper(self) -> Unwrapper:
        return Unwrapper(self.topology)

    @cached_property
    def parameters(self) -> "Parameters | None":
        """Force-field parameters, or None when the topology has none (a .tpr or .gro)."""
        from backmap.forcefield import build_parameters

        try:
            return build_parameters(self.topology)
        except BackmapError:
            return None

    @cached_property
    def forcefield(self) -> "ForceField":
        from backmap.forcefield import ForceField

        if self.parameters is None:
            raise BackmapError("no force-field parameters: energies need the GROMACS .top topology",
                               source=self.topology.source)
        return ForceField(self.topology, self.settings)

    def need_pairs(self, r_max: float) -> None:
        """Called by a metric's ``prepare``: it will ask for neighbour pairs up to ``r_max``. One
        search per frame then serves every metric (and the energies)."""
        self.pair_radius = max(self.pair_radius, r_max)

    @cached_property
    def exclusion_keys(self) -> np.ndarray:
        """Sorted keys ``i * n_atoms + j`` of the pairs left out of non-bonded statistics: the force
        field's exclusions (nrexcl and [ exclusions ]), else pairs within 3 bonds."""
        if self.parameters is not None:
            ex = self.parameters.exclusions.astype(np.int64)
            return np.unique(ex[:, 0] * self.n_atoms + ex[:, 1])
        return terms.pairs_within(self.topology, 3)


def _pair_list(x: np.ndarray, i: np.ndarray, j: np.ndarray, shift: np.ndarray):
    """(i int32, j int32, r) with r = |x_j + shift − x_i| in float64, as the force field has it (a
    pair at the cut-off must be in or out for both)."""
    d = x[j]
    d -= x[i]
    d += shift
    return i.astype(np.int32), j.astype(np.int32), np.sqrt(np.einsum("ij,ij->i", d, d))


class FrameBatch:
    """Frames of one trajectory: positions (B, N, 3) nm as read, boxes (B, 6) as (a, b, c, α, β, γ),
    their frame numbers, and the matching CG frames (B, M, 3) when a CG input was given.

    With :meth:`EvalContext.need_frame_pairs`: ``previous``, the (positions, box) of the selected
    frame before the first of this batch (None for a trajectory's first batch), and ``time_step``,
    the trajectory's τ in ps (None when it is not an equally spaced trajectory)."""

    def __init__(self, context: EvalContext, positions: np.ndarray, dimensions: np.ndarray,
                 frames: np.ndarray, cg: np.ndarray | None = None, label: str = "",
                 previous: tuple[np.ndarray, np.ndarray] | None = None, time_step: float | None = None):
        self.context = context
        self.positions = positions
        self.dimensions = dimensions
        self.frames = frames
        self.cg = cg
        self.label = label
        self.previous = previous
        self.time_step = time_step
        self._found: list | None = None  # neighbour pairs (i, j, shift) per frame
        self._found_radius = 0.0
        self._distances: list | None = None  # the same as (i, j, r), compact
        self._energies: dict[str, np.ndarray] | None = None
        self._cache: dict[Any, Any] = {}

    def __len__(self) -> int:
        return len(self.positions)

    @cached_property
    def vectors(self) -> np.ndarray:
        """(B, 3, 3) box vectors (rows), nm."""
        return np.stack([box_vectors(d) for d in self.dimensions])

    @cached_property
    def whole(self) -> np.ndarray:
        """Positions with every molecule made whole (bonded geometry needs them)."""
        u = self.context.unwrapper
        return np.stack([u(x, d) for x, d in zip(self.positions, self.dimensions)])

    def displacements(self) -> np.ndarray:
        """s_i(t) − s_i(t − τ) (P, N, 3) nm for the consecutive frame pairs ending in this batch
        (P = B with :attr:`previous`, else B − 1), each atom's shortest periodic image: a molecule
        or atom crossing the box boundary does not jump (true displacements under half a box)."""
        x, dims = self.positions, self.dimensions
        if self.previous is not None:
            x = np.concatenate([self.previous[0][None], x])
        if len(x) < 2:
            return np.zeros((0, x.shape[1], 3))
        d = x[1:] - x[:-1]
        return np.stack([minimum_image(step, box) for step, box in zip(d, dims[len(dims) - len(d):])])

    def velocities(self) -> np.ndarray:
        """(s_i(t) − s_i(t − τ)) / τ (P, N, 3) nm/ps (thesis eq. 8.9), see :meth:`displacements`."""
        if self.time_step is None:
            raise BackmapError(f"{self.label or 'trajectory'}: no time step, so no velocities")
        return self.displacements() / self.time_step

    def energies(self) -> dict[str, np.ndarray]:
        """Per-molecule energies (B, n_molecules) per force-field term, and ``potential`` (their
        sum), kJ/mol; pair terms are split half and half between the two molecules. The force field
        gets this batch's neighbour pairs, so that the search is done once per frame."""
        if self._energies is None:
            import torch

            ff = self.context.forcefield
            with torch.no_grad():
                e = ff.energy(self.whole, self.dimensions, per_molecule=True, whole=True,
                              pair_lists=self._search(ff.settings.cutoff))
            out = {k: v.numpy() for k, v in e.per_molecule.items()}
            out["potential"] = sum(out.values())
            self._energies = out
        return self._energies

    def forces(self) -> np.ndarray:
        """AA forces −∇U (B, N, 3) in kJ/mol/nm from every force-field term, on this batch's
        neighbour pairs (one search per frame, shared with the energies)."""
        if "forces" not in self._cache:
            ff = self.context.forcefield
            _, f = ff.forces(self.whole, self.dimensions, whole=True, pair_lists=self._search(ff.settings.cutoff))
            self._cache["forces"] = f.detach().numpy()
        return self._cache["forces"]

    def pairs(self, r_max: float) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per frame: atom pairs (i < j) closer than ``r_max`` (minimum image) that the force field
        does not exclude (:attr:`EvalContext.exclusion_keys`), with their distances, as
        (i int32, j int32, r float64)."""
        self._search(r_max)
        if self._distances is None:
            self._distances = [_within(_pair_list(x, i, j, shift), self._found_radius)
                               for x, (i, j, shift) in zip(self.whole, self._found)]
        return [_within(p, r_max) for p in self._distances]

    def _search(self, r_max: float) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(i, j, lattice shift) per frame within at least ``r_max`` and the context's pair radius:
        one search per frame, with the force field's exclusions."""
        if self._found is not None and self._found_radius >= r_max:
            return self._found
        from backmap.forcefield.neighbors import box_heights, neighbour_pairs

        ctx = self.context
        radius = max(r_max, ctx.pair_radius)
        found = []
        for x, v in zip(self.whole, self.vectors):
            # cells much smaller than ~0.4 nm make the grid search slower, not faster
            cut = max(radius, min(SEARCH_MIN, 0.45 * float(box_heights(v).min())))
            found.append(neighbour_pairs(x, v, cut, ctx.exclusion_keys))
        self._found, self._found_radius, self._distances = found, radius, None
        return found

    def pairs_apart(self, r_max: float, bonds: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Like :meth:`pairs`, but the pairs left out are exactly those at most ``bonds`` bonds
        apart, whatever the force field excludes (sPS excludes pairs within 2 bonds plus whole
        phenyl rings: a collapsed ring must still count as a clash)."""
        key = ("apart", bonds)
        hit = self._cache.get(key)
        if hit is not None and hit[0] >= r_max:
            return [_within(p, r_max) for p in hit[1]]
        ctx = self.context
        n = ctx.n_atoms
        near = ctx.shared(f"pairs_within_{bonds}", lambda: terms.pairs_within(ctx.topology, bonds))
        # force-field exclusions further apart than `bonds`: measured directly, they are few
        extra = ctx.shared(f"excluded_beyond_{bonds}", lambda: np.setdiff1d(ctx.exclusion_keys, near))
        ei, ej = (extra // n).astype(np.int32), (extra % n).astype(np.int32)
        molecule = ctx.topology.molecule_index
        out = []
        for b, (i, j, r) in enumerate(self.pairs(r_max)):
            if len(near) and len(i):
                # near pairs are within a molecule: look up only the intramolecular pairs
                intra = np.flatnonzero(molecule[i] == molecule[j])
                keys = i[intra].astype(np.int64) * n + j[intra]
                pos = np.minimum(np.searchsorted(near, keys), len(near) - 1)
                keep = np.ones(len(i), bool)
                keep[intra[near[pos] == keys]] = False
                i, j, r = i[keep], j[keep], r[keep]
            if len(extra):
                d = minimum_image(self.whole[b, ej] - self.whole[b, ei], self.dimensions[b])
                r_ex = np.linalg.norm(d, axis=-1)
                close = r_ex < r_max
                i, j, r = (np.concatenate([i, ei[close]]), np.concatenate([j, ej[close]]),
                           np.concatenate([r, r_ex[close]]))
            out.append((i, j, r))
        self._cache[key] = (r_max, out)
        return out


def _within(pairs: tuple[np.ndarray, np.ndarray, np.ndarray], r_max: float):
    i, j, r = pairs
    keep = r < r_max
    return (i, j, r) if keep.all() else (i[keep], j[keep], r[keep])
