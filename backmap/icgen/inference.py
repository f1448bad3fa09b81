"""Inference of an internal-coordinate generator: proposals, exact log-densities, chemical
transfer to molecule types it was not trained on, and its saved state (a mixin of
:class:`backmap.icgen.generator.InternalCoordinateGenerator`, kept apart from its training)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from backmap.devices import host_random, to_host
from backmap.errors import BackmapError
from backmap.icgen.head import (DRAW_CLAMP, LOG_WIDTH_CLAMP, LOG_WIDTH_OFFSET, MEAN_REACH, N_ANGLE, WIDTH_FLOOR,
                               AtomwiseFirstLayer, ICDistribution)
from backmap.icgen.nerf import frame, place_in_frame
from backmap.icgen.tables import VIRTUAL, Tables, UnitTable, system_tables
from backmap.sampling.environment import EnvironmentBatch
from backmap.threads import torch_threads

STATE_FORMAT = 1
#: neighbour beads the head sees explicitly (nearest first)
NEAR_BEADS = 4


class ICInference:
    """Proposing, scoring, adapting and saving: the half of the generator that runs after training."""

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
        keys = torch.full((batch.size,), key, dtype=torch.long)
        if meta.get("beads") is not None:  # steps merged (batch_key): each row's own table, all built alike
            keys = torch.as_tensor([self.tables.key(meta["moltype"], b) for b in meta["beads"]], dtype=torch.long)
            if len(keys) != batch.size or len({self.tables.structure(int(k)) for k in keys.unique()}) > 1:
                raise BackmapError("equivariant: a merged batch's beads are not one per row of tables built alike")
        if batch.target_atoms.shape[1] != U:
            raise BackmapError(f"equivariant places whole beads (unit = 'bead'); got units of "
                               f"{batch.target_atoms.shape[1]} atoms for a bead of {U}")
        lay = self.layout
        if _top(batch.interaction) >= lay["n_interactions"] or _top(batch.atom_types) >= lay["n_atom_types"]:
            raise BackmapError("equivariant: the environment has channels the model was not trained with")
        return {"keys": keys, "atom_positions": batch.atom_positions,
                "atom_types": batch.atom_types, "atom_index": batch.atom_index, "atom_mask": batch.atom_mask,
                "interaction": batch.interaction, "bead_positions": batch.bead_positions,
                "bead_types": batch.bead_types, "bead_mask": batch.bead_mask, "target_atoms": batch.target_atoms,
                "target_mask": batch.target_mask, "target_types": batch.target_types,
                **self._previous_frame(batch.previous_positions, batch.previous_mask, batch.target_mask)}

    def batch_key(self, meta: dict) -> tuple | None:
        """Steps whose beads' tables are built alike (:meth:`Tables.structure`) share a key."""
        if self.tables is None or (meta["moltype"], int(meta["bead"])) not in self.tables.index:
            return None
        return ("icgen", meta["moltype"], self.tables.structure(self.tables.key(meta["moltype"], meta["bead"])))

    def propose(self, batch: EnvironmentBatch, n_candidates: int, rng: np.random.Generator) -> torch.Tensor:
        self._require()
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        # inference mode: no version counters or views tracked (≈ 7 % of a proposal's time on sPS);
        # what it caches for later calls is made outside it (Tables.projection)
        with torch.inference_mode(), torch_threads(self.params.threads):
            drawn = self._sample(self._view_batch(batch), n_candidates, gen)
        return drawn.clone()  # a plain tensor: callers may change it in place

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
        logp = torch.zeros(B * K)
        ext_ok = found.repeat_interleave(K, 0)
        near_types = near_types.view(B * K, NEAR_BEADS, -1)
        temporal = "previous_frame" in v
        if not (temporal or self.params.transferable or reparameterized or torch.is_grad_enabled()):
            pool = self._draw_atomwise(pool, v, K, U, codes, slot, bond, rigid, scalars, vectors, near, near_types,
                                       ext_ok, gen, logp if with_log_prob else None)
        else:
            pool = self._draw_by_features(pool, v, K, U, codes, slot, bond, rigid, scalars, vectors, near, near_types,
                                          ext_ok, pool_types, gen, logp if with_log_prob else None, reparameterized)
        if self.params.recentre and not raw:
            pool = self._recentre(pool, v["keys"][0].item(), codes[:, 0, 0], U)
        if self.params.project and not raw:
            pool = self._project(pool, v["keys"][0].item(), found, U, K)
        out = pool[:, :U].reshape(B, K, U, 3)
        return (out, logp.view(B, K)) if with_log_prob else out

    def _draw_by_features(self, pool, v, K, U, codes, slot, bond, rigid, scalars, vectors, near, near_types, ext_ok,
                          pool_types, gen, logp, reparameterized):
        """The unit's atoms drawn one by one into ``pool`` (rows, slots, 3) through
        :meth:`_features` (the training-time path: gradients, trajectory mode, chemical transfer);
        ``logp`` (rows,), if given, gets each draw's log density added."""
        t = self.tables
        rows = torch.arange(len(pool))
        order = t.order[v["keys"][0]].tolist()  # one table per batch at inference
        rank = t.rank[v["keys"][0]]
        head_features = self.head.unit_features(scalars)
        # per atom a: which pool points are known (unit atoms built before it, external atoms found)
        known_ok_by_atom = torch.cat([(rank[None, :] < torch.arange(U)[:, None])[:, None].expand(-1, len(pool), -1),
                                      ext_ok[None].expand(U, -1, -1)], -1)
        prev = torch.zeros(len(pool), 5)
        for a in range(U):
            p, g, d = pool[rows[:, None], codes[:, a]].unbind(1)
            axes = frame(d, g, p)
            known, known_ok = self._known(pool[:, :t.U + t.E], known_ok_by_atom[a], v, K)
            feats = self._features(vectors, near, near_types, known, known_ok, d, g, p, pool_types, axes=axes)
            if "previous_frame" in v:
                prev_ic = self._previous_ics(v, torch.full((len(pool),), order[a], dtype=torch.long), d, g, p, K)
                feats = torch.cat([feats, prev_ic], -1)
            placed, prev = self._draw_atom(head_features(slot[:, a], prev, feats), axes, p, slot[:, a], bond[:, a],
                                           rigid[:, a], gen, logp, reparameterized)
            if reparameterized:  # out of place: earlier views of the pool are saved for the backward pass
                pool = pool.index_copy(1, torch.tensor([order[a]]), placed[:, None])
            else:
                pool[:, order[a]] = placed
        return pool

    def _draw_atomwise(self, pool, v, K, U, codes, slot, bond, rigid, scalars, vectors, near, near_types, ext_ok,
                       gen, logp):
        """:meth:`_draw_by_features` for inference without gradients, faster: the head's first layer
        split by what changes when (:class:`AtomwiseFirstLayer`), the unit's atoms kept in the order
        they are built (the atoms known to the a-th are the first a: a slice), and the reference
        points gathered by one ``index_select`` where every row uses the same ones (a whole batch
        of one bead type, the usual case). The same numbers up to rounding."""
        t = self.tables
        R = len(pool)
        key = v["keys"][0]
        order = t.order[key].tolist()
        rank = t.rank[key]
        first = self._atomwise_first_layer(vectors.shape[1])
        unit_share = first.unit_share(scalars, near_types.view(R, NEAR_BEADS, -1), ext_ok)
        fast = None if self.bounded_ics or N_ANGLE != 1 else (first, *self._angle_tables())
        alike = K > 1 and not self._context_per_candidate()
        # the points every atom of a unit sees, coordinate-major (units, 3, P) — encoder vectors, the
        # lab origin and z, x axes, the near beads, the external slots; the same in a unit's K rows
        # (all repeated per candidate), so taken in once per unit: ``shift`` marks the points taken
        # relative to the atom's parent, ``seen`` hides external atoms not found
        n_fixed = first.n_fixed
        B = R // K
        vectors, near = vectors[::K], near[::K]
        fixed_points = torch.cat([vectors.transpose(1, 2), torch.zeros(B, 3, 1), torch.eye(3)[:, [2, 0]].expand(B, 3, 2),
                                  near.transpose(1, 2), pool[::K, t.U:t.U + t.E].transpose(1, 2)], 2)
        shift = torch.ones(n_fixed + t.E)
        shift[:n_fixed - NEAR_BEADS] = 0.0
        shift[n_fixed - NEAR_BEADS - 3] = 1.0  # the lab origin
        seen = torch.cat([torch.ones(B, n_fixed), ext_ok[::K].to(pool.dtype)], 1)
        fixed = first.fixed_share(fixed_points * seen[:, None], seen * shift)
        # the pool with the unit's slots in build order: a code q < U becomes rank[q]
        unit = codes < t.U
        codes = torch.where(unit, rank[codes.clamp(max=t.U - 1)], codes)
        same = bool((codes == codes[:1]).all()) and bool((slot == slot[:1]).all())
        pool_t = pool.transpose(1, 2)  # a view of the pool: it follows the atoms placed
        rows = torch.arange(R)
        prev = torch.zeros(R, 5)
        for a in range(U):
            if same:
                p, g, d = pool.index_select(1, codes[0, a]).unbind(1)
            else:
                p, g, d = pool[rows[:, None], codes[:, a]].unbind(1)
            axes = frame(d, g, p)
            # the first atom sees the same things in all K candidates of a unit: its head runs once per unit
            sub = slice(None, None, K) if a == 0 and alike else slice(None)
            points = pool_t[sub, :, :a] - p[sub, :, None]  # the unit's atoms placed so far
            h = first.features(unit_share[sub], int(slot[0, a]) if same else slot[sub, a], prev[sub], points, axes[sub],
                               tuple(order[:a]), fixed, p[sub])
            pool[:, a], prev = self._draw_atom(h, axes, p, slot[:, a], bond[:, a], rigid[:, a], gen, logp,
                                               repeat=K if a == 0 and alike else 1, fast=fast)
        out = pool.clone()
        out[:, :U] = pool[:, rank[:U]]  # back to slot order
        return out

    def _draw_atom(self, h, axes, p, slot, bond, rigid, gen, logp=None, reparameterized=False, repeat: int = 1,
                   fast: tuple | None = None):
        """One atom drawn from the head's features ``h``: its place (rows, 3) in the frame ``axes``
        about its parent ``p``, and its ICs as the next atom's "previous" input (rows, 5).
        ``repeat``: ``h`` holds one row per ``repeat`` rows of the rest (candidates that see alike).
        ``fast``: (the :class:`AtomwiseFirstLayer`, :meth:`_angle_tables`) — no density, no gradient:
        the angle's and length's parameters in one pass over both, sines and cosines taken once."""
        if fast is not None and logp is None and not reparameterized:
            return self._draw_atom_fast(h, axes, p, slot, bond, rigid, gen, repeat, *fast)
        r_ref = self.r_ref[slot]
        refs = (self.theta_ref[slot], self.theta_std[slot], r_ref, self.bounded_ics)
        angle, share = self.head.angle_parts(h)
        if repeat > 1:
            angle, share = angle.repeat_interleave(repeat, 0), share.repeat_interleave(repeat, 0)
        drawn = self._spread(ICDistribution.of_parts(angle, None, *refs))
        r, theta = drawn.sample_angle(gen)
        dist = ICDistribution.of_parts(None, self.head.dihedral_given(share, theta), *refs)
        phi = dist.sample_dihedral(gen, reparameterized)
        r = torch.where(rigid, bond, r)
        if logp is not None:  # the angle's and length's densities from the distribution they were drawn from
            dist.a_logit, dist.a_mean, dist.a_sigma = drawn.a_logit, drawn.a_mean, drawn.a_sigma
            dist.r_mean, dist.r_sigma = drawn.r_mean, drawn.r_sigma
            lp_a, lp_d, lp_r = dist.log_prob(r, theta, phi)
            free = (~rigid).to(r.dtype)
            logp += lp_a + lp_d + (lp_r - 2 * torch.log(r)) * free - torch.log(torch.sin(theta))
        prev = torch.stack([torch.cos(theta), torch.sin(theta), torch.cos(phi), torch.sin(phi), (r - r_ref) * 10], -1)
        return place_in_frame(axes, p, r, theta, phi), prev

    def _context_per_candidate(self) -> bool:
        """Whether the head's context may differ between a unit's candidates: unless the
        ``_decoder_context`` in use is marked ``same_for_every_candidate`` (the base class's; a
        subclass's, e.g. vae's latent vector per candidate, is not), no atom is drawn once for all
        of them."""
        return not getattr(type(self)._decoder_context, "same_for_every_candidate", False)

    def _angle_tables(self) -> tuple[torch.Tensor, ...]:
        """What :meth:`_draw_atom_fast` reads for (θ, r) side by side (the head's parametrisation,
        as :class:`ICDistribution` reads it): per slot the references and the widths' scales
        (θ_std, 1) times ``angle_spread``; the widths' floors times it; the means' reaches; the
        log-widths' offsets and clamps; the draws' clamps."""
        scale = self.params.angle_spread
        ref = torch.stack([self.theta_ref, self.r_ref], -1)
        std = torch.stack([self.theta_std, torch.ones_like(self.theta_std)], -1) * scale
        (low_t, high_t), (low_r, high_r) = LOG_WIDTH_CLAMP
        pairs = ([f * scale for f in WIDTH_FLOOR], MEAN_REACH, LOG_WIDTH_OFFSET, [low_t, low_r], [high_t, high_r],
                 [DRAW_CLAMP[0][0], DRAW_CLAMP[1][0]], [DRAW_CLAMP[0][1], DRAW_CLAMP[1][1]])
        return (ref, std, *(torch.tensor(x, dtype=ref.dtype) for x in pairs))

    def _draw_atom_fast(self, h, axes, p, slot, bond, rigid, gen, repeat, first, ref, std, floor, mean_scale,
                        offset, low, high, ic_low, ic_high):
        """:meth:`_draw_atom` without density or gradient, in fewer operations: the same random
        numbers, in the same order, to the same laws (up to rounding)."""
        angle, share = first.angle_parts(h)
        if repeat > 1:
            angle, share = angle.repeat_interleave(repeat, 0), share.repeat_interleave(repeat, 0)
        # the head's angle outputs are (logit, θ mean, θ log-width, r mean, r log-width): one component
        mean = ref[slot] + torch.tanh(angle[:, 1::2]) * mean_scale  # (rows, 2): θ, r
        width = torch.exp((angle[:, 2::2] + offset).clamp(low, high)) * std[slot] + floor
        rows = (len(mean),)
        noise = torch.stack([host_random(torch.randn, rows, generator=gen), host_random(torch.randn, rows, generator=gen)], 1)
        ic = torch.addcmul(mean, width, noise).clamp_(ic_low, ic_high)
        theta, r = ic.unbind(1)
        cos_t, sin_t = torch.cos(theta), torch.sin(theta)
        phi = ICDistribution.of_parts(None, self.head.dihedral_given(share, theta, (cos_t, sin_t)), None, None, None
                                      ).sample_dihedral(gen)
        r = torch.where(rigid, bond, r)
        cos_p, sin_p = torch.cos(phi), torch.sin(phi)
        local = torch.stack([-cos_t, sin_t * cos_p, sin_t * sin_p], 1)  # in the frame (bc, m, n)
        placed = torch.addcmul(p, r[:, None], (local[:, :, None] * axes).sum(1))
        return placed, torch.stack([cos_t, sin_t, cos_p, sin_p, (r - ref[slot, 1]) * 10], -1)

    def _atomwise_first_layer(self, n_vectors: int) -> AtomwiseFirstLayer:
        """The head's first layer split for drawing atom by atom (made again whenever its weights change)."""
        state = (id(self.head), n_vectors, self.tables.U, self.tables.E,
                 *((id(x), x._version) for x in self.head.parameters()))
        kept = getattr(self, "_atomwise", None)
        if kept is None or kept[0] != state:  # new weights (loaded, adapted, trained in place): split again
            kept = (state, AtomwiseFirstLayer(self.head, n_vectors, NEAR_BEADS, self.layout["n_bead_types"],
                                              self.tables.U, self.tables.E))
            self._atomwise = kept
        return kept[1]

    def _spread(self, dist: ICDistribution) -> ICDistribution:
        """``dist`` with its angles' and bond lengths' spread times ``angle_spread``."""
        scale = self.params.angle_spread
        if scale != 1.0:
            dist.a_sigma, dist.r_sigma = dist.a_sigma * scale, dist.r_sigma * scale
        return dist

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

    def _project(self, pool: torch.Tensor, key: int, found: torch.Tensor, U: int, K: int = 1) -> torch.Tensor:
        """Rigid bonds the tree left open (ring closures, second bonds to placed atoms) to their
        lengths, moving only the unit's atoms (SHAKE; placed atoms have infinite mass). ``pool``
        holds K rows per row of ``found`` (the candidates of one environment share its pattern)."""
        table = self.tables.tables[key]
        if not len(table.closures):
            return pool
        ends = torch.as_tensor(table.closures)
        active = torch.ones(found.shape[0], len(ends), dtype=torch.bool)
        is_ext = ends[:, 1] >= U
        active[:, is_ext] = found[:, ends[is_ext, 1] - U]
        out = pool.clone()
        patterns, inverse = torch.unique(active, dim=0, return_inverse=True)  # on B rows, not B·K: a row sort
        inverse = inverse.repeat_interleave(K)
        for k, pattern in enumerate(patterns):
            solver = self.tables.projection(key, to_host(pattern))
            if solver is None:
                continue
            rows = torch.nonzero(inverse == k)[:, 0]
            constraints, points = solver
            x = pool[rows[:, None], points].double()
            y, ok = constraints.project(x)
            out[rows[:, None], points] = torch.where(ok[:, None, None], y.float(), x.float())
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
