"""The ``equivariant`` generator: an SO(3)-equivariant e3nn encoder of the local environment and an
autoregressive internal-coordinate head, one bead per call (docs/equivariant.md).

Why this objective: an autoregressive mixture density over internal coordinates trains by plain
maximum likelihood (stable, minutes on a CPU), gives rigid bonds their exact length by
construction, decides a stereocentre's hand through a signed dihedral read from an environment
the encoder sees mirror-sensitively, and has an exact ``log_prob`` for Metropolis–Hastings
refiners. The encoder runs once per unit; the K candidates share it and differ in the head's draws.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from backmap.api import BackmapError, NetworkGenerator
from backmap.api.io import torch_threads
from backmap.api.refinement import BondConstraints
from backmap.api.sampling import EnvironmentBatch
from backmap_equivariant.encoder import Encoder
from backmap_equivariant.head import Head, ICDistribution
from backmap_equivariant.nerf import frame, internal, place
from backmap_equivariant.params import EquivariantParams
from backmap_equivariant.tables import VIRTUAL, VIRTUAL_POSITIONS, UnitTable, bead_keys, system_tables

STATE_FORMAT = 1
#: neighbour beads the head sees explicitly (nearest first)
NEAR_BEADS = 4
#: radii (nm) of the Gaussian shells in which the head counts known atoms when its features are keyed
#: by chemistry (``transferable``): bonded, 1-3, 1-4 and farther neighbours of the atom's parent
KNOWN_SHELLS = torch.tensor([0.0, 0.11, 0.15, 0.22, 0.26, 0.32, 0.4, 0.5])
SHELL_WIDTH = 0.03
#: iterations of learning-rate warm-up
WARMUP = 100
#: trajectory mode: features of an atom's previous-frame position in its current NeRF frame
N_PREVIOUS_IC = 6


class Tables:
    """The unit tables packed into padded tensors (pool layout: U_max unit slots, E_max external
    atoms, 3 virtual points), shared by training and inference."""

    def __init__(self, tables: list[UnitTable], U: int | None = None, E: int | None = None,
                 signatures: list[str] | None = None):
        """``U``, ``E``: the pool's unit and external slots (the networks' widths depend on them;
        default: what ``tables`` need); ``signatures``: the slot vocabulary in order (default:
        the tables' signatures, sorted), which must hold every signature of ``tables``."""
        self.tables = tables
        self.index = {(t.moltype, t.bead): k for k, t in enumerate(tables)}
        N = len(tables)
        need_u, need_e = max(len(t.atoms) for t in tables), max(max(len(t.external) for t in tables), 1)
        if (U is not None and need_u > U) or (E is not None and need_e > E):
            worst = max(tables, key=lambda t: (len(t.atoms) > (U or need_u), len(t.external)))
            raise BackmapError(f"equivariant: bead {worst.bead} of {worst.moltype} has {len(worst.atoms)} atoms and "
                               f"{len(worst.external)} bonded atoms of other beads; the model has room for {U} and {E} "
                               "(train it with larger max_unit_atoms / max_external_atoms)")
        self.U = U = U or need_u
        self.E = E = E or need_e
        self.R = R = tables[0].triples.shape[1]
        self.P = U + E + 3
        self.triples = torch.full((N, U, R, 3), -1, dtype=torch.long)
        self.bond = torch.zeros(N, U, R)
        self.constrained = torch.zeros(N, U, R, dtype=torch.bool)
        self.external = torch.full((N, E), -1, dtype=torch.long)
        self.first = torch.zeros(N, dtype=torch.long)
        self.order = torch.arange(U).repeat(N, 1)  # build position -> plan slot (padding: itself)
        self.rank = torch.full((N, U), U, dtype=torch.long)  # plan slot -> build position (padding: never built)
        for k, t in enumerate(tables):
            self.order[k, :len(t.atoms)] = torch.as_tensor(t.order)
            self.rank[k, torch.as_tensor(t.order)] = torch.arange(len(t.atoms))
            u, e = len(t.atoms), len(t.external)
            codes = torch.as_tensor(t.triples)
            remap = torch.cat([torch.arange(u), U + torch.arange(e), U + E + torch.arange(3)])
            self.triples[k, :u] = torch.where(codes >= 0, remap[codes.clamp(min=0)], codes)
            self.bond[k, :u] = torch.as_tensor(t.bond, dtype=torch.float32)
            self.constrained[k, :u] = torch.as_tensor(t.constrained)
            self.external[k, :e] = torch.as_tensor(t.external)
            self.first[k] = t.atoms[0]
        # rows of equal chemistry share one slot (embedding, reference angle): the ten phenyl
        # beads of a chain, both ends of hexane, every ring hydrogen's row of the same kind
        self.signatures = list(signatures) if signatures is not None else \
            sorted({str(x) for t in tables for x in t.signature.ravel() if x})
        vocab = {sig: i for i, sig in enumerate(self.signatures)}
        self.slot = torch.zeros(N, U, R, dtype=torch.long)
        for k, t in enumerate(tables):
            for (a, r), sig in np.ndenumerate(t.signature):
                if sig:
                    self.slot[k, a, r] = vocab[str(sig)]
        self.n_slots = len(self.signatures)
        self.virtual = torch.as_tensor(VIRTUAL_POSITIONS, dtype=torch.float32)
        self._projections: dict = {}

    def key(self, moltype: str, bead: int) -> int:
        k = self.index.get((moltype, int(bead)))
        if k is None:
            raise BackmapError(f"equivariant: the model has no table for bead {bead} of molecule type {moltype!r} "
                               "(trained on another system or plan?)")
        return k

    def external_positions(self, keys, target_atoms, atom_index, atom_mask, atom_positions, atom_types=None):
        """(B, E, 3) positions and (B, E) found-flags of each unit's external reference atoms in
        its environment (placed and visible); with ``atom_types`` also their (B, E) type channels."""
        first = target_atoms[:, 0] - self.first[keys]
        ext = self.external[keys]
        glob = torch.where(ext >= 0, first[:, None] + ext, torch.full_like(ext, -2))
        match = (atom_index[:, None, :] == glob[:, :, None]) & atom_mask[:, None, :]
        out = match.to(atom_positions.dtype) @ atom_positions, match.any(-1)
        if atom_types is None:
            return out
        return (*out, (match.long() * atom_types[:, None, :]).sum(-1))

    def choose(self, keys, found):
        """Per unit atom the first reference triple whose points are known: codes (B, U, 3),
        slot ids, bond lengths and rigid flags (B, U)."""
        B = keys.shape[0]
        avail = torch.cat([torch.ones(B, self.U, dtype=torch.bool), found, torch.ones(B, 3, dtype=torch.bool)], 1)
        codes = self.triples[keys]
        ok = (codes >= 0).all(-1) & avail.gather(1, codes.clamp(min=0).view(B, -1)).view(codes.shape).all(-1)
        row = ok.to(torch.int8).argmax(-1)  # (B, U): first usable row (the last, all-virtual one always is)

        def pick(x):
            xk = x[keys]
            if xk.ndim == 3:
                return xk.gather(2, row[..., None])[..., 0]
            return xk.gather(2, row[..., None, None].expand(-1, -1, 1, xk.shape[-1]))[:, :, 0]

        return pick(self.triples).clamp(min=0), pick(self.slot), pick(self.bond), pick(self.constrained)  # padding atoms: any point

    def projection(self, key: int, active: np.ndarray) -> tuple[BondConstraints, np.ndarray] | None:
        """The SHAKE solver of table ``key``'s rigid closures whose ends are known (``active``)."""
        cache_key = (key, active.tobytes())
        if cache_key not in self._projections:
            t = self.tables[key]
            u = len(t.atoms)
            codes = np.where(t.closures < u, t.closures, t.closures - u + self.U)[active]
            if not len(codes):
                self._projections[cache_key] = None
            else:
                masses = np.full(self.P, np.inf)
                masses[:u] = t.masses
                self._projections[cache_key] = (BondConstraints(codes, t.closure_length[active], masses,
                                                                tolerance=1e-9, max_iterations=30), codes)
        return self._projections[cache_key]


class EquivariantGenerator(NetworkGenerator):
    name = "equivariant"
    summary = "SO(3)-equivariant e3nn encoder + autoregressive internal-coordinate head, one bead per call (exact rigid bonds, signed dihedrals, log_prob)"
    Params = EquivariantParams
    unit = "bead"
    #: read at each proposal only: how a drawn unit is made to meet its bead, and the SHAKE closure
    inference_params = frozenset({"recentre", "recentre_by", "project"})
    #: a whole bead — heavy atoms and hydrogens — is placed at once, so it must see the hydrogens of
    #: the beads bonded to it (hiding them let rings and backbone hydrogens overlap: LJ per molecule
    #: +519 instead of −192 kJ/mol)
    environment_defaults = {"strip_hydrogens": False}
    progress_columns = ("nll", "nll_angle", "nll_dihedral", "nll_bond")
    data_parallel = True

    def __init__(self, params=None, environment=None):
        super().__init__(params, environment)
        self.encoder: Encoder | None = None
        self.head: Head | None = None
        self.tables: Tables | None = None
        #: angle and bond-length spreads bounded away from the draws' clamps (models trained by
        #: reverse KL, which would exploit them; see ICDistribution)
        self.bounded_ics = False
        #: slots trained (those after it were made by :meth:`adapt`); None until adapted
        self.trained_slots: int | None = None

    # ------------------------------------------------------------------ networks
    def _build(self, layout: dict) -> None:
        p = self.params
        self.layout = dict(layout)
        self.encoder = Encoder(layout["n_atom_types"], layout["n_interactions"], layout["n_bead_types"],
                               self.tables.U, width=p.width, vectors=p.vectors, tensors=p.tensors, parity=p.parity,
                               relations_by_type=p.transferable)
        n_context = self.encoder.n_scalars + p.width + self._extra_context_width()
        # points the head sees from each atom's NeRF frame: the unit's atoms built before, placed
        # atoms of other beads, and in trajectory mode the unit's atoms in the previous frame
        known = self.tables.U + self.tables.E + (self.tables.U if layout.get("temporal") else 0)
        n_frame = 3 * p.vectors + 3 * (3 + NEAR_BEADS) + NEAR_BEADS * layout["n_bead_types"]
        n_frame += len(KNOWN_SHELLS) * 4 * layout["n_atom_types"] if p.transferable else 4 * known
        n_frame += N_PREVIOUS_IC if layout.get("temporal") else 0
        self.head = Head(n_context, self.tables.n_slots, n_frame, hidden=p.hidden)

    def _extra_context_width(self) -> int:
        """Inputs the head takes beside the encoder's scalars (a subclass's latent variables)."""
        return 0

    def _decoder_context(self, scalars: torch.Tensor, v: dict) -> torch.Tensor:
        """What the head is conditioned on per unit (rows of ``scalars``): here the encoder's scalars."""
        return scalars

    def parameters(self):
        return [*self.encoder.parameters(), *self.head.parameters()]

    def n_parameters(self) -> int:
        return sum(x.numel() for x in self.parameters())

    # ------------------------------------------------------------------ training
    def training_contexts(self) -> tuple[str, ...]:
        base = ("forward", "gibbs") if self.params.context == "mixed" else (self.params.context,)
        return base + (("block",) if self.params.blocks else ())

    def training_blocks(self) -> tuple[str, ...]:
        return tuple(self.params.blocks)

    def setup(self, data, seed: int) -> None:
        self.setup_networks(data, seed)
        self._reference_ics(data.sequences(self.training_contexts(), self.training_blocks()))
        self.optimizer = torch.optim.Adam(self.parameters(), lr=self.params.lr)

    def setup_networks(self, data, seed: int) -> None:
        """Unit tables from the topology and plans, and fresh networks initialized from ``seed``
        (no coordinates are read)."""
        p = self.params
        if p.transferable and getattr(self.environment, "temporal", False):
            raise BackmapError("equivariant: transferable features and trajectory mode (environment.temporal) "
                               "do not go together yet")
        self.tables = Tables(system_tables(data.cg_topology, data.plans, p.constraints), p.max_unit_atoms,
                             p.max_external_atoms)
        self.bead_key = torch.as_tensor(bead_keys(data.cg_topology, self.tables.tables))
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self._build({"n_atom_types": data.channels.n_atom_types, "n_interactions": data.channels.n_interactions,
                         "n_bead_types": len(data.channels.bead_types),
                         **({"unit_slots": self.tables.U, "external_slots": self.tables.E}
                            if p.max_unit_atoms or p.max_external_atoms else {}),
                         "temporal": int(bool(getattr(self.environment, "temporal", False)))})

    def _reference_ics(self, seqs) -> None:
        """Mean bond angle and parent distance of every slot in the training data: the head
        predicts offsets from them (the residual is what is learned)."""
        theta = torch.zeros(self.tables.n_slots)
        theta2 = torch.zeros(self.tables.n_slots)
        r = torch.zeros(self.tables.n_slots)
        count = torch.zeros(self.tables.n_slots)
        for lo in range(0, len(seqs), 4096):
            v = self._view_sequences(seqs.select(slice(lo, lo + 4096)))
            _codes, slot, _b, _c, ics, *_ = self._teacher(v)
            m = v["target_mask"]
            count.index_add_(0, slot[m], torch.ones(int(m.sum())))
            theta.index_add_(0, slot[m], ics[1][m])
            theta2.index_add_(0, slot[m], ics[1][m] ** 2)
            r.index_add_(0, slot[m], ics[0][m])
        seen = count > 0
        self.theta_ref = torch.where(seen, theta / count.clamp(min=1), torch.full_like(theta, 1.9))
        self.r_ref = torch.where(seen, r / count.clamp(min=1), torch.full_like(r, 0.15))
        var = theta2 / count.clamp(min=1) - self.theta_ref ** 2
        self.theta_std = torch.where(count > 1, var.clamp(min=0).sqrt(), torch.full_like(var, 0.3)).clamp(0.02, 1.0)

    def _view_sequences(self, seqs) -> dict:
        keys = self.bead_key[seqs.bead]
        if (keys < 0).any():
            raise BackmapError("equivariant: a training bead has no unit table (a plan with unit = 'bead' is needed)")
        return {"keys": keys, "atom_positions": seqs.atom_positions, "atom_types": seqs.atom_types,
                "atom_index": seqs.atom_index, "atom_mask": seqs.visible[:, 0] & (seqs.atom_index >= 0),
                "interaction": seqs.interaction, "bead_positions": seqs.bead_positions, "bead_types": seqs.bead_types,
                "bead_mask": seqs.bead_mask, "target_atoms": seqs.target_atoms, "target_mask": seqs.target_mask,
                "target_types": seqs.target_types, "targets": seqs.target_positions,
                **self._previous_frame(seqs.previous_positions, seqs.previous_mask, seqs.target_mask)}

    def _previous_frame(self, positions, mask, target_mask) -> dict:
        """Trajectory mode: the unit's atoms in the previous frame padded to the tables' U slots
        (plan order, as the pool), and where known; nothing for a frame-wise model."""
        if not self.layout.get("temporal"):
            return {}
        B, T = target_mask.shape
        prev = torch.zeros(B, self.tables.U, 3)
        ok = torch.zeros(B, self.tables.U, dtype=torch.bool)
        if positions is not None:
            prev[:, :T] = positions
            ok[:, :T] = mask & target_mask
        return {"previous_frame": prev, "previous_frame_ok": ok}

    def _known(self, points: torch.Tensor, ok: torch.Tensor, v: dict, rows: int = 1):
        """The points the head may see (B, P, 3) and their flags (..., P): ``points``/``ok`` with,
        in trajectory mode, the unit's previous-frame atoms appended (each row repeated ``rows``
        times, for K candidates)."""
        if "previous_frame" not in v:
            return points, ok
        prev, prev_ok = v["previous_frame"].repeat_interleave(rows, 0), v["previous_frame_ok"].repeat_interleave(rows, 0)
        if ok.ndim == 3:  # per step (B, T, P)
            prev, prev_ok = prev[:, None].expand(-1, ok.shape[1], -1, -1), prev_ok[:, None].expand(-1, ok.shape[1], -1)
        return torch.cat([points, prev], -2), torch.cat([ok, prev_ok], -1)

    def _previous_ics(self, v: dict, slots: torch.Tensor, d, g, p, rows: int = 1) -> torch.Tensor | None:
        """Trajectory mode: where each atom being placed (plan ``slots``, (B, T) or (B,)) was in
        the previous frame, as internal coordinates on its current references (d, g, p): r (nm ×
        10), cos θ, sin θ, cos φ, sin φ and a known-flag. The head's most direct cue for staying
        close to the previous frame (a methyl rotamer kept, a dihedral continued). None otherwise."""
        if "previous_frame" not in v:
            return None
        prev = v["previous_frame"].repeat_interleave(rows, 0)
        ok = v["previous_frame_ok"].repeat_interleave(rows, 0)
        if slots.ndim == 2:
            x, known = prev.gather(1, slots[..., None].expand(-1, -1, 3)), ok.gather(1, slots)
        else:
            x, known = prev[torch.arange(len(slots)), slots], ok[torch.arange(len(slots)), slots]
        local = ((x - p)[..., None, :] @ frame(d, g, p).transpose(-1, -2))[..., 0, :]
        r = local.norm(dim=-1).clamp(min=1e-6)
        rho = local[..., 1:].norm(dim=-1).clamp(min=1e-9)
        feats = torch.stack([r * 10, -local[..., 0] / r, rho / r, local[..., 1] / rho, local[..., 2] / rho,
                             torch.ones_like(r)], -1)
        return feats * known[..., None].to(feats.dtype)

    def _teacher(self, v: dict):
        """Reference triples, the internal coordinates of the reference positions, and the pool of
        points (reference unit atoms, external atoms, virtual points) with the external atoms' found-flags."""
        t = self.tables
        ext, found, ext_types = t.external_positions(v["keys"], v["target_atoms"], v["atom_index"], v["atom_mask"],
                                                     v["atom_positions"], v["atom_types"])
        codes, slot, bond, rigid = t.choose(v["keys"], found)
        B, T = v["targets"].shape[:2]
        targets = torch.zeros(B, t.U, 3)
        targets[:, :T] = v["targets"]
        pool = torch.cat([targets, ext, t.virtual.expand(B, 3, 3)], 1)
        refs = pool.gather(1, codes.view(B, -1, 1).expand(-1, -1, 3)).view(B, t.U, 3, 3)
        d, g, p = refs[:, :, 2], refs[:, :, 1], refs[:, :, 0]
        built = targets.gather(1, t.order[v["keys"]][..., None].expand(-1, -1, 3))  # build order
        ics = internal(built, d, g, p)
        return codes[:, :T], slot[:, :T], bond[:, :T], rigid[:, :T], [x[:, :T] for x in ics], \
            (d[:, :T], g[:, :T], p[:, :T]), pool, found, self._pool_types(v, ext_types)

    def _pool_types(self, v: dict, ext_types: torch.Tensor) -> torch.Tensor:
        """(B, U + E) atom-type channels of the pool's unit and external atoms (padding: 0)."""
        unit = torch.zeros(ext_types.shape[0], self.tables.U, dtype=torch.long)
        unit[:, :v["target_types"].shape[1]] = v["target_types"]
        return torch.cat([unit, ext_types], 1)

    def _encode(self, v: dict):
        if "encoded" in v:  # computed once by the caller
            return v["encoded"]
        return self.encoder(v["atom_positions"], v["atom_types"], v["atom_mask"], v["interaction"], v["target_mask"],
                            v["bead_positions"], v["bead_types"], v["bead_mask"], v.get("target_types"))

    def _near_beads(self, v: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The NEAR_BEADS neighbour beads closest to the unit's own (B, n, 3) and their one-hot
        types (B, n, n_bead_types); missing ones far away with no type."""
        pos, mask = v["bead_positions"][:, 1:], v["bead_mask"][:, 1:]
        n = min(NEAR_BEADS, pos.shape[1])
        dist = torch.where(mask, pos.norm(dim=-1), torch.full_like(pos[..., 0], 1e3))
        idx = dist.topk(n, dim=1, largest=False).indices
        near = pos.gather(1, idx[..., None].expand(-1, -1, 3))
        ok = mask.gather(1, idx)
        types = torch.nn.functional.one_hot(v["bead_types"][:, 1:].gather(1, idx), self.layout["n_bead_types"])
        types = types * ok[..., None]
        near = torch.where(ok[..., None], near, torch.zeros_like(near))
        if n < NEAR_BEADS:
            near = torch.cat([near, near.new_zeros(near.shape[0], NEAR_BEADS - n, 3)], 1)
            types = torch.cat([types, types.new_zeros(types.shape[0], NEAR_BEADS - n, types.shape[2])], 1)
        return near, types.to(near.dtype)

    def _features(self, vectors, near, near_types, known, known_ok, d, g, p, known_types=None):
        """What the head sees of the environment, from each atom's own NeRF frame (invariant
        numbers that carry directions): the encoder's vectors, the local frame's origin and axes,
        the nearest CG beads, and every point already known — the unit's atoms built before this
        one and the placed atoms of other beads it may be built from (zero where not known). The
        last is what lets a CH₂'s second hydrogen go to the free tetrahedral site rather than a
        mirror-ambiguous ±120°."""
        ft = frame(d, g, p).transpose(-1, -2)
        axes = torch.eye(3)[[2, 0]].expand(*p.shape[:-1], 2, 3)
        fixed = torch.cat([(-p)[..., None, :], axes, near - p[..., None, :]], -2) @ ft
        seen = ((known - p[..., None, :]) @ ft) * known_ok[..., None]
        if self.params.transferable:  # the known atoms by type and distance: no slot order (chemical transfer)
            return torch.cat([(vectors @ ft).flatten(-2), fixed.flatten(-2), near_types.flatten(-2),
                              self._known_shells(seen, known_ok, known_types)], -1)
        return torch.cat([(vectors @ ft).flatten(-2), fixed.flatten(-2), near_types.flatten(-2), seen.flatten(-2),
                          known_ok.to(p.dtype)], -1)

    def _known_shells(self, seen: torch.Tensor, ok: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        """The known atoms as smooth per-type radial shells around the atom's parent: for each atom
        type and each of :data:`KNOWN_SHELLS` Gaussian shells, the summed weight and weighted unit
        vectors (in the NeRF frame) of the known atoms of that type in it. What the slot-ordered
        view says, but the same for any molecule of the same chemistry, and smooth and invariant
        (a sorted list of nearest atoms is not: equal bond lengths tie and swap under rotation)."""
        r = seen.norm(dim=-1, keepdim=True).clamp(min=1e-6)
        weight = torch.exp(-0.5 * ((r - KNOWN_SHELLS) / SHELL_WIDTH) ** 2) * ok[..., None]  # (..., P, S)
        rows = torch.cat([torch.ones_like(r), seen / r], -1)  # (..., P, 4)
        kinds = torch.nn.functional.one_hot(types, self.layout["n_atom_types"]).to(seen.dtype)  # (..., P, T)
        out = torch.einsum("...ps,...pc,...pt->...tsc", weight, rows, kinds)
        return out.flatten(-3)

    def _teacher_pass(self, v: dict):
        """The head's distributions for every atom of every sequence, teacher-forced (the
        reference positions as the earlier atoms): (distribution, (r, θ, φ), rigid, mask)."""
        t = self.tables
        _codes, slot, _bond, rigid, (r, theta, phi), (d, g, p), pool, found, pool_types = self._teacher(v)
        scalars, vectors = self._encode(v)
        near, near_types = self._near_beads(v)
        T = slot.shape[1]
        unit_ok = t.rank[v["keys"]][:, None, :] < torch.arange(T)[None, :, None]  # (B, T, U)
        known_ok = torch.cat([unit_ok, found[:, None].expand(-1, T, -1)], -1)
        over_t = lambda x: x[:, None].expand(-1, T, *x.shape[1:])
        known, known_ok = self._known(over_t(pool[:, :t.U + t.E]), known_ok, v)
        feats = self._features(over_t(vectors), over_t(near), over_t(near_types), known, known_ok, d, g, p,
                               over_t(pool_types))
        prev_ic = self._previous_ics(v, t.order[v["keys"]][:, :T], d, g, p)
        if prev_ic is not None:
            feats = torch.cat([feats, prev_ic], -1)
        r_ref = self.r_ref[slot]
        h = self.head.features(over_t(self._decoder_context(scalars, v)), slot, self._previous(r, theta, phi, r_ref),
                               feats)
        out = self.head.outputs(h, theta)
        return ICDistribution(out, self.theta_ref[slot], self.theta_std[slot], r_ref, self.bounded_ics), \
            (r, theta, phi), rigid

    def _previous(self, r, theta, phi, r_ref):
        feats = torch.stack([torch.cos(theta), torch.sin(theta), torch.cos(phi), torch.sin(phi),
                             (r - r_ref) * 10], -1)
        return torch.cat([torch.zeros_like(feats[:, :1]), feats[:, :-1]], 1)

    def nll(self, v: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """Teacher-forced negative log-likelihood per atom of a batch of sequences."""
        dist, (r, theta, phi), rigid = self._teacher_pass(v)
        lp_a, lp_d, lp_r = dist.log_prob(r, theta, phi)
        m = v["target_mask"].to(lp_a.dtype)
        free = m * (~rigid).to(lp_a.dtype)
        n = m.sum().clamp(min=1)
        nll_a, nll_d, nll_r = -(lp_a * m).sum() / n, -(lp_d * m).sum() / n, -(lp_r * free).sum() / n
        loss = nll_a + nll_d + nll_r
        return loss, {"nll": float(loss.detach()), "nll_angle": float(nll_a.detach()),
                      "nll_dihedral": float(nll_d.detach()), "nll_bond": float(nll_r.detach())}

    def train_step(self, beads: np.ndarray, loop) -> dict[str, float]:
        p = self.params
        scale = p.lr_end_fraction + (1 - p.lr_end_fraction) * 0.5 * (1 + math.cos(math.pi * loop.fraction))
        scale *= min(1.0, (loop.iteration + 1) / WARMUP)  # a linear warm-up: the first steps sharpen σ too fast
        for group in self.optimizer.param_groups:
            group["lr"] = p.lr * scale
        _ids, seqs = loop.batch(beads)
        v = self._view_sequences(seqs)
        if p.mirror_augment:  # mirror half of the batch: y → −y in the local frame (a right-handed frame stays one)
            flip = torch.as_tensor(loop.local(loop.np_rng.random(len(beads)) < 0.5))
            sign = torch.where(flip, -1.0, 1.0)[:, None]
            for k in ("atom_positions", "bead_positions", "targets", "previous_frame"):
                if k not in v:
                    continue
                v[k] = v[k].clone()
                v[k][..., 1] *= sign
        if "previous_frame" in v and p.previous_dropout > 0:  # some frames without one: the first frame of a trajectory
            drop = torch.as_tensor(loop.local(loop.np_rng.random(len(beads)) < p.previous_dropout))
            v["previous_frame_ok"] = v["previous_frame_ok"] & ~drop[:, None]
        loss, stats = self._training_loss(v, loop)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        loop.reduce_gradients(self.parameters(), float(v["target_mask"].sum()))  # the loss is a mean per atom
        torch.nn.utils.clip_grad_norm_(self.parameters(), 10.0)
        self.optimizer.step()
        return stats

    def _training_loss(self, v: dict, loop) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of one (augmented) training batch and its logged statistics."""
        return self.nll(v)

    def fit(self, data, context) -> dict[str, Any]:
        with torch_threads(self.params.threads):
            summary = super().fit(data, context)
        summary["parameters"] = self.n_parameters()
        return summary

    def training_state(self) -> dict[str, Any]:
        return {"encoder": self.encoder.state_dict(), "head": self.head.state_dict(),
                "optimizer": self.optimizer.state_dict()}

    def load_training_state(self, state: dict[str, Any]) -> None:
        self.encoder.load_state_dict(state["encoder"])
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])

    # ------------------------------------------------------------------ inference
    def _require(self) -> None:
        if self.encoder is None:
            raise BackmapError("equivariant: the generator is not trained (run the train step first)")

    def _view_batch(self, batch: EnvironmentBatch) -> dict:
        meta = batch.meta or {}
        if "moltype" not in meta:
            raise BackmapError("equivariant: the environment batch carries no molecule type (meta)")
        key = self.tables.key(meta["moltype"], meta["bead"])
        U = len(self.tables.tables[key].atoms)
        if batch.target_atoms.shape[1] != U:
            raise BackmapError(f"equivariant places whole beads (unit = 'bead'); got units of "
                               f"{batch.target_atoms.shape[1]} atoms for a bead of {U}")
        lay = self.layout
        if _top(batch.interaction) >= lay["n_interactions"] or _top(batch.atom_types) >= lay["n_atom_types"]:
            raise BackmapError("equivariant: the environment has channels the model was not trained with")
        return {"keys": torch.full((batch.size,), key, dtype=torch.long), "atom_positions": batch.atom_positions,
                "atom_types": batch.atom_types, "atom_index": batch.atom_index, "atom_mask": batch.atom_mask,
                "interaction": batch.interaction, "bead_positions": batch.bead_positions,
                "bead_types": batch.bead_types, "bead_mask": batch.bead_mask, "target_atoms": batch.target_atoms,
                "target_mask": batch.target_mask, "target_types": batch.target_types,
                **self._previous_frame(batch.previous_positions, batch.previous_mask, batch.target_mask)}

    def propose(self, batch: EnvironmentBatch, n_candidates: int, rng: np.random.Generator) -> torch.Tensor:
        self._require()
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        with torch.no_grad(), torch_threads(self.params.threads):
            return self._sample(self._view_batch(batch), n_candidates, gen)

    def _sample(self, v: dict, K: int, gen: torch.Generator, with_log_prob: bool = False, raw: bool = False,
                reparameterized: bool = False):
        """(B, K, U, 3) candidates; with ``with_log_prob`` also the log density (B, K) of each draw
        as it was drawn (before the projection): the known answer :meth:`log_prob` must give.
        ``raw``: the internal-coordinate draws as they are (no recentring, no projection), whose
        density is exact. ``reparameterized``: the draws are differentiable in the networks'
        parameters (Gaussian angles and lengths directly, von Mises dihedrals implicitly), for
        training by reverse KL against a force field."""
        t = self.tables
        B = v["keys"].shape[0]
        U = v["target_atoms"].shape[1]
        ext, found, ext_types = t.external_positions(v["keys"], v["target_atoms"], v["atom_index"], v["atom_mask"],
                                                     v["atom_positions"], v["atom_types"])
        codes, slot, bond, rigid = t.choose(v["keys"], found)
        pool_types = self._pool_types(v, ext_types).repeat_interleave(K, 0)
        scalars, vectors = self._encode(v)
        near, near_types = self._near_beads(v)
        rep = lambda x: x.repeat_interleave(K, 0)
        scalars, vectors, codes, slot, bond, rigid, near, near_types = map(
            rep, (scalars, vectors, codes, slot, bond, rigid, near, near_types.flatten(1)))
        scalars = self._decoder_context(scalars, v)  # per candidate (B·K rows)
        pool = torch.cat([torch.zeros(B, t.U, 3), ext, t.virtual.expand(B, 3, 3)], 1).repeat_interleave(K, 0)
        prev = torch.zeros(B * K, 5)
        rows = torch.arange(B * K)
        logp = torch.zeros(B * K)
        order = t.order[v["keys"][0]].tolist()  # one table per batch at inference
        rank = t.rank[v["keys"][0]]
        ext_ok = found.repeat_interleave(K, 0)
        near_types = near_types.view(B * K, NEAR_BEADS, -1)
        for a in range(U):
            c = codes[:, a]
            p, g, d = pool[rows, c[:, 0]], pool[rows, c[:, 1]], pool[rows, c[:, 2]]
            known, known_ok = self._known(pool[:, :t.U + t.E], torch.cat([(rank < a).expand(B * K, -1), ext_ok], -1),
                                          v, K)
            feats = self._features(vectors, near, near_types, known, known_ok, d, g, p, pool_types)
            prev_ic = self._previous_ics(v, torch.full((B * K,), order[a], dtype=torch.long), d, g, p, K)
            if prev_ic is not None:
                feats = torch.cat([feats, prev_ic], -1)
            h = self.head.features(scalars, slot[:, a], prev, feats)
            r_ref = self.r_ref[slot[:, a]]
            refs = (self.theta_ref[slot[:, a]], self.theta_std[slot[:, a]], r_ref, self.bounded_ics)
            r, theta = ICDistribution(self.head.outputs(h, None), *refs).sample_angle(gen)
            dist = ICDistribution(self.head.outputs(h, theta), *refs)
            phi = dist.sample_dihedral(gen, reparameterized)
            r = torch.where(rigid[:, a], bond[:, a], r)
            placed = place(d, g, p, r, theta, phi)
            if reparameterized:  # out of place: earlier views of the pool are saved for the backward pass
                pool = pool.index_copy(1, torch.tensor([order[a]]), placed[:, None])
            else:
                pool[:, order[a]] = placed
            if with_log_prob:
                lp_a, lp_d, lp_r = dist.log_prob(r, theta, phi)
                free = (~rigid[:, a]).to(r.dtype)
                logp += lp_a + lp_d + (lp_r - 2 * torch.log(r)) * free - torch.log(torch.sin(theta))
            prev = torch.stack([torch.cos(theta), torch.sin(theta), torch.cos(phi), torch.sin(phi),
                                (r - r_ref) * 10], -1)
        if self.params.recentre and not raw:
            pool = self._recentre(pool, v["keys"][0].item(), codes[:, 0, 0], U)
        if self.params.project and not raw:
            pool = self._project(pool, v["keys"][0].item(), found.repeat_interleave(K, 0), U)
        out = pool[:, :U].reshape(B, K, U, 3)
        return (out, logp.view(B, K)) if with_log_prob else out

    def _recentre(self, pool: torch.Tensor, key: int, anchor_code: torch.Tensor, U: int) -> torch.Tensor:
        """Make the unit map onto its bead (the local origin) where its mapping lies wholly in it:
        rotate it about the placed atom its first atom is bonded to, the smallest rotation that
        points its mapped centre at the bead (bonds to that atom and within the unit unchanged);
        a unit built from virtual points only (or every unit, with ``recentre_by: shift``) is
        shifted instead; ``rotation+shift`` shifts the turned unit by what is left (its radial miss)."""
        w = torch.as_tensor(self.tables.tables[key].centre_weights, dtype=pool.dtype)
        if not bool(w.any()):
            return pool
        x = pool[:, :U]
        com = (w[None, :, None] * x).sum(1) / w.sum()
        rows = torch.arange(len(pool))
        anchor = pool[rows, anchor_code]
        virtual = anchor_code >= self.tables.U + self.tables.E  # no placed atom to turn about
        mode = self.params.recentre_by
        if mode == "shift":
            virtual = torch.ones_like(virtual)
        u, v = com - anchor, -anchor
        u_hat = u / u.norm(dim=-1, keepdim=True).clamp(min=1e-9)
        v_hat = v / v.norm(dim=-1, keepdim=True).clamp(min=1e-9)
        axis = torch.linalg.cross(u_hat, v_hat)
        sin, cos = axis.norm(dim=-1), (u_hat * v_hat).sum(-1)
        k = axis / sin[:, None].clamp(min=1e-9)
        kx = torch.zeros(len(pool), 3, 3, dtype=pool.dtype)
        kx[:, 0, 1], kx[:, 0, 2], kx[:, 1, 2] = -k[:, 2], k[:, 1], -k[:, 0]
        kx = kx - kx.transpose(1, 2)
        rot = torch.eye(3) + sin[:, None, None] * kx + (1 - cos)[:, None, None] * (kx @ kx)  # Rodrigues
        turned = anchor[:, None] + (x - anchor[:, None]) @ rot.transpose(1, 2)
        shifted = x - com[:, None]
        out = pool.clone()
        if mode == "rotation+shift":  # what the rotation left: the centre's radial miss
            turned = turned - ((w[None, :, None] * turned).sum(1) / w.sum())[:, None]
        out[:, :U] = torch.where(virtual[:, None, None], shifted, turned)
        return out

    def _project(self, pool: torch.Tensor, key: int, found: torch.Tensor, U: int) -> torch.Tensor:
        """Rigid bonds the tree left open (ring closures, second bonds to placed atoms) to their
        lengths, moving only the unit's atoms (SHAKE; placed atoms have infinite mass)."""
        table = self.tables.tables[key]
        if not len(table.closures):
            return pool
        ends = torch.as_tensor(table.closures)
        active = torch.ones(found.shape[0], len(ends), dtype=torch.bool)
        is_ext = ends[:, 1] >= U
        active[:, is_ext] = found[:, ends[is_ext, 1] - U]
        out = pool.clone()
        patterns, inverse = torch.unique(active, dim=0, return_inverse=True)
        for k, pattern in enumerate(patterns):
            solver = self.tables.projection(key, pattern.numpy())
            if solver is None:
                continue
            rows = torch.nonzero(inverse == k)[:, 0]
            x = pool[rows].double()
            y, ok = solver[0].positions(x, x)
            out[rows] = torch.where(ok[:, None, None], y.float(), pool[rows])
        return out

    @property
    def rigid_bonds(self) -> str:
        return self.params.constraints

    @property
    def projects_cg(self) -> bool:
        return self.params.project_cg

    def log_prob(self, batch: EnvironmentBatch, positions: torch.Tensor) -> torch.Tensor:
        """Log density (B, K) of local-frame placements: Σ over the unit's atoms of the head's
        densities of their angles, dihedrals and non-rigid bond lengths, minus log(r² sin θ) of
        the free coordinates (the Cartesian Jacobian; a rigid bond contributes sin θ only)."""
        self._require()
        v = self._view_batch(batch)
        B, K, U = positions.shape[:3]
        rep = repeat_rows(v, K)
        rep["targets"] = positions.reshape(B * K, U, 3).float()
        with torch.no_grad(), torch_threads(self.params.threads):
            return self._log_density(rep).view(B, K)

    def _log_density(self, v: dict) -> torch.Tensor:
        """Log density (rows,) of the placements ``v["targets"]`` under the head (see :meth:`log_prob`)."""
        dist, (r, theta, phi), rigid = self._teacher_pass(v)
        lp_a, lp_d, lp_r = dist.log_prob(r, theta, phi)
        free = (~rigid).to(lp_a.dtype)
        jac = torch.log(torch.sin(theta).clamp(min=1e-6)) + 2 * torch.log(r.clamp(min=1e-6)) * free
        return (lp_a + lp_d + lp_r * free - jac).sum(-1)

    # ------------------------------------------------------------------ transfer
    def adapt(self, cg_topology, plans) -> dict[str, Any]:
        """Unit tables for molecule types the model was not trained on (chemical transfer). Every
        row's chemistry signature takes the slot trained for it, or, where none was, a new slot
        whose embedding, reference angle and distance are the mean of the trained slots matching
        it at the first level of :func:`coarser_signatures` that has any."""
        self._require()
        needed = {(cb.block.moltype.name, unit.bead) for cb in cg_topology.blocks
                  for unit in plans[cb.block.moltype.name].units}
        if needed <= set(self.tables.index):
            return {}
        fresh = [t for t in system_tables(cg_topology, plans, self.params.constraints)
                 if (t.moltype, t.bead) in needed - set(self.tables.index)]
        n_trained = len(self.theta_ref) if self.trained_slots is None else self.trained_slots
        self.trained_slots = n_trained
        vocabulary = list(self.tables.signatures)
        slot_of = {sig: i for i, sig in enumerate(vocabulary)}
        by_level: list[dict[str, list[int]]] = [{} for _ in COARSER_LEVELS]
        for i, sig in enumerate(vocabulary[:n_trained]):
            for level, key in enumerate(coarser_signatures(sig)):
                by_level[level].setdefault(key, []).append(i)
        sources: list[list[int]] = []
        # rows per outcome: a trained slot, one made earlier in this call, or a coarser level
        matched = dict.fromkeys(("exact", "earlier", *COARSER_LEVELS, "none"), 0)
        for t in fresh:
            for sig in (str(x) for x in t.signature.ravel() if x):
                if sig in slot_of:
                    matched["exact" if slot_of[sig] < n_trained else "earlier"] += 1
                    continue
                level, ids = next(((COARSER_LEVELS[k], by_level[k][key]) for k, key in enumerate(coarser_signatures(sig))
                                   if key in by_level[k]), ("none", list(range(n_trained))))
                matched[level] += 1
                slot_of[sig] = len(vocabulary)
                vocabulary.append(sig)
                sources.append(ids)
        self.tables = Tables(self.tables.tables + fresh, self.tables.U, self.tables.E, vocabulary)
        if sources:
            with torch.no_grad():
                def extend(x: torch.Tensor) -> torch.Tensor:
                    return torch.cat([x, torch.stack([x[ids].mean(0) for ids in sources])])

                self.head.slot = torch.nn.Embedding.from_pretrained(extend(self.head.slot.weight), freeze=True)
                self.theta_ref, self.r_ref, self.theta_std = map(extend, (self.theta_ref, self.r_ref, self.theta_std))
        return {"molecule types": sorted({t.moltype for t in fresh}), "units": len(fresh),
                "chemistry rows": {k: v for k, v in matched.items() if v}}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        self._require()
        return {"format": STATE_FORMAT, "layout": dict(self.layout), "bounded_ics": self.bounded_ics,
                "tables": [t.to_json() for t in self.tables.tables],
                "theta_ref": self.theta_ref.clone(), "theta_std": self.theta_std.clone(), "r_ref": self.r_ref.clone(),
                "encoder": {k: v.clone() for k, v in self.encoder.state_dict().items()},
                "head": {k: v.clone() for k, v in self.head.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != STATE_FORMAT:
            raise BackmapError(f"equivariant: unknown state format {state.get('format')!r}")
        layout = state["layout"]
        self.tables = Tables([UnitTable.from_json(t) for t in state["tables"]], layout.get("unit_slots"),
                             layout.get("external_slots"))
        self.bounded_ics = bool(state.get("bounded_ics", False))  # absent in models made before it existed
        self._build({k: int(v) for k, v in state["layout"].items()})
        self.theta_ref = torch.as_tensor(state["theta_ref"])
        self.r_ref = torch.as_tensor(state["r_ref"])
        self.theta_std = torch.as_tensor(state["theta_std"])
        self.encoder.load_state_dict(state["encoder"])
        self.head.load_state_dict(state["head"])
        self.encoder.eval()
        self.head.eval()


def repeat_rows(v: dict, K: int) -> dict:
    """Every tensor of a batch view (and of its tuples: the encoding) with each row repeated K
    times (K candidates per unit)."""
    def rep(x):
        if torch.is_tensor(x):
            return x.repeat_interleave(K, 0)
        return tuple(rep(y) for y in x) if isinstance(x, tuple) else x

    return {k: rep(x) for k, x in v.items()}


def _top(x: torch.Tensor) -> int:
    return int(x.max()) if x.numel() else -1


#: what :func:`coarser_signatures` drops, level by level
COARSER_LEVELS = ("reference kinds", "bead type", "bead type and reference kinds", "dihedral atom's type",
                  "angle atom's type", "all references")


def coarser_signatures(signature: str) -> list[str]:
    """Coarser forms of a row's chemistry signature (``bead type|atom type|parent|angle atom|dihedral
    atom``, each reference ``unit:TYPE``, ``ext:TYPE`` or a virtual point), one per
    :data:`COARSER_LEVELS`: for a molecule type the model was not trained on, its rows take what was
    learned for the most specific form that occurs in training."""
    bead, atom, *refs = signature.split("|")
    plain = [r.split(":")[-1] for r in refs]

    def shape(r: str) -> str:  # a real atom or which virtual point
        return r if r in VIRTUAL else "atom"

    return [f"{bead}|{atom}|" + "|".join(plain), f"*|{atom}|" + "|".join(refs), f"*|{atom}|" + "|".join(plain),
            f"*|{atom}|{plain[0]}|{plain[1]}|{shape(plain[2])}", f"*|{atom}|{plain[0]}|{shape(plain[1])}|{shape(plain[2])}",
            f"*|{atom}"]
