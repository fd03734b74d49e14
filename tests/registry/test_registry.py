"""The registry on SQLite and PostgreSQL: records, secrets, proofs, checkpoints, migrations."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from core import merkle
from core.errors import InputError, IntegrityError, RegistryError
from registry import (
    MODEL_TYPE,
    OWNER_TYPE,
    PROBESET_TYPE,
    SPEND_TYPE,
    OwnerKey,
    ProbesSpentError,
    Registry,
    check_proof_bundle,
    verify_checkpoint,
    verify_envelope,
)
from registry.db import HEAD_REVISION, head_revision
from registry.proofs import UNSAFE_TRUST_EMBEDDED_KEY
from registry.schema import Base
from tests.registry.conftest import make_probeset

T = "application/vnd.wm.test+json"


def _model_file(tmp_path: Path, content: bytes = b"weights") -> Path:
    p = tmp_path / "model.pt2"
    p.write_bytes(content)
    return p


def test_open_migrates_to_head_and_schema_matches_the_orm(db_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with Registry.open(db_url) as reg:
        assert reg.size() == 0 and reg.root() == merkle.EMPTY_ROOT
        assert reg.origin.startswith("wm.registry/")
    engine = create_engine(db_url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn)
        assert ctx.get_current_revision() == head_revision() == HEAD_REVISION
        assert compare_metadata(ctx, Base.metadata) == []
    engine.dispose()
    with Registry.open(db_url) as again:  # reopening is a no-op
        assert again.size() == 0


def test_unknown_revision_is_refused(db_url: str) -> None:
    Registry.open(db_url).close()
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'ffff'"))
    engine.dispose()
    with pytest.raises(RegistryError, match=r"is at schema revision 'ffff', which this wm does "
                       r"not know \(it knows up to '0004'\)"):
        Registry.open(db_url)


def test_log_tables_refuse_update_and_delete(reg: Registry, owner_key: OwnerKey, db_url: str) -> None:
    reg.append(owner_key, T, {"n": 1})
    reg.checkpoint(owner_key)
    engine = create_engine(db_url)
    for statement in [
        "UPDATE log_entries SET payload_type = 'x' WHERE idx = 1",
        "DELETE FROM log_entries WHERE idx = 1",
        "UPDATE owners SET name = 'eve'",
        "DELETE FROM checkpoints",
    ]:
        with pytest.raises(Exception, match="is append-only") as err, engine.begin() as conn:
            conn.execute(text(statement))
        assert "refused" in str(err.value)
    engine.dispose()
    reg.verify_log()


def test_append_entries_and_signatures(reg: Registry, owner_key: OwnerKey) -> None:
    assert reg.append(owner_key, T, {"n": 1}) == 1  # entry 0 introduces the owner
    assert reg.append(owner_key, T, {"n": 2}) == 2
    entries = reg.entries()
    assert [e.payload_type for e in entries] == [OWNER_TYPE, T, T]
    assert entries[0].record["key_id"] == owner_key.key_id
    st = verify_envelope(entries[2].envelope, owner_key.public_key, payload_type=T)
    assert st["record"] == {"n": 2}
    assert st["log"] == {"origin": reg.origin, "index": 2, "prev_root": _b64(reg.root(2)), "probesets": 0}
    assert reg.root() == merkle.root_from_hashes([e.leaf_hash for e in entries])
    assert reg.add_owner(owner_key) == 0  # idempotent
    with pytest.raises(InputError, match="is written by its own registry method"):
        reg.append(owner_key, MODEL_TYPE, {})
    reg.verify_log()


def _b64(b: bytes) -> str:
    import base64

    return base64.b64encode(b).decode()


def test_model_probeset_secrets_and_spending(
    reg: Registry, owner_key: OwnerKey, other_key: OwnerKey, tmp_path: Path, db_url: str
) -> None:
    path = _model_file(tmp_path)
    idx = reg.add_model(owner_key, "digits-1", path, weights_sha256="ab" * 32, arch="cnn",
                             input_shape=[1, 8, 8], num_classes=10)
    info = reg.model("digits-1")
    assert info.entry_index == idx and info.file_sha256 == hashlib.sha256(b"weights").hexdigest()
    assert info.input_shape == (1, 8, 8) and info.num_classes == 10
    with pytest.raises(InputError, match="a model named 'digits-1' is already registered"):
        reg.add_model(owner_key, "digits-1", path)
    ps = make_probeset(8)
    wm_key = b"K" * 32
    pid = reg.add_probeset(owner_key, "digits-1", ps, secret_key=wm_key)
    with pytest.raises(InputError, match="belongs to another owner key"):
        reg.add_probeset(other_key, "digits-1", ps)
    with pytest.raises(RegistryError, match="no model named 'nope'"):
        reg.add_probeset(owner_key, "nope", ps)
    [rec] = reg.probesets("digits-1")
    assert (rec.id, rec.kind, rec.size, rec.spent, rec.root) == (pid, "watermark", 8, 0, ps.root)
    assert rec.null == {"family": "binomial", "p0": 0.1} and rec.has_key
    assert reg.probesets("digits-1", kind="fingerprint") == []
    loaded = reg.load_probeset(pid, owner_key)
    assert loaded.root == ps.root and bool((loaded.inputs == ps.inputs).all())
    assert reg.load_secret_key(pid, owner_key) == wm_key
    with pytest.raises(IntegrityError, match="sealed secret does not open"):
        reg.load_probeset(pid, other_key)
    # Secrets are nowhere in plain text: not the key, not a salt, not a probe's bytes.
    engine = create_engine(db_url)
    with engine.connect() as conn:
        blobs = b"".join(
            bytes(v) if isinstance(v, bytes | memoryview) else str(v).encode()
            for table in ["log_entries", "probesets", "models", "owners"]
            for row in conn.execute(text(f"SELECT * FROM {table}"))
            for v in row if v is not None
        )
    engine.dispose()
    assert wm_key not in blobs and ps.salts[0] not in blobs
    assert ps.inputs[0].numpy().tobytes()[:16] not in blobs
    # Spending is a signed entry and is counted.
    sidx = reg.spend(owner_key, pid, [3, 1, 3], reason="suspect http://x")
    assert reg.entry(sidx).payload_type == SPEND_TYPE
    assert reg.entry(sidx).record["indices"] == [1, 3]
    assert reg.unspent_indices(pid) == [0, 2, 4, 5, 6, 7]
    # Each probe counts once: a batch with a spent probe is refused whole, nothing recorded.
    size = reg.size()
    with pytest.raises(ProbesSpentError, match=r"probe set \d+: 1 of the probes to spend were spent "
                       r"already \(1\)"):
        reg.spend(owner_key, pid, [1, 2], reason="again")
    assert reg.size() == size and reg.unspent_indices(pid) == [0, 2, 4, 5, 6, 7]
    # A claimed spend may list its own probes again (a resumed verification); others may not.
    reg.spend(owner_key, pid, [2, 4], reason="v1", claim="run-1")
    again = reg.spend(owner_key, pid, [2, 4, 5], reason="v1 resumed", claim="run-1")
    assert reg.entry(again).record["indices"] == [5]
    with pytest.raises(ProbesSpentError, match=r"\(2, 4\)"):
        reg.spend(owner_key, pid, [2, 4, 6], reason="v2", claim="run-2")
    assert reg.probesets("digits-1")[0].spent == 5
    with pytest.raises(InputError, match="probe index 8 is outside probe set"):
        reg.spend(owner_key, pid, [8], reason="x")
    v = reg.add_verification(owner_key, {"suspect": "http://s", "verdict": "owned",
                                         "model": "digits-1", "evidence_sha256": "00" * 32})
    assert reg.entry(v).record["verdict"] == "owned"
    with pytest.raises(InputError, match="verdict must be one of"):
        reg.add_verification(owner_key, {"suspect": "http://s", "verdict": "yes"})
    assert [e.payload_type for e in reg.entries(payload_type=PROBESET_TYPE)] == [PROBESET_TYPE]
    reg.verify_log()


def test_checkpoints_and_proofs(reg: Registry, owner_key: OwnerKey, other_key: OwnerKey) -> None:
    for i in range(6):
        reg.append(owner_key, T, {"i": i})
    note1 = reg.checkpoint(owner_key).note
    cp1 = verify_checkpoint(note1, "alice", owner_key.public_key, origin=reg.origin)
    assert cp1.size == 7 and cp1.root == reg.root()
    for i in range(6, 13):
        reg.append(owner_key, T, {"i": i})
    note2 = reg.checkpoint(owner_key).note
    cp2 = verify_checkpoint(note2, "alice", owner_key.public_key)
    proof = reg.consistency_proof(cp1.size, cp2.size)
    assert (proof.root1, proof.root2) == (cp1.root, cp2.root)
    proof.verify()
    for index in (0, 6, 13):
        p = reg.inclusion_proof(index, cp2.size)
        p.verify(cp2.root)
    bundle = reg.proof_bundle(3)
    for pin in (owner_key.public_key, owner_key.key_id):
        check = check_proof_bundle(bundle, owner_key=pin)
        assert (check.index, check.tree_size, check.pinned) == (3, 14, True)
        assert check.payload["record"] == {"i": 2} and check.probesets == 0
    assert not check_proof_bundle(bundle, owner_key=UNSAFE_TRUST_EMBEDDED_KEY).pinned
    with pytest.raises(IntegrityError, match="not the pinned owner key"):
        check_proof_bundle(bundle, owner_key="00" * 32)
    with pytest.raises(IntegrityError, match="not the pinned owner key"):
        check_proof_bundle(bundle, owner_key=other_key.public_key)
    bundle["inclusion"]["index"] = 4
    with pytest.raises(IntegrityError):
        check_proof_bundle(bundle, owner_key=owner_key.public_key)
    with pytest.raises(RegistryError, match="no checkpoint covers log entry 14"):
        reg.append(owner_key, T, {})
        reg.proof_bundle(14)
    report = reg.verify_log()
    assert (report.size, report.checkpoints) == (15, 2)


def test_open_without_create_refuses_missing_sqlite(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="no registry at"):
        Registry.open(f"sqlite:///{tmp_path / 'none.db'}", create=False)
    assert not (tmp_path / "none.db").exists()


def test_unreachable_postgres_is_one_clear_error() -> None:
    with pytest.raises(RegistryError, match=r"cannot open the registry at postgresql\+psycopg://"):
        Registry.open("postgresql+psycopg://postgres@127.0.0.1:1/none")
    with pytest.raises(RegistryError, match="registry backend 'mysql' is not supported"):
        Registry.open("mysql://x@localhost/db")
