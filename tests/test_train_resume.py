"""Checkpoint and resume: SIGKILL mid-run, resume, and land where an uninterrupted run lands."""

from __future__ import annotations

import errno
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from _train_helpers import PYTHON, losses_by_step, make_project, read_jsonl, subprocess_env

MAX_STEPS = 24
KILL_AFTER = 8  # checkpoint step that must exist before the kill


def _cmd(*args: str) -> list[str]:
    return [PYTHON, "-m", "tunewise", "train", *args, "--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """An uninterrupted run and a run killed with SIGKILL after checkpoint KILL_AFTER, then resumed.

    Checkpoints fall on logging steps: the Trainer logs the mean loss since the last log, and a
    resume restarts that window, so only aligned windows are comparable number for number.
    """
    root = tmp_path_factory.mktemp("resume")
    project = make_project(
        root,
        tiny_model_dir,
        n_train=48,
        max_steps=MAX_STEPS,
        eval_every=2,
        save_every=2,
        overfit_sample=0,
        lr=1e-3,
        lora_dropout=0.1,
        early_stopping_patience=100,
    )
    env = subprocess_env()
    ref = root / "uninterrupted"
    killed = root / "killed"
    # The uninterrupted reference depends on nothing the killed run does, so it trains beside it
    # (and beside the resume) instead of before it: most of each process's time is importing
    # torch on one core, and the suite leaves the other core idle while the test waits. Each
    # process seeds itself from the config and sets its own thread count (OMP_NUM_THREADS, 1
    # unless set: subprocess_env), so running side by side changes no number the tests compare.
    # Its stderr goes to a file: a pipe nobody reads until the end could fill and stall it.
    ref_err = root / "uninterrupted.stderr"
    with open(ref_err, "w") as err_fh:
        reference = subprocess.Popen(
            _cmd(str(project), "--run-dir", str(ref)),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err_fh,
        )
    try:
        proc = subprocess.Popen(
            _cmd(str(project), "--run-dir", str(killed)),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.time() + 300
            while not (killed / "checkpoints" / f"checkpoint-{KILL_AFTER}").is_dir():
                assert proc.poll() is None, "training finished before it could be killed"
                assert time.time() < deadline
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        state_at_kill = json.loads((killed / "run.json").read_text())
        result = subprocess.run(
            _cmd("--resume", str(killed)), env=env, timeout=600, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert reference.wait(timeout=600) == 0, ref_err.read_text()[-3000:]
    finally:
        if reference.poll() is None:
            reference.kill()
            reference.wait(timeout=60)
    return ref, killed, state_at_kill


def _done(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


def test_sigkill_then_resume_reaches_the_same_final_step(runs):
    ref, killed, at_kill = runs
    assert at_kill["status"] == "running"  # it really died mid-run
    rec = _done(killed)
    assert rec["status"] == "completed"
    assert rec["global_step"] == _done(ref)["global_step"] == MAX_STEPS
    assert rec["resumed_from"] and Path(rec["resumed_from"][0]).name.startswith("checkpoint-")
    resumed_at = int(Path(rec["resumed_from"][0]).name.split("-")[1])
    assert KILL_AFTER <= resumed_at < MAX_STEPS
    # no half-written checkpoint was ever visible under its final name
    assert not list((killed / "checkpoints").glob("checkpoint-*/*.tmp"))
    assert [m["step"] for m in rec["metrics"]] == list(range(2, MAX_STEPS + 1, 2))
    assert (killed / "adapter_model.safetensors").is_file()


def test_resumed_loss_curve_matches_the_uninterrupted_one(runs):
    ref, killed, _ = runs
    a = losses_by_step(read_jsonl(ref / "logs.jsonl"))
    b = losses_by_step(read_jsonl(killed / "logs.jsonl"))
    assert sorted(a) == sorted(b) == list(range(2, MAX_STEPS + 1, 2))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-3), step
    # it learned (so matching curves are not two flat lines)
    assert a[MAX_STEPS] < a[2]
    va = [m["val_loss"] for m in _done(ref)["metrics"]]
    vb = [m["val_loss"] for m in _done(killed)["metrics"]]
    assert vb == pytest.approx(va, rel=1e-3)
    # same final weights
    from safetensors.torch import load_file

    wa, wb = (
        load_file(ref / "adapter_model.safetensors"),
        load_file(killed / "adapter_model.safetensors"),
    )
    for k in wa:
        assert (wa[k] - wb[k]).abs().max() < 1e-4, k


def test_resuming_a_finished_run_changes_nothing(runs):
    from tunewise.train.trainer import load_run_config, train

    _, killed, _ = runs
    before = (killed / "adapter_model.safetensors").read_bytes()
    cfg, rec = load_run_config(killed)
    again = train(cfg, run_dir=killed, method=rec["method"], resume=True, progress=False)
    assert again["status"] == "completed" and again["global_step"] == MAX_STEPS
    assert (killed / "adapter_model.safetensors").read_bytes() == before


# --- SIGTERM and a full disk end in one line, and the run resumes -------------------------------


def test_sigterm_stops_like_ctrl_c_and_the_run_resumes(tmp_path, tiny_model_dir):
    """A batch scheduler or `timeout` stops a job with SIGTERM: it used to end with 143, no word,
    and run.json saying "running". Now it is Ctrl-C's path: recorded, one line, resumable."""
    steps = 40
    project = make_project(
        tmp_path, tiny_model_dir, max_steps=steps, eval_every=2, save_every=2, overfit_sample=0
    )
    run = tmp_path / "run"
    proc = subprocess.Popen(
        _cmd(str(project), "--run-dir", str(run)),
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 300
        while not (run / "checkpoints" / "checkpoint-2").is_dir():
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.time() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err
    assert (
        f"stopped (SIGTERM): {run} is recorded as stopped; "
        f"continue it with `tunewise train --resume {run}`"
    ) in err.splitlines()
    rec = _done(run)
    assert rec["status"] == "stopped" and not rec.get("stop_kind")
    assert rec["stop_reason"] == "interrupted (SIGTERM); resume with --resume"
    assert not list((run / "checkpoints").glob(".staging/*"))  # a save cut short is removed

    # The command the message gives, run in this process: the stopped process is gone, so this
    # one starts from nothing but the run directory, as a new process would, without paying
    # another few seconds of imports (the SIGKILL fixture resumes in a fresh process).
    from typer.testing import CliRunner

    from tunewise.cli import app

    result = CliRunner().invoke(app, ["train", "--resume", str(run), "--no-progress"])
    assert result.exit_code == 0, (result.exception, result.output[-3000:])
    rec = _done(run)
    assert rec["status"] == "completed" and rec["global_step"] == steps
    assert rec["resumed_from"]


def _fail_saving(monkeypatch, *, where: str, method: str) -> None:
    """``Trainer.<method>`` writes half a file into the folder whose name ends with ``where``,
    then raises ENOSPC, as a disk that fills up mid-save does."""
    from transformers import Trainer

    real = getattr(Trainer, method)

    def full_disk(self, output_dir=None, *args, **kwargs):
        if output_dir is not None and str(output_dir).endswith(where):
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "optimizer.pt").write_bytes(b"\0" * (1 << 20))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, output_dir, *args, **kwargs)

    monkeypatch.setattr(Trainer, method, full_disk)


def test_a_checkpoint_that_does_not_fit_is_one_line_and_resume_works(
    tmp_path, tiny_model_dir, monkeypatch
):
    from tunewise.config import load_project
    from tunewise.errors import UserError
    from tunewise.train.trainer import train

    cfg = load_project(make_project(tmp_path, tiny_model_dir, overfit_sample=0))
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    _fail_saving(monkeypatch, where="checkpoint-8", method="_save_optimizer_and_scheduler")
    with pytest.raises(UserError) as err:
        train(cfg, run_dir=run, progress=False)
    message = str(err.value)
    assert message == (
        f"disk full writing {ckpts / 'checkpoint-8'}; the last complete checkpoint is "
        f"{ckpts / 'checkpoint-4'}: free some space, then `tunewise train --resume {run}`"
    )
    assert not (ckpts / ".staging").exists()  # the half checkpoint no longer fills the disk
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-4"]
    rec = _done(run)
    assert rec["status"] == "failed" and rec["stop_reason"] == message
    monkeypatch.undo()

    # What a process killed mid-save leaves behind must not break (or fill the disk for) resume.
    (ckpts / ".staging" / "checkpoint-8").mkdir(parents=True)
    (ckpts / ".staging" / "checkpoint-8" / "optimizer.pt").write_bytes(b"\0" * 1024)
    (run / ".final-tmp").mkdir()
    rec = train(cfg, run_dir=run, resume=True, progress=False)
    assert rec["status"] == "completed" and rec["global_step"] == 8
    assert Path(rec["resumed_from"][0]).name == "checkpoint-4"
    assert not list(ckpts.glob(".staging/*")) and not (run / ".final-tmp").exists()


def test_final_weights_that_do_not_fit_are_one_line_and_resume_works(
    tmp_path, tiny_model_dir, monkeypatch
):
    from tunewise.config import load_project
    from tunewise.errors import UserError
    from tunewise.train.trainer import train

    cfg = load_project(make_project(tmp_path, tiny_model_dir, overfit_sample=0))
    run = tmp_path / "run"
    _fail_saving(monkeypatch, where=".final-tmp", method="save_model")
    with pytest.raises(UserError, match=r"^disk full writing ") as err:
        train(cfg, run_dir=run, progress=False)
    assert f"the last complete checkpoint is {run / 'checkpoints' / 'checkpoint-8'}" in str(
        err.value
    )
    assert not (run / ".final-tmp").exists() and not (run / "adapter_model.safetensors").exists()
    assert _done(run)["status"] == "failed"
    monkeypatch.undo()
    rec = train(cfg, run_dir=run, resume=True, progress=False)
    assert rec["status"] == "completed" and (run / "adapter_model.safetensors").is_file()


def test_a_full_disk_is_told_apart_from_other_save_errors(tmp_path, monkeypatch):
    from tunewise.train import checkpoints

    assert checkpoints.is_disk_full(OSError(errno.ENOSPC, "x"), tmp_path)
    assert checkpoints.is_disk_full(OSError(errno.EDQUOT, "x"), tmp_path)
    wrapped = RuntimeError("save failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "x")
    assert checkpoints.is_disk_full(wrapped, tmp_path)
    # safetensors' Rust error, and torch.save's zip writer, which says nothing of the cause
    rust = Exception("Error while serializing: I/O error: No space left on device (os error 28)")
    assert checkpoints.is_disk_full(rust, tmp_path)
    torch_short_write = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")
    assert not checkpoints.is_disk_full(torch_short_write, tmp_path)  # plenty of space here
    monkeypatch.setattr(checkpoints, "free_bytes", lambda path: 4096)
    assert checkpoints.is_disk_full(torch_short_write, tmp_path)
    assert not checkpoints.is_disk_full(ValueError("a bug"), tmp_path)
    assert checkpoints.disk_full_message(tmp_path / "x", tmp_path).startswith(
        f"disk full writing {tmp_path / 'x'}; the last complete checkpoint is none: "
    )
