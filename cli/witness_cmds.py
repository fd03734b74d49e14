"""``wm witness keygen`` and ``wm witness serve``: a C2SP tlog-witness for anyone's wm log.

A witness is run by someone other than the owner. It cosigns a log's
checkpoints only while they grow consistently (:mod:`registry.witness`), so
its cosignatures prove when a commitment existed and that the log was not
rolled back or forked since.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from pathlib import Path

import click

from cli.main import wm
from registry.cosign import generate_witness_key, load_witness_signer
from registry.witness import WitnessService, parse_log_key, running_witness

__all__ = ["witness"]


@wm.group()
def witness() -> None:
    """Run a transparency-log witness (C2SP tlog-witness) that cosigns checkpoints."""


@witness.command("keygen")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Private key file to write (mode 0600); the public key goes to OUT.pub.")
@click.option("--name", default=None, help="Witness name (default: wm-witness/<host name>).")
def witness_keygen(out: Path, name: str | None) -> None:
    """Create a witness key: OUT (private) and OUT.pub (the key checkers pin)."""
    signer = generate_witness_key(out, name or f"wm-witness/{socket.gethostname()}")
    click.echo(f"witness key {signer.name} written to {out}")
    click.echo(f"public key (checkers pin it) written to {out}.pub: {signer.public.vkey()}")


@witness.command("serve")
@click.option("--key", "key_file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              required=True, help="The witness's private key (from `wm witness keygen`).")
@click.option("--log", "logs", multiple=True, required=True,
              help="A log key to trust (the `note key` that `wm keygen` prints); repeatable.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="0: the OS picks a free port (the URL is printed).")
@click.option("--state", "state_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the last checkpoint of each log here (default: in memory only).")
def witness_serve(
    key_file: Path, logs: tuple[str, ...], host: str, port: int, state_dir: Path | None
) -> None:
    """Serve POST /add-checkpoint until interrupted."""
    service = WitnessService(load_witness_signer(key_file), [parse_log_key(v) for v in logs], state_dir)
    with running_witness(service, host, port) as url:
        where = f"state in {state_dir}" if state_dir is not None else "state in memory only"
        click.echo(f"witness {service.signer.name} listening on {url} ({where})")
        sys.stdout.flush()  # whoever started it reads the URL from a pipe
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
