"""A registry that never silently forgets (#14): a missing, empty or corrupted index is named and
never read as empty; `registry doctor` checks it, `registry rebuild` restores it from the records
kept beside the blobs; leftover `.incoming.*` files are cleaned; reads and `serve` work on a
read-only TUNEWISE_HOME; a version number too large for SQLite is one line, not a traceback."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from _ship_helpers import assert_one_line, make_run, write_verdict
from tunewise.cli import app
from tunewise.errors import UserError
from tunewise.registry.blobs import CRASH_ENV
from tunewise.registry.store import Registry, parse_spec

runner = CliRunner()
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return make_run(tiny_model_dir, tmp_path_factory.mktemp("run") / "run", seed=1)


def cli(*args: str):
    return runner.invoke(app, list(args))


def populated(run_dir: Path, tmp_path: Path) -> Registry:
    """Two names, four versions, promotions, a forced promotion and a rollback."""
    reg = Registry()
    ship = write_verdict(tmp_path / "ship.json", True)
    for _ in range(3):
        reg.add(run_dir, name="bot", verdict=ship)
    reg.add(run_dir, name="other")
    reg.promote("bot", 1)
    reg.promote("bot", 2)
    reg.promote("bot", 3, alias="staging")
    reg.promote("other", 1, force=True, reason="legal asked")
    reg.rollback("bot", reason="bad answers")
    return reg


def snapshot(reg: Registry) -> dict:
    """Everything a user can read back: listing, every version, aliases and history."""
    versions = {
        row["name"]: [v.to_dict() for v in reg.versions(row["name"])] for row in reg.summary()
    }
    return {
        "summary": reg.summary(),
        "versions": versions,
        "aliases": reg.aliases(),
        "history": {name: reg.history(name) for name in versions},
        "list": cli("registry", "list").output,
        "production": reg.lookup("bot").spec,
    }


# --------------------------------------------------------------------------- specs


@pytest.mark.parametrize("spec", ["x:99999999999999999999999", "x:²", "x:1٣", "x:-1", "x:"])
def test_an_impossible_version_is_a_user_error(spec):
    with pytest.raises(UserError, match="version"):
        parse_spec(spec)
    assert_one_line(cli("registry", "show", spec), "version")


# --------------------------------------------------------------------------- index faults


def _zero(db: Path) -> None:
    db.write_bytes(b"")


def _bad_header(db: Path) -> None:
    data = bytearray(db.read_bytes())
    data[:16] = b"not a database!!"
    db.write_bytes(bytes(data))


def _damaged_middle(db: Path) -> None:
    data = bytearray(db.read_bytes())
    page = 4096
    middle = (len(data) // page // 2) * page  # a whole page in the middle, overwritten
    data[middle : middle + page] = os.urandom(page)
    db.write_bytes(bytes(data))


def _truncated(db: Path) -> None:
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])


FAULTS = {
    "deleted": lambda db: db.unlink(),
    "zero-bytes": _zero,
    "bad-header": _bad_header,
    "damaged-middle": _damaged_middle,
    "truncated": _truncated,
}


def _checkpoint(reg: Registry) -> None:
    """Fold the WAL into the main file (as a clean shutdown does), so the fault hits the data."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(reg.db_path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


@pytest.mark.parametrize("fault", FAULTS)
def test_a_broken_index_is_named_never_empty_and_rebuilt(run_dir, tmp_path, fault):
    reg = populated(run_dir, tmp_path)
    before = snapshot(reg)
    _checkpoint(reg)
    FAULTS[fault](reg.db_path)

    for args in (["registry", "list"], ["registry", "show", "bot"], ["registry", "history", "bot"]):
        assert_one_line(cli(*args), "registry.sqlite", "tunewise registry rebuild")
    # the next add must not start again at version 1
    assert_one_line(cli("registry", "add", str(run_dir), "--name", "bot"), "registry.sqlite")
    with pytest.raises(UserError, match=r"registry\.sqlite"):
        Registry().summary()
    doctor = cli("registry", "doctor")
    assert doctor.exit_code == 2 and "registry.sqlite" in doctor.output, doctor.output

    rebuilt = cli("registry", "rebuild")
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "4 version(s)" in rebuilt.output
    assert snapshot(Registry()) == before
    assert cli("registry", "doctor").exit_code == 0
    # and the registry carries on where it was
    assert Registry().add(run_dir, name="bot").spec == "bot:4"
    if fault != "deleted":  # the damaged file is kept aside, never deleted
        assert list(reg.root.glob("registry.sqlite.broken-*"))


def test_serve_will_not_start_on_a_broken_index(run_dir, tmp_path):
    reg = populated(run_dir, tmp_path)
    _checkpoint(reg)
    _zero(reg.db_path)
    r = cli("serve", "--base", "/no/such/model")
    assert_one_line(r, "registry.sqlite", "rebuild")


def test_a_fresh_home_is_empty_not_broken():
    assert Registry().summary() == []
    assert cli("registry", "list").exit_code == 0
    assert cli("registry", "doctor").exit_code == 0


def test_records_are_written_beside_the_blobs(run_dir, tmp_path):
    reg = populated(run_dir, tmp_path)
    records = reg.root / "records"
    assert sorted(p.name for p in (records / "bot").glob("*.json")) == [
        "1.json",
        "2.json",
        "3.json",
    ]
    v2 = json.loads((records / "bot" / "2.json").read_text())
    assert v2["files"] == reg.get("bot", 2).files and v2["version"] == 2
    events = sorted((records / "bot" / "events").glob("*.json"))
    assert [json.loads(e.read_text())["action"] for e in events] == [
        "promote",
        "promote",
        "promote",
        "rollback",
    ]


def test_an_old_registry_without_records_is_backfilled(run_dir, tmp_path):
    """A registry made before records existed gets them on its next writer open."""
    import shutil

    reg = populated(run_dir, tmp_path)
    shutil.rmtree(reg.root / "records")
    Registry().promote("bot", 3)  # any write opens the registry as a writer
    before = snapshot(Registry())
    _checkpoint(reg)
    reg.db_path.unlink()
    assert_one_line(cli("registry", "list"), "registry.sqlite")
    assert cli("registry", "rebuild").exit_code == 0
    assert snapshot(Registry()) == before


def test_doctor_names_a_corrupted_blob_and_a_missing_record(run_dir, tmp_path):
    reg = populated(run_dir, tmp_path)
    assert cli("registry", "doctor").exit_code == 0
    blob = reg.blob_path(reg.get("bot", 1).files["adapter_model.safetensors"])
    blob.chmod(0o644)
    blob.write_bytes(b"tampered")
    (reg.root / "records" / "other" / "1.json").unlink()
    r = cli("registry", "doctor")
    assert r.exit_code == 2, r.output
    assert "adapter_model.safetensors" in r.output and "bot:1" in r.output
    assert "other:1" in r.output and "record" in r.output


# --------------------------------------------------------------------------- leftovers


def test_leftover_incoming_files_are_cleaned_by_the_next_writer(run_dir, tunewise_home):
    Registry().add(run_dir, name="bot")
    env = {**os.environ, "TUNEWISE_HOME": str(tunewise_home), CRASH_ENV: "inside_blob"}
    proc = subprocess.run(
        [sys.executable, "-m", "tunewise", "registry", "add", str(run_dir), "--name", "bot"],
        env={**env, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), *sys.path])},
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == 17, proc.stderr  # killed inside a blob write
    blobs = Registry().blob_dir
    left = list(blobs.glob(".incoming.*"))
    assert left, "the crash left no .incoming file: the test proves nothing"
    live = blobs / f".incoming.{os.getpid()}.inflight"  # a writer that is still running
    live.write_bytes(b"x")
    readers = [Registry().summary(), cli("registry", "list")]  # readers never clean
    assert readers and all(p.exists() for p in left)
    assert Registry().add(run_dir, name="bot").spec == "bot:2"
    assert not any(p.exists() for p in left)
    assert live.exists()


# --------------------------------------------------------------------------- read-only home


def _ro_wrap(folder: Path, cmd: list[str]) -> list[str]:
    from test_hostile_data import _RO_SCRIPT, _can_mount_read_only

    if os.geteuid() != 0 or not _can_mount_read_only():
        pytest.skip("needs root and mount namespaces for a real read-only home")
    return ["unshare", "-m", "sh", "-c", _RO_SCRIPT, "sh", str(folder), *cmd]


def _env(home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "TUNEWISE_HOME": str(home),
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), *sys.path]),
    }


def test_reads_work_on_a_read_only_home(run_dir, tmp_path, tunewise_home):
    populated(run_dir, tmp_path)
    expected = {
        a: cli("registry", *a.split()).output for a in ("list", "show bot:2", "history bot")
    }
    for args, out in expected.items():
        cmd = _ro_wrap(tunewise_home, [sys.executable, "-m", "tunewise", "registry", *args.split()])
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(tunewise_home))
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == out
    cmd = [sys.executable, "-m", "tunewise", "registry", "add", str(run_dir)]
    proc = subprocess.run(
        _ro_wrap(tunewise_home, cmd), capture_output=True, text=True, env=_env(tunewise_home)
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "read-only" in proc.stderr


def test_serve_starts_on_a_read_only_home(tiny_model_dir, run_dir, tmp_path, tunewise_home):
    reg = Registry()
    reg.add(run_dir, name="bot", verdict=write_verdict(tmp_path / "v.json", True))
    reg.promote("bot", 1)
    assert not (reg.root / "versions" / "bot" / "1").exists()  # never materialised yet
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve = [sys.executable, "-m", "tunewise", "serve", "--base", str(tiny_model_dir)]
    cmd = _ro_wrap(tunewise_home, [*serve, "--port", str(port), "--threads", "1"])
    proc = subprocess.Popen(
        cmd, env=_env(tunewise_home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        # One client for the polls and requests: httpx.get would build one (TLS context
        # included) at every poll. Polled every 0.1 s: found up within 0.1 s of being ready.
        with httpx.Client(base_url=url, timeout=120) as http:
            deadline = time.time() + 180
            while True:
                assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
                assert time.time() < deadline, "server did not start"
                with contextlib.suppress(httpx.HTTPError):
                    if http.get("/health", timeout=2).status_code == 200:
                        break
                time.sleep(0.1)
            msgs = [{"role": "user", "content": "hi"}]
            body = {"model": "bot", "messages": msgs, "max_tokens": 2}
            r = http.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            assert r.json()["system_fingerprint"] == "bot:1"
            ids = [m["id"] for m in http.get("/v1/models", timeout=30).json()["data"]]
            assert "bot@production" in ids
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
