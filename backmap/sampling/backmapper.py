"""From CG frames and a trained generator to AA frames: the sampler driven over a trajectory,
streamed to disk, with a GROMACS topology written beside the output."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Annotated, Iterable, Iterator, Literal

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from backmap.constants import BOLTZMANN
from backmap.errors import BackmapError
from backmap.fields import KEY_VALUES, TEXT, CommaInts, CommaList, KeyValues, option
from backmap.system.io import Frame, atomic_path, read_frames, write_frames
from backmap.system.mapping import CGTopology
from backmap.system.pbc import Unwrapper
from backmap.engine.plugin import Generator, Move, MoveFrame, MoveSetup, Selector
from backmap.progress import progress
from backmap.sampling.environment import Channels
from backmap.sampling.flat_bottom import FlatBottomLimits
from backmap.sampling.ibi import IBITables
from backmap.sampling.sampler import Sampler, SamplerOptions
from backmap.sampling.traversal import Traversal, make_plans


class MoveChoice(BaseModel):
    """A move plugin and its parameters (``NAME`` or ``NAME:KEY=VALUE,...`` on the command line)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    params: dict = Field(default_factory=dict)


def _move_choices(value: object) -> object:
    """``["wrap_molecules", "jitter:sigma=0.01,steps=2"]`` -> move choices; dicts pass."""
    if not isinstance(value, (list, tuple)):
        return value
    out = []
    for item in value:
        if isinstance(item, str):
            name, _, rest = item.partition(":")
            params = KEY_VALUES.func([p for p in rest.split(",") if p.strip()]) if rest.strip() else {}
            out.append({"name": name.strip(), "params": params})
        else:
            out.append(item)
    return out


class BackmapSettings(BaseModel):
    """How CG frames are backmapped (the ``backmap`` step's and ``backmap apply``'s options). The
    environment keys (cutoff, traversal, heavy_first, strip_hydrogens) belong to the model: given
    here they must equal the model's (:meth:`EnvironmentSpec.check_against`)."""

    model_config = ConfigDict(extra="forbid")
    selector: str = option("lowest_energy", "Selector plugin choosing one of the candidates (lowest_energy, "
                                             "boltzmann, random).")
    selector_params: KeyValues = option(default_factory=dict, name="--selector-param", metavar="KEY=VALUE",
                                        description="A parameter of the selector (repeatable), e.g. temperature=568 "
                                                    "for boltzmann (default 300 K).")
    generator_params: KeyValues = option(default_factory=dict, name="--generator-param", metavar="KEY=VALUE",
                                         description="A sampling parameter of the trained generator for this run "
                                                     "(repeatable; only its inference_params), e.g. temperature=350 "
                                                     "(a vae model trained over a range of temperatures), "
                                                     "recentre_by=rotation+shift (equivariant).")
    candidates: int = option(8, "Candidates proposed per unit (K).", ge=1)
    sweep_candidates: CommaInts = option(default_factory=list, metavar="K,K,…",
                                         description="Candidates per unit of the first sweeps, in order (the forward "
                                                     "pass first; comma-separated, e.g. 8,8); the sweeps after them "
                                                     "take --candidates. Each sweep places every unit again, so the "
                                                     "earlier ones need fewer.")
    gibbs_sweeps: int = option(2, "Gibbs sweeps after the forward pass (each unit re-placed seeing all others).",
                               name="--gibbs", ge=0)
    colouring: bool = option(False, "Never place two units whose environments overlap in the same step (molecules of "
                                    "a step split into groups): no unit is placed blind to a neighbour moving with it.")
    separation: float = option(0.0, "With colouring: units moved together are at least this far apart (nm, bead to "
                                     "bead); 0 = two environment reaches, 2·(cutoff + 0.4). For one-bead molecules "
                                     "cutoff + 0.1 keeps every unit out of the others' environments.", ge=0)
    batch_molecules: bool = option(True, "All molecules of a type advance together.", cli=False)
    energy: bool = option(True, "Score candidates with the force field (needs a .top).", cli=False)
    project_cg: bool | None = option(None, "Move every sampled frame the least onto its CG input (mapped centres "
                                           "exact, bond lengths kept; no energy). Default: the model's choice (on for "
                                           "equivariant and vae models).")
    cg_restraint: float = option(0.0, "CG restraint (kJ/mol/nm²) added to the candidates' selection energy: each unit "
                                      "is also chosen to meet its CG beads, ½k|M(x) − R|², so chains do not drift from "
                                      "their CG trace (0 = off).", ge=0)
    polish_steps: int = option(0, "Energy guidance: steepest-descent steps on each chosen placement's selection "
                                  "energy, turning it about its rotatable bonds (bond lengths and angles kept), "
                                  "e.g. 15; 0 = off.", name="--polish", ge=0)
    polish_sweeps: Literal["all", "last"] = option("last", "Polish only in the frame's last sweep (then a closing "
                                                           "pass), or in every sweep including the forward pass (where "
                                                           "a chain's growing end swings freely).")
    regrow: CommaList = option(default_factory=list, metavar="BEADS",
                               description="Block move after the sweeps: hide these beads' units (comma-separated "
                                           "bead names, e.g. S1,S2,B1,B2 for a chain's start) and place them again "
                                           "with the rest of the molecule in place.")
    regrow_candidates: int = option(0, "Candidates per unit in the --regrow block move (0: --candidates).", ge=0)
    regrow_trials: int = option(1, "Grow the --regrow block this many times; each molecule keeps its lowest-energy "
                                   "trial.", ge=1)
    repair_clashes: int = option(0, "Rounds of clash repair after sampling: units with an atom closer than "
                                    "--clash-distance to one more than three bonds away are drawn again, those of "
                                    "one plan step (or of steps the generator draws alike) together (0 = off).",
                               ge=0)
    clash_distance: float = option(0.1, "What clash repair counts as a clash (nm).", gt=0)
    clash_energy: float = option(0.0, "Clash repair also redraws units with a pair of atoms (not excluded by the force "
                                      "field, 1-4 pairs included) whose LJ energy exceeds this, in kJ/mol (sPS MD: "
                                      "≤ 21; 0 = off).", ge=0)
    clash_kt: float = option(0.0, "--clash-energy in units of kT at the system's temperature (apply --temperature, "
                                  "else the temperature the model was trained at): one threshold for a glass and a "
                                  "melt alike (0 = off; --clash-energy given explicitly wins).", ge=0)
    orient_units: bool = option(False, "Forward pass: turn each unit with no bond to a placed atom (e.g. a ring placed "
                                       "before its backbone) so that its atoms bonded to unplaced ones point where the "
                                       "CG input puts their partners. For models applied to chemistry they were not "
                                       "trained on.")
    dock: CommaList = option(default_factory=list, metavar="TYPES",
                             description="Forward pass: draw the units of these bead types (comma-separated, e.g. S) "
                                         "seeing no placed atom, as a unit built first is, and dock each rigidly onto "
                                         "the one placed atom it bonds to. For models applied to chemistry they were "
                                         "not trained on.")
    electrostatics: Literal["auto", "on", "off"] = option(
        "auto", "Coulomb in the selection energy and guidance (reaction field at the environment radius): auto = on "
                "when the topology has charged atoms without Lennard-Jones (the hydrogens of SPC/E, TIP3P, OPLS "
                "alcohols), whose overlaps and hydrogen bonds LJ alone cannot see.")
    epsilon_rf: float | None = option(None, "Reaction-field dielectric of that Coulomb term (0 = infinity). Default: the "
                                            "model's .mdp (its epsilon-rf with reaction-field, infinity with PME).",
                                      ge=0)
    moves: Annotated[list[MoveChoice], TEXT, BeforeValidator(_move_choices)] = option(
        default_factory=list, name="--move", metavar="NAME[:KEY=VALUE,...]",
        description="A move plugin made on every frame after the sweeps (repeatable, in order; backmap plugins "
                    "--kind move), e.g. wrap_molecules.")
    minimize_steps: int = option(0, "Restrained energy-minimization steps after sampling (the EM baseline; 0 = none).",
                                 name="--minimize", ge=0)
    restraint: float = Field(1000.0, ge=0, description="CG restraint constant for minimization (kJ/mol/nm²)")
    stereo_reference: Path | None = option(None, "AA structure of the system (first frame used) whose stereocentres' "
                                                 "handedness the sampler keeps.")
    tacticity: Literal["isotactic", "syndiotactic"] | None = option(
        None, "Hands of the backbone stereocentres (one per repeat unit, as in vinyl polymers) by this pattern, "
              "instead of a --stereo-reference: after sampling, each chain's centres are set to the pattern in the "
              "phase most of them came out in.")
    invert_stereo: bool = option(True, "With a --stereo-reference or --tacticity: after sampling, reflect every "
                                       "stereocentre still inverted through its heavy neighbours' plane "
                                       "(move invert_stereocentres).")
    frame_by_frame: bool = option(False, "With a model trained in trajectory mode (environment.temporal): backmap "
                                         "every frame on its own, as if it were a trajectory's first (the frame-wise "
                                         "baseline). Without it such a model runs the frames in order, each "
                                         "conditioned on the AA frame written before it.")
    stereo_weight: float = Field(1e5, ge=0, description="selection penalty per flipped neighbour triple of a stereocentre (kJ/mol); "
                                                         "the default outweighs any candidate's other energy")
    flat_bottom: FlatBottomLimits | None = Field(None, description="score candidates with flat-bottom penalties whose "
                                                                   "limits come from target data (thesis eqs. "
                                                                   "7.2-7.3; morphing) instead of the force field")
    ibi: IBITables | None = Field(None, description="IBI-fitted tables of the target's bond, angle and non-bonded "
                                                    "distributions added to the flat-bottom selection energy "
                                                    "(morphing; backmap.sampling.ibi)")
    # the model's environment: optional, and refused if it differs
    cutoff: float | None = option(None, "Assert the model's environment radius (nm); it is the model's.", gt=0)
    traversal: str | None = option(None, "Assert the model's traversal; it is the model's.")
    heavy_first: bool | None = Field(None, description="the model's heavy-first order; only to assert it")
    strip_hydrogens: bool | None = Field(None, description="the model's hydrogen stripping; only to assert it")

    def recommended(self, sampling: dict, given: set[str], source: Path | str | None = None,
                    cg_topology: CGTopology | None = None) -> tuple["BackmapSettings", dict]:
        """These settings with a model's recommended ``sampling`` ones wherever the user gave
        nothing (``given``: the keys set explicitly), and which were taken. Beads to ``regrow``
        that ``cg_topology`` does not have are dropped (a model applied to another system)."""
        unknown = sorted(set(sampling) - set(type(self).model_fields))
        if unknown:
            raise BackmapError(f"sampling: {unknown[0]!r} is not a backmap setting", source=source)
        taken = {k: v for k, v in sampling.items() if k not in given}
        if "clash_energy" in given:  # the user's threshold in kJ/mol replaces the model's in kT
            taken.pop("clash_kt", None)
        if cg_topology is not None and "regrow" in taken:
            known = set(cg_topology.bead_names)
            taken["regrow"] = [b for b in taken["regrow"] if b in known]
        try:
            return type(self)(**{**self.model_dump(), **taken}), taken
        except ValueError as exc:
            raise BackmapError(f"sampling: {str(exc).splitlines()[-1].strip()}", source=source) from None

    def at_temperature(self, temperature: float | None, given: set[str]) -> tuple["BackmapSettings", dict]:
        """These settings with ``clash_kt`` turned into ``clash_energy`` (kJ/mol) at ``temperature``
        (K), and what changed; ``given``: the keys the user set (a ``clash_energy`` given
        explicitly keeps its value)."""
        if not self.clash_kt:
            return self, {}
        if "clash_energy" in given:  # given explicitly, it wins
            return self.model_copy(update={"clash_kt": 0.0}), {}
        if temperature is None:
            return self, {}  # refused with its reason when the sampler is built
        energy = round(self.clash_kt * BOLTZMANN * temperature, 2)
        return self.model_copy(update={"clash_energy": energy, "clash_kt": 0.0}), {"clash_energy": energy}

    def move_choices(self, projects_cg: bool = False) -> list[MoveChoice]:
        """The moves these settings make on every frame, in order: the built-in ones their keys ask
        for (``regrow``; ``repair_clashes`` rounds; the stereocentres' inversion, with a
        ``stereo_reference`` or ``tacticity``; the CG projection, with ``project_cg`` or, when it
        is not given, ``projects_cg``: the generator's default; the closing pass of ``polish_steps``;
        the repair rounds again on the projected frame, and after them the inversion again), then
        ``moves``."""
        chosen: list[MoveChoice] = []
        if self.regrow:
            chosen.append(MoveChoice(name="regrow", params={"beads": list(self.regrow), "trials": self.regrow_trials,
                                                            "candidates": self.regrow_candidates}))
        repair = [MoveChoice(name="repair_clashes") for _ in range(self.repair_clashes)]  # one round each
        project = projects_cg if self.project_cg is None else self.project_cg
        chosen += repair
        invert = []
        if self.invert_stereo and self.tacticity is not None:
            invert = [MoveChoice(name="invert_stereocentres", params={"tacticity": self.tacticity})]
        elif self.invert_stereo and self.stereo_reference is not None:
            invert = [MoveChoice(name="invert_stereocentres")]
        chosen += invert  # before the moves that relax it
        if project:
            chosen.append(MoveChoice(name="project_cg"))
        if self.polish_steps:
            chosen.append(MoveChoice(name="polish", params={"steps": self.polish_steps}))
        if project:  # the projection moves atoms without looking at contacts
            chosen += repair
            # a unit the repair drew again has the generator's hand, not the one asked for (with
            # clash_energy a reflected centre's hydrogens often count as a clash): put it right again
            chosen += invert if repair else []
        return chosen + list(self.moves)

    def environment_keys(self) -> dict:
        return {k: getattr(self, k) for k in ("cutoff", "traversal", "heavy_first", "strip_hydrogens")}


@dataclass
class Backmapper:
    """Drives a generator over CG frames with the plans, channels and cut-off of its environment
    spec (``generator.environment``); ``traversal`` and ``selector`` are plugin instances."""

    cg_topology: CGTopology
    generator: Generator
    channels: Channels
    traversal: Traversal
    selector: Selector
    settings: BackmapSettings = field(default_factory=BackmapSettings)
    seed: int = 0
    #: Move plugin instances made on every frame in order (:class:`backmap.engine.plugin.Move`):
    #: those of ``settings.move_choices`` (:func:`backmap.engine.assembly.make_backmapper` makes them)
    moves: list[Move] = field(default_factory=list)
    where: str = "backmap"

    def __post_init__(self):
        rng = np.random.default_rng(self.seed)
        spec = self.generator.environment
        self.plans = make_plans(self.cg_topology, self.traversal, spec, rng)
        #: what the generator did to fit a system it was not trained on (chemical transfer)
        self.adaptation = self.generator.adapt(self.cg_topology, self.plans)
        s = self.settings
        if s.clash_kt > 0:
            raise BackmapError("clash_kt needs the system's temperature (backmap apply --temperature, or a model "
                               "whose card records its training temperature); give clash_energy in kJ/mol instead")
        options = SamplerOptions(candidates=s.candidates, sweep_candidates=tuple(s.sweep_candidates),
                                 gibbs_sweeps=s.gibbs_sweeps, cutoff=spec.cutoff,
                                 colouring=s.colouring, separation=s.separation, batch_molecules=s.batch_molecules,
                                 strip_hydrogens=spec.strip_hydrogens, energy=s.energy,
                                 cg_restraint=s.cg_restraint, polish_steps=s.polish_steps,
                                 polish_sweeps=s.polish_sweeps, clash_distance=s.clash_distance, clash_energy=s.clash_energy,
                                 orient_units=s.orient_units, dock=tuple(s.dock),
                                 electrostatics=s.electrostatics, epsilon_rf=s.epsilon_rf or 0.0)
        check_candidate_memory(self.cg_topology, self.plans,
                               max(s.candidates, *s.sweep_candidates, s.regrow_candidates) * s.regrow_trials,
                               spec.cutoff)
        self.chirality = None
        if s.stereo_reference is not None and s.tacticity is not None:
            raise BackmapError("give the stereocentres' hands once: stereo_reference or tacticity, not both",
                               source=s.stereo_reference)
        if s.stereo_reference is not None:
            if not s.energy:
                raise BackmapError("stereo_reference: keeping stereocentres needs energy scoring (a .top topology)",
                                   source=s.stereo_reference)
            from backmap.sampling.chirality import load_chiral_centres

            self.chirality = load_chiral_centres(self.cg_topology.topology, s.stereo_reference, s.stereo_weight)
        if s.polish_steps and (not s.energy or s.flat_bottom is not None or s.ibi is not None):
            raise BackmapError("polish_steps: energy guidance descends the force field's selection energy — it needs "
                               "a .top topology with parameters and energy scoring, not a flat-bottom or IBI scorer")
        scorer = None
        if s.flat_bottom is not None or s.ibi is not None:
            from backmap.sampling.flat_bottom import FlatBottomEnergy

            scorer = FlatBottomEnergy(self.cg_topology, s.flat_bottom or FlatBottomLimits(), tables=s.ibi)
        self.sampler = Sampler(self.cg_topology, self.plans, self.generator, self.selector, options,
                               channels=self.channels, rng=rng, chirality=self.chirality, energy=scorer)
        self._whole_cg = Unwrapper.for_cg(self.cg_topology)
        self.move_reports: list[dict] = []  # per frame: move name -> its report
        setup = MoveSetup(self.cg_topology, self.generator, self.where)
        for move in self.moves:
            move.prepare(setup)
        self.forcefield = None
        if s.minimize_steps:
            import torch

            from backmap.forcefield import ForceField

            self.forcefield = ForceField(self.cg_topology.topology, dtype=torch.float32)

    @property
    def temporal(self) -> bool:
        """The generator conditions each frame on the previous AA frame (trajectory mode)."""
        return trajectory_mode(self.generator, self.settings)

    def backmap_frame(self, cg: Frame, rng: np.random.Generator | None = None,
                      previous: np.ndarray | None = None, start: np.ndarray | None = None) -> tuple[Frame, float | None]:
        """One AA frame (the AA topology's atom order, molecules whole) and, with a stereo reference,
        its fraction of stereocentres kept. ``rng``: the frame's own random stream (default
        :func:`backmap.parallel.frame_rng` of the seed and the frame's index), so that a frame's
        result depends on neither the frames before it nor the process that draws it — except, in
        trajectory mode, through ``previous``: the AA frame written before it (None for the first).
        ``start``: an AA structure (molecules whole, consistent with ``cg``) to run the Gibbs sweeps
        from, without a forward pass (morphing scheme B)."""
        from backmap.parallel import frame_rng

        self.sampler.rng = rng if rng is not None else frame_rng(self.seed, cg.index if cg.index is not None else 0)
        beads = self._whole_cg(cg.positions, cg.dimensions)
        x = self.sampler.backmap(beads, cg.box, start=start, previous=previous,
                                 redrawn=self.moves[0].redraws() if self.moves else ())
        if self.moves:
            x = self._make_moves(MoveFrame(x, beads, cg.dimensions, self.cg_topology, self.sampler.rng, cg.index,
                                           self.sampler))
        if self.forcefield is not None:
            from backmap.forcefield.minimize import minimize_restrained

            x = minimize_restrained(self.forcefield, x, cg.box, self.cg_topology, beads,
                                    restraint=self.settings.restraint, steps=self.settings.minimize_steps).positions
        kept = self.chirality.kept(self.cg_topology.topology, x) if self.chirality is not None else None
        return Frame(x, cg.dimensions, cg.time, cg.index), kept

    def _make_moves(self, frame: MoveFrame) -> np.ndarray:
        """The frame after every move in turn; after a move that returns new positions, every
        constraint move made before it restores its constraint. The frame's reports (a move made
        twice adds its numbers up) are kept in ``move_reports``."""
        reports: dict[str, dict] = {}
        constraints: list[Move] = []
        for move in self.moves:
            before = frame.positions
            moved, report = move.apply(frame)
            _add_report(reports, move.name, asdict(report) if is_dataclass(report) else dict(report))
            if move.constraint:
                constraints.append(move)
            if moved is before:
                continue
            frame.positions = np.asarray(moved, dtype=before.dtype).reshape(before.shape)
            if move.constraint:
                continue
            for held in constraints:
                restored, changed = held.restore(frame)
                frame.positions = np.asarray(restored, dtype=before.dtype).reshape(before.shape)
                reports[held.name].update(changed)
        self.move_reports.append(reports)
        return frame.positions

    def run(self, frames: Iterable[Frame], total: int | None = None) -> Iterator[Frame]:
        """AA frames, one per CG frame (:meth:`backmap_frame`; a frame without an index draws as
        its position in ``frames``). With a stereo reference, ``chirality_kept`` lists each frame's
        fraction of centres kept."""
        from backmap.parallel import frame_rng

        self.chirality_kept: list[float] = []
        previous = None
        for k, cg in enumerate(progress(frames, total=total, description="backmapping")):
            aa, kept = self.backmap_frame(cg, frame_rng(self.seed, cg.index if cg.index is not None else k), previous)
            if kept is not None:
                self.chirality_kept.append(kept)
            if self.temporal:
                previous = aa.positions
            yield aa


#: bytes per candidate atom and environment atom while candidates are scored (float32 distances,
#: pair terms and their intermediates; measured peak on sPS ≈ 20)
_BYTES_PER_PAIR = 32
#: environment atoms counted per placed atom at most (a dense liquid within 1 nm holds ~ 300)
_ENVIRONMENT_ATOMS = 400


def _add_report(reports: dict[str, dict], name: str, report: dict) -> None:
    """A move's report for a frame into the frame's reports: numbers added up when the move was
    made before on the frame (clash repair's rounds), other fields replaced."""
    if name not in reports:
        reports[name] = report
        return
    kept = reports[name]
    for key, value in report.items():
        old = kept.get(key)
        both = isinstance(value, (int, float)) and isinstance(old, (int, float))
        kept[key] = old + value if both and not isinstance(value, bool) else value


def check_candidate_memory(cg_topology: CGTopology, plans: dict, candidates: int, cutoff: float) -> None:
    """Refuse, before sampling, a number of candidates whose scoring would not fit in the memory
    this machine has available: one plan step scores candidates × molecules × unit atoms ×
    environment atoms pairs at once."""
    available = available_memory()
    if available is None:
        return
    largest = max((cb.block.count * max((len(u.atoms) for u in plans[cb.block.moltype.name].units), default=1)
                   for cb in cg_topology.blocks), default=1)
    env = min(cg_topology.topology.n_atoms, _ENVIRONMENT_ATOMS)
    need = candidates * largest * env * _BYTES_PER_PAIR
    if need > 0.8 * available:
        fits = max(1, int(0.8 * available / (largest * env * _BYTES_PER_PAIR)))
        raise BackmapError(f"candidates: {candidates} candidates for {largest} atoms placed at once would need about "
                           f"{need / 2**30:.0f} GiB to score, more than the {available / 2**30:.0f} GiB available; "
                           f"use at most {fits}")


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux ``MemAvailable``), None where unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def trajectory_mode(generator: Generator, settings: BackmapSettings) -> bool:
    """Frames run in order, each conditioned on the AA frame written before it: a model trained in
    trajectory mode (``environment.temporal``), unless ``settings.frame_by_frame``."""
    return bool(generator.environment.temporal) and not settings.frame_by_frame


def read_cg(cg_topology: CGTopology, path: Path, frames=None) -> Iterator[Frame]:
    """CG frames from a file whose beads are in the mapping's order."""
    return read_frames(path, cg_topology.n_beads, frames, expect="CG system of the mapping")


def write_topology(topology_path: Path, out: Path) -> Path:
    """A copy of the AA ``.top`` usable from ``out``'s directory: relative ``#include``s that
    resolve beside the original are made absolute; everything else is unchanged."""
    src = Path(topology_path)
    if src.suffix != ".top":
        raise BackmapError("a GROMACS topology for the output needs the system's .top", source=src)
    lines = []
    for line in src.read_text().splitlines():
        m = re.match(r'(\s*#include\s+")([^"]+)(".*)', line)
        if m and not Path(m.group(2)).is_absolute() and (src.parent / m.group(2)).is_file():
            line = f"{m.group(1)}{(src.parent / m.group(2)).resolve()}{m.group(3)}"
        lines.append(line)
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return out


def write_aa(path: Path, frames: Iterable[Frame], topology) -> int:
    """Write AA frames with the topology's atom and residue names."""
    return write_frames(path, frames, topology.atom_names, topology.resnames, topology.residue_numbers())
