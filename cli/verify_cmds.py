"""``wm verify`` and ``wm evidence check``: parsing and printing only."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from cli.main import Context, wm
from cli.progress import interactive
from core.errors import InputError

_PROTOCOLS = ["auto", "oip", "tfserving", "torchserve", "json"]


@wm.command("verify")
@click.option("--suspect", required=True, help="The suspect's endpoint URL.")
@click.option("--model", "models", multiple=True, help="Registered model to test (repeatable).")
@click.option("--protocol", default="auto", show_default=True, type=click.Choice(_PROTOCOLS))
@click.option("--alpha", default=1e-6, show_default=True, type=float, help="Decision level.")
@click.option("--budget", default=100, show_default=True, type=click.IntRange(min=1),
              help="Most probe queries to send (decoys not counted).")
@click.option("--header", "headers", multiple=True, help="Extra request header 'Name: value'.")
@click.option("--evidence", type=click.Path(dir_okay=False), default=None,
              help="Evidence bundle to write (default wm-evidence-TIME.json).")
@click.option("--resume", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Continue the run recorded in this transcript.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.option("--fixed", is_flag=True,
              help="Send the whole budget and decide on the exact fixed-n p-value (no early stop).")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1),
              help="Inputs per request.")
@click.option("--decoy-ratio", default=1.0, show_default=True, type=click.FloatRange(min=0),
              help="Decoys per probe.")
@click.option("--decoys", "decoy_spec", default="digits", show_default=True,
              help="'digits', 'fashion-mnist' or an .npz whose test split supplies in-distribution decoys.")
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(min=0.01),
              help="Seconds for connecting to the suspect, and for each read or write.")
@click.option("--deadline", default=300.0, show_default=True, type=click.FloatRange(min=0.01),
              help="Seconds one request may take in all: retries, waits and the whole answer.")
@click.option("--retries", default=4, show_default=True, type=click.IntRange(min=0))
@click.option("--concurrency", default=4, show_default=True, type=click.IntRange(min=1))
@click.option("--max-response-bytes", default=16 << 20, show_default=True,
              type=click.IntRange(min=1024))
@click.option("--input-name", default=None,
              help="--protocol oip: the input tensor's name (default: from the model's metadata, "
                   "else input-0).")
@click.option("--json-input-field", default="inputs", show_default=True,
              help="--protocol json: request field holding the inputs.")
@click.option("--json-output-field", default="outputs", show_default=True,
              help="--protocol json: dotted path of the answers.")
@click.pass_obj
def verify_cmd(ctx: Context, suspect: str, models: tuple[str, ...], protocol: str, alpha: float,
               budget: int, headers: tuple[str, ...], evidence: str | None, resume: str | None,
               as_json: bool, fixed: bool, batch_size: int, decoy_ratio: float, decoy_spec: str,
               timeout: float, deadline: float, retries: int, concurrency: int, max_response_bytes: int,
               input_name: str | None, json_input_field: str, json_output_field: str) -> None:
    """Query a suspect's API with registered probes; sign the evidence.

    Exit 0: ownership established for a named model; 1: not established
    (not_owned or inconclusive); 2: an error.
    """
    from core.data import load_data
    from registry.keys import load_owner_key
    from registry.log import Registry
    from verifier.verify import VerifyOptions, verify_suspect
    from verifier.wire.transport import HttpSettings, parse_headers

    if not 0 < alpha < 1:
        raise InputError(f"--alpha must lie in (0, 1), got {alpha}")
    if not models and resume is None:
        raise InputError("name at least one registered model with --model")
    settings = HttpSettings(timeout=timeout, deadline=deadline, retries=retries, concurrency=concurrency,
                            max_response_bytes=max_response_bytes, headers=parse_headers(headers))
    options = VerifyOptions(
        suspect=suspect, models=models, protocol=protocol, alpha=alpha, budget=budget,
        batch_size=batch_size, decoy_ratio=decoy_ratio, mode="fixed" if fixed else "sequential",
        evidence=Path(evidence) if evidence else None, resume=Path(resume) if resume else None,
        settings=settings, json_input_field=json_input_field, json_output_field=json_output_field,
        input_name=input_name,
    )
    decoys = load_data(decoy_spec).test.x
    owner_key = load_owner_key(ctx.home)
    progress = None
    if interactive():
        def progress(done: int, total: int) -> None:
            click.echo(f"\rqueries: {done}/{total} requests", nl=False, err=True)
    with Registry.open(ctx.registry_url) as registry:
        outcome = verify_suspect(registry, owner_key, options, decoys, progress=progress)
    if progress is not None:
        click.echo("", err=True)
    out = outcome.to_json()
    if as_json:
        click.echo(json.dumps(out, sort_keys=True))
    else:
        click.echo(f"suspect:   {suspect} ({outcome.detection.detail})")
        click.echo(f"verdict:   {out['verdict']} (model {out['model']}, p = {out['p_value']:.3g}, "
                   f"alpha {alpha:g}, {out['mode']})")
        fut = out["futility"]
        if fut is not None and fut["ruled_out_at"] is not None:
            click.echo(f"ruled out: after {fut['ruled_out_at']} probes, no named model's marks are "
                       f"kept at a share >= {fut['share']:g} (error <= {fut['error']:g})")
        click.echo(f"queries:   {out['queries']} probes, {out['decoys']} decoys, "
                   f"{out['requests']} requests")
        for t in out["tests"]:
            click.echo(f"  {t['model']} {t['kind']}: {t['matches']}/{t['n']} matched, "
                       f"p = {t['p_value']:.3g} ({_describe_null(t['null'])})")
        click.echo(f"evidence:  {out['evidence']} (report {out['report']}, log entry {out['log_entry']})")
    sys.exit(0 if out["verdict"] == "owned" else 1)


@wm.group("evidence")
def evidence_group() -> None:
    """Evidence bundles."""


@evidence_group.command("check")
@click.argument("bundle", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.option("--key-id", "key_ids", multiple=True,
              help="Trust only these owner key ids (default: report the signer's).")
def evidence_check_cmd(bundle: str, as_json: bool, key_ids: tuple[str, ...]) -> None:
    """Verify an evidence bundle offline. Exit 0 valid, 1 invalid (the failing part named)."""
    from core.errors import EvidenceError
    from verifier.evidence import check_bundle, read_bundle

    doc = read_bundle(bundle)
    try:
        check = check_bundle(doc, trusted_key_ids=set(key_ids) if key_ids else None)
    except EvidenceError as exc:
        part = str(exc).split(":", 1)[0]
        if as_json:
            click.echo(json.dumps({"valid": False, "part": part, "error": str(exc)}, sort_keys=True))
        else:
            click.echo(f"INVALID: {exc}")
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(check.to_dict(), sort_keys=True))
    else:
        click.echo(f"VALID: verdict {check.verdict} (model {check.model}, p = {check.p_value:.3g}) "
                   f"against {check.suspect}")
        click.echo(f"signed by owner key {check.owner_key_id}; checked {', '.join(check.parts)}")
    sys.exit(0)


def _describe_null(null: dict[str, Any]) -> str:
    """The null in words; a calibrated one with its reference count and honest floor."""
    if null.get("family") == "beta-binomial":
        return (f"beta-binomial null from {null['references']} held-out references, "
                f"floor p >= {null['p_floor']:.3g}")
    return f"{null.get('family')} null, p0 = {null.get('p0', float('nan')):.3g}"
