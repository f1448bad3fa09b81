"""The evaluation report: Markdown tables (candidates side by side, best per row in bold) and
figures overlaying reference and candidates, one panel per observable, one figure per family."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from backmap.system.io import atomic_path
from backmap.metrics.compare import Compared
from backmap.metrics.spec import Analysis
from backmap.metrics.verdict import verdict

FAMILY_TITLES = {"bond": "Bond lengths", "angle": "Angles", "dihedral": "Proper dihedrals",
                 "improper": "Improper dihedrals", "rama": "Backbone (φ, ψ)", "energy": "Energies per molecule",
                 "rdf": "Radial distribution functions (bonded neighbours excluded)",
                 "velocity": "Speeds between consecutive frames, |s(t) − s(t − τ)| / τ"}
REFERENCE_COLOR = "0.55"
COLORS = ["tab:blue", "tab:red", "tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive"]


def _fmt(v: Any, digits: int = 4) -> str:
    """``digits`` significant digits; exponent form for tiny or huge values."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, (float, np.floating)):
        if v == 0:
            return "0"
        if abs(v) < 1e-3 or abs(v) >= 1e6:
            return f"{v:.{max(1, digits - 2)}e}"
        return f"{v:.{digits}g}"
    return str(v)


def _best(values: list[float], lower: bool = True) -> list[bool]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if len(finite) < 2:
        return [False] * len(values)
    target = min(finite) if lower else max(finite)
    return [v is not None and math.isfinite(v) and abs(v - target) <= 1e-12 for v in values]


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _bold(text: str, on: bool) -> str:
    return f"**{text}**" if on else text


def write_report(out: Path, result: dict[str, Any], compared: list[Compared], labels: list[str],
                 analyses: dict[str, Analysis] | None = None) -> Path:
    """Write ``out/report.md`` and ``out/figures/*.png``; returns the report path. ``analyses``
    (metric name → its :class:`Analysis`) get a section each, after the tables."""
    figures = _figures(out / "figures", compared, labels)
    lines = [f"# Evaluation{': ' + result['title'] if result.get('title') else ''}", ""]
    if "mean_jsd_headline" in result.get("summary", {}):
        lines += [f"**{verdict(result['summary']['mean_jsd_headline'])}**", ""]
    inp = result["inputs"]
    steps = result.get("time_steps", {})

    def tau(label: str) -> str:
        ts = steps.get(label)
        if ts is None:
            return ""
        return f", τ = {ts['tau']:g} ps ({ts['source']})" if ts["tau"] is not None else f", no τ: {ts['reason']}"

    lines += [f"- topology: `{inp['topology']}`",
              f"- reference: `{inp['reference']}` ({result['frames']['reference']} frames{tau('reference')})"]
    lines += [f"- candidate **{lab}**: `{inp['candidates'][lab]}` ({result['frames'][lab]} frames{tau(lab)})"
              for lab in labels]
    if inp["skip_frames"]:
        lines.append(f"- frames left out: {', '.join(map(str, inp['skip_frames']))}")
    if inp["cg"]:
        lines.append(f"- CG input `{inp['cg']}`, mapping {', '.join(f'`{m}`' for m in inp['mapping'])}")
    s = result["settings"]
    lines += [f"- non-bonded: LJ cut-off {s['rvdw']} nm ({s['vdw_modifier']}), Coulomb {s['coulomb']} "
              f"{s['rcoulomb']} nm, ε_r {s['epsilon_r']}, ε_rf {s['epsilon_rf']}", ""]
    lines += _divergence_table(result, compared, labels)
    lines += _score_table(compared, labels)
    lines += _means_table(compared, labels)
    for a in (analyses or {}).values():
        lines += [f"## {a.title}", "", *a.lines, ""]
        for stem, fig in a.figures.items():
            path = _save(fig, out / "figures" / f"{stem}.png")
            lines += [f"![{stem}](figures/{path.name})", ""]
    lines += ["## Figures", ""]
    for fam, path in figures:
        lines += [f"### {FAMILY_TITLES.get(fam, fam)}", "", f"![{fam}](figures/{path.name})", ""]
    if result["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in result["notes"]] + [""]
    lines += ["Definitions (observables, bins, divergences, clash threshold, stereo method): "
              "`docs/evaluation.md` in the backmap repository.", ""]
    path = out / "report.md"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines))
    return path


def _divergence_table(result, compared: list[Compared], labels: list[str]) -> list[str]:
    rows = [c for c in compared if c.observable.kind in ("distribution", "histogram") and "candidates" in c.result]
    if not rows:
        return []
    head = result["summary"]["mean_jsd_headline"]["observables"]
    lines = ["## Jensen–Shannon divergence (bits; 0 = identical, 1 = disjoint; best in bold)", "",
             _row(["observable", *labels, "noise floor"]), _row(["---"] * (len(labels) + 2))]
    for c in rows:
        vals = [c.result["candidates"].get(lab, {}).get("jsd") for lab in labels]
        best = _best(vals)
        mark = "" if c.observable.name in head else " ◦"
        lines.append(_row([f"`{c.observable.name}`{mark}", *[_bold(_fmt(v), b) for v, b in zip(vals, best)],
                           _fmt(c.result["noise_floor"]["jsd"])]))
    for key, title in (("mean_jsd_headline", "mean (headline)"), ("mean_jsd_all", "mean (all)")):
        m = result["summary"][key]
        vals = [m["candidates"].get(lab) for lab in labels]
        best = _best(vals)
        lines.append(_row([f"**{title}**, {len(m['observables'])} obs.",
                           *[_bold(_fmt(v), b) for v, b in zip(vals, best)], _fmt(m["noise_floor"])]))
    lines += ["", "◦ not in the headline mean. Noise floor: the reference's first half against its second "
              "half — what a perfect backmapper would score with this many frames.", ""]
    return lines


def _score_table(compared: list[Compared], labels: list[str]) -> list[str]:
    rows = [c for c in compared if c.observable.kind in ("score", "state")]
    if not rows:
        return []
    lines = ["## Scores (mean ± s.d. over frames; best candidate in bold)", "",
             _row(["", "reference", *labels]), _row(["---"] * (len(labels) + 2))]
    for c in rows:
        o = c.observable
        if o.kind == "score":
            ref = c.result.get("reference")
            cand = [c.result.get("candidates", {}).get(lab) for lab in labels]
            best = _best([x["mean"] if x else None for x in cand], lower=o.better == "lower")
            cells = [f"{_fmt(ref['mean'])} ± {_fmt(ref['std'])}" if ref else "–"]
            cells += [_bold(f"{_fmt(x['mean'])} ± {_fmt(x['std'])}", b) if x else "–" for x, b in zip(cand, best)]
            lines.append(_row([f"{o.label or o.name} ({o.unit})", *cells]))
        else:
            cand = [c.result["candidates"].get(lab) for lab in labels]
            best = _best([x["preserved"] if x else None for x in cand], lower=False)
            cells = [_bold(_fmt(x["preserved"]), b) if x else "–" for x, b in zip(cand, best)]
            lines.append(_row([f"{o.label} ({o.description})", "1", *cells]))
    return lines + [""]


def _means_table(compared: list[Compared], labels: list[str]) -> list[str]:
    rows = [c for c in compared if c.observable.kind == "distribution" and "candidates" in c.result
            and not isinstance(c.observable.binning, tuple)]
    if not rows:
        return []
    lines = ["## Means, widths and Wasserstein-1 (mean ± s.d. [W1 to the reference])", "",
             _row(["observable", "unit", "reference", *labels]), _row(["---"] * (len(labels) + 3))]
    for c in rows:
        r = c.result
        cells = [f"{_fmt(r['reference']['mean'])} ± {_fmt(r['reference']['std'])}"]
        for lab in labels:
            x = r["candidates"].get(lab)
            cells.append(f"{_fmt(x['mean'])} ± {_fmt(x['std'])} [{_fmt(x['w1'])}]" if x else "–")
        lines.append(_row([f"`{c.observable.name}`", c.observable.unit, *cells]))
    return lines + [""]


# --------------------------------------------------------------------------- figures

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    _plt().close(fig)
    return path


def _figures(folder: Path, compared: list[Compared], labels: list[str]) -> list[tuple[str, Path]]:
    out = []
    families = list(dict.fromkeys(c.observable.family for c in compared
                                  if c.observable.kind in ("distribution", "histogram") and c.densities))
    for fam in families:
        items = [c for c in compared if c.observable.family == fam and c.densities]
        maps = [c for c in items if isinstance(c.edges, tuple)]
        lines = [c for c in items if not isinstance(c.edges, tuple)]
        if lines:
            out.append((fam, _save(_panels(lines, labels), folder / f"{fam}.png")))
        for c in maps:
            name = c.observable.name.replace(":", "_")
            out.append((fam, _save(_map_figure(c, labels), folder / f"{name}.png")))
    scores = [c for c in compared if c.observable.kind in ("score", "state") and "candidates" in c.result]
    if scores:
        out.append(("scores", _save(_score_figure(scores, labels), folder / "scores.png")))
    return out


def _view(c: Compared) -> tuple[float, float]:
    """x-range that holds 99.8 % of every trajectory's mass (outliers would squash the plot)."""
    e = c.edges
    if c.observable.kind == "histogram" or c.observable.binning.periodic:
        return float(e[0]), float(e[-1])
    lo, hi = len(e) - 2, 0
    for d in c.densities.values():
        cdf = np.cumsum(d) / max(d.sum(), 1e-300)
        lo = min(lo, int(np.searchsorted(cdf, 0.001)))
        hi = max(hi, int(np.searchsorted(cdf, 0.999)))
    pad = max(2, (hi - lo) // 10)
    return float(e[max(0, lo - pad)]), float(e[min(len(e) - 1, hi + pad + 1)])


def _panels(items: list[Compared], labels: list[str]):
    plt = _plt()
    n = len(items)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), squeeze=False)
    for ax, c in zip(axes.ravel(), items):
        e = c.edges
        centres = 0.5 * (e[1:] + e[:-1])
        is_rdf = c.observable.kind == "histogram"
        scale = 1.0 if is_rdf else 1.0 / np.diff(e)  # densities per unit
        ref = c.densities["reference"] * scale
        ax.fill_between(centres, ref, step="mid", color=REFERENCE_COLOR, alpha=0.5, lw=0,
                        label=f"reference (floor {_fmt(c.result['noise_floor']['jsd'], 3)})")
        for k, lab in enumerate(labels):
            if lab in c.densities:
                j = c.result["candidates"][lab]["jsd"]
                ax.step(centres, c.densities[lab] * scale, where="mid", color=COLORS[k % len(COLORS)], lw=1.2,
                        label=f"{lab} ({_fmt(j, 3)})")
        ax.set_xlim(*_view(c))
        ax.set_title(c.observable.name, fontsize=9)
        ax.set_xlabel(c.observable.unit if not is_rdf else "r (nm)", fontsize=8)
        ax.set_ylabel("g(r)" if is_rdf else "density", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, frameon=False, title="JSD (bits)", title_fontsize=6, loc="best")
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def _map_figure(c: Compared, labels: list[str]):
    plt = _plt()
    names = ["reference"] + [lab for lab in labels if lab in c.densities]
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.2), squeeze=False)
    ex, ey = c.edges
    vmax = max(d.max() for d in c.densities.values())
    for ax, name in zip(axes[0], names):
        ax.imshow(c.densities[name].T, origin="lower", extent=(ex[0], ex[-1], ey[0], ey[-1]), cmap="viridis",
                  vmin=0, vmax=vmax, aspect="auto")
        title = name if name == "reference" else f"{name} (JSD {_fmt(c.result['candidates'][name]['jsd'], 3)})"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("φ (deg)", fontsize=8)
        ax.set_ylabel("ψ (deg)", fontsize=8)
    fig.tight_layout()
    return fig


def _score_figure(items: list[Compared], labels: list[str]):
    plt = _plt()
    fig, axes = plt.subplots(1, len(items), figsize=(3.4 * len(items), 2.8), squeeze=False)
    for ax, c in zip(axes[0], items):
        names = ["reference"] + labels
        colors = [REFERENCE_COLOR] + [COLORS[k % len(COLORS)] for k in range(len(labels))]
        if c.observable.kind == "score":
            vals = [c.result.get("reference")] + [c.result.get("candidates", {}).get(lab) for lab in labels]
            means = [v["mean"] if v else np.nan for v in vals]
            errs = [v["std"] if v else 0 for v in vals]
        else:
            means = [1.0] + [c.result["candidates"].get(lab, {}).get("preserved", np.nan) for lab in labels]
            errs = [0.0] * len(means)
        lower = [min(m, e) if np.isfinite(m) else 0 for m, e in zip(means, errs)]  # no bars below zero
        ax.bar(range(len(names)), means, yerr=[lower, errs], color=colors, capsize=3)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
        unit = "fraction preserved" if c.observable.kind == "state" else c.observable.unit
        ax.set_title(f"{c.observable.name} ({unit})", fontsize=9)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig
