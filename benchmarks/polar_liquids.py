"""Polar liquids without MD: SPC/E water and methanol backmapped by the equivariant generator, alone
and with energy guidance (Coulomb in the selection energy), against their simulations — and whether
GROMACS runs the output as it is.

For each system its recipe (recipes/water.yaml, recipes/methanol.yaml: train on 40 frames, backmap the
10 held out) runs in ``OUT/<system>``; then the first guided frame goes through ``grompp -maxwarn 0`` and
1 000 MD steps of the system's ``.mdp`` (velocities drawn at its temperature, no minimization).

    .venv/bin/python benchmarks/polar_liquids.py [--systems water,methanol] [--out runs/polar] [--ship] [--reuse]
    .venv/bin/python benchmarks/polar_liquids.py --quick    # water only, 20 iterations, 2 test frames, 100 MD steps

``--ship`` exports each trained model to ``models/<system>-equivariant`` (the shipped models) with this
evaluation on its card.

Prints one JSON line per system: the headline mean JSD per candidate and the noise floor, the JSD of
the potential energy per molecule and of the hydrogen RDFs, clashes, seconds per frame, and the
GROMACS check (warnings, finished, potential at the first and last step, highest temperature);
writes ``OUT/table.md``. Needs GROMACS (``gmx``).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _recipe_runs import BACKMAP, REPO, backmap_run, step_seconds  # noqa: E402

SYSTEMS = {"water": "tests/data/water", "methanol": "tests/data/methanol"}
CANDIDATES = ("generator", "generator + guidance")


def ship(name: str, workdir: Path, metrics: dict) -> None:
    """The run's model as the shipped ``models/<name>-equivariant``, this evaluation on its card."""
    import subprocess

    from backmap.engine.model_card import evaluation_entry, read_card, record_evaluation, write_card

    target = REPO / "models" / f"{name}-equivariant"
    if target.exists():
        shutil.rmtree(target)
    subprocess.run([BACKMAP, "export-model", str(workdir), "--out", str(target)], check=True)
    card = read_card(target)
    card["name"] = target.name  # the name it is shipped under, not the recipe's
    write_card(target, card)
    labels = {"generator": "alone (colouring, no guidance)", "generator + guidance": "shipped settings (guidance)"}
    description = (f"the last 10 of the 50 frames of tests/data/{name} (held out of training; "
                   f"scripts/make_{'spce' if name == 'water' else name}_data.sh), seed {5 if name == 'water' else 6}")
    record_evaluation(target, evaluation_entry(metrics, workdir / "backmap" / "guided_reference.xtc",
                                               f"python benchmarks/polar_liquids.py --systems {name} --ship",
                                               labels, description))
    print(f"shipped {target}", file=sys.stderr)


def measure(name: str, out: Path, quick: bool, shipping: bool = False, reuse: bool = False) -> dict:
    from backmap.system.gmx import md_check

    data = REPO / SYSTEMS[name]
    workdir = out / name
    overrides = ["steps.train.max_iterations=20", "data.frames=0:50:5"] if quick else []
    if not (reuse and (workdir / "evaluate" / "metrics.json").is_file()):
        backmap_run(REPO / "recipes" / f"{name}.yaml", workdir, overrides, "prepare,train,backmap,evaluate",
                    out / f"{name}.log")
    m = json.loads((workdir / "evaluate" / "metrics.json").read_text())
    head = m["summary"]["mean_jsd_headline"]
    obs = m["observables"]
    row: dict = {"system": name, "frames": m["frames"], "noise_floor": round(head["noise_floor"], 5),
                 "headline": {c: round(head["candidates"][c], 4) for c in CANDIDATES}}
    for key in ("potential_per_molecule", "rdf:H-O", "rdf:H-H", "rdf:O-O"):
        if key in obs:
            row[key] = {c: round(obs[key]["candidates"][c]["jsd"], 5) for c in CANDIDATES}
            row[key]["floor"] = round(obs[key]["noise_floor"]["jsd"], 6)
    pot = obs["potential_per_molecule"]
    row["potential mean (kJ/mol)"] = {"reference": round(pot["reference"]["mean"], 2),
                                      **{c: round(pot["candidates"][c]["mean"], 2) for c in CANDIDATES}}
    if "clash_fraction" in obs:
        row["clashes per atom"] = {c: round(obs["clash_fraction"]["candidates"][c]["mean"], 5) for c in CANDIDATES}
    n = max(1, m["frames"].get(CANDIDATES[1], 1))  # the guided backmap step is the recipe's last
    row["seconds per frame"] = {"generator + guidance": round((step_seconds(workdir, "backmap") or 0) / n, 2)}
    check = md_check(data / "topol.top", workdir / "backmap" / "guided.gro", data / "md.mdp",
                     steps=100 if quick else 1000)
    row["gromacs"] = {"steps": 100 if quick else 1000, "warnings": check.warnings, "finished": check.finished,
                      "potential first/last (kJ/mol)": [round(v, 1) for v in check.potential],
                      "max temperature (K)": round(check.max_temperature, 1)}
    if shipping and not quick:
        ship(name, workdir, m)
    return row


def table(rows: list[dict]) -> str:
    lines = ["| system | candidate | headline mean JSD | potential/molecule JSD | ⟨U⟩/molecule (kJ/mol) | "
             "rdf H-O JSD | rdf H-H JSD |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ref = r["potential mean (kJ/mol)"]["reference"]
        lines.append(f"| {r['system']} | noise floor | {r['noise_floor']} | {r['potential_per_molecule']['floor']} | "
                     f"{ref} | {r['rdf:H-O']['floor']} | {r['rdf:H-H']['floor']} |")
        for c in CANDIDATES:
            lines.append(f"| | {c} | {r['headline'][c]} | {r['potential_per_molecule'][c]} | "
                         f"{r['potential mean (kJ/mol)'][c]} | {r['rdf:H-O'][c]} | {r['rdf:H-H'][c]} |")
        g = r["gromacs"]
        lines.append(f"| | GROMACS, {g['steps']} steps from the guided output | finished: {g['finished']} | "
                     f"warnings: {len(g['warnings'])} | U {g['potential first/last (kJ/mol)']} | "
                     f"T max {g['max temperature (K)']} K | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", default="water,methanol")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "polar")
    parser.add_argument("--quick", action="store_true", help="water, a short training, 100 MD steps")
    parser.add_argument("--ship", action="store_true", help="export the models to models/ with their evaluation")
    parser.add_argument("--reuse", action="store_true", help="take a system's finished run in OUT as it is")
    args = parser.parse_args()
    if shutil.which("gmx") is None:
        print(json.dumps({"skipped": "GROMACS (gmx) not found"}))
        return
    systems = ["water"] if args.quick else args.systems.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in systems:
        rows.append(measure(name, args.out, args.quick, args.ship, args.reuse))
        print(json.dumps(rows[-1]), flush=True)
    (args.out / "table.md").write_text(table(rows))


if __name__ == "__main__":
    main()
