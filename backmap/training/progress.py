"""A training progress bar with the latest losses (rich), quiet where backmap's progress bars are
(no terminal, tests); the training loop then prints a log line instead."""
from __future__ import annotations

from backmap.progress import enabled


class TrainingProgress:
    """Context manager: ``advance()`` per iteration, ``status(row)`` with the latest log row."""

    def __init__(self, total: int, done: int = 0, shown: tuple[str, ...] = (), quiet: bool = False):
        self.total, self.done, self.shown = total, done, shown
        self.enabled = enabled() and not quiet
        self._bar = None

    def __enter__(self) -> "TrainingProgress":
        if self.enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self._bar = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 TimeRemainingColumn(), TextColumn("{task.fields[status]}"), transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task("training", total=self.total, completed=self.done, status="")
        return self

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.advance(self._task)

    def status(self, row: dict[str, float]) -> None:
        if self._bar is not None:
            text = "  ".join(f"{k} {row[k]:.3g}" for k in self.shown if k in row)
            self._bar.update(self._task, status=text)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
