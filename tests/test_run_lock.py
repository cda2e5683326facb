"""One writer per run directory, and per project for `tunewise run`: an OS lock, free on kill -9.

Every holder here is a real process: a lock that only works inside one process (or one that a
crashed process leaves behind) is exactly what these tests must catch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from _train_helpers import PYTHON, make_project, subprocess_env
from tunewise.cli import app
from tunewise.config import load_project
from tunewise.errors import UserError
from tunewise.fsio import LOCK_FILE, FolderLock
from tunewise.rundir import RunDir, describe_holder, one_writer

# Holds a folder's lock the way a training or a ladder does, then waits to be killed.
HOLDER = """
import sys, time
from pathlib import Path
from tunewise.rundir import one_writer

folder, marker = Path(sys.argv[1]), Path(sys.argv[2])
with one_writer(folder, lambda holder: holder):
    marker.write_text("held")
    while True:
        time.sleep(0.05)
"""


def _start(args: list[str], ready: Path, proc_env: dict[str, str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        args, env=proc_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while not ready.exists():
        if proc.poll() is not None:
            pytest.fail(f"the first writer ended early: {proc.stderr.read()[-3000:]}")
        assert time.monotonic() < deadline, f"{ready} never appeared"
        time.sleep(0.05)
    return proc


def _hold(folder: Path, tmp_path: Path) -> subprocess.Popen[str]:
    marker = tmp_path / f"held-{folder.name}"
    return _start([PYTHON, "-c", HOLDER, str(folder), str(marker)], marker, subprocess_env())


def _kill9(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


def _train_side_by_side(*commands: list[str]) -> list[subprocess.CompletedProcess[str]]:
    """``tunewise train ARGS`` for each of ``commands``, each in a process of its own, all at
    once: each process spends seconds importing torch before it reaches the lock, and the
    commands here do not depend on one another."""
    procs = [
        subprocess.Popen(
            [PYTHON, "-m", "tunewise", "train", *args, "--no-progress"],
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    done = []
    try:
        for args, proc in zip(commands, procs, strict=True):
            out, err = proc.communicate(timeout=600)
            done.append(subprocess.CompletedProcess(args, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=60)
    return done


def _error_lines(stderr: str) -> list[str]:
    """The error lines (a library may log a line of its own on import), and no traceback."""
    assert "Traceback" not in stderr, stderr[-3000:]
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_a_second_training_into_a_busy_run_dir_is_refused_naming_the_first(
    tmp_path, tiny_model_dir
):
    """The probe's repro: two trainings into one --run-dir (r=8, then r=4) both exited 0 and one
    result was lost. Now the second, and a --resume of the busy run, are refused in one line that
    names the first; once the first is killed -9, the run is free to resume."""
    project = make_project(tmp_path, tiny_model_dir, max_steps=100_000, eval_every=1000)
    run = tmp_path / "run"
    cmd = [PYTHON, "-m", "tunewise", "train", str(project), "--run-dir", str(run), "--no-progress"]
    first = _start([*cmd, "--set", "train.lora_r=8"], run / "run.json", subprocess_env())
    try:
        # The first is paused while the others knock: a stopped process keeps its lock exactly
        # as a running one does (a flock belongs to the open file, which stays open), and it
        # no longer takes a core from them with training nobody looks at. SIGKILL ends it
        # stopped or not.
        first.send_signal(signal.SIGSTOP)
        second, resumed = _train_side_by_side(
            [str(project), "--run-dir", str(run), "--set", "train.lora_r=4"],
            ["--resume", str(run)],
        )
        assert second.returncode == 2, second.stderr[-3000:]
        (line,) = _error_lines(second.stderr)
        assert line.startswith(f"error: {run}: another process is writing this run (pid ")
        assert f"pid {first.pid} on host " in line
        assert "tunewise train " in line and "--set train.lora_r=8" in line
        assert json.loads((run / "run.json").read_text())["config"]["train"]["lora_r"] == 8

        assert resumed.returncode == 2, resumed.stderr[-3000:]
        (line,) = _error_lines(resumed.stderr)
        assert f"another process is writing this run (pid {first.pid} " in line
    finally:
        _kill9(first)
    # The kernel dropped the dead process's lock: nothing stale to remove by hand.
    with RunDir(run).writer_lock():
        assert json.loads((run / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_the_lock_is_free_again_after_its_holder_is_killed(tmp_path, tiny_model_dir):
    project = make_project(tmp_path, tiny_model_dir)
    run = tmp_path / "run"
    holder = _hold(run, tmp_path)
    try:
        # The CLI in this process: the holder is the real process that matters here, and this
        # one is another process all the same (the test above refuses from fresh processes).
        refused = CliRunner().invoke(
            app, ["train", str(project), "--run-dir", str(run), "--no-progress"]
        )
        assert refused.exit_code == 2, (refused.exception, refused.output[-3000:])
        (line,) = _error_lines(refused.stderr)
        assert f"pid {holder.pid} on host " in line and "wait for it to end" in line
        with pytest.raises(UserError, match=f"pid {holder.pid} "), RunDir(run).writer_lock():
            pass
    finally:
        _kill9(holder)
    with RunDir(run).writer_lock():  # free again: kill -9 released it
        pass


def test_two_ladders_on_one_project_do_not_interleave(tmp_path, tiny_model_dir):
    from tunewise.ladder.workflow import run_ladder

    cfg = load_project(make_project(tmp_path, tiny_model_dir))
    ladder = _start(
        [PYTHON, "-c", LADDER_UNTIL_TRAINING, str(tmp_path / "project.yaml")],
        cfg.work_dir / "training",
        subprocess_env(),
    )
    try:
        state = (cfg.work_dir / "ladder.json").read_text()  # check and split are done
        with pytest.raises(UserError) as err:
            run_ladder(cfg, quiet=True)
        message = str(err.value)
        assert message.startswith(f"{cfg.work_dir}: another `tunewise run` is working on this")
        assert f"pid {ladder.pid} on host " in message and "\n" not in message
        assert (cfg.work_dir / "ladder.json").read_text() == state  # the second wrote nothing
    finally:
        _kill9(ladder)
    with one_writer(cfg.work_dir, str):  # free again after kill -9
        pass


# A ladder whose training stage stops to wait (the test kills it there): it holds the project's
# lock exactly as a real `tunewise run` in its training stage does.
LADDER_UNTIL_TRAINING = """
import sys, time
from tunewise.config import load_project
from tunewise.ladder import workflow

def train_forever(cfg, run_dir, method, con, **kw):
    (cfg.work_dir / "training").write_text(str(run_dir))
    while True:
        time.sleep(0.05)

workflow._train_or_resume = train_forever
workflow._evaluate_baselines = lambda plan: {}
workflow.run_ladder(load_project(sys.argv[1]), quiet=True)
"""


def test_a_refused_or_failed_start_leaves_no_folder_behind(tmp_path):
    run = tmp_path / "runs" / "new"
    with pytest.raises(ValueError), FolderLock(run, {"pid": 1}):
        raise ValueError("a user error before anything was written")
    assert not (tmp_path / "runs").exists()
    with FolderLock(run, {"pid": 1}):
        (run / "run.json").write_text("{}")
    assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE, "run.json"]
    assert (run / LOCK_FILE).read_text() == ""  # no stale holder once released


def test_the_holder_line_is_one_printable_line():
    line = describe_holder(
        {"pid": 7, "host": "h", "started": 0, "command": "tunewise train p\n\x1b[31mred"}
    )
    assert line.startswith("pid 7 on host h, started ") and "\n" not in line
    assert "\x1b" not in line and line.endswith("tunewise train p??[31mred")
    assert describe_holder(None) == "a process that is still starting"


if sys.platform == "win32":  # pragma: no cover - flock is POSIX
    pytestmark = pytest.mark.skip("POSIX file locks")
