"""Memory planner: published 7B figures, exact parameter counts, and this machine's peak RSS."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from tunewise.errors import UserError
from tunewise.train.plan import GIB, lora_params, model_dims, plan

LLAMA2_7B = "meta-llama/Llama-2-7b-hf"

# Published requirements for 7B models (LLaMA-Factory's hardware table: QLoRA 4-bit 6 GB,
# LoRA 16-bit 16 GB, full fine-tune with mixed-precision AdamW 120 GB). Like LLaMA-Factory's
# defaults, they assume gradient checkpointing; we plan them at batch 1, seq_len 512.
PUBLISHED_7B = {"qlora": 6.0, "lora": 16.0, "full": 120.0}


@pytest.mark.parametrize("method", ["qlora", "lora", "full"])
def test_published_7b_figures_within_30_percent(method: str) -> None:
    p = plan(LLAMA2_7B, method=method, seq_len=512, batch=1, grad_checkpointing=True)
    expected = PUBLISHED_7B[method]
    assert abs(p.total_gib - expected) / expected <= 0.30, (method, round(p.total_gib, 2), expected)


def test_llama2_7b_parameter_counts_are_exact() -> None:
    dims = model_dims(LLAMA2_7B)
    assert dims.n_params == 6_738_415_616  # the figure PEFT/transformers print for Llama-2-7b
    assert lora_params(dims, 16, "all-linear") == 39_976_960  # PEFT's "trainable params" for r=16
    assert lora_params(dims, 16, "qv") == 8_388_608


def test_fits_and_does_not_fit() -> None:
    qlora = {
        f["memory_gib"]: f["fits"]
        for f in plan(LLAMA2_7B, method="qlora", grad_checkpointing=True).fits
    }
    full = {
        f["memory_gib"]: f["fits"]
        for f in plan(LLAMA2_7B, method="full", grad_checkpointing=True).fits
    }
    assert qlora == {24.0: True, 48.0: True, 80.0: True}
    assert full == {24.0: False, 48.0: False, 80.0: False}


def test_activation_terms_scale_with_tokens_and_shrink_with_checkpointing() -> None:
    small = plan(LLAMA2_7B, method="lora", seq_len=512, batch=1)
    big = plan(LLAMA2_7B, method="lora", seq_len=512, batch=4)
    ckpt = plan(LLAMA2_7B, method="lora", seq_len=512, batch=4, grad_checkpointing=True)
    assert big.parts["activations"] == pytest.approx(4 * small.parts["activations"], rel=1e-6)
    assert ckpt.parts["activations"] < big.parts["activations"] / 5
    assert big.parts["weights"] == small.parts["weights"]
    # QLoRA stores the linears in ~4.13 bits: well under a third of 16-bit LoRA's weights.
    q = plan(LLAMA2_7B, method="qlora")
    assert q.parts["weights"] < 0.33 * small.parts["weights"]


def test_answer_tokens_shrink_only_the_logits_term() -> None:
    full = plan(LLAMA2_7B, method="lora", seq_len=512, batch=4)
    answers = plan(LLAMA2_7B, method="lora", seq_len=512, batch=4, answer_tokens=16)
    assert answers.parts["logits"] == pytest.approx(full.parts["logits"] * 16 / 512, rel=1e-6)
    assert {k: v for k, v in answers.parts.items() if k not in ("logits", "overhead")} == {
        k: v for k, v in full.parts.items() if k not in ("logits", "overhead")
    }
    with pytest.raises(UserError, match="--answer-tokens 600: must be between 1 and --seq-len"):
        plan(LLAMA2_7B, seq_len=512, answer_tokens=600)


def test_shared_prefix_is_counted_once_per_batch() -> None:
    """The demo's shape: 134 of ~199 tokens are the system prompt, batch 8."""
    demo = "smollm2-135m-instruct"
    plain = plan(demo, seq_len=200, batch=8, device="cpu", answer_tokens=8)
    shared = plan(demo, seq_len=200, batch=8, device="cpu", answer_tokens=8, shared_prefix=134)
    assert shared.shared_prefix == 134 and plain.shared_prefix == 0
    # 134 + 8 x 66 = 662 tokens through the model instead of 1600, plus each row's attention
    # reading the prefix's keys and values: between the token ratio and a little above it
    ratio = shared.parts["activations"] / plain.parts["activations"]
    assert 662 / 1600 < ratio < 662 / 1600 + 0.05
    assert shared.parts["logits"] == plain.parts["logits"]  # answers only, either way
    assert shared.parts["weights"] == plain.parts["weights"]
    assert any("134 tokens run once per batch" in n for n in shared.assumptions)
    # a batch of one has no other row to share with
    one = plan(demo, seq_len=200, batch=1, device="cpu", shared_prefix=134)
    assert one.shared_prefix == 0
    assert one.total_bytes == plan(demo, seq_len=200, batch=1, device="cpu").total_bytes
    # without answer_tokens the logits cover every position the suffix pass runs
    full = plan(demo, seq_len=200, batch=8, device="cpu", shared_prefix=134)
    assert full.parts["logits"] == pytest.approx(plain_logits(demo) * 8 * 66 / 1600, rel=1e-6)
    with pytest.raises(UserError, match="--shared-prefix 200: must be at least 0 and below"):
        plan(demo, seq_len=200, shared_prefix=200)


def plain_logits(model: str) -> float:
    return plan(model, seq_len=200, batch=8, device="cpu").parts["logits"]


def test_local_dir_counts_match_the_loaded_model(tiny_model_dir) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    p = plan(tiny_model_dir, method="lora", lora_r=8, device="cpu")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert p.n_params == sum(t.numel() for t in model.parameters())
    peft_model = get_peft_model(
        model, LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    assert p.n_trainable == sum(t.numel() for t in peft_model.parameters() if t.requires_grad)
    assert p.source.endswith("config.json")


def test_unknown_model_and_bad_method_are_user_errors(tmp_path) -> None:
    with pytest.raises(UserError, match="not a local checkpoint dir"):
        plan("nobody/nothing-7b")
    with pytest.raises(UserError, match=r"no config\.json"):
        plan(tmp_path)
    with pytest.raises(UserError, match="--method"):
        plan(LLAMA2_7B, method="dora")  # type: ignore[arg-type]


def test_cli_plan_json_and_table() -> None:
    from tunewise.cli import app

    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "plan",
            "--model",
            LLAMA2_7B,
            "--method",
            "qlora",
            "--seq-len",
            "512",
            "--batch",
            "1",
            "--grad-checkpointing",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["method"] == "qlora" and data["n_trainable"] == 39_976_960
    assert 4.2 < data["total_gib"] < 7.8
    res = runner.invoke(app, ["plan", "--model", LLAMA2_7B, "--shared-prefix", "128", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["shared_prefix"] == 0  # batch 1: nothing to share
    res = runner.invoke(
        app, ["plan", "--model", LLAMA2_7B, "--batch", "8", "--shared-prefix", "128"]
    )
    assert res.exit_code == 0 and "shared prefix 128" in res.output, res.output
    res = runner.invoke(app, ["plan", "--model", LLAMA2_7B, "--method", "full"])
    assert res.exit_code == 0, res.output
    assert "does not fit" in res.output and "ZeRO-3" in res.output
    res = runner.invoke(app, ["plan", "--model", "nobody/nothing-7b"])
    assert res.exit_code == 2


# A short LoRA run of the real 135M model in a fresh process, so ru_maxrss is this run's peak.
_RSS_PROBE = textwrap.dedent(
    """
    import json, resource, sys
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    path, batch, seq = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = AutoModelForCausalLM.from_pretrained(path)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    model.train()
    for _ in range(2):
        ids = torch.randint(3, model.config.vocab_size - 1, (batch, seq))
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    print(json.dumps({"maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
    """
)

RSS_TOLERANCE = 0.25  # planner vs measured peak RSS on CPU


@pytest.mark.slow
def test_cpu_plan_matches_measured_peak_rss(real_model) -> None:
    batch, seq = 4, 128
    proc = subprocess.run(
        [sys.executable, "-c", _RSS_PROBE, str(real_model.path), str(batch), str(seq)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    measured = json.loads(proc.stdout.strip().splitlines()[-1])["maxrss"]
    predicted = plan(
        real_model.path, method="lora", seq_len=seq, batch=batch, device="cpu"
    ).total_bytes
    ratio = predicted / measured
    print(
        f"planner {predicted / GIB:.2f} GiB vs measured peak RSS {measured / GIB:.2f} GiB (ratio "
        f"{ratio:.2f})"
    )
    assert abs(ratio - 1) <= RSS_TOLERANCE, (predicted, measured)


def test_every_config_preset_has_its_modules():
    # A preset added to config.LoraTarget without its modules here would reach peft as a regex.
    from typing import get_args

    from tunewise.config import LoraTarget
    from tunewise.train.methods import LORA_PRESETS

    assert set(LORA_PRESETS) == set(get_args(LoraTarget))
