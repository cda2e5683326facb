"""The training engine in-process on a tiny model: run layout, stop rules wired into the Trainer."""

from __future__ import annotations

import json
import re

import pytest

from _train_helpers import make_project, read_jsonl
from tunewise.config import load_project
from tunewise.errors import UserError
from tunewise.train import callbacks
from tunewise.train.trainer import train


def test_lora_run_writes_the_contracted_layout(tmp_path, tiny_model_dir):
    project = make_project(tmp_path, tiny_model_dir, epochs=5)
    cfg = load_project(project)
    run = tmp_path / "run"
    rec = train(cfg, run_dir=run, progress=False)

    assert rec["status"] == "completed" and rec["global_step"] == 8
    assert (run / "adapter_config.json").is_file() and (run / "adapter_model.safetensors").is_file()
    assert not (run / "training_args.bin").exists()  # no pickles beside the adapter
    saved = json.loads((run / "run.json").read_text())
    for key in (
        "method",
        "config",
        "base_model",
        "data_hashes",
        "versions",
        "metrics",
        "wall_time_s",
        "tokens_per_s",
        "stop_reason",
        "best_val_loss",
    ):
        assert key in saved, key
    assert saved["method"] == "lora" and saved["base_model"]["weight_hash"]
    assert saved["config"]["train"]["lr"] is None and saved["config"]["train"]["lora_r"] == 16
    assert [m["step"] for m in saved["metrics"]] == [4, 8]
    assert all(m["val_loss"] is not None and m["repetition"] is not None for m in saved["metrics"])
    # the cost of each evaluation is on record, and the total check time is the rows' sum
    assert all(m["overfit_check_s"] > 0 and m["val_loss_s"] > 0 for m in saved["metrics"])
    total = sum(m["overfit_check_s"] for m in saved["metrics"])
    assert saved["overfit_check_s"] == round(total, 2) < saved["wall_time_s"]
    assert any("outside the advised 1-3" in w for w in saved["warnings"])
    assert saved["tokens_per_s"] > 0
    logs = read_jsonl(run / "logs.jsonl")
    assert any("loss" in r for r in logs) and any("eval_loss" in r for r in logs)
    assert [r["step"] for r in logs if "eval_repetition" in r] == [4, 8]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    assert {"train/loss", "eval/loss", "eval/repetition"} <= set(events.Tags()["scalars"])
    assert sorted(
        p.name for p in (run / "checkpoints").iterdir() if not p.name.startswith(".")
    ) == ["checkpoint-4", "checkpoint-8"]

    # the adapter loads in PEFT on the base it names, and changed the base's outputs
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.tensor([[1, 2, 3, 4]])
    before = base(ids).logits
    tuned = PeftModel.from_pretrained(base, run)
    assert tuned.peft_config["default"].r == 16 and tuned.peft_config["default"].lora_alpha == 32
    assert not torch.allclose(before, tuned(ids).logits)

    with pytest.raises(UserError, match="already exists"):
        train(cfg, run_dir=run, progress=False)


def test_lora_preset_and_full_method(tmp_path, tiny_model_dir):
    project = make_project(
        tmp_path, tiny_model_dir, max_steps=2, eval_every=2, save_every=2, overfit_sample=0
    )
    cfg = load_project(project, ["train.target_modules=qv"])
    rec = train(cfg, run_dir=tmp_path / "qv", progress=False)
    adapter = json.loads((tmp_path / "qv" / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == ["q_proj", "v_proj"] and rec["global_step"] == 2

    rec = train(load_project(project), run_dir=tmp_path / "full", method="full", progress=False)
    assert rec["method"] == "full" and rec["config"]["train"]["method"] == "full"
    assert (tmp_path / "full" / "model" / "model.safetensors").is_file()
    assert (tmp_path / "full" / "model" / "tokenizer.json").is_file()
    from transformers import AutoModelForCausalLM

    assert (
        AutoModelForCausalLM.from_pretrained(tmp_path / "full" / "model").config.hidden_size == 64
    )


def test_early_stopping_in_the_trainer_restores_the_best_step(tmp_path, tiny_model_dir):
    # lr 1e-30: LoRA's B stays (numerically) zero, so validation loss is flat; a flat loss is
    # not an improvement, so with patience 1 the run stops at the second evaluation.
    project = make_project(
        tmp_path,
        tiny_model_dir,
        max_steps=40,
        eval_every=2,
        early_stopping_patience=1,
        lr=1e-30,
        overfit_sample=0,
    )
    rec = train(load_project(project), run_dir=tmp_path / "run", progress=False)
    assert rec["status"] == "stopped" and rec["stop_kind"] == "early_stopping"
    assert rec["global_step"] == 4 and "has not improved for 1 evaluations" in rec["stop_reason"]
    assert rec["restored_best_step"] == 2


def test_overfitting_detector_in_the_trainer(tmp_path, tiny_model_dir, monkeypatch):
    # Validation loss falls on this task at the default lr; the generations are made to grow
    # repetitive from the second evaluation on, which is what the detector must catch.
    calls = []

    def fake_generate(model, tokenizer, prompts, *, max_new_tokens, batch_size=8):
        calls.append(len(prompts))
        text = (
            "Category: billing"
            if len(calls) == 1
            else "billing billing billing billing billing billing"
        )
        return [text] * len(prompts)

    monkeypatch.setattr(callbacks, "generate_greedy", fake_generate)
    project = make_project(
        tmp_path, tiny_model_dir, max_steps=40, eval_every=2, early_stopping_patience=5, lr=1e-3
    )
    rec = train(load_project(project), run_dir=tmp_path / "run", progress=False)
    assert calls == [2, 2]  # the fixed sample of overfit_sample prompts, at each evaluation
    assert rec["status"] == "stopped" and rec["stop_kind"] == "overfitting"
    assert rec["global_step"] == 4 and "still falling" in rec["stop_reason"]
    assert (
        rec["metrics"][-1]["repetition"] > 0.3
        and rec["metrics"][-1]["val_loss"] < rec["metrics"][0]["val_loss"]
    )


def test_real_generation_sample_is_scored(tmp_path, tiny_model_dir):
    # The real generate path on the random tiny model: it rambles, and the score says so.
    from tunewise.runtime import models
    from tunewise.train.callbacks import generate_greedy

    ref = models.resolve(str(tiny_model_dir))
    tok = models.load_tokenizer(ref)
    model = models.load_model(ref)
    prompts = [[{"role": "user", "content": f"ticket {i}"}] for i in range(3)]
    texts = generate_greedy(model, tok, prompts, max_new_tokens=12, batch_size=2)
    assert len(texts) == 3 and all(isinstance(t, str) and t for t in texts)
    assert tok.padding_side == "right"  # left padding is only for the duration of the call
    # batching with left padding gives what one-at-a-time generation gives
    assert generate_greedy(model, tok, prompts[2:], max_new_tokens=12) == texts[2:]


def test_missing_splits_is_a_user_error_whose_command_makes_them(tmp_path, tiny_model_dir):
    import shlex
    import shutil

    from typer.testing import CliRunner

    from tunewise.cli import app

    project = make_project(tmp_path, tiny_model_dir)
    splits = tmp_path / ".tunewise" / "splits"
    shutil.rmtree(splits)
    with pytest.raises(UserError, match="tunewise data split") as err:
        train(load_project(project), run_dir=tmp_path / "run", progress=False)
    # the command the message gives, run as written, puts the splits where training looks
    command = re.search(r"`tunewise (data split [^`]+)`", str(err.value))
    assert command, str(err.value)
    done = CliRunner().invoke(app, shlex.split(command.group(1)))
    assert done.exit_code == 0, done.output
    from tunewise.data.own_splits import split_project

    split_project(load_project(project), tmp_path / "ladder")  # what the ladder's stage writes
    for name in ("train.jsonl", "val.jsonl", "test.jsonl"):
        assert (splits / name).read_bytes() == (tmp_path / "ladder" / name).read_bytes()


def test_cli_errors_are_one_line_exit_2(tmp_path, tiny_model_dir):
    from typer.testing import CliRunner

    from tunewise.cli import app

    project = make_project(tmp_path, tiny_model_dir)
    runner = CliRunner()
    bad = runner.invoke(app, ["train", str(project), "--method", "bogus", "--no-progress"])
    assert bad.exit_code == 2 and "unknown method 'bogus'" in bad.output
    bad = runner.invoke(app, ["train", "--resume", str(tmp_path / "nope")])
    assert bad.exit_code == 2 and "not a training run" in bad.output
    bad = runner.invoke(app, ["train", str(project), "--set", "train.lora_rr=4"])
    assert bad.exit_code == 2 and "lora_rr" in bad.output


def test_training_uses_the_project_system_prompt_not_the_datas(tmp_path, tiny_model_dir):
    """Train on exactly the prompt every candidate is evaluated and served with."""
    from tunewise.rundir import RunDir
    from tunewise.train.record import claim_run_dir
    from tunewise.train.trainer import setup, with_method

    path = make_project(tmp_path, tiny_model_dir)
    cfg = with_method(
        load_project(path, ["task.system_prompt=Route the ticket to a team."]), "lora"
    )
    start = claim_run_dir(
        cfg, RunDir(tmp_path / "run"), train_path=None, val_path=None, resume=False
    )
    prep = setup(cfg, start)
    text = prep.tokenizer.decode(prep.train_ds[0]["input_ids"])
    assert "Route the ticket to a team." in text
    assert "Classify the ticket." not in text  # the data's own system turn is replaced
    assert all(
        m["content"] == "Route the ticket to a team."
        for e in prep.val_examples
        for m in e.messages
        if m["role"] == "system"
    )


def test_gradient_checkpointing_recomputes_and_trains_the_same_weights(
    tmp_path, tiny_model_dir, monkeypatch
):
    import torch
    import transformers.modeling_utils as mu
    from safetensors.torch import load_file

    calls = []
    real = mu.checkpoint

    def counting(*args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return real(*args, **kwargs)

    monkeypatch.setattr(mu, "checkpoint", counting)
    project = make_project(
        tmp_path, tiny_model_dir, max_steps=2, eval_every=2, save_every=2, overfit_sample=0
    )
    train(load_project(project), run_dir=tmp_path / "plain", progress=False)
    assert calls == []
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        train(
            load_project(project, ["train.gradient_checkpointing=true"]),
            run_dir=tmp_path / "gc",
            progress=False,
        )
    assert calls and set(calls) == {False}  # every layer, non-reentrant (works with a frozen base)
    # transformers 5 renamed the argument; the old name warns at every run
    assert not [
        w for w in seen if str(w.message).startswith("`gradient_checkpointing` is deprecated")
    ]
    plain = load_file(tmp_path / "plain" / "adapter_model.safetensors")
    gc = load_file(tmp_path / "gc" / "adapter_model.safetensors")
    assert plain.keys() == gc.keys()
    for name in plain:
        torch.testing.assert_close(gc[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)
