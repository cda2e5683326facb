"""Scale-out goes through accelerate: 2 CPU processes (DDP over gloo) on the tiny model."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from _train_helpers import PYTHON, make_project, subprocess_env

if TYPE_CHECKING:
    from tunewise.config import ProjectConfig


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accelerate() -> str:
    accelerate = shutil.which("accelerate", path=str(Path(PYTHON).parent))
    if accelerate is None:
        pytest.skip("accelerate CLI not installed beside the interpreter")
    return accelerate


def launch_cmd(*train_args: str, launcher: tuple[str, ...] = ("--multi_gpu",)) -> list[str]:
    """``accelerate launch`` of ``tunewise train`` on 2 CPU processes (a free port each time)."""
    return [
        # In accelerate 1.15 `--cpu` selects the single-process launcher; the multi-process
        # (torchrun) launcher is `--multi_gpu`, which on a host without GPUs runs DDP over gloo.
        _accelerate(),
        "launch",
        *launcher,
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        "-m",
        "tunewise",
        "train",
        *train_args,
        "--no-progress",
    ]


def launch_env(tmp_path: Path) -> dict[str, str]:
    env = subprocess_env()
    env["ACCELERATE_CONFIG_FILE"] = str(tmp_path / "none.yaml")  # ignore any user default config
    return env


def test_accelerate_launch_two_cpu_processes(tmp_path, tiny_model_dir):
    # A system prompt long enough for train.shared_prefix (auto) to run it once per batch: the
    # prefix pass goes through DDP's inner module, the suffix pass through DDP.
    system = "Classify the support ticket into billing, shipping or account. " * 4
    project = make_project(
        tmp_path,
        tiny_model_dir,
        system_prompt=system,
        max_steps=4,
        eval_every=2,
        save_every=2,
        overfit_sample=1,
    )
    run = tmp_path / "run"
    env = launch_env(tmp_path)
    cmd = launch_cmd(str(project), "--run-dir", str(run))
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]

    rec = json.loads((run / "run.json").read_text())
    assert rec["status"] == "completed" and rec["global_step"] == 4
    assert rec["world_size"] == 2
    assert "gloo" in rec.get("distributed_backend", "")
    # two processes consume two batches of 4 per optimizer step: 4 steps cover 32 of 40 examples
    assert any("covers 0.8 epochs" in w for w in rec["warnings"]), rec["warnings"]
    assert rec["tokens_trained"] > 0
    # each process ran 4 batches, every one with its prefix once (run.json is rank 0's count)
    assert rec["shared_prefix"]["enabled"] and rec["shared_prefix"]["prefix_batches"] == 4

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.tensor([[1, 5, 9, 2]])
    before = base(ids).logits
    tuned = PeftModel.from_pretrained(base, run)
    assert not torch.allclose(before, tuned(ids).logits)


@pytest.mark.parametrize(
    "name,kind", [("ddp", "MULTI_GPU"), ("fsdp", "FSDP"), ("deepspeed-zero3", "DEEPSPEED")]
)
def test_shipped_accelerate_configs_parse(name, kind):
    from accelerate.commands.config.config_args import ClusterConfig

    from _train_helpers import REPO

    cfg = ClusterConfig.from_yaml_file(str(REPO / "docs" / "accelerate" / f"{name}.yaml"))
    assert cfg.distributed_type.value == kind
    if kind == "FSDP":
        # a full state dict on save: the run directory holds plain safetensors
        assert cfg.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    if kind == "DEEPSPEED":
        assert (
            cfg.deepspeed_config["zero_stage"] == 3
            and cfg.deepspeed_config["zero3_save_16bit_model"]
        )


# --- the start-up race: only the main process looks at the run directory ------------------------


def _claim(rank: int, cfg: ProjectConfig, run_dir: str, out: Any, round_: int) -> None:
    """What ``train`` does first, under the launcher: the main process decides for all."""
    from tunewise.errors import UserError
    from tunewise.rundir import RunDir
    from tunewise.train import record

    run = RunDir(run_dir)
    try:
        start = record.main_decides(
            lambda: record.claim_run_dir(cfg, run, train_path=None, val_path=None, resume=False)
        )
        if rank == 0:
            run.write({"status": "running"})  # what build() does right after
        out.put((round_, rank, "ok", str(start.train_path)))
    except UserError as exc:
        out.put((round_, rank, "error", str(exc)))


def _claim_in_process(rank: int, port: int, project: str, run_dir: str, late_s: float, out) -> None:
    """One of two gloo processes doing what ``train`` does first, twice (runs in a spawned
    process): a fresh run directory, then the same one again, which is a real conflict.

    Both rounds share one pair of processes: starting a pair costs seconds of imports, and
    what each round tests (who reads run.json, who hears the decision) is the same on a group
    that has already broadcast once.
    """
    import os
    import time

    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE="2",
        LOCAL_WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    import torch.distributed as dist

    from tunewise.config import load_project
    from tunewise.rundir import RunDir
    from tunewise.train import record

    cfg = load_project(project)
    record.join_process_group(cfg)
    if rank == 1:

        def must_not_read(self: RunDir) -> None:
            raise AssertionError("rank 1 read run.json")

        RunDir.read = must_not_read  # type: ignore[method-assign]
    try:
        if rank == 1:
            time.sleep(late_s)  # arrive after the main process wrote run.json (the race before)
        _claim(rank, cfg, run_dir, out, 1)
        # Round 2: rank 0 wrote run.json in round 1 before it got here; rank 1 still never
        # reads it (its RunDir.read still raises) and must hear rank 0's refusal.
        _claim(rank, cfg, run_dir, out, 2)
    except BaseException as exc:  # reported to the test, which fails on it
        out.put((0, rank, "crash", repr(exc)))
    finally:
        dist.destroy_process_group()


def _claim_twice(tmp_path: Path, project: Path, run: Path) -> dict[int, dict[int, tuple[str, str]]]:
    """Per round (1, 2), per rank, what the claim gave: ("ok", train split) or ("error", text)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = _free_port()
    procs = [
        ctx.Process(target=_claim_in_process, args=(r, port, str(project), str(run), 0.5, out))
        for r in (0, 1)
    ]
    for p in procs:
        p.start()
    results: dict[int, dict[int, tuple[str, str]]] = {}
    try:
        for _ in range(2 * len(procs)):
            round_, rank, kind, detail = out.get(timeout=240)
            assert kind != "crash", f"rank {rank}: {detail}"
            results.setdefault(round_, {})[rank] = (kind, detail)
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    return results


def test_only_the_main_process_checks_the_run_directory(tmp_path):
    # No model is loaded: the run directory is decided before anything else happens.
    project = make_project(tmp_path, "unused-model")
    run = tmp_path / "run"
    results = _claim_twice(tmp_path, project, run)
    train_split = str((tmp_path / ".tunewise" / "splits" / "train.jsonl").resolve())
    # rank 1 arrived after run.json existed, never read it, and got rank 0's decision
    assert results[1] == {0: ("ok", train_split), 1: ("ok", train_split)}
    assert json.loads((run / "run.json").read_text()) == {"status": "running"}

    # A real conflict is reported by every process (none waits forever for the others).
    assert results[2][0][0] == results[2][1][0] == "error"
    assert results[2][0][1] == results[2][1][1] and "a run already exists here" in results[2][0][1]


def _kill_tree(pid: int) -> None:
    """SIGKILL the launcher and every process under it, as a crashed machine would.

    torchrun starts each worker in a session of its own, so killing the launcher's process group
    would leave the workers training on (and finishing the run behind the test's back).
    """
    import psutil

    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(procs, timeout=60)


def test_two_process_run_resumes_from_its_checkpoint(tmp_path, tiny_model_dir):
    import time

    max_steps = 12
    project = make_project(
        tmp_path,
        tiny_model_dir,
        max_steps=max_steps,
        eval_every=2,
        save_every=2,
        overfit_sample=0,
        early_stopping_patience=100,
    )
    run = tmp_path / "run"
    env = launch_env(tmp_path)
    proc = subprocess.Popen(
        launch_cmd(str(project), "--run-dir", str(run)),
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 600
        while not (run / "checkpoints" / "checkpoint-2").is_dir():
            assert proc.poll() is None, "training ended before it could be killed"
            assert time.time() < deadline
            time.sleep(0.02)
        _kill_tree(proc.pid)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            _kill_tree(proc.pid)
    at_kill = json.loads((run / "run.json").read_text())
    assert at_kill["status"] == "running"  # it really died mid-run

    result = subprocess.run(
        launch_cmd("--resume", str(run)),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    rec = json.loads((run / "run.json").read_text())
    assert rec["status"] == "completed" and rec["global_step"] == max_steps
    assert rec["world_size"] == 2
    resumed_at = int(Path(rec["resumed_from"][0]).name.split("-")[1])
    assert 2 <= resumed_at < max_steps  # continued from a checkpoint, not from step 0
    # one evaluation per step, before and after the kill
    assert [m["step"] for m in rec["metrics"]] == list(range(2, max_steps + 1, 2))
    from safetensors.torch import load_file

    assert load_file(run / "adapter_model.safetensors")


def test_fsdp_asked_for_on_cpu_runs_ddp_says_so_and_saves_a_loadable_adapter(
    tmp_path, tiny_model_dir
):
    # accelerate 1.15 makes `--use_fsdp` FSDP only on GPU-like devices; with CPU processes it
    # sets up MULTI_CPU (DDP over gloo). torch itself can shard on CPU (fully_shard over gloo
    # works); accelerate's state never asks it to. What can be tested here: the run completes,
    # says that nothing was sharded, and leaves an adapter PEFT loads.
    project = make_project(
        tmp_path, tiny_model_dir, max_steps=4, eval_every=2, save_every=2, overfit_sample=0
    )
    run = tmp_path / "run"
    fsdp = (
        "--use_fsdp",
        "--fsdp_version",
        "2",
        "--fsdp_auto_wrap_policy",
        "TRANSFORMER_BASED_WRAP",
        "--fsdp_transformer_layer_cls_to_wrap",
        "LlamaDecoderLayer",
        "--fsdp_state_dict_type",
        "FULL_STATE_DICT",
    )
    result = subprocess.run(
        launch_cmd(str(project), "--run-dir", str(run), launcher=fsdp),
        env=launch_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    rec = json.loads((run / "run.json").read_text())
    assert rec["status"] == "completed" and rec["world_size"] == 2
    assert any("FSDP was asked for, but accelerate runs MULTI_CPU" in w for w in rec["warnings"]), (
        rec["warnings"]
    )

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.tensor([[1, 5, 9, 2]])
    before = base(ids).logits
    tuned = PeftModel.from_pretrained(base, run)
    assert not torch.allclose(before, tuned(ids).logits)
