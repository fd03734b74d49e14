"""Initial registry schema: the log, its head, the record tables, append-only triggers.

Revision ID: 0001
Revises:
Create Date: 2026-01-01
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Every table but log_head refuses UPDATE and DELETE (and TRUNCATE on PostgreSQL).
APPEND_ONLY = (
    "log_entries",
    "owners",
    "models",
    "probesets",
    "probe_spends",
    "verifications",
    "checkpoints",
)


def upgrade() -> None:
    log_head = op.create_table(
        "log_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("origin", sa.String(200), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("frontier", sa.LargeBinary(), nullable=False),
        sa.Column("root", sa.LargeBinary(32), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_log_head_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_log_head")),
    )
    op.create_table(
        "log_entries",
        sa.Column("idx", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("payload_type", sa.String(200), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("signatures", sa.Text(), nullable=False),
        sa.Column("leaf_hash", sa.LargeBinary(32), nullable=False),
        sa.PrimaryKeyConstraint("idx", name=op.f("pk_log_entries")),
    )
    op.create_index(op.f("ix_log_entries_payload_type"), "log_entries", ["payload_type"])
    op.create_table(
        "owners",
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("public_key_pem", sa.Text(), nullable=False),
        sa.Column("entry_idx", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["entry_idx"], ["log_entries.idx"], name=op.f("fk_owners_entry_idx_log_entries")
        ),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_owners")),
        sa.UniqueConstraint("entry_idx", name=op.f("uq_owners_entry_idx")),
    )
    op.create_table(
        "models",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("owner_key_id", sa.String(64), nullable=False),
        sa.Column("file_sha256", sa.String(64), nullable=False),
        sa.Column("weights_sha256", sa.String(64), nullable=True),
        sa.Column("arch", sa.String(200), nullable=True),
        sa.Column("input_shape", sa.String(200), nullable=True),
        sa.Column("num_classes", sa.Integer(), nullable=True),
        sa.Column("entry_idx", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["entry_idx"], ["log_entries.idx"], name=op.f("fk_models_entry_idx_log_entries")
        ),
        sa.ForeignKeyConstraint(
            ["owner_key_id"], ["owners.key_id"], name=op.f("fk_models_owner_key_id_owners")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_models")),
        sa.UniqueConstraint("entry_idx", name=op.f("uq_models_entry_idx")),
        sa.UniqueConstraint("name", name=op.f("uq_models_name")),
    )
    op.create_table(
        "probesets",
        sa.Column("entry_idx", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("scheme", sa.String(500), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("num_classes", sa.Integer(), nullable=False),
        sa.Column("root", sa.LargeBinary(32), nullable=False),
        sa.Column("null_model", sa.Text(), nullable=False),
        sa.Column("sealed_by", sa.String(64), nullable=False),
        sa.Column("sealed_probes", sa.LargeBinary(), nullable=False),
        sa.Column("sealed_key", sa.LargeBinary(), nullable=True),
        sa.CheckConstraint("kind IN ('watermark', 'fingerprint', 'guard')", name=op.f("ck_probesets_kind")),
        sa.CheckConstraint("size > 0", name=op.f("ck_probesets_size_positive")),
        sa.ForeignKeyConstraint(
            ["entry_idx"], ["log_entries.idx"], name=op.f("fk_probesets_entry_idx_log_entries")
        ),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name=op.f("fk_probesets_model_id_models")),
        sa.ForeignKeyConstraint(["sealed_by"], ["owners.key_id"], name=op.f("fk_probesets_sealed_by_owners")),
        sa.PrimaryKeyConstraint("entry_idx", name=op.f("pk_probesets")),
    )
    op.create_index(op.f("ix_probesets_model_id"), "probesets", ["model_id"])
    op.create_table(
        "probe_spends",
        sa.Column("probeset_id", sa.Integer(), nullable=False),
        sa.Column("probe_index", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("entry_idx", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["entry_idx"], ["log_entries.idx"], name=op.f("fk_probe_spends_entry_idx_log_entries")
        ),
        sa.ForeignKeyConstraint(
            ["probeset_id"],
            ["probesets.entry_idx"],
            name=op.f("fk_probe_spends_probeset_id_probesets"),
        ),
        sa.PrimaryKeyConstraint("probeset_id", "probe_index", name=op.f("pk_probe_spends")),
    )
    op.create_index(op.f("ix_probe_spends_entry_idx"), "probe_spends", ["entry_idx"])
    op.create_table(
        "verifications",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model_name", sa.String(200), nullable=True),
        sa.Column("suspect", sa.Text(), nullable=False),
        sa.Column("verdict", sa.String(20), nullable=False),
        sa.Column("evidence_sha256", sa.String(64), nullable=True),
        sa.Column("entry_idx", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["entry_idx"], ["log_entries.idx"], name=op.f("fk_verifications_entry_idx_log_entries")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_verifications")),
        sa.UniqueConstraint("entry_idx", name=op.f("uq_verifications_entry_idx")),
    )
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("root", sa.LargeBinary(32), nullable=False),
        sa.Column("signer_key_id", sa.String(64), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("tsa_token", sa.LargeBinary(), nullable=True),
        sa.ForeignKeyConstraint(
            ["signer_key_id"], ["owners.key_id"], name=op.f("fk_checkpoints_signer_key_id_owners")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_checkpoints")),
    )
    op.create_index(op.f("ix_checkpoints_size"), "checkpoints", ["size"])

    # The log's origin line names this log uniquely (C2SP tlog-checkpoint).
    empty_root = bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    op.bulk_insert(
        log_head,
        [
            {
                "id": 1,
                "origin": f"wm.registry/{uuid.uuid4().hex}",
                "size": 0,
                "frontier": b"",
                "root": empty_root,
            }
        ],
    )

    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION wm_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN RAISE EXCEPTION 'wm registry: % is append-only (% refused)', "
            "TG_TABLE_NAME, TG_OP; END $$"
        )
        for table in APPEND_ONLY:
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION wm_append_only()"
            )
            op.execute(
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION wm_append_only()"
            )
    else:
        for table in APPEND_ONLY:
            for action in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, 'wm registry: {table} is append-only "
                    f"({action} refused)'); END"
                )


def downgrade() -> None:
    raise NotImplementedError("the registry log is append-only; there is no downgrade")
