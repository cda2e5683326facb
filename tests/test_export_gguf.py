"""GGUF export: the file transformers' GGUF loader reads back is the merged model.

Tolerances. An f16 export stores every matrix rounded to float16 (relative error at most 2^-11)
and the rest in float32; the loader de-quantizes to float32. So the loaded model must equal the
merged model *with its matrices rounded to f16* up to float32 summation noise (1e-5): that proves
names, Q/K permutation, norms and tied embeddings right. Against the unrounded merged model the
logits move by the rounding alone, bounded here by 1% of the largest logit (the embedded 135M
base model moves by 0.1%). A q8_0 / q4_0 export must likewise equal the merged model with its
matrices put through the same quantization (the ``gguf`` package's reference code, as
llama.cpp's). Whether a quantized model still *answers* alike is a property of the model, not of
the file format: the slow test checks it on the real model, taught demo answers so that its
answers are decisive, as a fine-tune's are (a random tiny model's are near-ties).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from typer.testing import CliRunner

from _ship_helpers import make_run
from tunewise.cli import app
from tunewise.errors import UserError
from tunewise.export.gguf import (
    QUANTS,
    export_gguf,
    greedy_answers,
    load_gguf,
    permute_rows,
    write_gguf,
)
from tunewise.export.modelfile import ChatPieces, build_modelfile, go_template, measure
from tunewise.export.vllm import export_merged
from tunewise.registry.store import Registry
from tunewise.runtime.gguf_read import parse_once

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "examples" / "ticket-triage"
SYSTEM = "Triage the support ticket. Reply exactly:\nCategory: <category>\nPriority: <priority>"


def demo_items(n: int) -> list[tuple[list[dict[str, str]], str]]:
    """(prompt messages, answer) for the first ``n`` tickets of the demo, with a short system."""
    items = []
    for line in (DEMO / "data" / "tickets.jsonl").read_text().splitlines()[:n]:
        msgs = json.loads(line)["messages"]
        user = next(m for m in msgs if m["role"] == "user")["content"][:300]
        items.append(
            (
                [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
                msgs[-1]["content"],
            )
        )
    return items


def _teach(model, tok, items, steps: int = 120, lr: float = 1e-2) -> None:
    """Fit the LoRA to the items' answers (loss on answer tokens only)."""
    import torch

    rows = []
    for msgs, answer in items:
        prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        p_ids = tok(prompt).input_ids
        a_ids = tok(answer + tok.eos_token).input_ids
        rows.append((p_ids + a_ids, [-100] * len(p_ids) + a_ids))
    width = max(len(r[0]) for r in rows)
    ids = torch.tensor([r[0] + [tok.pad_token_id] * (width - len(r[0])) for r in rows])
    labels = torch.tensor([r[1] + [-100] * (width - len(r[1])) for r in rows])
    mask = torch.tensor([[1] * len(r[0]) + [0] * (width - len(r[0])) for r in rows])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if loss.item() < 0.01:
            break
    model.eval()


@pytest.fixture(scope="module")
def adapter_run(tiny_model_dir, tmp_path_factory) -> Path:
    """A LoRA run on the tiny Llama that changes q/k (so the permutation matters) and the MLP."""
    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    run = make_run(
        tiny_model_dir,
        tmp_path_factory.mktemp("gguf-run") / "run",
        r=8,
        target_modules=targets,
        name="triage",
    )
    record = json.loads((run / "run.json").read_text())
    record["config"]["task"] = {"system_prompt": SYSTEM}
    (run / "run.json").write_text(json.dumps(record))
    return run


@pytest.fixture
def registered(adapter_run) -> Registry:
    reg = Registry()
    reg.add(adapter_run, name="triage")
    return reg


class TinyExports(NamedTuple):
    registry: Registry
    merged: Path  # the version merged by export_merged: what every export must equal
    exports: dict[str, dict[str, Any]]  # quant -> export_gguf's result, each in its own folder


@pytest.fixture(scope="module")
def tiny_exports(adapter_run, tmp_path_factory) -> TinyExports:
    """The adapter run exported once per quantization, and merged once: the f16, quantized and
    Modelfile tests assert on these rather than each exporting and merging again (the same
    files). A registry of its own: a module fixture runs outside any test's home."""
    root = tmp_path_factory.mktemp("gguf-exports")
    reg = Registry(root / "registry")
    reg.add(adapter_run, name="triage")
    exports = {
        quant: export_gguf("triage:1", root / quant / "triage.gguf", quant=quant, registry=reg)
        for quant in QUANTS
    }
    export_merged("triage:1", root / "merged", registry=reg)
    return TinyExports(reg, root / "merged", exports)


def test_qk_permutation_is_the_one_transformers_gguf_loader_undoes():
    import numpy as np
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    undo = LlamaTensorProcessor(config={})._reverse_permute_weights
    w = np.random.default_rng(0).standard_normal((4 * 16, 64)).astype(np.float32)
    for n_head in (4, 2):  # query heads, and key/value heads under GQA
        permuted = permute_rows(w, n_head)
        assert not np.array_equal(permuted, w)
        np.testing.assert_array_equal(undo(permuted, n_head, n_head), w)


def test_f16_export_is_the_merged_model_rounded_to_f16(tiny_exports):
    import gguf
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    res = tiny_exports.exports["f16"]
    out = Path(res["out"])
    assert res["arch"] == "llama" and res["pre_tokenizer"] == "smollm"
    assert res["tensor_types"] == {
        "F16": 15,
        "F32": 5,
    }  # 7 matrices x 2 layers + embedding; 2 norms x 2 + final norm
    merged_dir = tiny_exports.merged
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    rounded = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    with torch.no_grad():
        for p in rounded.parameters():
            if p.ndim == 2:
                p.copy_(p.half().float())
    with parse_once():  # the file parsed once for all three readers, not once each
        reader = gguf.GGUFReader(out)
        assert reader.fields["tokenizer.ggml.model"].contents() == "gpt2"
        loaded = load_gguf(out)
        gtok = AutoTokenizer.from_pretrained(out.parent, gguf_file=out.name)
    assert isinstance(reader, gguf.GGUFReader)  # and gguf is itself again afterwards

    tok = AutoTokenizer.from_pretrained(merged_dir)
    assert gtok.chat_template == tok.chat_template
    assert (gtok.bos_token_id, gtok.eos_token_id) == (tok.bos_token_id, tok.eos_token_id)
    msgs = demo_items(6)[5][0]
    prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert gtok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) == prompt
    ids = tok(prompt, return_tensors="pt").input_ids
    assert gtok(prompt, return_tensors="pt").input_ids.tolist() == ids.tolist()
    with torch.no_grad():
        want, want16, got = merged(ids).logits, rounded(ids).logits, loaded(ids).logits
    torch.testing.assert_close(got, want16, atol=1e-5, rtol=1e-5)
    assert (got - want).abs().max() <= 0.01 * want.abs().max()
    assert not torch.equal(want, want16)  # the rounding is real, so the first check has teeth


@pytest.mark.parametrize("quant", ["q8_0", "q4_0"])
def test_quantized_export_is_the_merged_model_quantized(tiny_exports, quant):
    import gguf
    import torch
    from transformers import AutoModelForCausalLM

    res = tiny_exports.exports[quant]
    out = Path(res["out"])
    q8, q4 = gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_0
    if quant == "q8_0":
        assert res["tensor_types"] == {"Q8_0": 15, "F32": 5}
    else:  # blocks in Q4_0, the tied embedding/output matrix kept in Q8_0
        assert res["tensor_types"] == {"Q4_0": 14, "Q8_0": 1, "F32": 5}
    assert out.stat().st_size == res["bytes"]
    merged_dir = tiny_exports.merged
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    expected = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    with torch.no_grad():  # blocks run along rows, so the Q/K row permutation commutes with this
        for name, p in expected.named_parameters():
            if p.ndim == 2:
                qtype = q8 if quant == "q8_0" or "embed_tokens" in name else q4
                w = gguf.quants.quantize(p.numpy(), qtype)
                p.copy_(torch.from_numpy(gguf.quants.dequantize(w, qtype)))
    ids = torch.tensor([[1, 504, 3458, 314, 253, 1345, 30, 2, 198, 1]])
    with torch.no_grad():
        want, quantized, got = merged(ids).logits, expected(ids).logits, load_gguf(out)(ids).logits
    torch.testing.assert_close(got, quantized, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(want, quantized, atol=1e-4)  # the quantization is real


def test_modelfile_restates_the_chat_template_for_ollama(tiny_exports):
    from transformers import AutoTokenizer

    out = Path(tiny_exports.exports["q8_0"]["out"])
    assert tiny_exports.exports["q8_0"]["modelfile"] == str(out.parent / "Modelfile")
    text = (out.parent / "Modelfile").read_text()
    assert "FROM ./triage.gguf\n" in text
    assert 'PARAMETER stop "<|im_end|>"' in text and "PARAMETER temperature 0" in text
    assert f'SYSTEM """{SYSTEM}"""' in text
    assert '{{- "<|im_start|>assistant\\n" }}' in text
    tok = AutoTokenizer.from_pretrained(tiny_exports.registry.resolve("triage:1").weights_dir)
    pieces = measure(tok)
    assert pieces is not None
    conv = [*demo_items(1)[0][0], {"role": "assistant", "content": "Category: bug\nPriority: low"}]
    conv.append({"role": "user", "content": "And the invoice?"})
    assert pieces.render(conv) == tok.apply_chat_template(
        conv, tokenize=False, add_generation_prompt=True
    )
    # the default system turn of SmolLM2's template appears only when no system turn is given
    assert "You are a helpful AI assistant" in pieces.prefix("user", 0)
    assert "You are a helpful AI assistant" not in pieces.prefix("user", 1)


def test_a_template_that_rewrites_content_gets_no_ollama_template(tiny_model_dir, tmp_path):
    model_dir = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model_dir)
    (model_dir / "chat_template.jinja").write_text(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | upper }}"
        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    text, notes = build_modelfile(model_dir, "m.gguf")
    assert "TEMPLATE" not in text and "FROM ./m.gguf" in text
    assert notes and "no TEMPLATE" in notes[0]


@pytest.mark.skipif(shutil.which("go") is None, reason="Go is not installed (optional check)")
def test_go_template_renders_like_the_jinja_template(tiny_model_dir, tmp_path):
    """Run the TEMPLATE through Go's text/template, as Ollama does, on a real conversation."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    pieces = measure(tok)
    assert isinstance(pieces, ChatPieces)
    program = tmp_path / "render.go"
    program.write_text(
        'package main\nimport ("encoding/json"; "os"; "text/template")\n'
        "type Message struct { Role string; Content string }\n"
        "func main() {\n"
        "  var data struct { Messages []Message }\n"
        "  json.Unmarshal([]byte(os.Args[2]), &data.Messages)\n"
        '  t := template.Must(template.New("t").Parse(os.Args[1]))\n'
        "  t.Execute(os.Stdout, data)\n}\n"
    )
    for conv in (
        [demo_items(1)[0][0][1]],
        [
            *demo_items(1)[0][0],
            {"role": "assistant", "content": "Category: bug\nPriority: low"},
            {"role": "user", "content": 'Quotes " and {{ braces }}'},
        ],
    ):
        rendered = subprocess.run(
            ["go", "run", str(program), go_template(pieces), json.dumps(conv)],
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        ).stdout
        assert rendered == tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)


def test_export_gguf_cli(registered, tmp_path):
    out = tmp_path / "cli" / "t.gguf"
    runner = CliRunner()
    res = runner.invoke(app, ["export", "gguf", "triage:1", str(out), "--quant", "q4_0"])
    assert res.exit_code == 0, res.output
    assert out.is_file() and (out.parent / "Modelfile").is_file()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # temp files cleaned
    again = runner.invoke(app, ["export", "gguf", "triage:1", str(out)])
    assert again.exit_code == 2 and "exists" in again.output
    bad = runner.invoke(app, ["export", "gguf", "triage:1", str(out), "--quant", "q5_k", "--force"])
    assert bad.exit_code == 2 and "f16, q8_0, q4_0" in bad.output


def _tiny_dir(tiny_model_dir: Path, tmp_path: Path, config_cls, **extra) -> Path:
    """A tiny model of another architecture with the SmolLM2 tokenizer, saved like a checkpoint."""
    from _tiny_model import build_tiny

    out = tmp_path / f"tiny-{config_cls.model_type}"
    return build_tiny(out, tiny_model_dir, config_cls, seed=1, **extra)


@pytest.mark.parametrize("family", ["mistral", "qwen2"])
def test_mistral_and_qwen2_shapes_round_trip(tiny_model_dir, tmp_path, family, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM, MistralConfig, Qwen2Config

    from tunewise.export import gguf as module

    if family == "mistral":
        model_dir = _tiny_dir(tiny_model_dir, tmp_path, MistralConfig, sliding_window=None)
    else:
        model_dir = _tiny_dir(tiny_model_dir, tmp_path, Qwen2Config, tie_word_embeddings=True)
        # transformers loads SmolLM2's vocabulary with Qwen2's own tokenizer class here, whose
        # ids match no tokenizer llama.cpp knows (the export rightly refuses it); this test is
        # about Qwen2's tensors and hyperparameters, so it names the pre-tokenizer itself.
        monkeypatch.setattr(module, "pre_tokenizer", lambda tok: "qwen2")
    src = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    if family == "qwen2":  # Qwen2's q/k/v biases start at zero; make them matter
        with torch.no_grad():
            for name, p in src.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0, 0.5)
        src.save_pretrained(model_dir)
    with torch.no_grad():
        for p in src.parameters():
            if p.ndim == 2:
                p.copy_(p.half().float())
    summary = write_gguf(model_dir, tmp_path / f"{family}.gguf")
    assert summary.arch == ("llama" if family == "mistral" else "qwen2")
    ids = torch.tensor([[1, 504, 3458, 314, 253, 1345, 30]])
    with torch.no_grad():
        want = src(ids).logits
        got = load_gguf(summary.path)(ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_unsupported_models_are_refused_with_what_is_missing(tiny_model_dir, tmp_path):
    from transformers import GPT2Config

    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(
        json.dumps(GPT2Config().to_dict() | {"architectures": ["GPT2LMHeadModel"]})
    )
    with pytest.raises(
        UserError,
        match=r"no tensor and hyperparameter mapping for GPT2LMHeadModel.*LlamaForCausalLM",
    ):
        write_gguf(gpt2, tmp_path / "g.gguf")

    scaled = tmp_path / "scaled"
    shutil.copytree(tiny_model_dir, scaled)
    cfg = json.loads((scaled / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}
    cfg["rope_parameters"] |= {"low_freq_factor": 1.0, "high_freq_factor": 4.0}
    cfg["rope_parameters"]["original_max_position_embeddings"] = 8192
    (scaled / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=r"RoPE scaling.*llama3"):
        write_gguf(scaled, tmp_path / "s.gguf")

    from transformers import LlamaConfig

    biased = _tiny_dir(tiny_model_dir, tmp_path, LlamaConfig, attention_bias=True)
    with pytest.raises(UserError, match=r"_proj.bias: llama.cpp's llama has no blk.0.attn_"):
        write_gguf(biased, tmp_path / "b.gguf")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*.tmp"))

    unigram = tmp_path / "unigram"
    shutil.copytree(tiny_model_dir, unigram)
    tok = json.loads((unigram / "tokenizer.json").read_text())
    tok["model"]["type"] = "Unigram"
    (unigram / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(UserError, match=r"Unigram.*byte-level BPE"):
        write_gguf(unigram, tmp_path / "u.gguf")


@pytest.mark.slow
def test_real_model_gguf_exports_answer_like_the_merged_model(real_model, tmp_path):
    """The embedded SmolLM2-135M, briefly taught three demo answers (as a fine-tune would be):
    every quantization, read back by transformers, gives the merged model's greedy answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(real_model.path)
    model = AutoModelForCausalLM.from_pretrained(real_model.path)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=targets))
    items = demo_items(3)
    _teach(peft_model, tok, items, steps=40, lr=1e-3)
    run = tmp_path / "run"
    peft_model.save_pretrained(run)
    tok.save_pretrained(run)
    base = {"name": real_model.name, "path": str(real_model.path)}
    record = {"status": "completed", "method": "lora", "config": {"name": "real"}}
    record["base_model"] = {**base, "weight_hash": real_model.weight_hash}
    (run / "run.json").write_text(json.dumps(record))
    reg = Registry()
    reg.add(run, name="real")

    prompts = [msgs for msgs, _ in items]
    merged_dir = tmp_path / "merged"
    export_merged("real:1", merged_dir, registry=reg)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    want = greedy_answers(merged, tok, prompts, max_new_tokens=14)
    assert want == [answer for _, answer in items]
    sizes = {}
    for quant in QUANTS:
        out = tmp_path / quant / "real.gguf"
        if quant == "f16":  # the whole path once, registry version to file and Modelfile
            res = export_gguf("real:1", out, quant=quant, registry=reg)
            summary = (res["pre_tokenizer"], res["arch"], res["bytes"])
        else:  # the others from the same merge, not merging the adapter again for each
            s = write_gguf(merged_dir, out, quant=quant, name="real:1")
            summary = (s.pre_tokenizer, s.arch, s.bytes)
        assert summary[:2] == ("smollm", "llama")
        sizes[quant] = summary[2]
        got = greedy_answers(load_gguf(out), tok, prompts, max_new_tokens=14)
        assert got == want, quant
    # 134.5M parameters: ~2 bytes each in f16, ~1.06 in Q8_0, Q4_0 (with a Q8_0 embedding) less
    assert 255 < sizes["f16"] / 2**20 < 262 and 135 < sizes["q8_0"] / 2**20 < 140
    assert sizes["q4_0"] < 0.7 * sizes["q8_0"]
