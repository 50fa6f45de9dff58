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
import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydantic_core
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

_WRITE = "sgmim_write"


def json_text(value: Any) -> str:
    """JSON columns' serialiser: pydantic-core's encoder (a job spec in a sixth of the time of
    `json.dumps`; the same text but for non-ASCII characters, which it writes as UTF-8), and
    `json.dumps` for what it refuses (a lone surrogate)."""
    try:
        return pydantic_core.to_json(value).decode()
    except (ValueError, TypeError, UnicodeError):
        return json.dumps(value)


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
            json_serializer=json_text,
        )
        _sqlite_events(engine, busy_timeout_ms)
        return engine
    return create_engine(
        url, pool_size=pool_size, max_overflow=2 * pool_size, pool_pre_ping=True, json_serializer=json_text
    )


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


class WriterLock:
    """A thread lock, then (with a path) an exclusive `flock` on that file, so that the writers
    of all processes take turns in order of arrival without SQLite's sleeping busy handler. The
    file lock is taken without blocking and retried every millisecond or two until `timeout_s`
    (SQLite's busy timeout: a process stopped while it writes fails the others' writes, it does
    not hang them); the kernel drops it when its holder dies. Each process opens the file
    itself (a descriptor inherited over fork would share the lock with the parent)."""

    def __init__(self, path: Path | None, timeout_s: float):
        self.path, self.timeout_s = path, timeout_s
        self._thread_lock = threading.Lock()
        self._fd: tuple[int, int] | None = None  # (pid, descriptor)

    def _descriptor(self) -> int:
        if self._fd is None or self._fd[0] != os.getpid():
            self._fd = (os.getpid(), os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        return self._fd[1]

    def __enter__(self) -> None:
        self._thread_lock.acquire()
        if self.path is None:
            return
        try:
            fd = self._descriptor()
            deadline = time.monotonic() + self.timeout_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return
                except BlockingIOError:
                    if time.monotonic() > deadline:  # what SQLite's busy timeout raises (the API's 503)
                        locked = sqlite3.OperationalError(f"database is locked ({self.path} held too long)")
                        raise OperationalError("BEGIN IMMEDIATE", None, locked) from None
                    time.sleep(0.001)
        except BaseException:
            self._thread_lock.release()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            if self.path is not None and self._fd is not None:
                fcntl.flock(self._fd[1], fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()


class Database:
    """An engine plus read and write transaction scopes."""

    def __init__(self, url: str, *, pool_size: int = 10, busy_timeout_ms: int = 30_000):
        self.url = url
        self.engine = make_engine(url, pool_size=pool_size, busy_timeout_ms=busy_timeout_ms)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer at a time; its busy handler polls with sleeps of up to 100 ms,
        # which makes tail latency poor when many writers wait at once. Writers queue on a lock
        # instead: a thread lock within the process, then a file lock shared by every process
        # using this Database class (several API processes, the workers).
        self._write_lock: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if self.dialect == "sqlite":
            database = make_url(url).database or ""
            file_db = database and database != ":memory:" and not database.startswith("file:")
            self._write_lock = WriterLock(
                Path(database + ".write-lock").expanduser() if file_db else None, busy_timeout_ms / 1000
            )

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
