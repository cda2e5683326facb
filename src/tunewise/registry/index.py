"""The registry's index, ``registry.sqlite``: its schema, how it is opened, and whether it is sound.

The index is what lists versions, aliases and history quickly; the records beside the blobs
(:mod:`tunewise.registry.records`) hold the same facts, so a lost or damaged index is rebuilt,
never read as an empty registry. What can go wrong with the file, and how each case is told
apart from a registry that is really new:

* missing or zero bytes (``rm``, a truncating copy, a full disk at creation): a problem when any
  record or blob exists, else a fresh registry;
* a bad header ("file is not a database"), a damaged page or a truncated file ("database disk
  image is malformed"): found by ``PRAGMA quick_check`` when the index is opened, and by any
  query that trips over them later;
* tables missing: another file in its place.

Readers open the file read-only (``mode=ro``), so listing and serving work on a read-only
``TUNEWISE_HOME``. A WAL database needs its ``-shm`` file, which a read-only folder cannot
create; there the file is opened as immutable, which is what it is to this process.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tunewise.errors import UserError

T = TypeVar("T")

INDEX_FILE = "registry.sqlite"
TABLES = ("versions", "aliases", "alias_events")

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    created_at REAL NOT NULL,
    kind TEXT NOT NULL,
    source_run TEXT NOT NULL,
    base_model TEXT,
    base_path TEXT,
    base_weight_hash TEXT NOT NULL,
    data_hashes TEXT NOT NULL,
    config TEXT NOT NULL,
    eval TEXT,
    verdict TEXT,
    ship INTEGER,
    files TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS aliases (
    name TEXT NOT NULL,
    alias TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (name, alias)
);
CREATE TABLE IF NOT EXISTS alias_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    alias TEXT NOT NULL,
    action TEXT NOT NULL,
    from_version INTEGER,
    to_version INTEGER NOT NULL,
    at REAL NOT NULL,
    forced INTEGER NOT NULL DEFAULT 0,
    reason TEXT
);
"""


class RegistryIndexError(UserError):
    """``registry.sqlite`` is missing, empty or damaged while versions exist on disk."""


def broken(db_path: Path, what: str) -> RegistryIndexError:
    return RegistryIndexError(
        f"{db_path}: the registry index is {what}; nothing is read from it. Versions, aliases "
        "and history are kept beside the blobs too: run `tunewise registry rebuild` "
        "(`tunewise registry doctor` checks everything)"
    )


def create_schema(db: sqlite3.Connection) -> None:
    for stmt in SCHEMA.strip().split(";"):
        if stmt.strip():
            db.execute(stmt)


def is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


def retry_busy(step: Callable[[], T], timeout_s: float) -> T:
    """``step()``, again while SQLite says busy, until ``timeout_s`` has passed.

    ``busy_timeout`` does not cover every busy answer: when one process closes the last
    connection to a WAL database (checkpointing and removing the WAL) while another opens it,
    the opener's WAL-index recovery returns SQLITE_BUSY(_RECOVERY) at once, without calling the
    busy handler. Seen in tests/test_registry.py's two-process test on a clean clone."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return step()
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(0.02)


def connect_rw(db_path: Path, timeout_s: float) -> sqlite3.Connection:
    def connect() -> sqlite3.Connection:
        db = sqlite3.connect(db_path, timeout=timeout_s, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            db.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
            # journal_mode needs a lock; the busy timeout lets concurrent openers wait for it.
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
        except BaseException:
            db.close()
            raise
        return db

    return retry_busy(connect, timeout_s)


def connect_ro(db_path: Path, timeout_s: float) -> sqlite3.Connection:
    """A read-only connection; immutable where the folder cannot hold WAL's ``-shm`` file."""
    uri = db_path.resolve().as_uri()
    db = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=timeout_s, isolation_level=None)
    try:
        db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
    except sqlite3.OperationalError as exc:
        db.close()
        if "unable to open" not in str(exc):
            raise
        db = sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, isolation_level=None)
    db.row_factory = sqlite3.Row
    db.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
    return db


def connect_snapshot(db_path: Path) -> sqlite3.Connection:
    """A read that writes nothing at all (no ``-wal``/``-shm`` files, no locks), for a dry run:
    it sees what the last writer committed and checkpointed, which is all a plan needs."""
    uri = db_path.resolve().as_uri()
    db = sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, isolation_level=None)
    db.row_factory = sqlite3.Row
    return db


def empty_index() -> sqlite3.Connection:
    """An in-memory index with no rows: what a reader sees of a registry never written to."""
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.row_factory = sqlite3.Row
    create_schema(db)
    return db


def problem(db_path: Path, *, has_data: bool) -> str | None:
    """What is wrong with the index, or None (sound, or absent from a registry with no data).

    ``has_data``: whether records or blobs exist, i.e. whether an absent or empty index would
    forget something.
    """
    if not db_path.exists():
        return "missing" if has_data else None
    if db_path.stat().st_size == 0:
        return "empty (0 bytes)" if has_data else None
    try:
        # A read-only connection cannot create WAL's -shm file and then falls back to an
        # immutable read, which ignores other processes' locks and can see a half-written page
        # while a writer commits: check through a normal connection wherever we may write.
        writable = os.access(db_path.parent, os.W_OK) and os.access(db_path, os.W_OK)
        connect = connect_rw if writable else connect_ro
        with contextlib.closing(connect(db_path, timeout_s=5.0)) as db:
            check = db.execute("PRAGMA quick_check").fetchall()
            names = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
    except sqlite3.DatabaseError as exc:
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            return None  # busy, not broken: the query that waits for it will tell
        return f"corrupted ({exc})"
    if [tuple(r) for r in check] != [("ok",)]:
        first = str(check[0][0]).splitlines()[-1] if check else "no answer"
        return f"corrupted (integrity check: {first})"
    missing = [t for t in TABLES if t not in names]
    if missing:
        return f"not a registry index (no table {', '.join(missing)})"
    return None


def classify(db_path: Path, exc: sqlite3.DatabaseError) -> UserError:
    """A one-line error for a failed query: a damaged index, a lock, or a read-only home."""
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError):
        if is_busy(exc):
            return UserError(f"{db_path}: the registry is busy (another process holds its lock)")
        if "readonly" in text or "read-only" in text or "unable to open" in text:
            return UserError(f"{db_path}: cannot write the registry here: read-only ({text})")
        if "no such table" not in text and "no such column" not in text:
            return UserError(f"{db_path}: registry query failed: {text}")
    return broken(db_path, f"corrupted ({text})")
