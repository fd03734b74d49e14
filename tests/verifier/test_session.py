"""Query plan, transcript written as it goes, early stopping and resume, over real HTTP."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from core.data import load_digits
from core.errors import InputError, SuspectError
from core.probeset import ProbeSet
from core.serving import BackgroundServer, running_server
from verifier.session import (
    DECOY,
    ProbeSource,
    QueryPlan,
    VerificationSession,
    input_digest,
    read_transcript,
)
from verifier.wire import HttpSettings, OipClient
from watermark import WatermarkKey, parse_scheme

from .helpers import oracle_app

MAC_KEY = b"m" * 32  # stands for the key wm verify derives from the owner key


@pytest.fixture(scope="module")
def decoys() -> torch.Tensor:
    return load_digits().test.x


@pytest.fixture(scope="module")
def probes() -> ProbeSet:
    return parse_scheme("trigger-set:n=60").probes(
        WatermarkKey(b"k" * 32), num_classes=10, input_shape=(1, 8, 8), data=None
    )


@pytest.fixture(scope="module")
def copy_server(probes: ProbeSet) -> Iterator[BackgroundServer]:
    with running_server(oracle_app(probes, copy=True)) as srv:
        yield srv


@pytest.fixture(scope="module")
def stranger_server(probes: ProbeSet) -> Iterator[BackgroundServer]:
    with running_server(oracle_app(probes, copy=False)) as srv:
        yield srv


class CountingTransport(httpx.HTTPTransport):
    """Real HTTP, counting inference requests; optionally failing after ``fail_after`` of them."""

    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__()
        self.posts = 0
        self.fail_after = fail_after

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            if self.fail_after is not None and self.posts >= self.fail_after:
                raise httpx.ConnectError("link down", request=request)
            self.posts += 1
        return super().handle_request(request)


def _client(srv: BackgroundServer, transport: httpx.BaseTransport | None = None,
            concurrency: int = 2) -> OipClient:
    return OipClient(f"{srv.url}/v2/models/s/infer", num_classes=10, input_shape=(1, 8, 8),
                     settings=HttpSettings(retries=0, concurrency=concurrency), transport=transport)


def test_plan_mixes_probes_among_decoys(probes: ProbeSet) -> None:
    a = ProbeSource("a", probes, tuple(range(0, 60, 2)))
    b = ProbeSource("b", probes, tuple(range(1, 60, 2)))
    plan = QueryPlan.build([a, b], decoy_count=300, budget=40, batch_size=7, seed=b"s" * 16)
    items = [it for batch in plan.batches for it in batch]
    assert all(len(batch) == 7 for batch in plan.batches[:-1])
    probes_ = [it for it in items if it.source != DECOY]
    assert len(probes_) == 40 and len(items) == 80
    assert sum(it.source == 0 for it in probes_) == 20  # round-robin
    assert all(it.index % 2 == it.source for it in probes_)  # only the allowed (unspent) ones
    assert len({(it.source, it.index) for it in probes_}) == 40
    positions = [i for i, it in enumerate(items) if it.source != DECOY]
    assert positions != list(range(40))  # shuffled, not probes first
    assert 30 < sum(positions) / len(positions) < 50
    same = QueryPlan.build([a, b], decoy_count=300, budget=40, batch_size=7, seed=b"s" * 16)
    other = QueryPlan.build([a, b], decoy_count=300, budget=40, batch_size=7, seed=b"t" * 16)
    assert same.batches == plan.batches and other.batches != plan.batches


def test_plan_refuses_nothing_to_send(probes: ProbeSet) -> None:
    with pytest.raises(InputError, match="already spent"):
        QueryPlan.build([ProbeSource("a", probes, ())], decoy_count=10, budget=5, batch_size=4)
    with pytest.raises(InputError, match="no probe sets"):
        QueryPlan.build([], decoy_count=10, budget=5, batch_size=4)


def test_copy_is_owned_early_and_transcript_is_complete(
    copy_server: BackgroundServer, probes: ProbeSet, decoys: torch.Tensor, tmp_path: Path
) -> None:
    src = [ProbeSource("m", probes, tuple(range(60)))]
    plan = QueryPlan.build(src, decoy_count=len(decoys), budget=60, batch_size=4)
    spent: list[int] = []
    path = tmp_path / "t.jsonl"
    with _client(copy_server, concurrency=3) as client:
        session = VerificationSession(client, src, decoys, plan, path, alpha=1e-9,
                                      spend=lambda s, idx: spent.extend(idx))
        result = session.run()
    st = result.statistics
    assert st.verdict == "owned" and st.p_value <= 1e-9
    assert st.probes <= 20 and result.stopped_early
    read = read_transcript(path, mac_key=None)
    header, records = read.header, read.records
    assert header["sources"][0]["root"] == src[0].describe()["root"]
    assert [r["type"] for r in records][-1] == "end"
    queries = [r for r in records if r["type"] == "query"]
    assert len(queries) == result.requests < len(plan.batches)
    sent = [it[1] for r in queries for it in r["items"] if it[0] != DECOY]
    assert sorted(sent) == sorted(spent)  # spent before sending, and only what was sent
    for r in queries:
        for (s, i, digest) in r["items"]:
            x = decoys[i] if s == DECOY else probes.inputs[i]
            assert digest == input_digest(x)
        assert len(r["request_sha256"]) == 64 and r["status"] == 200 and r["latency_s"] > 0


def test_stranger_without_a_futility_rule_spends_the_budget(
    stranger_server: BackgroundServer, probes: ProbeSet, decoys: torch.Tensor, tmp_path: Path
) -> None:
    src = [ProbeSource("m", probes, tuple(range(60)))]
    plan = QueryPlan.build(src, decoy_count=len(decoys), budget=50, batch_size=10)
    with _client(stranger_server) as client:
        result = VerificationSession(client, src, decoys, plan, tmp_path / "t.jsonl",
                                     alpha=1e-6, futility=None).run()
    assert result.statistics.verdict == "not_owned" and result.statistics.ruled_out_at is None
    assert result.statistics.probes == 50 and result.requests == len(plan.batches)
    zero = sum(int(probes.expected[i]) == 0 for i in result.sent[0])  # the stranger answers 0
    assert result.statistics.tests[0].matches == zero


def test_stranger_is_ruled_out_early_and_sent_no_probe_more_than_needed(
    stranger_server: BackgroundServer, probes: ProbeSet, decoys: torch.Tensor, tmp_path: Path
) -> None:
    src = [ProbeSource("m", probes, tuple(range(60)))]
    plan = QueryPlan.for_session(src, mode="sequential", alpha=1e-6, decoy_count=len(decoys),
                                 budget=50, batch_size=4)
    path = tmp_path / "t.jsonl"
    with _client(stranger_server, concurrency=4) as client:
        result = VerificationSession(client, src, decoys, plan, path, alpha=1e-6).run()
    st = result.statistics
    assert st.verdict == "not_owned" and st.ruled_out_at is not None and result.stopped_early
    assert st.futility is not None and st.to_dict()["futility"]["error"] == st.futility.error
    # despite 4 requests allowed in flight, nothing was sent after the rule could have fired
    assert st.probes == st.ruled_out_at or st.probes - st.ruled_out_at < 4
    read = read_transcript(path)
    header, records = read.header, read.records
    assert header["futility"] == st.futility.to_dict() and header["sources"][0]["unspent"] == 60
    assert records[-1]["reason"] == "ruled out"


def test_resume_continues_without_repeating_a_query(
    copy_server: BackgroundServer, probes: ProbeSet, decoys: torch.Tensor, tmp_path: Path
) -> None:
    src = [ProbeSource("m", probes, tuple(range(60)))]
    plan = QueryPlan.build(src, decoy_count=len(decoys), budget=60, batch_size=6)
    path = tmp_path / "t.jsonl"
    first = CountingTransport(fail_after=4)
    with _client(copy_server, first, concurrency=1) as client:
        session = VerificationSession(client, src, decoys, plan, path, alpha=1e-6, mode="fixed",
                                      mac_key=MAC_KEY)
        with pytest.raises(SuspectError, match="cannot reach the suspect"):
            session.run()
    records = read_transcript(path, mac_key=MAC_KEY).records
    assert [r["type"] for r in records] == ["query"] * 4 + ["error"]
    with open(path, "a") as f:
        f.write('{"type": "query", "batch": 99, "ite')  # torn by a crash mid-write
    second = CountingTransport()
    with _client(copy_server, second, concurrency=2) as client:
        resumed = VerificationSession.resume(path, client, src, decoys, mac_key=MAC_KEY)
        result = resumed.run()
    assert first.posts == 4 and second.posts == len(plan.batches) - 4
    batches = [r["batch"] for r in result.records]
    assert batches == list(range(len(plan.batches)))
    assert result.statistics.probes == 60 and result.statistics.tests[0].matches == 60
    # resuming a finished run sends nothing more
    third = CountingTransport()
    with _client(copy_server, third) as client:
        again = VerificationSession.resume(path, client, src, decoys, mac_key=MAC_KEY).run()
    assert third.posts == 0 and again.statistics.p_value == result.statistics.p_value


def test_resume_refuses_another_suspect_or_probe_set(
    copy_server: BackgroundServer, probes: ProbeSet, decoys: torch.Tensor, tmp_path: Path
) -> None:
    src = [ProbeSource("m", probes, tuple(range(60)))]
    plan = QueryPlan.build(src, decoy_count=len(decoys), budget=8, batch_size=8)
    path = tmp_path / "t.jsonl"
    with _client(copy_server) as client:
        VerificationSession(client, src, decoys, plan, path, alpha=1e-6, mac_key=MAC_KEY).run()
        with pytest.raises(InputError, match="exists already"):
            VerificationSession(client, src, decoys, plan, path, alpha=1e-6).run()
    other = parse_scheme("trigger-set:n=60").probes(WatermarkKey(b"z" * 32), num_classes=10,
                                                    input_shape=(1, 8, 8), data=None)
    with _client(copy_server) as client, pytest.raises(InputError, match="other probe sets"):
        VerificationSession.resume(path, client, [ProbeSource("m", other, (0,))], decoys,
                                   mac_key=MAC_KEY)
    elsewhere = OipClient("http://127.0.0.1:1/v2/models/s", num_classes=10, input_shape=(1, 8, 8))
    with pytest.raises(InputError, match="another suspect"):
        VerificationSession.resume(path, elsewhere, src, decoys, mac_key=MAC_KEY)
    with pytest.raises(InputError, match="other decoys"), _client(copy_server) as client:
        VerificationSession.resume(path, client, src, decoys[:10], mac_key=MAC_KEY)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert json.loads(path.read_text().splitlines()[0])["type"] == "wm.transcript/v1" and digest


def _edit_line(path: Path, n: int, change: Callable[[dict[str, Any]], None]) -> None:
    lines = path.read_text().splitlines()
    doc = json.loads(lines[n - 1])
    change(doc)
    lines[n - 1] = json.dumps(doc, separators=(",", ":"))
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("name", "tamper", "line"),
    [
        ("answer edited", lambda p: _edit_line(p, 2, lambda d: d["labels"].__setitem__(0, 9)), 2),
        ("header edited", lambda p: _edit_line(p, 1, lambda d: d.__setitem__("alpha", 0.5)), 1),
        ("line removed", lambda p: p.write_text("".join(
            ln for i, ln in enumerate(p.read_text().splitlines(True)) if i != 1)), 2),
        ("lines swapped", lambda p: p.write_text("".join(
            (lambda ls: [ls[0], ls[2], ls[1], *ls[3:]])(p.read_text().splitlines(True)))), 2),
        ("MACs stripped", lambda p: p.write_text("".join(
            json.dumps({k: v for k, v in json.loads(ln).items() if k != "mac"}) + "\n"
            for ln in p.read_text().splitlines())), 1),
    ],
)
def test_resume_refuses_a_transcript_whose_chain_fails(
    stranger_server: BackgroundServer, probes: ProbeSet, decoys: torch.Tensor, tmp_path: Path,
    name: str, tamper: Callable[[Path], None], line: int,
) -> None:
    src = [ProbeSource("m", probes, tuple(range(60)))]
    plan = QueryPlan.build(src, decoy_count=len(decoys), budget=12, batch_size=4)
    path = tmp_path / "t.jsonl"
    with (_client(stranger_server, CountingTransport(fail_after=2), concurrency=1) as client,
          pytest.raises(SuspectError)):
        VerificationSession(client, src, decoys, plan, path, alpha=1e-6, mac_key=MAC_KEY).run()
    assert read_transcript(path, mac_key=MAC_KEY).records  # the honest transcript chains
    tamper(path)
    with _client(stranger_server) as client, pytest.raises(
            InputError, match=f"line {line} fails its MAC chain"):
        VerificationSession.resume(path, client, src, decoys, mac_key=MAC_KEY)


def test_resume_refuses_another_owners_key(
    stranger_server: BackgroundServer, probes: ProbeSet, decoys: torch.Tensor, tmp_path: Path
) -> None:
    src = [ProbeSource("m", probes, tuple(range(60)))]
    plan = QueryPlan.build(src, decoy_count=len(decoys), budget=4, batch_size=4)
    path = tmp_path / "t.jsonl"
    with _client(stranger_server) as client:
        VerificationSession(client, src, decoys, plan, path, alpha=1e-6, mac_key=MAC_KEY).run()
        with pytest.raises(InputError, match="line 1 fails its MAC chain"):
            VerificationSession.resume(path, client, src, decoys, mac_key=b"x" * 32)


def test_two_concurrent_verifications_never_send_the_same_probe(
    stranger_server: BackgroundServer, probes: ProbeSet, tmp_path: Path
) -> None:
    """Two real `wm verify` processes on one registry: a probe is spent before it is sent, at most
    once, so the runs' transcripts never share a probe (a run whose batch was taken stops, exit 2)."""
    import subprocess
    import sys

    from core.modelio import save_model
    from registry import Registry, generate_owner_key
    from registry.records import SPEND_TYPE

    from .helpers import untrained

    home = tmp_path / "home"
    key = generate_owner_key(home, "alice", passphrase="pw", kdf_rounds=1_000)
    db = f"sqlite:///{tmp_path / 'registry.db'}"
    save_model(untrained(), tmp_path / "m.pt2", input_shape=(1, 8, 8), num_classes=10, arch="mlp")
    with Registry.open(db) as reg:
        reg.add_model(key, "m", tmp_path / "m.pt2", arch="mlp", input_shape=[1, 8, 8], num_classes=10,
                      data="digits")
        reg.add_probeset(key, "m", probes)
    env = {**os.environ, "WM_HOME": str(home), "WM_PASSPHRASE": "pw", "WM_REGISTRY_URL": db,
           "WM_TORCH_THREADS": "1"}
    root = Path(__file__).resolve().parents[2]
    runs = [subprocess.Popen(
        [sys.executable, "-m", "cli", "verify", "--suspect", f"{stranger_server.url}/v2/models/s/infer",
         "--model", "m", "--budget", "60", "--batch-size", "2", "--concurrency", "1", "--fixed",
         "--evidence", str(tmp_path / f"ev{i}.json")],
        cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    outcomes = [(p.wait(timeout=600), p.communicate()[1]) for p in runs]
    # Both planned all 60 probes, so one of them must have found its probes taken.
    assert sorted(code for code, _ in outcomes)[1] == 2, outcomes
    sent: list[set[int]] = []
    for i, (code, err) in enumerate(outcomes):
        assert code in (1, 2), err
        if code == 2:
            assert ("spent already" in err or "already spent" in err) and err.count("\n") == 1, err
        path = tmp_path / f"ev{i}.json.transcript.jsonl"
        records = read_transcript(path).records if path.exists() else []
        sent.append({it[1] for r in records if r["type"] == "query" for it in r["items"] if it[0] != DECOY})
    assert not sent[0] & sent[1]
    with Registry.open(db) as reg:
        spent = [i for e in reg.entries(payload_type=SPEND_TYPE) for i in e.record["indices"]]
    assert len(spent) == len(set(spent)) and sent[0] | sent[1] <= set(spent)
