"""``wm guard`` and its subcommands (report, commit, rotate, clients add): parsing and printing only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from cli.main import Context, wm
from core.errors import InputError


@wm.group("guard", invoke_without_command=True)
@click.option("--upstream", default=None, help="The owner's inference server (base URL or endpoint).")
@click.option("--model", default=None, help="Registered model the upstream serves.")
@click.option("--rate", default=0.01, show_default=True, type=click.FloatRange(0, 1),
              help="Fraction R of distinct inputs whose answers are marked.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8081, show_default=True, type=click.IntRange(0, 65535))
@click.option("--upstream-name", default=None,
              help="Model name in the upstream's URLs (default: from --upstream, else --model).")
@click.option("--retention-days", default=90, show_default=True, type=click.IntRange(min=1),
              help="Days a marked input stays readable (then its key is shredded).")
@click.option("--client-header", "client_headers", multiple=True,
              help="Request header naming the client (repeatable; default X-Client-Id, "
                   "X-Api-Key, Authorization; credentials are pseudonymised).")
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(min=0.01),
              help="Seconds for each upstream connect, write and read.")
@click.option("--no-monitor", is_flag=True, help="Do not run PRADA extraction monitoring.")
@click.option("--flush-interval", default=0.5, show_default=True, type=click.FloatRange(min=0.01),
              help="Seconds between batched flushes of the journal to the registry.")
@click.option("--clients", "clients_file", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="API keys file (`wm guard clients add`): requests without a known key are refused "
                   "and clients are named by their key.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 256),
              help="Worker processes sharing the port, each with its own journal segment.")
@click.pass_context
def guard_group(ctx: click.Context, upstream: str | None, model: str | None, rate: float, host: str,
                port: int, upstream_name: str | None, retention_days: int,
                client_headers: tuple[str, ...], timeout: float, no_monitor: bool,
                flush_interval: float, clients_file: Path | None, workers: int) -> None:
    """Serve a marking proxy in front of the owner's prediction API (DAWN).

    Answers a keyed fraction R of inputs with key-derived labels, records each
    marked query (input sealed) in the registry, and passes everything else
    through unchanged. Stop it with Ctrl-C or SIGTERM; every record is flushed.
    """
    if ctx.invoked_subcommand is not None:
        return
    if upstream is None or model is None:
        raise InputError("wm guard needs --upstream URL and --model NAME (or a subcommand)")
    from guard.proxy import DEFAULT_CLIENT_HEADERS
    from guard.runner import run_guard
    from guard.service import GuardOptions
    from registry.keys import load_owner_key

    obj: Context = ctx.obj
    options = GuardOptions(
        upstream=upstream, model=model, rate=rate, upstream_model=upstream_name,
        retention_days=retention_days,
        client_headers=tuple(h.lower() for h in client_headers) or DEFAULT_CLIENT_HEADERS,
        timeout=timeout, monitor=not no_monitor, flush_interval=flush_interval, clients=clients_file,
    )

    def ready(url: str) -> None:
        click.echo(f"guarding {upstream} (model {model!r}, rate {rate:g}, {workers} worker"
                   f"{'s' if workers > 1 else ''}) at {url}", err=True)

    counts = run_guard(obj.home, obj.registry_url, load_owner_key(obj.home), options, host=host,
                       port=port, workers=workers, ready=ready)
    click.echo(f"stopped: {counts.get('requests', 0)} requests, {counts.get('rows', 0)} inference "
               f"inputs, {counts.get('marked', 0)} marked, all recorded", err=True)


@guard_group.command("report")
@click.option("--model", default=None, help="Only this registered model.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.pass_obj
def report_cmd(obj: Context, model: str | None, as_json: bool) -> None:
    """Marked queries per client and PRADA extraction flags (Shapiro–Wilk W < 0.96)."""
    from guard.service import guard_report

    rows = guard_report(obj.home, obj.registry_url, model)
    if as_json:
        click.echo(json.dumps({"clients": rows}, sort_keys=True))
        return
    if not rows:
        click.echo("no guard records")
        return
    click.echo(f"{'model':<16} {'client':<32} {'queries':>8} {'marked':>7} {'W':>6}  verdict")
    for r in rows:
        w = "-" if r["shapiro_w"] is None else f"{r['shapiro_w']:.3f}"
        verdict = _verdict(r)
        q = "-" if r["queries"] is None else str(r["queries"])
        click.echo(f"{r['model'][:16]:<16} {r['client'][:32]:<32} {q:>8} {r['marked']:>7} "
                   f"{w:>6}  {verdict}")


def _verdict(r: dict[str, Any]) -> str:
    if r["flagged"] is None:
        return "not monitored"
    if r["shapiro_w"] is None:
        return "too few queries"
    return "LIKELY EXTRACTION" if r["flagged"] else "looks benign"


@guard_group.command("commit")
@click.option("--model", required=True, help="Registered model whose marked queries to commit.")
@click.option("--client", "clients", multiple=True,
              help="Only this client's queries (repeatable; as `wm guard report` names them).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.pass_obj
def commit_cmd(obj: Context, model: str, clients: tuple[str, ...], as_json: bool) -> None:
    """Commit marked queries not yet committed as a guard probe set (used by `wm verify`)."""
    from guard.probes import commit_guard_probes
    from guard.service import open_vault
    from registry.keys import load_owner_key
    from registry.log import Registry

    key = load_owner_key(obj.home)
    with Registry.open(obj.registry_url, create=False) as registry:
        result = commit_guard_probes(registry, key, open_vault(obj.home, key, model), model,
                                     clients=clients or None)
    p = result.probes
    doc = {"probesets": list(result.probeset_ids), "probes": len(p.inputs), "records": p.records,
           "duplicates": p.duplicates, "already_committed": p.already_committed,
           "expired": p.expired, "other_clients": p.other_clients}
    if as_json:
        click.echo(json.dumps(doc, sort_keys=True))
    elif not result.probeset_ids:
        click.echo(f"nothing new to commit ({p.records} records, {p.already_committed} already "
                   f"committed, {p.duplicates} duplicates, {p.expired} expired)")
    else:
        ids = ", ".join(map(str, result.probeset_ids))
        click.echo(f"committed guard probe set(s) {ids} (one per epoch): {len(p.inputs)} probes "
                   f"from {p.records} records ({p.duplicates} duplicates, "
                   f"{p.already_committed} already committed, {p.expired} expired)")


@guard_group.command("rotate")
@click.option("--model", required=True, help="Registered model whose guard epoch to end.")
@click.option("--rate", default=0.01, show_default=True, type=click.FloatRange(0, 1),
              help="Marking rate of the new epoch (start `wm guard` with the same rate).")
@click.pass_obj
def rotate_cmd(obj: Context, model: str, rate: float) -> None:
    """Commit a new guard epoch key (for instance after a dispute opened the current one).

    A running guard keeps its epoch until it is restarted.
    """
    from guard.epochs import rotate_epoch
    from registry.keys import load_owner_key
    from registry.log import Registry

    key = load_owner_key(obj.home)
    with Registry.open(obj.registry_url, create=False) as registry:
        info = registry.model(model)
        if info.num_classes is None:
            raise InputError(f"model {model!r} was registered without its class count")
        epoch = rotate_epoch(registry, key, model, rate, info.num_classes)
    click.echo(f"guard epoch {epoch.number} of {model!r} committed (log entry {epoch.log_index}, "
               f"key {epoch.commitment[:16]}...)")


@guard_group.group("clients")
def clients_group() -> None:
    """API keys of the guard's clients (`wm guard --clients FILE`)."""


@clients_group.command("add")
@click.argument("name")
@click.option("--clients", "clients_file", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="The clients file (created if new).")
def clients_add_cmd(name: str, clients_file: Path) -> None:
    """Give client NAME a new API key: printed once on stdout, only its hash stored."""
    from guard.clients import add_client

    click.echo(add_client(clients_file, name))
