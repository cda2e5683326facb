"""The device and dtype policy (tunewise.runtime.device) over faked machines, and where it is
used."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tunewise.config import load_project
from tunewise.errors import UserError
from tunewise.runtime import device
from tunewise.runtime.device import Capabilities, choose

A100 = Capabilities(
    cuda_devices=2, cuda_bf16=True, cuda_capability=(8, 0), cuda_name="A100", bitsandbytes=True
)
T4 = Capabilities(cuda_devices=1, cuda_bf16=False, cuda_capability=(7, 5), bitsandbytes=True)
CPU = Capabilities(bitsandbytes=True)
MAC = Capabilities(mps=True)
CUDA_DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# --- CUDA ------------------------------------------------------------------------------------


def test_cuda_with_bf16_puts_16_bit_weights_on_the_gpu():
    p = choose(A100, purpose="infer")
    assert (p.device, p.dtype, p.quantize_4bit, p.attn_implementation) == (
        "cuda:0",
        "bfloat16",
        False,
        "sdpa",
    )
    kw = p.load_kwargs()
    assert kw["device_map"] == {"": "cuda:0"} and kw["dtype"] == "bfloat16"
    assert kw["attn_implementation"] is None  # transformers' default: SDPA, eager fallback


def test_cuda_without_bf16_falls_back_to_fp16_everywhere():
    assert choose(T4, purpose="infer").dtype == "float16"
    lora = choose(T4, purpose="train", method="lora")
    assert (lora.dtype, lora.autocast) == ("float16", "fp16")
    qlora = choose(T4, purpose="train", method="qlora")
    assert qlora.quantize_4bit and qlora.compute_dtype == "float16"
    full = choose(T4, purpose="train", method="full")
    assert (full.dtype, full.autocast) == ("float32", "fp16")


def test_training_on_cuda_lora_16_bit_base_full_fp32_master_weights():
    lora = choose(A100, purpose="train", method="lora")
    assert (lora.dtype, lora.autocast, lora.device) == ("bfloat16", "bf16", "cuda:0")
    full = choose(A100, purpose="train", method="full")
    assert (full.dtype, full.autocast) == ("float32", "bf16")
    fp32 = choose(A100, purpose="train", method="lora", precision="fp32")
    assert (fp32.dtype, fp32.autocast) == ("float32", None)


def test_qlora_on_cuda_is_nf4_through_bitsandbytes():
    p = choose(A100, purpose="train", method="qlora")
    assert p.quantize_4bit and p.compute_dtype == "bfloat16" and p.dtype == "bfloat16"
    assert p.load_kwargs()["quantize_4bit"] is True
    no_bnb = Capabilities(cuda_devices=1, cuda_bf16=True, cuda_capability=(9, 0))
    with pytest.raises(UserError, match="bitsandbytes"):
        choose(no_bnb, purpose="train", method="qlora")
    with pytest.raises(UserError, match="bitsandbytes"):
        choose(no_bnb, purpose="infer", quantize_4bit=True)  # serve --4bit


def test_each_process_of_a_launch_takes_its_own_gpu_and_sharding_defers_placement():
    assert choose(A100, purpose="train", method="lora", local_rank=1).device == "cuda:1"
    sharded = choose(A100, purpose="train", method="full", sharded=True)
    assert not sharded.place_at_load and sharded.load_kwargs()["device_map"] is None
    with pytest.raises(UserError, match="GPU 2 requested, 2 visible"):
        choose(A100, purpose="train", local_rank=2)


# --- CPU and mps -------------------------------------------------------------------------------


def test_cpu_is_fp32_and_bf16_is_opt_in():
    infer = choose(CPU, purpose="infer")
    assert (infer.device, infer.dtype, infer.place_at_load) == ("cpu", "float32", False)
    assert infer.load_kwargs()["device_map"] is None
    auto = choose(CPU, purpose="train", method="lora")
    assert (auto.dtype, auto.autocast) == ("float32", None)
    opt_in = choose(CPU, purpose="train", method="lora", precision="bf16")
    assert (opt_in.dtype, opt_in.autocast) == ("float32", "bf16")
    # 4-bit layers on the CPU compute in bf16 themselves; autocast around them is refused.
    qlora = choose(CPU, purpose="train", method="qlora", precision="bf16")
    assert qlora.quantize_4bit and qlora.autocast is None and qlora.compute_dtype == "bfloat16"


def test_mps_when_present():
    infer = choose(MAC, purpose="infer")
    assert (infer.device, infer.dtype, infer.place_at_load) == ("mps", "float16", True)
    train = choose(MAC, purpose="train", method="lora")
    assert (train.device, train.dtype) == ("mps", "float32")
    with pytest.raises(UserError, match="not on mps"):
        choose(Capabilities(mps=True, bitsandbytes=True), purpose="train", method="qlora")


# --- overrides ---------------------------------------------------------------------------------


def test_device_override_and_its_errors():
    forced = choose(A100, purpose="infer", device="cpu")
    assert (forced.device, forced.dtype) == ("cpu", "float32")
    assert choose(A100, purpose="infer", device="cuda:1").device == "cuda:1"
    with pytest.raises(UserError, match=r"^model.device=cuda: no CUDA GPU is visible"):
        choose(CPU, purpose="infer", device="cuda")
    with pytest.raises(UserError, match=r"^--device=mps: "):
        choose(CPU, purpose="infer", device="mps", where="--device")
    with pytest.raises(UserError, match="GPU 5 requested"):
        choose(A100, purpose="infer", device="cuda:5")
    with pytest.raises(UserError, match="expected auto"):
        choose(A100, purpose="infer", device="gpu")


def test_dtype_override_and_its_errors():
    p = choose(A100, purpose="train", method="lora", dtype="float16")
    assert (p.dtype, p.autocast) == ("float16", "fp16")
    assert choose(CPU, purpose="infer", dtype="bfloat16").dtype == "bfloat16"
    with pytest.raises(UserError, match="no bf16"):
        choose(T4, purpose="infer", dtype="bfloat16")
    with pytest.raises(UserError, match="fp16 weights cannot be trained"):
        choose(A100, purpose="train", method="full", dtype="float16")
    with pytest.raises(UserError, match="no bf16"):
        choose(T4, purpose="train", method="lora", precision="bf16")


def test_flash_attention_2_only_where_it_runs():
    fa = Capabilities(
        cuda_devices=1, cuda_bf16=True, cuda_capability=(9, 0), bitsandbytes=True, flash_attn=True
    )
    p = choose(fa, purpose="infer")
    assert p.attn_implementation == "flash_attention_2"
    assert p.load_kwargs()["attn_implementation"] == "flash_attention_2"
    assert choose(fa, purpose="train", method="qlora").attn_implementation == "flash_attention_2"
    # fp32 weights (full fine-tuning), an older GPU, or the CPU: SDPA
    assert choose(fa, purpose="train", method="full").attn_implementation == "sdpa"
    old = Capabilities(cuda_devices=1, cuda_capability=(7, 5), flash_attn=True)
    assert choose(old, purpose="infer").attn_implementation == "sdpa"
    assert choose(fa, purpose="infer", device="cpu").attn_implementation == "sdpa"


def test_export_merges_on_the_cpu_in_the_checkpoints_own_dtype(tmp_path: Path):
    p = choose(A100, purpose="export", stored_dtype="bfloat16", quantize_4bit=True)
    assert (p.device, p.dtype, p.quantize_4bit) == ("cpu", "bfloat16", False)
    assert choose(A100, purpose="export").dtype == "float32"  # unknown: lossless
    (tmp_path / "config.json").write_text('{"torch_dtype": "float16"}')
    assert device.stored_dtype(tmp_path) == "float16"
    (tmp_path / "config.json").write_text('{"dtype": "bfloat16", "torch_dtype": "float32"}')
    assert device.stored_dtype(tmp_path) == "bfloat16"
    assert device.stored_dtype(tmp_path / "missing") is None


def test_every_decision_says_why():
    p = choose(A100, purpose="train", method="full")
    text = " | ".join(p.reasons)
    assert "device cuda:0" in text and "full fine-tuning keeps fp32" in text
    assert p.to_dict()["reasons"] == list(p.reasons)


# --- project.yaml and the launcher's environment -------------------------------------------------


def _project(tmp_path: Path, model: dict) -> Path:
    import yaml

    (tmp_path / "train.jsonl").write_text("")
    path = tmp_path / "project.yaml"
    path.write_text(yaml.safe_dump({"name": "p", "data": {"train": "train.jsonl"}, "model": model}))
    return path


def test_project_yaml_overrides_are_validated(tmp_path: Path):
    cfg = load_project(_project(tmp_path, {"device": "cuda:1", "dtype": "bfloat16"}))
    assert (cfg.model.device, cfg.model.dtype) == ("cuda:1", "bfloat16")
    assert (load_project(_project(tmp_path, {})).model.device) == "auto"
    with pytest.raises(UserError, match=r"project.yaml: model.device: .*expected auto \| cpu"):
        load_project(_project(tmp_path, {"device": "gpu"}))
    with pytest.raises(UserError, match=r"project.yaml: model.dtype: "):
        load_project(_project(tmp_path, {"dtype": "fp8"}))


def test_for_project_reads_the_overrides_and_the_launcher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    cfg = load_project(_project(tmp_path, {"dtype": "float16"}))
    assert device.for_project(cfg, "infer", caps=A100).dtype == "float16"
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    p = device.for_project(cfg, "train", method="lora", caps=A100)
    assert p.device == "cuda:1" and not p.place_at_load
    assert device.for_project(cfg, "infer", caps=A100).device == "cuda:0"  # one server process


def test_detect_matches_torch():
    caps = device.detect()
    assert caps.cuda == torch.cuda.is_available()
    assert caps.bitsandbytes  # a dependency of tunewise (QLoRA)
    placement = choose(caps, purpose="infer")
    assert placement.kind == ("cuda" if caps.cuda else "mps" if caps.mps else "cpu")


# --- the users of the policy ------------------------------------------------------------------


@pytest.mark.parametrize("where", CUDA_DEVICES)
def test_engine_model_and_inputs_are_on_the_chosen_device_and_dtype(tiny_model_dir: Path, where):
    """The Engine (evaluation, judge, constrained scoring, serving) runs where the policy says."""
    from tunewise.runtime import models
    from tunewise.runtime.engine import Engine, GenRequest

    placement = choose(device.detect(), purpose="infer", device=where)
    engine = Engine(models.resolve(str(tiny_model_dir)), placement=placement)
    assert engine.placement is placement
    found = device.where_is(engine.model)
    assert found["devices"] == {str(torch.device(placement.device)): sum(found["devices"].values())}
    assert found["dtypes"] == {placement.dtype: sum(found["dtypes"].values())}

    fed: list[tuple[str, torch.device]] = []

    def record(_module, args, kwargs):
        for name in ("input_ids", "attention_mask", "position_ids"):
            fed.append((name, kwargs[name].device))

    hook = engine.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        out = engine.generate([GenRequest([{"role": "user", "content": "hi"}], max_new_tokens=3)])
        scores = engine.score_continuations([{"role": "user", "content": "hi"}], ["a", "b"])
    finally:
        hook.remove()
    assert out[0].completion_tokens >= 1 and len(scores) == 2
    assert fed and {d.type for _, d in fed} == {torch.device(placement.device).type}


def test_engine_honours_a_dtype_override_and_keys_its_cache_by_it(tiny_model_dir: Path):
    from tunewise.runtime import models
    from tunewise.runtime.engine import Engine, GenRequest

    ref = models.resolve(str(tiny_model_dir))
    fp32 = Engine(ref, placement=choose(device.detect(), purpose="infer", device="cpu"))
    bf16 = Engine(ref, dtype="bfloat16")  # the old keyword: a request to the policy
    assert device.where_is(bf16.model)["dtype"] == "bfloat16"
    assert fp32.model_key == ref.weight_hash  # fp32 keys unchanged: old caches keep their hits
    assert bf16.model_key == ref.weight_hash + ":bfloat16"
    out = bf16.generate([GenRequest([{"role": "user", "content": "hi"}], max_new_tokens=2)])
    assert out[0].completion_tokens >= 1


def test_training_args_follow_the_policy(tmp_path: Path):
    """precision=bf16 on a CPU: fp32 weights under bf16 autocast, with the Trainer told so."""
    from tunewise.train.trainer import training_args

    cfg = load_project(_project(tmp_path, {"device": "cpu"}))
    args = training_args(cfg, tmp_path / "run", has_val=False)
    assert not args.bf16 and not args.fp16 and args.device.type == "cpu"
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"precision": "bf16"})})
    args = training_args(cfg, tmp_path / "run", has_val=False)
    assert args.bf16 and args.use_cpu and args.device.type == "cpu"


def test_build_model_loads_the_base_where_the_policy_says(tiny_model_dir: Path, tmp_path: Path):
    from tunewise.runtime import models
    from tunewise.train.trainer import build_model

    cfg = load_project(_project(tmp_path, {"base": str(tiny_model_dir), "dtype": "bfloat16"}))
    model = build_model(cfg, models.resolve(str(tiny_model_dir)), "lora")
    found = device.where_is(model)
    expected = device.for_project(cfg, "train", method="lora")
    assert found["device"] == str(torch.device(expected.device))
    # the frozen base in bf16, the trainable adapter in fp32 (PEFT keeps adapters in fp32)
    trainable = {str(p.dtype) for p in model.parameters() if p.requires_grad}
    frozen = {str(p.dtype) for p in model.parameters() if not p.requires_grad}
    assert trainable == {"torch.float32"} and frozen == {"torch.bfloat16"}


def test_planner_takes_its_byte_sizes_from_the_policy():
    from tunewise.train.plan import plan

    full = plan("meta-llama/Llama-3.2-1B", method="full", device="gpu")
    n = full.n_params
    # fp32 weights + fp32 grads + two fp32 moments: 16 bytes a parameter, as the Trainer runs it
    assert full.parts["weights"] == 4 * n and full.parts["optimizer"] == 8 * n
    lora = plan("meta-llama/Llama-3.2-1B", method="lora", device="gpu")
    assert lora.parts["weights"] == 2 * n
    assert plan("meta-llama/Llama-3.2-1B", method="lora", device="cpu").parts["weights"] == 4 * n
