"""The sealed test split: refused while tuning, every final use on record.

``data split`` seals its ``test.jsonl``. Later stages call :func:`guard` before evaluating on a
file: a sealed file is refused unless the caller passes ``final=True`` (the user typed
``--final``), and each final use is recorded with its purpose, so a report can say "this test set
was looked at 3 times" instead of pretending it was looked at once.

A file is identified by the hash of its *content*, not its path or bytes: the sorted list of its
non-empty lines, each stripped. Copying, renaming, reordering lines or changing line endings does
not unseal it. Records live in SQLite (WAL mode, so several processes can read and write) at
``paths.seals_db()``.

Reading the records works on a read-only ``$TUNEWISE_HOME`` (the database is opened read-only);
writing them there is a one-line error, never a traceback.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

from tunewise import paths
from tunewise.data.files import require_file
from tunewise.errors import SealedSplitError, UserError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS seals (
    content_hash TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    project TEXT,
    n_examples INTEGER NOT NULL,
    sealed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS final_uses (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    content_hash TEXT NOT NULL REFERENCES seals(content_hash),
    path TEXT NOT NULL,
    purpose TEXT NOT NULL,
    used_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS final_uses_hash ON final_uses(content_hash);
"""


def content_hash(path: str | Path) -> tuple[str, int]:
    """sha256 over the sorted, stripped, non-empty lines of ``path``, and their count."""
    try:
        require_file(Path(path))
        with open(path, "rb") as fh:
            lines = sorted(ln.strip() for ln in fh if ln.strip())
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    h = hashlib.sha256()
    for ln in lines:
        h.update(ln)
        h.update(b"\n")
    return h.hexdigest(), len(lines)


def _unwritable(err: Exception) -> UserError:
    return UserError(
        f"cannot record the seal in {paths.seals_db()} ({err}); TUNEWISE_HOME must be writable "
        "to seal a test split or record a final use"
    )


def _connect() -> sqlite3.Connection:
    """A connection that may write (creating the database and its tables on first use)."""
    try:
        conn = sqlite3.connect(paths.seals_db(), timeout=30)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(_SCHEMA)
    except (sqlite3.Error, OSError) as err:
        raise _unwritable(err) from None
    return conn


def _connect_read() -> sqlite3.Connection | None:
    """A read-only connection, or None when nothing was ever sealed here."""
    db = paths.seals_db()
    if not db.exists():
        return None
    uri = db.resolve().as_uri()
    try:
        conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=30)
        conn.execute("SELECT 1 FROM seals LIMIT 1")
    except sqlite3.OperationalError:
        # In WAL mode even a reader needs a -shm file beside the database; on a read-only
        # folder it cannot be made, and then nobody can be writing either: read it as it is.
        try:
            conn = sqlite3.connect(f"{uri}?immutable=1", uri=True)
            conn.execute("SELECT 1 FROM seals LIMIT 1")
        except sqlite3.Error as err:
            raise UserError(f"{db}: cannot read the seal records: {err}") from None
    conn.row_factory = sqlite3.Row
    return conn


@contextlib.contextmanager
def sealing(staged: str | Path, final: str | Path, project: str | None = None) -> Iterator[str]:
    """Seal the content of ``staged``, to be found at ``final``; yields the content hash.

    The record is written when the block starts (so an unwritable home fails before the block
    runs) and committed only when the block, which moves the file to ``final``, succeeds: a
    failure either way leaves neither a sealed record without its file nor a file without its
    seal. Sealing content that is already sealed changes nothing.
    """
    digest, n = content_hash(staged)
    conn = _connect()
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT OR IGNORE INTO seals(content_hash, path, project, n_examples, sealed_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (digest, str(Path(final).resolve()), project, n, time.time()),
        )
    except sqlite3.Error as err:
        conn.close()
        raise _unwritable(err) from None
    try:
        yield digest
    except BaseException:
        conn.rollback()
        conn.close()
        raise
    try:
        conn.commit()
    except sqlite3.Error as err:
        raise _unwritable(err) from None
    finally:
        conn.close()


def seal(path: str | Path, project: str | None = None) -> str:
    """Record ``path`` as a sealed test split; returns its content hash. Sealing twice: no-op."""
    with sealing(path, path, project) as digest:
        return digest


def _seal_row(digest: str) -> sqlite3.Row | None:
    conn = _connect_read()
    if conn is None:
        return None
    with closing(conn):
        return conn.execute("SELECT * FROM seals WHERE content_hash = ?", (digest,)).fetchone()


def is_sealed(path: str | Path) -> bool:
    return _seal_row(content_hash(path)[0]) is not None


def guard(path: str | Path, *, final: bool, purpose: str) -> int:
    """Refuse a sealed file unless ``final``; on a final use record it.

    Returns how many final uses of this content were recorded *before* this one (0 for an
    unsealed file); callers warn loudly when it is above 0: every extra look at the test set
    makes its numbers a little less honest.
    """
    digest, _ = content_hash(path)
    row = _seal_row(digest)
    if row is None:
        return 0
    if not final:
        project = f" of project '{row['project']}'" if row["project"] else ""
        raise SealedSplitError(
            f"{path}: this is the sealed test split{project}; it is kept for the final evaluation "
            f"only. Use the validation split while tuning, or pass --final for the final run "
            f"(every final use is recorded)"
        )
    try:
        with closing(_connect()) as conn, conn:
            before = conn.execute(
                "SELECT COUNT(*) FROM final_uses WHERE content_hash = ?", (digest,)
            ).fetchone()[0]
            conn.execute(
                "INSERT INTO final_uses(content_hash, path, purpose, used_at) VALUES (?, ?, ?, ?)",
                (digest, str(Path(path).resolve()), purpose, time.time()),
            )
    except sqlite3.Error as err:
        raise _unwritable(err) from None
    return int(before)


def final_uses(path: str | Path) -> list[dict[str, Any]]:
    """Every recorded final use of ``path``'s content, oldest first."""
    digest, _ = content_hash(path)
    conn = _connect_read()
    if conn is None:
        return []
    with closing(conn):
        rows = conn.execute(
            "SELECT path, purpose, used_at FROM final_uses WHERE content_hash = ? ORDER BY id",
            (digest,),
        ).fetchall()
    return [dict(r) for r in rows]


def seals() -> list[dict[str, Any]]:
    """Every sealed file with its number of final uses, newest first."""
    conn = _connect_read()
    if conn is None:
        return []
    with closing(conn):
        rows = conn.execute(
            "SELECT s.*, (SELECT COUNT(*) FROM final_uses f WHERE f.content_hash = s.content_hash)"
            " AS final_uses FROM seals s ORDER BY sealed_at DESC"
        ).fetchall()
    return [dict(r) for r in rows]
