"""The training loop the core owns, and the generator base class it drives.

A :class:`NetworkGenerator` supplies its networks (:meth:`~NetworkGenerator.setup`), what one
training iteration does on a batch of sequences (:meth:`~NetworkGenerator.train_step`, including
its optimizer steps, so adversarial and likelihood training fit alike) and its optimizer state.
The :class:`TrainingLoop` does the rest, the same for every family: sequences built from the
generator's environment spec, epochs of shuffled batches, the random streams, the recipe's
regularizers on their schedules, the training log with its plot, a progress bar, and checkpoints
from which a killed run resumes bit-identically (every random state is saved with the networks).
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from backmap.engine.plugin import Generator
from backmap.errors import BackmapError
from backmap.system.io import atomic_path
from backmap.training.checkpoint import read_checkpoint
from backmap.training.energies import LocalEnergies
from backmap.training.log import TrainingLog
from backmap.training.progress import TrainingProgress
from backmap.training.sequences import BeadSequences
from backmap.training.sequence_store import SequenceStore

from backmap.training.data import FitContext, TrainOptions
from backmap.training.distributed import SERIAL, ProcessGroup
from backmap.devices import host_random, on_device

if TYPE_CHECKING:
    from backmap.engine.plugin import Regularizer
    from backmap.refinement.restrained import RestrainedSystem
    from backmap.training.data import TrainingData
    from backmap.training.reverse_kl import ReverseKLOptions

CHECKPOINT_FORMAT = 2


@dataclass(frozen=True)
class TrainingBatch:
    """One iteration's batch as the loop draws it for :meth:`NetworkGenerator.train_step`: the
    bead-frames, their sequences (each in a random context, trimmed to the batch's largest sizes;
    on several processes, this process's rows) and where training stands."""

    beads: np.ndarray  # bead-frames of the whole batch
    ids: np.ndarray  # global sequence ids of this process's rows (bead-frame i in context c: c·n + i)
    sequences: BeadSequences
    iteration: int
    fraction: float  # share of the whole training done before this iteration (learning-rate schedules)
    epoch: float  # epochs done before this iteration (the regularizers' schedule clock)
    log: bool  # this iteration's numbers are logged (regularizers then log energy terms too)

    def __len__(self) -> int:
        return len(self.beads)


@runtime_checkable
class TrainsWithoutData(Protocol):
    """A generator that trains without atomistic data, by reverse KL against the force field and
    the CG restraint (:mod:`backmap.training.reverse_kl`; ``steps.train.objective: reverse_kl``):
    ``data`` holds the CG frames (its AA coordinates are NaN), ``system`` the force field. It needs
    exact densities and reparameterized samples (the ``vae`` generator)."""

    def fit_reverse_kl(self, data: "TrainingData", system: "RestrainedSystem", options: "ReverseKLOptions",
                       context: FitContext) -> dict[str, Any]: ...


class NetworkGenerator(Generator):
    """A generator whose training loop the core runs (:class:`TrainingLoop`).

    Subclasses implement :meth:`setup`, :meth:`train_step`, :meth:`training_state` /
    :meth:`load_training_state`, and the inference side (``propose``, ``state_dict``,
    ``load_state_dict``); ``fit`` is not overridden."""

    #: log columns shown on the progress bar
    progress_columns: ClassVar[tuple[str, ...]] = ()
    #: parameters that do not change what is trained (left out of the checkpoint fingerprint)
    runtime_params: ClassVar[tuple[str, ...]] = ("threads",)
    #: ``train_step`` follows the data-parallel rules (:mod:`backmap.training.distributed`): random
    #: draws per sequence through ``loop.local``, every optimizer step through ``loop.optimizer_step``
    data_parallel: ClassVar[bool] = False

    def training_contexts(self) -> tuple[str, ...]:
        """The environments trained on: ``forward``, ``gibbs`` and/or ``block`` (:mod:`backmap.training.sequences`)."""
        return ("forward",)

    def training_blocks(self) -> tuple[str, ...]:
        """Block specs whose environments the ``block`` context trains on (:mod:`backmap.sampling.blocks`)."""
        return ()

    def setup(self, data: "TrainingData", seed: int) -> None:
        """Build fresh networks and optimizers for ``data`` (channels, spec), initialized from ``seed``."""
        raise NotImplementedError

    def train_step(self, batch: TrainingBatch, loop: "TrainingLoop") -> dict[str, float]:
        """One iteration on ``batch``: losses, then :meth:`TrainingLoop.optimizer_step` for each
        optimizer step (the loop does the backward pass, the gradient reduction over processes and
        clipping). What the loop offers besides: ``loop.draw()`` (another batch, e.g. a critic's),
        ``loop.regularize`` (the recipe's regularizers), ``loop.record`` (more log numbers, e.g. per
        inner step), the random streams ``loop.np_rng`` / ``loop.torch_rng`` and, for per-sequence
        draws on several processes, ``loop.local`` / ``loop.local_randn``. Returns numbers for the
        training log."""
        raise NotImplementedError

    def training_state(self) -> dict[str, Any]:
        """Networks and optimizers as tensors and plain values (a checkpoint loads with
        ``torch.load(weights_only=True)``)."""
        raise NotImplementedError

    def load_training_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint must agree on to be resumed, besides data and seed."""
        params = self.params.model_dump(mode="json")
        return {"params": {k: v for k, v in params.items() if k not in self.runtime_params},
                "environment": self.environment.model_dump(mode="json")}

    def fit(self, data: "TrainingData", context: FitContext) -> dict[str, Any]:
        group = context.group
        if group.active and not self.data_parallel:
            raise BackmapError(f"steps.train: the {self.name!r} generator does not train on several processes "
                               f"(data-parallel: equivariant, vae); run it without torchrun")
        if group.active and context.regularizers:
            raise BackmapError("steps.train: regularizers are not supported on several processes; run without "
                               "torchrun or drop the recipe's regularizers")
        contexts = self.training_contexts()
        seqs = data.sequences(contexts, self.training_blocks())
        self.setup(data, context.seed)  # built on the CPU (initialization is the same on every device), then moved
        self.to(context.device)
        if group.active:
            group.broadcast_parameters(self.parameters())
        with on_device(self.device):
            loop = TrainingLoop(self, seqs, len(contexts), context.options, context.seed,
                                regularizers=context.regularizers, energies=context.energies,
                                directory=context.directory, say=context.say, group=group)
            summary = loop.run()
        summary["training sequences"] = f"{loop.n} beads x frames x {len(contexts)} context(s)"
        summary["training sequences (MB)"] = round(seqs.nbytes() / 1e6, 1)
        if group.active:
            summary["processes"] = group.size
        return summary

    def parameters(self):
        """The trained parameters (data-parallel training broadcasts and reduces them)."""
        raise NotImplementedError


class TrainingLoop:
    """Trains a :class:`NetworkGenerator` on ``n_contexts`` blocks of ``len(seqs) / n_contexts``
    sequences (one block per context; bead-frame ``i`` in context ``c`` is sequence ``c·n + i``).

    An epoch is one pass over every bead-frame in a shuffled order, ``batch_size`` at a time; each
    drawn bead-frame comes in one of the contexts at random. Random numbers come from two streams,
    ``np_rng`` (batches, contexts, augmentations) and ``torch_rng`` (noise), saved in checkpoints.

    On several processes (``group``) every process draws the same global batch and keeps its rows
    of it (:meth:`draw`, :meth:`local`); :meth:`optimizer_step` reduces the gradients before each
    optimizer step; only the main process writes and prints."""

    def __init__(self, generator: NetworkGenerator, seqs: "BeadSequences | SequenceStore", n_contexts: int, options: TrainOptions,
                 seed: int, regularizers: Sequence["Regularizer"] = (), energies: LocalEnergies | None = None,
                 directory: Path | None = None, say: Callable[[str], None] | None = None,
                 group: ProcessGroup = SERIAL):
        self.generator, self.seqs, self.options = generator, seqs, options
        self.group = group
        self.n_contexts = n_contexts
        self.n = len(seqs) // n_contexts
        self.regularizers = list(regularizers)
        self.energies = energies
        self.directory = directory
        self.batch_size = min(options.batch_size, self.n)
        self.say = (say or (lambda _msg: None)) if group.is_main else (lambda _msg: None)
        self._placeholder = False  # this process's rows of the latest batch are a stand-in (weight 0)
        self._step_weight: float | None = None
        self._batch_rows = 0  # size of the latest global batch (local_randn)
        self.np_rng = np.random.default_rng(seed)
        self.torch_rng = torch.Generator().manual_seed(seed)
        self.fingerprint = _fingerprint(generator, seqs, seed, self.batch_size)
        self.iteration = 0
        self.total = 0
        self.logging = False
        self.order = np.zeros(0, np.int64)
        self.position = 0
        self.log = TrainingLog()
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._pending_energies: list | None = None  # regularizer samples whose energies the next log row shows
        self.seconds = 0.0

    # ------------------------------------------------------------------ what a train_step uses
    @property
    def per_epoch(self) -> int:
        return math.ceil(self.n / self.batch_size)

    @property
    def epoch(self) -> float:
        """Epochs done before this iteration (fractional): the regularizers' schedule clock."""
        return self.iteration / self.per_epoch

    @property
    def fraction(self) -> float:
        """Share of the whole training done before this iteration (for learning-rate schedules)."""
        return self.iteration / max(self.total, 1)

    def draw(self, beads: np.ndarray | None = None) -> TrainingBatch:
        """The batch of bead-frames ``beads`` (default: ``batch_size`` drawn at random without
        replacement, e.g. for a critic's extra steps), each in a random context."""
        if beads is None:
            beads = self.np_rng.choice(self.n, self.batch_size, replace=False)
        ctx = self.np_rng.integers(0, self.n_contexts, len(beads))
        self._batch_rows = len(beads)
        ids = self.local(ctx * self.n + beads)
        seqs = trim(self.seqs.select(torch.as_tensor(ids))).to(self.generator.device)
        return TrainingBatch(beads, ids, seqs, self.iteration, self.fraction, self.epoch, self.logging)

    def optimizer_step(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor, weight: float = 1.0,
                       clip: float | None = None) -> None:
        """One optimizer step on ``loss``: gradients, their weighted mean over processes
        (:meth:`reduce_gradients`; ``weight``: this process's share of the loss normaliser, e.g.
        its atoms), norm clipping at ``clip``, the step."""
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.reduce_gradients(parameters, weight)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(parameters, clip)
        optimizer.step()

    def local(self, values):
        """This process's rows of ``values`` drawn for a whole batch (per-sequence random draws:
        draw for ``len(beads)``, then keep ``loop.local(draw)``); the identity on one process."""
        if not self.group.active:
            return values
        rows, self._placeholder = self.group.rows(len(values))
        return values[torch.as_tensor(rows) if torch.is_tensor(values) else rows]

    def local_randn(self, shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
        """Standard normal noise of this process's rows of a batch: ``shape[0]`` rows here, drawn as
        rows of the whole batch (whose size the latest :meth:`batch` set) so that the draws match a
        one-process run."""
        if not self.group.active:
            return host_random(torch.randn, tuple(shape), generator=generator)
        return self.local(host_random(torch.randn, (self._batch_rows, *shape[1:]), generator=generator))

    def reduce_gradients(self, parameters, weight: float) -> None:
        """Before an optimizer step: the gradients averaged over processes, each weighted by
        ``weight`` (this process's share of the loss normaliser, e.g. its atoms; ignored on one
        process); the step's logged numbers are averaged with the same weights."""
        weight = 0.0 if self._placeholder else float(weight)
        self.group.reduce_gradients(parameters, weight)
        self._step_weight = weight

    def regularize(self, batch: TrainingBatch, coords: torch.Tensor, n_samples: int
                   ) -> tuple[torch.Tensor | float, dict[str, float]]:
        """The recipe's regularizers on the first ``n_samples`` sequences of ``batch`` with their
        bead's atoms at ``coords`` (S, T, 3), at their scheduled weights (inactive ones skipped);
        in a logged iteration, also the energy terms of generated vs reference atoms for the log."""
        ids, seqs, log_energies = batch.ids, batch.sequences, batch.log
        n_reg = min(n_samples, len(ids)) if self.energies is not None else 0
        active = [r for r in self.regularizers if _weight(r, self.epoch) != 0.0]
        samples = [self.energies.sample(int(ids[s]), seqs, s, coords[s]) for s in range(n_reg)] \
            if (active or log_energies) and n_reg else []
        total: torch.Tensor | float = 0.0
        stats: dict[str, float] = {}
        for reg in active:
            value = torch.stack([reg.loss(sample, self.epoch).sum() for sample in samples]).mean() if samples else 0.0
            total = total + value
            stats[f"reg_{reg.name}"] = float(value.detach()) if torch.is_tensor(value) else value
        if log_energies and samples:
            self._pending_energies = samples
        return total, stats

    def _energy_stats(self) -> dict[str, float]:
        samples, self._pending_energies = self._pending_energies, None
        if not samples:
            return {}
        terms = [self.energies.terms_of(s) for s in samples]
        return {k: float(np.mean([t[k] for t in terms])) for k in terms[0]}

    # ------------------------------------------------------------------ the loop
    def run(self, callback: Callable[["TrainingLoop"], None] | None = None) -> dict[str, Any]:
        """Train until ``epochs`` epochs (or ``max_iterations`` iterations) are done."""
        o = self.options
        self.total = o.epochs * self.per_epoch
        if o.max_iterations is not None:
            self.total = min(self.total, o.max_iterations)
        self.checkpoint_total: int | None = None  # set by load_state: the total the checkpoint's run aimed at
        if o.resume and self.checkpoint_path is not None and self.checkpoint_path.is_file():
            self.load(self.checkpoint_path)
            made_for = self.checkpoint_total
            if made_for is not None and made_for != self.total:
                # `fraction` = iteration / total: a new total silently moves every schedule built on it
                self.say(f"resuming at iteration {self.iteration} of {self.total} (the checkpoint was made for "
                         f"{made_for}): schedules that depend on the share of training done, like the voxel GAN's "
                         f"learning-rate decay, jump from {self.iteration / max(made_for, 1):.0%} to "
                         f"{self.fraction:.0%} done")
            else:
                self.say(f"resumed from {self.checkpoint_path} at iteration {self.iteration}/{self.total}")
        start_iteration, t0 = self.iteration, time.perf_counter()
        seconds0 = self.seconds
        with TrainingProgress(self.total, self.iteration, self.generator.progress_columns,
                              quiet=not self.group.is_main) as bar:
            while self.iteration < self.total:
                if self.position >= len(self.order):
                    self.order, self.position = self.np_rng.permutation(self.n), 0
                beads = self.order[self.position:self.position + self.batch_size]
                self.position += len(beads)
                next_it = self.iteration + 1
                self.logging = next_it % o.log_every == 0 or next_it == self.total
                self._accumulate(self._reduced(self.generator.train_step(self.draw(beads), self)))
                self._accumulate(self._energy_stats())
                self.iteration = next_it
                self.seconds = seconds0 + time.perf_counter() - t0
                if self.logging:
                    row = self._log_row()
                    bar.status(row)
                    if not bar.enabled:
                        self.say(_format_row(row, self.generator.progress_columns))
                if o.checkpoint_every and self.iteration % o.checkpoint_every == 0 and self.iteration < self.total:
                    self.save()
                bar.advance()
                if callback is not None:
                    callback(self)
        done = self.iteration - start_iteration
        self.save()
        wall = time.perf_counter() - t0
        summary: dict[str, Any] = {"iterations": self.iteration, "epochs": round(self.epoch, 3),
                                   "sequences per epoch": self.n, "train seconds (this run)": round(wall, 1),
                                   "train seconds (total)": round(self.seconds, 1),
                                   "sequences/s": round(done * self.batch_size / wall, 2) if done and wall > 0 else None}
        last = self.log.rows[-1] if self.log.rows else {}
        summary.update({f"final {k}": round(last[k], 4) for k in self.generator.progress_columns if k in last})
        if self.directory is not None and self.log.rows:
            summary["training log"] = str(self.directory / "train_log.csv")
        return summary

    def _reduced(self, stats: dict[str, float]) -> dict[str, float]:
        """A step's logged numbers, averaged over processes (weights of :meth:`reduce_gradients`)."""
        if not self.group.active:
            return stats
        if self._step_weight is None:
            raise BackmapError(f"{self.generator.name}: train_step made no loop.optimizer_step "
                               f"(needed on several processes)")
        stats, self._step_weight = self.group.average(stats, self._step_weight), None
        return stats

    def record(self, stats: dict[str, float]) -> None:
        """Add numbers to the training log's running means (e.g. once per critic step)."""
        self._accumulate(stats)

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
        if self.directory is not None and self.group.is_main:
            self.log.write_csv(self.directory / "train_log.csv")
        return row

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> Path | None:
        return None if self.directory is None else self.directory / "checkpoint.pt"

    def state(self) -> dict[str, Any]:
        # "total" (added within format 2; older checkpoints lack it) lets a resumed run say when its
        # epochs/max_iterations differ from the run that wrote the checkpoint
        return {"format": CHECKPOINT_FORMAT, "fingerprint": self.fingerprint, "iteration": self.iteration,
                "total": self.total,
                "order": torch.as_tensor(self.order), "position": self.position, "seconds": self.seconds,
                "generator": self.generator.training_state(),
                "np_rng": json.dumps(self.np_rng.bit_generator.state), "torch_rng": self.torch_rng.get_state(),
                "log": json.dumps(self.log.rows), "sums": dict(self._sums), "counts": dict(self._counts)}

    def load_state(self, state: dict[str, Any]) -> None:
        if state.get("format") != CHECKPOINT_FORMAT or state.get("fingerprint") != self.fingerprint:
            raise BackmapError("the checkpoint was made with other training parameters, data or seed; remove it "
                               "(or set the train step's resume: false) to start over", source=self.checkpoint_path)
        self.iteration, self.position, self.seconds = state["iteration"], state["position"], state["seconds"]
        self.checkpoint_total = state.get("total")
        self.order = state["order"].numpy()
        self.generator.load_training_state(state["generator"])
        self.np_rng.bit_generator.state = json.loads(state["np_rng"])
        self.torch_rng.set_state(state["torch_rng"])
        self.log = TrainingLog(json.loads(state["log"]))
        self._sums, self._counts = dict(state["sums"]), dict(state["counts"])

    def save(self, path: Path | None = None) -> None:
        """Write the checkpoint atomically (temporary file, then rename), with the log and its plot."""
        path = path or self.checkpoint_path
        if path is None or not self.group.is_main:
            return
        with atomic_path(path) as tmp:
            torch.save(self.state(), tmp)
        if self.log.rows:
            self.log.write_csv(path.parent / "train_log.csv")
            self.log.plot(path.parent / "training.png", title=f"{self.generator.name} training")

    def load(self, path: Path) -> None:
        self.load_state(read_checkpoint(path, "training checkpoint"))


def trim(seqs: BeadSequences) -> BeadSequences:
    """Sequences cut to their largest number of steps, visible neighbours and beads."""
    T = int(seqs.lengths.max())
    K = int((seqs.atom_index >= 0).sum(1).max())
    L = int(seqs.bead_mask.sum(1).max())
    return BeadSequences(
        atom_positions=seqs.atom_positions[:, :K], atom_types=seqs.atom_types[:, :K],
        atom_index=seqs.atom_index[:, :K], slot=seqs.slot[:, :K], visible=seqs.visible[:, :T, :K],
        interaction=seqs.interaction[:, :T, :K], bead_positions=seqs.bead_positions[:, :L],
        bead_types=seqs.bead_types[:, :L], bead_mask=seqs.bead_mask[:, :L],
        target_positions=seqs.target_positions[:, :T], target_types=seqs.target_types[:, :T],
        target_atoms=seqs.target_atoms[:, :T], target_mask=seqs.target_mask[:, :T], frame=seqs.frame,
        bead=seqs.bead, context=seqs.context,
        previous_positions=None if seqs.previous_positions is None else seqs.previous_positions[:, :T],
        previous_mask=None if seqs.previous_mask is None else seqs.previous_mask[:, :T])


def _fingerprint(generator: NetworkGenerator, seqs: "BeadSequences | SequenceStore", seed: int, batch_size: int) -> str:
    h = hashlib.sha256(json.dumps(generator.fingerprint(), sort_keys=True, default=list).encode())
    h.update(f"{generator.name}/{seed}/{batch_size}/{len(seqs)}".encode())
    if isinstance(seqs, BeadSequences):
        h.update(seqs.target_positions.numpy().tobytes())
    else:
        h.update(seqs.digest().encode())
    return h.hexdigest()[:16]


def _weight(regularizer, epoch: float) -> float | None:
    """A regularizer's scheduled weight at ``epoch`` if it has one (to skip it while it is 0)."""
    schedule = getattr(getattr(regularizer, "params", None), "weight", None)
    return schedule(epoch) if callable(schedule) else None


def _format_row(row: dict[str, float], columns: tuple[str, ...]) -> str:
    keys = ("iteration", "epoch", *columns)
    return "  ".join(f"{k} {row[k]:.4g}" for k in keys if k in row)
