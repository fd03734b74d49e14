"""Shared test fixtures: real databases for the registry (SQLite and PostgreSQL), Fashion-MNIST.

``db_url`` runs a test once on a fresh SQLite file and once on a fresh
PostgreSQL schema (``127.0.0.1:5432``, database ``test``, user ``postgres``,
trust auth; override with ``WM_TEST_PG_URL``). The schema is reached through
``search_path`` in the URL, so subprocesses given the URL see the same isolated
database, and it is dropped afterwards. Where no server answers, the
PostgreSQL run is skipped with the reason.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

from core.data import Splits

PG_URL = os.environ.get("WM_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _pg_conninfo() -> str:
    """The libpq form of :data:`PG_URL` (for psycopg directly)."""
    from sqlalchemy.engine import make_url

    u = make_url(PG_URL)
    parts = [f"host={u.host or '127.0.0.1'}", f"port={u.port or 5432}", f"dbname={u.database}"]
    parts.append(f"user={u.username or 'postgres'}")
    if u.password:
        parts.append(f"password={u.password}")
    return " ".join(parts) + " connect_timeout=3"


@cache
def pg_unavailable() -> str | None:
    """Why PostgreSQL cannot be used for tests, or ``None`` when it can."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed"
    try:
        with psycopg.connect(_pg_conninfo()) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"no PostgreSQL answers at {PG_URL} ({first})"
    return None


def _pg_admin(statement: str) -> None:
    import psycopg

    with psycopg.connect(_pg_conninfo(), autocommit=True) as conn:
        conn.execute("SET lock_timeout = '10s'")
        conn.execute(statement)  # type: ignore[arg-type]


@pytest.fixture
def pg_schema_url() -> Iterator[str]:
    """A URL to a fresh, empty PostgreSQL schema, dropped after the test."""
    reason = pg_unavailable()
    if reason:
        pytest.skip(reason)
    schema = f"wm_test_{uuid.uuid4().hex[:16]}"
    _pg_admin(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        _pg_admin(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL to a fresh, empty database: a SQLite file, then a PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
        return
    yield request.getfixturevalue("pg_schema_url")


@pytest.fixture(scope="session")
def fashion_mnist() -> Splits:
    """The built-in Fashion-MNIST splits; skipped, with the reason, where it is not installed.

    ``make test`` installs it (Debian package ``dataset-fashion-mnist``) where
    ``apt-get`` is usable, so a skip means it could not be installed here.
    """
    from core.data import fashion_mnist_dir, load_fashion_mnist

    if fashion_mnist_dir() is None:
        pytest.skip("Fashion-MNIST is not installed and could not be: apt-get install "
                    "dataset-fashion-mnist, or put its IDX files in $WM_DATA_DIR/fashion-mnist/")
    return load_fashion_mnist()
