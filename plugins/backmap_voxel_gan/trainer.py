"""The training loop: n_critic critic steps per generator step, Adam, regularizers on their
schedules, a training log, and checkpoints from which a killed run resumes bit-identically.

An epoch is one pass of the generator over every (bead, frame) sequence in a shuffled order; each
critic step draws its own random batch. With two contexts (``mixed``), each drawn sequence comes in
the forward or the Gibbs context at random. Every random choice comes from two generators (numpy
for batches, contexts and rotations; torch for noise and gradient-penalty interpolation) whose
states are saved in the checkpoint with the networks, the optimizers, the epoch order and the
partial log sums — so stopping after a checkpoint and resuming reproduces the uninterrupted run.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from backmap.errors import BackmapError
from backmap.system.io import atomic_path
from backmap.training.sequences import BeadSequences
from backmap_voxel_gan.energy import LocalEnergies
from backmap_voxel_gan.model import VoxelGANModel, rotate_batch
from backmap_voxel_gan.params import VoxelGANParams
from backmap_voxel_gan.progress import TrainingProgress
from backmap_voxel_gan.trainlog import TrainingLog

CHECKPOINT_FORMAT = 1
#: parameters that change what is trained (a checkpoint made with other values is not resumed)
_FINGERPRINT_KEYS = ("grid", "length", "sigma", "width", "depth", "noise_dim", "output", "n_critic",
                     "lr_generator", "lr_critic", "lr_end_fraction", "betas", "gp_weight", "critic_fraction", "unroll", "rotate", "context",
                     "cutoff", "strip_hydrogens", "heavy_first", "traversal")


def fingerprint(params: VoxelGANParams, seqs: BeadSequences, seed: int, batch_size: int) -> str:
    """What a checkpoint must agree on to be resumed: the training parameters, the data, the seed."""
    h = hashlib.sha256(json.dumps({k: getattr(params, k) for k in _FINGERPRINT_KEYS}, sort_keys=True,
                                  default=list).encode())
    h.update(f"{seed}/{batch_size}/{len(seqs)}".encode())
    h.update(seqs.target_positions.numpy().tobytes())
    return h.hexdigest()[:16]


class Trainer:
    """Trains a :class:`VoxelGANModel` on :class:`BeadSequences` (``n_contexts`` blocks of
    ``len(seqs) / n_contexts`` sequences, one per context)."""

    def __init__(self, model: VoxelGANModel, seqs: BeadSequences, params: VoxelGANParams, seed: int,
                 n_contexts: int = 1, regularizers: list | None = None, energies: LocalEnergies | None = None,
                 directory: Path | None = None, batch_size: int = 64, say: Callable[[str], None] | None = None):
        self.model, self.seqs, self.p = model, seqs, params
        self.n_contexts = n_contexts
        self.n = len(seqs) // n_contexts
        self.regularizers = regularizers or []
        self.energies = energies
        self.directory = directory
        self.batch_size = min(batch_size, self.n)
        self.say = say or (lambda _msg: None)
        self.opt_g = torch.optim.Adam(model.generator.parameters(), lr=params.lr_generator, betas=params.betas)
        self.opt_c = torch.optim.Adam(model.critic.parameters(), lr=params.lr_critic, betas=params.betas)
        self.np_rng = np.random.default_rng(seed)
        self.torch_rng = torch.Generator().manual_seed(seed)
        self.fingerprint = fingerprint(params, seqs, seed, self.batch_size)
        self.iteration = 0
        self.order = np.zeros(0, np.int64)
        self.position = 0
        self.log = TrainingLog()
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self.seconds = 0.0

    # ------------------------------------------------------------------ batches
    @property
    def per_epoch(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def batch(self, beads: np.ndarray) -> tuple[np.ndarray, BeadSequences]:
        """Global sequence ids and the (rotated, trimmed) sequences for bead-frames ``beads``."""
        ctx = self.np_rng.integers(0, self.n_contexts, len(beads))
        ids = ctx * self.n + beads
        angles = self.np_rng.uniform(0, 2 * np.pi, len(beads)) if self.p.rotate else np.zeros(len(beads))
        seqs = self.seqs.select(torch.as_tensor(ids))
        T = int(seqs.lengths.max())
        K = int((seqs.atom_index >= 0).sum(1).max())
        L = int(seqs.bead_mask.sum(1).max())
        seqs = BeadSequences(
            atom_positions=seqs.atom_positions[:, :K], atom_types=seqs.atom_types[:, :K],
            atom_index=seqs.atom_index[:, :K], slot=seqs.slot[:, :K], visible=seqs.visible[:, :T, :K],
            interaction=seqs.interaction[:, :T, :K], bead_positions=seqs.bead_positions[:, :L],
            bead_types=seqs.bead_types[:, :L], bead_mask=seqs.bead_mask[:, :L],
            target_positions=seqs.target_positions[:, :T], target_types=seqs.target_types[:, :T],
            target_atoms=seqs.target_atoms[:, :T], target_mask=seqs.target_mask[:, :T], frame=seqs.frame,
            bead=seqs.bead, context=seqs.context)
        return ids, rotate_batch(seqs, torch.as_tensor(angles, dtype=torch.float32))

    def noise(self, seqs: BeadSequences) -> torch.Tensor:
        S, T = seqs.target_mask.shape
        return torch.randn(S, T, self.model.noise_dim, generator=self.torch_rng)

    # ------------------------------------------------------------------ steps
    def critic_step(self, beads: np.ndarray) -> dict[str, float]:
        _, seqs = self.batch(beads)
        with torch.no_grad():
            fake = self.model.generate(seqs, self.noise(seqs))
        loss, stats = self.model.critic_loss(seqs, fake, self.p.gp_weight, self.torch_rng, self.p.critic_fraction)
        self.opt_c.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_c.step()
        return stats

    def generator_step(self, beads: np.ndarray, epoch: float, energies: bool = False) -> dict[str, float]:
        ids, seqs = self.batch(beads)
        fake = self.model.generate(seqs, self.noise(seqs), unroll=self.p.unroll)
        adversarial = self.model.generator_loss(seqs, fake)
        stats = {"generator_loss": float(adversarial.detach())}
        loss = adversarial
        n_reg = min(self.p.regularizer_samples, len(ids)) if self.energies is not None else 0
        active = [r for r in self.regularizers if _weight(r, epoch) != 0.0]
        samples = [self.energies.sample(int(ids[s]), seqs, s, fake.coords[s]) for s in range(n_reg)] \
            if (active or energies) and n_reg else []
        for reg in active:
            value = torch.stack([reg.loss(sample, epoch).sum() for sample in samples]).mean() if samples else 0.0
            loss = loss + value
            stats[f"reg_{reg.name}"] = float(value.detach()) if torch.is_tensor(value) else value
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        if energies and samples:
            terms = [self.energies.terms_of(s) for s in samples]
            stats.update({k: float(np.mean([t[k] for t in terms])) for k in terms[0]})
        return stats

    # ------------------------------------------------------------------ loop
    def run(self, epochs: int, checkpoint_every: int = 0, max_iterations: int | None = None,
            resume: bool = True, callback: Callable[["Trainer"], None] | None = None) -> dict[str, Any]:
        """Train until ``epochs`` epochs (or ``max_iterations`` generator steps) are done."""
        total = epochs * self.per_epoch
        if max_iterations is not None:
            total = min(total, max_iterations)
        if resume and self.checkpoint_path is not None and self.checkpoint_path.is_file():
            self.load(self.checkpoint_path)
            self.say(f"resumed from {self.checkpoint_path} at iteration {self.iteration}/{total}")
        start_iteration, t0 = self.iteration, time.perf_counter()
        seconds0 = self.seconds
        with TrainingProgress(total, self.iteration) as bar:
            while self.iteration < total:
                if self.position >= len(self.order):
                    self.order, self.position = self.np_rng.permutation(self.n), 0
                self._set_learning_rates(total)
                gen_beads = self.order[self.position:self.position + self.batch_size]
                self.position += len(gen_beads)
                for _ in range(self.p.n_critic):
                    beads = self.np_rng.choice(self.n, self.batch_size, replace=False)
                    self._accumulate(self.critic_step(beads))
                next_it = self.iteration + 1
                logging = next_it % self.p.log_every == 0 or next_it == total
                self._accumulate(self.generator_step(gen_beads, self.iteration / self.per_epoch, energies=logging))
                self.iteration = next_it
                self.seconds = seconds0 + time.perf_counter() - t0
                if logging:
                    row = self._log_row()
                    bar.status(row)
                    if not bar.enabled:
                        self.say(_format_row(row))
                if checkpoint_every and self.iteration % checkpoint_every == 0 and self.iteration < total:
                    self.save()
                bar.advance()
                if callback is not None:
                    callback(self)
        done = self.iteration - start_iteration
        self.save()
        wall = time.perf_counter() - t0
        last = self.log.rows[-1] if self.log.rows else {}
        return {"iterations": self.iteration, "epochs": round(self.iteration / self.per_epoch, 3),
                "sequences per epoch": self.n, "train seconds (this run)": round(wall, 1),
                "train seconds (total)": round(self.seconds, 1),
                "sequences/s": round(done * self.batch_size / wall, 2) if done and wall > 0 else None,
                "final wasserstein": last.get("wasserstein")}

    def _set_learning_rates(self, total: int) -> None:
        """Linear decay from the configured rates to ``lr_end_fraction`` of them at ``total``."""
        scale = 1.0 - (1.0 - self.p.lr_end_fraction) * self.iteration / max(total, 1)
        for opt, lr in ((self.opt_g, self.p.lr_generator), (self.opt_c, self.p.lr_critic)):
            for group in opt.param_groups:
                group["lr"] = lr * scale

    def _accumulate(self, stats: dict[str, float]) -> None:
        for k, v in stats.items():
            self._sums[k] = self._sums.get(k, 0.0) + v
            self._counts[k] = self._counts.get(k, 0) + 1

    def _log_row(self) -> dict[str, float]:
        row = {"iteration": self.iteration, "epoch": round(self.iteration / self.per_epoch, 4),
               "seconds": round(self.seconds, 2)}
        row.update({k: self._sums[k] / self._counts[k] for k in self._sums})
        self._sums, self._counts = {}, {}
        self.log.add(row)
        if self.directory is not None:
            self.log.write_csv(self.directory / "train_log.csv")
        return row

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> Path | None:
        return None if self.directory is None else self.directory / "checkpoint.pt"

    def state(self) -> dict[str, Any]:
        return {"format": CHECKPOINT_FORMAT, "fingerprint": self.fingerprint, "iteration": self.iteration,
                "order": self.order.copy(), "position": self.position, "seconds": self.seconds,
                "generator": self.model.generator.state_dict(), "critic": self.model.critic.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_c": self.opt_c.state_dict(),
                "np_rng": self.np_rng.bit_generator.state, "torch_rng": self.torch_rng.get_state(),
                "log": self.log.rows, "sums": dict(self._sums), "counts": dict(self._counts)}

    def load_state(self, state: dict[str, Any]) -> None:
        if state.get("format") != CHECKPOINT_FORMAT or state.get("fingerprint") != self.fingerprint:
            raise BackmapError("the checkpoint was made with other training parameters, data or seed; remove it "
                               "(or set the generator's resume: false) to start over", source=self.checkpoint_path)
        self.iteration, self.position, self.seconds = state["iteration"], state["position"], state["seconds"]
        self.order = np.asarray(state["order"])
        self.model.generator.load_state_dict(state["generator"])
        self.model.critic.load_state_dict(state["critic"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_c.load_state_dict(state["opt_c"])
        self.np_rng.bit_generator.state = state["np_rng"]
        self.torch_rng.set_state(state["torch_rng"])
        self.log = TrainingLog(state["log"])
        self._sums, self._counts = dict(state["sums"]), dict(state["counts"])

    def save(self, path: Path | None = None) -> None:
        """Write the checkpoint atomically (temporary file, then rename), with the log and its plot."""
        path = path or self.checkpoint_path
        if path is None:
            return
        with atomic_path(path) as tmp:
            torch.save(self.state(), tmp)
        if self.log.rows:
            self.log.write_csv(path.parent / "train_log.csv")
            self.log.plot(path.parent / "training.png")

    def load(self, path: Path) -> None:
        self.load_state(torch.load(path, weights_only=False))


def _weight(regularizer, epoch: float) -> float | None:
    """A regularizer's scheduled weight at ``epoch`` if it has one (to skip it while it is 0)."""
    schedule = getattr(getattr(regularizer, "params", None), "weight", None)
    return schedule(epoch) if callable(schedule) else None


def _format_row(row: dict[str, float]) -> str:
    keys = ("iteration", "epoch", "wasserstein", "critic_loss", "generator_loss", "gen_bond", "gen_lj")
    return "  ".join(f"{k} {row[k]:.4g}" for k in keys if k in row)
