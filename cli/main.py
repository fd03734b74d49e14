"""The ``wm`` command: parsing, calling the packages, printing. No logic of its own.

Every command turns a :class:`core.errors.WmError` into one line on stderr and
exit status 2 (``wm verify`` and ``wm evidence check`` also use 1 for a
negative answer, see DESIGN.md).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from core.config import default_registry_url, wm_home
from core.errors import WmError

__all__ = ["Context", "main", "wm"]


@dataclass
class Context:
    """What every subcommand gets: where home is and which registry to use."""

    home: Path
    registry_url: str


class WmGroup(click.Group):
    """A click group that reports :class:`WmError` as one line and exit 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except WmError as exc:
            click.echo(f"wm: error: {exc.diagnostics()}", err=True)
            sys.exit(2)


@click.group(cls=WmGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", type=click.Path(file_okay=False), default=None,
              help="wm home directory (default $WM_HOME or ~/.wm).")
@click.option("--registry", "registry_url", default=None,
              help="Registry URL (default $WM_REGISTRY_URL or sqlite:///HOME/registry.db).")
@click.pass_context
def wm(ctx: click.Context, home: str | None, registry_url: str | None) -> None:
    """wm: ownership watermarks and fingerprints for PyTorch models."""
    h = wm_home(home)
    ctx.obj = Context(home=h, registry_url=default_registry_url(h, registry_url))
    _set_torch_threads()


def _set_torch_threads() -> None:
    """One torch thread unless ``$WM_TORCH_THREADS`` says otherwise.

    wm's models are small: one thread trains them as fast as two on an idle
    machine, and does not collapse when the cores are shared with other work
    (measured once on a busy two-core machine: `wm train` 5 s against 79 s).
    """
    value = os.environ.get("WM_TORCH_THREADS", "1")
    try:
        threads = max(1, int(value))
    except ValueError:
        raise WmError(f"WM_TORCH_THREADS must be a whole number, got {value!r}") from None
    if "torch" not in sys.modules:
        # Commands that never touch a model do not pay for importing torch here;
        # torch reads this when a command imports it later.
        os.environ["OMP_NUM_THREADS"] = str(threads)
        return
    import torch

    torch.set_num_threads(threads)


def _register_commands() -> None:
    # Each command module adds itself to `wm`; imported here so `wm --help` lists all.
    from cli import (  # noqa: F401
        demo,
        fingerprint_cmd,
        guard_cmds,
        registry_cmds,
        serve_cmd,
        train,
        verify_cmds,
        witness_cmds,
    )


def main() -> None:
    """Console entry point."""
    _register_commands()
    wm(prog_name="wm")
