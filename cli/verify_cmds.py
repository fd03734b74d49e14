"""``wm verify``, ``wm evidence check`` and ``wm evidence replay``: parsing and printing only."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from cli.main import Context, wm
from cli.progress import interactive
from core.errors import InputError

_PROTOCOLS = ["auto", "oip", "tfserving", "torchserve", "json"]
_F = TypeVar("_F", bound=Callable[..., Any])


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
@click.option("--decoys", "decoy_spec", default=None,
              help="In-distribution decoys: 'digits', 'fashion-mnist' or an .npz (its test split). "
              "Default: the data the models were trained on, as the registry records it.")
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
@click.option("--open-keys", is_flag=True,
              help="Put the tested sets' derivation keys in the evidence, so a checker re-derives "
                   "every opened probe; burns those sets (their unsent probes are spent).")
@click.pass_obj
def verify_cmd(ctx: Context, suspect: str, models: tuple[str, ...], protocol: str, alpha: float,
               budget: int, headers: tuple[str, ...], evidence: str | None, resume: str | None,
               as_json: bool, fixed: bool, batch_size: int, decoy_ratio: float, decoy_spec: str | None,
               timeout: float, deadline: float, retries: int, concurrency: int, max_response_bytes: int,
               input_name: str | None, json_input_field: str, json_output_field: str,
               open_keys: bool) -> None:
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
        input_name=input_name, open_keys=open_keys,
    )
    decoys = load_data(decoy_spec).test.x if decoy_spec is not None else None
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
                   f"alpha {alpha:g}, {out['mode']}, corrected for {out['committed']} committed "
                   "probe sets)")
        fut = out["futility"]
        if fut is not None and fut["ruled_out_at"] is not None:
            click.echo(f"ruled out: after {fut['ruled_out_at']} probes, no named model's marks are "
                       f"kept at a share >= {fut['share']:g} (error <= {fut['error']:g})")
        click.echo(f"queries:   {out['queries']} probes, {out['decoys']} decoys, "
                   f"{out['requests']} requests")
        for t in out["tests"]:
            extra = ""
            if t.get("p_conformal") is not None:
                extra = (f", conformal p = {t['p_conformal']:.3g} (floor "
                         f"{t['null']['p_floor']:.3g}), parametric {t['p_parametric']:.3g}")
            click.echo(f"  {t['model']} {t['kind']}: {t['matches']}/{t['n']} matched, "
                       f"p = {t['p_value']:.3g}{extra} ({_describe_null(t['null'])})")
        for warning in out["warnings"]:
            click.echo(f"warning:   {warning}")
        click.echo(f"evidence:  {out['evidence']} (report {out['report']}, log entry {out['log_entry']})")
    sys.exit(0 if out["verdict"] == "owned" else 1)


def _pin_options(command: _F) -> _F:
    """The checker's pins, shared by `wm evidence check` and `wm evidence replay`."""
    for option in reversed([
        click.option("--owner-key", "owner_key", default=None, metavar="FILE|KEYID",
                     help="The owner's public key (the owner.pub it published), or its key id. "
                     "Required."),
        click.option("--trust-embedded-key", is_flag=True,
                     help="Demo only: take the key inside the bundle on its word (output says "
                     "UNTRUSTED)."),
        click.option("--tsa-ca", type=click.Path(dir_okay=False, exists=True), default=None,
                     help="PEM trust anchor(s) of RFC 3161 time-stamping authorities you accept."),
        click.option("--witness-key", "witness_keys", multiple=True,
                     type=click.Path(dir_okay=False, exists=True),
                     help="Public key file of a witness you accept (repeatable)."),
        click.option("--suspect-since", default=None, metavar="TIME",
                     help="ISO 8601 time the suspect existed by: count only probe sets proven "
                     "committed before it."),
    ]):
        command = option(command)
    return command



@wm.group("evidence")
def evidence_group() -> None:
    """Evidence bundles."""


@evidence_group.command("check")
@click.argument("bundle", type=click.Path(dir_okay=False))
@_pin_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def evidence_check_cmd(bundle: str, owner_key: str | None, trust_embedded_key: bool,
                       tsa_ca: str | None, witness_keys: tuple[str, ...], suspect_since: str | None,
                       as_json: bool) -> None:
    """Check an evidence bundle offline, as a numbered checklist.

    Exit 0: valid, and its verdict stands under your pins; 1: a check failed or
    the verdict does not stand (the failed check is named); 2: cannot check
    (no pinned owner key, unreadable file).
    """
    from verifier.evidence import read_bundle, run_checks

    pins = _pins(owner_key, trust_embedded_key, tsa_ca, witness_keys, suspect_since)
    if trust_embedded_key:
        click.echo("wm: warning: --trust-embedded-key takes the owner key from the bundle itself; "
                   "anyone can make such a bundle (UNTRUSTED)", err=True)
    checklist = run_checks(read_bundle(bundle), pins)
    if as_json:
        click.echo(json.dumps(checklist.to_dict(), sort_keys=True))
    else:
        for line in checklist.lines:
            click.echo(f"{line.number:2d}. {line.status:<8} {line.title}: {line.detail}")
        click.echo("trusted:")
        for item in checklist.trusted:
            click.echo(f"  - {item}")
        failure = checklist.failure
        if failure is not None:
            click.echo(f"INVALID: {failure.part}: {failure.detail}")
        else:
            untrusted = " (UNTRUSTED: owner key not pinned)" if checklist.untrusted_key else ""
            click.echo(f"VALID{untrusted}: {checklist.verdict} (model {checklist.model}, "
                       f"p = {checklist.p_value:.3g}) against {checklist.suspect}")
    sys.exit(0 if checklist.valid else 1)


@evidence_group.command("replay")
@click.argument("bundle", type=click.Path(dir_okay=False))
@click.option("--suspect", required=True, help="The suspect's endpoint URL (as the bundle names it, or "
                                               "where it is served now).")
@_pin_options
@click.option("--protocol", default=None, type=click.Choice(_PROTOCOLS),
              help="Protocol to speak (default: the one the bundle recorded).")
@click.option("--header", "headers", multiple=True, help="Extra request header 'Name: value'.")
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(min=0.01))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def evidence_replay_cmd(bundle: str, suspect: str, owner_key: str | None, trust_embedded_key: bool,
                        tsa_ca: str | None, witness_keys: tuple[str, ...], suspect_since: str | None,
                        protocol: str | None, headers: tuple[str, ...], timeout: float,
                        as_json: bool) -> None:
    """Send a bundle's recorded queries to the suspect again; recompute the evidence on its answers.

    Exit 0: the bundle's verdict stands on the replayed answers; 1: it does not,
    or the bundle does not check; 2: cannot replay (no pinned owner key, an
    unreadable file, an unreachable or malformed suspect).
    """
    from core.errors import EvidenceError
    from verifier.evidence import read_bundle
    from verifier.replay import replay_bundle
    from verifier.wire.transport import HttpSettings, parse_headers

    pins = _pins(owner_key, trust_embedded_key, tsa_ca, witness_keys, suspect_since)
    if trust_embedded_key:
        click.echo("wm: warning: --trust-embedded-key takes the owner key from the bundle itself; "
                   "anyone can make such a bundle (UNTRUSTED)", err=True)
    envelope = read_bundle(bundle)
    settings = HttpSettings(timeout=timeout, headers=parse_headers(headers))
    progress = None
    if interactive():
        def progress(done: int, total: int) -> None:
            click.echo(f"\rreplayed: {done}/{total} requests", nl=False, err=True)
    try:
        replay = replay_bundle(envelope, pins, suspect, protocol=protocol, settings=settings,
                               progress=progress)
    except EvidenceError as exc:
        if as_json:
            click.echo(json.dumps({"stands": False, "part": exc.part, "error": str(exc)}, sort_keys=True))
        else:
            click.echo(f"INVALID: {exc}")
        sys.exit(1)
    if progress is not None:
        click.echo("", err=True)
    out = replay.to_dict()
    if as_json:
        click.echo(json.dumps(out, sort_keys=True))
    else:
        for b in replay.batches:
            same = "same answer digest" if b.same_answer else "another answer digest"
            click.echo(f"batch {b.batch:3d}: {b.agreed}/{b.inputs} labels agree, {same}")
        click.echo(f"replayed:  {len(replay.batches)} requests, {out['agreed']}/{out['inputs']} labels "
                   f"agree with the recorded answers, {out['same_answers']} identical answers")
        click.echo(f"verdict:   {out['verdict']} on the replayed answers (model {out['model']}, "
                   f"p = {out['p_value']:.3g}, corrected for {out['committed']} probe sets)")
        stands = "stands" if replay.stands else "does NOT stand"
        click.echo(f"{'STANDS' if replay.stands else 'FALLS'}: the bundle's verdict "
                   f"{out['bundle_verdict']} {stands} on the suspect's answers now")
    sys.exit(0 if replay.stands else 1)


def _pins(owner_key: str | None, trust_embedded_key: bool, tsa_ca: str | None,
          witness_keys: tuple[str, ...], suspect_since: str | None) -> Any:
    """The checker's pins from the command line; :class:`InputError` for anything unusable."""
    from registry.keys import key_id_of, public_key_from_pem
    from verifier.evidence import Pins

    if owner_key is None and not trust_embedded_key:
        raise InputError("no owner key pinned: pass --owner-key FILE (the owner.pub the owner "
                         "published) or its key id")
    if owner_key is not None and trust_embedded_key:
        raise InputError("--owner-key and --trust-embedded-key exclude each other")
    ids: frozenset[str] = frozenset()
    source = ""
    if owner_key is not None:
        path = Path(owner_key)
        if path.is_file():
            try:
                key = public_key_from_pem(path.read_bytes())
            except InputError as exc:
                raise InputError(f"--owner-key {owner_key}: {exc}") from exc
            ids, source = frozenset({key_id_of(key)}), f"pinned from {owner_key}"
        elif re.fullmatch(r"[0-9a-f]{64}", owner_key):
            ids, source = frozenset({owner_key}), "pinned by key id"
        else:
            raise InputError(f"--owner-key {owner_key!r} is neither a key file nor a 64-digit key id")
    since = None
    if suspect_since is not None:
        try:
            since = datetime.fromisoformat(suspect_since)
        except ValueError:
            raise InputError(f"--suspect-since {suspect_since!r} is not an ISO 8601 time") from None
        if since.tzinfo is None:
            raise InputError(f"--suspect-since {suspect_since!r} needs a time zone (e.g. Z or +02:00)")
    return Pins(
        owner_key_ids=ids,
        trust_embedded_key=trust_embedded_key,
        tsa_ca_pem=Path(tsa_ca).read_bytes() if tsa_ca else None,
        witness_keys=tuple(_witness_key(w) for w in witness_keys),
        suspect_since=since,
        key_source=source,
    )


def _witness_key(path: str) -> Any:
    """A pinned witness key from its ``FILE.pub`` (what ``wm witness keygen`` writes)."""
    from registry.cosign import parse_witness_key

    try:
        return parse_witness_key(Path(path).read_text(encoding="ascii"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--witness-key {path}: cannot read it") from exc
    except InputError as exc:
        raise InputError(f"--witness-key {path}: {exc}") from exc


def _describe_null(null: dict[str, Any]) -> str:
    """The null in words; a calibrated one with its reference count and honest floor."""
    if null.get("family") == "conformal":
        return (f"conformal null of {null['references']} committed reference models, "
                f"floor p >= {null['p_floor']:.3g}")
    if null.get("family") == "beta-binomial":
        return (f"beta-binomial null from {null['references']} held-out references, "
                f"floor p >= {null['p_floor']:.3g}")
    return f"{null.get('family')} null, p0 = {null.get('p0', float('nan')):.3g}"
