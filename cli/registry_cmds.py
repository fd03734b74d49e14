"""``wm keygen``, ``wm register`` and ``wm audit ...``: the registry's commands.

Exit status: 0 on success; ``wm audit verify`` and ``wm audit check-proof`` exit 1
when the log or the proof does not verify (naming the first broken entry, or
the truncation or fork ``--since`` shows); every other failure is one line on
stderr and exit 2 (see :mod:`cli.main`), including ``check-proof`` without a
pinned owner key.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import click

from cli.main import Context, wm
from core.canonical import canonical_json, parse_json
from core.errors import InputError, IntegrityError
from core.files import write_atomic
from registry.keys import KEY_FILE, PUBLIC_FILE, generate_owner_key, load_owner_key, public_key_from_pem
from registry.log import Registry
from registry.note import verifier_key
from registry.proofs import UNSAFE_TRUST_EMBEDDED_KEY, OwnerPin, check_proof_bundle
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

# From this many entries `wm audit verify` checks signatures in worker processes
# by default: 100,000 entries took 14.6 s in one process and 9.1 s with 2
# workers on an idle 2-core machine; 10,000 took 1.5 s and 2.2 s
# (benchmarks/results/registry.md).
PARALLEL_AUDIT_FROM = 50_000


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
    click.echo(f"public key (publish it) written to {obj.home / PUBLIC_FILE}")
    click.echo(f"key id {key.key_id}")
    click.echo(f"note key {verifier_key(key.name, key.public_key)}")


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
    help="PEM certificate(s) of the RFC 3161 authorities to trust; tokens are checked against them.",
)
@click.option(
    "--since",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="A checkpoint saved earlier (`wm audit checkpoint --out`): the log must still extend it.",
)
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Processes that verify signatures alongside. Default: one per CPU (at most 4) "
              f"for logs of {PARALLEL_AUDIT_FROM:,} entries or more, else none (starting them costs "
              "more than they save on a small log).")
@click.pass_obj
def audit_verify(obj: Context, tsa_ca: Path | None, since: Path | None, workers: int | None) -> None:
    """Recompute every leaf, node, root, signature and checkpoint (exit 1 naming the first fault)."""
    saved = _read_text(since, "checkpoint") if since is not None else None
    ca = tsa_ca.read_bytes() if tsa_ca else None
    with Registry.open(obj.registry_url, create=False) as reg:
        if workers is None:
            workers = min(os.cpu_count() or 1, 4) if reg.size() >= PARALLEL_AUDIT_FROM else 1
        try:
            report = reg.verify_log(tsa_ca_pem=ca, since=saved, workers=workers)
        except IntegrityError as exc:
            click.echo(f"wm: audit verify: FAILED: {exc}", err=True)
            sys.exit(1)
    stamps = f"{report.timestamps} time-stamped"
    if report.unchecked_timestamps:
        stamps += f", {report.unchecked_timestamps} time-stamps not checked: pass --tsa-ca"
    click.echo(
        f"ok: {report.size} entries, root {report.root.hex()}, {report.checkpoints} checkpoints "
        f"({stamps}), {report.probesets} probe sets"
    )
    if report.since is not None:
        click.echo(f"ok: the log extends the checkpoint saved earlier ({report.since} entries)")


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the {what} file {path}") from exc


@audit.command("checkpoint")
@click.option("--tsa", "tsa_url", default=None, help="RFC 3161 time-stamping authority URL.")
@click.option("--witness", "witnesses", multiple=True,
              help="C2SP tlog-witness URL (repeatable); its cosignature is added to the note.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Save the note here (and its RFC 3161 token as OUT.tsr) for `audit verify --since`.")
@click.pass_obj
def audit_checkpoint(obj: Context, tsa_url: str | None, witnesses: tuple[str, ...], out: Path | None) -> None:
    """Sign the log's current size and root (C2SP signed note), have it witnessed, and print it."""
    key = load_owner_key(obj.home)
    with Registry.open(obj.registry_url, create=False) as reg:
        cp = reg.checkpoint(key, tsa_url=tsa_url, witnesses=witnesses)
    if out is not None:
        write_atomic(out, cp.note.encode("utf-8"))
        if cp.tsa_token is not None:
            write_atomic(out.with_name(out.name + ".tsr"), cp.tsa_token)
    click.echo(cp.note, nl=False)


@audit.command("proof")
@click.argument("entry", type=click.IntRange(min=0))
@click.pass_obj
def audit_proof(obj: Context, entry: int) -> None:
    """Print an inclusion proof of ENTRY that anyone can check (JSON)."""
    with Registry.open(obj.registry_url, create=False) as reg:
        bundle = reg.proof_bundle(entry)
    click.echo(json.dumps(bundle, indent=2, sort_keys=True))


def _owner_pin(owner_key: str | None, trust_embedded: bool) -> OwnerPin:
    if owner_key is not None and trust_embedded:
        raise InputError("pass either --owner-key or --trust-embedded-key, not both")
    if trust_embedded:
        return UNSAFE_TRUST_EMBEDDED_KEY
    if owner_key is None:
        raise InputError(
            "no owner key pinned: pass --owner-key with the owner's published owner.pub (or its key id)"
        )
    if re.fullmatch(r"[0-9a-fA-F]{64}", owner_key):
        return owner_key.lower()
    return public_key_from_pem(_read_text(Path(owner_key), "owner key"))


@audit.command("check-proof")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--owner-key", default=None, metavar="FILE|KEYID",
              help="The owner's public key (owner.pub, PEM) or its key id: the signer to trust.")
@click.option("--trust-embedded-key", is_flag=True,
              help="Demos only: trust the key inside the proof (proves nothing about who signed).")
def audit_check_proof(file: Path, owner_key: str | None, trust_embedded_key: bool) -> None:
    """Check an inclusion proof from `wm audit proof`, offline, against a pinned key (exit 1 if it fails)."""
    pin = _owner_pin(owner_key, trust_embedded_key)
    bundle = parse_json(file.read_bytes(), what=str(file))
    if not isinstance(bundle, dict):
        raise click.BadParameter("not a JSON object", param_hint="FILE")
    if trust_embedded_key:
        click.echo("wm: warning: --trust-embedded-key: the signer is whoever made the file", err=True)
    try:
        result = check_proof_bundle(bundle, owner_key=pin)
    except IntegrityError as exc:
        click.echo(f"wm: audit check-proof: FAILED: {exc}", err=True)
        sys.exit(1)
    trust = "pinned owner key" if result.pinned else "UNTRUSTED: key taken from the file"
    click.echo(
        f"ok: entry {result.index} is in {result.origin} at size {result.tree_size} "
        f"(signed by {result.entry_key_id[:16]}, {trust})"
    )
    count = "not provable from this file" if result.probesets is None else str(result.probesets)
    click.echo(f"probe sets in the log at that checkpoint: {count}")
