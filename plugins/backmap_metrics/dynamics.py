"""Dynamics (thesis ch. 8): metrics that need an ordered trajectory and its time step τ.

- ``velocities``: |v_i| = |s_i(t) − s_i(t − τ)| / τ between consecutive frames (eq. 8.9), per
  element or atom type — a backmapping made frame by frame loses the coherence between frames and
  shifts these to larger values;
- ``msm``: implied timescales of a Markov state model of the backbone (φ, ψ), states fitted on the
  reference and reused for the candidates.

τ is each trajectory's own (:mod:`backmap.metrics.timing`); a trajectory without one (a single
frame, frames not equally spaced, no frame times and no ``--dt``) is left out with a note.
"""
from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from backmap.api import Metric
from backmap.api.metrics import (
    Analysis,
    Binning,
    EvalContext,
    FrameBatch,
    Observable,
    assign_states,
    dihedral_features,
    fit_states,
    geometry,
    have_deeptime,
    implied_timescales,
    lag_steps,
    terms,
)
from backmap.api.system import internal_displacements

REFERENCE = "reference"


def _untimed_notes(context: EvalContext, what: str) -> list[str]:
    return [f"{label} not {what} — {ts.reason}" for label, ts in context.time_steps.items()
            if label != REFERENCE and ts.tau is None]


class VelocityParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    group: Literal["element", "type"] = Field("element", description="one distribution per element (default: "
                                              "robust, comparable across force fields) or per atom type")
    n_bins: int = Field(100, ge=2, description="bins over the reference range")
    widen: float = Field(0.2, ge=0, description="the range is the reference's, widened by this × its span per side")
    internal: bool = Field(True, description="with a mapping, also the speeds with each molecule's rigid motion "
                                             "(its CG beads superimposed between the frames) taken out")


class Velocities(Metric):
    """Speeds between consecutive frames of each trajectory at its own τ. Displacements are each
    atom's shortest periodic image, so crossing the box boundary never counts as motion."""

    name = "velocities"
    summary = "|s(t) − s(t−τ)|/τ between consecutive frames per element (thesis eq. 8.9); needs a trajectory"
    Params = VelocityParams

    def prepare(self, context: EvalContext) -> list[Observable]:
        ref = context.time_steps.get(REFERENCE)
        if ref is None or ref.tau is None:
            self.skipped = f"the reference has no time step ({ref.reason if ref else 'not given'})"
            return []
        context.need_frame_pairs()
        self.notes = _untimed_notes(context, "compared")
        names = context.elements if self.params.group == "element" else context.atom_types
        self.groups = {g: np.flatnonzero(names == g) for g in sorted(set(names.tolist()))}
        binning = Binning(n_bins=self.params.n_bins, widen=self.params.widen)
        out = [Observable(f"velocity:{g}", "distribution", "velocity", "nm/ps", binning, label=f"|v| {g} (nm/ps)",
                          description=f"|s(t) − s(t−τ)|/τ of {len(idx)} {g} atoms per frame pair, τ the "
                                      "trajectory's frame spacing")
               for g, idx in self.groups.items()]
        self.internal = self.params.internal and context.cg_topology is not None
        if self.internal:
            out += [Observable(f"internal_velocity:{g}", "distribution", "velocity", "nm/ps", binning,
                               label=f"|v| {g} inside the CG frame (nm/ps)",
                               description=f"as velocity:{g}, each molecule's rigid motion removed (its mapped "
                                           "beads superimposed between the frames)")
                    for g in self.groups]
        return out

    def samples(self, batch: FrameBatch, context: EvalContext) -> dict[str, np.ndarray]:
        if batch.time_step is None:
            return {}
        d = batch.displacements()  # (pairs, N, 3)
        speed = np.linalg.norm(d, axis=-1) / batch.time_step
        out = {f"velocity:{g}": speed[:, idx] for g, idx in self.groups.items()}
        if self.internal and len(d):
            after = batch.whole[len(batch) - len(d):]
            inner = np.stack([internal_displacements(a - step, a, context.cg_topology) for a, step in zip(after, d)])
            speed = np.linalg.norm(inner, axis=-1) / batch.time_step
            out.update({f"internal_velocity:{g}": speed[:, idx] for g, idx in self.groups.items()})
        return out


class MSMParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_states: int = Field(100, ge=2, description="k-means centres, fitted on the reference (thesis: ~100)")
    lag: float = Field(5.0, gt=0, description="lag time (ps); all trajectories use the multiple of the coarsest τ "
                                              "nearest it")
    timescales: int = Field(3, ge=1, description="implied timescales compared")
    n_bootstrap: int = Field(100, ge=2, description="block-bootstrap resamplings for the error bars")
    n_blocks: int = Field(10, ge=2, description="contiguous blocks per trajectory for the bootstrap")
    confidence: float = Field(0.95, gt=0, lt=1, description="error bars: estimate ± z σ at this level")
    rescale: bool = Field(False, description="also rescale each candidate's timescales so that its slowest equals "
                                             "the reference's (CG dynamics are faster); the checks then use them")
    seed: int = Field(0, ge=0, description="k-means++ and bootstrap seed")


class MarkovTimescales(Metric):
    """Markov state model of the backbone (φ, ψ) of every residue that has both: (cos, sin) features,
    k-means states of the reference, implied timescales t_i = −τ_lag / ln|λ_i| with block-bootstrap
    error bars for the reference and each candidate, their ratios, and whether they lie within the
    reference's error bars. Needs deeptime (``pip install 'backmap[dynamics]'``)."""

    name = "msm"
    summary = "MSM implied timescales of the backbone (φ, ψ) (deeptime; k-means of the reference); needs a trajectory"
    Params = MSMParams

    def prepare(self, context: EvalContext) -> list[Observable]:
        bb = terms.peptide_backbone(context.topology)
        both = bb[(bb[:, 0] >= 0) & (bb[:, 4] >= 0)]
        self.phi, self.psi = both[:, :4], both[:, 1:]
        if not len(both):
            self.skipped = "no residue with both φ and ψ (peptide backbone)"
            return []
        if not have_deeptime():
            self.skipped = "deeptime is not installed (pip install 'backmap[dynamics]')"
            return []
        ref = context.time_steps.get(REFERENCE)
        if ref is None or ref.tau is None:
            self.skipped = f"the reference has no time step ({ref.reason if ref else 'not given'})"
            return []
        need = self._too_few(ref.frames, ref.tau)
        if need:
            self.skipped = f"the reference has {ref.frames} frames; {need}"
            return []
        self.notes = _untimed_notes(context, "modelled")
        return [Observable("msm:phi_psi", "series", "msm", "deg", label="(φ, ψ) per frame",
                           description=f"backbone dihedrals of {len(both)} residue(s), the MSM's features")]

    def _too_few(self, frames: int, tau: float, lag: float | None = None) -> str:
        """Why ``frames`` frames τ apart cannot make a model at ``lag`` ps ('' when they can)."""
        need = max(self.params.n_states, 8 * lag_steps(self.params.lag if lag is None else lag, tau))
        return f"the MSM needs at least {need} (n_states, and 8 lags)" if frames < need else ""

    def samples(self, batch: FrameBatch, context: EvalContext) -> dict[str, np.ndarray]:
        x = batch.whole
        return {"msm:phi_psi": np.stack([geometry.dihedrals(x, self.phi), geometry.dihedrals(x, self.psi)], -1)}

    def analyse(self, samples: dict[str, dict[str, Any]], context: EvalContext) -> Analysis:
        p = self.params
        states = fit_states(dihedral_features(samples[REFERENCE]["msm:phi_psi"]), p.n_states, p.seed)
        taus = {lab: context.time_steps[lab].tau for lab in samples if context.time_steps[lab].tau is not None}
        # one lag for all (timescales change with the lag until they converge): the multiple of the
        # coarsest τ nearest the requested lag
        coarsest = max(taus.values())
        lag = lag_steps(p.lag, coarsest) * coarsest
        fitted, notes = {}, []
        for label, tau in taus.items():
            angles = samples[label]["msm:phi_psi"]
            short = self._too_few(len(angles), tau, lag)
            if short:
                notes.append(f"{label} not modelled — {len(angles)} frames; {short}")
                continue
            dtraj = assign_states(states, dihedral_features(angles))
            fitted[label] = its = implied_timescales(dtraj, tau, lag, p.timescales, p.n_bootstrap, p.n_blocks,
                                                     p.confidence, p.seed)
            if abs(its.lag - lag) > 1e-6 * lag:
                notes.append(f"{label}: lag {its.lag:g} ps, not {lag:g} ps (τ = {tau:g} ps does not divide it)")
        title = "Markov state model: implied timescales"
        if REFERENCE not in fitted:  # the common lag is too long for it
            return Analysis(title, {"skipped": notes[0]}, [notes[0]], notes=notes)
        ref = fitted[REFERENCE]
        result: dict[str, Any] = {"n_states": int(states.n_clusters), "lag_ps": lag, "confidence": p.confidence,
                                  "features": f"cos, sin of φ, ψ of {len(self.phi)} residue(s)",
                                  "reference": ref.as_dict(), "candidates": {}}
        for label, its in fitted.items():
            if label == REFERENCE:
                continue
            with np.errstate(all="ignore"):
                factor = float(ref.values[0] / its.values[0])
                checked = its.values * factor if p.rescale else its.values
                row = {**its.as_dict(), "ratio": (its.values / ref.values).tolist(),
                       "slowest_speedup": factor,  # reference t1 / candidate t1: > 1 when the candidate is faster
                       "within_reference_error": ((checked >= ref.lower) & (checked <= ref.upper)).tolist()}
            if p.rescale:
                row["rescaled"] = checked.tolist()
            result["candidates"][label] = row
        return Analysis(title, result, self._table(fitted, result),
                        {"msm_timescales": self._figure(fitted, result)}, notes)

    def _table(self, fitted: dict, result: dict) -> list[str]:
        p = self.params
        k = p.timescales
        ref = fitted[REFERENCE]
        fmt = lambda v: "–" if not np.isfinite(v) else f"{v:.3g}"  # noqa: E731
        lines = [f"{result['n_states']} k-means states of the reference's {result['features']}; reversible "
                 f"maximum-likelihood MSM at lag {result['lag_ps']:g} ps; ± {p.confidence:.0%} error bars from a "
                 f"bootstrap over {ref.n_blocks} trajectory blocks. Timescales in ps.", "",
                 "| | τ (ps) | lag (ps) | active states | " + " | ".join(f"t{i + 1}" for i in range(k))
                 + " | ratio to reference | within reference error |",
                 "|---" * (k + 6) + "|"]
        for label, its in fitted.items():
            cells = [f"{fmt(v)} ± {fmt(z)}{'' if ok else ' †'}"
                     for v, z, ok in zip(its.values, its.upper - its.values, its.resolved)]
            row = result["candidates"].get(label)
            ratio = "–" if row is None else ", ".join(fmt(r) for r in row["ratio"])
            within = "–" if row is None else ", ".join("yes" if w else "no" for w in row["within_reference_error"])
            lines.append(f"| {label} | {its.tau:g} | {its.lag:g} | {its.n_states} | " + " | ".join(cells)
                         + f" | {ratio} | {within} |")
        lines += ["", "† shorter than the lag time: not resolved by the model (a trajectory without memory, e.g. "
                      "frames in random order, gives timescales of about the lag too)."]
        if p.rescale:
            lines += ["", "Candidates rescaled so that t1 equals the reference's (the within-error check uses the "
                          "rescaled values): " + ", ".join(f"{lab} × {fmt(r['slowest_speedup'])}"
                                                           for lab, r in result["candidates"].items())]
        return lines

    def _figure(self, fitted: dict, result: dict):
        from backmap.api.metrics import COLORS, REFERENCE_COLOR, _plt

        plt = _plt()  # selects the Agg backend before anything else of matplotlib is imported
        from matplotlib.ticker import ScalarFormatter

        fig, ax = plt.subplots(figsize=(4.6, 3.4))
        k = self.params.timescales
        process = np.arange(1, k + 1)
        for n, (label, its) in enumerate(fitted.items()):
            color = REFERENCE_COLOR if label == REFERENCE else COLORS[(n - 1) % len(COLORS)]
            shift = 0.08 * (n - (len(fitted) - 1) / 2)
            err = np.nan_to_num(np.stack([its.values - its.lower, its.upper - its.values]))
            ax.errorbar(process + shift, its.values, yerr=err, fmt="o", color=color, capsize=3,
                        label=f"{label} (τ {its.tau:g} ps)")
            if label != REFERENCE and self.params.rescale:
                ax.plot(process + shift, result["candidates"][label]["rescaled"], "o", mfc="none", color=color,
                        label=f"{label} rescaled")
        ref = fitted[REFERENCE]
        ax.axhline(ref.lag, color="0.3", ls="--", lw=0.8, label=f"lag {ref.lag:g} ps")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(ScalarFormatter())
        ax.set_xticks(process)
        ax.set_xlabel("process i", fontsize=8)
        ax.set_ylabel("implied timescale t_i (ps)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, frameon=False)
        fig.tight_layout()
        return fig
