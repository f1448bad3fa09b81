"""Base classes of every plugin kind.

A plugin class has a ``name`` (unique within its kind), a ``Params`` pydantic model that
validates its recipe parameters, and is constructed as ``cls(params)``. The methods below are
the contract the core relies on; anything else is the plugin's own business.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Hashable, Literal, Protocol, Sequence, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict

from backmap.errors import BackmapError

if TYPE_CHECKING:
    import networkx as nx
    import torch

    from rich.console import Console

    from backmap.engine.outputs import Outputs
    from backmap.sampling.environment import Channels, EnvironmentBatch
    from backmap.system.pairs import PairSet
    from backmap.sampling.spec import EnvironmentSpec
    from backmap.training.data import FitContext, TrainingData

    from backmap.sampling.traversal import Plan
    from backmap.system.mapping import CGTopology, Mapping
    from backmap.system.topology import Topology
    from backmap.refinement.bond_model import BondModel
    from backmap.refinement.restrained import RefineResult, RestrainedSystem
    from backmap.training.regularization import RegularizerSample
    from backmap.metrics.context import EvalContext, FrameBatch
    from backmap.metrics.spec import Histogram, Observable


class PluginEntry(Protocol):
    """An installed plugin as the registry lists it."""

    kind: str
    name: str
    cls: type[Plugin]


class PluginLookup(Protocol):
    """The installed plugins by kind and name (the core's ``backmap.engine.registry.Registry``)."""

    def get(self, kind: str, name: str, where: str | None = None) -> PluginEntry:
        """The plugin of ``kind`` named ``name``; an error naming ``where`` and the known names if none."""


class StepContext(Protocol):
    """What a recipe step (and a regularizer's ``prepare``) is handed: the validated recipe, its work
    directory and seed, the installed plugins, and the system it describes. The core's
    implementation is ``backmap.engine.pipeline.RunContext``; a test may pass any object with
    these members."""

    #: the validated recipe (``backmap.engine.recipe.Recipe``)
    recipe: Any
    #: the run's work directory; every step's files are under it
    workdir: Path
    #: the installed plugins
    registry: PluginLookup
    #: where steps print progress and summaries
    console: Console
    seed: int
    #: the recipe's ``device`` (auto, cpu, cuda, cuda:N; ``backmap.api.io.resolve_device``)
    device: str
    rng: np.random.Generator
    #: files steps declare for later steps (``outputs.declare``, ``outputs.get``, ``outputs.find``)
    outputs: Outputs

    @property
    def topology(self) -> Topology: ...

    @property
    def mapping_files(self) -> list[Path]: ...

    @property
    def mapping(self) -> Mapping: ...

    @property
    def cg_topology(self) -> CGTopology: ...

    def channels_for(self, spec: EnvironmentSpec) -> Channels:
        """The feature channels of the recipe's system for a generator's environment spec."""

    def training_contexts(self) -> Sequence[StepContext]:
        """One context per system the generator trains on (the recipe's own, or ``training_systems``)."""

    @property
    def read_files(self) -> list[tuple[str, Path]]:
        """Every file the recipe reads, labelled with its key (``data.trajectory``): what a step's
        outputs are checked against (``backmap.api.io.check_outputs``)."""

    def where(self, key: str) -> str:
        """``recipe.yaml: key`` for error messages that name the recipe key."""

    def path(self, *parts: str) -> Path:
        """A path in the work directory."""

    def pairs(self) -> PairSet:
        """The prepared (CG, AA) training pairs of the recipe's system (``.train()``, ``.test()``)."""

    def plugin(self, kind: str, ref: Any, key: str) -> Plugin:
        """The plugin a recipe entry (``PluginRef``) names, constructed with its parameters."""

    def refiner(self, choice: int | str, key: str) -> Refiner:
        """The recipe's refiner chosen by index or plugin name."""


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

    #: where the plugin's torch work runs (set by :meth:`to`; the run's ``--device``)
    device: Any = "cpu"

    def __init__(self, params: BaseModel | dict[str, Any] | None = None):
        if params is None or isinstance(params, dict):
            params = self.Params.model_validate(params or {})
        self.params = params

    def to(self, device: Any) -> "Plugin":
        """Run on ``device`` (a ``torch.device``): records it as ``self.device`` and moves every
        ``torch.nn.Module`` and tensor the plugin holds (:func:`backmap.devices.move_tensors`:
        in attributes, containers and backmap's own objects). The core calls it before a stage; the stage's torch factory calls without
        ``device=`` make their tensors there too (:func:`backmap.api.io.on_device`). A plugin that
        keeps tensors elsewhere overrides it (and calls ``super().to``); state dicts are written
        from CPU copies whatever the device."""
        import torch

        from backmap.devices import move_tensors

        device = torch.device(device)
        if device == torch.device(self.device) == torch.device("cpu"):  # nothing moves (and nothing is copied)
            self.device = device
            return self
        for key, value in list(vars(self).items()):
            if key != "params":
                setattr(self, key, move_tensors(value, device))
        self.device = device
        return self


class Generator(Plugin):
    """Learns p(unit positions | local environment) and proposes placements.

    The core builds every environment a generator sees — training sequences and inference batches
    alike — from one :class:`~backmap.sampling.spec.EnvironmentSpec`: the class's ``unit`` and
    ``environment_defaults``, overridden by the recipe's ``generator.environment``, set as
    ``self.environment`` before ``fit`` and saved in the model file. ``fit`` trains on
    :class:`~backmap.training.data.TrainingData`; ``propose`` returns ``n_candidates`` placements
    for a batch of units, in each unit's local frame (nm); ``log_prob``, if a generator has a
    tractable density, scores placements (exact Metropolis–Hastings refiners call it).
    :class:`backmap.NetworkGenerator` is the base class whose training loop the core runs.
    """

    kind = "generator"
    #: what one placement is: one atom, or all atoms of a bead
    unit: ClassVar[Literal["atom", "bead"]] = "atom"
    #: defaults of the environment spec for this generator (the recipe's ``generator.environment`` wins)
    environment_defaults: ClassVar[dict[str, Any]] = {}
    #: parameters that only shape sampling (no trained weight depends on them): a run may set them
    #: for a trained model (``generator_params`` of the backmap/morph settings, :meth:`for_inference`)
    inference_params: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, params: BaseModel | dict[str, Any] | None = None,
                 environment: "EnvironmentSpec | dict[str, Any] | None" = None):
        super().__init__(params)
        self.environment = self.environment_spec(environment)

    @classmethod
    def environment_spec(cls, given: "EnvironmentSpec | dict[str, Any] | None" = None) -> "EnvironmentSpec":
        """This generator's spec: its unit and defaults, overridden by ``given``; a ``unit`` other
        than the class's is refused."""
        from backmap.sampling.spec import EnvironmentSpec

        values = given.model_dump() if isinstance(given, EnvironmentSpec) else dict(given or {})
        if values.get("unit", cls.unit) != cls.unit:
            raise ValueError(f"generator {cls.name!r} places one {cls.unit} at a time (unit: {values['unit']!r} "
                             "is not possible)")
        return EnvironmentSpec(**{**cls.environment_defaults, **values, "unit": cls.unit})

    def for_inference(self, values: dict[str, Any], where: str = "generator_params") -> "Generator":
        """This trained generator with some :attr:`inference_params` changed: a shallow copy (the
        networks are shared), so the model's own parameters stay as trained. Other keys, and
        values the plugin's ``Params`` refuse, raise a :class:`BackmapError` naming ``where``."""
        import copy

        from pydantic import ValidationError

        from backmap.errors import BackmapError

        if not values:
            return self
        other = sorted(set(values) - self.inference_params)
        if other:
            allowed = ", ".join(sorted(self.inference_params)) or "none"
            raise BackmapError(f"{where}.{other[0]}: not a parameter generator {self.name!r} can change after "
                               f"training (those are: {allowed})")
        try:
            params = self.Params.model_validate({**self.params.model_dump(), **values})
        except ValidationError as exc:
            err = exc.errors()[0]
            raise BackmapError(f"{where}.{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
        out = copy.copy(self)
        out.params = params
        return out

    def at_temperature(self, temperature: float, trained_at: float | None) -> dict[str, Any]:
        """The :attr:`inference_params` that backmap a system at ``temperature`` (K) with this model,
        trained at ``trained_at`` (K, its card's; None if it does not say): ``backmap apply
        --temperature`` sets them unless given. None by default (a generator that cannot follow T)."""
        return {}

    def fit(self, data: "TrainingData", context: "FitContext") -> dict[str, Any]:
        """Train on ``data.train()`` (or ``data.sequences(...)``); return a small summary (losses,
        timings) for the run report."""
        raise NotImplementedError

    def propose(self, batch: "EnvironmentBatch", n_candidates: int, rng: np.random.Generator) -> "torch.Tensor":
        """Candidate positions (B, n_candidates, U, 3) in nm, in each unit's local frame
        (``batch.to_lab`` maps them back); U = ``batch.target_types.shape[1]``."""
        raise NotImplementedError

    def batch_key(self, meta: dict[str, Any]) -> Hashable | None:
        """Which plan steps (by their batches' ``meta``: molecule type, bead, unit atoms, step) this
        generator can propose for in one call: units of steps with the same key may be
        concatenated into one batch whose ``meta["beads"]`` gives each row's bead. The core merges
        steps only where placing their units together is as valid as one step's (clash repair's
        scattered units); each call costs a fixed overhead, so few big calls beat many small ones.
        None (the default): every step on its own."""
        return None

    def log_prob(self, batch: "EnvironmentBatch", positions: "torch.Tensor") -> "torch.Tensor":
        """Log density (B, K) of local-frame ``positions`` (B, K, U, 3) given the environments
        (optional: only generators with a tractable density)."""
        raise NotImplementedError(f"generator {self.name!r} has no tractable density")

    @property
    def has_log_prob(self) -> bool:
        return type(self).log_prob is not Generator.log_prob

    @property
    def rigid_bonds(self) -> Literal["none", "h-bonds", "all-bonds"]:
        """Bonds this generator places at exactly the force field's b0 (the reference MD's
        constraints); the core's CG projection keeps them there."""
        return "none"

    @property
    def projects_cg(self) -> bool:
        """Whether the core projects this generator's frames onto their CG input by default
        (:mod:`backmap.sampling.cg_projection`; the ``project_cg`` setting overrides it)."""
        return False

    def adapt(self, cg_topology: "CGTopology", plans: dict[str, "Plan"]) -> dict[str, Any]:
        """Called by the core before it backmaps ``cg_topology`` with ``plans``: a generator whose
        parameters are keyed by chemistry rather than by molecule and bead index prepares what it
        needs for molecule types it was not trained on (chemical transfer, ``training_systems``)
        and returns what it did, for the run's summary. Default: nothing (a model is applied to
        the system it was trained on)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to restore the trained generator: tensors, numpy arrays and JSON
        values in nested dicts and lists (stored as safetensors + JSON, never pickled)."""
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

    def prepare(self, system: RestrainedSystem) -> None:
        """Called once before the first frame."""

    def refine(self, positions: np.ndarray, targets: np.ndarray, boxes: np.ndarray,
               rng: np.random.Generator) -> RefineResult:
        raise NotImplementedError


@dataclass(frozen=True)
class RefineInputs:
    """What a backmapping used that a refiner may take before :meth:`Refiner.prepare`: the trained
    model at hand (the run's ``train.model``, ``backmap apply --model``) and the AA structure whose
    stereocentres' hands the backmapping kept (``--stereo-reference``)."""

    model: Path | None = None
    stereo_reference: Path | None = None


@runtime_checkable
class TakesRefineInputs(Protocol):
    """A refiner that takes :class:`RefineInputs` (``vae_mc``: the model whose generator moves
    units, the reference its target keeps), unless its parameters name them; the core offers
    them to any refiner that has ``take_inputs``."""

    def take_inputs(self, inputs: RefineInputs) -> None: ...


@runtime_checkable
class DefinesBondModel(Protocol):
    """A refiner whose target treats rigid bonds otherwise than as constraints (``vae_mc``: the bonds
    its decoder builds inside a bead held, the others stiff springs): after ``prepare`` its
    :class:`backmap.refinement.bond_model.BondModel`, or None when it holds them all. A
    ``schedule`` hands it to its other stages."""

    def bond_model(self) -> BondModel | None: ...


@runtime_checkable
class TakesBondModel(Protocol):
    """A refiner that can sample another's bond model before ``prepare`` (held bonds as constraints
    with the δ measure, sprung ones as springs; ``mala``, ``langevin``); returns whether it can."""

    def use_bond_model(self, bonds: BondModel) -> bool: ...


def offer_refine_inputs(refiner: Refiner, inputs: RefineInputs) -> None:
    """Hand ``inputs`` to a refiner that takes them (the others need none)."""
    if isinstance(refiner, TakesRefineInputs):
        refiner.take_inputs(inputs)


class Regularizer(Plugin):
    """A loss term added to a generator's training objective.

    ``prepare`` runs once before training (e.g. to take thresholds from the training data);
    ``loss`` returns one value per configuration of a :class:`backmap.training.regularization.RegularizerSample`,
    already multiplied by the plugin's scheduled weight at ``epoch``."""

    kind = "regularizer"

    def prepare(self, context: StepContext) -> None:
        """Called once before training with the run context."""

    def loss(self, sample: RegularizerSample, epoch: float) -> torch.Tensor:
        raise NotImplementedError


class Selector(Plugin):
    """Chooses one of K candidates per unit from their scores (e.g. energies)."""

    kind = "selector"

    def select(self, energies: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError


class FrameSampler(Protocol):
    """What a :class:`Move` may ask of the sampler that drew its frame (the core's
    :class:`backmap.api.sampling.Sampler`): units drawn again, or guided, with the run's generator,
    plans and selection energy. Each takes and returns positions (N, 3) nm of that frame."""

    #: energy guidance so far: ``placements`` polished, their summed ``energy_drop`` (kJ/mol), ``accepted``
    polish_log: dict[str, float]
    #: the stereocentres whose hands the run keeps (:class:`backmap.api.sampling.ChiralCentres`, from the
    #: ``stereo_reference``), None without one
    chirality: Any

    def regrow_frame(self, positions: np.ndarray, beads: Sequence[str], candidates: int = 0, trials: int = 1
                     ) -> np.ndarray:
        """The units of the named beads hidden and drawn again with the rest of each molecule in place."""
        ...

    def repair_frame(self, positions: np.ndarray) -> tuple[np.ndarray, int]:
        """One round of clash repair; ``positions`` itself and 0 when nothing clashed."""
        ...

    def polish_frame(self, positions: np.ndarray, steps: int | None = None) -> np.ndarray:
        """Every unit turned about its rotatable bonds down its selection energy, ``steps`` steps."""
        ...


@dataclass
class MoveFrame:
    """One backmapped frame as a :class:`Move` sees it: ``positions`` (N, 3) nm in the AA
    topology's atom order with every molecule whole, the CG input it was made from (``beads``
    (B, 3) nm, whole molecules too), the box, the CG topology (whose ``.topology`` is the AA
    one) and the frame's own random stream (so the frame's result does not depend on the process).
    ``sampler``: the sampler that drew the frame (:class:`FrameSampler`), for moves that draw units
    again with the run's generator, plans and selection energy."""

    positions: np.ndarray
    beads: np.ndarray
    dimensions: np.ndarray  # (a, b, c, α, β, γ): nm, degrees
    cg_topology: CGTopology
    rng: np.random.Generator
    index: int | None = None
    sampler: FrameSampler | None = None

    def sampler_for(self, move: str) -> FrameSampler:
        """The frame's sampler, for a move that draws units again; an error naming ``move`` when the
        frame came without one (a move applied outside a backmapping run)."""
        if self.sampler is None:
            raise BackmapError(f"{move}: the frame has no sampler to draw units with")
        return self.sampler


@dataclass(frozen=True)
class MoveSetup:
    """What a :class:`Move` is prepared with, once before the frames: the system, the generator
    that draws them (its ``rigid_bonds``, ``projects_cg``, …) and where its settings came from
    (for errors, e.g. ``backmap.moves (regrow)``)."""

    cg_topology: CGTopology
    generator: Generator
    where: str = "moves"


class Move(Plugin):
    """A move made on each whole backmapped frame after the forward pass and the Gibbs sweeps,
    chosen with ``--move NAME[:KEY=VALUE,...]`` or the recipe key ``moves`` of the ``backmap``
    step, in the order given, after the built-in ones the settings ask for (``--regrow``,
    ``--repair-clashes``, ``--project-cg``, ``--polish``: moves too) and before a restrained
    minimization and refinement.

    ``prepare(setup)`` runs once before the frames (check the system, build tables); ``apply(frame)``
    returns the new positions (``frame.positions`` itself when nothing moved) and a report: an
    instance of the move's ``Report`` dataclass (or a dict), kept per frame as a dict of its
    fields (a move made twice on a frame adds its numbers up); :meth:`summarize` adds the numeric
    ones up over the frames for the run's report. A ``constraint`` move (the CG projection) is
    made again, by :meth:`restore`, after every later move that returns new positions, so no
    later move costs what it holds. Example: docs/moves.md."""

    kind = "move"
    Report: ClassVar[type] = dict
    #: made again after every later move that changed the frame (:meth:`restore`)
    constraint: ClassVar[bool] = False

    def prepare(self, setup: MoveSetup) -> None:
        """Called once before the frames; raise :class:`backmap.api.BackmapError` naming
        ``setup.where`` when the move cannot work on this system."""

    def apply(self, frame: MoveFrame) -> tuple[np.ndarray, Any]:
        raise NotImplementedError

    def redraws(self) -> Sequence[str]:
        """Names of the beads whose units this move draws anew without reading where they stand
        (default: none). When the move comes first, the frame's last Gibbs sweep leaves those
        units where the pass before it put them: what it drew there would be thrown away."""
        return ()

    def restore(self, frame: MoveFrame) -> tuple[np.ndarray, dict[str, Any]]:
        """For a ``constraint`` move: the frame under the constraint again after a later move, and
        the fields of this frame's report that change (default: :meth:`apply` again, its report)."""
        positions, report = self.apply(frame)
        return positions, asdict(report) if is_dataclass(report) else dict(report)

    def summarize(self, reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The run's summary of the frames' reports (default: every numeric field summed)."""
        rows = list(reports)
        keys = [k for k in (rows[0] if rows else {}) if all(isinstance(r.get(k), (int, float)) for r in rows)]
        return {"frames": len(rows), **{k: sum(r[k] for r in rows) for k in keys}}


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
    Consecutive frames (``context.need_frame_pairs()``) and whole-trajectory analyses
    (``analyse(samples, context)`` on ``series`` observables): docs/dynamics.md.
    """

    kind = "metric"
    #: why this metric produced nothing (shown in the report); set by ``prepare``
    skipped: str | None = None

    def prepare(self, context: EvalContext) -> list[Observable]:
        """The observables this metric will produce for the system in ``context``."""
        raise NotImplementedError

    def samples(self, batch: FrameBatch, context: EvalContext) -> dict[str, np.ndarray | Histogram]:
        """Per-frame samples of each observable for one batch of frames."""
        raise NotImplementedError


class Step(Plugin):
    """A recipe step: reads and writes files in the run's work directory."""

    kind = "step"

    def run(self, ctx: StepContext) -> dict[str, Any]:
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
