"""Every registry fact written beside the blobs, so the index can always be rebuilt.

Layout under the registry folder::

    records/<name>/<version>.json         one version: every column of its index row
    records/<name>/events/<id>.json       one alias move (promote or rollback), by event id

Records are append-only: each is created once (a temporary file hard-linked to its name, which
fails when the name exists) and never replaced. Writing the same content again is a no-op; writing
different content under a taken name is refused, since it would rewrite committed history.

A record is written right after the index transaction that commits the same fact, so a record
on disk always means a committed fact. A crash between the commit and the record leaves a fact
only the index holds; the next writer writes its record (:func:`backfill`). A record the index
lacks therefore means the index is behind (an old copy put back, say): writers refuse to work on
it, ``doctor`` says so, and ``rebuild --force`` repairs it. Version numbers and event ids are
taken past every record file, a damaged one included, so no number is ever given twice.

``doctor`` checks the index, the records against it, and every blob against its hash;
``rebuild`` writes a new index from the records and moves the old file aside (never deletes it).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tunewise.errors import UserError
from tunewise.fsio import sha256_file
from tunewise.registry.index import INDEX_FILE, create_schema, on_disk_full, problem

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
        create_once(self.version_path(rec["name"], rec["version"]), rec)

    def write_event(self, event: dict[str, Any]) -> None:
        rec = {"format": FORMAT, **{c: event[c] for c in EVENT_COLUMNS_ALL}}
        create_once(self.event_path(event["name"], event["id"]), rec)

    def exist(self) -> bool:
        return self.root.is_dir() and any(self.root.glob("*/[0-9]*.json"))

    def version_files(self) -> dict[tuple[str, int], Path]:
        """Every version record file by (name, version), readable or not."""
        return _numbered(self.root.glob("*/[0-9]*.json"), lambda p: p.parent.name)

    def event_files(self) -> dict[tuple[str, int], Path]:
        """Every alias event record file by (name, id), readable or not."""
        return _numbered(self.root.glob("*/events/[0-9]*.json"), lambda p: p.parent.parent.name)

    def readable(self, path: Path, columns: tuple[str, ...]) -> bool:
        return next(self._read_one(path, columns, []), None) is not None

    def _read(
        self, pattern: str, columns: tuple[str, ...], damaged: list[str]
    ) -> Iterator[dict[str, Any]]:
        if not self.root.is_dir():
            return
        for path in sorted(self.root.glob(pattern)):
            yield from self._read_one(path, columns, damaged)

    def _read_one(
        self, path: Path, columns: tuple[str, ...], damaged: list[str]
    ) -> Iterator[dict[str, Any]]:
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(rec, dict) or rec.get("format") != FORMAT:
                raise ValueError("not a registry record")
            if not _has(rec, columns):
                raise ValueError(f"no {', '.join(c for c in columns if c not in rec)}")
        except (OSError, ValueError) as exc:
            damaged.append(
                f"{path}: unreadable record ({exc}); its number stays taken (restore the file "
                "from a backup to get that version or alias move back)"
            )
            return
        yield rec

    def versions(self, damaged: list[str]) -> list[dict[str, Any]]:
        out = list(self._read("*/[0-9]*.json", VERSION_COLUMNS, damaged))
        return sorted(out, key=lambda r: (r["name"], r["version"]))

    def events(self, damaged: list[str]) -> list[dict[str, Any]]:
        out = list(self._read("*/events/[0-9]*.json", EVENT_COLUMNS, damaged))
        return sorted(out, key=lambda r: r["id"])


def _has(rec: dict[str, Any], columns: tuple[str, ...]) -> bool:
    return all(c in rec for c in columns)


def _numbered(paths: Iterable[Path], name_of: Callable[[Path], str]) -> dict[tuple[str, int], Path]:
    return {(name_of(p), int(p.stem)): p for p in paths if p.stem.isdigit()}


class RecordConflict(UserError):
    """A record file already holds a different fact under the same version number or event id."""


def create_once(path: Path, rec: dict[str, Any]) -> None:
    """Write ``rec`` to ``path`` unless it exists: a record is never replaced.

    The content is written and fsynced under a temporary name, then hard-linked to ``path``:
    the link fails when ``path`` exists, so no reader sees half a record and no writer replaces
    one. The same content already there is fine (a writer and a backfill racing); different
    content is :class:`RecordConflict`.
    """
    # In the index's key order, not sorted: `registry rebuild` reads the config back from here,
    # and a tools list's key order is part of the prompt the server builds from it.
    text = json.dumps(rec, indent=2, ensure_ascii=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        _link_new(Path(tmp), path)
    except FileExistsError:
        if not _same_record(path, rec):
            raise RecordConflict(
                f"{path}: a different record is already there; the registry index is behind its "
                "records (an older registry.sqlite?): run `tunewise registry rebuild --force`"
            ) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _link_new(tmp: Path, path: Path) -> None:
    """Give ``tmp``'s content the new name ``path``; FileExistsError when ``path`` exists."""
    try:
        os.link(tmp, path)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        # a file system without hard links: an exclusive create, then the content (a crash in
        # between leaves a damaged record, which keeps its number and is reported as such)
        with open(path, "x", encoding="utf-8") as fh:
            fh.write(tmp.read_text(encoding="utf-8"))
            fh.flush()
            os.fsync(fh.fileno())


def _same_record(path: Path, rec: dict[str, Any]) -> bool:
    try:
        there = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return _canonical(there) == _canonical(rec)


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

    def aliases(self) -> dict[str, int]: ...

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


def index_behind(db: sqlite3.Connection, records: Records) -> list[str]:
    """The readable records that the index lacks: facts committed into an index this one is not
    (a damaged record keeps its number and is reported by ``doctor``, not here)."""
    versions = {(r[0], r[1]) for r in db.execute("SELECT name, version FROM versions")}
    events = {(r[0], r[1]) for r in db.execute("SELECT name, id FROM alias_events")}
    out = [
        f"{name}:{number}"
        for (name, number), path in sorted(records.version_files().items())
        if (name, number) not in versions and records.readable(path, VERSION_COLUMNS)
    ]
    out += [
        f"alias event {number} of {name}"
        for (name, number), path in sorted(records.event_files().items())
        if (name, number) not in events and records.readable(path, EVENT_COLUMNS)
    ]
    return out


def refuse_if_behind(db: sqlite3.Connection, records: Records, db_path: Path) -> None:
    """Refuse to write through an index that lacks committed records (an older copy of it put
    back): its numbers and aliases are out of date, and writing on would fork the history."""
    behind = index_behind(db, records)
    if behind:
        shown = ", ".join(behind[:3]) + (" …" if len(behind) > 3 else "")
        raise UserError(
            f"{db_path}: the index is behind its records ({shown} recorded, not indexed); "
            "nothing was written: run `tunewise registry rebuild --force`"
        )


def next_version(db: sqlite3.Connection, records: Records, name: str) -> int:
    """The next version number of ``name``: past the index and past every record file of it,
    a damaged one included (its number is never given again)."""
    row = db.execute("SELECT COALESCE(MAX(version), 0) FROM versions WHERE name = ?", (name,))
    on_disk = [n for (owner, n) in records.version_files() if owner == name]
    return max([int(row.fetchone()[0]), *on_disk]) + 1


def next_event_id(db: sqlite3.Connection, records: Records) -> int:
    """The next alias event id: past the index (sqlite_sequence remembers ids rolled back too)
    and past every event record file."""
    row = db.execute("SELECT COALESCE(MAX(id), 0) FROM alias_events").fetchone()
    seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'alias_events'").fetchone()
    on_disk = [n for (_, n) in records.event_files()]
    return max([int(row[0]), 0 if seq is None else int(seq[0]), *on_disk]) + 1


# --------------------------------------------------------------------------- rebuild


@dataclass
class RebuildResult:
    versions: int
    events: int
    aliases: int
    moved_aside: Path | None
    skipped: list[str] = field(default_factory=list)  # damaged records, named
    dangling: list[str] = field(default_factory=list)  # aliases at a version not restored


def rebuild(reg: RegistryFiles, *, force: bool = False) -> RebuildResult:
    """A new index from the records; the old file (if any) moved aside, never deleted.

    A damaged record is skipped and named; its number stays taken (:func:`next_version`). An
    alias whose last move names a version that could not be restored keeps pointing at that
    number, which resolves to nothing: it is named too, and never lands on a later version.
    """
    db_path = reg.db_path
    found = problem(db_path, has_data=reg.has_data())
    if found is None and db_path.exists() and db_path.stat().st_size and not force:
        raise UserError(
            f"{db_path}: the index is sound; nothing to rebuild "
            "(`tunewise registry rebuild --force` rebuilds it from the records anyway)"
        )
    reg.require_writable()
    with on_disk_full(db_path):
        if found is None and db_path.exists():
            reg.backfill()  # the sound index may know what no record says yet
        damaged: list[str] = []
        versions = reg.records.versions(damaged)
        events = reg.records.events(damaged)
        aliases, aside = _replace_index(reg, versions, events)
    reg.recheck()
    restored = {(v["name"], v["version"]) for v in versions}
    dangling = [
        f"{name}@{alias} points at {name}:{version}, which was not restored: it resolves to "
        "nothing until that record is back (promote another version with --force --reason)"
        for (name, alias), version in sorted(aliases.items())
        if (name, version) not in restored
    ]
    return RebuildResult(len(versions), len(events), len(aliases), aside, damaged, dangling)


def _replace_index(
    reg: RegistryFiles, versions: list[dict[str, Any]], events: list[dict[str, Any]]
) -> tuple[dict[tuple[str, str], int], Path | None]:
    """Write the new index beside the old one, then swap them; nothing is left of a failure."""
    fd, tmp_name = tempfile.mkstemp(prefix=".rebuild.", suffix=".sqlite", dir=reg.root)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        aliases = _write_index(tmp, versions, events)
        aside = _move_aside(reg.db_path)
        os.replace(tmp, reg.db_path)
    except BaseException:
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                tmp.with_name(tmp.name + suffix).unlink()
        raise
    return aliases, aside


def _write_index(
    path: Path, versions: list[dict[str, Any]], events: list[dict[str, Any]]
) -> dict[tuple[str, str], int]:
    """Fill a new index at ``path``; returns the aliases (replayed from the events)."""
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
    return {key: version for key, (version, _at) in aliases.items()}


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
        on_disk = (set(reg.records.version_files()), set(reg.records.event_files()))
        out += _compare(records, events, rows, indexed_events, on_disk)
        out += _dangling(reg.aliases(), {(r["name"], r["version"]) for r in rows})
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
    on_disk: tuple[set[tuple[str, int]], set[tuple[str, int]]],
) -> list[Finding]:
    """The index against the records. ``on_disk``: every version and event record file's key,
    damaged ones too (already reported), so a damaged record is not also called missing."""
    out = []
    version_files, event_files = on_disk
    indexed = {(r["name"], r["version"]): r for r in rows}
    for key in sorted(indexed.keys() - records.keys() - version_files):
        out.append(
            Finding(
                False,
                f"{key[0]}:{key[1]}: no record beside the blobs (the next registry write adds it)",
            )
        )
    for key in sorted(indexed.keys() & records.keys()):
        if _canonical(version_record(indexed[key])) != _canonical(records[key]):
            out.append(Finding(False, f"{key[0]}:{key[1]}: record and index disagree"))
    unrecorded = len(indexed_events - events - event_files)
    if unrecorded:
        out.append(
            Finding(
                False,
                f"{unrecorded} alias event(s) of the index have no record (the next registry "
                "write adds them)",
            )
        )
    behind = [f"{k[0]}:{k[1]}" for k in sorted(records.keys() - indexed.keys())]
    behind += [f"alias event {k[1]} of {k[0]}" for k in sorted(events - indexed_events)]
    if behind:
        shown = ", ".join(behind[:5]) + (f" and {len(behind) - 5} more" if len(behind) > 5 else "")
        out.append(
            Finding(
                False,
                f"the index is behind its records ({shown} recorded, not indexed; writes are "
                "refused until it is repaired): run `tunewise registry rebuild --force`",
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


def _dangling(aliases: dict[str, int], versions: set[tuple[str, int]]) -> list[Finding]:
    """Aliases that point at a version the index does not have (its record was damaged)."""
    out = []
    for spec, version in sorted(aliases.items()):
        name = spec.split("@", 1)[0]
        if (name, version) not in versions:
            out.append(
                Finding(
                    False,
                    f"{spec} points at {name}:{version}, which is not in the index: it resolves "
                    "to nothing (restore that record and `registry rebuild --force`, or promote "
                    "another version with --force --reason)",
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
