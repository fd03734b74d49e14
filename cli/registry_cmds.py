"""``wm keygen``, ``wm register`` and ``wm audit ...``: the registry's commands.

Exit status: 0 on success; ``wm audit verify`` and ``wm audit check-proof`` exit 1
when the log or the proof does not verify (naming the first broken entry); every
other failure is one line on stderr and exit 2 (see :mod:`cli.main`).
"""

from __future__ import annotations

import getpass
import json
import re
import sys
from pathlib import Path
from typing import Any

import click

from cli.main import Context, wm
from core.canonical import canonical_json, parse_json
from core.errors import IntegrityError
from registry.keys import KEY_FILE, generate_owner_key, load_owner_key
from registry.log import Registry
from registry.proofs import check_proof_bundle
from registry.records import (
    MODEL_TYPE,
    OWNER_TYPE,
    PROBESET_TYPE,
    SPEND_TYPE,
    VERIFICATION_TYPE,
    LogEntry,
)
from registry.register import register_model

__all__ = ["audit", "keygen", "register"]


def _default_owner_name() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        return "owner"
    name = re.sub(r"[^A-Za-z0-9._@:/-]", "-", user).lstrip("._@:/-")[:64]
    return name or "owner"


@wm.command()
@click.option("--name", default=None, help="Owner name (default: your user name).")
@click.pass_obj
def keygen(obj: Context, name: str | None) -> None:
    """Create the owner's Ed25519 signing key in $WM_HOME (passphrase: $WM_PASSPHRASE or prompt)."""
    key = generate_owner_key(obj.home, name or _default_owner_name())
    click.echo(f"owner key for {key.name} written to {obj.home / KEY_FILE}")
    click.echo(f"key id {key.key_id}")


@wm.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="Name of the model in the registry.")
@click.option(
    "--wmkey",
    "sidecar",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Watermark secret from `wm train` (default MODEL.wmkey when it exists).",
)
@click.pass_obj
def register(obj: Context, model: Path, name: str, sidecar: Path | None) -> None:
    """Register MODEL.pt2 (and its watermark, if any) under NAME, signed and logged."""
    key = load_owner_key(obj.home)
    with Registry.open(obj.registry_url) as reg:
        result = register_model(reg, key, model, name, sidecar=sidecar)
    click.echo(
        f"registered {name}: log entry {result.model_entry}, file sha256 {result.file_sha256}"
    )
    if result.probeset_id is not None:
        click.echo(f"watermark committed: probe set {result.probeset_id}")


@wm.group()
def audit() -> None:
    """Inspect and check the registry's signed, append-only log."""


def _summary(e: LogEntry) -> str:
    r = e.record
    if e.payload_type == OWNER_TYPE:
        return f"owner {r.get('name')}"
    if e.payload_type == MODEL_TYPE:
        return f"model {r.get('name')} sha256 {str(r.get('file_sha256'))[:16]}"
    if e.payload_type == PROBESET_TYPE:
        return (
            f"{r.get('kind')} for {r.get('model')}: {r.get('scheme')} "
            f"n={r.get('size')} root {str(r.get('root'))[:16]}"
        )
    if e.payload_type == SPEND_TYPE:
        n = len(r.get("indices", []))
        return f"spend {n} probes of set {r.get('probeset')}: {r.get('reason')}"
    if e.payload_type == VERIFICATION_TYPE:
        return f"verification of {r.get('suspect')}: {r.get('verdict')}"
    text = canonical_json(r).decode()
    return e.payload_type + " " + (text if len(text) <= 60 else text[:57] + "...")


@audit.command("log")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.pass_obj
def audit_log(obj: Context, as_json: bool) -> None:
    """List every log entry."""
    with Registry.open(obj.registry_url, create=False) as reg:
        entries = reg.entries()
        root, origin = reg.root(), reg.origin
    if as_json:
        doc: dict[str, Any] = {
            "origin": origin,
            "size": len(entries),
            "root": root.hex(),
            "entries": [e.to_dict() for e in entries],
        }
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
        return
    click.echo(f"{origin}: {len(entries)} entries, root {root.hex()}")
    for e in entries:
        when = e.statement.get("signed_at", "")
        click.echo(f"{e.index:>6}  {when}  {e.key_id[:12]}  {_summary(e)}")


@audit.command("verify")
@click.option(
    "--tsa-ca",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="PEM certificate(s) to trust for RFC 3161 time-stamps.",
)
@click.pass_obj
def audit_verify(obj: Context, tsa_ca: Path | None) -> None:
    """Recompute every leaf, root, signature and checkpoint (exit 1 naming the first fault)."""
    with Registry.open(obj.registry_url, create=False) as reg:
        try:
            report = reg.verify_log(tsa_ca_pem=tsa_ca.read_bytes() if tsa_ca else None)
        except IntegrityError as exc:
            click.echo(f"wm: audit verify: FAILED: {exc}", err=True)
            sys.exit(1)
    click.echo(
        f"ok: {report.size} entries, root {report.root.hex()}, {report.checkpoints} checkpoints "
        f"({report.timestamps} time-stamped)"
    )


@audit.command("checkpoint")
@click.option("--tsa", "tsa_url", default=None, help="RFC 3161 time-stamping authority URL.")
@click.pass_obj
def audit_checkpoint(obj: Context, tsa_url: str | None) -> None:
    """Sign the log's current size and root (C2SP signed note) and print it."""
    key = load_owner_key(obj.home)
    with Registry.open(obj.registry_url, create=False) as reg:
        note = reg.checkpoint(key, tsa_url=tsa_url)
    click.echo(note, nl=False)


@audit.command("proof")
@click.argument("entry", type=click.IntRange(min=0))
@click.pass_obj
def audit_proof(obj: Context, entry: int) -> None:
    """Print an inclusion proof of ENTRY that anyone can check (JSON)."""
    with Registry.open(obj.registry_url, create=False) as reg:
        bundle = reg.proof_bundle(entry)
    click.echo(json.dumps(bundle, indent=2, sort_keys=True))


@audit.command("check-proof")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--key-id",
    "key_ids",
    multiple=True,
    help="Trusted signer key id (repeatable); default: trust the keys in the file.",
)
def audit_check_proof(file: Path, key_ids: tuple[str, ...]) -> None:
    """Check an inclusion proof from `wm audit proof`, offline (exit 1 if it fails)."""
    bundle = parse_json(file.read_bytes(), what=str(file))
    if not isinstance(bundle, dict):
        raise click.BadParameter("not a JSON object", param_hint="FILE")
    try:
        result = check_proof_bundle(bundle, trusted_key_ids=set(key_ids) if key_ids else None)
    except IntegrityError as exc:
        click.echo(f"wm: audit check-proof: FAILED: {exc}", err=True)
        sys.exit(1)
    click.echo(
        f"ok: entry {result.index} is in {result.origin} at size {result.tree_size} "
        f"(entry key {result.entry_key_id[:16]}, checkpoint key {result.checkpoint_key_id[:16]})"
    )
