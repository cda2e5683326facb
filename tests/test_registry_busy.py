"""SQLite answers "busy" at once in a case its busy handler does not cover: WAL-index recovery
while another process closes the last connection. The registry retries until its timeout."""

from __future__ import annotations

import sqlite3

import pytest

from tunewise.registry import index as registry_index
from tunewise.registry.index import connect_rw, retry_busy


def test_retry_busy_retries_only_busy_and_only_until_the_timeout() -> None:
    calls = []

    def busy_twice() -> str:
        calls.append(1)
        if len(calls) <= 2:
            raise sqlite3.OperationalError("database is locked")
        return "done"

    assert retry_busy(busy_twice, timeout_s=5.0) == "done" and len(calls) == 3

    def broken() -> None:
        calls.append(1)
        raise sqlite3.OperationalError("no such table: versions")

    calls.clear()
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        retry_busy(broken, timeout_s=5.0)
    assert len(calls) == 1  # not retried: it is not a lock

    def always_busy() -> None:
        raise sqlite3.OperationalError("database is locked")

    with pytest.raises(sqlite3.OperationalError, match="locked"):
        retry_busy(always_busy, timeout_s=0.1)


def test_connect_rw_survives_an_immediate_busy_from_the_journal_pragma(tmp_path, monkeypatch):
    """What tests/test_registry.py's two-process test hit on a clean clone: the connection's
    setup raised "database is locked" at once and `registry add` failed with "busy"."""
    real_connect = sqlite3.connect
    failures = {"left": 2}

    class FlakyOpen:
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
            if sql.startswith("PRAGMA journal_mode") and failures["left"] > 0:
                failures["left"] -= 1
                raise sqlite3.OperationalError("database is locked")
            return self.db.execute(sql, *args)

        def __getattr__(self, name: str) -> object:
            return getattr(self.db, name)

        def __setattr__(self, name: str, value: object) -> None:
            if name == "db":
                object.__setattr__(self, name, value)
            else:
                setattr(self.db, name, value)

    monkeypatch.setattr(
        registry_index.sqlite3, "connect", lambda *a, **k: FlakyOpen(real_connect(*a, **k))
    )
    db = connect_rw(tmp_path / "index.sqlite", timeout_s=5.0)
    assert failures["left"] == 0
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
