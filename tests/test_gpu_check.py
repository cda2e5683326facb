"""bench/gpu_check.py runs in CI on the CPU (--device cpu --tiny), so the GPU check cannot rot.

The stages run through the script's ``main`` in this process (torch, transformers and peft are
loaded already: a fresh interpreter would spend seconds importing them again); the time-budget
test runs the script as a command, so its command line is exercised too."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from _train_helpers import PYTHON, REPO, subprocess_env

SCRIPT = REPO / "bench" / "gpu_check.py"


def _args(tmp_path: Path, tokenizer: Path, *extra: str) -> list[str]:
    return ["--device", "cpu", "--tiny", "--tokenizer", str(tokenizer),
            "--out", str(tmp_path / "gpu-check.json"), "--work", str(tmp_path / "work"),
            *extra]  # fmt: skip


def _run(tmp_path: Path, tokenizer: Path, *extra: str) -> tuple[int, dict, str]:
    """The script as CI's command runs it, in a fresh interpreter."""
    out = tmp_path / "gpu-check.json"
    proc = subprocess.run(
        [PYTHON, str(SCRIPT), *_args(tmp_path, tokenizer, *extra)],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.returncode, json.loads(out.read_text()), proc.stdout + proc.stderr


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_here(
    tmp_path: Path, tokenizer: Path, monkeypatch: pytest.MonkeyPatch, capfd, *extra: str
) -> tuple[int, dict, str]:
    """The script's ``main`` in this process: the same stages on the same arguments. main()
    points $TUNEWISE_HOME at its scratch folder; monkeypatch puts the test's back afterwards."""
    monkeypatch.setenv("TUNEWISE_HOME", str(tmp_path / "home"))
    code = _script().main(_args(tmp_path, tokenizer, *extra))
    captured = capfd.readouterr()
    out = tmp_path / "gpu-check.json"
    assert out.is_file(), captured.out[-3000:] + captured.err[-3000:]
    return code, json.loads(out.read_text()), captured.out + captured.err


@pytest.mark.slow
def test_gpu_check_runs_every_stage_on_the_cpu(tmp_path: Path, real_model, monkeypatch, capfd):
    # No time budget here: a loaded CI machine must not turn a slow stage into a skipped one.
    only = ["--models", "tiny-llama3", "--budget-s", "1e9"]
    code, report, log = _run_here(tmp_path, real_model.path, monkeypatch, capfd, *only)
    stages = {s["stage"].split("/")[1]: s for s in report["stages"]}
    not_ok = {k: (s["status"], s.get("reason") or s.get("error")) for k, s in stages.items()
              if s["status"] != "ok"}  # fmt: skip
    assert code == 0 and report["ok"] and not not_ok, (not_ok, log[-3000:])
    assert set(stages) == {"build", "lora", "full", "qlora", "generate", "serve"}
    assert all(s["status"] == "ok" for s in stages.values()), stages
    for name in ("lora", "full", "qlora"):
        s = stages[name]
        # the policy's choice and the model as really loaded agree: fp32 on the CPU
        assert s["placement"]["device"] == "cpu" and s["placement"]["dtype"] == "float32"
        assert s["observed"]["device"] == "cpu" and s["observed"]["dtype"] == "float32"
        assert s["steps"] == 3 and s["tokens_per_s"] > 0 and s["model_flops_per_token"] > 0
        assert s["plan_gib"] > 0 and s["peak_memory"]["process_peak_rss_gib"] > 0
        assert "mfu" not in s  # no GPU peak to divide by on a CPU
    assert (
        stages["qlora"]["placement"]["quantize_4bit"]
        and stages["qlora"]["observed"]["nf4_elements"]
    )
    # full fine-tuning costs 3 forwards per token, LoRA 2 plus the small adapter
    assert stages["full"]["model_flops_per_token"] > stages["lora"]["model_flops_per_token"]
    gen = stages["generate"]
    assert gen["observed"]["device"] == "cpu" and gen["completion_tokens"] > 0
    assert stages["serve"]["http_status"] == 200 and stages["serve"]["usage"]["completion_tokens"]
    assert report["machine"]["capabilities"]["cuda_devices"] == 0
    assert not (tmp_path / "work" / "tiny-llama3").exists()  # checkpoints are cleaned up


def test_gpu_check_respects_its_time_budget(tmp_path: Path, tiny_model_dir: Path):
    code, report, _ = _run(tmp_path, tiny_model_dir, "--budget-s", "0")
    assert code == 0 and report["ok"]
    assert report["stages"] and all(s["status"] == "skipped" for s in report["stages"])
    assert {s["stage"] for s in report["stages"]} == {"tiny-smollm2/build", "tiny-llama3/build"}
