"""Engine and sessions.

SQLite: WAL journal, `busy_timeout`, foreign keys on, `synchronous=NORMAL`. The driver's own
transaction handling is switched off and SQLAlchemy emits `BEGIN` itself: reads use a deferred
`BEGIN` (a WAL snapshot; readers never block the writer), writes use `BEGIN IMMEDIATE` so that
a write transaction takes the write lock up front and waits `busy_timeout` for it, instead of
failing with SQLITE_BUSY when it upgrades a stale read snapshot.

Postgres: psycopg 3, READ COMMITTED; write transactions rely on row locks and conditional
UPDATEs.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

_WRITE = "sgmim_write"


def make_engine(url: str, *, pool_size: int = 10, busy_timeout_ms: int = 30_000) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            pool_size=pool_size,
            max_overflow=2 * pool_size,
            connect_args={"check_same_thread": False, "timeout": busy_timeout_ms / 1000},
        )
        _sqlite_events(engine, busy_timeout_ms)
        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=2 * pool_size, pool_pre_ping=True)


def _sqlite_events(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN (see _on_begin)
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")


class Database:
    """An engine plus read and write transaction scopes."""

    def __init__(self, url: str, *, pool_size: int = 10, busy_timeout_ms: int = 30_000):
        self.url = url
        self.engine = make_engine(url, pool_size=pool_size, busy_timeout_ms=busy_timeout_ms)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer at a time; its busy handler polls with sleeps of up to 100 ms,
        # which makes tail latency poor when many threads of this process write at once.
        # Queueing them on a lock instead is fair and sleep-free (other processes still wait
        # through busy_timeout).
        self._write_lock = threading.Lock() if self.dialect == "sqlite" else contextlib.nullcontext()

    @classmethod
    def from_settings(cls, settings: Any) -> Database:
        return cls(
            settings.resolved_database_url,
            pool_size=settings.db_pool_size,
            busy_timeout_ms=settings.sqlite_busy_timeout_ms,
        )

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only transaction (SQLite: one snapshot; Postgres: one per statement)."""
        with self.sessionmaker() as session:  # close() ends the transaction, keeps loaded objects
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction, committed on success (BEGIN IMMEDIATE on SQLite)."""
        with self._write_lock, self.sessionmaker() as session:
            session.connection(execution_options={_WRITE: True})
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    @contextmanager
    def write_connection(self) -> Iterator[Connection]:
        """A write transaction on a bare Connection (no ORM Session: a fraction of its CPU per
        transaction, for the hot paths that only run Core statements), committed on success."""
        options = {_WRITE: True}
        with self._write_lock, self.engine.connect().execution_options(**options) as conn, conn.begin():
            yield conn

    def session(self) -> Session:
        """A plain session (FastAPI's SessionDep); the caller commits."""
        return self.sessionmaker()

    def dispose(self) -> None:
        self.engine.dispose()
