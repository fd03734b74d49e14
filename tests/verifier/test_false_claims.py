"""The false-claims threat model: a dishonest owner tries to frame an independent model.

Liu et al., "False Claims against Model Ownership Resolution" (USENIX Security
2024); issue 10. Every route below starts from a suspect that owes the owner
nothing (an independently initialised model served over HTTP), forges or
tampers evidence that says "owned", and must be rejected by
``wm evidence check`` with a line naming why, while the honest bundle still
passes. Each route and each fault has its own test:

1. fresh key            a new key under the real owner's name
2. post-hoc probes      probes registered after the suspect existed (see the
                        end-to-end test with a witness and an RFC 3161 authority)
3. chosen null          p0 = 1e-4 on a 10-class task
4. duplicated probe     one matching probe counted forty times
5. tampered transcript  ``wm verify --resume`` of an edited, unsigned transcript
6. rollback and fork    the log truncated or rewritten behind the registry's back,
                        caught by ``wm audit verify --since`` a checkpoint saved earlier

and the faults: malformed bundles (wrong types anywhere, deep nesting) are
INVALID with a reason, never a traceback.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, create_engine, text

import registry.log as registry_log
from core import merkle
from core.canonical import b64e
from core.commitment import SALT_SIZE
from core.errors import EvidenceError
from core.modelio import load_model, save_model
from core.nulls import Binomial
from core.probeset import ProbeSet
from core.serving import running_server
from registry import Registry, generate_owner_key
from registry.dsse import payload_of
from tests.registry.test_tsa import tsa  # noqa: F401 - the openssl ts authority fixture
from tests.registry.test_witness import witness_cli  # noqa: F401 - the `wm witness serve` fixture
from verifier.evidence import EVIDENCE_TYPE, Pins, check_bundle, read_bundle, run_checks
from verifier.server import ServedModel, build_app
from watermark import TriggerSet, WatermarkKey

from .evidence_world import SHAPE, Owner, make_owner, resign, restate
from .helpers import oracle_app, untrained


@dataclass
class Suspect:
    """An independent model, served for real; it never saw any owner's model or marks."""

    path: Path
    url: str

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return load_model(self.path)(x).argmax(dim=1)


@pytest.fixture(scope="module")
def suspect(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suspect]:
    tmp = tmp_path_factory.mktemp("suspect")
    path = tmp / "independent.pt2"
    save_model(untrained(seed=7), path, input_shape=SHAPE, num_classes=10, arch="mlp")
    app = build_app({"independent": ServedModel(load_model(path), "labels")})
    with running_server(app) as srv:
        yield Suspect(path, f"{srv.url}/v2/models/independent/infer")


def _honest_watermark(owner: Owner, seed: bytes = b"w") -> int:
    probes = TriggerSet(n=60).probes(WatermarkKey(seed * 32), num_classes=10, input_shape=SHAPE)
    return owner.register(probes)


def _probes_fitted_to(suspect: Suspect, *, n: int = 40, p0: float = 0.1, seed: int = 3) -> ProbeSet:
    """Noise inputs labelled with the suspect's own answers: what a framer would commit."""
    x = torch.from_numpy(np.random.default_rng(seed).random((n, *SHAPE), dtype=np.float32))
    return ProbeSet(inputs=x, expected=suspect.predict(x), kind="watermark", scheme=f"framed:n={n}",
                    null=Binomial(p0), num_classes=10,
                    salts=tuple(os.urandom(SALT_SIZE) for _ in range(n)))


def _cli() -> Any:
    from cli.main import _register_commands, wm

    _register_commands()
    return wm


# ---------------------------------------------------------------- route 1: fresh key


def test_route1_fresh_key_under_the_owners_name(suspect: Suspect, tmp_path: Path) -> None:
    alice = make_owner(tmp_path, "alice")
    _honest_watermark(alice)
    honest = alice.verify(suspect.url, tmp_path / "honest.json", budget=60)
    assert honest.selection.verdict == "not_owned"
    # Mallory makes a key named "alice", commits probes labelled by the suspect itself.
    mallory = make_owner(tmp_path, "alice", seed=1)
    mallory.register(_probes_fitted_to(suspect))
    forged = mallory.verify(suspect.url, tmp_path / "forged.json")
    assert forged.selection.verdict == "owned"  # the forger's own tools say owned ...
    with pytest.raises(EvidenceError, match=r"^owner-key: signed by key .*not by the pinned owner key"):
        check_bundle(read_bundle(forged.evidence), alice.pins)  # ... the real owner's key says no
    checklist = check_bundle(read_bundle(honest.evidence), alice.pins)
    assert checklist.valid and checklist.verdict == "not_owned"
    wm = _cli()
    r = CliRunner().invoke(wm, ["evidence", "check", str(forged.evidence)])
    assert r.exit_code == 2 and "no owner key pinned" in r.stderr
    r = CliRunner().invoke(wm, ["evidence", "check", str(forged.evidence),
                                "--owner-key", str(alice.publish_key())])
    assert r.exit_code == 1 and r.stdout.splitlines()[-1].startswith("INVALID: owner-key:")


# ---------------------------------------------------------------- route 2: post-hoc probes


def test_route2_post_hoc_probes_rest_on_the_owners_word_without_time(
        suspect: Suspect, tmp_path: Path) -> None:
    alice = make_owner(tmp_path, "alice")
    alice.register(_probes_fitted_to(suspect))  # registered after the suspect existed
    forged = alice.verify(suspect.url, tmp_path / "forged.json")
    assert forged.selection.verdict == "owned"
    checklist = run_checks(read_bundle(forged.evidence), alice.pins)
    time = next(ln for ln in checklist.lines if ln.part == "time")
    assert time.status == "not done" and "owner's word only" in time.detail
    assert any("time: owner's word only" in t for t in checklist.trusted)
    # Asked to count only what existed before the suspect, with no time proven: nothing counts.
    since = Pins(owner_key_ids=frozenset({alice.key.key_id}), suspect_since=datetime.now(UTC))
    with pytest.raises(EvidenceError, match=r"^time: no probe set is proven committed before"):
        check_bundle(read_bundle(forged.evidence), since)


def test_route2_post_hoc_probes_are_dropped_end_to_end(request: pytest.FixtureRequest,
                                                        tmp_path: Path) -> None:
    """A witness served by `wm witness serve` and an `openssl ts` authority, both on loopback:
    what was committed before the suspect appeared counts, what was registered after is dropped."""
    tsa_url, tsa_ca = request.getfixturevalue("tsa")
    witness_key, _, witness_url, key = request.getfixturevalue("witness_cli")
    home = tmp_path / "home"
    db = f"sqlite:///{tmp_path / 'registry.db'}"
    path = tmp_path / "model.pt2"
    save_model(untrained(), path, input_shape=SHAPE, num_classes=10, arch="mlp")
    owner = Owner(home, key, db, Registry.open(db), path)
    for name in ("honest", "mixed"):
        owner.registry.add_model(key, name, path, arch="mlp", input_shape=list(SHAPE), num_classes=10,
                                 data="digits")
    honest = TriggerSet(n=60).probes(WatermarkKey(b"h" * 32), num_classes=10, input_shape=SHAPE)
    weak = TriggerSet(n=4).probes(WatermarkKey(b"k" * 32), num_classes=10, input_shape=SHAPE)
    owner.register(honest, model="honest")
    owner.register(weak, model="mixed")
    owner.registry.checkpoint(key, tsa_url=tsa_url, witnesses=[witness_url])
    time.sleep(1.5)
    since = datetime.now(UTC)  # the suspect appears
    time.sleep(1.5)
    copy = ProbeSet(inputs=torch.cat([honest.inputs, weak.inputs]),
                    expected=torch.cat([honest.expected, weak.expected]), kind="watermark",
                    scheme="copy", null=honest.null, num_classes=10, salts=honest.salts + weak.salts)
    with running_server(oracle_app(copy)) as srv:
        url = f"{srv.url}/v2/models/copy/infer"
        # Registered after the suspect appeared, labelled with what the suspect answers.
        x = TriggerSet(n=40).probes(WatermarkKey(b"p" * 32), num_classes=10, input_shape=SHAPE).inputs
        owner.register(ProbeSet(inputs=x, expected=torch.ones(40, dtype=torch.int64), kind="watermark",
                                scheme="framed:n=40", null=Binomial(0.1), num_classes=10,
                                salts=tuple(os.urandom(SALT_SIZE) for _ in range(40))), model="mixed")
        owner.registry.checkpoint(key, tsa_url=tsa_url, witnesses=[witness_url])
        good = owner.verify(url, tmp_path / "honest.json", models=("honest",))
        framed = owner.verify(url, tmp_path / "mixed.json", models=("mixed",), budget=60)
    assert good.selection.verdict == "owned" and framed.selection.verdict == "owned"
    pins = ["--owner-key", str(home / "owner.pub"), "--suspect-since", since.isoformat()]
    both = [*pins, "--tsa-ca", str(tsa_ca), "--witness-key", f"{witness_key}.pub"]
    wm, runner = _cli(), CliRunner()

    def check(bundle: Path, *args: str) -> tuple[int, list[str]]:
        r = runner.invoke(wm, ["evidence", "check", str(bundle), *args])
        return r.exit_code, r.stdout.splitlines()

    code, lines = check(good.evidence, *both)
    assert code == 0, lines
    time_line = next(ln for ln in lines if "commitments older than the suspect" in ln)
    assert "done" in time_line and "1 of 1 probe sets proven committed before" in time_line
    assert "witness w.example/1" in time_line and lines[-1].startswith("VALID: owned")
    for one in (["--tsa-ca", str(tsa_ca)], ["--witness-key", f"{witness_key}.pub"]):
        assert check(good.evidence, *pins, *one)[0] == 0  # either party's word suffices
    code, lines = check(framed.evidence, *both)
    assert code == 1
    time_line = next(ln for ln in lines if "commitments older than the suspect" in ln)
    assert "1 of 2 probe sets proven committed before" in time_line and "dropped set 1" in time_line
    assert lines[-1].startswith("INVALID: verdict: the bundle says owned; under your pins: inconclusive")
    # Asked about a time, with nobody pinned to vouch for it: nothing counts (fail closed).
    code, lines = check(good.evidence, *pins)
    assert code == 1 and lines[-1].startswith("INVALID: time: no probe set is proven committed before")
    # Without --suspect-since, time rests on the owner's word, and the output says so.
    code, lines = check(framed.evidence, "--owner-key", key.key_id)
    assert code == 0 and any("time: owner's word only" in ln for ln in lines)


# ---------------------------------------------------------------- route 3: chosen null


def test_route3_chosen_null_is_rejected(suspect: Suspect, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    alice = make_owner(tmp_path, "alice")
    # Random labels, but a null the owner chose: chance agreement (1 in 10) looks like theft.
    probes = TriggerSet(n=60).probes(WatermarkKey(b"n" * 32), num_classes=10, input_shape=SHAPE)
    chosen = ProbeSet(inputs=probes.inputs, expected=probes.expected, kind="watermark",
                      scheme="trigger-set:n=60:pattern=noise", null=Binomial(1e-4), num_classes=10,
                      salts=probes.salts)
    # The honest registry refuses such a set (tests/registry); a dishonest owner runs one that does not.
    monkeypatch.setattr(registry_log, "check_null", lambda *a, **k: None, raising=False)
    alice.register(chosen)
    forged = alice.verify(suspect.url, tmp_path / "forged.json", budget=60, mode="fixed")
    assert forged.selection.verdict == "owned"  # from chance matches
    with pytest.raises(EvidenceError, match=r"^nulls: test 0: a watermark probe set must carry the "
                                            r"exact null Binomial\(1/10\)"):
        check_bundle(read_bundle(forged.evidence), alice.pins)


# ---------------------------------------------------------------- route 4: duplicated probe


def test_route4_duplicated_probe_is_counted_once(suspect: Suspect, tmp_path: Path) -> None:
    alice = make_owner(tmp_path, "alice")
    _honest_watermark(alice)
    honest = alice.verify(suspect.url, tmp_path / "honest.json", budget=60, mode="fixed")
    assert honest.selection.verdict == "not_owned"
    payload = payload_of(read_bundle(honest.evidence))
    labels = {o["index"]: o["label"] for o in payload["tests"][0]["openings"]}
    item, label = next((it, lab) for r in payload["transcript"]["records"]
                       for it, lab in zip(r["items"], r["labels"], strict=True)
                       if it[0] >= 0 and lab == labels[it[1]])

    def duplicate(p: dict[str, Any]) -> None:
        rs = p["transcript"]["records"]
        top = max(r["batch"] for r in rs)
        rs.extend({**rs[0], "batch": top + 1 + k, "items": [item], "labels": [label]} for k in range(40))
        restate(p, alice)
        assert p["verdict"] == "owned"

    with pytest.raises(EvidenceError, match=r"^counting: batch \d+: probe 0/\d+ was already counted"):
        check_bundle(resign(alice, honest.evidence, duplicate), alice.pins)


def test_route4_same_probe_set_twice_or_same_input_twice(suspect: Suspect, tmp_path: Path) -> None:
    alice = make_owner(tmp_path, "alice")
    first = TriggerSet(n=30).probes(WatermarkKey(b"d" * 32), num_classes=10, input_shape=SHAPE)
    alice.register(first)
    # The same probes re-salted: another root, but the same inputs and labels counted again.
    again = ProbeSet(inputs=first.inputs, expected=first.expected, kind="watermark",
                     scheme=first.scheme + ":copy", null=first.null, num_classes=10,
                     salts=tuple(os.urandom(SALT_SIZE) for _ in range(30)))
    alice.register(again)
    out = alice.verify(suspect.url, tmp_path / "twice.json", budget=60)
    with pytest.raises(EvidenceError, match=r"^counting: test 1: probe \d+ has the same input as probe"):
        check_bundle(read_bundle(out.evidence), alice.pins)

    def list_test_twice(p: dict[str, Any]) -> None:
        p["tests"].append(p["tests"][0])
        p["transcript"]["header"]["sources"].append(p["transcript"]["header"]["sources"][0])

    with pytest.raises(EvidenceError, match=r"^counting: a probe set is tested twice"):
        check_bundle(resign(alice, out.evidence, list_test_twice), alice.pins)


# ---------------------------------------------------------------- route 5: tampered transcript


def test_route5_resume_refuses_an_edited_transcript(suspect: Suspect, tmp_path: Path) -> None:
    alice = make_owner(tmp_path, "alice")
    pid = _honest_watermark(alice)
    committed = alice.registry.load_probeset(pid, alice.key).expected
    alice.registry.close()
    env = {"WM_HOME": str(alice.home), "WM_PASSPHRASE": "pw", "WM_REGISTRY_URL": alice.db}
    runner, wm = CliRunner(env=env), _cli()
    ev = tmp_path / "ev.json"
    r = runner.invoke(wm, ["verify", "--suspect", suspect.url, "--model", "m", "--json",
                           "--budget", "12", "--batch-size", "4", "--evidence", str(ev)])
    assert r.exit_code == 1 and json.loads(r.stdout)["verdict"] == "not_owned"
    transcript = tmp_path / "ev.json.transcript.jsonl"
    lines = [json.loads(x) for x in transcript.read_text().splitlines()]
    # The framer rewrites every answer to the committed label and drops the end line. The chain
    # breaks at the first line the rewrite changed: a batch the suspect happened to answer with
    # the committed labels (likely when it holds one or two probes beside decoys) stays intact.
    edited = []
    for number, doc in enumerate(lines[1:], start=2):
        if doc["type"] == "query":
            labels = [lab if s < 0 else int(committed[i])
                      for (s, i, _), lab in zip(doc["items"], doc["labels"], strict=True)]
            if labels != doc["labels"]:
                edited.append(number)
            doc["labels"] = labels
    assert edited, "the suspect answered every probe with its committed label: nothing to forge"
    forged = [ln for ln in lines if ln["type"] != "end"]
    for name, docs in [("edited", forged), ("unsigned", [{k: v for k, v in d.items() if k != "mac"}
                                                        for d in forged])]:
        transcript.write_text("".join(json.dumps(d) + "\n" for d in docs))
        ev.unlink(missing_ok=True)
        r = runner.invoke(wm, ["verify", "--suspect", suspect.url, "--json", "--resume", str(transcript)])
        want = f"line {edited[0]} fails its MAC chain" if name == "edited" else "line 1 fails its MAC chain"
        assert r.exit_code == 2 and want in r.stderr and r.stderr.count("\n") == 1, (name, r.output)
        assert not ev.exists()


# ---------------------------------------------------------------- route 6: rollback and fork
#
# Whoever controls the registry's database can drop the append-only triggers,
# delete the newest entries, their tree nodes and checkpoints, and fix the log
# head: the log is then self-consistent and a plain `wm audit verify` cannot
# tell. Or they append other entries in place of the deleted ones, and sign a
# second checkpoint of the same origin that disagrees with the first. A
# checkpoint saved outside the database earlier (`wm audit checkpoint --out`)
# catches both: `wm audit verify --since FILE` exits 1 naming the truncation or
# the fork. (A witness refuses to cosign the rewritten log: see
# tests/registry/test_witness.py.)

T = "application/vnd.wm.test+json"
ENV = {"WM_PASSPHRASE": "pw"}


def _rewind(url: str, keep: int) -> None:
    """Keep the first ``keep`` entries, as an attacker with DDL rights would, and fix the head."""
    engine = create_engine(url)
    with engine.begin() as conn:
        _rewind_in(conn, keep)
    engine.dispose()


def _rewind_in(conn: Connection, keep: int) -> None:
    if conn.dialect.name == "postgresql":
        for table in ("log_entries", "merkle_nodes", "checkpoints"):
            conn.execute(text(f"DROP TRIGGER {table}_append_only ON {table}"))
    else:
        for table in ("log_entries", "merkle_nodes", "checkpoints"):
            for action in ("update", "delete"):
                conn.execute(text(f"DROP TRIGGER {table}_no_{action}"))
    conn.execute(text("DELETE FROM checkpoints WHERE size > :k"), {"k": keep})
    conn.execute(text("DELETE FROM merkle_nodes WHERE end_idx > :k"), {"k": keep})
    conn.execute(text("DELETE FROM log_entries WHERE idx >= :k"), {"k": keep})
    tree = merkle.CompactRange()
    for (h,) in conn.execute(text("SELECT leaf_hash FROM log_entries ORDER BY idx")):
        tree.append(bytes(h))
    conn.execute(text("UPDATE log_head SET size = :n, frontier = :f, root = :r"),
                 {"n": tree.size, "f": tree.to_bytes(), "r": tree.root()})


@pytest.fixture
def saved_log(db_url: str, tmp_path: Path) -> tuple[str, Path, Path]:
    """A log of 8 entries whose checkpoint the owner's counterparty saved; (url, home, saved file)."""
    home = tmp_path / "home"
    key = generate_owner_key(home, "alice", "pw", kdf_rounds=1000)
    with Registry.open(db_url) as reg:
        for n in range(7):
            reg.append(key, T, {"n": n})
    saved = tmp_path / "seen.note"
    res = CliRunner().invoke(_cli(), ["--home", str(home), "--registry", db_url, "audit", "checkpoint",
                                  "--out", str(saved)], env=ENV)
    assert res.exit_code == 0, res.output
    return db_url, home, saved


def _audit(url: str, *args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(_cli(), ["--registry", url, "audit", "verify", *args])
    return res.exit_code, res.stdout, res.stderr


def test_route6_honest_log_extends_the_saved_checkpoint(saved_log: tuple[str, Path, Path]) -> None:
    url, home, saved = saved_log
    with Registry.open(url) as reg:
        from registry import load_owner_key

        reg.append(load_owner_key(home, "pw"), T, {"n": 99})
    code, out, err = _audit(url, "--since", str(saved))
    assert code == 0, err
    assert "ok: the log extends the checkpoint saved earlier (8 entries)" in out


def test_route6_truncation_is_named(saved_log: tuple[str, Path, Path]) -> None:
    url, _, saved = saved_log
    _rewind(url, 5)
    code, out, _ = _audit(url)
    assert code == 0 and out.startswith("ok: 5 entries")  # the attack: self-consistent
    code, _, err = _audit(url, "--since", str(saved))
    assert code == 1
    assert err == ("wm: audit verify: FAILED: truncation: the log has 5 entries, fewer than the 8 of "
                   "the checkpoint saved earlier (entries were removed)\n")


def test_route6_fork_is_named(saved_log: tuple[str, Path, Path]) -> None:
    url, home, saved = saved_log
    _rewind(url, 5)
    from registry import load_owner_key, verify_checkpoint

    key = load_owner_key(home, "pw")
    with Registry.open(url) as reg:
        for n in range(5):
            reg.append(key, T, {"n": -n})
        forked = reg.checkpoint(key).note
        first = verify_checkpoint(saved.read_text(), "alice", key.public_key)
        second = verify_checkpoint(forked, "alice", key.public_key, origin=first.origin)
        # Two owner-signed checkpoints of one origin that disagree: no consistency proof links them.
        assert second.size > first.size and reg.root(first.size) != first.root
    code, out, _ = _audit(url)
    assert code == 0 and out.startswith("ok: 10 entries")  # the attack: self-consistent
    code, _, err = _audit(url, "--since", str(saved))
    assert code == 1
    assert err == ("wm: audit verify: FAILED: fork: the log's first 8 entries have another root than "
                   "the checkpoint saved earlier (the log was rewritten)\n")


def test_route6_a_saved_checkpoint_of_another_log_or_signer_is_refused(
    saved_log: tuple[str, Path, Path], tmp_path: Path
) -> None:
    url, _, saved = saved_log
    other = tmp_path / "other.note"
    other.write_text(saved.read_text().replace("wm.registry/", "wm.registry/x", 1))
    code, _, err = _audit(url, "--since", str(other))
    assert code == 1 and "the checkpoint saved earlier is for log 'wm.registry/x" in err
    mallory = generate_owner_key(tmp_path / "m", "mallory", "pw", kdf_rounds=1000)
    from registry.note import parse_checkpoint, sign_checkpoint

    state, _, _ = parse_checkpoint(saved.read_text())
    other.write_text(sign_checkpoint(state, mallory))
    code, _, err = _audit(url, "--since", str(other))
    assert code == 1 and "the checkpoint saved earlier is signed by no owner this log knows" in err


# ---------------------------------------------------------------- faults: malformed bundles


@dataclass(frozen=True)
class Honest:
    """An honest owner and its bundle (kept out of reprs: hypothesis prints its arguments)."""

    owner: Owner = field(repr=False)
    envelope: dict[str, Any] = field(repr=False)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.owner, self.envelope))

    def __repr__(self) -> str:
        return "Honest(...)"


@pytest.fixture(scope="module")
def honest(suspect: Suspect, tmp_path_factory: pytest.TempPathFactory) -> Honest:
    tmp = tmp_path_factory.mktemp("honest")
    alice = make_owner(tmp, "alice")
    _honest_watermark(alice)
    out = alice.verify(suspect.url, tmp / "ev.json", budget=20)
    return Honest(alice, read_bundle(out.evidence))


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node[:3]):
            out += _paths(v, (*prefix, i))
    return out


_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=1 - 2**53, max_value=2**53 - 1),
              st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8)),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children,
                                                                       max_size=3),
    max_leaves=6,
)


@given(data=st.data())
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_fault_wrong_types_anywhere_are_invalid_with_a_reason(
        honest: Honest, data: st.DataObject) -> None:
    owner, envelope = honest
    payload = payload_of(envelope)
    path = data.draw(st.sampled_from([p for p in _paths(payload) if p]))
    value = data.draw(_JSON)

    def put(p: dict[str, Any]) -> None:
        node: Any = p
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value

    checklist = run_checks(resign(owner, envelope, put), owner.pins)  # never raises
    failure = checklist.failure
    assert failure is None or (failure.detail and failure.part)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: p.__setitem__("models", [1]), "models[0] is not a JSON object"),
        (lambda p: p.__setitem__("tests", "all"), "tests is not a list"),
        (lambda p: p["tests"][0].__setitem__("openings", [{"index": "0"}]), "tests[0].openings[0]"),
        (lambda p: p["transcript"]["records"][0]["items"].__setitem__(0, [0, 1]),
         "is not [source, index, digest]"),
        (lambda p: p["tests"][0].__setitem__("num_classes", 1),
         "tests[0].num_classes is not an integer >= 2"),
        (lambda p: p.__setitem__("p_value", "1e-30"), "p_value is not a finite number"),
    ],
)
def test_fault_malformed_bundles_are_invalid(honest: Honest, mutate: Any,
                                             message: str) -> None:
    owner, envelope = honest
    checklist = run_checks(resign(owner, envelope, mutate), owner.pins)
    assert checklist.failure is not None and message in checklist.failure.detail


def test_fault_deep_nesting_is_invalid_not_a_crash(honest: Honest,
                                                   tmp_path: Path) -> None:
    owner, envelope = honest
    deep = b"[" * 100_000 + b"]" * 100_000
    bomb = {**envelope, "payload": b64e(deep), "payloadType": EVIDENCE_TYPE}
    checklist = run_checks(bomb, owner.pins)
    assert checklist.failure is not None and checklist.failure.part == "format"
    assert "nested too deeply" in checklist.failure.detail
    path = tmp_path / "deep.json"
    path.write_bytes(deep)
    r = CliRunner().invoke(_cli(), ["evidence", "check", str(path), "--owner-key", owner.key.key_id])
    assert r.exit_code == 2 and "nested too deeply" in r.stderr and r.stderr.count("\n") == 1


def test_honest_bundle_still_passes(honest: Honest) -> None:
    owner, envelope = honest
    assert check_bundle(envelope, owner.pins).valid

