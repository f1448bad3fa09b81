"""Progress for long loops: a bar (rich) on a terminal, else a plain line now and then (logs, CI),
none with ``BACKMAP_NO_PROGRESS`` set (the test suite sets it)."""
from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

#: seconds between two plain progress lines, and how long a loop must take to get any
PLAIN_EVERY = 30.0


def enabled() -> bool:
    """Whether to draw a progress bar: stderr is a terminal and progress is not turned off."""
    return sys.stderr.isatty() and not os.environ.get("BACKMAP_NO_PROGRESS")


def progress(items: Iterable[T], total: int | None = None, description: str = "") -> Iterator[T]:
    """Iterate ``items`` with a progress bar on stderr when it is a terminal; otherwise (a log file,
    a batch job) with a plain line every :data:`PLAIN_EVERY` seconds, so a long command is not silent."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if os.environ.get("BACKMAP_NO_PROGRESS"):
        yield from items
        return
    if not enabled():
        yield from _plain(items, total, description)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)


def heartbeat(items: Iterable[T], total: int | None = None, description: str = "") -> Iterator[T]:
    """Iterate ``items`` with plain lines only (every :data:`PLAIN_EVERY` seconds, once the loop has
    run that long), also on a terminal: progress *inside* one item of an outer :func:`progress`
    (e.g. the dynamics of one large frame), which a second bar would fight with."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if os.environ.get("BACKMAP_NO_PROGRESS"):
        yield from items
        return
    yield from _plain(items, total, description)


def _plain(items: Iterable[T], total: int | None, description: str) -> Iterator[T]:
    """Iterate ``items``, printing ``description: done/total (%), s/item, time left`` to stderr at
    most every :data:`PLAIN_EVERY` seconds and once at the end if the loop took longer than that:
    logs show that a long command is alive and when it ends, while short commands stay quiet."""
    start = last = time.monotonic()
    done = shown = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= PLAIN_EVERY:
            _line(description, done, total, now - start, end=False)
            last, shown = now, done
    now = time.monotonic()
    if now - start >= PLAIN_EVERY and shown != done:
        _line(description, done, total, now - start, end=True)


def _line(description: str, done: int, total: int | None, seconds: float, end: bool) -> None:
    """One plain progress line, e.g. ``backmapping: 10/71 (14 %), 12.3 s/item, about 13 min left``."""
    per_item = seconds / max(done, 1)
    parts = [f"{done}/{total} ({100 * done // max(total, 1)} %)" if total else f"{done}", f"{per_item:.3g} s/item"]
    if end:
        parts.append(f"{_duration(seconds)} in all")
    elif total and done < total:
        parts.append(f"about {_duration(per_item * (total - done))} left")
    print(f"{description or 'progress'}: {', '.join(parts)}", file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    """A duration for people: ``45 s``, ``13 min``, ``2.5 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def say(message: str) -> None:
    """One line on the console (stderr, beside the progress output)."""
    print(message, file=sys.stderr, flush=True)
