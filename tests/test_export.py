"""Export: merged HF checkpoints (logits match adapter-on-base) and checked vLLM layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from _ship_helpers import make_run
from tunewise.cli import app
from tunewise.errors import UserError
from tunewise.export.vllm import export_merged, export_vllm, plan_vllm
from tunewise.registry.store import Registry
from tunewise.rundir import RunDir


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("export-runs")
    out = {
        "a": make_run(tiny_model_dir, tmp / "a", seed=1, r=4),
        "b": make_run(
            tiny_model_dir,
            tmp / "b",
            seed=2,
            r=16,
            target_modules=(
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ),
        ),
        "head": make_run(tiny_model_dir, tmp / "head", seed=3, favour_token=100),
        "dora": make_run(tiny_model_dir, tmp / "dora", seed=4, extra_config={"use_dora": True}),
        "foreign": make_run(tiny_model_dir, tmp / "foreign", seed=5),
    }
    foreign = RunDir(out["foreign"])
    meta = foreign.record()
    meta["base_model"]["weight_hash"] = "f" * 64
    foreign.write(meta)
    return out


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=ids).logits


def test_merged_export_loads_in_transformers_and_matches_adapter_on_base(
    runs, tiny_model_dir, tmp_path
):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reg = Registry()
    reg.add(runs["a"], name="a")
    out = tmp_path / "merged"
    res = export_merged("a:1", out)
    assert res["spec"] == "a:1" and (out / "model.safetensors").is_file()
    assert not list(out.glob("*.bin")) and not list(out.glob("*.pt"))
    assert (out / "tokenizer.json").is_file() and (out / "tunewise.json").is_file()

    ids = AutoTokenizer.from_pretrained(out)(
        "Tickets about refunds go to", return_tensors="pt"
    ).input_ids
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    plain = _logits(base, ids)
    on_base = _logits(PeftModel.from_pretrained(base, str(runs["a"])).eval(), ids)
    got = _logits(merged, ids)
    assert not torch.allclose(plain, on_base, atol=1e-3)  # the adapter does change the model
    torch.testing.assert_close(got, on_base, atol=1e-4, rtol=1e-4)

    from tunewise.runtime.models import resolve

    assert resolve(str(out)).weight_hash == res["weight_hash"]  # marker makes it a known model
    with pytest.raises(UserError, match="not empty"):
        export_merged("a:1", out)


def test_merged_export_refuses_a_different_base(runs, tmp_path):
    reg = Registry()
    reg.add(runs["foreign"], name="foreign")
    with pytest.raises(UserError, match="different base"):
        export_merged("foreign:1", tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_vllm_export_writes_checked_layout_and_command(runs, tmp_path):
    reg = Registry()
    reg.add(runs["a"], name="a")
    reg.add(runs["b"], name="b")
    reg.promote("b", 1, force=True, reason="test")
    out = tmp_path / "vllm"
    plan = export_vllm(["a", "b@production"], out)
    cmd = plan.command
    assert cmd[:2] == ["vllm", "serve"] and "--enable-lora" in cmd
    assert cmd[cmd.index("--max-lora-rank") + 1] == "16"  # smallest vLLM value >= max rank 16
    assert cmd[cmd.index("--max-loras") + 1] == "2"
    i = cmd.index("--lora-modules")
    assert cmd[i + 1] == f"a={out.resolve()}/adapters/a" and cmd[i + 2].startswith("b=")
    for name in ("a", "b"):
        d = out / "adapters" / name
        assert sorted(p.name for p in d.iterdir()) == [
            "adapter_config.json",
            "adapter_model.safetensors",
        ]
    script = (out / "serve.sh").read_text()
    assert "vllm serve" in script and "--lora-modules" in script and "--max-cpu-loras" in script
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["adapters"]["b"]["spec"] == "b:1" and manifest["max_lora_rank"] == 16
    plan2, _ = plan_vllm(["a"], max_lora_rank=8, tensor_parallel_size=4)
    assert plan2.command[-2:] == ["--tensor-parallel-size", "4"]


@pytest.mark.parametrize(
    ("names", "kwargs", "message"),
    [
        (["b"], {"max_lora_rank": 8}, "below the largest adapter rank 16"),
        (["a"], {"max_lora_rank": 12}, "not one of vLLM's values"),
        (["head"], {}, "not LoRA-capable in vLLM"),
        (["head"], {}, "adapter bias is not supported"),
        (["dora"], {}, "DoRA"),
        (["a", "foreign"], {}, "different base models"),
    ],
)
def test_vllm_export_refuses_what_vllm_would_reject(runs, tmp_path, names, kwargs, message):
    reg = Registry()
    for n in names:
        reg.add(runs[n], name=n)
    with pytest.raises(UserError, match=message):
        export_vllm(names, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_export_cli(runs, tmp_path):
    Registry().add(runs["a"], name="a")
    runner = CliRunner()
    r = runner.invoke(app, ["export", "vllm", "a", "--out", str(tmp_path / "v")])
    assert r.exit_code == 0, r.output
    assert "vllm serve" in r.output and "--enable-lora" in r.output
    r = runner.invoke(app, ["export", "vllm", "a", "--out", str(tmp_path / "v")])
    assert r.exit_code == 2 and "not empty" in r.output
    r = runner.invoke(app, ["export", "merged", "a:1", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "m" / "config.json").is_file()
    r = runner.invoke(app, ["export", "merged", "zzz:1", str(tmp_path / "m2")])
    assert r.exit_code == 2 and "no model named" in r.output
