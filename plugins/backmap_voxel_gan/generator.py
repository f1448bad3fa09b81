"""The ``voxel_gan`` generator plugin: DeepBackmap's voxel-CNN conditional WGAN-GP (thesis ch. 4–5).

A :class:`backmap.NetworkGenerator`: the core builds the teacher-forced training sequences from the
environment spec and runs the loop (batches, regularizers, log, checkpoints); this plugin supplies
the networks and one iteration — ``n_critic`` critic steps on random batches, then a generator step
with the recipe's regularizers. ``propose`` serves the core sampler: each of the K candidates of a
unit sees its environment rotated about the local z axis by a random angle and gets its own noise
(DBM 5.1.4); the selector plugin then picks one (lowest energy by default).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from backmap.api import BackmapError, NetworkGenerator
from backmap.api.io import host_random, on_device, torch_threads
from backmap.api.sampling import EnvironmentBatch
from backmap.api.training import BeadSequences, TrainingBatch, TrainingLoop
from backmap_voxel_gan.features import ChannelLayout, compact, rotation_z
from backmap_voxel_gan.model import VoxelGANModel, rotate_batch
from backmap_voxel_gan.networks import flops_per_call
from backmap_voxel_gan.params import VoxelGANParams

STATE_FORMAT = 2
#: candidate placements per network call at most: bounds memory, and 128–256 run ≈ 1.5× faster than 1024 (cache)
CHUNK = 256


class VoxelGAN(NetworkGenerator):
    name = "voxel_gan"
    summary = "voxel-CNN conditional WGAN-GP placing one atom at a time (DeepBackmap, thesis ch. 4-5)"
    Params = VoxelGANParams
    unit = "atom"
    progress_columns = ("wasserstein", "critic_loss", "generator_loss", "gen_bond", "gen_lj")

    def __init__(self, params=None, environment=None):
        super().__init__(params, environment)
        self.model: VoxelGANModel | None = None

    # ------------------------------------------------------------------ training
    def training_contexts(self) -> tuple[str, ...]:
        return ("forward", "gibbs") if self.params.context == "mixed" else (self.params.context,)

    def setup(self, data, seed: int) -> None:
        self.setup_layout(ChannelLayout(data.channels.n_atom_types, data.channels.n_interactions,
                                        len(data.channels.bead_types)), seed)

    def setup_layout(self, layout: ChannelLayout, seed: int = 0) -> None:
        """Fresh networks and optimizers for a channel layout, initialized from ``seed``."""
        p = self.params
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.model = VoxelGANModel(layout, p)
        self.opt_g = torch.optim.Adam(self.model.generator.parameters(), lr=p.lr_generator, betas=p.betas)
        self.opt_c = torch.optim.Adam(self.model.critic.parameters(), lr=p.lr_critic, betas=p.betas)

    def fit(self, data, context) -> dict[str, Any]:
        with torch_threads(self.params.threads):
            summary = super().fit(data, context)
        summary["generator MFLOP per placement"] = round(self.flops() / 1e6, 1)
        return summary

    def _rotated(self, batch: TrainingBatch, loop: TrainingLoop) -> BeadSequences:
        """The batch's sequences rotated about the local z axis (augmentation)."""
        angles = loop.np_rng.uniform(0, 2 * np.pi, len(batch)) if self.params.rotate else np.zeros(len(batch))
        return rotate_batch(batch.sequences, torch.as_tensor(angles, dtype=torch.float32))

    def _noise(self, seqs: BeadSequences, loop: TrainingLoop) -> torch.Tensor:
        S, T = seqs.target_mask.shape
        return host_random(torch.randn, S, T, self.model.noise_dim, generator=loop.torch_rng)

    def train_step(self, batch: TrainingBatch, loop: TrainingLoop) -> dict[str, float]:
        p, model = self.params, self._require()
        scale = 1.0 - (1.0 - p.lr_end_fraction) * batch.fraction  # linear decay to lr_end_fraction
        for opt, lr in ((self.opt_g, p.lr_generator), (self.opt_c, p.lr_critic)):
            for group in opt.param_groups:
                group["lr"] = lr * scale
        for _ in range(p.n_critic):
            seqs = self._rotated(loop.draw(), loop)
            with torch.no_grad():
                fake = model.generate(seqs, self._noise(seqs, loop))
            loss, stats = model.critic_loss(seqs, fake, p.gp_weight, loop.torch_rng, p.critic_fraction)
            loop.optimizer_step(self.opt_c, loss)
            loop.record(stats)
        seqs = self._rotated(batch, loop)
        fake = model.generate(seqs, self._noise(seqs, loop), unroll=p.unroll)
        adversarial = model.generator_loss(seqs, fake)
        regularization, stats = loop.regularize(replace(batch, sequences=seqs), fake.coords, p.regularizer_samples)
        loop.optimizer_step(self.opt_g, adversarial + regularization)
        return {"generator_loss": float(adversarial.detach()), **stats}

    def training_state(self) -> dict[str, Any]:
        m = self._require()
        return {"generator": m.generator.state_dict(), "critic": m.critic.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_c": self.opt_c.state_dict()}

    def load_training_state(self, state: dict[str, Any]) -> None:
        m = self._require()
        m.generator.load_state_dict(state["generator"])
        m.critic.load_state_dict(state["critic"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_c.load_state_dict(state["opt_c"])

    def flops(self) -> int:
        """FLOPs of one generator call (one candidate placement)."""
        m = self._require()
        n, lay = self.params.grid, m.layout
        with on_device(self.device):  # the probe's inputs where the network is
            return flops_per_call(m.generator, torch.zeros(1, lay.env_channels, n, n, n),
                                  torch.zeros(1, self.params.noise_dim), torch.zeros(1, lay.n_atom_types))

    # ------------------------------------------------------------------ inference
    def _require(self) -> VoxelGANModel:
        if self.model is None:
            raise BackmapError("voxel_gan: the generator is not trained (run the train step first)")
        return self.model

    def propose(self, batch: EnvironmentBatch, n_candidates: int, rng: np.random.Generator) -> torch.Tensor:
        model = self._require()
        lay = model.layout
        if batch.target_types.shape[1] != 1:
            raise BackmapError("voxel_gan places one atom per unit (plans with unit = 'atom')")
        if _top(batch.interaction) >= lay.n_interactions or _top(batch.atom_types) >= lay.n_atom_types or \
                _top(batch.bead_types) >= lay.n_bead_types:
            raise BackmapError("voxel_gan: the environment has channels the model was not trained with "
                               "(a different system?)")
        B, K = batch.size, n_candidates
        angles = rng.uniform(0, 2 * np.pi, B * K) if self.params.rotate_candidates else np.zeros(B * K)
        noise = torch.as_tensor(rng.standard_normal((B * K, self.params.noise_dim)), dtype=torch.float32)
        rot = rotation_z(torch.as_tensor(angles, dtype=torch.float32))  # (BK, 3, 3)
        a_mask, a_pos, a_type, a_inter = compact(batch.atom_mask, batch.atom_positions, batch.atom_types,
                                                 batch.interaction[:, 0])
        b_mask, b_pos, b_type = compact(batch.bead_mask, batch.bead_positions, batch.bead_types)
        out = []
        with torch.no_grad(), torch_threads(self.params.threads):
            for lo in range(0, B * K, CHUNK):
                sl = slice(lo, min(lo + CHUNK, B * K))
                units = torch.arange(B).repeat_interleave(K)[sl]  # unit b's candidates: rows b·K … b·K + K − 1
                rt = rot[sl].transpose(1, 2)
                atoms = model.features.atoms(a_pos[units] @ rt, a_type[units], a_inter[units], a_mask[units])
                beads = model.features.beads(b_pos[units] @ rt, b_type[units], b_mask[units])
                coord, _ = model.place(torch.cat([atoms, beads], 1), noise[sl], batch.target_types[units, 0])
                out.append((coord[:, None] @ rot[sl])[:, 0])  # back to the unit's frame
        return torch.cat(out).reshape(B, K, 1, 3)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        model = self._require()
        lay = model.layout
        return {"format": STATE_FORMAT, "layout": [lay.n_atom_types, lay.n_interactions, lay.n_bead_types],
                "generator": {k: v.clone() for k, v in model.generator.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") not in (1, STATE_FORMAT):  # 1: backmap 0.1 (kept its channels, now the model's)
            raise BackmapError(f"voxel_gan: unknown state format {state.get('format')!r}")
        self.model = VoxelGANModel(ChannelLayout(*state["layout"]), self.params)
        self.model.generator.load_state_dict(state["generator"])
        self.model.eval()


def _top(x: torch.Tensor) -> int:
    """Largest entry (−1 when empty)."""
    return int(x.max()) if x.numel() else -1
