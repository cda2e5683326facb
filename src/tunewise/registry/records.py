"""Every registry fact written beside the blobs, so the index can always be rebuilt.

Layout under the registry folder::

    records/<name>/<version>.json         one version: every column of its index row
    records/<name>/events/<id>.json       one alias move (promote or rollback), by event id

A record is written atomically inside the index transaction that commits the same fact, before
the commit. A crash between the two leaves a record the index lacks; the next write of that
version number or event id replaces it, and until then ``rebuild`` restores it as what it is: a
complete version (its blobs were written first) or an alias move that was under way.

``doctor`` checks the index, the records against it, and every blob against its hash;
``rebuild`` writes a new index from the records and moves the old file aside (never deletes it).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tunewise.errors import UserError
from tunewise.fsio import atomic_write_json, sha256_file
from tunewise.registry.index import INDEX_FILE, create_schema, problem

RECORDS_DIR = "records"
FORMAT = 1
VERSION_COLUMNS = (
    "name",
    "version",
    "created_at",
    "kind",
    "source_run",
    "base_model",
    "base_path",
    "base_weight_hash",
    "data_hashes",
    "config",
    "eval",
    "verdict",
    "ship",
    "files",
)
JSON_COLUMNS = {"data_hashes", "config", "eval", "verdict", "files"}
EVENT_COLUMNS = ("id", "name", "alias", "action", "from_version", "to_version", "at", "forced")
EVENT_COLUMNS_ALL = (*EVENT_COLUMNS, "reason")


def version_record(row: sqlite3.Row | dict[str, Any]) -> dict[str, Any]:
    """The record of an index row: its columns, JSON columns decoded."""
    rec: dict[str, Any] = {"format": FORMAT}
    for col in VERSION_COLUMNS:
        value = row[col]
        rec[col] = json.loads(value) if col in JSON_COLUMNS and value is not None else value
    return rec


def version_row(rec: dict[str, Any]) -> tuple[Any, ...]:
    """The index row of a record (the inverse of :func:`version_record`)."""
    return tuple(
        json.dumps(rec[c], **({"sort_keys": True} if c == "files" else {}))
        if c in JSON_COLUMNS and rec[c] is not None
        else rec[c]
        for c in VERSION_COLUMNS
    )


@dataclass
class Records:
    """The records folder of one registry."""

    root: Path

    def version_path(self, name: str, version: int) -> Path:
        return self.root / name / f"{int(version)}.json"

    def event_path(self, name: str, event_id: int) -> Path:
        return self.root / name / "events" / f"{int(event_id)}.json"

    def write_version(self, rec: dict[str, Any]) -> None:
        atomic_write_json(self.version_path(rec["name"], rec["version"]), rec)

    def write_event(self, event: dict[str, Any]) -> None:
        rec = {"format": FORMAT, **{c: event[c] for c in EVENT_COLUMNS_ALL}}
        atomic_write_json(self.event_path(event["name"], event["id"]), rec)

    def exist(self) -> bool:
        return self.root.is_dir() and any(self.root.glob("*/[0-9]*.json"))

    def _read(self, pattern: str, damaged: list[str]) -> Iterator[dict[str, Any]]:
        if not self.root.is_dir():
            return
        for path in sorted(self.root.glob(pattern)):
            try:
                rec = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(rec, dict) or rec.get("format") != FORMAT:
                    raise ValueError("not a registry record")
            except (OSError, ValueError) as exc:
                damaged.append(f"{path}: unreadable record ({exc})")
                continue
            yield rec

    def versions(self, damaged: list[str]) -> list[dict[str, Any]]:
        out = [r for r in self._read("*/[0-9]*.json", damaged) if _has(r, VERSION_COLUMNS)]
        return sorted(out, key=lambda r: (r["name"], r["version"]))

    def events(self, damaged: list[str]) -> list[dict[str, Any]]:
        out = [r for r in self._read("*/events/[0-9]*.json", damaged) if _has(r, EVENT_COLUMNS)]
        return sorted(out, key=lambda r: r["id"])


def _has(rec: dict[str, Any], columns: tuple[str, ...]) -> bool:
    return all(c in rec for c in columns)


class RegistryFiles(Protocol):
    """What ``rebuild`` and ``doctor`` use of a registry: its folders and a few of its checks.

    :class:`tunewise.registry.store.Registry` fits it. A protocol, not that class: the registry
    writes its records through this module, so this module must not import the registry.
    """

    root: Path
    db_path: Path
    blob_dir: Path
    records: Records

    def has_data(self) -> bool: ...

    def require_writable(self) -> None: ...

    def backfill(self) -> int: ...

    def recheck(self) -> None: ...

    def index_rows(self) -> tuple[list[dict[str, Any]], set[tuple[str, int]]]: ...

    def blob_path(self, digest: str) -> Path: ...


# --------------------------------------------------------------------------- backfill


def backfill(db: sqlite3.Connection, records: Records) -> int:
    """Write the record of every index row that has none (a registry made before records, or
    a record deleted by hand); returns how many were written."""
    written = 0
    for row in db.execute("SELECT * FROM versions"):
        if not records.version_path(row["name"], row["version"]).is_file():
            records.write_version(version_record(row))
            written += 1
    for row in db.execute("SELECT * FROM alias_events"):
        if not records.event_path(row["name"], row["id"]).is_file():
            records.write_event(dict(row))
            written += 1
    return written


# --------------------------------------------------------------------------- rebuild


@dataclass
class RebuildResult:
    versions: int
    events: int
    aliases: int
    moved_aside: Path | None
    skipped: list[str] = field(default_factory=list)


def rebuild(reg: RegistryFiles, *, force: bool = False) -> RebuildResult:
    """A new index from the records; the old file (if any) moved aside, never deleted."""
    db_path = reg.db_path
    found = problem(db_path, has_data=reg.has_data())
    if found is None and db_path.exists() and db_path.stat().st_size and not force:
        raise UserError(
            f"{db_path}: the index is sound; nothing to rebuild "
            "(`tunewise registry rebuild --force` rebuilds it from the records anyway)"
        )
    reg.require_writable()
    if found is None and db_path.exists():
        reg.backfill()  # the sound index may know what no record says yet
    damaged: list[str] = []
    versions = reg.records.versions(damaged)
    events = reg.records.events(damaged)
    fd, tmp_name = tempfile.mkstemp(prefix=".rebuild.", suffix=".sqlite", dir=reg.root)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        aliases = _write_index(tmp, versions, events)
        aside = _move_aside(db_path)
        os.replace(tmp, db_path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    reg.recheck()
    return RebuildResult(len(versions), len(events), aliases, aside, damaged)


def _write_index(path: Path, versions: list[dict[str, Any]], events: list[dict[str, Any]]) -> int:
    """Fill a new index at ``path``; returns the number of aliases (replayed from the events)."""
    placeholders = ", ".join("?" * len(VERSION_COLUMNS))
    event_placeholders = ", ".join("?" * len(EVENT_COLUMNS_ALL))
    aliases: dict[tuple[str, str], tuple[int, float]] = {}
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode = WAL")
        create_schema(db)
        db.execute("BEGIN")
        for rec in versions:
            db.execute(
                f"INSERT INTO versions ({', '.join(VERSION_COLUMNS)}) VALUES ({placeholders})",
                version_row(rec),
            )
        for ev in events:
            db.execute(
                f"INSERT INTO alias_events ({', '.join(EVENT_COLUMNS_ALL)})"
                f" VALUES ({event_placeholders})",
                tuple(ev.get(c) for c in EVENT_COLUMNS_ALL),
            )
            aliases[(ev["name"], ev["alias"])] = (int(ev["to_version"]), float(ev["at"]))
        for (name, alias), (version, at) in aliases.items():
            db.execute(
                "INSERT INTO aliases (name, alias, version, updated_at) VALUES (?, ?, ?, ?)",
                (name, alias, version, at),
            )
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return len(aliases)


def _move_aside(db_path: Path) -> Path | None:
    """Rename the old index and its WAL files to ``registry.sqlite.broken-<time>[-wal|-shm]``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = None
    for suffix in ("", "-wal", "-shm"):
        old = db_path.with_name(db_path.name + suffix)
        if old.exists():
            target = db_path.with_name(f"{INDEX_FILE}.broken-{stamp}{suffix}")
            os.replace(old, target)
            aside = aside or target
    return aside


# --------------------------------------------------------------------------- doctor


@dataclass
class Finding:
    ok: bool
    text: str


def doctor(reg: RegistryFiles) -> list[Finding]:
    """Check the index, the records against it, and every blob against its hash."""
    out: list[Finding] = []
    found = problem(reg.db_path, has_data=reg.has_data())
    damaged: list[str] = []
    records = {(r["name"], r["version"]): r for r in reg.records.versions(damaged)}
    events = {(e["name"], e["id"]) for e in reg.records.events(damaged)}
    out += [Finding(False, d) for d in damaged]
    if found is not None:
        out.append(Finding(False, f"{reg.db_path}: the index is {found}: run `registry rebuild`"))
        versions = list(records.values())
    else:
        out.append(Finding(True, f"{reg.db_path}: index sound (quick_check ok)"))
        rows, indexed_events = reg.index_rows()
        out += _compare(records, events, rows, indexed_events)
        versions = [version_record(r) for r in rows]
    out += _check_blobs(reg, versions)
    leftovers = list(reg.blob_dir.glob(".incoming.*")) if reg.blob_dir.is_dir() else []
    if leftovers:
        size = sum(p.stat().st_size for p in leftovers if p.is_file())
        out.append(
            Finding(
                True,
                f"{len(leftovers)} unfinished blob write(s), {size} bytes: the next "
                "registry write removes those of finished processes",
            )
        )
    return out


def _compare(
    records: dict[tuple[str, int], dict[str, Any]],
    events: set[tuple[str, int]],
    rows: list[dict[str, Any]],
    indexed_events: set[tuple[str, int]],
) -> list[Finding]:
    out = []
    indexed = {(r["name"], r["version"]): r for r in rows}
    for key in sorted(indexed.keys() - records.keys()):
        out.append(
            Finding(
                False,
                f"{key[0]}:{key[1]}: no record beside the blobs (the next registry write adds it)",
            )
        )
    for key in sorted(records.keys() - indexed.keys()):
        out.append(
            Finding(
                False,
                f"{key[0]}:{key[1]}: recorded but not in the index: run `registry rebuild --force`",
            )
        )
    for key in sorted(indexed.keys() & records.keys()):
        if _canonical(version_record(indexed[key])) != _canonical(records[key]):
            out.append(Finding(False, f"{key[0]}:{key[1]}: record and index disagree"))
    missing_events = len(indexed_events - events) + len(events - indexed_events)
    if missing_events:
        out.append(
            Finding(
                False, f"{missing_events} alias event(s) differ between the records and the index"
            )
        )
    if not out:
        out.append(
            Finding(
                True,
                f"{len(rows)} version(s) and {len(events)} alias event(s): records match the index",
            )
        )
    return out


def _canonical(rec: dict[str, Any]) -> str:
    return json.dumps(rec, sort_keys=True)  # NaN-safe: NaN != NaN, but "NaN" == "NaN"


def _check_blobs(reg: RegistryFiles, versions: list[dict[str, Any]]) -> list[Finding]:
    bad = []
    for v in versions:
        for rel, digest in sorted(v["files"].items()):
            blob = reg.blob_path(digest)
            if not blob.is_file():
                bad.append(Finding(False, f"{v['name']}:{v['version']}: {rel}: blob missing"))
            elif sha256_file(blob) != digest:
                bad.append(
                    Finding(
                        False,
                        f"{v['name']}:{v['version']}: {rel}: blob corrupted "
                        "(hash mismatch); that version is never served",
                    )
                )
    n_files = sum(len(v["files"]) for v in versions)
    return bad or [Finding(True, f"{n_files} file(s) of {len(versions)} version(s): hashes ok")]
