"""QLoRA = LoRA on a 4-bit NF4 base (bitsandbytes runs it on the CPU here)."""

from __future__ import annotations

import json

import pytest

from _train_helpers import make_project
from tunewise.config import load_project
from tunewise.train.trainer import build_model, train


def _linear4bit():
    import bitsandbytes as bnb

    return bnb.nn.Linear4bit


@pytest.mark.slow
def test_qlora_base_is_4bit_and_under_40_percent_of_fp32_lora(tmp_path, real_model):
    import torch

    project = make_project(tmp_path, real_model.name)
    cfg = load_project(project)
    qlora = build_model(cfg, real_model, "qlora")
    layer = qlora.base_model.model.model.layers[0]
    for proj in (layer.self_attn.q_proj, layer.self_attn.v_proj, layer.mlp.down_proj):
        assert isinstance(proj.base_layer, _linear4bit())
        assert proj.base_layer.weight.quant_state.quant_type == "nf4"
        assert proj.base_layer.weight.quant_state.nested  # double quantization
        assert proj.base_layer.compute_dtype == torch.bfloat16
    n4 = sum(isinstance(m, _linear4bit()) for m in qlora.modules())
    assert n4 == 30 * 7  # every linear projection of the 30 layers; the head stays full precision
    assert all(not p.requires_grad for n, p in qlora.named_parameters() if "lora_" not in n)
    q_bytes = qlora.get_memory_footprint()
    del qlora
    lora = build_model(cfg, real_model, "lora")
    f_bytes = lora.get_memory_footprint()
    assert q_bytes < 0.40 * f_bytes, (q_bytes, f_bytes)


def test_qlora_trains_and_saves_a_peft_adapter(tmp_path, tiny_model_dir):
    project = make_project(
        tmp_path, tiny_model_dir, max_steps=2, eval_every=2, save_every=2, overfit_sample=1
    )
    rec = train(load_project(project), run_dir=tmp_path / "run", method="qlora", progress=False)
    assert rec["method"] == "qlora" and rec["global_step"] == 2
    assert rec["metrics"][0]["val_loss"] is not None
    adapter = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA" and adapter["r"] == 16
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "run" / "adapter_model.safetensors")
    assert weights and all("lora_" in k for k in weights)
