"""Adapter registry: immutable versions, movable aliases, rollback.

Layout under ``paths.registry_dir()``::

    registry.sqlite                 the index: versions, aliases, alias_events (SQLite, WAL)
    blobs/sha256/<hash>             content-addressed files (safetensors, json, chat templates)
    records/<name>/...              every version and alias move again, as JSON beside the blobs
    versions/<name>/<version>/      a materialised copy of one version, laid out as PEFT expects

Why this shape:

* A version is *committed* by one SQLite row, written last. Blobs are written first, each one
  atomically (temp file + rename), so a crash in the middle of ``add`` leaves at worst some orphan
  blobs, which are harmless (they are content-addressed and reused by the next add), and never a
  half-written version.
* Every write happens inside ``BEGIN IMMEDIATE`` with a busy timeout, so two processes adding or
  promoting at the same moment serialise on the database lock instead of racing on
  ``max(version) + 1`` or on the alias row.
* Files are hashed again whenever a version is resolved for use: a corrupted file is reported
  (``CorruptedFileError``) and never served.
* Names are checked against a small safe charset, so nothing a user types can escape the registry
  folder (``../``, absolute paths, NUL bytes, a trailing newline are all refused), and are unique
  regardless of case, as folder names are on macOS and Windows; aliases too.
* The index is not the only copy of a fact: each version and alias move is also written as a
  record (:mod:`tunewise.registry.records`) right after its commit, created once and never
  replaced. A missing, empty or damaged index (:mod:`tunewise.registry.index`) is reported as
  such, never read as an empty registry, and ``tunewise registry rebuild`` restores it from the
  records; an index behind its records is refused to writers. Version numbers and event ids are
  never given twice, not even one whose record was damaged.
* A full disk is one line ("disk full writing X; nothing was changed"), and leaves no temporary
  file behind (a complete blob it wrote stays, harmless and reused).
* Only writers create anything. Readers open the index read-only, so listing, showing and
  serving work on a read-only ``TUNEWISE_HOME`` (a version is then materialised in a private
  temporary folder). The first write of a process removes the ``.incoming.*`` files that killed
  writers left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tunewise import paths
from tunewise.baselines.release import RELEASE_KINDS, is_release
from tunewise.baselines.release import read_meta as read_release_meta
from tunewise.errors import UserError
from tunewise.eval.results import (
    COMPARISON_FILE,
    EVAL_FILE,
    VERDICT_FILE,
    Comparison,
    EvalRun,
    Verdict,
)
from tunewise.registry.blobs import BlobStore, crash_point
from tunewise.registry.index import (
    INDEX_FILE,
    broken,
    classify,
    connect_ro,
    connect_rw,
    connect_snapshot,
    create_index,
    create_schema,
    empty_index,
    on_disk_full,
    problem,
    refuse_case_twin,
    retry_busy,
)
from tunewise.registry.lineage import LINEAGE_FILE, release_hashes, run_hashes
from tunewise.registry.records import (
    RECORDS_DIR,
    Records,
    backfill,
    next_event_id,
    next_version,
    refuse_if_behind,
    version_record,
)
from tunewise.registry.types import EvalRecord, Version, validate_name
from tunewise.rundir import RunDir

DEFAULT_ALIAS = "production"
# Files copied from a run: weights in safetensors, configs and tokenizer files. Never pickles.
ALLOWED_SUFFIXES = {".safetensors", ".json", ".jinja", ".txt", ".model"}
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".ckpt"}


def parse_spec(spec: str) -> tuple[str, int | None, str | None]:
    """``name`` | ``name:VERSION`` | ``name@ALIAS`` -> (name, version, alias)."""
    if not isinstance(spec, str) or not spec:
        raise UserError("empty model spec")
    if "@" in spec:
        name, alias = spec.split("@", 1)
        return validate_name(name), None, validate_name(alias, "alias")
    if ":" in spec:
        name, ver = spec.rsplit(":", 1)
        # ASCII digits only (str.isdigit also takes '²' and '٣', which int() refuses), and few
        # enough for SQLite's 64-bit integers
        if not re.fullmatch(r"[0-9]{1,9}", ver):
            raise UserError(f"invalid version in {spec!r}: expected NAME:INTEGER (1-9 digits)")
        return validate_name(name), int(ver), None
    return validate_name(spec), None, None


def _collect_run_files(run_dir: Path) -> tuple[str, dict[str, Path]]:
    """The files of a run that belong to a version, and the run kind."""
    run = RunDir(run_dir)
    kind = run.require_kind()
    roots = [run_dir] if kind == "lora" else [run_dir, run.model_dir]
    files: dict[str, Path] = {}
    for root in roots:
        for f in sorted(root.iterdir()):
            if not f.is_file() or f.is_symlink():
                continue
            rel = f.relative_to(run_dir).as_posix()
            if f.suffix in PICKLE_SUFFIXES:
                raise UserError(f"{f}: pickle weights are not accepted; save with safetensors")
            if f.suffix in ALLOWED_SUFFIXES:
                files[rel] = f
    if not any(r.endswith(".safetensors") for r in files):
        raise UserError(f"{run_dir}: no safetensors weights found")
    return kind, files


# (kind, files, base model, config, data hashes) of what a version is registered from
Source = tuple[str, dict[str, Path], dict[str, Any], dict[str, Any], dict[str, Any]]


def _run_source(run_dir: Path) -> Source:
    """A finished training run's files and lineage."""
    rd = RunDir(run_dir)
    if not rd.has_record():
        raise UserError(f"{run_dir}: no run.json (register runs made by `tunewise train`)")
    run = rd.record()
    status = rd.effective_status()
    if status == "running":
        raise UserError(f"{run_dir}: the run is still running; wait for it to finish")
    if status == "interrupted":
        raise UserError(
            f"{run_dir}: the run was interrupted (its process is gone); "
            f"continue it with `{rd.resume_command()}`"
        )
    if not rd.base_hash():
        raise UserError(f"{rd.run_json}: base_model.weight_hash: missing")
    kind, files = _collect_run_files(run_dir)
    return kind, files, rd.base_model(), run.get("config") or {}, run_hashes(run)


def _release_source(folder: Path) -> Source:
    """A rung release's files and lineage (its release.json, checked)."""
    meta = read_release_meta(folder)
    files: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if not f.is_file() or f.is_symlink():
            continue
        if f.suffix in PICKLE_SUFFIXES:
            raise UserError(f"{f}: pickle files are not accepted; a release is JSON + safetensors")
        if f.suffix in ALLOWED_SUFFIXES and f.name != LINEAGE_FILE:  # metadata, not payload
            files[f.name] = f
    base = meta.get("base_model") or {}
    return meta["kind"], files, base, meta.get("config") or {}, release_hashes(folder, meta)


def version_files(folder: Path) -> dict[str, Path]:
    """The files a version of ``folder`` (a training run or a rung release) would hold."""
    return (_release_source(folder) if is_release(folder) else _run_source(folder))[1]


def same_payload(kind: str, files: dict[str, str], other: dict[str, str]) -> bool:
    """Whether two versions' file hashes make the same model: the weights of a training run
    (its run.json differs from run to run), every file of a rung release."""
    if kind in RELEASE_KINDS:
        return files == other
    weights = {k: h for k, h in files.items() if k.endswith(".safetensors")}
    return bool(weights) and weights == {
        k: h for k, h in other.items() if k.endswith(".safetensors")
    }


class Registry:
    """The registry under ``root`` (default ``paths.registry_dir()``)."""

    def __init__(
        self, root: Path | None = None, *, busy_timeout_s: float = 60.0, snapshot: bool = False
    ) -> None:
        # snapshot: read through connect_snapshot and never write (``tunewise run --dry-run``)
        self.snapshot = snapshot
        self.root = Path(root) if root is not None else _default_root()
        self.blobs = BlobStore(self.root)
        self.blob_dir = self.blobs.blob_dir
        self.versions_dir = self.blobs.versions_dir
        self.db_path = self.root / INDEX_FILE
        self.records = Records(self.root / RECORDS_DIR)
        self.busy_timeout_s = busy_timeout_s
        self._writer_ready = False
        # Checked once per instance: a long-lived reader (the server) is told at start.
        self._problem = None if snapshot else problem(self.db_path, has_data=self.has_data())

    # -- database ---------------------------------------------------------------------------

    def has_data(self) -> bool:
        """Whether records or blobs exist: an absent index would then forget something."""
        return self.blobs.exist() or self.records.exist()

    def recheck(self) -> None:
        """Look at the index again (after ``rebuild`` replaced it)."""
        self._problem = problem(self.db_path, has_data=self.has_data())

    def check(self) -> None:
        """Raise the one-line error of a missing, empty or damaged index (see registry_index)."""
        if self._problem is not None:
            raise broken(self.db_path, self._problem)

    def require_writable(self) -> None:
        """Create the folders a writer needs; a read-only home is one line, not a traceback."""
        try:
            for folder in (self.root, self.blob_dir, self.records.root):
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"{self.root}: cannot write the registry: {exc.strerror}") from None
        if not os.access(self.root, os.W_OK):
            raise UserError(
                f"{self.root}: the registry folder is read-only; adding, promoting and rolling "
                "back need a writable TUNEWISE_HOME (reading works as it is)"
            )

    def _open_writer(self) -> None:
        """Once per instance, before the first write: the checks, the schema, the cleanup."""
        if self._writer_ready:
            return
        if self.snapshot:
            raise RuntimeError(f"{self.root}: a snapshot of the registry is read-only")
        self.check()
        self.require_writable()
        self._writer_ready = True  # _tx below must not come back here
        if not self.db_path.exists():
            with on_disk_full(self.db_path):
                create_index(self.db_path)
        with on_disk_full(self.db_path), self._tx(check_records=False) as db:
            create_schema(db)
            backfill(db, self.records)
            refuse_if_behind(db, self.records, self.db_path)
        self.blobs.clean_incoming()

    def _write_record(self, write: Callable[[dict[str, Any]], None], rec: dict[str, Any]) -> None:
        """Write the record of a fact just committed. A failure here is not "nothing was
        changed": the fact is in the index, and the next writer writes its record (backfill)."""
        try:
            write(rec)
        except OSError as exc:
            what = f"{rec['name']}:{rec['version']}" if "version" in rec else "the alias move"
            raise UserError(
                f"{what} is committed, but writing its record under "
                f"{self.records.root} failed ({exc.strerror}); the next registry write adds it "
                "(`tunewise registry doctor` checks)"
            ) from None

    @contextlib.contextmanager
    def _tx(self, *, check_records: bool = True) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the lock up front (no upgrade deadlocks), on an index
        that is not behind its records (``check_records``, checked under the lock)."""
        self._open_writer()
        try:
            db = connect_rw(self.db_path, self.busy_timeout_s)
        except sqlite3.DatabaseError as exc:
            raise classify(self.db_path, exc) from None
        try:
            retry_busy(lambda: db.execute("BEGIN IMMEDIATE"), self.busy_timeout_s)
            try:
                if check_records:
                    refuse_if_behind(db, self.records, self.db_path)
                yield db
            except BaseException:
                if db.in_transaction:  # SQLite rolls back by itself after some errors (full disk)
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise classify(self.db_path, exc) from None
        finally:
            db.close()

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read-only connection (an empty index when nothing was ever written)."""
        self.check()
        fresh = not self.db_path.exists() or self.db_path.stat().st_size == 0
        try:
            if fresh:
                db = empty_index()
            elif self.snapshot:
                db = connect_snapshot(self.db_path)
            else:
                db = connect_ro(self.db_path, self.busy_timeout_s)
        except sqlite3.DatabaseError as exc:
            raise classify(self.db_path, exc) from None
        try:
            yield db
        except sqlite3.DatabaseError as exc:
            raise classify(self.db_path, exc) from None
        finally:
            db.close()

    def backfill(self) -> int:
        """Write the records the index has and the records folder lacks (see registry_records)."""
        self.require_writable()
        with self._read() as db:
            return backfill(db, self.records)

    def index_rows(self) -> tuple[list[dict[str, Any]], set[tuple[str, int]]]:
        """Every version row, and every alias event's (name, id): what ``doctor`` compares."""
        with self._read() as db:
            rows = [dict(r) for r in db.execute("SELECT * FROM versions")]
            events = {(r["name"], r["id"]) for r in db.execute("SELECT name, id FROM alias_events")}
        return rows, events

    def has_name(self, name: str) -> bool:
        """Whether any version of ``name`` is registered."""
        with self._read() as db:
            row = db.execute("SELECT 1 FROM versions WHERE name = ? LIMIT 1", (name,)).fetchone()
        return row is not None

    # -- files ------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.blobs.path(digest)

    def verify(self, v: Version) -> list[str]:
        """Relative paths whose blob is missing or no longer matches its hash."""
        return self.blobs.verify(v)

    # -- add --------------------------------------------------------------------------------

    def add(
        self,
        run_dir: str | Path,
        *,
        name: str | None = None,
        verdict: str | Path | None = None,
        eval_dir: str | Path | None = None,
    ) -> Version:
        """Register a training run, or a rung release (:mod:`tunewise.baselines.release`), as the
        next version of ``name``."""
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise UserError(f"{run_dir}: no such run directory")
        source = _release_source(run_dir) if is_release(run_dir) else _run_source(run_dir)
        kind, files, base, config, data_hashes = source
        name = validate_name(name or config.get("name") or run_dir.name)

        verdict_obj, eval_obj = _read_eval(verdict, eval_dir)
        ship = None if verdict_obj is None else verdict_obj.ship

        self._open_writer()
        # a blob that does not fit is removed by put(); those written before it are complete,
        # content-addressed and reused by the next add (removing them could race another add)
        with on_disk_full(self.blob_dir):
            hashes = {rel: self.blobs.put(src) for rel, src in files.items()}
        crash_point("after_blobs")

        with self._tx() as db:
            refuse_case_twin(db, "name", name, "SELECT DISTINCT name FROM versions")
            version = next_version(db, self.records, name)
            db.execute(
                "INSERT INTO versions (name, version, created_at, kind, source_run, base_model,"
                " base_path, base_weight_hash, data_hashes, config, eval, verdict, ship, files)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    version,
                    time.time(),
                    kind,
                    str(run_dir.resolve()),
                    base.get("name"),
                    base.get("path"),
                    base.get("weight_hash") or "",
                    json.dumps(data_hashes),
                    json.dumps(config),
                    None if eval_obj is None else json.dumps(eval_obj.to_dict()),
                    None if verdict_obj is None else json.dumps(verdict_obj.to_dict()),
                    None if ship is None else int(ship),
                    json.dumps(hashes, sort_keys=True),
                ),
            )
            rec = version_record(
                db.execute(
                    "SELECT * FROM versions WHERE name = ? AND version = ?", (name, version)
                ).fetchone()
            )
            crash_point("before_commit")
        crash_point("after_commit")
        self._write_record(self.records.write_version, rec)
        return self.get(name, version)

    # -- queries ----------------------------------------------------------------------------

    def _row_to_version(self, db: sqlite3.Connection, row: sqlite3.Row) -> Version:
        try:
            return self._decode_row(db, row)
        except (ValueError, TypeError, KeyError) as exc:  # a damaged cell the page check missed
            where = f"row {row['name']}:{row['version']} unreadable: {exc}"
            raise broken(self.db_path, f"corrupted ({where})") from None

    def _decode_row(self, db: sqlite3.Connection, row: sqlite3.Row) -> Version:
        aliases = [
            r["alias"]
            for r in db.execute(
                "SELECT alias FROM aliases WHERE name = ? AND version = ? ORDER BY alias",
                (row["name"], row["version"]),
            )
        ]
        return Version(
            name=row["name"],
            version=row["version"],
            created_at=row["created_at"],
            kind=row["kind"],
            source_run=row["source_run"],
            base_model=row["base_model"],
            base_path=row["base_path"],
            base_weight_hash=row["base_weight_hash"],
            data_hashes=json.loads(row["data_hashes"]),
            config=json.loads(row["config"]),
            eval=EvalRecord.from_dict(json.loads(row["eval"])) if row["eval"] else None,
            verdict=Verdict.from_dict(json.loads(row["verdict"])) if row["verdict"] else None,
            ship=None if row["ship"] is None else bool(row["ship"]),
            files=json.loads(row["files"]),
            aliases=aliases,
        )

    def get(self, name: str, version: int) -> Version:
        validate_name(name)
        with self._read() as db:
            row = db.execute(
                "SELECT * FROM versions WHERE name = ? AND version = ?", (name, version)
            ).fetchone()
            if row is None:
                record = self.records.version_path(name, version)
                if record.exists():  # a damaged record keeps its number (and maybe an alias)
                    raise UserError(
                        f"{name}:{version} is not in the index: its record {record} could not "
                        "be restored (`tunewise registry doctor` says why)"
                    )
                known = [
                    r[0]
                    for r in db.execute(
                        "SELECT version FROM versions WHERE name = ? ORDER BY version", (name,)
                    )
                ]
                if not known:
                    raise UserError(f"no model named {name!r} in the registry")
                raise UserError(f"{name} has no version {version} (versions: {known})")
            return self._row_to_version(db, row)

    def lookup(self, spec: str) -> Version:
        """Metadata of ``name``, ``name:version`` or ``name@alias`` (no file checks).

        A bare name means its ``production`` alias when set, else its latest version.
        """
        name, version, alias = parse_spec(spec)
        if version is not None:
            return self.get(name, version)
        with self._read() as db:
            if alias is None:
                row = (
                    db.execute(
                        "SELECT version FROM aliases WHERE name = ? AND alias = ?",
                        (name, DEFAULT_ALIAS),
                    ).fetchone()
                    or db.execute(
                        "SELECT MAX(version) FROM versions WHERE name = ?", (name,)
                    ).fetchone()
                )
                if row is None or row[0] is None:
                    raise UserError(f"no model named {name!r} in the registry")
                return self.get(name, int(row[0]))
            row = db.execute(
                "SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, alias)
            ).fetchone()
        if row is None:
            self.versions(name)  # raises "no model named" when the name is unknown
            raise UserError(f"{name} has no alias {alias!r}")
        return self.get(name, int(row[0]))

    def resolve(self, spec: str) -> Version:
        """Like :meth:`lookup`, and materialise the files with every hash verified."""
        v = self.lookup(spec)
        v.path = self.blobs.materialise(v)
        return v

    def versions(self, name: str) -> list[Version]:
        validate_name(name)
        with self._read() as db:
            rows = db.execute(
                "SELECT * FROM versions WHERE name = ? ORDER BY version", (name,)
            ).fetchall()
            if not rows:
                raise UserError(f"no model named {name!r} in the registry")
            return [self._row_to_version(db, r) for r in rows]

    def summary(self) -> list[dict[str, Any]]:
        """One row per name: versions, latest, aliases."""
        with self._read() as db:
            out = []
            for r in db.execute(
                "SELECT name, COUNT(*) AS n, MAX(version) AS latest, MAX(created_at) AS updated"
                " FROM versions GROUP BY name ORDER BY name"
            ).fetchall():
                aliases = {
                    a["alias"]: a["version"]
                    for a in db.execute(
                        "SELECT alias, version FROM aliases WHERE name = ? ORDER BY alias",
                        (r["name"],),
                    )
                }
                out.append(
                    {
                        "name": r["name"],
                        "versions": r["n"],
                        "latest": r["latest"],
                        "updated_at": r["updated"],
                        "aliases": aliases,
                    }
                )
            return out

    def aliases(self) -> dict[str, int]:
        """Every ``name@alias`` and the version it points to (a snapshot)."""
        with self._read() as db:
            return {
                f"{r['name']}@{r['alias']}": int(r["version"])
                for r in db.execute("SELECT name, alias, version FROM aliases")
            }

    def history(self, name: str, alias: str | None = None) -> list[dict[str, Any]]:
        """Every alias move of ``name`` (oldest first), with time, action and reason."""
        validate_name(name)
        q = "SELECT * FROM alias_events WHERE name = ?"
        args: list[Any] = [name]
        if alias is not None:
            q += " AND alias = ?"
            args.append(validate_name(alias, "alias"))
        with self._read() as db:
            return [dict(r) for r in db.execute(q + " ORDER BY id", args)]

    # -- aliases ----------------------------------------------------------------------------

    def promote(
        self,
        name: str,
        version: int,
        alias: str = DEFAULT_ALIAS,
        force: bool = False,
        reason: str | None = None,
    ) -> dict[str, Any]:
        """Point ``name@alias`` at ``version``; refuses one the gate did not pass unless forced.

        Moving ``production`` from one version to another also needs the new version's verdict to
        record a passed comparison against the version production points at now (champion /
        challenger, see :func:`tunewise.decide.decisions.regression_reason`): a verdict made before
        that
        version was in production says nothing about regressing from it.
        """
        validate_name(name)
        validate_name(alias, "alias")
        if force and not (reason and reason.strip()):
            raise UserError('--force needs --reason "..." (it is recorded in the history)')
        v = self.get(name, version)
        if v.ship is not True and not force:
            why = (v.verdict.summary if v.verdict else "") or "no gate verdict was recorded"
            said = "no verdict" if v.ship is None else "do not ship"
            raise UserError(
                f"{v.spec}: the gate said {said} ({why}); "
                'promote anyway with --force --reason "..."'
            )
        with self._tx() as db:
            refuse_case_twin(
                db, "alias", alias, "SELECT alias FROM aliases WHERE name = ?", (name,)
            )
            row = db.execute(
                "SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, alias)
            ).fetchone()
            current = None if row is None else int(row[0])
            if alias == DEFAULT_ALIAS and current is not None and current != version and not force:
                problem = _champion_problem(v, self.get(name, current))
                if problem:  # raised inside the transaction: nothing is written
                    raise UserError(
                        f'{v.spec}: {problem}; promote anyway with --force --reason "..."'
                    )
            if current == version:
                return {
                    "name": name,
                    "alias": alias,
                    "from_version": current,
                    "to_version": version,
                    "changed": False,
                }
            now = time.time()
            db.execute(
                "INSERT INTO aliases (name, alias, version, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(name, alias) DO UPDATE SET version = excluded.version,"
                " updated_at = excluded.updated_at",
                (name, alias, version, now),
            )
            event = self._insert_event(
                db,
                name=name,
                alias=alias,
                action="promote",
                from_version=current,
                to_version=version,
                at=now,
                forced=int(force),
                reason=reason,
            )
        self._write_record(self.records.write_event, event)
        return {
            "name": name,
            "alias": alias,
            "from_version": current,
            "to_version": version,
            "changed": True,
        }

    def rollback(
        self, name: str, alias: str = DEFAULT_ALIAS, reason: str | None = None
    ) -> dict[str, Any]:
        """Move ``name@alias`` back to the version it pointed to before the current one.

        Promotions push onto a stack and rollbacks pop it, so rolling back twice after three
        promotions lands on the first one.
        """
        validate_name(name)
        validate_name(alias, "alias")
        with self._tx() as db:
            stack: list[int] = []
            for ev in db.execute(
                "SELECT action, to_version FROM alias_events WHERE name = ? AND alias = ? ORDER "
                "BY id",
                (name, alias),
            ):
                if ev["action"] == "promote":
                    stack.append(int(ev["to_version"]))
                elif stack:
                    stack.pop()
            if len(stack) < 2:
                raise UserError(f"{name}@{alias}: no previous version to roll back to")
            current, target = stack[-1], stack[-2]
            now = time.time()
            db.execute(
                "UPDATE aliases SET version = ?, updated_at = ? WHERE name = ? AND alias = ?",
                (target, now, name, alias),
            )
            event = self._insert_event(
                db,
                name=name,
                alias=alias,
                action="rollback",
                from_version=current,
                to_version=target,
                at=now,
                forced=0,
                reason=reason,
            )
        self._write_record(self.records.write_event, event)
        return {
            "name": name,
            "alias": alias,
            "from_version": current,
            "to_version": target,
            "changed": True,
        }

    def _insert_event(self, db: sqlite3.Connection, **event: Any) -> dict[str, Any]:
        """Insert an alias move under the next free id (past every event record too, so a
        damaged record's id is never given again); returns its row, to record after commit."""
        event_id = next_event_id(db, self.records)
        columns = ", ".join(["id", *event])
        marks = ", ".join("?" * (len(event) + 1))
        db.execute(
            f"INSERT INTO alias_events ({columns}) VALUES ({marks})", (event_id, *event.values())
        )
        return dict(db.execute("SELECT * FROM alias_events WHERE id = ?", (event_id,)).fetchone())


def _default_root() -> Path:
    try:
        return paths.registry_dir()
    except OSError:  # a read-only home without a registry folder: readers find it empty
        return paths.home() / "registry"


def _champion_problem(v: Version, current: Version) -> str | None:
    """Why ``v`` may not replace the ``current`` production version, or None."""
    want = current.spec
    if v.kind == current.kind and same_payload(v.kind, v.files, current.files):
        return None  # the same model registered again: not a challenger
    champ = v.verdict.champion if v.verdict is not None else None
    if not isinstance(champ, dict):
        return (
            f"no recorded comparison against the production version {want} (evaluate this "
            "version with `tunewise run` or `tunewise gate` while it is in production, then "
            "`registry add --verdict`)"
        )
    if champ.get("version") != want:
        return (
            f"its recorded comparison is against {champ.get('version')}, not the current "
            f"production version {want}"
        )
    if not champ.get("passed"):
        return (
            f"it failed the comparison against the production version {want}: {champ.get('reason')}"
        )
    return None


def _read_eval(
    verdict: str | Path | None, eval_dir: str | Path | None
) -> tuple[Verdict | None, EvalRecord | None]:
    """The gate verdict and a compact eval summary (metrics with CIs, paired tests, means)."""
    record = None
    if eval_dir is not None:
        ed = Path(eval_dir)
        if not ed.is_dir():
            raise UserError(f"{ed}: no such eval directory")
        if verdict is None and (ed / VERDICT_FILE).is_file():
            verdict = ed / VERDICT_FILE
        record = EvalRecord(eval_dir=str(ed.resolve()))
        if (ed / COMPARISON_FILE).is_file():
            record.comparison = Comparison.load(ed / COMPARISON_FILE)
        if (ed / EVAL_FILE).is_file():
            record.summary = EvalRun.load(ed / EVAL_FILE).summary()
    return (None if verdict is None else Verdict.load(verdict)), record
