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
``TUNEWISE_HOME``. A WAL database needs its ``-shm`` file, which a read-only folder (or a full
disk) cannot create. There the file is opened as immutable, which is what it is to this process,
unless its ``-wal`` holds commits not yet copied into it: an immutable open ignores the WAL and
would read old aliases, so the file and its WAL are read through a private copy instead.

Only SQLite's own verdicts (``SQLITE_CORRUPT``, ``SQLITE_NOTADB``, a failed ``quick_check``,
tables missing) make the index "corrupted": a full disk or an I/O error while opening it says
nothing about the file, and is reported as what it is.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
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


# A disk that is full, or a quota that is spent: the same for the user.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def disk_full(target: Path | str) -> UserError:
    return UserError(f"disk full writing {target}; nothing was changed")


@contextlib.contextmanager
def on_disk_full(target: Path) -> Iterator[None]:
    """Turn a full disk inside the block (an OSError, or SQLite's "database or disk is full")
    into :func:`disk_full`'s one line, naming the file that did not fit when the OS says which.
    Callers clean their own temporary files first."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in DISK_FULL_ERRNOS:
            raise
        raise disk_full(exc.filename or target) from None
    except sqlite3.Error as exc:
        if not is_disk_full(exc, target):
            raise
        raise disk_full(target) from None


def _no_space_left(folder: Path) -> bool:
    """Whether ``folder``'s file system has no block left for this process."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    # root may use the blocks reserved for it: only those it cannot have count as full
    free = st.f_bfree if os.geteuid() == 0 else st.f_bavail
    return free == 0


def _code(exc: sqlite3.Error) -> int:
    return (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF


def is_disk_full(exc: sqlite3.Error, db_path: Path) -> bool:
    """SQLITE_FULL, or an I/O error on a file system with no space left (SQLite cannot grow its
    ``-shm`` file there and says "disk I/O error")."""
    if _code(exc) == sqlite3.SQLITE_FULL or "disk is full" in str(exc):
        return True
    return _code(exc) == sqlite3.SQLITE_IOERR and _no_space_left(db_path.parent)


def is_corruption(exc: sqlite3.Error) -> bool:
    """Whether SQLite says the file itself is damaged (not busy, not full, not unopenable)."""
    if _code(exc) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return True
    text = str(exc)
    return "malformed" in text or "not a database" in text


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


def create_index(db_path: Path) -> None:
    """A new, empty index put in place whole, unless one is there already.

    Built under a temporary name and hard-linked to ``db_path``: creating it in place would let
    another process open a file that has WAL's header and no tables yet, and call the registry
    broken (seen in the two-process test under load). The link fails when another writer got
    there first; its index is as good as ours.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{db_path.name}.", suffix=".new", dir=db_path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with contextlib.closing(sqlite3.connect(tmp, isolation_level=None)) as db:
            db.execute("PRAGMA journal_mode = WAL")  # kept in the file's header
            db.execute("BEGIN")
            create_schema(db)
            db.execute("COMMIT")
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, db_path)
    finally:
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                tmp.with_name(tmp.name + suffix).unlink()


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
    """A read-only connection; where the folder cannot hold WAL's ``-shm`` file, one that sees
    the same committed content without it (see :func:`_without_shm`)."""
    uri = db_path.resolve().as_uri()
    db = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=timeout_s, isolation_level=None)
    try:
        db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
    except sqlite3.OperationalError as exc:
        db.close()
        cannot_make_shm = "unable to open" in str(exc) or is_disk_full(exc, db_path)
        if not cannot_make_shm:
            raise
        db = _without_shm(db_path)
    db.row_factory = sqlite3.Row
    db.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
    return db


def _wal(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + "-wal")


def _without_shm(db_path: Path) -> sqlite3.Connection:
    """The index as committed, opened without creating ``-shm`` beside it.

    With an empty or absent ``-wal`` the file holds every commit: an immutable open reads it.
    A non-empty ``-wal`` (a writer killed, or one still open elsewhere) holds commits the file
    does not have yet, which an immutable open would silently skip (old aliases served with
    exit 0): the file and its WAL are copied into a private folder, where SQLite applies the WAL,
    and read from memory. A WAL this process cannot read is refused in one line.
    """
    wal = _wal(db_path)
    if not wal.exists() or wal.stat().st_size == 0:
        uri = db_path.resolve().as_uri()
        return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, isolation_level=None)
    try:
        with tempfile.TemporaryDirectory(prefix="tunewise-index-") as tmp:
            copy = Path(tmp) / db_path.name
            shutil.copyfile(db_path, copy)
            shutil.copyfile(wal, _wal(copy))
            mem = sqlite3.connect(":memory:", isolation_level=None)
            with contextlib.closing(sqlite3.connect(copy, isolation_level=None)) as src:
                src.backup(mem)
    except OSError as exc:
        raise UserError(
            f"{wal}: cannot read the index's write-ahead log ({exc.strerror}); without it the "
            "registry would be read as it was before its last changes. Read it where the "
            "registry folder is writable, or as a user who can read that file"
        ) from None
    return mem


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
        check, names = _quick_check(db_path)
    except sqlite3.DatabaseError as exc:
        if is_corruption(exc) or not isinstance(exc, sqlite3.OperationalError):
            return f"corrupted ({exc})"
        # busy, a full disk, an I/O error: nothing is known about the file itself; the query
        # that follows waits for the lock or says what went wrong
        return None
    if check != [("ok",)]:
        first = str(check[0][0]).splitlines()[-1] if check else "no answer"
        return f"corrupted (integrity check: {first})"
    missing = [t for t in TABLES if t not in names]
    if missing:
        return f"not a registry index (no table {', '.join(missing)})"
    return None


def _quick_check(db_path: Path) -> tuple[list[tuple[object, ...]], set[str]]:
    """``PRAGMA quick_check`` and the table names of the index."""
    # A read-only connection cannot create WAL's -shm file and then falls back to an immutable
    # read, which ignores other processes' locks and can see a half-written page while a writer
    # commits: check through a normal connection wherever we may write, unless the disk is too
    # full for the -shm file, where no writer commits anything.
    writable = os.access(db_path.parent, os.W_OK) and os.access(db_path, os.W_OK)
    try:
        db = (connect_rw if writable else connect_ro)(db_path, timeout_s=5.0)
    except sqlite3.OperationalError as exc:
        if not (writable and is_disk_full(exc, db_path)):
            raise
        db = connect_ro(db_path, timeout_s=5.0)
    with contextlib.closing(db):
        check = [tuple(r) for r in db.execute("PRAGMA quick_check").fetchall()]
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
    return check, names


def refuse_case_twin(
    db: sqlite3.Connection, what: str, value: str, query: str, args: tuple[object, ...] = ()
) -> None:
    """Refuse a new ``value`` when ``query`` finds one that differs from it only in case: names
    and aliases become folder names, and ``TT`` and ``tt`` are one folder on macOS and Windows.
    One already taken stays usable (a registry from before this rule may hold both)."""
    taken = [row[0] for row in db.execute(query, args)]
    if value in taken:
        return
    for other in taken:
        if other.lower() == value.lower():
            raise UserError(
                f"{what} {value!r} clashes with the existing {what} {other!r} (names and aliases "
                f"are unique regardless of case): use {other!r}"
            )


def classify(db_path: Path, exc: sqlite3.DatabaseError) -> UserError:
    """A one-line error for a failed query: a damaged index, a lock, a full disk, or a read-only
    home."""
    text = str(exc)
    if is_disk_full(exc, db_path):
        return disk_full(db_path)
    if isinstance(exc, sqlite3.OperationalError):
        if is_busy(exc):
            return UserError(f"{db_path}: the registry is busy (another process holds its lock)")
        if "readonly" in text or "read-only" in text or "unable to open" in text:
            return UserError(f"{db_path}: cannot write the registry here: read-only ({text})")
        if "no such table" not in text and "no such column" not in text:
            return UserError(f"{db_path}: registry query failed: {text}")
    return broken(db_path, f"corrupted ({text})")
