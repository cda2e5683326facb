"""SIGTERM stops the ladder like Ctrl-C, and ladder.json keeps the time an unfinished attempt took.

The ladder here is two stages of plain Python (no model): the second writes a marker file and
then waits, so the test sends SIGTERM exactly while a stage is running, without a sleep to guess
when that is.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from tunewise.ladder.stages import Ladder, Stage

REPO = Path(__file__).resolve().parent.parent

LADDER = """
import sys, time
from pathlib import Path
from types import SimpleNamespace
from rich.console import Console
from tunewise.ladder.stages import Ladder, Stage

work = Path(sys.argv[1])

def slow(upstream):
    (work / "started").write_text("x")  # the test sends SIGTERM once it sees this
    while True:
        time.sleep(0.02)

first = Stage("first", {}, lambda up: {"n": 1})
second = Stage("second", {}, slow, after=(first,))
Ladder(SimpleNamespace(work_dir=work), console=Console(width=300)).run([first, second])
"""


def _stages(work: Path) -> tuple[Stage, Stage]:
    """The same two stages as the subprocess (same names and inputs, so the same keys), fast."""
    first = Stage("first", {}, lambda up: {"n": 1})
    return first, Stage("second", {}, lambda up: {"done": True}, after=(first,))


def _run_until_started(work: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-c", LADDER, str(work)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 120
    while not (work / "started").exists():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "the second stage never started"
        time.sleep(0.05)
    return proc


def test_sigterm_says_what_ctrl_c_says_and_the_rerun_keeps_the_first_attempts_time(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    proc = _run_until_started(work)
    time.sleep(0.3)  # let the interrupted attempt take measurable time (not needed for the order)
    proc.send_signal(signal.SIGTERM)
    said, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0
    # the Ctrl-C message, naming the stage and what was kept
    assert "interrupted (SIGTERM) in [2/2] second" in said, said
    assert "finished stages are kept (first): run the same command again to resume" in said
    state = json.loads((work / "ladder.json").read_text())
    assert "key" in state["first"]  # finished: reusable
    assert "key" not in state["second"]  # not finished: nothing to reuse, only the attempt
    (attempt,) = state["second"]["attempts"]
    assert attempt["how"] == "terminated" and attempt["seconds"] >= 0.3

    # The rerun resumes: the finished stage is cached, the other one runs (fast, as when the
    # generation cache holds the attempt's work), and both times are kept.
    con = Console(record=True, width=300)
    result = Ladder(_Cfg(work), console=con).run(list(_stages(work)))
    assert [o for o in result.values()] == [{"n": 1}, {"done": True}]
    state = json.loads((work / "ladder.json").read_text())
    second = state["second"]
    assert second["seconds"] < attempt["seconds"]  # this run's time
    assert second["attempts"] == [attempt]  # the interrupted run's time, kept
    assert second["total_seconds"] == round(second["seconds"] + attempt["seconds"], 2)
    text = con.export_text()
    assert "with 1 earlier attempt(s) of this stage" in text
    assert "[1/2] first: unchanged, cached" in text


def test_ctrl_c_and_failures_record_the_attempt_and_leave_earlier_outputs(tmp_path):
    import pytest

    def boom(up):
        raise KeyboardInterrupt

    first, _ = _stages(tmp_path)
    second = Stage("second", {}, boom, after=(first,))
    con = Console(record=True, width=300)
    with pytest.raises(KeyboardInterrupt):
        Ladder(_Cfg(tmp_path), console=con).run([first, second])
    text = con.export_text()
    assert "interrupted in [2/2] second" in text and "SIGTERM" not in text

    def fails(up):
        raise RuntimeError("a bug")

    second = Stage("second", {}, fails, after=(first,))
    with pytest.raises(RuntimeError):
        Ladder(_Cfg(tmp_path), console=Console(quiet=True)).run([first, second])
    state = json.loads((tmp_path / "ladder.json").read_text())
    assert [a["how"] for a in state["second"]["attempts"]] == ["interrupted", "failed"]


class _Cfg:
    """What :class:`Ladder` reads of a project: its work directory."""

    def __init__(self, work: Path) -> None:
        self.work_dir = work


def test_the_cli_exits_with_the_sigterm_status(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from tunewise import config
    from tunewise.cli import app
    from tunewise.ladder import workflow
    from tunewise.ladder.interrupt import SIGTERM_EXIT_CODE, Terminated

    def terminated(*args, **kwargs):
        raise Terminated()

    monkeypatch.setattr(config, "load_project", lambda *a, **k: None)
    monkeypatch.setattr(workflow, "run_ladder", terminated)
    r = CliRunner().invoke(app, ["run", str(tmp_path)])
    assert r.exit_code == SIGTERM_EXIT_CODE == 143
