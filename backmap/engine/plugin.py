"""Base classes of every plugin kind.

A plugin class has a ``name`` (unique within its kind), a ``Params`` pydantic model that
validates its recipe parameters, and is constructed as ``cls(params)``. The methods below are
the contract the core relies on; anything else is the plugin's own business.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import networkx as nx

    from backmap.system.pairs import PairSet
    from backmap.system.mapping import Mapping
    from backmap.engine.pipeline import RunContext
    from backmap.system.topology import Topology


class NoParams(BaseModel):
    """Parameters of a plugin that takes none (any key is an error)."""

    model_config = ConfigDict(extra="forbid")


class Plugin:
    """Common base: a name, a kind, a validated parameter model."""

    name: ClassVar[str]
    kind: ClassVar[str]
    Params: ClassVar[type[BaseModel]] = NoParams
    #: one line shown by ``backmap plugins``
    summary: ClassVar[str] = ""

    def __init__(self, params: BaseModel | dict[str, Any] | None = None):
        if params is None or isinstance(params, dict):
            params = self.Params.model_validate(params or {})
        self.params = params


class Generator(Plugin):
    """Learns p(unit positions | local environment) and proposes placements.

    ``fit`` trains on (CG, AA) pairs; ``propose`` returns ``n_candidates`` placements for a
    batch of units (positions in the unit's local frame, nm). ``log_prob`` is optional and
    enables exact Metropolis–Hastings refinement.
    """

    kind = "generator"

    def fit(self, pairs: "PairSet", context: "RunContext") -> dict[str, Any]:
        """Train on ``pairs.train()``; return a small summary (losses, timings)."""
        raise NotImplementedError

    def propose(self, batch: Any, n_candidates: int, rng: np.random.Generator) -> Any:
        """Candidate positions, shape (B, n_candidates, n_unit_atoms, 3), in nm."""
        raise NotImplementedError

    def log_prob(self, batch: Any, positions: Any) -> Any:
        """Log density of ``positions`` under the generator (optional)."""
        raise NotImplementedError(f"generator {self.name!r} has no tractable density")

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to restore the trained generator (picklable)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""


class Traversal(Plugin):
    """Orders the nodes of a molecular graph (CG beads outer, atoms inner)."""

    kind = "traversal"

    def order(self, graph: "nx.Graph", root: Any, rng: np.random.Generator) -> list[Any]:
        raise NotImplementedError


class Refiner(Plugin):
    """Improves complete AA structures after the forward pass by sampling the restrained
    conditional p(x | R) (see :mod:`backmap.refinement.restrained`).

    ``prepare(system)`` runs once with a :class:`backmap.refinement.restrained.RestrainedSystem` (topology, mapping,
    non-bonded settings); ``refine(positions, targets, boxes, rng)`` then takes F frames of whole
    molecules (F, N, 3), their CG targets in the same periodic image (F, M, 3) and box vectors
    (F, 3, 3), all in nm, and returns a :class:`backmap.refinement.restrained.RefineResult` (positions and one log
    row per frame). ``Params`` usually extends :class:`backmap.refinement.restrained.RefineParams`.
    """

    kind = "refiner"

    def prepare(self, system: Any) -> None:
        """Called once before the first frame."""

    def refine(self, positions: np.ndarray, targets: np.ndarray, boxes: np.ndarray,
               rng: np.random.Generator) -> Any:
        raise NotImplementedError


class Regularizer(Plugin):
    """A loss term added to a generator's training objective.

    ``prepare`` runs once before training (e.g. to take thresholds from the training data);
    ``loss`` returns one value per configuration of a :class:`backmap.training.regularization.RegularizerSample`,
    already multiplied by the plugin's scheduled weight at ``epoch``."""

    kind = "regularizer"

    def prepare(self, context: Any) -> None:
        """Called once before training with the run context."""

    def loss(self, sample: Any, epoch: float) -> Any:
        raise NotImplementedError


class Selector(Plugin):
    """Chooses one of K candidates per unit from their scores (e.g. energies)."""

    kind = "selector"

    def select(self, energies: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError


class Metric(Plugin):
    """A family of observables compared between a reference and candidate ensembles.

    ``prepare(context)`` runs once (main process) with a :class:`backmap.metrics.EvalContext`: derive
    what is needed from the topology and return the :class:`backmap.metrics.Observable` s this metric
    produces — or ``[]`` with :attr:`skipped` set to the reason when it does not apply (no peptide, no
    CG input, …). ``samples(batch, context)`` then runs for batches of frames of every trajectory,
    possibly in worker processes, and returns per observable name one row per frame of the
    :class:`backmap.metrics.FrameBatch`: an array (B, k) of values, or a
    :class:`backmap.metrics.Histogram` of per-frame counts. A metric never sees two trajectories
    at once: divergences, noise floor, tables and plots are computed centrally from the samples.
    """

    kind = "metric"
    #: why this metric produced nothing (shown in the report); set by ``prepare``
    skipped: str | None = None

    def prepare(self, context: Any) -> list[Any]:
        """The observables this metric will produce for the system in ``context``."""
        raise NotImplementedError

    def samples(self, batch: Any, context: Any) -> dict[str, Any]:
        """Per-frame samples of each observable for one batch of frames."""
        raise NotImplementedError


class Step(Plugin):
    """A recipe step: reads and writes files in the run's work directory."""

    kind = "step"

    def run(self, ctx: "RunContext") -> dict[str, Any]:
        """Do the work; return a summary (shown in the run report)."""
        raise NotImplementedError


class Reader(Plugin):
    """Reads a topology or mapping file format, chosen by suffix.

    ``what`` is ``"topology"`` (``read(path) -> Topology``) or ``"mapping"``
    (``read(path, topology) -> Mapping``).
    """

    kind = "reader"
    what: ClassVar[str]
    suffixes: ClassVar[Sequence[str]]

    def read(self, path: Path, topology: "Topology | None" = None) -> "Topology | Mapping":
        raise NotImplementedError
