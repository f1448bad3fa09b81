"""The ``voxel_gan`` generator plugin: DeepBackmap's voxel-CNN conditional WGAN-GP (thesis ch. 4–5).

``fit`` builds teacher-forced training sequences from the prepared pairs (the sampler's own
environments), trains the networks with checkpoints in ``model/voxel_gan/`` of the work directory
and keeps the generator. ``propose`` serves the core sampler: each of the K candidates of a unit
sees its environment rotated about the local z axis by a random angle and gets its own noise
(DBM 5.1.4); the selector plugin then picks one (lowest energy by default).
"""
from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch

from backmap import BackmapError, Generator
from backmap.sampling.environment import Channels, EnvironmentBatch
from backmap.training.sequences import build_sequences
from backmap.sampling.traversal import make_plan
from backmap_voxel_gan.energy import LocalEnergies
from backmap_voxel_gan.features import ChannelLayout, compact, rotation_z
from backmap_voxel_gan.model import VoxelGANModel
from backmap_voxel_gan.networks import flops_per_call
from backmap_voxel_gan.params import VoxelGANParams
from backmap_voxel_gan.trainer import Trainer

STATE_FORMAT = 1
#: candidate placements per network call at most: bounds memory, and 128–256 run ≈ 1.5× faster than 1024 (cache)
CHUNK = 256


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run with ``n`` torch threads (None: unchanged), restoring the previous number."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class VoxelGAN(Generator):
    name = "voxel_gan"
    summary = "voxel-CNN conditional WGAN-GP placing one atom at a time (DeepBackmap, thesis ch. 4-5)"
    Params = VoxelGANParams
    unit = "atom"

    def __init__(self, params=None):
        super().__init__(params)
        self.model: VoxelGANModel | None = None
        self.channels: dict[str, Any] | None = None

    # ------------------------------------------------------------------ training
    def fit(self, pairs, context) -> dict[str, Any]:
        p = self.params
        opts = context.train_options
        epochs = getattr(opts, "epochs", 1)
        batch_size = getattr(opts, "batch_size", 64)
        checkpoint_every = getattr(opts, "checkpoint_every", 0)
        train = pairs.train()
        if len(train) == 0:
            raise BackmapError("voxel_gan: no training frames")
        with torch_threads(p.threads):
            cg = context.cg_topology
            traversal = context.registry.get("traversal", p.traversal, where="generator.params.traversal").cls()
            plans = {cb.block.moltype.name: make_plan(cb.mapping, traversal, np.random.default_rng(context.seed),
                                                      unit="atom", heavy_first=p.heavy_first) for cb in cg.blocks}
            channels = Channels.from_system(cg)
            contexts = ("forward", "gibbs") if p.context == "mixed" else (p.context,)
            seqs = build_sequences(cg, plans, train, channels, contexts, cutoff=p.cutoff,
                                   strip_hydrogens=p.strip_hydrogens)
            self._setup(channels, seed=context.seed)
            regularizers = []
            for i, ref in enumerate(context.recipe.regularizers):
                reg = context.plugin("regularizer", ref, f"regularizers[{i}]")
                reg.prepare(context)
                regularizers.append(reg)
            energies = None
            if p.regularizer_samples:
                try:
                    energies = LocalEnergies(context.topology)
                except BackmapError as exc:
                    if regularizers:
                        raise
                    context.console.print(f"voxel_gan: no energies in the training log ({exc})")
            directory = context.path("model", "voxel_gan", "checkpoint.pt").parent
            trainer = Trainer(self.model, seqs, p, context.seed, n_contexts=len(contexts), regularizers=regularizers,
                              energies=energies, directory=directory, batch_size=batch_size,
                              say=context.console.print)
            summary = trainer.run(epochs, checkpoint_every, p.max_iterations, resume=p.resume)
        summary["generator MFLOP per placement"] = round(self.flops() / 1e6, 1)
        summary["training sequences"] = f"{trainer.n} beads x frames x {len(contexts)} context(s)"
        rel = directory.relative_to(context.workdir)
        summary["markdown"] = (f"Training log: `{rel}/train_log.csv`; checkpoint `{rel}/checkpoint.pt`.\n\n"
                               f"![voxel GAN training]({rel}/training.png)")
        return summary

    def _setup(self, channels: Channels, seed: int = 0) -> None:
        """Fresh networks for a channel layout, initialized from ``seed``."""
        self.channels = {"atom_types": dict(channels.atom_types), "bead_types": dict(channels.bead_types),
                         "interactions": [list(k) for k in channels.interactions]}
        layout = ChannelLayout(channels.n_atom_types, channels.n_interactions, len(channels.bead_types))
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.model = VoxelGANModel(layout, self.params)

    def flops(self) -> int:
        """FLOPs of one generator call (one candidate placement)."""
        m = self._require()
        n, lay = self.params.grid, m.layout
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
        return {"format": STATE_FORMAT, "channels": self.channels,
                "layout": [lay.n_atom_types, lay.n_interactions, lay.n_bead_types],
                "generator": {k: v.clone() for k, v in model.generator.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != STATE_FORMAT:
            raise BackmapError(f"voxel_gan: unknown checkpoint format {state.get('format')!r}")
        self.channels = state["channels"]
        self.model = VoxelGANModel(ChannelLayout(*state["layout"]), self.params)
        self.model.generator.load_state_dict(state["generator"])
        self.model.eval()


def _top(x: torch.Tensor) -> int:
    """Largest entry (−1 when empty)."""
    return int(x.max()) if x.numel() else -1
