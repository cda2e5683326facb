"""Export a registry version as one GGUF file for llama.cpp and Ollama, plus a Modelfile.

Flow: registry version -> :func:`tunewise.export.vllm.export_merged` (the adapter folded into its
base,
an HF safetensors folder in a temp dir) -> :func:`write_gguf` (tensors renamed to llama.cpp's
names, Q/K rows permuted for the ``llama`` architecture, quantized; hyperparameters; tokenizer
and chat template) -> :func:`tunewise.export.modelfile.build_modelfile` (Ollama's TEMPLATE, stops
and
SYSTEM).

Supported: ``LlamaForCausalLM`` (SmolLM2, Llama 2/3 without RoPE scaling) and
``MistralForCausalLM`` as llama.cpp's ``llama`` architecture, and ``Qwen2ForCausalLM`` as
``qwen2``, each with a byte-level BPE tokenizer whose pre-tokenizer llama.cpp knows. Anything else
is refused with a :class:`UserError` that names what is missing.

Quantization (``--quant``), as llama.cpp's own converter and ``llama-quantize`` do it:

* ``f16``: every matrix in float16, 1-D tensors (norms, biases) in float32;
* ``q8_0``: matrices in Q8_0 (blocks of 32 int8 with one f16 scale);
* ``q4_0``: block matrices in Q4_0; the embedding / output matrix stays in Q8_0 (llama-quantize
  keeps the output matrix at higher precision; its Q6_K has no writer in the ``gguf`` package).

A matrix whose rows do not split into 32-wide blocks is written in f16, as llama.cpp does.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

from tunewise.errors import UserError
from tunewise.export.modelfile import build_modelfile
from tunewise.export.vllm import export_merged, trained_with_tools
from tunewise.fsio import atomic_write_text
from tunewise.registry.store import Registry
from tunewise.runtime import models
from tunewise.runtime.decoding import Row, greedy_decode
from tunewise.runtime.gguf_read import parse_once

QUANTS = ("f16", "q8_0", "q4_0")

# llama.cpp's convert_hf_to_gguf.py names the BPE pre-tokenizer (how text is split before merges)
# by hashing the token ids of this text; llama.cpp splits text by that name at run time.
PRE_TOKENIZER_PROBE = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis "
    "concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 "
    "កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български "
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? "
    "'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
# Hashes from llama.cpp's table, for the tokenizers of the families exported here.
PRE_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
}


@dataclass(frozen=True)
class ArchSpec:
    """How one HF architecture maps onto a llama.cpp architecture."""

    gguf_arch: str  # general.architecture
    # llama.cpp's llama kernel pairs rotary dimensions (2i, 2i+1); HF pairs (i, i + d/2). Its
    # converter reorders the rows of q_proj and k_proj (weights and biases) to match.
    permute_qk: bool
    families: str
    # Bias vectors the runtime reads. Any other bias (attention_bias/mlp_bias on a Llama, a
    # LoRA bias merged into lm_head) is refused: transformers would drop it on load.
    biases: tuple[str, ...] = ()


ARCHS = {
    "LlamaForCausalLM": ArchSpec("llama", True, "SmolLM2, Llama 2/3"),
    "MistralForCausalLM": ArchSpec("llama", True, "Mistral (as llama.cpp's llama)"),
    "Qwen2ForCausalLM": ArchSpec("qwen2", False, "Qwen2 / Qwen2.5", ("attn_q", "attn_k", "attn_v")),
}


@dataclass
class GgufSummary:
    """What :func:`write_gguf` wrote: architecture, tensor types and size."""

    path: Path
    arch: str
    quant: str
    bytes: int
    tensor_types: dict[str, int]  # ggml type name -> number of tensors
    pre_tokenizer: str
    warnings: list[str] = field(default_factory=list)


def _config(model_dir: Path) -> dict[str, Any]:
    return json.loads((model_dir / "config.json").read_text(encoding="utf-8"))


def arch_spec(config: dict[str, Any]) -> tuple[str, ArchSpec]:
    """The HF architecture name and its mapping; refuse anything without one."""
    archs = config.get("architectures") or []
    name = archs[0] if archs else f"model_type={config.get('model_type')!r}"
    spec = ARCHS.get(name)
    if spec is None:
        known = ", ".join(f"{a} ({s.families})" for a, s in ARCHS.items())
        raise UserError(
            f"GGUF export has no tensor and hyperparameter mapping for {name}; supported: {known}"
        )
    return name, spec


def _rope_theta(config: dict[str, Any]) -> float:
    """RoPE base; refuse scaled RoPE, which llama.cpp needs extra tensors or keys for."""
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = params.get("rope_type") or params.get("type") or "default"
    if rope_type != "default":
        raise UserError(
            f"GGUF export does not write RoPE scaling (rope_type {rope_type!r}): llama.cpp needs "
            "its rope_freqs tensor or scaling keys, which this exporter does not produce"
        )
    theta = params.get("rope_theta", config.get("rope_theta"))
    if theta is None:
        raise UserError("config.json: no rope_theta (rope_parameters.rope_theta) to export")
    return float(theta)


def _head_dim(config: dict[str, Any]) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def _write_hparams(writer: Any, config: dict[str, Any], spec: ArchSpec) -> list[str]:
    """The architecture's hyperparameters, as llama.cpp's converter writes them."""
    warnings = []
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    n_head = int(config["num_attention_heads"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(int(config.get("num_key_value_heads") or n_head))
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_vocab_size(int(config["vocab_size"]))
    if spec.gguf_arch == "llama":
        writer.add_rope_dimension_count(_head_dim(config))
    if config.get("head_dim"):
        writer.add_key_length(_head_dim(config))
        writer.add_value_length(_head_dim(config))
    if config.get("hidden_act", "silu") != "silu":
        raise UserError(
            f"hidden_act {config['hidden_act']!r}: llama.cpp's {spec.gguf_arch} uses SiLU only"
        )
    window = config.get("sliding_window")
    if (
        window
        and window < config["max_position_embeddings"]
        and config.get("use_sliding_window", 1)
    ):
        warnings.append(
            f"sliding_window={window}: llama.cpp's {spec.gguf_arch} attends over the whole "
            f"context, so answers to prompts longer than {window} tokens may differ"
        )
    return warnings


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute``: within each head, rows (i, i + d/2) become (2i, 2i+1)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _tensor_type(gguf_name: str, array: np.ndarray, quant: str) -> Any:
    """The ggml type of one tensor under ``quant`` (see the module docstring)."""
    from gguf import GGMLQuantizationType as T  # lazy: gguf, ~0.1 s to import

    if array.ndim == 1:
        return T.F32
    wanted = {"f16": T.F16, "q8_0": T.Q8_0, "q4_0": T.Q4_0}[quant]
    if quant == "q4_0" and gguf_name in ("token_embd.weight", "output.weight"):
        wanted = T.Q8_0
    if wanted != T.F16 and array.shape[-1] % 32:
        return T.F16
    return wanted


def _hf_tensors(model_dir: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(name, float32 array) for every tensor of a safetensors checkpoint, one at a time."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise UserError(f"{model_dir}: no *.safetensors weights to export")
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():  # noqa: SIM118 - safe_open is not a mapping
                yield key, st.get_tensor(key).float().numpy()


def _gguf_tensors(
    model_dir: Path, config: dict[str, Any], spec: ArchSpec, quant: str
) -> Iterator[tuple[str, np.ndarray, Any]]:
    """(GGUF name, data, ggml type) for every tensor: renamed, permuted and quantized."""
    import gguf  # lazy: gguf, ~0.1 s to import, only for `tunewise export gguf`

    arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == spec.gguf_arch)
    names = gguf.get_tensor_name_map(arch, int(config["num_hidden_layers"]))
    n_head = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_head)
    unknown = []
    for hf_name, array in _hf_tensors(model_dir):
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue  # recomputed from rope_theta by every runtime
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            unknown.append(hf_name)
            continue
        if gguf_name.endswith(".bias") and gguf_name.split(".")[-2] not in spec.biases:
            raise UserError(
                f"{hf_name}: llama.cpp's {spec.gguf_arch} has no {gguf_name} tensor "
                "(a bias this exporter cannot carry; train without attention/MLP/LoRA biases)"
            )
        if spec.permute_qk and ".attn_q." in gguf_name:
            array = permute_rows(array, n_head)
        elif spec.permute_qk and ".attn_k." in gguf_name:
            array = permute_rows(array, n_kv)
        qtype = _tensor_type(gguf_name, array, quant)
        yield gguf_name, gguf.quants.quantize(array, qtype), qtype
    if unknown:
        raise UserError(
            f"{len(unknown)} tensor(s) have no llama.cpp name in {spec.gguf_arch} "
            f"(e.g. {unknown[:3]}); this checkpoint is not a plain {spec.families} model"
        )


def pre_tokenizer(tokenizer: Any) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer; refuse one it does not know."""
    digest = sha256(str(tokenizer.encode(PRE_TOKENIZER_PROBE)).encode()).hexdigest()
    name = PRE_TOKENIZERS.get(digest)
    if name is None:
        raise UserError(
            f"tokenizer's pre-tokenizer is not one llama.cpp is known to reproduce (probe hash "
            f"{digest[:12]}…; known: {', '.join(sorted(set(PRE_TOKENIZERS.values())))}); "
            "llama.cpp would split text differently from transformers"
        )
    return name


def _check_byte_level_bpe(model_dir: Path) -> None:
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"{model_dir}: no tokenizer.json; GGUF export needs a fast BPE tokenizer")
    tok = json.loads(path.read_text(encoding="utf-8"))
    model_type = (tok.get("model") or {}).get("type")
    pre = json.dumps(tok.get("pre_tokenizer") or {})
    if model_type != "BPE" or "ByteLevel" not in pre:
        raise UserError(
            f"{path}: tokenizer is {model_type or 'unknown'} without byte-level pre-tokenization; "
            "GGUF export writes byte-level BPE vocabularies only (llama.cpp 'gpt2' model)"
        )


def _token_list(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens and llama.cpp token types, id by id (as convert_hf_to_gguf.get_vocab_base)."""
    from gguf import TokenType  # lazy: gguf, ~0.1 s to import, only for `tunewise export gguf`

    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")  # rows the embedding has beyond the tokenizer
            types.append(TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(TokenType.CONTROL if added[i].special else TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(TokenType.NORMAL)
    return tokens, types


def _write_tokenizer(writer: Any, model_dir: Path, tokenizer: Any, vocab_size: int) -> str:
    """Vocabulary, merges, special token ids, BOS/EOS behaviour and the chat template."""
    from gguf import SpecialVocab  # lazy: gguf, ~0.1 s to import, only for `tunewise export gguf`

    pre = pre_tokenizer(tokenizer)
    tokens, types = _token_list(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    merges = SpecialVocab(model_dir, load_merges=True).merges  # both merges formats handled
    if not merges:
        raise UserError(f"{model_dir}/tokenizer.json: BPE merges are missing")
    writer.add_token_merges(merges)
    ids = {
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "unk": tokenizer.unk_token_id,
        "pad": tokenizer.pad_token_id,  # load_tokenizer falls back to EOS, as training did
    }
    for kind, tid in ids.items():
        if tid is not None:
            getattr(writer, f"add_{kind}_token_id")(int(tid))
    # What the HF tokenizer actually does, so llama.cpp tokenizes prompts the same way.
    probe = tokenizer("a").input_ids
    writer.add_add_bos_token(bool(probe) and probe[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(bool(probe) and probe[-1] == tokenizer.eos_token_id)
    writer.add_add_space_prefix(False)
    writer.add_chat_template(tokenizer.chat_template)
    return pre


_FILE_TYPES = {"f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0", "q4_0": "MOSTLY_Q4_0"}


def write_gguf(
    model_dir: str | Path, out: str | Path, *, quant: str = "f16", name: str = ""
) -> GgufSummary:
    """Convert the HF checkpoint in ``model_dir`` to one GGUF file at ``out`` (atomically)."""
    import gguf  # lazy: gguf, ~0.1 s to import, only for `tunewise export gguf`

    if quant not in QUANTS:
        raise UserError(f"--quant {quant!r}: use one of {', '.join(QUANTS)}")
    model_dir, out = Path(model_dir), Path(out)
    config = _config(model_dir)
    _, spec = arch_spec(config)
    _rope_theta(config)  # refuse RoPE scaling before any work
    _check_byte_level_bpe(model_dir)
    ref = models.ModelRef(name or model_dir.name, model_dir, "", "local")
    tokenizer = models.load_tokenizer(ref)  # refuses a model without a chat template
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer = gguf.GGUFWriter(tmp, spec.gguf_arch)
        writer.add_name(name or model_dir.name)
        warnings = _write_hparams(writer, config, spec)
        writer.add_file_type(getattr(gguf.LlamaFileType, _FILE_TYPES[quant]))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        pre = _write_tokenizer(writer, model_dir, tokenizer, int(config["vocab_size"]))
        types: dict[str, int] = {}
        for gguf_name, data, qtype in _gguf_tensors(model_dir, config, spec, quant):
            writer.add_tensor(gguf_name, data, raw_dtype=qtype)
            types[qtype.name] = types.get(qtype.name, 0) + 1
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return GgufSummary(out, spec.gguf_arch, quant, out.stat().st_size, types, pre, warnings)


def export_gguf(
    spec: str,
    out: str | Path,
    *,
    quant: str = "f16",
    force: bool = False,
    registry: Any = None,
) -> dict[str, Any]:
    """Merge ``spec``'s adapter into its base, write ``out`` (GGUF) and a Modelfile beside it."""
    if quant not in QUANTS:
        raise UserError(f"--quant {quant!r}: use one of {', '.join(QUANTS)}")
    out = Path(out)
    if out.suffix != ".gguf":
        raise UserError(f"{out}: the output file name must end in .gguf")
    modelfile = out.parent / "Modelfile"
    for target in (out, modelfile):
        if target.exists() and not force:
            raise UserError(f"{target}: exists (use --force to replace it)")
    reg = registry or Registry()
    version = reg.resolve(spec)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.stem}.merge.", dir=out.parent))
    try:
        merged = work / "merged"
        export_merged(version.spec, merged, registry=reg)
        summary = write_gguf(merged, out, quant=quant, name=version.spec)
        system = ((version.config or {}).get("task") or {}).get("system_prompt") or ""
        tools = trained_with_tools(version)  # its TEMPLATE then renders calls as trained
        text, notes = build_modelfile(merged, out.name, system_prompt=system, tools=tools)
        atomic_write_text(modelfile, text)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "spec": version.spec,
        "out": str(out),
        "modelfile": str(modelfile),
        "arch": summary.arch,
        "quant": quant,
        "bytes": summary.bytes,
        "tensor_types": summary.tensor_types,
        "pre_tokenizer": summary.pre_tokenizer,
        "warnings": summary.warnings + notes,
    }


def load_gguf(path: str | Path) -> Any:
    """The model in a GGUF file, through transformers' GGUF loader (weights de-quantized)."""
    from transformers import AutoModelForCausalLM  # lazy: transformers pulls torch

    path = Path(path)
    with parse_once():  # the file parsed once, not once for the config and once for the weights
        return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()


def greedy_answers(
    model: Any,
    tokenizer: Any,
    conversations: list[list[dict[str, str]]],
    *,
    max_new_tokens: int = 24,
    batch_size: int = 16,
) -> list[str]:
    """Greedy answers to ``conversations``, batched by tunewise's decode loop (same tokens as
    one-at-a-time ``model.generate``): the check that a quantized export still answers alike."""
    import torch  # lazy: torch, ~1 s to import; the export itself is numpy only

    params = inspect.signature(model.forward).parameters
    cache_kw = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5

    def forward(ids, mask, positions, kv, last_only=True):  # see tunewise.runtime.decoding
        kwargs = {cache_kw: kv, "use_cache": True}
        if last_only and "logits_to_keep" in params:
            kwargs["logits_to_keep"] = 1  # the LM head over the vocabulary is costly: one row
        with torch.inference_mode():
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs)
        return out.logits[:, -1, :] if last_only else out.logits

    answers = []
    for start in range(0, len(conversations), batch_size):
        rows = []
        for msgs in conversations[start : start + batch_size]:
            prompt = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
            ids = tokenizer(prompt, add_special_tokens=False).input_ids
            rows.append(Row(prompt=ids, max_new=max_new_tokens, stops=[]))
        for _ in greedy_decode(
            forward,
            model.config,
            rows,
            eos_ids=frozenset({tokenizer.eos_token_id}),
            pad_id=tokenizer.pad_token_id,
            decode=tokenizer.decode,
        ):
            pass
        answers += [tokenizer.decode(r.gen, skip_special_tokens=True) for r in rows]
    return answers
