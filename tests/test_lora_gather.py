"""The gathered LoRA forward of mixed-adapter batches (runtime/lora_gather.py).

PEFT's own mixed forward loops over a batch's adapters in every LoRA layer; the gathered one
stacks the adapters' weights once and serves every row with two batched matmuls. It must give
PEFT's answer (a), be the path a mixed batch really takes (b), never serve an unloaded adapter's
weights (c), and leave the layers it cannot vouch for to PEFT (d).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from test_mixed_adapters import QUESTIONS, _alone, _make_adapter, _msgs, _same
from tunewise.runtime import lora_gather, models
from tunewise.runtime.engine import Engine, GenRequest

# name -> LoraConfig arguments: other ranks, alphas (rsLoRA too) and target modules per adapter
SPECS: dict[str, dict[str, Any]] = {
    "a": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "k_proj", "v_proj"]},
    "b": {"r": 8, "lora_alpha": 4, "target_modules": ["v_proj", "o_proj", "down_proj"]},
    "c": {"r": 2, "lora_alpha": 16, "use_rslora": True, "target_modules": ["q_proj", "up_proj"]},
}
# rows of a batch: the base among adapters, adapters only, one adapter, the base only
ROWS = [
    ["a", "__base__", "b", "c", "a", "b"],
    ["c", "b", "a"],
    ["c", "c"],
    ["__base__", "b", "__base__"],
    ["__base__", "__base__"],
]


def _tiny_llama() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.2,
    )
    return LlamaForCausalLM(config).eval()


def _with_adapters(base: Any, specs: dict[str, dict[str, Any]], seed: int = 1) -> Any:
    """``base`` wrapped by PEFT with random (non-zero) adapters, in inference mode."""
    from peft import LoraConfig, get_peft_model

    model = None
    for i, (name, kw) in enumerate(specs.items()):
        torch.manual_seed(seed + i)
        config = LoraConfig(init_lora_weights=False, **kw)
        if model is None:
            model = get_peft_model(base, config, adapter_name=name)
        else:
            model.add_adapter(name, config)
    assert model is not None
    return model.eval()


def _lora_linears(model: Any) -> list[tuple[str, Any]]:
    from peft.tuners.lora import Linear

    return [(n, m) for n, m in model.named_modules() if type(m) is Linear]


def _peft_mixed(module: Any, x: torch.Tensor, names: list[str]) -> torch.Tensor:
    """PEFT's own mixed forward of ``module`` (the class method the gathered one shadows)."""
    return type(module)._mixed_batch_forward(module, x, adapter_names=names)


@pytest.fixture
def gathered_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the gathered LoRA terms computed (the rows of each)."""
    calls: list[int] = []
    original: Callable[..., torch.Tensor] = lora_gather.gathered_term

    def spy(x: torch.Tensor, *args: Any) -> torch.Tensor:
        calls.append(x.shape[0])
        return original(x, *args)

    monkeypatch.setattr(lora_gather, "gathered_term", spy)
    return calls


@pytest.fixture
def peft_mixed_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts the calls of PEFT's own mixed forward of plain LoRA Linear layers."""
    from peft.tuners.lora import Linear

    calls: list[str] = []
    original = Linear._mixed_batch_forward

    def spy(self: Any, x: torch.Tensor, *args: Any, **kw: Any) -> torch.Tensor:
        calls.append(",".join(sorted(set(kw["adapter_names"]))))
        return original(self, x, *args, **kw)

    monkeypatch.setattr(Linear, "_mixed_batch_forward", spy)
    return calls


# ---------------------------------------------------------------------------- (a) PEFT's answer


def test_gathered_term_equals_peft_in_every_layer(gathered_calls) -> None:
    model = _with_adapters(_tiny_llama(), SPECS)
    layers = _lora_linears(model)
    torch.manual_seed(7)
    inputs = [torch.randn(len(names), 5, m.in_features) for names in ROWS for _, m in layers]
    inputs += [torch.randn(len(ROWS[0]), m.in_features) for _, m in layers]  # 2-D input too
    cases = [(names, m) for names in ROWS for _, m in layers] + [(ROWS[0], m) for _, m in layers]
    with torch.no_grad():
        want = [_peft_mixed(m, x, names) for (names, m), x in zip(cases, inputs, strict=True)]
        assert lora_gather.install(model) == len(layers)
        got = [
            m._mixed_batch_forward(x, adapter_names=n)
            for (n, m), x in zip(cases, inputs, strict=True)
        ]
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    # a layer no row's adapter targets (k_proj under ["c", "c"]) computes no LoRA term at all
    assert gathered_calls and len(gathered_calls) < len(cases)
    # the base rows stay exactly the base layer's output
    x = inputs[0]
    base_rows = [i for i, n in enumerate(ROWS[0]) if n == "__base__"]
    m = cases[0][1]
    with torch.no_grad():
        assert torch.equal(got[0][base_rows], m.base_layer(x)[base_rows])


def test_whole_model_logits_equal_peft(gathered_calls) -> None:
    model = _with_adapters(_tiny_llama(), SPECS)
    ids = torch.randint(0, 128, (len(ROWS[0]), 9))
    with torch.no_grad():
        want = model(input_ids=ids, adapter_names=ROWS[0]).logits
        lora_gather.install(model)
        got = model(input_ids=ids, adapter_names=ROWS[0]).logits
        alone = [
            model(input_ids=ids[i : i + 1], adapter_names=[n]).logits for i, n in enumerate(ROWS[0])
        ]
    assert gathered_calls
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, torch.cat(alone), rtol=1e-5, atol=1e-5)


def test_conv1d_base_with_fan_in_fan_out(gathered_calls) -> None:
    """GPT-2's Conv1D layers (fan_in_fan_out): the base layer transposes, the LoRA term not."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=128, n_embd=32, n_layer=1, n_head=2, n_positions=64)
    specs = {
        "a": {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn"], "fan_in_fan_out": True},
        "b": {"r": 2, "lora_alpha": 2, "target_modules": ["c_attn", "c_proj"]},
    }
    with pytest.warns(UserWarning, match="fan_in_fan_out"):
        model = _with_adapters(GPT2LMHeadModel(config).eval(), specs)
    ids = torch.randint(0, 128, (3, 7))
    names = ["b", "a", "__base__"]
    with torch.no_grad():
        want = model(input_ids=ids, adapter_names=names).logits
        assert lora_gather.install(model) == 3  # c_attn, and c_proj in attention and MLP
        got = model(input_ids=ids, adapter_names=names).logits
    assert gathered_calls
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- (b) the path taken


@pytest.fixture(scope="module")
def tiny_ref(lively_dir: Path) -> models.ModelRef:
    return models.resolve(str(lively_dir))


@pytest.fixture(scope="module")
def adapter_dirs(lively_dir: Path, tiny_ref, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gather-adapters")
    specs = {
        "a": (1, 4, ("q_proj", "k_proj", "v_proj")),
        "b": (2, 8, ("k_proj", "v_proj", "down_proj")),
        "a2": (6, 2, ("q_proj", "v_proj", "up_proj")),
    }
    return {
        name: _make_adapter(lively_dir, root / name, tiny_ref.weight_hash, seed, r, targets)
        for name, (seed, r, targets) in specs.items()
    }


def _requests(adapters: tuple[str | None, ...]) -> list[GenRequest]:
    return [
        GenRequest(messages=_msgs(q), adapter=ad, max_new_tokens=6)
        for q, ad in zip(QUESTIONS, adapters, strict=False)
    ]


def test_mixed_batch_runs_the_gathered_path(
    tiny_ref, adapter_dirs, gathered_calls, peft_mixed_calls
) -> None:
    eng = Engine(tiny_ref, batch_size=8, max_loaded_adapters=4)
    for name in ("a", "b"):
        eng.load_adapter(name, adapter_dirs[name])
    reqs = _requests(("a", "b", None, "a", "b", None))
    alone = _alone(eng, reqs)
    assert not gathered_calls  # a batch of one adapter runs PEFT's plain path
    _same(eng.generate(reqs), alone)
    assert gathered_calls, "the mixed batch never computed a gathered LoRA term"
    assert not peft_mixed_calls, f"PEFT's per-adapter loop ran: {peft_mixed_calls[:3]}"


def test_4bit_base_runs_the_gathered_path(tiny_ref, adapter_dirs, gathered_calls, monkeypatch):
    """bitsandbytes' 4-bit LoRA layers: same LoRA term as the plain ones, gathered too."""
    from peft.tuners.lora.bnb import Linear4bit

    eng = Engine(tiny_ref, batch_size=8, max_loaded_adapters=4, quantize_4bit=True)
    for name in ("a", "b"):
        eng.load_adapter(name, adapter_dirs[name])
    reqs = _requests(("a", "b", None, "b"))
    alone = _alone(eng, reqs)
    peft_calls: list[int] = []
    original = Linear4bit._mixed_batch_forward

    def spy(self: Any, *args: Any, **kw: Any) -> torch.Tensor:
        peft_calls.append(1)
        return original(self, *args, **kw)

    monkeypatch.setattr(Linear4bit, "_mixed_batch_forward", spy)
    _same(eng.generate(reqs), alone)
    assert gathered_calls and not peft_calls


# ---------------------------------------------------------------------------- (c) no stale weights


def test_adapter_deleted_and_added_under_its_name_serves_the_new_weights() -> None:
    model = _with_adapters(_tiny_llama(), SPECS)
    lora_gather.install(model)
    ids = torch.randint(0, 128, (3, 6))
    names = ["a", "b", "__base__"]
    with torch.no_grad():
        before = model(input_ids=ids, adapter_names=names).logits
        model.delete_adapter("a")
        model.add_adapter("a", _config(SPECS["a"], seed=99))
        model.eval()
        got = model(input_ids=ids, adapter_names=names).logits
        want = _peft_mixed_model(model, ids, names)
    assert not torch.allclose(got[0], before[0], atol=1e-3)  # the new "a" answers differently
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_weights_changed_in_place_are_restacked() -> None:
    model = _with_adapters(_tiny_llama(), SPECS)
    lora_gather.install(model)
    ids = torch.randint(0, 128, (2, 6))
    names = ["b", "c"]
    with torch.no_grad():
        model(input_ids=ids, adapter_names=names)
        for n, p in model.named_parameters():
            if ".lora_B.b." in n:
                p.mul_(3.0)
        got = model(input_ids=ids, adapter_names=names).logits
        want = _peft_mixed_model(model, ids, names)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_unloaded_adapter_leaves_no_stack_and_reloaded_name_is_fresh(
    tiny_ref, adapter_dirs, gathered_calls
) -> None:
    eng = Engine(tiny_ref, batch_size=8, max_loaded_adapters=4)
    for name in ("a", "b"):
        eng.load_adapter(name, adapter_dirs[name])
    reqs = _requests(("a", "b", None, "a"))
    first = eng.generate(reqs)
    old_slot = eng.pool.get("a").slot
    assert old_slot in lora_gather.stacked_slots(eng.pool.model)
    eng.unload_adapter("a")
    assert old_slot not in lora_gather.stacked_slots(eng.pool.model)  # memory given back
    eng.load_adapter("a", adapter_dirs["a2"])  # another adapter under the same name
    alone = _alone(eng, reqs)
    assert alone[0].text != first[0].text  # the new "a" answers differently
    gathered_calls.clear()
    _same(eng.generate(reqs), alone)
    assert gathered_calls


# ---------------------------------------------------------------------------- (d) PEFT's own path


def test_layers_it_cannot_vouch_for_fall_back_to_peft(gathered_calls, peft_mixed_calls) -> None:
    """DoRA and a bias on lora_B in one layer: PEFT's path there, gathered in the others."""
    specs = {
        **SPECS,
        "dora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "use_dora": True},
        "bias": {"r": 2, "lora_alpha": 4, "target_modules": ["v_proj"], "lora_bias": True},
    }
    model = _with_adapters(_tiny_llama(), specs)
    layers = dict(_lora_linears(model))
    q = layers["base_model.model.model.layers.0.self_attn.q_proj"]
    v = layers["base_model.model.model.layers.0.self_attn.v_proj"]
    k = layers["base_model.model.model.layers.0.self_attn.k_proj"]
    torch.manual_seed(3)
    x = torch.randn(4, 5, 32)
    cases = [(q, ["a", "dora", "__base__", "c"]), (v, ["bias", "a", "b", "a"]), (k, ["a", "b"])]
    with torch.no_grad():
        want = [_peft_mixed(m, x[: len(n)], n) for m, n in cases]
        lora_gather.install(model)
        peft_mixed_calls.clear()
        got = [m._mixed_batch_forward(x[: len(n)], adapter_names=n) for m, n in cases]
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    assert sorted(peft_mixed_calls) == ["__base__,a,c,dora", "a,b,bias"]
    assert gathered_calls == [1]  # k_proj only, its one row of "a" ("b" has no LoRA there)


def test_training_mode_and_other_layer_types_stay_with_peft(
    gathered_calls, peft_mixed_calls
) -> None:
    specs = {
        "a": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "embed_tokens"]},
        "b": {"r": 2, "lora_alpha": 2, "target_modules": ["q_proj"], "lora_dropout": 0.5},
    }
    model = _with_adapters(_tiny_llama(), specs)
    installed = lora_gather.install(model)
    assert installed == len(_lora_linears(model)) == 2  # not the LoRA Embedding
    embed = model.base_model.model.model.embed_tokens
    assert "_mixed_batch_forward" not in vars(embed)
    ids = torch.randint(0, 128, (2, 6))
    with torch.no_grad():
        model(input_ids=ids, adapter_names=["a", "b"])  # eval: dropout is off, gathered
        assert gathered_calls and not peft_mixed_calls
        # dropout on: only PEFT's path applies it (PEFT's model refuses `adapter_names` while
        # training, a layer called on its own does not)
        q = dict(_lora_linears(model))["base_model.model.model.layers.0.self_attn.q_proj"]
        q.train()
        gathered_calls.clear()
        q._mixed_batch_forward(torch.randn(2, 6, 32), adapter_names=["a", "b"])
    assert not gathered_calls and len(peft_mixed_calls) == 1


# ---------------------------------------------------------------------------- helpers


def _config(kw: dict[str, Any], *, seed: int) -> Any:
    from peft import LoraConfig

    torch.manual_seed(seed)
    return LoraConfig(init_lora_weights=False, **kw)


def _peft_mixed_model(model: Any, ids: torch.Tensor, names: list[str]) -> torch.Tensor:
    """The logits with every gathered forward taken away again: PEFT's own answer."""
    with _without_gather(model):
        return model(input_ids=ids, adapter_names=names).logits


@contextmanager
def _without_gather(model: Any) -> Iterator[None]:
    """The LoRA layers of ``model`` without their gathered forward (PEFT's class method again)."""
    saved = [
        (m, vars(m).pop("_mixed_batch_forward"))
        for _, m in _lora_linears(model)
        if "_mixed_batch_forward" in vars(m)
    ]
    try:
        yield
    finally:
        for m, fn in saved:
            m._mixed_batch_forward = fn
