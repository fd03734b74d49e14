"""Evidence bundles: built from a real run against a real registry; every part checked offline.

"Sign, mutate one part, check must fail naming that part."
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from core.canonical import b64d, b64e
from core.data import load_digits
from core.errors import EvidenceError
from core.modelio import save_model
from core.probeset import ProbeSet
from core.serving import BackgroundServer, running_server
from registry import Registry, generate_owner_key
from registry.dsse import payload_of, sign_envelope
from registry.keys import OwnerKey
from registry.records import VERIFICATION_TYPE
from verifier.evidence import EVIDENCE_TYPE, check_bundle, read_bundle
from verifier.verify import VerifyOptions, VerifyOutcome, verify_suspect
from verifier.wire import HttpSettings
from watermark import WatermarkKey, parse_scheme

from .helpers import oracle_app, untrained


@dataclass
class World:
    home: Path
    url: str
    key: OwnerKey
    probes: ProbeSet
    server: BackgroundServer
    outcome: VerifyOutcome
    before_unspent: int
    registry: Registry


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("evidence")
    home = tmp / "home"
    key = generate_owner_key(home, "alice", passphrase="pw")
    url = f"sqlite:///{home / 'registry.db'}"
    probes = parse_scheme("trigger-set:n=80").probes(
        WatermarkKey(b"e" * 32), num_classes=10, input_shape=(1, 8, 8), data=None
    )
    model_path = tmp / "m.pt2"
    save_model(untrained(), model_path, input_shape=(1, 8, 8), num_classes=10, arch="mlp")
    registry = Registry.open(url)
    registry.add_model(key, "m", model_path, arch="mlp", input_shape=[1, 8, 8], num_classes=10)
    pid = registry.add_probeset(key, "m", probes, secret_key=b"e" * 32)
    before = len(registry.unspent_indices(pid))
    with running_server(oracle_app(probes)) as srv:
        options = VerifyOptions(
            suspect=f"{srv.url}/v2/models/s/infer", models=("m",), alpha=1e-6, budget=40,
            batch_size=4, evidence=tmp / "ev.json", settings=HttpSettings(concurrency=1),
        )
        outcome = verify_suspect(registry, key, options, load_digits().test.x)
        yield World(home, url, key, probes, srv, outcome, before, registry)
    registry.close()


def test_run_is_owned_and_bundle_checks(world: World) -> None:
    out = world.outcome
    assert out.result.statistics.verdict == "owned"
    check = check_bundle(read_bundle(out.evidence))
    assert check.verdict == "owned" and check.owner_key_id == world.key.key_id
    assert check.parts == ("signature", "registry", "openings", "transcript", "statistics")
    assert check_bundle(read_bundle(out.evidence), trusted_key_ids={world.key.key_id})


def test_spent_probes_and_verification_are_logged(world: World) -> None:
    pid = world.registry.probesets("m")[0].id
    sent = set(world.outcome.result.sent[0])
    unspent = set(world.registry.unspent_indices(pid))
    assert len(unspent) == world.before_unspent - len(sent) and not sent & unspent
    logged = world.registry.entries(payload_type=VERIFICATION_TYPE)
    assert logged[-1].index == world.outcome.log_entry
    record = logged[-1].record
    assert record["evidence_sha256"] == world.outcome.evidence_sha256
    assert record["verdict"] == "owned" and record["model"] == "m"
    world.registry.verify_log()


def test_only_sent_probes_are_opened(world: World) -> None:
    text = world.outcome.evidence.read_text()
    payload = payload_of(json.loads(text))
    opened = {o["index"] for o in payload["tests"][0]["openings"]}
    assert opened == set(world.outcome.result.sent[0])
    for i in range(len(world.probes)):
        salt = b64e(world.probes.salts[i])
        assert (salt in json.dumps(payload)) == (i in opened)
    assert "plan" not in payload["transcript"]["header"]


def test_report_is_self_contained_html(world: World) -> None:
    html = world.outcome.report.read_text()
    assert "<svg" in html and "polyline" in html and "owned" in html
    assert "<script" not in html and "href=" not in html and "src=" not in html


def _resign(world: World, mutate: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    payload = payload_of(read_bundle(world.outcome.evidence))
    mutate(payload)
    return sign_envelope(world.key, EVIDENCE_TYPE, payload)


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


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(p: dict[str, Any]) -> None:
        *head, last = path.split("/")
        node: Any = p
        for part in head:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[int(last) if isinstance(node, list) else last] = value(
            node[int(last) if isinstance(node, list) else last])
    return mutate


MUTATIONS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("registry", _set("tests/0/registry/inclusion/hashes/0", _flip_b64), "registry: test 0"),
    ("registry", _set("tests/0/registry/checkpoint", lambda s: s.replace("\n", "\n1", 1)), "registry"),
    ("registry", _set("models/0/registry", lambda _: None), "has no registry proof"),
    ("registry", _set("tests/0/null", lambda _: {"family": "binomial", "p0": 0.5}),
     "null differs from the registered"),
    ("registry", _set("tests/0/root", _flip_b64), "root differs from the registered"),
    ("openings", _set("tests/0/openings/0/salt", _flip_b64), "does not open against the commitment"),
    ("openings", _set("tests/0/openings/0/label", lambda v: (v + 1) % 10), "does not open"),
    ("transcript", lambda p: _first_probe(p)["items"][_first_probe(p, True)].__setitem__(2, "0" * 64),
     "was not the opened input"),
    ("transcript", lambda p: p["transcript"]["records"].pop(0), "opened probes differ"),
    ("transcript", _set("transcript/header/suspect/url", lambda _: "http://other/"), "another suspect"),
    ("statistics", _set("p_value", lambda _: 1e-30), "p_value differs"),
    ("statistics", _set("verdict", lambda _: "not_owned"), "verdict differs"),
    ("statistics", _set("statistics/alpha", lambda _: 1e-3), "recomputed statistics differ"),
]


@pytest.mark.parametrize(("part", "mutate", "message"), MUTATIONS,
                         ids=[f"{m[0]}-{i}" for i, m in enumerate(MUTATIONS)])
def test_one_changed_part_fails_naming_it(world: World, part: str,
                                          mutate: Callable[[dict[str, Any]], None],
                                          message: str) -> None:
    bundle = _resign(world, mutate)
    with pytest.raises(EvidenceError, match=f"^{part}: ") as info:
        check_bundle(bundle)
    assert message in str(info.value)


def test_changed_answer_changes_the_statistics(world: World) -> None:
    def flip_probe_answer(p: dict[str, Any]) -> None:
        for r in p["transcript"]["records"]:
            for j, (src, _, _) in enumerate(r["items"]):
                if src >= 0:
                    r["labels"][j] = (r["labels"][j] + 1) % 10
                    return

    with pytest.raises(EvidenceError, match=r"^statistics: recomputed statistics differ"):
        check_bundle(_resign(world, flip_probe_answer))


def test_signature_failures(world: World, tmp_path: Path) -> None:
    env = read_bundle(world.outcome.evidence)
    tampered = copy.deepcopy(env)
    tampered["signatures"][0]["sig"] = _flip_b64(tampered["signatures"][0]["sig"])
    with pytest.raises(EvidenceError, match=r"^signature: .*does not verify"):
        check_bundle(tampered)
    unsigned = {**env, "signatures": []}
    with pytest.raises(EvidenceError, match=r"^signature: envelope carries no signature"):
        check_bundle(unsigned)
    with pytest.raises(EvidenceError, match=r"^signature: .*not trusted"):
        check_bundle(env, trusted_key_ids={"0" * 64})
    # A stranger re-signs the evidence as its own: the registry proofs are not its.
    mallory = generate_owner_key(tmp_path / "m", "mallory", passphrase="pw")
    payload = payload_of(env)
    payload["owner"] = {"name": "mallory", "key_id": mallory.key_id, "public_key": b64e(mallory.public_raw())}
    with pytest.raises(EvidenceError, match=r"^registry: .*not the pinned owner key"):
        check_bundle(sign_envelope(mallory, EVIDENCE_TYPE, payload))


def test_cli_evidence_check(world: World, tmp_path: Path) -> None:
    from cli.main import _register_commands, wm

    _register_commands()
    runner = CliRunner()
    ok = runner.invoke(wm, ["evidence", "check", str(world.outcome.evidence), "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["valid"] is True
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_resign(world, _set("verdict", lambda _: "not_owned"))))
    r = runner.invoke(wm, ["evidence", "check", str(bad)])
    assert r.exit_code == 1 and r.output.startswith("INVALID: statistics:")
    r = runner.invoke(wm, ["evidence", "check", str(bad), "--json"])
    assert r.exit_code == 1 and json.loads(r.output)["part"] == "statistics"
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{nope")
    r = runner.invoke(wm, ["evidence", "check", str(garbage)])
    assert r.exit_code == 2 and "is not valid JSON" in r.output


def test_no_tests_is_an_error_not_a_pass(world: World) -> None:
    with pytest.raises(EvidenceError, match=r"^registry: the bundle holds no tests"):
        check_bundle(_resign(world, _set("tests", lambda _: [])))
    assert torch  # keep the import (torch must be importable for the server)


def test_report_escapes_what_it_shows(world: World) -> None:
    from verifier.report import render_report

    payload = payload_of(read_bundle(world.outcome.evidence))
    payload["suspect"]["url"] = "http://x/<script>alert(1)</script>"
    payload["statistics"]["models"][0]["model"] = "<img onerror=x>"
    html = render_report(payload)
    assert "<script>" not in html and "<img" not in html and "&lt;script&gt;" in html
