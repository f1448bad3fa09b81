"""What a generator's ``fit`` is given: the prepared pairs seen through its environment spec — the
same plans, channels and environment builder the sampler uses at inference — and the training
options, regularizers and folders of the run."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from backmap.errors import BackmapError
from backmap.sampling.blocks import parse_blocks
from backmap.sampling.environment import Channels
from backmap.sampling.spec import EnvironmentSpec
from backmap.sampling.traversal import Plan
from backmap.system.mapping import CGTopology
from backmap.system.pairs import PairSet
from backmap.training.distributed import SERIAL, ProcessGroup
from backmap.training.energies import LocalEnergies
from backmap.training.sequence_store import SequenceStore, build_store, existing_shards, frame_key, store_key
from backmap.training.sequences import frame_sequences


@dataclass
class TrainingData:
    """Training pairs and the system, with environments built by the core from ``spec``.

    ``pairs`` holds every prepared frame (``train()`` the training ones); ``plans`` the placement
    plan of each molecule type; ``channels`` the feature channels. :meth:`sequences` gives
    teacher-forced sequences (one per bead, frame and context) in exactly the form the sampler
    builds at inference."""

    pairs: PairSet | None
    cg_topology: CGTopology
    spec: EnvironmentSpec
    channels: Channels
    plans: dict[str, Plan]
    seed: int = 0
    #: training on several systems (:meth:`several`): each system's own data; ``cg_topology``,
    #: ``plans`` and ``channels`` then describe them all, numbered one after the other
    parts: list["TrainingData"] = field(default_factory=list)
    #: where :meth:`sequences` keeps its shards (:mod:`backmap.training.sequence_store`); None: in memory
    cache: Path | None = None
    _sequences: dict[tuple, SequenceStore] = field(default_factory=dict, repr=False)

    @classmethod
    def several(cls, systems: Sequence[tuple[PairSet, CGTopology]], spec: EnvironmentSpec,
                plan_maker: Callable[[CGTopology], dict[str, Plan]],
                channel_maker: Callable[[CGTopology], Channels], seed: int = 0) -> "TrainingData":
        """Training data from several systems (chemical transfer: octane and cumene for sPS), each
        its own topology, mapping and frames. Their sequences are built system by system and
        joined with bead, atom and frame indices shifted as in :meth:`CGTopology.concatenate`,
        so that a generator sees one system whose molecule types are all of theirs."""
        if len(systems) == 1:
            pairs, cg = systems[0]
            return cls(pairs, cg, spec, channel_maker(cg), plan_maker(cg), seed)
        combined = CGTopology.concatenate([cg for _p, cg in systems])
        channels, plans = channel_maker(combined), plan_maker(combined)
        parts = [cls(pairs, cg, spec, channels, {cb.block.moltype.name: plans[cb.block.moltype.name] for cb in cg.blocks},
                     seed) for pairs, cg in systems]
        return cls(None, combined, spec, channels, plans, seed, parts)

    def train(self) -> PairSet:
        if self.parts:
            raise BackmapError("this generator reads the AA frames of one system directly; training on several "
                               "systems (training_systems) needs one that trains on sequences (equivariant, vae)")
        return self.pairs.train()

    @property
    def n_train_frames(self) -> int:
        return sum(p.n_train_frames for p in self.parts) if self.parts else len(self.train())

    def sequences(self, contexts: tuple[str, ...] = ("forward",), blocks: tuple[str, ...] = ()) -> SequenceStore:
        """Sequences of the training frames in each of ``contexts`` (``forward``: only atoms placed
        before are seen; ``gibbs``: all others; ``block``: all but the later beads of the bead's
        block among ``blocks``, specs as :func:`backmap.sampling.blocks.parse_blocks` reads them),
        context-major; built once and kept, in shards under :attr:`cache` (streamed from disk) or
        in memory."""
        key = (tuple(contexts), tuple(blocks))
        if key not in self._sequences and self.parts:
            shifts, beads, atoms, frames = [], 0, 0, 0
            for k, part in enumerate(self.parts):
                if self.cache is not None and part.cache is None:
                    part.cache = self.cache / f"system{k}"
                shifts.append({"beads": beads, "atoms": atoms, "frames": frames})
                beads += part.cg_topology.n_beads
                atoms += part.cg_topology.topology.n_atoms
                frames += part.n_train_frames
            self._sequences[key] = SequenceStore.concatenate([p.sequences(contexts, blocks) for p in self.parts],
                                                             shifts)
        if key not in self._sequences:
            self._sequences[key] = self._build(tuple(contexts), tuple(blocks))
        return self._sequences[key]

    def _build(self, contexts: tuple[str, ...], blocks: tuple[str, ...]) -> SequenceStore:
        parsed = parse_blocks(blocks, self.cg_topology, self.plans, "generator.params.blocks") if blocks else None
        pairs, spec = self.train(), self.spec
        options = dict(cutoff=spec.cutoff, strip_hydrogens=spec.strip_hydrogens, temporal=spec.temporal,
                       temporal_alignment=spec.temporal_alignment, temporal_twist=spec.temporal_twist or 0.0,
                       blocks=parsed)
        previous = pairs.previous_index() if spec.temporal else np.full(len(pairs), -1)
        keys = {f: frame_key(pairs.aa[f], pairs.cg[f], pairs.dimensions[f],
                             pairs.aa[previous[f]] if previous[f] >= 0 else None) for f in range(len(pairs))}
        folder = None if self.cache is None else self.cache / store_key(
            contexts, blocks, spec.model_dump(mode="json"), options, self.plans, self.channels,
            self.cg_topology.n_beads, self.cg_topology.topology.n_atoms)
        done = existing_shards(folder, keys, len(contexts))
        todo = [f for f in range(len(pairs)) if f not in done]
        built = iter(frame_sequences(self.cg_topology, self.plans, pairs, self.channels, contexts, frames=todo,
                                     **options))
        stream = ((f, keys[f], None if f in done else next(built)) for f in range(len(pairs)))
        return build_store(stream, len(contexts), folder, done)


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
    #: where the networks train (a ``torch.device``; the train step gives the recipe's ``device``)
    device: Any = "cpu"
