"""Database connections for the registry: SQLite (embedded default) or PostgreSQL, migrated.

SQLite runs in WAL mode with a busy timeout; its writers start with
``BEGIN IMMEDIATE`` so two writers never both read the log head and then race
(readers use a plain ``BEGIN``). PostgreSQL is reached with psycopg 3
(``postgresql+psycopg://``; a bare ``postgresql://`` URL is read the same way);
its writers first lock the single ``log_head`` row (``SELECT ... FOR UPDATE``),
which serialises writers and leaves reads free. SQLite writers also queue on a
``flock`` beside the database (:class:`WriterLock`) rather than sleeping in
SQLite's busy handler. Opening a registry runs the Alembic migrations
up to the newest revision this wm knows and refuses a database at a revision it
does not know.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError

from core.errors import RegistryError

__all__ = [
    "BUSY_TIMEOUT_MS",
    "HEAD_REVISION",
    "MIGRATIONS_DIR",
    "WRITE_OPTION",
    "WriterLock",
    "create_registry_engine",
    "head_revision",
    "migrate",
    "redact",
    "sqlite_path",
]

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
BUSY_TIMEOUT_MS = 60_000
# Execution option that marks a connection as a writer (BEGIN IMMEDIATE on SQLite).
WRITE_OPTION = "wm_writer"
# The newest migration; tests check it against registry/migrations/versions.
HEAD_REVISION = "0004"
# Any constant: the PostgreSQL advisory lock that serialises migrations.
_MIGRATION_LOCK = 0x776D_7265_6769


def redact(url: str) -> str:
    """The URL with any password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


def _normalise(url: str) -> str:
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def create_registry_engine(url: str) -> Engine:
    """An engine for ``url`` with the registry's connection settings.

    Raises:
        RegistryError: the URL is not one wm can use.
    """
    url = _normalise(url)
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise RegistryError(f"registry URL {url!r} is not a database URL") from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database
        if not database or database == ":memory:":
            raise RegistryError("the registry needs a SQLite file, not an in-memory database")
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        engine = create_engine(parsed, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
        _sqlite_events(engine)
        return engine
    if backend == "postgresql":
        if parsed.get_driver_name() != "psycopg":
            raise RegistryError(
                f"PostgreSQL driver {parsed.get_driver_name()!r} is not supported",
                hint="use a postgresql+psycopg:// URL",
            )
        return create_engine(parsed, pool_pre_ping=True, connect_args={"connect_timeout": 10})
    raise RegistryError(
        f"registry backend {backend!r} is not supported", hint="use sqlite:/// or postgresql://"
    )


def _sqlite_events(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite would defer it).
        dbapi_connection.isolation_level = None
        cur = dbapi_connection.cursor()
        cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        writer = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")


def _alembic_config(connection: Connection) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest schema revision this version of wm knows (read from the migrations)."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(MIGRATIONS_DIR))
    head = script.get_current_head()
    assert head is not None
    return head


def _at_head(engine: Engine) -> bool:
    """Fast path without importing Alembic: is the database already at :data:`HEAD_REVISION`?"""
    try:
        with engine.connect() as conn:
            version = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    except SQLAlchemyError:
        return False  # no table yet, or unreachable: the full path reports it
    return version == [HEAD_REVISION]


def migrate(engine: Engine, *, create: bool = True) -> str:
    """Bring the database to the newest revision; return it.

    Runs in one writer transaction (under ``BEGIN IMMEDIATE`` on SQLite, an
    advisory lock on PostgreSQL), so several processes opening a new registry
    at once create it once.

    Args:
        engine: from :func:`create_registry_engine`.
        create: create the schema in an empty database; otherwise refuse one.

    Raises:
        RegistryError: unreachable database, an unknown revision, or tables
            without a revision (a database that is not a wm registry).
    """
    where = redact(engine.url.render_as_string(hide_password=False))
    if _at_head(engine):
        return HEAD_REVISION
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(MIGRATIONS_DIR))
    known = {rev.revision for rev in script.walk_revisions()}
    head = head_revision()
    try:
        with engine.execution_options(**{WRITE_OPTION: True}).begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
            current = MigrationContext.configure(conn).get_current_revision()
            if current == head:
                return head
            if current is not None and current not in known:
                raise RegistryError(
                    f"registry database {where} is at schema revision {current!r}, "
                    f"which this wm does not know (it knows up to {head!r})",
                    hint="upgrade wm, or use another --registry",
                )
            if current is None:
                if "log_entries" in inspect(conn).get_table_names():
                    raise RegistryError(
                        f"registry database {where} has registry tables but no schema revision"
                    )
                if not create:
                    raise RegistryError(f"no registry at {where}", hint="run `wm keygen` and `wm register`")
            command.upgrade(_alembic_config(conn), "head")
            return head
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        raise RegistryError(f"cannot open the registry at {where}: {reason}") from exc
    except SQLAlchemyError as exc:
        raise RegistryError(f"registry database {where} failed: {type(exc).__name__}") from exc


class WriterLock:
    """A cross-process lock that queues SQLite writers in the kernel (``flock``).

    SQLite's own busy handler makes a waiting writer sleep in growing steps (up
    to 100 ms), so under contention the database sits idle while writers
    sleep. Writers that take this lock first wait in a queue and wake as soon
    as it is free; ``BEGIN IMMEDIATE`` and the busy timeout still guard
    against writers that do not use it (the ``sqlite3`` shell, say).
    The lock file is ``<database>-wmlock`` beside the database.
    """

    def __init__(self, database: Path) -> None:
        self.path = database.with_name(database.name + "-wmlock")

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold the lock for the duration of the ``with`` block (at most the busy timeout)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
            delay = 0.0002
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise RegistryError(
                            f"another writer has held the registry for over "
                            f"{BUSY_TIMEOUT_MS // 1000} s ({self.path})"
                        ) from None
                    time.sleep(delay)
                    delay = min(delay * 1.5, 0.002)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL, else ``None``."""
    parsed = make_url(_normalise(url))
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        return Path(os.path.expanduser(parsed.database))
    return None
