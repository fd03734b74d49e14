"""Alembic environment for the registry: runs on the connection ``registry.db`` hands over.

The registry migrates itself when opened (:func:`registry.db.migrate`); there is
no alembic.ini to point at a database, so a connection must be given in
``config.attributes["connection"]``.
"""

from __future__ import annotations

from alembic import context

from registry.schema import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("registry migrations run through registry.db.migrate(), with a connection")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
