"""Registry history that nothing can rewrite (#26): a damaged record keeps its number through a
rebuild and no alias lands on a version the gate never passed; a stale index is refused, never
written through; records are created once; names are ``\\A...\\Z`` and unique regardless of case;
a full disk is one line that changes nothing; a read-only home reads what its WAL committed;
``registry history`` never prints a terminal escape sequence raw."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from _ship_helpers import assert_one_line, make_run, write_verdict
from tunewise.cli import app
from tunewise.errors import UserError
from tunewise.registry import index as index_mod
from tunewise.registry import records as records_mod
from tunewise.registry.blobs import CRASH_ENV, PAUSE_ENV
from tunewise.registry.records import RecordConflict, create_once
from tunewise.registry.store import Registry
from tunewise.registry.types import NAME_RE, validate_name

runner = CliRunner()
REPO = Path(__file__).resolve().parent.parent
CHARSET = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return make_run(tiny_model_dir, tmp_path_factory.mktemp("run") / "run", seed=1)


def cli(*args: str):
    return runner.invoke(app, list(args))


def checkpoint(reg: Registry) -> None:
    """Fold the WAL into the main file, as the last connection's close does."""
    with contextlib.closing(sqlite3.connect(reg.db_path)) as db:  # closed: no late checkpoint
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def two_promoted(run_dir: Path, tmp_path: Path) -> Registry:
    """tt:1 and tt:2, both gated; production went 1 -> 2 (tt:2's verdict beat tt:1)."""
    reg = Registry()
    reg.add(run_dir, name="tt", verdict=write_verdict(tmp_path / "v1.json", True))
    reg.add(run_dir, name="tt", verdict=write_verdict(tmp_path / "v2.json", True, "tt:1"))
    reg.promote("tt", 1)
    reg.promote("tt", 2)
    return reg


def assert_no_alias_on_an_ungated_version(reg: Registry) -> None:
    """The invariant: every alias names a version that passed the gate, or one that a forced
    promotion (with a reason) put there; an alias on a number the index lacks resolves to
    nothing."""
    history = {name: reg.history(name) for name in {s.split("@")[0] for s in reg.aliases()}}
    for spec, version in reg.aliases().items():
        name = spec.split("@")[0]
        try:
            v = reg.get(name, version)
        except UserError:
            with pytest.raises(UserError):
                reg.lookup(spec)
            continue
        forced = any(
            e["to_version"] == version and e["forced"] and e["reason"] for e in history[name]
        )
        assert v.ship is True or forced, f"{spec} -> {v.spec}, never gated"


# --------------------------------------------------------------------------- 1: damaged record


def test_a_damaged_record_keeps_its_number_and_no_alias_lands_on_a_new_version(run_dir, tmp_path):
    reg = two_promoted(run_dir, tmp_path)
    damaged = reg.root / "records" / "tt" / "2.json"
    damaged.write_text("x\n")
    checkpoint(reg)
    reg.db_path.write_bytes(b"")

    rebuilt = cli("registry", "rebuild")
    assert rebuilt.exit_code == 0, rebuilt.output
    added = cli("registry", "add", str(run_dir), "--name", "tt")
    assert added.exit_code == 0, added.output
    assert "tt:3" in added.output  # never tt:2 again
    assert "tt/2.json" in rebuilt.output and "number stays taken" in rebuilt.output
    assert "tt@production points at tt:2" in rebuilt.output
    reg = Registry()
    assert reg.aliases() == {"tt@production": 2}
    assert reg.get("tt", 3).ship is None
    with pytest.raises(UserError, match=r"tt:2 is not in the index.*records/tt/2\.json"):
        reg.lookup("tt")  # production: nothing, never the ungated tt:3
    assert_no_alias_on_an_ungated_version(reg)
    assert damaged.read_text() == "x\n"  # the damaged record was not written over
    doctor = cli("registry", "doctor")
    assert doctor.exit_code == 2 and "tt@production points at tt:2" in doctor.output


def test_a_damaged_event_record_keeps_its_id(run_dir, tmp_path):
    reg = two_promoted(run_dir, tmp_path)
    events = reg.root / "records" / "tt" / "events"
    last = max(events.glob("*.json"), key=lambda p: int(p.stem))
    last.write_text("{")
    checkpoint(reg)
    reg.db_path.unlink()
    assert cli("registry", "rebuild").exit_code == 0
    reg = Registry()
    reg.promote("tt", 2, force=True, reason="the damaged move, again")
    assert last.read_text() == "{"
    ids = sorted(int(p.stem) for p in events.glob("*.json"))
    assert ids[-1] == int(last.stem) + 1


# --------------------------------------------------------------------------- 2: stale index


def test_a_stale_index_is_refused_and_never_rewrites_history(run_dir, tmp_path):
    reg = Registry()
    ship1 = write_verdict(tmp_path / "v1.json", True)
    reg.add(run_dir, name="tt", verdict=ship1)
    reg.add(run_dir, name="tt", verdict=ship1)
    reg.promote("tt", 1)
    checkpoint(reg)
    old_index = reg.db_path.read_bytes()

    reg.add(run_dir, name="tt", verdict=write_verdict(tmp_path / "v3.json", True, "tt:1"))
    reg.promote("tt", 3)
    records = reg.root / "records" / "tt"
    committed = {p: p.read_bytes() for p in records.rglob("*.json")}
    assert records / "3.json" in committed
    for suffix in ("-wal", "-shm"):
        reg.db_path.with_name(reg.db_path.name + suffix).unlink(missing_ok=True)
    reg.db_path.write_bytes(old_index)  # an old copy of the index put back

    for args in (
        ["registry", "add", str(run_dir), "--name", "tt"],
        ["registry", "promote", "tt:2", "--force", "--reason", "x"],
        ["registry", "rollback", "tt"],
    ):
        assert_one_line(cli(*args), "behind its records", "tt:3", "rebuild --force")
    assert {p: p.read_bytes() for p in records.rglob("*.json")} == committed

    doctor = cli("registry", "doctor")
    assert doctor.exit_code == 2, doctor.output
    assert "behind its records" in doctor.output and "rebuild --force" in doctor.output
    assert cli("registry", "rebuild", "--force").exit_code == 0
    reg = Registry()
    assert reg.lookup("tt").spec == "tt:3"
    assert reg.add(run_dir, name="tt").spec == "tt:4"
    assert cli("registry", "doctor").exit_code == 0


def test_a_record_is_created_once(tmp_path):
    path = tmp_path / "records" / "tt" / "1.json"
    rec = {"format": 1, "name": "tt", "version": 1, "x": float("nan")}
    create_once(path, rec)
    first = path.read_bytes()
    create_once(path, dict(rec))  # the same fact again (a backfill racing a writer): fine
    with pytest.raises(RecordConflict, match="rebuild --force"):
        create_once(path, {**rec, "x": 2})
    assert path.read_bytes() == first
    assert [p.name for p in path.parent.iterdir()] == ["1.json"]  # no temporary file left


def test_a_crash_after_commit_is_recorded_by_the_next_writer(run_dir, tunewise_home):
    env = {**os.environ, CRASH_ENV: "after_commit", "TUNEWISE_HOME": str(tunewise_home)}
    code = f"from tunewise.registry.store import Registry; Registry().add({str(run_dir)!r})"
    proc = subprocess.run([sys.executable, "-c", code], env=env, timeout=120)
    assert proc.returncode == 17
    reg = Registry()
    assert reg.lookup("bot").spec == "bot:1"  # committed
    record = reg.root / "records" / "bot" / "1.json"
    assert not record.exists()
    doctor = cli("registry", "doctor")
    assert doctor.exit_code == 2 and "the next registry write adds it" in doctor.output
    assert reg.add(run_dir).spec == "bot:2"
    assert json.loads(record.read_text())["version"] == 1
    assert cli("registry", "doctor").exit_code == 0


# --------------------------------------------------------------------------- 4: names


def test_control_characters_and_separators_are_refused():
    for bad in ["nl\n", "tt\n", "a.b-c\n", "a\r", "\nb", "a\x00", "a/b", "a..b", ".a"]:
        with pytest.raises(UserError, match="invalid"):
            validate_name(bad)


def test_a_trailing_newline_is_refused_by_every_verb(run_dir, tmp_path):
    assert_one_line(cli("registry", "add", str(run_dir), "--name", "nl\n"), "invalid name")
    reg = Registry()
    reg.add(run_dir, name="tt")
    args = ["registry", "promote", "tt:1", "--alias", "prod\n", "--force", "--reason", "x"]
    assert_one_line(cli(*args), "invalid alias")
    assert_one_line(cli("registry", "show", "tt@prod\n"), "invalid alias")
    assert reg.aliases() == {}
    assert not (reg.root / "records" / "nl\n").exists()


def test_names_and_aliases_are_unique_regardless_of_case(run_dir):
    reg = Registry()
    reg.add(run_dir, name="tt")
    line = assert_one_line(cli("registry", "add", str(run_dir), "--name", "TT"), "'tt'")
    assert "'TT'" in line
    reg.promote("tt", 1, force=True, reason="first")
    args = ["registry", "promote", "tt:1", "--alias", "Production", "--force", "--reason", "x"]
    assert_one_line(cli(*args), "'production'", "'Production'")
    assert [r["name"] for r in reg.summary()] == ["tt"]
    assert reg.aliases() == {"tt@production": 1}


@settings(max_examples=500, derandomize=True, database=None, deadline=None)
@given(
    st.one_of(
        st.text(max_size=70),
        st.from_regex(NAME_RE).flatmap(
            lambda ok: st.sampled_from(["", "\n", "\r\n", "\x00", "/", "..", "\u202e"]).map(
                lambda tail: ok + tail
            )
        ),
    )
)
def test_every_accepted_name_is_in_the_charset(name):
    try:
        validate_name(name)
    except UserError:
        return
    assert CHARSET.fullmatch(name), repr(name)
    assert ".." not in name and "\n" not in name
    assert all(c.isprintable() and c.isascii() for c in name), repr(name)


@settings(
    max_examples=12,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.from_regex(r"\A[a-z][a-z0-9_.-]{0,10}\Z"), st.data())
def test_a_name_that_differs_only_in_case_is_refused(run_dir, name, data):
    if ".." in name or name == name.upper():
        return
    twin = "".join(c.upper() if data.draw(st.booleans()) else c for c in name)
    twin = twin if twin != name else name.upper()
    with tempfile.TemporaryDirectory() as tmp:
        reg = Registry(Path(tmp) / "registry")
        reg.add(run_dir, name=name)
        with pytest.raises(UserError, match=re.escape(repr(name))):
            reg.add(run_dir, name=twin)
        reg.promote(name, 1, alias=name, force=True, reason="property")
        with pytest.raises(UserError, match=re.escape(repr(name))):
            reg.promote(name, 1, alias=twin, force=True, reason="property")
        assert [r["name"] for r in reg.summary()] == [name]
        assert reg.aliases() == {f"{name}@{name}": 1}


# --------------------------------------------------------------------------- 6: disk full


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_in_add_is_one_line_and_changes_nothing(run_dir, monkeypatch):
    reg = Registry()
    reg.add(run_dir, name="tt")
    before = (reg.summary(), sorted(p.name for p in reg.blob_dir.iterdir()))
    other = make_run_copy(run_dir, reg.root.parent / "other")
    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", _no_space)  # the first blob that does not fit
        result = cli("registry", "add", str(other), "--name", "tt")
    line = assert_one_line(result, "disk full writing", "nothing was changed")
    assert "blobs" in line
    reg = Registry()
    assert (reg.summary(), sorted(p.name for p in reg.blob_dir.iterdir())) == before
    assert not list(reg.root.rglob(".incoming.*")) and not list(reg.root.rglob("*.tmp"))
    assert cli("registry", "list").exit_code == 0
    assert cli("registry", "doctor").exit_code == 0


def make_run_copy(run_dir: Path, dst: Path) -> Path:
    """The run with different weights bytes, so adding it writes a new blob."""
    shutil.copytree(run_dir, dst)
    weights = dst / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes() + b" ")
    return dst


def test_disk_full_in_rebuild_is_one_line_and_changes_nothing(run_dir, tmp_path, monkeypatch):
    reg = two_promoted(run_dir, tmp_path)
    checkpoint(reg)
    index_before = reg.db_path.read_bytes()
    real_connect = sqlite3.connect

    def small_disk(path, *args, **kwargs):
        db = real_connect(path, *args, **kwargs)
        if Path(str(path)).name.startswith(".rebuild."):
            db.execute("PRAGMA max_page_count = 1")  # SQLITE_FULL on the first page it adds
        return db

    with monkeypatch.context() as patch:
        patch.setattr(records_mod.sqlite3, "connect", small_disk)
        result = cli("registry", "rebuild", "--force")
    assert_one_line(result, "disk full writing", "registry.sqlite", "nothing was changed")
    assert reg.db_path.read_bytes() == index_before
    assert not list(reg.root.glob(".rebuild.*")) and not list(reg.root.glob("*.broken-*"))
    assert Registry().lookup("tt").spec == "tt:2"
    assert cli("registry", "doctor").exit_code == 0


def test_sqlite_full_and_an_io_error_on_a_full_disk_are_not_corruption(tmp_path, monkeypatch):
    db_path = tmp_path / "registry.sqlite"
    err = index_mod.classify(db_path, sqlite3.OperationalError("database or disk is full"))
    assert str(err) == f"disk full writing {db_path}; nothing was changed"
    monkeypatch.setattr(index_mod, "_no_space_left", lambda folder: True)
    io = sqlite3.OperationalError("disk I/O error")
    io.sqlite_errorcode = sqlite3.SQLITE_IOERR
    assert "disk full" in str(index_mod.classify(db_path, io))
    assert not index_mod.is_corruption(io)


_FULL_DISK_SCRIPT = """
set -u
mount -t tmpfs -o size=12m tmpfs "$HOME_DIR"
tw() { "$PY" -m tunewise "$@"; }
tw registry add "$RUN" --name tt >/dev/null || exit 90
dd if=/dev/zero of="$HOME_DIR/fill" bs=4k 2>/dev/null
echo "== add"; tw registry add "$OTHER" --name tt 2>&1; echo "rc=$?"
echo "== rebuild"; tw registry rebuild --force 2>&1; echo "rc=$?"
echo "== list"; tw registry list 2>&1; echo "rc=$?"
rm "$HOME_DIR/fill"
echo "== freed"; tw registry doctor 2>&1; echo "rc=$?"
find "$HOME_DIR" -name '.incoming.*' -o -name '.rebuild.*' -o -name '*.tmp' -o -name '*broken*'
"""


def test_a_real_full_disk(run_dir, tmp_path):
    """On a real full file system (a small tmpfs, where root may mount one): every verb is one
    line or works, reads are never told the index is corrupted, nothing half-written is left."""
    from test_hostile_data import _can_mount_read_only

    if not _can_mount_read_only():
        pytest.skip("needs root and mount namespaces for a small tmpfs")
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **os.environ,
        "HOME_DIR": str(home),
        "TUNEWISE_HOME": str(home),
        "PY": sys.executable,
        "RUN": str(run_dir),
        "OTHER": str(make_run_copy(run_dir, tmp_path / "other")),
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), *sys.path]),
    }
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", _FULL_DISK_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout
    assert proc.returncode == 0 and "Traceback" not in out + proc.stderr, out + proc.stderr
    parts = dict(re.findall(r"== (\w+)\n(.*?)(?=\n== |\Z)", out, re.S))
    assert "disk full writing" in parts["add"] and "rc=2" in parts["add"], parts["add"]
    assert "nothing was changed" in parts["add"]
    assert "rc=0" in parts["rebuild"] or "disk full writing" in parts["rebuild"], parts["rebuild"]
    assert "corrupted" not in out, out
    assert "rc=0" in parts["list"] or "disk full" in parts["list"], parts["list"]
    freed = parts["freed"]
    assert "rc=0" in freed and "tt" not in freed.split("rc=0")[1].strip(), freed


# --------------------------------------------------------------------------- 10: WAL, read-only


_UNCHECKPOINTED = """
import os, sqlite3, sys
from tunewise.registry.store import Registry
reg = Registry()
held = sqlite3.connect(reg.db_path)  # not the last connection: nobody checkpoints on close
held.execute("PRAGMA wal_autocheckpoint = 0")
held.execute("PRAGMA wal_checkpoint(TRUNCATE)")
reg.promote("tt", 3)
os._exit(0)  # killed before any checkpoint: the promotion lives in the -wal only
"""


def wal_only_promotion(run_dir: Path, tmp_path: Path, home: Path) -> Registry:
    """tt:1..3, production at 2 in the main file, at 3 in the uncheckpointed -wal."""
    reg = Registry()
    reg.add(run_dir, name="tt", verdict=write_verdict(tmp_path / "v1.json", True))
    reg.add(run_dir, name="tt", verdict=write_verdict(tmp_path / "v2.json", True, "tt:1"))
    reg.add(run_dir, name="tt", verdict=write_verdict(tmp_path / "v3.json", True, "tt:2"))
    reg.promote("tt", 1)
    reg.promote("tt", 2)
    env = {**os.environ, "TUNEWISE_HOME": str(home)}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), *sys.path])
    proc = subprocess.run(
        [sys.executable, "-c", _UNCHECKPOINTED], env=env, capture_output=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    wal = reg.db_path.with_name("registry.sqlite-wal")
    assert wal.stat().st_size > 0
    reg.db_path.with_name("registry.sqlite-shm").unlink()  # as a copy or a restore leaves it
    return reg


def test_a_read_only_home_sees_what_the_wal_committed(run_dir, tmp_path, tunewise_home):
    from test_registry_faults import _env, _ro_wrap

    wal_only_promotion(run_dir, tmp_path, tunewise_home)
    for args, want in ((["list"], "production→3"), (["show", "tt", "--json"], '"version": 3')):
        cmd = [sys.executable, "-m", "tunewise", "registry", *args]
        proc = subprocess.run(
            _ro_wrap(tunewise_home, cmd), capture_output=True, text=True, env=_env(tunewise_home)
        )
        assert proc.returncode == 0, proc.stderr
        assert want in proc.stdout, proc.stdout


def _read_only_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    # with monkeypatch.context() only: undo() would also undo the test's TUNEWISE_HOME
    """What a read-only registry folder looks like to this process, root included: SQLite
    cannot create ``-shm`` beside the index, and nothing is writable."""
    real_connect = sqlite3.connect

    class NoShm:
        """A connection whose first read fails as SQLite's does when ``-shm`` cannot be made."""

        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def execute(self, *args, **kwargs):
            raise sqlite3.OperationalError("unable to open database file")

        def close(self) -> None:
            self.db.close()

    def connect(target, *args, **kwargs):
        db = real_connect(target, *args, **kwargs)
        target = str(target)
        if kwargs.get("uri") and "mode=ro" in target and "immutable=1" not in target:
            return NoShm(db)
        return db

    monkeypatch.setattr(index_mod.sqlite3, "connect", connect)
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode, **kw: False if mode & os.W_OK else real_access(p, mode)
    )


def test_the_wal_is_read_where_shm_cannot_be_made(run_dir, tmp_path, tunewise_home, monkeypatch):
    reg = wal_only_promotion(run_dir, tmp_path, tunewise_home)
    wal_before = reg.db_path.with_name("registry.sqlite-wal").read_bytes()
    with monkeypatch.context() as patch:
        _read_only_folder(patch)
        reg = Registry()
        assert reg.lookup("tt").spec == "tt:3"
        assert reg.aliases() == {"tt@production": 3}
        assert [e["to_version"] for e in reg.history("tt")] == [1, 2, 3]
    assert reg.db_path.with_name("registry.sqlite-wal").read_bytes() == wal_before
    assert not reg.db_path.with_name("registry.sqlite-shm").exists()


def test_an_unreadable_wal_is_one_line(run_dir, tmp_path, tunewise_home, monkeypatch):
    wal_only_promotion(run_dir, tmp_path, tunewise_home)
    _read_only_folder(monkeypatch)
    real_copy = shutil.copyfile

    def copyfile(src, dst, *args, **kwargs):
        if str(src).endswith("-wal"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(src))
        return real_copy(src, dst, *args, **kwargs)

    monkeypatch.setattr(index_mod.shutil, "copyfile", copyfile)
    assert_one_line(cli("registry", "list"), "registry.sqlite-wal", "write-ahead log")


# --------------------------------------------------------------------------- 13a: history


def test_history_prints_escape_sequences_escaped(run_dir):
    reg = Registry()
    reg.add(run_dir, name="tt")
    reason = "\x1b]0;pwned\x07\x1b[2J\x1b[31mred [bold]markup[/] \u202eevil\r\nnext"
    reg.promote("tt", 1, force=True, reason=reason)
    out = cli("registry", "history", "tt").output
    assert not any(c in out for c in "\x1b\x07\r\u202e"), repr(out)
    for shown in ("\\x1b", "\\x07", "\\u202e", "[bold]"):
        assert shown in out, (shown, out)
    assert reg.history("tt")[0]["reason"] == reason  # stored as given, escaped only when shown


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_stops_a_registry_command_as_ctrl_c_does(run_dir, tunewise_home, sig):
    """`tunewise registry add` stopped inside its write transaction (SIGTERM from a scheduler, or
    Ctrl-C): the transaction rolls back, one line says so, exit 143 / 130-like; no version."""
    env = {**os.environ, PAUSE_ENV: "before_commit", "TUNEWISE_HOME": str(tunewise_home)}
    cmd = [sys.executable, "-m", "tunewise", "registry", "add", str(run_dir), "--name", "sig"]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.time() + 120
    blobs = tunewise_home / "registry" / "blobs"
    while time.time() < deadline and not (blobs.is_dir() and any(blobs.rglob("*"))):
        time.sleep(0.2)  # the blobs are written: the transaction is next, and it waits there
    time.sleep(1.0)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    how = "SIGTERM" if sig == signal.SIGTERM else "Ctrl-C"
    assert f"stopped ({how}): nothing is half-written" in out, out
    assert "Traceback" not in out
    if sig == signal.SIGTERM:
        assert proc.returncode == 143
    else:
        assert proc.returncode != 0
    reg = Registry()
    assert reg.summary() == []  # rolled back: no version, and the next add is version 1
    assert reg.add(run_dir, name="sig").version == 1
