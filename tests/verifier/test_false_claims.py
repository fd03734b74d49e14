"""False claims of ownership (Liu et al., USENIX Security 2024): each route an owner could take.

The routes of issue 10, each written as the attack first: the forged or
tampered evidence must be rejected with a line naming why, and the honest
evidence must still pass.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Connection, create_engine, text

from cli.main import _register_commands, wm
from core import merkle
from registry import Registry, generate_owner_key

_register_commands()
T = "application/vnd.wm.test+json"
ENV = {"WM_PASSPHRASE": "pw"}


# =============================================================================
# Route 6: rollback and fork of the log
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
# =============================================================================


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
    res = CliRunner().invoke(wm, ["--home", str(home), "--registry", db_url, "audit", "checkpoint",
                                  "--out", str(saved)], env=ENV)
    assert res.exit_code == 0, res.output
    return db_url, home, saved


def _audit(url: str, *args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(wm, ["--registry", url, "audit", "verify", *args])
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
