"""Tampering behind the ORM's back with raw SQL: `wm audit verify` exits 1 and names the entry.

Each case builds a log of 10 entries (the owner at 0, records 1..9, a model at
2), checkpoints it at sizes 5 and 10, drops the append-only triggers (which an
attacker with DDL rights can do) and changes the tables directly.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Connection, create_engine, text

from cli.main import _register_commands, wm
from registry import OwnerKey, Registry
from registry.dsse import sign_envelope

_register_commands()
T = "application/vnd.wm.test+json"


def drop_triggers(conn: Connection) -> None:
    """Remove the append-only triggers, as an attacker with DDL rights could."""
    if conn.dialect.name == "postgresql":
        for table in ["log_entries", "checkpoints", "models", "merkle_nodes"]:
            conn.execute(text(f"DROP TRIGGER {table}_append_only ON {table}"))
    else:
        for table in ["log_entries", "checkpoints", "models", "merkle_nodes"]:
            conn.execute(text(f"DROP TRIGGER {table}_no_update"))
            conn.execute(text(f"DROP TRIGGER {table}_no_delete"))


def _row(conn: Connection, idx: int) -> dict[str, object]:
    r = conn.execute(text("SELECT * FROM log_entries WHERE idx = :i"), {"i": idx}).one()
    return dict(r._mapping)


def _set(conn: Connection, idx: int, row: dict[str, object]) -> None:
    conn.execute(
        text("UPDATE log_entries SET payload_type = :payload_type, key_id = :key_id, "
             "payload = :payload, signatures = :signatures, leaf_hash = :leaf_hash "
             "WHERE idx = :idx"),
        {**row, "idx": idx},
    )


def flip_payload_byte(conn: Connection) -> None:
    row = _row(conn, 4)
    payload = bytearray(bytes(row["payload"]))  # type: ignore[arg-type]
    pos = payload.index(b'"n":') + 4
    payload[pos] ^= 0x01  # "n":4 -> "n":5
    conn.execute(text("UPDATE log_entries SET payload = :p WHERE idx = 4"), {"p": bytes(payload)})


def delete_row(conn: Connection) -> None:
    conn.execute(text("DELETE FROM log_entries WHERE idx = 4"))


def _shift_up_from(conn: Connection, idx: int) -> None:
    conn.execute(text("UPDATE log_entries SET idx = idx + 1000000 WHERE idx >= :i"), {"i": idx})
    conn.execute(text("UPDATE log_entries SET idx = idx - 999999 WHERE idx >= 1000000"))


def insert_copy_in_middle(conn: Connection) -> None:
    copy = _row(conn, 6)
    _shift_up_from(conn, 4)
    conn.execute(
        text("INSERT INTO log_entries (idx, payload_type, key_id, payload, signatures, leaf_hash) "
             "VALUES (4, :payload_type, :key_id, :payload, :signatures, :leaf_hash)"),
        {k: v for k, v in copy.items() if k != "idx"},
    )


def insert_forged_in_middle(conn: Connection) -> None:
    """A row signed by the attacker's own key, placed and chained correctly."""
    import base64
    import json

    from core import merkle
    from registry.dsse import envelope_bytes

    eve = OwnerKey("eve", Ed25519PrivateKey.generate())
    prev = [bytes(r[0]) for r in conn.execute(
        text("SELECT leaf_hash FROM log_entries WHERE idx < 4 ORDER BY idx"))]
    origin = conn.execute(text("SELECT origin FROM log_head")).scalar_one()
    statement = {"log": {"origin": origin, "index": 4,
                         "prev_root": base64.b64encode(merkle.root_from_hashes(prev)).decode()},
                 "record": {"n": 99}, "signed_at": "2026-01-01T00:00:00.000Z"}
    env = sign_envelope(eve, T, statement)
    _shift_up_from(conn, 4)
    conn.execute(
        text("INSERT INTO log_entries (idx, payload_type, key_id, payload, signatures, leaf_hash) "
             "VALUES (4, :t, :k, :p, :s, :h)"),
        {"t": T, "k": eve.key_id, "p": base64.b64decode(env["payload"]),
         "s": json.dumps(env["signatures"]), "h": merkle.leaf_hash(envelope_bytes(env))},
    )


def swap_rows(conn: Connection) -> None:
    a, b = _row(conn, 3), _row(conn, 6)
    _set(conn, 3, b)
    _set(conn, 6, a)


def replace_signature(conn: Connection) -> None:
    other = _row(conn, 6)["signatures"]
    conn.execute(text("UPDATE log_entries SET signatures = :s WHERE idx = 5"), {"s": other})


def replace_leaf_hash(conn: Connection) -> None:
    conn.execute(text("UPDATE log_entries SET leaf_hash = :h WHERE idx = 7"), {"h": b"\x00" * 32})


def delete_last_row_and_rewind_head(conn: Connection) -> None:
    """Truncate the log and make the head agree; the checkpoint at size 10 still knows."""
    from core import merkle

    conn.execute(text("DELETE FROM log_entries WHERE idx = 9"))
    conn.execute(text("DELETE FROM merkle_nodes WHERE end_idx = 10"))
    tree = merkle.CompactRange()
    for (h,) in conn.execute(text("SELECT leaf_hash FROM log_entries ORDER BY idx")):
        tree.append(bytes(h))
    conn.execute(text("UPDATE log_head SET size = 9, frontier = :f, root = :r"),
                 {"f": tree.to_bytes(), "r": tree.root()})


def replace_tree_node(conn: Connection) -> None:
    """A stored interior node changed: proofs served from it would not verify."""
    conn.execute(text("UPDATE merkle_nodes SET hash = :h WHERE end_idx = 8 AND level = 3"),
                 {"h": b"\x01" * 32})


def edit_model_row(conn: Connection) -> None:
    conn.execute(text("UPDATE models SET file_sha256 = :d"), {"d": "0" * 64})


def forge_checkpoint(conn: Connection) -> None:
    note = conn.execute(text("SELECT note FROM checkpoints WHERE size = 5")).scalar_one()
    conn.execute(text("UPDATE checkpoints SET note = :n WHERE size = 5"),
                 {"n": note.replace("\n5\n", "\n4\n")})


CASES: list[tuple[Callable[[Connection], None], str]] = [
    (flip_payload_byte, "log entry 4: envelope: signature does not verify"),
    (delete_row, r"log entry 4: missing \(the next stored entry is 5\)"),
    (insert_copy_in_middle, r"log entry 4: signed as entry 6 \(rows moved, inserted or deleted\)"),
    (insert_forged_in_middle, "log entry 4: signed by key .*, which no earlier owner entry introduces"),
    (swap_rows, r"log entry 3: signed as entry 6 \(rows moved, inserted or deleted\)"),
    (replace_signature, "log entry 5: envelope: signature does not verify"),
    (replace_leaf_hash, "log entry 7: stored leaf hash does not match the entry"),
    (delete_last_row_and_rewind_head, r"log entry 9: missing \(checkpoint \d+ \(size 10\) covers 10"),
    (replace_tree_node, r"tree node \(level 3, ending at entry 7\): not the hash of its leaves"),
    (edit_model_row, "model 'm': row does not match log entry 2"),
    (forge_checkpoint, r"checkpoint \d+ \(size 5\): checkpoint: signature does not verify"),
]


@pytest.fixture
def populated(db_url: str, tmp_path: Path) -> str:
    key = OwnerKey("alice", Ed25519PrivateKey.generate())
    model = tmp_path / "m.pt2"
    model.write_bytes(b"model")
    with Registry.open(db_url) as reg:
        reg.append(key, T, {"n": 1})
        reg.add_model(key, "m", model)
        for n in range(3, 5):
            reg.append(key, T, {"n": n})
        reg.checkpoint(key)
        for n in range(5, 10):
            reg.append(key, T, {"n": n})
        reg.checkpoint(key)
        assert reg.size() == 10
    return db_url


def _audit(url: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(wm, ["--registry", url, "audit", "verify"])
    return res.exit_code, res.stdout, res.stderr


@pytest.mark.parametrize(("tamper", "message"), CASES, ids=[c[0].__name__ for c in CASES])
def test_tampering_is_found_and_named(
    populated: str, tamper: Callable[[Connection], None], message: str
) -> None:
    code, out, err = _audit(populated)
    assert code == 0 and out.startswith("ok: 10 entries, root "), err
    engine = create_engine(populated)
    with engine.begin() as conn:
        drop_triggers(conn)
        tamper(conn)
    engine.dispose()
    code, out, err = _audit(populated)
    assert code == 1, out
    assert err.startswith("wm: audit verify: FAILED: ")
    assert err.count("\n") == 1
    assert re.search(message, err), err


PARALLEL = [c for c in CASES if c[0] in (flip_payload_byte, insert_forged_in_middle, replace_signature)]


@pytest.mark.parametrize(("tamper", "message"), PARALLEL, ids=[c[0].__name__ for c in PARALLEL])
def test_signature_workers_find_the_same_faults(
    populated: str, tamper: Callable[[Connection], None], message: str
) -> None:
    """Signatures checked by worker processes: same verdicts, same messages."""
    res = CliRunner().invoke(wm, ["--registry", populated, "audit", "verify", "--workers", "2"])
    assert res.exit_code == 0 and res.stdout.startswith("ok: 10 entries, root "), res.output
    engine = create_engine(populated)
    with engine.begin() as conn:
        drop_triggers(conn)
        tamper(conn)
    engine.dispose()
    res = CliRunner().invoke(wm, ["--registry", populated, "audit", "verify", "--workers", "2"])
    assert res.exit_code == 1 and re.search(message, res.stderr), res.output
