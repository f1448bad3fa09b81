"""The training log: one row every few iterations (a generator's losses, regularizer terms, energies
of generated vs reference atoms), written as CSV and plotted for the run report."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from backmap.system.io import atomic_path


class TrainingLog:
    """Rows of floats keyed by column name; missing entries are left empty in the CSV."""

    def __init__(self, rows: list[dict[str, float]] | None = None):
        self.rows: list[dict[str, float]] = list(rows or [])

    def add(self, row: dict[str, float]) -> None:
        self.rows.append(dict(row))

    def columns(self) -> list[str]:
        cols: list[str] = []
        for r in self.rows:
            cols += [k for k in r if k not in cols]
        return cols

    def write_csv(self, path: Path) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns())
        writer.writeheader()
        for r in self.rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
        with atomic_path(path) as tmp:
            tmp.write_text(buf.getvalue())

    def plot(self, path: Path, title: str = "training") -> bool:
        """Three panels against iterations: the generator's own losses, the regularizer terms
        (``reg_*``) and the energies of generated vs reference atoms (``gen_*``/``ref_*``); False if
        there is nothing to plot."""
        if not self.rows:
            return False
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        it = [r["iteration"] for r in self.rows]

        def series(key):
            pts = [(r["iteration"], r[key]) for r in self.rows if key in r]
            return zip(*pts) if pts else ((), ())

        columns = self.columns()
        energy = sorted({k[4:] for k in columns if k.startswith("gen_")})
        regs = [k for k in columns if k.startswith("reg_")]
        losses = [k for k in columns if k not in ("iteration", "epoch", "seconds") and not k.startswith(("reg_", "gen_", "ref_"))]
        panels = [p for p in ("losses", "regularizers", "energies") if {"losses": losses, "regularizers": regs,
                                                                        "energies": energy}[p]]
        if not panels:
            return False
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
        for ax, panel in zip(axes[0], panels):
            if panel == "energies":
                for k, colour in zip(energy, plt.rcParams["axes.prop_cycle"].by_key()["color"]):
                    ax.plot(*series(f"gen_{k}"), color=colour, label=f"{k} generated")
                    ax.plot(*series(f"ref_{k}"), color=colour, ls="--", alpha=0.6, label=f"{k} reference")
                ax.set_yscale("symlog", linthresh=10)
                ax.set_ylabel("kJ/mol per bead")
                ax.set_title("energies of the generated atoms")
            else:
                for k in (losses if panel == "losses" else regs):
                    ax.plot(*series(k), label=k.removeprefix("reg_"))
                ax.set_title(panel)
            ax.set_xlabel("iteration")
            ax.legend(fontsize=7, ncol=2 if panel == "energies" else 1)
        fig.suptitle(f"{title} ({int(it[-1])} iterations)")
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110)
        plt.close(fig)
        return True
