"""Progress display: a bar on a terminal, nothing when stderr is not one."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click

__all__ = ["epoch_progress", "interactive"]


def interactive() -> bool:
    """True when stderr is a terminal (progress is shown only then)."""
    return sys.stderr.isatty()


@contextmanager
def epoch_progress(label: str, total: int) -> Iterator[Callable[[int, int, float], None]]:
    """A ``progress(done, total, loss)`` callback drawing a bar on a terminal, else silent."""
    if not interactive():
        yield lambda done, total, loss: None
        return
    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
        last = [0]

        def update(done: int, total_: int, loss: float) -> None:
            bar.label = f"{label} (loss {loss:.3f})"
            bar.update(done - last[0])
            last[0] = done

        yield update
