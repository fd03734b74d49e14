"""The append queue: records waiting for the writer that holds the log to append them.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29

PostgreSQL writers queue generic records here and one of them appends every
queued record of its owner in one transaction (one commit for many appends),
so several writers append faster than one. Mutable: not part of the log.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "append_queue",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("payload_type", sa.String(200), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("mac", sa.LargeBinary(32), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_append_queue")),
    )
    op.create_index(op.f("ix_append_queue_key_id"), "append_queue", ["key_id"])


def downgrade() -> None:
    raise NotImplementedError("the registry log is append-only; there is no downgrade")
