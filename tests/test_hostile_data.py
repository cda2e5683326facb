"""Hostile and broken input to ``data check|split|convert`` (issue #14).

Every case here once ended in a traceback (exit 1), blocked, or destroyed data. Each must now be
one line naming the file, line and field, exit code 2, and nothing written: no half-written
split, no unsealed test file, no overwritten source.

Read-only places are real where the machine allows it (a read-only bind mount in a private mount
namespace when running as root, ``chmod`` otherwise); the fault-injection tests below them cover
the same promise ("nothing partial") on any machine.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunewise import paths
from tunewise.cli import app
from tunewise.data import seal
from tunewise.data import split as split_mod

runner = CliRunner()
REPO = Path(__file__).resolve().parent.parent
CATS = ["billing", "login", "shipping"]


def chat(user: str, answer: str) -> str:
    msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return json.dumps({"messages": msgs})


def good_lines(n: int = 30) -> list[str]:
    return [chat(f"ticket {i} about thing {i * 7} in {CATS[i % 3]}", CATS[i % 3]) for i in range(n)]


def jsonl(tmp_path: Path, lines: list[str], name: str = "data.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def assert_one_line_error(result, *needles: str) -> str:
    """Exit 2, no traceback, and one ``error:`` line holding every needle; returns that line."""
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, result.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def listing(folder: Path) -> list[str]:
    """Every entry under ``folder`` (hidden temp files included), relative, sorted; the test's
    ``$TUNEWISE_HOME`` (created on first use) aside."""
    entries = (str(p.relative_to(folder)) for p in folder.rglob("*"))
    return sorted(e for e in entries if not e.startswith("tunewise-home"))


# --------------------------------------------------------------------------- hostile JSON


HOSTILE_LINES = {
    # field named in the error, and a word of the message
    "deep": ("[" * 10_000 + "]" * 10_000, "(line)", "nested"),
    "bigint": ('{"messages": ' + "9" * 5000 + "}", "(line)", "digits"),
    "surrogate": (
        '{"messages": [{"role": "user", "content": "hi \\ud800 there"}, '
        '{"role": "assistant", "content": "billing"}]}',
        "messages[0].content",
        "surrogate",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_LINES))
def test_check_names_the_line_of_hostile_json(tmp_path: Path, case: str) -> None:
    line, field, word = HOSTILE_LINES[case]
    path = jsonl(tmp_path, [*good_lines(12), line])
    result = runner.invoke(app, ["data", "check", str(path)])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    problem = next(ln for ln in result.output.splitlines() if ln.startswith(f"{path}:13:"))
    assert problem.startswith(f"{path}:13: {field}: ") and word in problem, problem


@pytest.mark.parametrize("case", sorted(HOSTILE_LINES))
def test_split_refuses_hostile_json_and_writes_nothing(tmp_path: Path, case: str) -> None:
    line, field, word = HOSTILE_LINES[case]
    path = jsonl(tmp_path, [*good_lines(), line])
    out = tmp_path / "out"
    result = runner.invoke(app, ["data", "split", str(path), "--out", str(out)])
    err = assert_one_line_error(result, f"{path}:31: {field}: ", word)
    assert len(err) < 300  # the 10,000 brackets are not echoed back
    assert not out.exists()
    assert listing(tmp_path) == ["data.jsonl"]


def test_split_val_nan_is_a_user_error(tmp_path: Path) -> None:
    path = jsonl(tmp_path, good_lines())
    out = tmp_path / "out"
    result = runner.invoke(app, ["data", "split", str(path), "--out", str(out), "--val", "nan"])
    assert_one_line_error(result, "--val nan")
    assert not out.exists()


def test_split_out_under_an_existing_file(tmp_path: Path) -> None:
    path = jsonl(tmp_path, good_lines())
    out = tmp_path / "data.jsonl" / "splits"
    result = runner.invoke(app, ["data", "split", str(path), "--out", str(out)])
    assert_one_line_error(result, str(path), "not a folder")
    assert listing(tmp_path) == ["data.jsonl"]


def test_split_refuses_to_replace_a_folder_with_other_files(tmp_path: Path) -> None:
    """The split folder is replaced whole; a folder holding the user's own files is not."""
    path = jsonl(tmp_path, good_lines())
    result = runner.invoke(app, ["data", "split", str(path), "--out", str(tmp_path)])
    assert_one_line_error(result, str(tmp_path), "data.jsonl")
    assert listing(tmp_path) == ["data.jsonl"]


def test_split_refuses_a_source_inside_the_folder_it_replaces(tmp_path: Path) -> None:
    out = tmp_path / "splits"
    data = jsonl(tmp_path, good_lines())
    assert runner.invoke(app, ["data", "split", str(data), "--out", str(out)]).exit_code == 0
    again = runner.invoke(app, ["data", "split", str(out / "train.jsonl"), "--out", str(out)])
    assert_one_line_error(again, "train.jsonl", "inside --out")
    assert len((out / "train.jsonl").read_text().splitlines()) == 24


def test_split_through_a_symlinked_folder_replaces_its_target(tmp_path: Path) -> None:
    data = jsonl(tmp_path, good_lines())
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    result = runner.invoke(app, ["data", "split", str(data), "--out", str(link)])
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and (real / "manifest.json").is_file()


# ----------------------------------------------------------------------- inputs that are not files


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["directory", "fifo"])
@pytest.mark.parametrize("verb", ["check", "split", "convert"])
def test_directory_or_fifo_input_is_named_for_what_it_is(
    tmp_path: Path, kind: str, verb: str
) -> None:
    src = tmp_path / "input"
    if kind == "directory":
        src.mkdir()
    else:
        os.mkfifo(src)  # opening it would block until a writer comes: it must never be opened
    args = {
        "check": ["data", "check", str(src)],
        "split": ["data", "split", str(src), "--out", str(tmp_path / "out")],
        "convert": ["data", "convert", str(src), str(tmp_path / "o.jsonl"), "--from", "csv"],
    }[verb]
    result = runner.invoke(app, args)
    line = assert_one_line_error(result, str(src), kind if kind == "directory" else "FIFO")
    assert "not found" not in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "o.jsonl").exists()


# --------------------------------------------------------------------------- convert


def test_convert_refuses_to_overwrite_its_source(tmp_path: Path) -> None:
    src = tmp_path / "a.csv"
    body = "text,label\nhello,x\nworld,y\n"
    src.write_text(body)
    link = tmp_path / "link.jsonl"
    link.symlink_to(src)
    for out in (src, tmp_path / "." / "a.csv", link):
        result = runner.invoke(app, ["data", "convert", str(src), str(out), "--from", "csv"])
        assert_one_line_error(result, str(out), "source")
    assert src.read_text() == body
    assert link.is_symlink()


def test_convert_refuses_a_directory_as_out(tmp_path: Path) -> None:
    src = tmp_path / "a.csv"
    src.write_text("text,label\nhello,x\n")
    out = tmp_path / "outdir"
    out.mkdir()
    result = runner.invoke(app, ["data", "convert", str(src), str(out), "--from", "csv"])
    assert_one_line_error(result, str(out), "is a directory")
    assert listing(out) == []


def test_convert_csv_field_over_the_limit(tmp_path: Path) -> None:
    src = tmp_path / "big.csv"
    src.write_text("text,label\nfine,x\n" + "a" * (200 * 1024) + ",y\n")
    out = tmp_path / "o.jsonl"
    result = runner.invoke(app, ["data", "convert", str(src), str(out), "--from", "csv"])
    assert_one_line_error(result, f"{src}:3: ", "131072")
    assert not out.exists()


def test_convert_csv_invalid_utf8_names_line_and_byte_then_explicit_encoding(
    tmp_path: Path,
) -> None:
    src = tmp_path / "latin.csv"
    src.write_bytes(b"text,label\nhello,x\ncaf\xe9 au lait,y\n")
    out = tmp_path / "o.jsonl"
    result = runner.invoke(app, ["data", "convert", str(src), str(out), "--from", "csv"])
    # line 3, 4th byte of the line, offset 22 in the file; the options that fix it are named
    assert_one_line_error(result, f"{src}:3: ", "byte 4", "--encoding", "--errors")
    assert not out.exists()

    args = ["data", "convert", str(src), str(out), "--from", "csv"]
    ok = runner.invoke(app, [*args, "--encoding", "cp1252"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(out.read_text().splitlines()[1])["messages"][0]["content"] == "café au lait"
    ok = runner.invoke(app, [*args, "--errors", "replace"])
    assert ok.exit_code == 0, ok.output
    assert "caf\ufffd au lait" in out.read_text(encoding="utf-8")

    bad = runner.invoke(app, [*args, "--encoding", "no-such-codec"])
    assert_one_line_error(bad, "--encoding", "no-such-codec")
    bad = runner.invoke(app, [*args, "--errors", "surrogateescape"])
    assert_one_line_error(bad, "--errors", "surrogateescape")


@pytest.mark.parametrize("delimiter", [";;", "", '"', "\n"])
def test_convert_bad_delimiter(tmp_path: Path, delimiter: str) -> None:
    src = tmp_path / "a.csv"
    src.write_text("text;label\nhello;x\n")
    out = tmp_path / "o.jsonl"
    args = ["data", "convert", str(src), str(out), "--from", "csv", "--delimiter", delimiter]
    assert_one_line_error(runner.invoke(app, args), "--delimiter")
    assert not out.exists()


@pytest.mark.parametrize(
    ("source", "text", "needle"),
    [
        ("json-pairs", "[" * 10_000 + "]" * 10_000, "nested"),
        ("json-pairs", '{"train": [["hi", "x"], ["ok", ' + "7" * 5000 + "]]}", "digits"),
        ("json-pairs", '[["hi \\udfff", "billing"]]', "[0][0]: "),
        ("alpaca", '[{"instruction": "' + "[" * 10_000 + '", "output": ' + "[" * 5000, "JSON"),
        ("sharegpt", '{"conversations": ' + "[" * 10_000 + "}\n", "nested"),
    ],
)
def test_convert_hostile_json_sources(tmp_path: Path, source: str, text: str, needle: str) -> None:
    src = tmp_path / "in.json"
    src.write_text(text)
    out = tmp_path / "o.jsonl"
    result = runner.invoke(app, ["data", "convert", str(src), str(out), "--from", source])
    assert_one_line_error(result, str(src), needle)
    assert not out.exists()


def test_convert_hostile_command_line_text(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 on the command line arrive as lone surrogates (PEP 383)."""
    src = tmp_path / "a.csv"
    src.write_text("text,label\nhello,x\n")
    out = tmp_path / "o.jsonl"
    args = ["data", "convert", str(src), str(out), "--from", "csv", "--system", "hi \udcff"]
    assert_one_line_error(runner.invoke(app, args), "--system")
    assert not out.exists()


# --------------------------------------------------------------------------- read-only places


@functools.cache
def _can_mount_read_only() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount --bind / /mnt 2>/dev/null || mount --bind /tmp /tmp"],
        capture_output=True,
    )
    return probe.returncode == 0


_RO_SCRIPT = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'


def run_with_read_only(folder: Path, args: list[str]) -> subprocess.CompletedProcess:
    """``tunewise ARGS`` in a child process that sees ``folder`` read-only."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), *sys.path])}
    cmd = [sys.executable, "-m", "tunewise", *args]
    if os.geteuid() != 0:
        mode = folder.stat().st_mode
        folder.chmod(0o555)
        try:
            return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        finally:
            folder.chmod(mode)
    if not _can_mount_read_only():
        pytest.skip("running as root without mount namespaces: cannot make a folder read-only")
    wrapped = ["unshare", "-m", "sh", "-c", _RO_SCRIPT, "sh", str(folder), *cmd]
    return subprocess.run(wrapped, capture_output=True, text=True, env=env, timeout=120)


def assert_child_one_line(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("home_state", ["fresh", "used"])
def test_split_with_a_read_only_home_writes_nothing(tmp_path: Path, home_state: str) -> None:
    data = jsonl(tmp_path, good_lines())
    home = paths.home()
    if home_state == "used":  # seals.sqlite already there from an earlier split
        assert (
            runner.invoke(
                app, ["data", "split", str(data), "--out", str(tmp_path / "s1")]
            ).exit_code
            == 0
        )
    before = listing(home)
    out = tmp_path / "out"
    proc = run_with_read_only(home, ["data", "split", str(data), "--out", str(out)])
    assert_child_one_line(proc, "TUNEWISE_HOME", "seal")
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert listing(home) == before


@pytest.mark.parametrize("verb", ["split", "convert"])
def test_read_only_output_folder(tmp_path: Path, verb: str) -> None:
    data = jsonl(tmp_path, good_lines())
    csv_src = tmp_path / "a.csv"
    csv_src.write_text("text,label\nhello,x\n")
    ro = tmp_path / "ro"
    ro.mkdir()
    args = {
        "split": ["data", "split", str(data), "--out", str(ro / "splits")],
        "convert": ["data", "convert", str(csv_src), str(ro / "o.jsonl"), "--from", "csv"],
    }[verb]
    proc = run_with_read_only(ro, args)
    assert_child_one_line(proc, str(ro), "cannot write")
    assert listing(ro) == []


# --------------------------------------------------------------------------- faults midway


def _seal_rows() -> int:
    db = paths.seals_db()
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT COUNT(*) FROM seals").fetchone()[0]


def test_split_fault_while_writing_leaves_the_previous_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = jsonl(tmp_path, good_lines())
    out = tmp_path / "out"
    assert runner.invoke(app, ["data", "split", str(data), "--out", str(out)]).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    seals_before = _seal_rows()

    real = split_mod.atomic_write_jsonl

    def disk_full_on_test(path, rows):
        if Path(path).name == "test.jsonl":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, rows)

    monkeypatch.setattr(split_mod, "atomic_write_jsonl", disk_full_on_test)
    result = runner.invoke(app, ["data", "split", str(data), "--out", str(out), "--seed", "7"])
    assert_one_line_error(result, "No space left")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert _seal_rows() == seals_before


def test_split_seal_is_rolled_back_when_the_move_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = jsonl(tmp_path, good_lines())
    out = tmp_path / "out"

    def refuse(src, dst):
        raise OSError(errno.EROFS, "Read-only file system", str(dst))

    monkeypatch.setattr(split_mod, "replace_dir", refuse)
    result = runner.invoke(app, ["data", "split", str(data), "--out", str(out)])
    assert_one_line_error(result, "Read-only file system")
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert _seal_rows() == 0


def test_split_with_an_unwritable_seal_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a read-only home looks like to SQLite, on any machine (root included)."""
    data = jsonl(tmp_path, good_lines())
    out = tmp_path / "out"
    real_connect = sqlite3.connect

    def readonly_connect(*args, **kwargs):
        conn = real_connect(*args, **kwargs)
        conn.execute("PRAGMA query_only = ON")
        return conn

    monkeypatch.setattr(seal.sqlite3, "connect", readonly_connect)
    result = runner.invoke(app, ["data", "split", str(data), "--out", str(out)])
    assert_one_line_error(result, "TUNEWISE_HOME", "seal")
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
