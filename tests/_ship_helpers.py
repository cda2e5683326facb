"""Helpers for the registry, server and export tests: tiny PEFT run directories on a tiny base.

A run directory here has the layout the trainer writes (LoRA adapter at the run root plus
``run.json`` with the base model's weight hash), so the registry and server see exactly what
they would see after ``tunewise train``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


def make_run(
    base_dir: Path,
    run_dir: Path,
    *,
    seed: int = 0,
    name: str = "bot",
    r: int = 4,
    target_modules: tuple[str, ...] = ("q_proj", "v_proj"),
    favour_token: int | None = None,
    extra_config: dict[str, Any] | None = None,
) -> Path:
    """Save a LoRA adapter for the model in ``base_dir`` into ``run_dir`` with a run.json.

    With ``favour_token`` the adapter targets ``lm_head`` with a LoRA bias whose only non-zero
    entry is a large logit for that token, so greedy decoding answers with it every time: two
    such adapters answer differently, whatever the prompt.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunewise.rundir import RunDir
    from tunewise.runtime.models import resolve

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    if favour_token is not None:
        cfg = LoraConfig(
            r=r,
            lora_alpha=2 * r,
            target_modules=["lm_head"],
            lora_bias=True,
            init_lora_weights=False,
            **(extra_config or {}),
        )
    else:
        cfg = LoraConfig(
            r=r,
            lora_alpha=2 * r,
            target_modules=list(target_modules),
            init_lora_weights=False,
            **(extra_config or {}),
        )
    peft_model = get_peft_model(model, cfg)
    if favour_token is not None:
        layer = peft_model.base_model.model.lm_head
        with torch.no_grad():
            layer.lora_A["default"].weight.zero_()
            layer.lora_B["default"].weight.zero_()
            layer.lora_B["default"].bias.zero_()
            layer.lora_B["default"].bias[favour_token] = 50.0
    run_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(run_dir, save_embedding_layers=False)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(run_dir)
    ref = resolve(str(base_dir))
    run = {
        "status": "completed",
        "method": "lora",
        "config": {"name": name, "train": {"lora_r": r}},
        "base_model": {
            "name": str(base_dir),
            "path": str(base_dir),
            "weight_hash": ref.weight_hash,
        },
        "data_hashes": {"train": "t" * 8, "val": "v" * 8},
        "versions": {},
        "metrics": [],
    }
    RunDir(run_dir).write(run)
    (run_dir / "logs.jsonl").write_text("{}\n")
    return run_dir


def write_verdict(
    path: Path, ship: bool, champion: str | None = None, champion_passed: bool = True
) -> Path:
    """A gate verdict; ``champion`` ("bot:1"): its recorded comparison against that version."""
    from tunewise.eval.results import Verdict

    summary = "beats every baseline" if ship else "not better than RAG"
    record = None
    if champion:
        why = "not worse than production" if champion_passed else "worse than production"
        record = {"version": champion, "passed": champion_passed, "reason": why}
    Verdict(
        "finetuned", ship, reasons=[], guard_failures=[], summary=summary, champion=record
    ).save(path)
    return path


def concurrent_worker(
    home: str, run_dir: str, verdict: str, n: int, start_at: float, out: str
) -> None:
    """Add and promote ``n`` times, starting at the same wall-clock moment as a sibling process."""
    os.environ["TUNEWISE_HOME"] = home
    from tunewise.registry.store import Registry

    reg = Registry()
    while time.time() < start_at:
        time.sleep(0.001)
    got = []
    for _ in range(n):
        v = reg.add(run_dir, name="shared", verdict=verdict)
        # forced: two racing processes cannot know which version production points at
        reg.promote("shared", v.version, force=True, reason="concurrency test")
        got.append(v.version)
    Path(out).write_text(json.dumps(got))


def assert_one_line(result, *needles: str) -> str:
    """A CLI result that failed in one ``error:`` line (exit 2, no traceback) naming ``needles``."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    errors = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(errors) == 1 and errors[0].startswith("error:"), result.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]
