"""A full disk is one line for every command (#26): the atomic write helpers name the file and
leave the previous one intact; any other out-of-space error reaching the CLI is one line too."""

from __future__ import annotations

import errno
import json
import os

import pytest
from typer.testing import CliRunner

from tunewise import fsio
from tunewise.cli import app
from tunewise.errors import UserError


def _full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_an_atomic_write_on_a_full_disk_names_the_file_and_changes_nothing(tmp_path, monkeypatch):
    target = tmp_path / "report.md"
    target.write_text("the previous report\n")
    monkeypatch.setattr(fsio.os, "fsync", _full)
    with pytest.raises(UserError, match=r"disk full writing .*report\.md; nothing was changed"):
        fsio.atomic_write_text(target, "a new report that does not fit\n")
    assert target.read_text() == "the previous report\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]  # no temporary file left


def test_other_errors_pass_through_unchanged(tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(fsio.os, "fsync", denied)
    with pytest.raises(PermissionError):
        fsio.atomic_write_text(tmp_path / "x.txt", "x")


def test_a_command_that_hits_a_full_disk_says_so_in_one_line(tmp_path, monkeypatch):
    """`tunewise data split` writes its splits through the atomic helpers; with the disk full
    it exits 2 with one line naming a file, no traceback, and no split written."""
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"ticket {i} about billing"},
                {"role": "assistant", "content": "billing"},
            ]
        }
        for i in range(30)
    ]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "splits"
    real_fsync = os.fsync
    monkeypatch.setattr(fsio.os, "fsync", _full)
    result = CliRunner().invoke(app, ["data", "split", str(data), "--out", str(out)])
    monkeypatch.setattr(fsio.os, "fsync", real_fsync)
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and "disk full writing" in errors[0], result.output
    assert not any(out.glob("*.jsonl"))
