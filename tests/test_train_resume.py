"""Checkpoint and resume: SIGKILL mid-run, resume, and land where an uninterrupted run lands."""

from __future__ import annotations

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
    subprocess.run(
        _cmd(str(project), "--run-dir", str(ref)),
        env=env,
        check=True,
        timeout=600,
        capture_output=True,
    )

    killed = root / "killed"
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
