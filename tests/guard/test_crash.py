"""The write-ahead journal: a guard process killed (SIGKILL) mid-stream loses no record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import numpy as np

from core.marking import canonical_bytes
from core.serving import running_server
from guard.epochs import current_epoch
from guard.journal import GUARD_QUERIES_TYPE, GuardRecord, Journal
from guard.prf import GuardKey, Marker
from guard.service import guard_dir
from registry.log import Registry
from tests.guard.conftest import MODEL, PASSPHRASE, UPSTREAM_NAME, Owner, digits_queries, oip_body
from tests.servers import wm_server
from verifier.server import ServedModel, build_app


def guard_args(owner: Owner, upstream: str, *extra: str) -> list[str]:
    """``wm guard`` on port 0 in front of ``upstream``, flushing only when stopped."""
    return ["--home", str(owner.home), "--registry", owner.registry_url, "guard",
            "--upstream", f"{upstream}/v2/models/{UPSTREAM_NAME}/infer", "--model", MODEL,
            "--rate", "0.2", "--port", "0", "--flush-interval", "600", "--no-monitor", *extra]


def kill_all(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a guard and its workers at once (nothing gets to flush)."""
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    for pid in [proc.pid, *map(int, children)]:
        os.kill(pid, signal.SIGKILL)
    proc.wait(10)


def _guard_records(owner: Owner) -> list[GuardRecord]:
    with Registry.open(owner.registry_url) as reg:
        return [GuardRecord.from_dict(r) for e in reg.entries(payload_type=GUARD_QUERIES_TYPE)
                for r in e.record["records"]]


def test_guard_killed_mid_stream_and_restarted_loses_no_record(owner: Owner, tmp_path: Path) -> None:
    with Registry.open(owner.registry_url) as reg:
        marker = Marker(GuardKey.derive(owner.key, MODEL), current_epoch(reg, owner.key, MODEL, 0.2, 10))
    x = digits_queries(None)  # 539 inputs, sent 4 per request
    env = {"WM_PASSPHRASE": PASSPHRASE}
    answered: list[tuple[np.ndarray, list[int]]] = []
    failures: list[str] = []
    url: list[str] = []  # where the guard listens now (it moves when restarted)
    stop = threading.Event()

    def stream() -> None:  # only records what happened; the test thread asserts
        with httpx.Client(timeout=10) as c:
            for i in range(0, len(x), 4):
                while not stop.is_set():
                    try:
                        r = c.post(url[-1], json=oip_body(x[i:i + 4]), headers={"x-client-id": "mallory"})
                    except httpx.HTTPError:
                        time.sleep(0.05)  # the guard is down: retry, as a client would
                        continue
                    if r.status_code != 200:
                        failures.append(f"{r.status_code}: {r.text[:200]}")
                        return
                    answered.append((x[i:i + 4], r.json()["outputs"][0]["data"]))
                    break

    app = build_app({UPSTREAM_NAME: ServedModel(owner.model(), "labels")})
    with ExitStack() as stack, running_server(app) as up:
        first = stack.enter_context(wm_server(guard_args(owner, up.url), env=env))
        url.append(f"{first.url}/v2/models/{UPSTREAM_NAME}/infer")
        client = threading.Thread(target=stream, daemon=True)
        client.start()
        deadline = time.monotonic() + 60
        while len(answered) < 40 and not failures and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(answered) >= 40, failures or "the guard answered too slowly"
        kill_all(first.proc)  # mid-stream: the client is still sending
        killed_at = len(answered)
        journal = (guard_dir(owner.home, MODEL) / "journal-0.jsonl").read_text().splitlines()
        assert _guard_records(owner) == []  # nothing flushed yet (flush interval 600 s)
        assert len(journal) > 1 and all(json.loads(line) for line in journal)
        second = stack.enter_context(wm_server(guard_args(owner, up.url), env=env))  # replays
        url.append(f"{second.url}/v2/models/{UPSTREAM_NAME}/infer")
        client.join(120)
        stop.set()
        assert not client.is_alive(), "the client did not finish within 120 s"
        second.proc.send_signal(signal.SIGTERM)
        assert second.proc.wait(30) == 0, second.stderr[-2000:]
    assert failures == []
    assert killed_at < -(-len(x) // 4) == len(answered)
    for rows, labels in answered:  # every answer, before and after the crash, marked by the key
        for row, label in zip(rows, labels, strict=True):
            m = marker.decide(canonical_bytes(row))
            assert not m.marked or label == m.label
    sent = np.concatenate([rows for rows, _ in answered])
    marked = {marker.digest(canonical_bytes(r)) for r in sent if marker.decide(canonical_bytes(r)).marked}
    records = _guard_records(owner)
    assert {r.digest for r in records} >= marked and len(marked) > 50
    assert sorted(r.seq for r in records) == list(range(len(records)))
    assert {r.key_epoch for r in records} == {marker.epoch.number}
    with Registry.open(owner.registry_url) as reg:
        reg.verify_log()
    assert "Traceback" not in first.stderr + second.stderr


def test_workers_killed_together_lose_and_duplicate_no_record(owner: Owner, tmp_path: Path) -> None:
    """Two workers, one journal segment each, SIGKILLed; one worker restarted flushes both."""
    with Registry.open(owner.registry_url) as reg:
        marker = Marker(GuardKey.derive(owner.key, MODEL), current_epoch(reg, owner.key, MODEL, 0.2, 10))
    x = digits_queries(None, noisy_copies=1)  # 1,078 inputs over 16 clients (connections), 2 per request
    env = {"WM_PASSPHRASE": PASSPHRASE}
    answered: dict[int, int] = {}
    failures: list[str] = []

    def client(i: int, url: str) -> None:
        with httpx.Client(timeout=30) as c:
            rows = x[i::16]
            for j in range(0, len(rows), 2):
                r = c.post(url, json=oip_body(rows[j:j + 2]), headers={"x-client-id": f"c{i}"})
                if r.status_code != 200:
                    failures.append(f"{r.status_code}: {r.text[:200]}")
                    return
                answered[i] = j + len(rows[j:j + 2])

    app = build_app({UPSTREAM_NAME: ServedModel(owner.model(), "labels")})
    with ExitStack() as stack, running_server(app) as up:
        first = stack.enter_context(wm_server(guard_args(owner, up.url, "--workers", "2"), env=env))
        url = f"{first.url}/v2/models/{UPSTREAM_NAME}/infer"
        threads = [threading.Thread(target=client, args=(i, url), daemon=True) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads), "clients did not finish within 120 s"
        assert failures == []
        segments = sorted((guard_dir(owner.home, MODEL)).glob("journal-*.jsonl"))
        assert [p.name for p in segments] == ["journal-0.jsonl", "journal-1.jsonl"]
        assert all(len(p.read_text().splitlines()) > 1 for p in segments)  # both workers marked
        kill_all(first.proc)  # the parent and both workers, nothing flushed
        assert _guard_records(owner) == []
        second = stack.enter_context(wm_server(guard_args(owner, up.url), env=env))  # one worker:
        second.proc.send_signal(signal.SIGTERM)  # it recovers both segments before serving
        assert second.proc.wait(30) == 0, second.stderr[-2000:]
    assert sum(answered.values()) == len(x)
    expected = {(f"x-client-id:c{i}", marker.digest(canonical_bytes(r)))
                for i in range(16) for r in x[i::16] if marker.decide(canonical_bytes(r)).marked}
    records = _guard_records(owner)
    assert {(r.client, r.digest) for r in records} == expected and len(expected) > 150
    assert len(records) == len(expected)  # nothing written twice
    with Registry.open(owner.registry_url) as reg:
        journals = {e.record["journal"] for e in reg.entries(payload_type=GUARD_QUERIES_TYPE)}
        reg.verify_log()
    assert len(journals) == 2
    assert "Traceback" not in first.stderr + second.stderr


def test_a_torn_last_line_is_cut_and_the_rest_kept(tmp_path: Path) -> None:
    j = Journal(tmp_path, "m")
    pending = {"digest": "d", "label": 3, "output": "labels", "client": "c", "time": "t",
               "epoch": "2024-01-01", "sealed_input": b"x" * 40, "key_epoch": 0}
    j.append([pending, pending])
    j.close()
    with (tmp_path / "journal-0.jsonl").open("ab") as f:
        f.write(b'{"seq": 2, "digest": "half wr')
    j2 = Journal(tmp_path, "m")
    assert [r.seq for r in j2.records_after(-1)] == [0, 1] and j2.next_seq == 2
    assert (tmp_path / "journal-0.jsonl").read_bytes().endswith(b"\n")
    j2.append([pending])
    j2.compact(1)
    assert [r.seq for r in j2.records_after(-1)] == [2]
    j2.close()
    assert [r.seq for r in Journal(tmp_path, "m").records_after(-1)] == [2]
