"""The write-ahead journal: a guard process killed (SIGKILL) mid-stream loses no record."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from guard.journal import GUARD_QUERIES_TYPE, GuardRecord, Journal
from guard.prf import GuardKey, Marker, canonical_bytes
from guard.service import guard_dir
from registry.log import Registry
from tests.guard.conftest import MODEL, PASSPHRASE, UPSTREAM_NAME, Owner, digits_queries, oip_body
from verifier.server import ServedModel, build_app, running_server

WM = [sys.executable, "-c", "from cli.main import main; main()"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_guard(owner: Owner, upstream: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "WM_PASSPHRASE": PASSPHRASE}
    proc = subprocess.Popen(
        [*WM, "--home", str(owner.home), "--registry", owner.registry_url, "guard",
         "--upstream", f"{upstream}/v2/models/{UPSTREAM_NAME}/infer", "--model", MODEL,
         "--rate", "0.2", "--port", str(port), "--flush-interval", "600", "--no-monitor"],
        env=env, stdout=subprocess.DEVNULL, stderr=log.open("ab"),
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
        if proc.poll() is not None:
            break
    proc.kill()
    pytest.fail(f"the guard did not start: {log.read_text()[-2000:]}")


def _guard_records(owner: Owner) -> list[GuardRecord]:
    with Registry.open(owner.registry_url) as reg:
        return [GuardRecord.from_dict(r) for e in reg.entries(payload_type=GUARD_QUERIES_TYPE)
                for r in e.record["records"]]


def test_guard_killed_mid_stream_and_restarted_loses_no_record(owner: Owner, tmp_path: Path) -> None:
    marker = Marker(GuardKey.derive(owner.key, MODEL), 0.2, 10)
    x = digits_queries(None)  # 539 inputs, sent 4 per request
    port = _free_port()
    log = tmp_path / "guard.log"
    answered: list[np.ndarray] = []
    stop = threading.Event()

    def stream(url: str) -> None:
        with httpx.Client(timeout=10) as c:
            for i in range(0, len(x), 4):
                while not stop.is_set():
                    try:
                        r = c.post(url, json=oip_body(x[i:i + 4]), headers={"x-client-id": "mallory"})
                    except httpx.HTTPError:
                        time.sleep(0.05)  # the guard is down: retry, as a client would
                        continue
                    assert r.status_code == 200, r.text
                    labels = r.json()["outputs"][0]["data"]
                    for row, label in zip(x[i:i + 4], labels, strict=True):
                        m = marker.decide(canonical_bytes(row))
                        assert not m.marked or label == m.label
                    answered.append(x[i:i + 4])
                    break

    app = build_app({UPSTREAM_NAME: ServedModel(owner.model(), "labels")})
    with running_server(app) as up:
        guard = _start_guard(owner, up.url, port, log)
        client = threading.Thread(
            target=stream, args=(f"http://127.0.0.1:{port}/v2/models/{UPSTREAM_NAME}/infer",))
        client.start()
        while len(answered) < 40:
            time.sleep(0.01)
        guard.send_signal(signal.SIGKILL)  # mid-stream: the client is still sending
        guard.wait(10)
        killed_at = len(answered)
        journal = (guard_dir(owner.home, MODEL) / "journal.jsonl").read_text().splitlines()
        assert _guard_records(owner) == []  # nothing flushed yet (flush interval 600 s)
        assert len(journal) > 1 and all(json.loads(line) for line in journal)
        guard = _start_guard(owner, up.url, port, log)  # replays the journal into the registry
        client.join(120)
        stop.set()
        guard.send_signal(signal.SIGTERM)
        assert guard.wait(30) == 0, log.read_text()[-2000:]
    assert killed_at < -(-len(x) // 4) == len(answered)
    sent = np.concatenate(answered)
    marked = {marker.digest(canonical_bytes(r)) for r in sent if marker.decide(canonical_bytes(r)).marked}
    records = _guard_records(owner)
    assert {r.digest for r in records} >= marked and len(marked) > 50
    assert sorted(r.seq for r in records) == list(range(len(records)))
    with Registry.open(owner.registry_url) as reg:
        reg.verify_log()
    assert "Traceback" not in log.read_text()


def test_a_torn_last_line_is_cut_and_the_rest_kept(tmp_path: Path) -> None:
    j = Journal(tmp_path, "m")
    pending = {"digest": "d", "label": 3, "output": "labels", "client": "c", "time": "t",
               "epoch": "2024-01-01", "sealed_input": b"x" * 40}
    j.append([pending, pending])
    j.close()
    with (tmp_path / "journal.jsonl").open("ab") as f:
        f.write(b'{"seq": 2, "digest": "half wr')
    j2 = Journal(tmp_path, "m")
    assert [r.seq for r in j2.records_after(-1)] == [0, 1] and j2.next_seq == 2
    assert (tmp_path / "journal.jsonl").read_bytes().endswith(b"\n")
    j2.append([pending])
    j2.compact(1)
    assert [r.seq for r in j2.records_after(-1)] == [2]
    j2.close()
    assert [r.seq for r in Journal(tmp_path, "m").records_after(-1)] == [2]
