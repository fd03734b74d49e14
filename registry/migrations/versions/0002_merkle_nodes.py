"""Interior Merkle nodes (O(log n) proofs), the running count of probe sets, spend claims.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29

``merkle_nodes`` holds every interior node of the tree, written by the append
that completes it; existing logs are backfilled from their leaf hashes.
``log_head.probesets`` counts the probe-set entries, which every new entry
signs (``log.probesets`` in its statement), so a checker can learn from one
entry how many probe sets the log held up to it. ``probe_spends.claim`` names
the verification that spent a probe, so it may re-send its own probes on resume
while every other spend of them is refused.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from core.merkle import CompactRange

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

PROBESET_TYPE = "application/vnd.wm.probeset+json"


def upgrade() -> None:
    nodes = op.create_table(
        "merkle_nodes",
        sa.Column("end_idx", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("level", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
        sa.CheckConstraint("level > 0", name=op.f("ck_merkle_nodes_interior")),
        sa.PrimaryKeyConstraint("end_idx", "level", name=op.f("pk_merkle_nodes")),
    )
    # Plain ALTER TABLE ADD COLUMN on both databases (no table copy, triggers kept).
    op.add_column("log_head", sa.Column("probesets", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("probe_spends", sa.Column("claim", sa.String(64), nullable=True))

    bind = op.get_bind()
    count = bind.execute(
        sa.text("SELECT count(*) FROM log_entries WHERE payload_type = :t"), {"t": PROBESET_TYPE}
    ).scalar_one()
    bind.execute(sa.text("UPDATE log_head SET probesets = :n"), {"n": count})
    tree = CompactRange()
    rows: list[dict[str, object]] = []
    for (leaf,) in bind.execute(sa.text("SELECT leaf_hash FROM log_entries ORDER BY idx")):
        rows += [{"end_idx": e, "level": lv, "hash": h} for (lv, e), h in tree.append(bytes(leaf))]
        if len(rows) >= 5000:
            op.bulk_insert(nodes, rows)
            rows = []
    if rows:
        op.bulk_insert(nodes, rows)

    if bind.dialect.name == "postgresql":
        op.execute(
            "CREATE TRIGGER merkle_nodes_append_only BEFORE UPDATE OR DELETE ON merkle_nodes "
            "FOR EACH ROW EXECUTE FUNCTION wm_append_only()"
        )
        op.execute(
            "CREATE TRIGGER merkle_nodes_no_truncate BEFORE TRUNCATE ON merkle_nodes "
            "FOR EACH STATEMENT EXECUTE FUNCTION wm_append_only()"
        )
    else:
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER merkle_nodes_no_{action.lower()} BEFORE {action} ON merkle_nodes "
                f"BEGIN SELECT RAISE(ABORT, 'wm registry: merkle_nodes is append-only "
                f"({action} refused)'); END"
            )


def downgrade() -> None:
    raise NotImplementedError("the registry log is append-only; there is no downgrade")
