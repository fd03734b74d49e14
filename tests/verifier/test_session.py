"""Query plan, transcript written as it goes, early stopping and resume, over real HTTP."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

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
    header, records = read_transcript(path)
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
    header, records = read_transcript(path)
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
        session = VerificationSession(client, src, decoys, plan, path, alpha=1e-6, mode="fixed")
        with pytest.raises(SuspectError, match="cannot reach the suspect"):
            session.run()
    _, records = read_transcript(path)
    assert [r["type"] for r in records] == ["query"] * 4 + ["error"]
    with open(path, "a") as f:
        f.write('{"type": "query", "batch": 99, "ite')  # torn by a crash mid-write
    second = CountingTransport()
    with _client(copy_server, second, concurrency=2) as client:
        resumed = VerificationSession.resume(path, client, src, decoys)
        result = resumed.run()
    assert first.posts == 4 and second.posts == len(plan.batches) - 4
    batches = [r["batch"] for r in result.records]
    assert batches == list(range(len(plan.batches)))
    assert result.statistics.probes == 60 and result.statistics.tests[0].matches == 60
    # resuming a finished run sends nothing more
    third = CountingTransport()
    with _client(copy_server, third) as client:
        again = VerificationSession.resume(path, client, src, decoys).run()
    assert third.posts == 0 and again.statistics.p_value == result.statistics.p_value


def test_resume_refuses_another_suspect_or_probe_set(
    copy_server: BackgroundServer, probes: ProbeSet, decoys: torch.Tensor, tmp_path: Path
) -> None:
    src = [ProbeSource("m", probes, tuple(range(60)))]
    plan = QueryPlan.build(src, decoy_count=len(decoys), budget=8, batch_size=8)
    path = tmp_path / "t.jsonl"
    with _client(copy_server) as client:
        VerificationSession(client, src, decoys, plan, path, alpha=1e-6).run()
        with pytest.raises(InputError, match="exists already"):
            VerificationSession(client, src, decoys, plan, path, alpha=1e-6).run()
    other = parse_scheme("trigger-set:n=60").probes(WatermarkKey(b"z" * 32), num_classes=10,
                                                    input_shape=(1, 8, 8), data=None)
    with _client(copy_server) as client, pytest.raises(InputError, match="other probe sets"):
        VerificationSession.resume(path, client, [ProbeSource("m", other, (0,))], decoys)
    elsewhere = OipClient("http://127.0.0.1:1/v2/models/s", num_classes=10, input_shape=(1, 8, 8))
    with pytest.raises(InputError, match="another suspect"):
        VerificationSession.resume(path, elsewhere, src, decoys)
    with pytest.raises(InputError, match="other decoys"), _client(copy_server) as client:
        VerificationSession.resume(path, client, src, decoys[:10])
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert json.loads(path.read_text().splitlines()[0])["type"] == "wm.transcript/v1" and digest
