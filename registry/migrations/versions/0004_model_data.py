"""The data set a model was trained on, so ``wm verify`` can draw in-distribution decoys from it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29

``models.data`` is what the model file records (``core.modelio``): a built-in
data set's name, or the training file's name without its directory; NULL for
models registered before, or whose file does not say. The model's log record
carries it too (only when known, so older records read as they were signed).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ALTER TABLE ADD COLUMN on both databases (no table copy, triggers kept).
    op.add_column("models", sa.Column("data", sa.String(200), nullable=True))


def downgrade() -> None:
    raise NotImplementedError("the registry log is append-only; there is no downgrade")
