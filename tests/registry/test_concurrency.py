"""Eight processes appending at once: no fork, no lost entry, every checkpoint consistent."""

from __future__ import annotations

import os
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest

from registry import Registry, generate_owner_key, verify_checkpoint
from tests.registry.append_worker import PAYLOAD_TYPE

WORKERS, APPENDS, CHECKPOINT_EVERY = 8, 200, 100
ROOT = Path(__file__).resolve().parents[2]


def test_eight_processes_two_hundred_appends_each(db_url: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    key = generate_owner_key(home, "alice", "pw", kdf_rounds=1000)  # 8 processes unlock it
    with Registry.open(db_url) as reg:
        reg.add_owner(key)
    go = tmp_path / "go"
    env = {**os.environ, "WM_PASSPHRASE": "pw"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.registry.append_worker", db_url, str(home), str(w),
             str(APPENDS), str(go), str(CHECKPOINT_EVERY)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for w in range(WORKERS)
    ]
    go.touch()
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-2000:]
        assert out.strip() == str(APPENDS)

    if db_url.startswith("postgresql"):  # every writer took its ticket back: none is left queued
        from sqlalchemy import create_engine, text

        engine = create_engine(db_url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM append_queue")).scalar() == 0
        engine.dispose()
    with Registry.open(db_url) as reg:
        entries = reg.entries(payload_type=PAYLOAD_TYPE)
        assert len(entries) == WORKERS * APPENDS
        assert reg.size() == 1 + WORKERS * APPENDS
        # No gaps: indices are exactly 0..1600, each (worker, i) exactly once, in order per worker.
        assert [e.index for e in reg.entries()] == list(range(1 + WORKERS * APPENDS))
        seen = [(e.record["worker"], e.record["i"]) for e in entries]
        assert sorted(seen) == [(w, i) for w in range(WORKERS) for i in range(APPENDS)]
        for w in range(WORKERS):
            assert [i for ww, i in seen if ww == w] == list(range(APPENDS))
        # One consistent tree: every checkpoint verifies and each is consistent with the next.
        cps = reg.checkpoints()
        assert len(cps) == WORKERS * APPENDS // CHECKPOINT_EVERY
        states = [verify_checkpoint(c.note, "alice", key.public_key, origin=reg.origin) for c in cps]
        for a, b in pairwise(states):
            if a.size < b.size:
                proof = reg.consistency_proof(a.size, b.size)
                assert (proof.root1, proof.root2) == (a.root, b.root)
                proof.verify()
            else:
                assert a.root == b.root
        report = reg.verify_log()
        assert report.size == 1 + WORKERS * APPENDS and report.checkpoints == len(cps)


def test_a_forged_queued_record_is_never_signed(pg_schema_url: str) -> None:
    """Whoever can write the database queues a record under the owner's key id: it is refused."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from sqlalchemy import create_engine, text

    from registry import OwnerKey

    key = OwnerKey("alice", Ed25519PrivateKey.generate())
    with Registry.open(pg_schema_url) as reg:
        reg.add_owner(key)
        engine = create_engine(pg_schema_url)
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO append_queue (key_id, payload_type, payload, mac) "
                              "VALUES (:k, :t, :p, :m)"),
                         {"k": key.key_id, "t": PAYLOAD_TYPE, "p": b'{"forged":true}', "m": b"\0" * 32})
        index = reg.append(key, PAYLOAD_TYPE, {"honest": True})
        with engine.begin() as conn:
            refused = conn.execute(text("SELECT idx FROM append_queue")).scalars().all()
        engine.dispose()
        assert refused == [-1]
        assert [e.record for e in reg.entries(payload_type=PAYLOAD_TYPE)] == [{"honest": True}]
        assert index == 1 and reg.verify_log().size == 2


def test_a_ticket_removed_from_the_queue_fails_instead_of_waiting_for_ever(pg_schema_url: str) -> None:
    """Whoever can write the database deletes a writer's queued ticket: the writer stops with an error."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from core.errors import IntegrityError
    from registry import OwnerKey
    from registry.sequencer import _INFO, _appended

    key = OwnerKey("alice", Ed25519PrivateKey.generate())
    with Registry.open(pg_schema_url) as reg:
        reg.add_owner(key)
        with reg._writer.connect() as conn, pytest.raises(IntegrityError, match="removed"):
            _appended(reg, conn, key, key.derive_key(_INFO), 12345)  # no such ticket
        assert reg.verify_log().size == 1
