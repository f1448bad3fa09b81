"""Checks of a recipe's inputs that need no heavy work: files open and parse, atom counts agree,
frame numbers exist, CG beads come in the mapping's order.

``backmap check`` runs them so that it says "ok" only for a recipe ``backmap run`` will not reject
at once, and ``backmap run`` runs them before its first step so that a broken recipe writes
nothing. Every problem is reported (one line each), not only the first.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from backmap.engine.recipe import OUTPUT_PREFIX, WORKDIR_PREFIX, Recipe, ValidatedStep, recipe_input_files
from backmap.errors import BackmapError
from backmap.system.mapping import CGTopology

#: step name → (parameter, system it belongs to, whether the step's ``frames`` select from it) of
#: the step's input files; ``aa`` files must match the topology's atoms, ``cg`` files the mapping's
#: beads. Step parameters are read by name, so the core does not import the step plugins.
STEP_INPUTS: dict[str, tuple[tuple[str, str, bool], ...]] = {
    "map": (("trajectory", "aa", True),),
    "backmap": (("cg", "cg", True), ("stereo_reference", "aa", False)),
    "evaluate": (("reference", "aa", True), ("candidates", "aa", True), ("cg", "cg", True)),
    "refine": (("aa", "aa", True), ("cg", "cg", True)),
    "morph": (("input", "aa", True),),  # the top-down structures are at the system's ("AA") resolution
}

#: width of the atom-name field of the formats whose names are compared with the mapping's beads
_NAME_WIDTH = {".gro": 5, ".pdb": 4}


def _trajectory_info(path: Path) -> tuple[int, int]:
    from backmap.system.io import trajectory_info

    return trajectory_info(path)  # a cut-off .gro is refused there (check_gro_complete)


def check_bead_names(path: str | Path, cg_topology: CGTopology) -> None:
    """Refuse a CG file whose bead names contradict the mapping's bead order.

    Beads are read by position, so a file with two beads swapped would be backmapped without
    complaint, atoms far off; ``.gro`` and ``.pdb`` files carry names that reveal it. Only the
    names are read (an MDAnalysis Universe, no coordinates are used). Other formats pass."""
    import MDAnalysis as mda

    path = Path(path)
    width = _NAME_WIDTH.get(path.suffix.lower())
    if width is None:
        return
    if path.suffix.lower() == ".gro":
        from backmap.system.io import check_gro_complete

        check_gro_complete(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = np.asarray(mda.Universe(str(path), to_guess=()).atoms.names, str)
    except Exception as exc:  # MDAnalysis raises many types for corrupt files
        raise BackmapError(f"cannot read the bead names: {exc}", source=path) from exc
    expected = np.array([str(n)[:width].strip() for n in cg_topology.bead_names])
    if len(found) != len(expected):
        raise BackmapError(f"{len(found)} beads in the file but {len(expected)} in the CG system of the mapping",
                           source=path)
    differ = np.flatnonzero(np.char.strip(found) != expected)
    if len(differ):
        i = int(differ[0])
        raise BackmapError(f"bead {i} is named {str(found[i])!r} but the mapping expects {str(expected[i])!r} there "
                           f"({len(differ)} beads differ): the beads are not in the mapping's order", source=path)


def _frames_in_range(spec: str | None, skip: Sequence[int], n_frames: int, path: Path | None = None) -> np.ndarray:
    """The selected frames; an unparsable or out-of-range selection is an error naming ``path``
    (the recipe key is added by the caller)."""
    from backmap.system.pairs import select_frames

    try:
        return select_frames(spec, list(skip), n_frames, "")
    except BackmapError as exc:
        message = str(exc).removeprefix(": ").removeprefix("frames: ")
        raise BackmapError(message, source=path) from None


def _input_files(value: Any) -> list[tuple[str, Path]]:
    """(key suffix, path) of a step parameter that holds files: a path, a list or a label mapping;
    paths an earlier step of the run writes (``workdir:``, ``output:``) are not there yet."""
    if value is None:
        return []
    items: Iterable[tuple[str, Any]] = (
        value.items() if isinstance(value, dict) else
        ((f"[{i}]", v) for i, v in enumerate(value)) if isinstance(value, list) else [("", value)])
    return [(suffix if suffix.startswith("[") or not suffix else f".{suffix}", Path(v)) for suffix, v in items
            if not str(v).startswith((WORKDIR_PREFIX, OUTPUT_PREFIX))]


def check_recipe(recipe: Recipe, steps: Sequence[ValidatedStep], only: Sequence[str] | None = None,
                 workdir: Path | None = None) -> None:
    """Check what ``steps`` of ``recipe`` (those named in ``only``, as ``backmap run --steps``)
    read before they run, and that no step writes onto a file the recipe reads (in ``workdir``,
    default the recipe's); raise one :class:`BackmapError` with a line ``recipe.yaml: key: message``
    per problem."""
    from backmap.engine.loaders import load_mapping, load_topology

    source = recipe.path.name if recipe.path else "recipe"
    problems: list[str] = []

    def report(key: str, exc: BackmapError | str) -> None:
        problems.extend(f"{source}: {key}: {line}" for line in str(exc).splitlines())

    def check_file(key: str, frames_key: str, path: Path, system: str, n_expected: int | None,
                   cg: CGTopology | None, frames: str | None = None, skip: Sequence[int] = ()) -> None:
        try:
            n_atoms, n_frames = _trajectory_info(path)
        except BackmapError as exc:
            return report(key, exc)
        what = "atoms in the topology" if system == "aa" else "beads in the CG system of the mapping"
        if n_expected is not None and n_atoms != n_expected:
            return report(key, f"{path}: {n_atoms} atoms in the file but {n_expected} {what}")
        if n_frames == 0:
            return report(key, f"{path}: the file has no frames")
        try:
            _frames_in_range(frames, skip, n_frames, path)
        except BackmapError as exc:
            return report(frames_key, exc)
        if cg is not None:
            try:
                check_bead_names(path, cg)
            except BackmapError as exc:
                report(key, exc)

    topology = cg_top = None
    try:
        topology = load_topology(recipe.system.topology)
    except BackmapError as exc:
        report("system.topology", exc)
    if topology is not None:
        try:
            if recipe.system.bottleneck is not None:
                from backmap.system.bottleneck import bottleneck_mapping

                cg_top = bottleneck_mapping(topology, recipe.system.bottleneck).cg_topology(topology)
            else:
                cg_top = load_mapping(recipe.system.mappings, topology).cg_topology(topology)
        except BackmapError as exc:
            report("system.mapping", exc)
    n_atoms = topology.n_atoms if topology is not None else None
    n_beads = cg_top.n_beads if cg_top is not None else None

    chosen = [(i, s) for i, s in enumerate(steps) if not only or s.name in only]
    names = {s.name for _, s in chosen}
    data = recipe.data
    if data is None and "prepare" in names and not recipe.training_systems:
        report("data", "the prepare step needs a 'data' section (or 'training_systems')")
    uses_data = "prepare" in names or any(s.name == "map" and getattr(s.params, "trajectory", None) is None
                                          for _, s in chosen)
    if data is not None and uses_data and not recipe.training_systems:
        _check_data(recipe, report, n_atoms)
    if "prepare" in names:
        for i, ts in enumerate(recipe.training_systems):  # each its topology, mapping and data
            key = f"training_systems[{i}]"
            try:
                ts_top = load_topology(ts.system.topology)
                load_mapping(ts.system.mappings, ts_top).cg_topology(ts_top)
            except BackmapError as exc:
                report(f"{key}.system", exc)
                continue
            sub = recipe.model_copy(update={"system": ts.system, "data": ts.data, "training_systems": []})
            _check_data(sub, lambda k, exc, key=key: report(f"{key}.{k}", exc), ts_top.n_atoms)
    for i, step in chosen:
        key = f"steps[{i}].{step.name}"
        # a CG file paired with a mapping of its own (evaluate's 'mapping') is checked when the step runs
        cg = cg_top if getattr(step.params, "mapping", None) is None else None
        frames = getattr(step.params, "frames", None), getattr(step.params, "skip_frames", ())
        for param, system, framed in STEP_INPUTS.get(step.name, ()):
            n_expected = n_atoms if system == "aa" else n_beads if cg is not None else None
            for suffix, path in _input_files(getattr(step.params, param, None)):
                check_file(f"{key}.{param}{suffix}", f"{key}.frames", path, system, n_expected,
                           cg if system == "cg" else None, *(frames if framed else (None, ())))
    for key, message in _written_inputs(recipe, steps, Path(workdir or recipe.default_workdir())):
        report(key, message)
    if problems:
        raise BackmapError("\n".join(problems))


def _written_inputs(recipe: Recipe, steps: Sequence[ValidatedStep], workdir: Path) -> Iterator[tuple[str, str]]:
    """(key, why) for every step whose output (``out``: a file, and the files written beside it,
    named after it; or a folder) is a file the recipe reads."""
    inputs = [(label, p.resolve()) for label, p in recipe_input_files(recipe, steps)]
    for step in steps:
        out = getattr(step.params, "out", None)
        if not isinstance(out, (str, Path)):
            continue
        written = (workdir / out).resolve()
        for label, p in inputs:
            beside = p.parent == written.parent and p.name.startswith((f"{written.stem}.", f"{written.stem}_"))
            if p == written or written in p.parents or beside:
                what = "writes" if p == written else "writes into" if written in p.parents else "writes beside"
                yield f"steps.{step.name}.out", f"{what} {written}, which holds {label} ({p}); choose another out"


def _check_data(recipe: Recipe, report, n_atoms: int | None) -> None:
    """The training data: the trajectory matches the topology, and the selected frames, the frames
    left out and the test frames exist (a test frame outside the selection would silently shrink
    the test set, or leave the ``backmap`` step without test frames)."""
    from backmap.system.pairs import pair_folder_frames

    data = recipe.data
    assert data is not None
    try:
        if data.trajectory is not None:
            n, n_frames = _trajectory_info(data.trajectory)
            if n_atoms is not None and n != n_atoms:
                return report("data.trajectory", f"{data.trajectory}: {n} atoms in the trajectory but {n_atoms} "
                                                 f"in the topology {recipe.system.topology.name}")
            if n_frames == 0:
                return report("data.trajectory", f"{data.trajectory}: the trajectory has no frames")
            available = np.arange(n_frames)
        else:
            available = np.array(pair_folder_frames(data.pairs))
    except BackmapError as exc:
        return report("data.trajectory" if data.trajectory is not None else "data.pairs", exc)
    what = f"the trajectory has {len(available)} frames" if data.trajectory is not None else \
        "no such pair in the folder"
    outside = [f for f in data.skip_frames if f not in available]
    if outside:
        report("data.skip_frames", f"frame {outside[0]} does not exist ({what})")
    if data.trajectory is not None:
        try:
            selected = _frames_in_range(data.frames, data.skip_frames, len(available))
        except BackmapError as exc:
            return report("data.frames", exc)
    else:
        selected = available[~np.isin(available, data.skip_frames)]
    if len(selected) == 0:
        return report("data", "no frames selected")
    for f in data.split.test_frames or []:
        if f not in available:
            return report("data.split.test_frames", f"frame {f} does not exist ({what})")
        if f not in selected:
            return report("data.split.test_frames", f"frame {f} is not among the selected frames "
                                                    "(data.frames, data.skip_frames)")


def placement_order_changes(given, trained) -> list[str]:
    """Molecule types whose placement order differs between a mapping given at apply time and the
    model's own (both :class:`backmap.system.mapping.Mapping`): a generator is trained on the
    environments its own order makes, and another order shows it environments it never saw
    (sPS, rings-first model applied beads-last-methyl: stereocentres kept 0.89 instead of 0.99)."""
    changed = []
    for name, mm in given.molecules.items():
        other = trained.molecules.get(name)
        if other is not None and mm.order != other.order:
            changed.append(name)
    return changed
