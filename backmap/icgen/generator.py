"""The internal-coordinate generator, the network of the ``equivariant`` and ``vae`` plugins: an
SO(3)-equivariant e3nn encoder of the local environment and an autoregressive internal-coordinate
head, one bead per call (docs/equivariant.md). Its inference half is :mod:`backmap.icgen.inference`.

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

from backmap.errors import BackmapError
from backmap.training.loop import NetworkGenerator, TrainingBatch, TrainingLoop
from backmap.threads import torch_threads
from backmap.icgen.encoder import Encoder
from backmap.icgen.head import Head, ICDistribution
from backmap.icgen.nerf import frame, internal
from backmap.icgen.params import EquivariantParams
from backmap.icgen.inference import NEAR_BEADS, ICInference
from backmap.icgen.tables import Tables, bead_keys, system_tables

#: radii (nm) of the Gaussian shells in which the head counts known atoms when its features are keyed
#: by chemistry (``transferable``): bonded, 1-3, 1-4 and farther neighbours of the atom's parent
KNOWN_SHELLS = torch.tensor([0.0, 0.11, 0.15, 0.22, 0.26, 0.32, 0.4, 0.5])
SHELL_WIDTH = 0.03
#: iterations of learning-rate warm-up
WARMUP = 100
#: trajectory mode: features of an atom's previous-frame position in its current NeRF frame
N_PREVIOUS_IC = 6


class InternalCoordinateGenerator(ICInference, NetworkGenerator):
    """An SO(3)-equivariant e3nn encoder of a unit's environment and an autoregressive
    internal-coordinate head: the network the ``equivariant`` and ``vae`` generator plugins are
    built on (they name it and add to it)."""

    Params = EquivariantParams
    unit = "bead"
    #: read at each proposal only: how a drawn unit is made to meet its bead, and the SHAKE closure
    inference_params = frozenset({"recentre", "recentre_by", "project", "angle_spread"})
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

    def at_temperature(self, temperature: float, trained_at: float | None) -> dict:
        """Bond angles (and free bond lengths) drawn √(T/T₀) as wide as trained: their terms are
        harmonic, so their spread goes as √T (sPS at 330 K from a 568 K model: LJ per chain JSD 0.22 →
        0.14, docs/temperatures.md). Dihedrals, which are not harmonic, are left as trained."""
        if not trained_at:
            return {}
        return {"angle_spread": round(math.sqrt(temperature / trained_at), 4)}

    def _extra_context_width(self) -> int:
        """Inputs the head takes beside the encoder's scalars (a subclass's latent variables)."""
        return 0

    def _decoder_context(self, scalars: torch.Tensor, v: dict) -> torch.Tensor:
        """What the head is conditioned on per unit (rows of ``scalars``): here the encoder's scalars."""
        return scalars

    _decoder_context.same_for_every_candidate = True  # a subclass's own is not (ICInference._context_per_candidate)

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

    def _features(self, vectors, near, near_types, known, known_ok, d, g, p, known_types=None, axes=None):
        """What the head sees of the environment, from each atom's own NeRF frame (invariant
        numbers that carry directions): the encoder's vectors, the local frame's origin and axes,
        the nearest CG beads, and every point already known — the unit's atoms built before this
        one and the placed atoms of other beads it may be built from (zero where not known). The
        last is what lets a CH₂'s second hydrogen go to the free tetrahedral site rather than a
        mirror-ambiguous ±120°. ``axes``: ``frame(d, g, p)``, if already computed."""
        ft = (frame(d, g, p) if axes is None else axes).transpose(-1, -2)
        lab = torch.eye(3)[[2, 0]].expand(*p.shape[:-1], 2, 3)
        nv, nn = vectors.shape[-2], near.shape[-2]
        # every point and direction into the atom's frame by one batched product
        turned = torch.cat([vectors, (-p)[..., None, :], lab, near - p[..., None, :], known - p[..., None, :]], -2) @ ft
        fixed = turned[..., nv:nv + 3 + nn, :]
        seen = turned[..., nv + 3 + nn:, :] * known_ok[..., None]
        if self.params.transferable:  # the known atoms by type and distance: no slot order (chemical transfer)
            return torch.cat([turned[..., :nv, :].flatten(-2), fixed.flatten(-2), near_types.flatten(-2),
                              self._known_shells(seen, known_ok, known_types)], -1)
        return torch.cat([turned[..., :nv, :].flatten(-2), fixed.flatten(-2), near_types.flatten(-2), seen.flatten(-2),
                          known_ok.to(p.dtype)], -1)

    def _known_shells(self, seen: torch.Tensor, ok: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        """The known atoms as smooth per-type radial shells around the atom's parent: for each atom
        type and each of :data:`KNOWN_SHELLS` Gaussian shells, the summed weight and weighted unit
        vectors (in the NeRF frame) of the known atoms of that type in it. What the slot-ordered
        view says, but the same for any molecule of the same chemistry, and smooth and invariant
        (a sorted list of nearest atoms is not: equal bond lengths tie and swap under rotation)."""
        r = seen.norm(dim=-1, keepdim=True).clamp(min=1e-6)
        # the exponent cut at −80 (e⁻⁸⁰ ≈ 2·10⁻³⁵): exp of an underflowing argument takes a slow path
        weight = torch.exp((-0.5 * ((r - KNOWN_SHELLS) / SHELL_WIDTH) ** 2).clamp(min=-80.0)) * ok[..., None]  # (..., P, S)
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
        # angle_spread as the draws have it (1 in training: an inference parameter), so log_prob is their density
        return self._spread(ICDistribution(out, self.theta_ref[slot], self.theta_std[slot], r_ref, self.bounded_ics)), \
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

    def train_step(self, batch: TrainingBatch, loop: TrainingLoop) -> dict[str, float]:
        p = self.params
        scale = p.lr_end_fraction + (1 - p.lr_end_fraction) * 0.5 * (1 + math.cos(math.pi * batch.fraction))
        scale *= min(1.0, (batch.iteration + 1) / WARMUP)  # a linear warm-up: the first steps sharpen σ too fast
        for group in self.optimizer.param_groups:
            group["lr"] = p.lr * scale
        v = self._view_sequences(batch.sequences)
        if p.mirror_augment:  # mirror half of the batch: y → −y in the local frame (a right-handed frame stays one)
            flip = torch.as_tensor(loop.local(loop.np_rng.random(len(batch)) < 0.5))
            sign = torch.where(flip, -1.0, 1.0)[:, None]
            for k in ("atom_positions", "bead_positions", "targets", "previous_frame"):
                if k not in v:
                    continue
                v[k] = v[k].clone()
                v[k][..., 1] *= sign
        if "previous_frame" in v and p.previous_dropout > 0:  # some frames without one: the first frame of a trajectory
            drop = torch.as_tensor(loop.local(loop.np_rng.random(len(batch)) < p.previous_dropout))
            v["previous_frame_ok"] = v["previous_frame_ok"] & ~drop[:, None]
        loss, stats = self._training_loss(v, batch, loop)
        loop.optimizer_step(self.optimizer, loss, float(v["target_mask"].sum()), clip=10.0)  # a mean per atom
        return stats

    def _training_loss(self, v: dict, batch: TrainingBatch, loop: TrainingLoop) -> tuple[torch.Tensor, dict[str, float]]:
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
