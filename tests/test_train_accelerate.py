"""Scale-out goes through accelerate: 2 CPU processes (DDP over gloo) on the tiny model."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from _train_helpers import PYTHON, make_project, subprocess_env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_accelerate_launch_two_cpu_processes(tmp_path, tiny_model_dir):
    accelerate = shutil.which("accelerate", path=str(Path(PYTHON).parent))
    if accelerate is None:
        pytest.skip("accelerate CLI not installed beside the interpreter")
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
    env = subprocess_env()
    env["ACCELERATE_CONFIG_FILE"] = str(tmp_path / "none.yaml")  # ignore any user default config
    cmd = [
        # In accelerate 1.15 `--cpu` selects the single-process launcher; the multi-process
        # (torchrun) launcher is `--multi_gpu`, which on a host without GPUs runs DDP over gloo.
        accelerate,
        "launch",
        "--multi_gpu",
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
        str(project),
        "--run-dir",
        str(run),
        "--no-progress",
    ]
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
