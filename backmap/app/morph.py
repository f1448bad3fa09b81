"""Morphing (thesis ch. 7): structures of a top-down model X are mapped through the resolution
bottleneck of a model trained only on the target Y, and its generator reinserts Y's local detail.

- scheme ``A``: forward pass + Gibbs sweeps from the bottleneck beads alone (the X detail below the
  bottleneck is discarded);
- scheme ``B``: Gibbs sweeps only, starting from the original X structure (every unit is re-placed
  seeing its X neighbours first): a gentler morph that keeps more of X.

The model is an ordinary backmapping model whose "AA" system is the fine (X = Y) resolution and whose
mapping is the bottleneck (``system.bottleneck: s`` in a recipe, :mod:`backmap.system.bottleneck`), so
morphing runs through the same frame jobs as ``backmap apply`` (blocks, Dask, resume, provenance) and
writes the same files — in X's own topology and format.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Literal, Sequence

import numpy as np

from backmap.app.backmapping import Backmapped, backmap_to_files
from backmap.app.options import ClusterFields, Request, Seeded
from backmap.fields import option
from backmap.engine.models import Model
from backmap.errors import BackmapError
from backmap.parallel import ClusterOptions
from backmap.sampling.backmapper import BackmapSettings
from backmap.sampling.ibi import IBITables
from backmap.system.io import Frame, read_frames
from backmap.system.mapping import CGTopology
from backmap.system.pbc import Unwrapper

Scheme = Literal["A", "B"]
SCHEMES = {"A": "forward pass + Gibbs sweeps from the bottleneck", "B": "Gibbs sweeps only, from the original structure"}


@dataclass
class StartedFrame(Frame):
    """A CG frame with the fine structure its sampling starts from (scheme B): Gibbs sweeps only."""

    start: np.ndarray | None = None


def bottleneck_frames(cg_topology: CGTopology, frames: Iterator[Frame], scheme: Scheme) -> Iterator[StartedFrame]:
    """The fine frames mapped through the bottleneck (molecules made whole first: the bottleneck
    beads are centres of whole groups, and scheme B starts from that same whole structure)."""
    if scheme not in SCHEMES:
        raise BackmapError(f"morph: scheme must be one of {', '.join(SCHEMES)} (got {scheme!r})")
    whole = Unwrapper(cg_topology.topology)
    for f in frames:
        x = whole(f.positions, f.dimensions)
        yield StartedFrame(cg_topology.apply(x), f.dimensions, f.time, f.index,
                           start=x if scheme == "B" else None)


def morph_settings(settings: BackmapSettings | None) -> BackmapSettings:
    """A morph's defaults: no force-field scoring, no CG projection (the bottleneck is no CG input
    to be exact to, docs/morph.md) and, with IBI tables, the Boltzmann selector at the tables'
    temperature — each unless chosen explicitly."""
    settings = settings or BackmapSettings(energy=False)
    update: dict = {}
    if settings.project_cg is None:
        update["project_cg"] = False
    if settings.ibi is not None and "selector" not in settings.model_fields_set:
        update.update(selector="boltzmann", selector_params={"temperature": settings.ibi.temperature})
    return settings.model_copy(update=update) if update else settings


def fit_ibi(model: Model, cg_topology: CGTopology, source: Path, tables: IBITables,
            target: Iterable[tuple[np.ndarray, np.ndarray]], scheme: Scheme = "A",
            settings: BackmapSettings | None = None, seed: int = 0, where: str = "morph") -> IBITables:
    """IBI tables (:mod:`backmap.sampling.ibi`) fitted so that morphs of ``tables.fit_frames`` of
    ``source`` reproduce the bond, angle and non-bonded distributions of the ``target`` frames
    (whole molecules, the fine resolution): ``tables.iterations`` rounds of morphing the fit frames
    (in memory, one process) and correcting the tables."""
    from backmap.engine.assembly import make_backmapper
    from backmap.progress import progress
    from backmap.system.pairs import count_frames, select_frames

    topo = cg_topology.topology
    if tables.cutoff > model.generator.environment.cutoff:
        raise BackmapError(f"{where}.ibi.cutoff: {tables.cutoff} nm is beyond the model's environment radius "
                           f"({model.generator.environment.cutoff} nm), the farthest the selection energy sees")
    n = count_frames(source)
    idx = select_frames(tables.fit_frames or f"0:{max(1, n // 2)}:4", [], n, f"{where}.ibi.fit_frames")
    fine = read_frames(source, topo.n_atoms, idx, expect=f"topology {Path(topo.source).name}")
    frames = list(bottleneck_frames(cg_topology, fine, scheme))
    tables = tables.model_copy(deep=True)
    tables.set_target(tables.densities(topo, target))
    settings = morph_settings((settings or BackmapSettings(energy=False)).model_copy(update={"ibi": tables}))
    for _ in progress(range(tables.iterations), description=f"IBI ({len(frames)} frames per round)"):
        # settings.ibi is ``tables`` itself: each round's scorer compiles the tables as updated so far
        bm = make_backmapper(cg_topology, model.generator, settings, seed, model.channels, where=where)
        morphed = [bm.backmap_frame(f, start=f.start)[0] for f in frames]
        tables.update(tables.densities(topo, ((f.positions, f.dimensions) for f in morphed)))
    return tables


def morph_to_files(model: Model, cg_topology: CGTopology, source: Path, out: Path, scheme: Scheme = "A",
                   frames: Sequence[int] | None = None, settings: BackmapSettings | None = None, seed: int = 0,
                   output_topology: Path | None = None, cluster: ClusterOptions | None = None,
                   where: str = "morph", reads: Sequence[tuple[str, Path | None]] = ()) -> Backmapped:
    """Morph the frames of ``source`` (the fine resolution, in ``cg_topology.topology``'s particle
    order) with ``model`` into ``out`` and the files beside it (:func:`backmap_to_files`; the
    topology copied beside ``out`` is ``output_topology``, X's own ``.top``, when given; ``reads``:
    labelled files the outputs must not be)."""
    settings = morph_settings(settings)
    if scheme == "B" and settings.gibbs_sweeps < 1:
        raise BackmapError(f"{where}: scheme B is Gibbs sweeps only — gibbs_sweeps must be ≥ 1")
    topo = cg_topology.topology
    fine = read_frames(source, topo.n_atoms, frames, expect=f"topology {Path(topo.source).name}")
    started = list(bottleneck_frames(cg_topology, fine, scheme))
    topology_path = Path(output_topology or topo.source)
    return backmap_to_files(model, cg_topology, topology_path, started, out, settings, seed=seed, cluster=cluster,
                            provenance={"input": str(source), "scheme": scheme, "scheme means": SCHEMES[scheme]},
                            where=where, identity={"scheme": scheme}, reads=[("the input", source), *reads])


def write_tables(tables: IBITables, path: Path) -> Path:
    """The fitted tables as JSON (read back by ``backmap morph --ibi``) and, beside it, a PNG of
    each family's tables in kT and the JSD to the target per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from backmap.sampling.ibi import WIDTH
    from backmap.system.io import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(tables.model_dump_json(indent=1))
    fams = [f for f in ("bond", "angle", "nonbonded") if f in tables.tables]
    fig, axes = plt.subplots(1, len(fams) + 1, figsize=(4 * (len(fams) + 1), 3.2))
    scale = {"bond": 1.0, "angle": 180 / np.pi, "nonbonded": 1.0}
    for ax, fam in zip(axes, fams):
        for key, values in tables.tables[fam].items():
            target = np.asarray(tables.target[fam][key])
            v = np.asarray(values) / tables.kt
            x = (np.arange(len(v)) + 0.5) * WIDTH[fam] * scale[fam]
            seen = target > 0
            ax.plot(x[seen], v[seen], label=key)
            ax2 = ax.twinx()
            ax2.fill_between(x, target / target.max(), alpha=0.15, color="grey")
            ax2.set_yticks([])
        ax.set_xlabel({"bond": "bond (nm)", "angle": "angle (deg)", "nonbonded": "r (nm)"}[fam])
        ax.set_ylabel("table (kT)")
        ax.legend(fontsize=7)
    ax = axes[-1]
    for fam in fams:
        ax.plot([e["round"] for e in tables.log], [e[fam] for e in tables.log], "o-", label=fam)
    ax.set_yscale("log")
    ax.set_xlabel("IBI round")
    ax.set_ylabel("JSD to the target (bits)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    png = path.with_suffix(".png")
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


#: the sampling settings ``backmap morph`` takes as options
MORPH_SAMPLING = ("candidates", "gibbs_sweeps", "cg_restraint", "generator_params")


class MorphRequest(Seeded, ClusterFields, Request):
    """Morph the structures of ``input`` through the bottleneck of ``model`` into ``out``."""

    model: Path = option(description="A model trained on the target at the bottleneck (recipe key system.bottleneck: "
                                     "s), or a run directory whose train step wrote one.")
    input: Path = option(description="Structures of the top-down model (any format MDAnalysis reads) in the model "
                                     "topology's particle order.")
    out: Path = option(description="Morphed output (.xtc, .gro, .trr, .pdb).")
    scheme: Scheme = option("A", "A: forward pass + Gibbs sweeps from the bottleneck; B: Gibbs sweeps only, from the "
                                 "original structure.")
    topology: Path | None = option(None, "The top-down model's .top, copied beside the output (default: the model's "
                                         "topology).")
    frames: str | None = option(None, "'start:stop:step' or '0,5,9' of --input.")
    sampling: BackmapSettings = option(default_factory=lambda: BackmapSettings(energy=False), flatten=MORPH_SAMPLING,
                                       description="How the frames are sampled.")
    flat_bottom: Path | None = option(None, "Target trajectory (model topology) whose bond, angle and closest "
                                            "non-bonded distances give flat-bottom limits that score the candidates "
                                            "(thesis eqs. 7.2-7.3).")
    target_frames: str | None = option(None, "'start:stop:step' of --flat-bottom's frames.")
    quantile: float = option(0.0, "Flat-bottom limits at this quantile of the target's values (0: its extremes, as "
                                  "eqs. 7.2-7.3).", ge=0, le=1)
    ibi: Path | None = option(None, "IBI tables (JSON, as a recipe's morph step writes them) added to the selection "
                                    "energy.")
    ibi_rounds: int = option(0, "Fit IBI tables first: this many rounds of morphing --ibi-frames and correcting the "
                                "tables toward --flat-bottom's distributions (written to OUT_ibi.json/.png).", ge=0)
    ibi_frames: str | None = option(None, "'start:stop:step' of --input morphed in each IBI round (default: every "
                                          "4th of the first half).")
    temperature: float | None = option(None, "K: the IBI tables' kT (with --ibi-rounds).")


def morph_structures(request: MorphRequest) -> Backmapped:
    """``backmap morph``: flat-bottom limits and IBI tables as asked (fitted first with
    ``ibi_rounds``), then :func:`morph_to_files`."""
    from backmap.engine.loaders import load_mapping, load_topology
    from backmap.engine.models import load_model
    from backmap.sampling.flat_bottom import FlatBottomLimits
    from backmap.system.claim import check_outputs
    from backmap.system.pairs import count_frames, select_frames

    r = request
    loaded = load_model(r.model)
    if loaded.topology is None or not loaded.mapping:
        raise BackmapError("the model does not record its topology and bottleneck mapping", source=r.model)
    reads = [*r.read_paths(), ("the model's topology", loaded.topology),
             *(("the model's mapping", m) for m in loaded.mapping)]
    check_outputs([("--out", r.out), ("the IBI tables beside --out", _ibi_tables_of(r.out) if r.ibi_rounds else None)],
                  [("the model package", loaded.directory), *reads], "morph")  # early; all at the writing
    topo = load_topology(loaded.topology)
    cg_top = load_mapping(loaded.mapping, topo).cg_topology(topo)
    if r.topology is not None and load_topology(r.topology).n_atoms != topo.n_atoms:
        raise BackmapError(f"--topology has {load_topology(r.topology).n_atoms} particles, the model's system "
                           f"{topo.n_atoms}", source=r.topology)
    idx = select_frames(r.frames, [], count_frames(r.input), str(r.input))
    if r.ibi_rounds and (r.flat_bottom is None or r.temperature is None or r.ibi is not None):
        raise BackmapError("--ibi-rounds fits tables to --flat-bottom's target at --temperature (both needed; "
                           "not with --ibi)")

    def target():
        tidx = select_frames(r.target_frames, [], count_frames(r.flat_bottom), str(r.flat_bottom))
        return ((f.positions, f.dimensions) for f in read_frames(r.flat_bottom, topo.n_atoms, tidx,
                                                                 expect="model topology"))

    update: dict = {"energy": False, "ibi": read_tables(r.ibi) if r.ibi is not None else None}
    if r.flat_bottom is not None:
        update["flat_bottom"] = FlatBottomLimits.from_frames(topo, target(), source=str(r.flat_bottom),
                                                             quantile=r.quantile)
    settings = r.sampling.model_copy(update=update)
    loaded.generator.for_inference(settings.generator_params, where="--generator-param")  # refused here, early
    if r.ibi_rounds:
        tables = fit_ibi(loaded, cg_top, r.input, IBITables(temperature=r.temperature, iterations=r.ibi_rounds,
                                                            fit_frames=r.ibi_frames),
                         target(), r.scheme, settings, seed=r.seed, where="backmap morph")
        write_tables(tables, _ibi_tables_of(r.out))
        settings = settings.model_copy(update={"ibi": tables})
    return morph_to_files(loaded, cg_top, r.input, r.out, r.scheme, idx, settings, seed=r.seed,
                          output_topology=r.topology, cluster=r.cluster(), reads=reads)


def _ibi_tables_of(out: Path) -> Path:
    return Path(f"{out.with_suffix('')}_ibi.json")


def read_tables(path: Path) -> IBITables:
    """IBI tables as :func:`write_tables` wrote them."""
    from pydantic import ValidationError

    if not path.is_file():
        raise BackmapError("no such file", source=path)
    try:
        return IBITables.model_validate_json(path.read_text())
    except ValidationError as exc:
        raise BackmapError(f"not IBI tables: {str(exc).splitlines()[0]}", source=path) from None
