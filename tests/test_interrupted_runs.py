"""A run killed mid-training (kill -9) reads as ``interrupted``, with its resume command."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys

import psutil
import pytest
from rich.console import Console

from _evalfakes import write_train_run
from tunewise.eval.report import _load_train_run
from tunewise.rundir import RunDir, process_identity


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The pid of a process that ran and exited (reaped), so it no longer exists."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not psutil.pid_exists(proc.pid)
    return proc.pid


def _running(path, process) -> RunDir:
    write_train_run(path)
    rd = RunDir(path)
    rd.write({**rd.record(), "status": "running", "process": process})
    return rd


def _dead(dead_pid: int) -> dict:
    return {"pid": dead_pid, "host": socket.gethostname(), "started": 0.0}


def test_dead_pid_reads_as_interrupted(tmp_path, dead_pid):
    rd = _running(tmp_path / "r", _dead(dead_pid))
    assert rd.status() == "running"  # the record itself is untouched
    assert rd.effective_status() == "interrupted"
    assert rd.resume_command() == f"tunewise train --resume {tmp_path / 'r'}"


def test_live_pid_reads_as_running(tmp_path):
    rd = _running(tmp_path / "r", process_identity())
    assert rd.effective_status() == "running"


def test_reused_pid_reads_as_interrupted(tmp_path):
    # Our pid, but recorded as started long before this process: the pid was reused.
    me = process_identity()
    rd = _running(tmp_path / "r", {**me, "started": me["started"] - 3600})
    assert rd.effective_status() == "interrupted"


def test_other_host_or_no_record_reads_as_running(tmp_path, dead_pid):
    other = {**_dead(dead_pid), "host": socket.gethostname() + "-elsewhere"}
    assert _running(tmp_path / "a", other).effective_status() == "running"  # unknown: not ours
    assert _running(tmp_path / "b", None).effective_status() == "running"  # older runs


def test_completed_run_is_not_interrupted(tmp_path, dead_pid):
    write_train_run(tmp_path / "r")
    rd = RunDir(tmp_path / "r")
    rd.write({**rd.record(), "process": _dead(dead_pid)})
    assert rd.effective_status() == "completed"


def test_report_shows_interrupted_with_resume_command(tmp_path, dead_pid):
    _running(tmp_path / "r", _dead(dead_pid))
    info, _ = _load_train_run(tmp_path / "r")
    assert info.status == f"interrupted (resume: tunewise train --resume {tmp_path / 'r'})"
    _running(tmp_path / "live", process_identity())
    assert _load_train_run(tmp_path / "live")[0].status == "running"


def test_workflow_resumes_an_interrupted_run(tmp_path, dead_pid, monkeypatch):
    from tunewise.ladder import workflow
    from tunewise.train import record, trainer

    run = tmp_path / "runs" / "lora-abc"
    _running(run, _dead(dead_pid))
    (run / "checkpoint-2").mkdir()
    calls = []
    monkeypatch.setattr(trainer, "train", lambda cfg, **kw: calls.append(kw))
    monkeypatch.setattr(record, "last_checkpoint", lambda d: d / "checkpoint-2")
    out = io.StringIO()
    workflow._train_or_resume(None, run, "lora", Console(file=out, width=400), quiet=True)
    assert calls and calls[0]["resume"] is True and calls[0]["run_dir"] == run
    text = out.getvalue()
    assert "resuming lora (interrupted run)" in text
    assert f"tunewise train --resume {run}" in text
    assert os.path.isdir(run)  # kept, not wiped
