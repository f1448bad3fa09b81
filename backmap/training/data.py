"""What a generator's ``fit`` is given: the prepared pairs seen through its environment spec — the
same plans, channels and environment builder the sampler uses at inference — and the training
options, regularizers and folders of the run."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from pydantic import BaseModel, ConfigDict, Field

from backmap.sampling.environment import Channels
from backmap.sampling.spec import EnvironmentSpec
from backmap.sampling.traversal import Plan
from backmap.system.mapping import CGTopology
from backmap.system.pairs import PairSet
from backmap.training.distributed import SERIAL, ProcessGroup
from backmap.training.energies import LocalEnergies
from backmap.training.sequences import BeadSequences, build_sequences


@dataclass
class TrainingData:
    """Training pairs and the system, with environments built by the core from ``spec``.

    ``pairs`` holds every prepared frame (``train()`` the training ones); ``plans`` the placement
    plan of each molecule type; ``channels`` the feature channels. :meth:`sequences` gives
    teacher-forced sequences (one per bead, frame and context) in exactly the form the sampler
    builds at inference."""

    pairs: PairSet
    cg_topology: CGTopology
    spec: EnvironmentSpec
    channels: Channels
    plans: dict[str, Plan]
    seed: int = 0
    _sequences: dict[tuple[str, ...], BeadSequences] = field(default_factory=dict, repr=False)

    def train(self) -> PairSet:
        return self.pairs.train()

    def sequences(self, contexts: tuple[str, ...] = ("forward",)) -> BeadSequences:
        """Sequences of the training frames in each of ``contexts`` (``forward``: only atoms placed
        before are seen; ``gibbs``: all others), context-major; built once and kept."""
        key = tuple(contexts)
        if key not in self._sequences:
            self._sequences[key] = build_sequences(self.cg_topology, self.plans, self.train(), self.channels, key,
                                                   cutoff=self.spec.cutoff, strip_hydrogens=self.spec.strip_hydrogens,
                                                   temporal=self.spec.temporal,
                                                   temporal_alignment=self.spec.temporal_alignment,
                                                   temporal_twist=self.spec.temporal_twist or 0.0)
        return self._sequences[key]


class TrainOptions(BaseModel):
    """How long and in what batches a generator trains (the ``train`` step's keys)."""

    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(1, ge=1, description="passes over the training sequences")
    batch_size: int = Field(64, ge=1, description="sequences per iteration")
    checkpoint_every: int = Field(0, ge=0, description="iterations between checkpoints (0: only at the end)")
    max_iterations: int | None = Field(None, ge=1, description="stop after this many iterations in total")
    log_every: int = Field(10, ge=1, description="iterations between training-log rows")
    resume: bool = Field(True, description="continue from the checkpoint in the model's training folder if it exists")


@dataclass
class FitContext:
    """What the train step hands a generator's ``fit``: the options, the recipe's regularizers
    (built and prepared), the force field's view of the system for regularizer samples, the folder
    for checkpoints and logs, the seed and a function that prints a line."""

    options: TrainOptions = field(default_factory=TrainOptions)
    regularizers: Sequence[Any] = ()  # backmap.Regularizer instances
    energies: LocalEnergies | None = None
    directory: Path | None = None
    seed: int = 0
    say: Callable[[str], None] = lambda _msg: None
    #: the training processes (torchrun; :mod:`backmap.training.distributed`), serial by default
    group: ProcessGroup = SERIAL
