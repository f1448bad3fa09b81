"""How the command line shows the use cases' typed results: one line, a table, or JSON."""
from __future__ import annotations

import json
import shutil
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from backmap.metrics.verdict import verdict
from backmap.references import THESIS_NOTE


def show_backmapped(result: Any) -> None:
    """The line ``backmap apply`` ends with: files, frames, speed, and what the moves did."""
    kept = ""
    if result.stereocentres_kept is not None:
        kept += (f"; stereocentres kept {result.stereocentres_kept:.4f} (every neighbour triple signed as in the "
                 "reference)")
    if result.broken_bonds is not None:
        kept += f"; broken bonds {result.broken_bonds:.4f}"
    if (p := result.cg_projection) is not None:
        kept += f"; CG RMSD {p.cg_rmsd_before:.4f} → {p.cg_rmsd_after:.1e} nm by the CG projection"
    if (g := result.guidance) is not None:
        kept += (f"; energy guidance lowered {g.placements_polished} placements' energies by "
                 f"{g.mean_energy_drop:.1f} kJ/mol on average")
    for name, summary in (result.moves or {}).items():
        kept += f"; move {name}: " + ", ".join(f"{k} {v:g}" for k, v in summary.items() if k != "frames")
    files = result.files
    beside = ", ".join(str(f) for f in (files.structure, files.topology, files.unrefined) if f is not None)
    click.echo(f"wrote {files.aa} ({beside}): {result.frames} frames of {result.atoms} atoms "
               f"({result.seconds_per_frame:.1f} s/frame){kept}")


def show_energies(result: Any, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=1))
        return
    s = result.settings
    table = Table("frame", "time (ps)", *result.terms, box=None,
                  title=f"energies (kJ/mol), {s.coulomb}, rc {s.rvdw}/{s.rcoulomb} nm")
    for index, time, energies in result.frames:
        table.add_row(str(index), f"{time:g}", *(f"{energies[t]:.3f}" for t in result.terms))
    Console(width=220).print(table)
    if result.bead_forces:
        t2 = Table("bead type", "mean |F| (kJ/mol/nm)", "mean F_x", box=None, title="AA forces summed per bead")
        for t, v in result.bead_forces.items():
            t2.add_row(t, f"{v['mean_abs_force']:.2f}", f"{v['mean_force_x']:.3f}")
        Console(width=220).print(t2)
    if result.request.forces_out:
        click.echo(f"wrote {result.request.forces_out}: CG positions and bead forces")


def show_evaluation(ev: Any) -> None:
    table = Table("candidate", f"mean JSD ({len(ev.observables)} headline observables)", box=None)
    for label, value in ev.headline.items():
        table.add_row(label, f"{value:.4f}")
    table.add_row("noise floor", f"{ev.noise_floor:.4f}")
    Console().print(table)
    click.echo(verdict({"candidates": ev.headline, "noise_floor": ev.noise_floor}))
    click.echo(f"wrote {ev.out / 'metrics.json'} and {ev.out / 'report.md'} ({ev.seconds:.1f} s)")
    if ev.card is not None:
        click.echo(f"recorded on the model card {ev.card}")


def show_assessment(result: dict[str, Any], out: Any) -> None:
    table = Table("rank", "CG set", "force JSD", "± (halves)", "CG RMSD (nm)", "CG-level JSD", box=None,
                  title="CG models by the JSD of AA forces summed per bead")
    for r in result["ranking"]:
        row = result["sets"][r["set"]]
        table.add_row(str(r["rank"]), r["set"], f"{r['force_jsd']:.4f}", f"{r['halves_sd']:.4f}",
                      f"{row.get('cg_rmsd') or float('nan'):.5f}", f"{row.get('cg_level_mean_jsd', float('nan')):.4f}")
    s = result["summary"]
    table.add_row("", "in-distribution", f"{s['in_distribution_force_jsd']:.4f}", "", "", "")
    Console().print(table)
    click.echo(f"wrote {out / 'metrics.json'} and {out / 'report.md'} ({result['timing']['total_s']:.0f} s)")


def show_models(rows: list[dict[str, Any]], as_json: bool) -> None:
    """One line per model; the columns that identify a model are never cut, the summary is."""
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    cells = []
    for r in rows:
        jsd = ", ".join(f"{k.split(' (')[0]} {v:.3g}" for k, v in (r.get("mean JSD") or {}).items())
        cells.append([r["name"], r.get("generator", "unreadable"), f"{r['pack']} ({r['package']})",
                      f"{jsd} (floor {r['noise floor']:.2g})" if jsd else "—", r.get("summary") or r.get("error", "")])
    head = ["name", "generator", "pack (package)", "mean JSD (card)", "summary"]
    widths = [max(len(r[i]) for r in [head, *cells]) for i in range(4)]
    room = max(20, shutil.get_terminal_size((120, 24)).columns - sum(widths) - 8)
    for r in [head, *cells]:
        summary = r[4] if len(r[4]) <= room else r[4][:room - 1] + "…"
        click.echo("  ".join(f"{v:<{w}}" for v, w in zip(r, widths)) + "  " + summary)


def show_plugins(registry: Any, kind: str | None) -> None:
    table = Table("kind", "name", "package", "version", "module", "summary", box=None)
    for info in registry:
        if kind is None or info.kind == kind:
            table.add_row(info.kind, info.name, info.package, info.version, info.module, info.cls.summary)
    Console(width=200).print(table)
    click.echo(THESIS_NOTE)
