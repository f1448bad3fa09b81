"""The evaluate use case: backmapped trajectories compared with a reference, observable by
observable (``backmap evaluate``); optionally recorded on a model's card."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backmap.app.options import NonbondedOptions, Request, skip_list
from backmap.errors import BackmapError
from backmap.fields import CommaList, option
from backmap.metrics.evaluate import EvaluationSpec, run_evaluation
from backmap.system.claim import check_outputs, claim_outputs


class EvaluateRequest(NonbondedOptions, Request):
    topology: Path = option(description="AA topology (.top with parameters: energies need them).")
    reference: Path = option(description="Reference AA trajectory.")
    candidates: list[Path] = option(description="Backmapped AA trajectories to compare with the reference.",
                                    argument=True, min_length=1)
    out: Path = option(description="Output folder (metrics.json, report.md).")
    label: list[str] = option(default_factory=list, description="Name of each candidate, in order (default: file "
                                                                "names).")
    frames: str | None = option(None, "'start:stop:step' or '0,5,9' of every trajectory.")
    skip_frames: str | None = option(None, "Frames left out of every trajectory, e.g. 9,19,41.")
    mapping: list[Path] = option(default_factory=list, description="Mapping, for CG consistency.")
    cg: Path | None = option(None, "The CG input the candidates came from.")
    metrics: CommaList | None = option(None, "Comma-separated metric plugins (default: all).")
    headline: CommaList | None = option(None, "Comma-separated observables of the headline mean JSD.")
    workers: int | None = option(None, "Processes (default: the available cores).", ge=1)
    scheduler: str | None = option(None, "Run the batches on a running Dask scheduler (tcp://host:8786, a scheduler "
                                         ".json file) or a dask-jobqueue cluster (slurm, pbs, …) instead of local "
                                         "processes.")
    batch_size: int = option(6, "Frames per batch.", ge=1)
    save_samples: bool = option(False, "Also write every sample to samples.npz.")
    model_card: Path | None = option(None, "Record this evaluation on MODEL's card (a model folder or run directory "
                                           "that made the candidates), replacing its earlier entry for the same "
                                           "reference file.", metavar="MODEL")
    dt: list[str] = option(default_factory=list, metavar="[LABEL=]PS",
                           description="Time between consecutive frames of the files (ps) for the dynamics metrics, "
                                       "instead of the frame times they store; LABEL=PS for one trajectory "
                                       "('reference' or a candidate label). With --frames a:b:s the frames used are "
                                       "s × dt apart.")


@dataclass
class Evaluation:
    """The headline (mean JSD per candidate over the headline observables, and the noise floor),
    the full result as written to ``metrics.json``, and where it went."""

    headline: dict[str, float]
    noise_floor: float
    observables: list[str]
    seconds: float
    out: Path
    result: dict[str, Any]
    card: Path | None = None


def evaluate_candidates(request: EvaluateRequest) -> Evaluation:
    r = request
    check_outputs(r.written_paths(), r.read_paths(), "evaluate", folders=("--out",))
    if r.out.exists() and not r.out.is_dir():
        raise BackmapError("--out is an existing file; evaluate writes a folder (metrics.json, report.md)",
                           source=r.out)
    with claim_outputs(r.written_paths(), r.read_paths(), "evaluate", folders=("--out",)):
        return _evaluate(r)


def _evaluate(r: EvaluateRequest) -> Evaluation:
    spec = EvaluationSpec(
        topology=r.topology, reference=r.reference, candidates=list(r.candidates), out=r.out,
        labels=list(r.label) or None, frames=r.frames, skip_frames=skip_list(r.skip_frames), mapping=list(r.mapping),
        cg=r.cg, settings=r.nonbonded(), metrics=r.metrics or None, headline=r.headline or None, workers=r.workers,
        batch_size=r.batch_size, save_samples=r.save_samples, scheduler=r.scheduler, dt=time_steps(r.dt))
    card_folder = card_folder_of(r.model_card) if r.model_card is not None else None  # refused before the work
    result = run_evaluation(spec)
    head = result["summary"]["mean_jsd_headline"]
    done = Evaluation(dict(head["candidates"]), head["noise_floor"], list(head["observables"]),
                      result["timing"]["total_s"], r.out, result)
    if card_folder is not None:
        from backmap.engine.model_card import evaluation_entry, record_evaluation

        command = (f"backmap evaluate --reference {r.reference.name} " + " ".join(Path(c).name for c in r.candidates)
                   + (f" --headline {','.join(r.headline)}" if r.headline else ""))
        record_evaluation(card_folder, evaluation_entry(result, r.reference, command))
        done.card = card_folder / "card.json"
    return done


def time_steps(values: list[str]) -> float | dict[str, float] | None:
    """``--dt 2`` (all trajectories) or ``--dt reference=1 --dt CG=10`` (``*`` = the unnamed ones)."""
    if not values:
        return None
    out: dict[str, float] = {}
    for v in values:
        label, _, number = v.rpartition("=")
        try:
            value = float(number)
        except ValueError:
            raise BackmapError(f"--dt: cannot parse {v!r}; give ps, or LABEL=ps") from None
        if not value > 0:
            raise BackmapError(f"--dt: {v!r}: the time step must be positive")
        out[label.strip() or "*"] = value
    return out["*"] if list(out) == ["*"] else out


def card_folder_of(model: Path) -> Path:
    """The folder of a model whose card may be written: a model folder or run directory, not an
    archive (read-only) nor a registered name (shipped with a package)."""
    from backmap.engine.models import model_directory

    if not Path(model).exists():
        raise BackmapError("--model-card takes a model folder or run directory (a registered model's card is "
                           "kept by its package: copy the model to record on its card)", source=model)
    if Path(model).suffix.lower() == ".bmz":
        raise BackmapError("--model-card takes a model folder, not an archive (unpack it with `backmap export-model "
                           "ARCHIVE --out FOLDER`)", source=model)
    directory = model_directory(model)
    if not os.access(directory, os.W_OK):
        raise BackmapError("--model-card: the model folder is not writable", source=model)
    return directory
