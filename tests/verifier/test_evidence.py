"""Evidence bundles: built from a real run against a real registry; every part checked offline.

"Sign, mutate one part, check must fail naming that part."
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from core.canonical import b64d, b64e
from core.derive import Derivation
from core.errors import EvidenceError, InputError
from core.marking import MarkingFunction, canonical_bytes
from core.marking import key_commitment as marking_commitment
from core.nulls import Binomial
from core.probeset import ProbeSet
from core.serving import BackgroundServer, running_server
from registry import generate_owner_key
from registry.dsse import payload_of, sign_envelope
from registry.records import VERIFICATION_TYPE
from verifier.evidence import EVIDENCE_TYPE, PARTS, Pins, check_bundle, read_bundle, run_checks
from verifier.verify import VerifyOutcome
from watermark import WatermarkKey, parse_scheme

from .evidence_world import Owner, make_owner, resign, restate
from .helpers import oracle_app


@dataclass
class World:
    owner: Owner
    probes: ProbeSet
    server: BackgroundServer
    outcome: VerifyOutcome
    before_unspent: int


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("evidence")
    owner = make_owner(tmp, "alice")
    probes = parse_scheme("trigger-set:n=80").probes(
        WatermarkKey(b"e" * 32), num_classes=10, input_shape=(1, 8, 8), data=None
    )
    pid = owner.register(probes, secret_key=b"e" * 32)
    before = len(owner.registry.unspent_indices(pid))
    with running_server(oracle_app(probes)) as srv:
        outcome = owner.verify(f"{srv.url}/v2/models/s/infer", tmp / "ev.json")
        yield World(owner, probes, srv, outcome, before)
    owner.registry.close()


def test_run_is_owned_and_bundle_checks(world: World) -> None:
    out = world.outcome
    assert out.result.statistics.verdict == "owned" and out.selection.verdict == "owned"
    checklist = check_bundle(read_bundle(out.evidence), world.owner.pins)
    assert checklist.verdict == "owned" and checklist.owner_key_id == world.owner.key.key_id
    assert [ln.part for ln in checklist.lines] == [p for p, _ in PARTS]
    status = {ln.part: ln.status for ln in checklist.lines}
    assert status.pop("time") == "not done" and status.pop("derivation") == "not done"
    assert set(status.values()) == {"done"}
    assert any("time: owner's word only" in t for t in checklist.trusted)


def test_no_pinned_key_is_an_error_not_a_pass(world: World) -> None:
    with pytest.raises(InputError, match="no owner key pinned"):
        run_checks(read_bundle(world.outcome.evidence), Pins())


def test_spent_probes_and_verification_are_logged(world: World) -> None:
    reg = world.owner.registry
    pid = reg.probesets("m")[0].id
    sent = set(world.outcome.result.sent[0])
    unspent = set(reg.unspent_indices(pid))
    assert len(unspent) == world.before_unspent - len(sent) and not sent & unspent
    logged = reg.entries(payload_type=VERIFICATION_TYPE)
    assert logged[-1].index == world.outcome.log_entry
    record = logged[-1].record
    assert record["evidence_sha256"] == world.outcome.evidence_sha256
    assert record["verdict"] == "owned" and record["model"] == "m"
    reg.verify_log()


def test_only_sent_probes_are_opened(world: World) -> None:
    text = world.outcome.evidence.read_text()
    payload = payload_of(json.loads(text))
    opened = {o["index"] for o in payload["tests"][0]["openings"]}
    assert opened == set(world.outcome.result.sent[0])
    for i in range(len(world.probes)):
        salt = b64e(world.probes.salts[i])
        assert (salt in json.dumps(payload)) == (i in opened)
    assert "plan" not in payload["transcript"]["header"]
    assert payload["tests"][0]["derivation_key"] is None  # not opened without --open-keys
    selection = next(ln for ln in check_bundle(read_bundle(world.outcome.evidence), world.owner.pins).lines
                     if ln.part == "selection")
    assert selection.detail.startswith("1 probe sets in the log")


def test_report_is_self_contained_html(world: World) -> None:
    html = world.outcome.report.read_text()
    assert "<svg" in html and "polyline" in html and "owned" in html
    assert "<script" not in html and "href=" not in html and "src=" not in html
    assert f"--owner-key {world.owner.key.key_id}" in html


def _flip_b64(value: str) -> str:
    raw = bytearray(b64d(value))
    raw[0] ^= 1
    return b64e(bytes(raw))


def _first_probe(p: dict[str, Any], index: bool = False) -> Any:
    for r in p["transcript"]["records"]:
        for j, item in enumerate(r["items"]):
            if item[0] >= 0:
                return j if index else r
    raise AssertionError("no probe sent")


def _set(path: str, value: Callable[[Any], Any]) -> Callable[[dict[str, Any]], None]:
    def mutate(p: dict[str, Any]) -> None:
        *head, last = path.split("/")
        node: Any = p
        for part in head:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key: Any = int(last) if isinstance(node, list) else last
        node[key] = value(node[key])
    return mutate


def _first_decoy(p: dict[str, Any]) -> None:
    for r in p["transcript"]["records"]:
        for item in r["items"]:
            if item[0] < 0:
                item[2] = "0" * 64
                return
    raise AssertionError("no decoy sent")


MUTATIONS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("format", _set("models", lambda _: [1]), "models[0] is not a JSON object"),
    ("format", _set("tests/0/size", lambda _: "80"), "tests[0].size is not an integer"),
    ("format", _set("transcript/records/0/labels", lambda v: v[:-1]), "labels for"),
    ("format", _set("tests", lambda _: []), "the bundle holds no tests"),
    ("registry", _set("tests/0/registry/inclusion/hashes/0", _flip_b64), "test 0"),
    ("registry", _set("tests/0/registry/checkpoint", lambda s: s.replace("\n", "\n1", 1)), "test 0"),
    ("registry", _set("models/0/registry", lambda _: {}), "model 'm'"),
    ("registry", _set("tests/0/null", lambda _: {"family": "binomial", "p0": 0.5}),
     "null differs from the registered"),
    ("registry", _set("tests/0/root", _flip_b64), "root differs from the registered"),
    ("openings", _set("tests/0/openings/0/salt", _flip_b64), "does not open against the commitment"),
    ("openings", _set("tests/0/openings/0/label", lambda v: (v + 1) % 10), "does not open"),
    ("transcript", lambda p: _first_probe(p)["items"][_first_probe(p, True)].__setitem__(2, "0" * 64),
     "was not the opened input"),
    ("transcript", _first_decoy, "is not the included input"),
    ("transcript", lambda p: p["transcript"]["records"].remove(_first_probe(p)), "opened probes differ"),
    ("transcript", _set("transcript/header/suspect/url", lambda _: "http://other/"), "another suspect"),
    ("statistics", _set("statistics/alpha", lambda _: 1e-3), "recomputed statistics differ"),
    ("verdict", _set("p_value", lambda _: 1e-30), "p-value"),
    ("verdict", _set("verdict", lambda _: "not_owned"), "the bundle says not_owned"),
]


@pytest.mark.parametrize(("part", "mutate", "message"), MUTATIONS,
                         ids=[f"{m[0]}-{i}" for i, m in enumerate(MUTATIONS)])
def test_one_changed_part_fails_naming_it(world: World, part: str,
                                          mutate: Callable[[dict[str, Any]], None],
                                          message: str) -> None:
    bundle = resign(world.owner, world.outcome.evidence, mutate)
    with pytest.raises(EvidenceError, match=f"^{part}: ") as info:
        check_bundle(bundle, world.owner.pins)
    assert info.value.part == part and message in str(info.value)
    lines = run_checks(bundle, world.owner.pins).lines
    failed = [ln.part for ln in lines if ln.status == "failed"]
    assert failed == [part]
    after = lines[[p for p, _ in PARTS].index(part) + 1:]
    assert all(ln.status == "not done" for ln in after)


def test_changed_answer_changes_the_statistics(world: World) -> None:
    def flip_probe_answer(p: dict[str, Any]) -> None:
        for r in p["transcript"]["records"]:
            for j, (src, _, _) in enumerate(r["items"]):
                if src >= 0:
                    r["labels"][j] = (r["labels"][j] + 1) % 10
                    return

    with pytest.raises(EvidenceError, match=r"^statistics: recomputed statistics differ"):
        check_bundle(resign(world.owner, world.outcome.evidence, flip_probe_answer), world.owner.pins)


def test_signature_failures(world: World, tmp_path: Path) -> None:
    env = read_bundle(world.outcome.evidence)
    pins = world.owner.pins
    tampered = copy.deepcopy(env)
    tampered["signatures"][0]["sig"] = _flip_b64(tampered["signatures"][0]["sig"])
    with pytest.raises(EvidenceError, match=r"^owner-key: .*does not verify"):
        check_bundle(tampered, pins)
    with pytest.raises(EvidenceError, match=r"^format: envelope carries no signature"):
        check_bundle({**env, "signatures": []}, pins)
    with pytest.raises(EvidenceError, match=r"^owner-key: .*not by the pinned owner key"):
        check_bundle(env, Pins(owner_key_ids=frozenset({"0" * 64})))
    # A stranger re-signs the evidence as its own: its key is not the pinned one, and the
    # registry proofs are not its either.
    mallory = generate_owner_key(tmp_path / "m", "mallory", passphrase="pw", kdf_rounds=1_000)
    payload = payload_of(env)
    payload["owner"] = {"name": "mallory", "key_id": mallory.key_id, "public_key": b64e(mallory.public_raw())}
    forged = sign_envelope(mallory, EVIDENCE_TYPE, payload)
    with pytest.raises(EvidenceError, match=r"^owner-key: .*not by the pinned owner key"):
        check_bundle(forged, pins)
    with pytest.raises(EvidenceError, match=r"^registry: .*not the pinned owner key"):
        check_bundle(forged, Pins(owner_key_ids=frozenset({mallory.key_id})))


def test_cli_evidence_check(world: World, tmp_path: Path) -> None:
    from cli.main import _register_commands, wm

    _register_commands()
    runner = CliRunner()
    ev = str(world.outcome.evidence)
    kid = world.owner.key.key_id
    r = runner.invoke(wm, ["evidence", "check", ev])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "--owner-key" in r.stderr
    ok = runner.invoke(wm, ["evidence", "check", ev, "--owner-key", kid, "--json"])
    assert ok.exit_code == 0, ok.output
    doc = json.loads(ok.stdout)
    assert doc["valid"] is True and doc["untrusted"] is False and len(doc["checks"]) == len(PARTS)
    text = runner.invoke(wm, ["evidence", "check", ev, "--owner-key", str(world.owner.publish_key())])
    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    assert [ln.split(".")[0].strip() for ln in lines[:len(PARTS)]] == [str(i) for i in range(1, 13)]
    assert lines[-1].startswith("VALID: owned (model m") and "trusted:" in lines
    demo = runner.invoke(wm, ["evidence", "check", ev, "--trust-embedded-key"])
    assert demo.exit_code == 0 and "UNTRUSTED" in demo.stderr and "VALID (UNTRUSTED" in demo.stdout
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(resign(world.owner, world.outcome.evidence,
                                     _set("verdict", lambda _: "not_owned"))))
    r = runner.invoke(wm, ["evidence", "check", str(bad), "--owner-key", kid])
    assert r.exit_code == 1 and r.stdout.splitlines()[-1].startswith("INVALID: verdict:")
    r = runner.invoke(wm, ["evidence", "check", str(bad), "--owner-key", kid, "--json"])
    assert r.exit_code == 1 and json.loads(r.stdout)["part"] == "verdict"
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{nope")
    r = runner.invoke(wm, ["evidence", "check", str(garbage), "--owner-key", kid])
    assert r.exit_code == 2 and "is not valid JSON" in r.stderr
    r = runner.invoke(wm, ["evidence", "check", ev, "--owner-key", "alice"])
    assert r.exit_code == 2 and "neither a key file nor a 64-digit key id" in r.stderr
    r = runner.invoke(wm, ["evidence", "check", ev, "--owner-key", kid, "--suspect-since", "2020-01-01"])
    assert r.exit_code == 2 and "needs a time zone" in r.stderr


def test_report_escapes_what_it_shows(world: World) -> None:
    from verifier.report import render_report

    payload = payload_of(read_bundle(world.outcome.evidence))
    payload["suspect"]["url"] = "http://x/<script>alert(1)</script>"
    payload["statistics"]["models"][0]["model"] = "<img onerror=x>"
    html = render_report(payload)
    assert "<script>" not in html and "<img" not in html and "&lt;script&gt;" in html


# ---------------------------------------------------------------- opened derivation keys


def _guard_probes(n: int, seed: int = 5) -> ProbeSet:
    """A guard probe set as ``wm guard commit`` makes one: marked queries under a committed epoch key."""
    key = bytes([seed]) * 32
    marker = MarkingFunction(key, 1.0, 10)
    x = np.random.default_rng(seed).random((n, 1, 8, 8), dtype=np.float32)
    labels = [marker.decide(canonical_bytes(row)).label for row in x]
    return ProbeSet(inputs=torch.from_numpy(x), expected=torch.tensor(labels), kind="guard",
                    scheme=f"dawn-guard:test:n={n}", null=Binomial(0.1), num_classes=10,
                    salts=tuple(os.urandom(32) for _ in range(n)),
                    derivation=Derivation(marking_commitment(key), labels="guard-mark/v1", rate=1.0),
                    derivation_key=key)


def test_open_keys_let_the_checker_re_derive_every_probe(tmp_path: Path) -> None:
    owner = make_owner(tmp_path, "alice")
    trigger = parse_scheme("trigger-set:n=30").probes(WatermarkKey(b"o" * 32), num_classes=10,
                                                       input_shape=(1, 8, 8))
    guard = _guard_probes(20)
    ids = [owner.register(trigger), owner.register(guard)]
    app = oracle_app(ProbeSet(inputs=torch.cat([trigger.inputs, guard.inputs]),
                              expected=torch.cat([trigger.expected, guard.expected]), kind="watermark",
                              scheme="both", null=Binomial(0.1), num_classes=10,
                              salts=trigger.salts + guard.salts))
    with running_server(app) as srv:
        out = owner.verify(f"{srv.url}/v2/models/s/infer", tmp_path / "ev.json", open_keys=True)
    assert out.selection.verdict == "owned"
    assert all(owner.registry.unspent_indices(i) == [] for i in ids)  # opened keys burn their sets
    checklist = check_bundle(read_bundle(out.evidence), owner.pins)
    line = next(ln for ln in checklist.lines if ln.part == "derivation")
    assert line.status == "done" and line.detail.startswith("2 opened keys match their commitments")
    assert any("inputs of sets [1] were chosen from data" in t for t in checklist.trusted)


def test_labels_the_key_did_not_draw_are_rejected(tmp_path: Path) -> None:
    """A framer commits a derivation key but labels chosen to fit: opening the key shows it."""
    owner = make_owner(tmp_path, "alice")
    honest = parse_scheme("trigger-set:n=30").probes(WatermarkKey(b"f" * 32), num_classes=10,
                                                      input_shape=(1, 8, 8))
    fitted = ProbeSet(inputs=honest.inputs, expected=torch.ones(30, dtype=torch.int64),
                      kind="watermark", scheme=honest.scheme, null=honest.null, num_classes=10,
                      salts=honest.salts, derivation=honest.derivation,
                      derivation_key=honest.derivation_key)
    owner.register(fitted)
    with running_server(oracle_app(fitted)) as srv:
        out = owner.verify(f"{srv.url}/v2/models/s/infer", tmp_path / "ev.json", open_keys=True)
    assert out.selection.verdict == "owned"
    with pytest.raises(EvidenceError,
                       match=r"^derivation: test 0: probe \d+ carries label 1, its key derives"):
        check_bundle(read_bundle(out.evidence), owner.pins)
    # Without the key opened, the checker says so instead of passing it silently.
    def hide_key(p: dict[str, Any]) -> None:
        p["tests"][0]["derivation_key"] = None

    checklist = check_bundle(resign(owner, out.evidence, hide_key), owner.pins)
    line = next(ln for ln in checklist.lines if ln.part == "derivation")
    assert line.status == "not done" and "rest on the commitment and its time" in line.detail


# ---------------------------------------------------------------- replay by a third party


def test_replay_against_the_same_suspect_stands(world: World) -> None:
    from verifier.replay import replay_bundle

    url = f"{world.server.url}/v2/models/s/infer"
    replay = replay_bundle(read_bundle(world.outcome.evidence), world.owner.pins, url)
    assert replay.stands and replay.selection.verdict == "owned"
    assert [b.batch for b in replay.batches] == [r["batch"] for r in world.outcome.result.records]
    assert all(b.agreed == b.inputs and b.same_answer for b in replay.batches)
    assert replay.statistics.probes == world.outcome.result.statistics.probes


def test_replay_exposes_answers_the_owner_made_up(world: World, tmp_path: Path) -> None:
    """An owner records a stranger's answers as if it were a copy: every offline check passes
    (the transcript is the owner's word), the replay against the suspect itself does not."""
    from cli.main import _register_commands, wm

    _register_commands()
    labels = {i: int(world.probes.expected[i]) for i in range(len(world.probes))}

    def answers_of_a_copy(p: dict[str, Any]) -> None:
        for r in p["transcript"]["records"]:
            r["labels"] = [labels[i] if s >= 0 else lab for (s, i, _), lab in
                           zip(r["items"], r["labels"], strict=True)]

    with running_server(oracle_app(world.probes, copy=False)) as stranger:
        url = f"{stranger.url}/v2/models/s/infer"
        honest = world.owner.verify(url, tmp_path / "stranger.json")
        assert honest.selection.verdict == "not_owned"
        bundle = resign(world.owner, honest.evidence,
                        lambda p: (answers_of_a_copy(p), restate(p, world.owner)))
        assert payload_of(bundle)["verdict"] == "owned"
        assert check_bundle(bundle, world.owner.pins).valid  # the owner's record, taken on its word
        path = tmp_path / "forged.json"
        path.write_text(json.dumps(bundle))
        r = CliRunner().invoke(wm, ["evidence", "replay", str(path), "--suspect", url,
                                    "--owner-key", world.owner.key.key_id])
        assert r.exit_code == 1, r.output
        lines = r.stdout.splitlines()
        assert lines[-1] == "FALLS: the bundle's verdict owned does NOT stand on the suspect's answers now"
        assert any("labels agree with the recorded answers" in ln for ln in lines)
        r = CliRunner().invoke(wm, ["evidence", "replay", str(honest.evidence), "--suspect", url,
                                    "--owner-key", world.owner.key.key_id, "--json"])
        assert r.exit_code == 0 and json.loads(r.stdout)["stands"] is True
    r = CliRunner().invoke(wm, ["evidence", "replay", str(path), "--suspect", url])
    assert r.exit_code == 2 and "no owner key pinned" in r.stderr


def test_the_checker_loads_neither_torch_nor_a_web_server() -> None:
    """A third party checks a bundle without the ML stack or a server (issue 12)."""
    import subprocess
    import sys

    heavy = ("torch", "uvicorn", "starlette", "httptools", "uvloop")
    code = ("import sys, verifier.evidence, verifier.replay, cli.verify_cmds; "
            f"print(','.join(m for m in {heavy!r} if m in sys.modules))")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                         check=True, timeout=300)
    assert out.stdout.strip() == "", out.stdout
