"""Export registry versions: merged HF checkpoints, and a checked vLLM multi-LoRA layout.

* ``merged``: the adapter folded into the base (``merge_and_unload``) and saved as a plain
  Hugging Face directory in safetensors, for runtimes without LoRA support.
* ``vllm``: the adapters copied into one folder plus the ``vllm serve`` command that serves them
  all on one base. Everything vLLM would reject at start-up is checked here first: the rank must
  fit an allowed ``--max-lora-rank``, the target modules must be LoRA-capable in vLLM, DoRA /
  ``modules_to_save`` / adapter bias are refused, and every adapter must share one base hash.

Function calls (a version trained on a ``tools`` task): vLLM reads calls out of the answer with a
``--tool-call-parser`` and renders tools with the chat template, so the export names the parser
that reads the format trained (:func:`tool_serving`). A base whose template ignores tools
(SmolLM2's) was trained on tunewise's fallback prompt (``runtime/tool_calls.py``): its calls are
Hermes-style ``<tool_call>`` blocks (parser ``hermes``) and vLLM gets ``--chat-template`` with a
template that shows the tools the same way (:func:`fallback_tool_template`, checked against
tunewise's rendering before it is written). A template that renders tools itself was trained on
its own format: the parser of its family when one is known.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunewise.baselines.context import CONTEXT_FILE
from tunewise.baselines.release import LLM_KINDS, RELEASE_KINDS
from tunewise.errors import UserError
from tunewise.export.modelfile import tools_prompt_pieces
from tunewise.fsio import atomic_write_json, atomic_write_text, replace_dir
from tunewise.registry.store import Registry
from tunewise.registry.types import Version
from tunewise.rundir import RunDir
from tunewise.runtime import chat, device, models
from tunewise.runtime.tool_calls import (
    CALL_CLOSE,
    CALL_OPEN,
    attach_tools,
    canonical_message,
)

# vllm/config/lora.py: MaxLoRARanks = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# Linear layers of decoder blocks that vLLM's LoRA layers wrap (q/k/v are packed into qkv_proj,
# gate/up into gate_up_proj). Embedding and lm_head LoRA are not served by current vLLM.
VLLM_LORA_MODULES = {
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "qkv_proj",
    "gate_up_proj",
}


def _out_dir_ready(out: Path, force: bool) -> None:
    if out.exists() and any(out.iterdir()) and not force:
        raise UserError(f"{out}: exists and is not empty (use --force to replace it)")


def _base_ref(v: Version):
    """The base model the version was trained on, refusing a different one with a clear message."""
    candidates = [c for c in (v.base_path, v.base_model) if c]
    last_err: Exception | None = None
    for cand in candidates:
        try:
            ref = models.resolve(cand, allow_download=False)
        except UserError as exc:
            last_err = exc
            continue
        if ref.weight_hash != v.base_weight_hash:
            raise UserError(
                f"{v.spec} was trained on base {v.base_weight_hash[:12]}… but {cand} now hashes to "
                f"{ref.weight_hash[:12]}…; refusing to merge onto a different base"
            )
        return ref
    raise UserError(f"{v.spec}: base model {v.base_model!r} is not available locally ({last_err})")


def export_merged(
    spec: str, out: str | Path, *, force: bool = False, registry: Registry | None = None
) -> dict[str, Any]:
    """Merge ``spec``'s adapter into its base and write an HF safetensors directory at ``out``."""
    reg = registry or Registry()
    v = reg.resolve(spec)
    if v.kind in RELEASE_KINDS:
        raise UserError(f"{v.spec} is a {v.kind} release: it has no trained weights to merge")
    out = Path(out)
    _out_dir_ready(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if v.kind == "full":
            # already a full checkpoint: copy its verified files
            for f in v.weights_dir.iterdir():
                shutil.copyfile(f, tmp / f.name)
            base_name = v.base_model
        else:
            from peft import PeftModel  # lazy: peft pulls torch and transformers

            ref = _base_ref(v)
            # The policy merges on the CPU in the checkpoint's own dtype (a bf16 base merges to a
            # bf16 model of the same size).
            placement = device.choose(
                device.detect(), purpose="export", stored_dtype=device.stored_dtype(ref.path)
            )
            base = models.load_model(ref, placement=placement)
            merged = PeftModel.from_pretrained(base, str(v.weights_dir)).merge_and_unload()
            merged.save_pretrained(tmp, safe_serialization=True)
            tok_src = (
                v.weights_dir if (v.weights_dir / "tokenizer_config.json").is_file() else ref.path
            )
            models.load_tokenizer(
                models.ModelRef(ref.name, Path(tok_src), ref.weight_hash, "local")
            ).save_pretrained(tmp)
            base_name = ref.name
        marker = {
            "name": v.spec,
            "source": "merged",
            "base_model": base_name,
            "base_weight_hash": v.base_weight_hash,
            "weight_hash": models.weights_hash(tmp),
        }
        atomic_write_json(tmp / models.MARKER, marker)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"spec": v.spec, "out": str(out), **marker}


# The call format a template renders, by a marker in it -> vLLM's parser for that format, and
# the tokens that parser needs as single entries of the vocabulary (it refuses to start without).
TOOL_PARSERS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (CALL_OPEN, "hermes", (CALL_OPEN, CALL_CLOSE)),  # Qwen 2.5 / 3, Hermes
    ("[TOOL_CALLS]", "mistral", ("[TOOL_CALLS]",)),
    ("<|python_tag|>", "llama3_json", ()),  # Llama 3.1 / 3.2: a JSON call
    ("functools", "phi4_mini_json", ()),
)
TOOL_TEMPLATE = "tool_chat_template.jinja"


@dataclass
class ToolServing:
    """How vLLM serves the calls a version was trained to write."""

    format: str  # "fallback" (tunewise's prompt) or "native" (the template's own)
    parser: str | None  # the --tool-call-parser that reads it; None when none is known
    usable: bool  # whether vLLM's parser accepts this tokenizer
    chat_template: str | None = None  # for the fallback: the template to pass --chat-template
    notes: list[str] = field(default_factory=list)


@dataclass
class VllmPlan:
    base: str
    base_weight_hash: str
    adapters: dict[str, Path]  # served name -> folder inside the layout
    max_lora_rank: int
    max_loras: int
    max_cpu_loras: int
    tensor_parallel_size: int
    command: list[str]
    warnings: list[str] = field(default_factory=list)
    tools: ToolServing | None = None  # set when a version was trained on function calls

    @property
    def shell(self) -> str:
        """The command as a multi-line shell string, one flag (or adapter) per line."""
        lines = [shlex.join(self.command[:3])]
        flag = ""
        for tok in self.command[3:]:
            if tok.startswith("--"):
                flag = tok
                lines.append(tok)
            elif flag == "--lora-modules":
                lines.append("  " + shlex.quote(tok))
            else:
                lines[-1] += " " + shlex.quote(tok)
        return " \\\n  ".join(lines)


def release_not_in_vllm(v: Version) -> str:
    """What vLLM can and cannot do with a rung release (it serves models and LoRA adapters)."""
    if v.kind in LLM_KINDS:
        return (
            f"{v.spec} is a {v.kind} release: the base model with a prompt builder, not an "
            "adapter. vLLM serves the base model (`vllm serve BASE`); the prompt (system prompt"
            + (", retrieved context" if v.kind != "prompt" else "")
            + ") is built by `tunewise serve`, which answers it exactly as evaluated"
        )
    return (
        f"{v.spec} is a {v.kind} release: a classifier without a language model; vLLM has "
        "nothing to serve. `tunewise serve` answers it (no GPU needed)"
    )


def check_vllm_adapter(v: Version) -> tuple[int, list[str]]:
    """(rank, problems) for one LoRA version as vLLM would see its adapter_config.json."""
    if v.kind in RELEASE_KINDS:
        return 0, [release_not_in_vllm(v)]
    if v.kind != "lora":
        return 0, [
            f"{v.spec}: a full fine-tune has no adapter; serve it as its own model "
            "(`vllm serve DIR`) or export merged"
        ]
    assert v.path is not None
    cfg = json.loads(RunDir(v.path).adapter_config.read_text())
    problems = []
    if cfg.get("peft_type", "LORA") != "LORA":
        problems.append(f"{v.spec}: peft_type {cfg.get('peft_type')} is not LoRA")
    rank = max([int(cfg.get("r", 0))] + [int(x) for x in (cfg.get("rank_pattern") or {}).values()])
    if rank > VLLM_MAX_LORA_RANKS[-1]:
        problems.append(
            f"{v.spec}: rank {rank} exceeds vLLM's largest --max-lora-rank "
            f"{VLLM_MAX_LORA_RANKS[-1]}"
        )
    targets = cfg.get("target_modules") or []
    if isinstance(targets, str):
        problems.append(f"{v.spec}: target_modules is a regex ({targets!r}); list module names")
        targets = []
    unsupported = sorted({t.split(".")[-1] for t in targets} - VLLM_LORA_MODULES)
    if unsupported:
        problems.append(
            f"{v.spec}: target modules {unsupported} are not LoRA-capable in vLLM "
            f"(supported: {sorted(VLLM_LORA_MODULES)})"
        )
    if cfg.get("use_dora"):
        problems.append(f"{v.spec}: DoRA adapters are not supported by vLLM")
    if cfg.get("modules_to_save"):
        problems.append(
            f"{v.spec}: modules_to_save={cfg['modules_to_save']} is not supported by vLLM"
        )
    if cfg.get("bias", "none") != "none" or cfg.get("lora_bias"):
        problems.append(f"{v.spec}: adapter bias is not supported by vLLM")
    return rank, problems


def trained_with_tools(v: Version) -> bool:
    """Whether ``v`` was trained on function calls (task type ``tools`` or project tools)."""
    task = (v.config or {}).get("task") or {}
    return task.get("type") == "tools" or bool(task.get("tools"))


def _jinja_str(text: str) -> str:
    return json.dumps(text)  # a JSON string is a Jinja string literal ("\n", "\"", "\uXXXX")


# Restates runtime.tool_calls.fallback_messages in Jinja, ahead of the model's own template: the
# tools as tools_prompt in the system turn, calls as <tool_call> lines, tool results as one user
# turn of <tool_response> blocks per run. Without tools or tool turns, messages pass unchanged.
_FALLBACK_JINJA = """\
{%- set tw = namespace(shaped=false, out=[], prev=false, text="", c="", parts=[]) -%}
{%- if tools -%}{%- set tw.shaped = true -%}{%- endif -%}
{%- for m in messages -%}{%- if m.role == "tool" or m.tool_calls -%}{%- set tw.shaped = true -%}\
{%- endif -%}{%- endfor -%}
{%- if tw.shaped -%}
{%- if tools -%}
{%- set tw.text = HEAD -%}
{%- for t in tools -%}
{%- set f = t.function if t.function is defined else t -%}
{%- set tw.text = tw.text ~ ("\\n" if not loop.first else "") -%}
{%- set tw.text = tw.text ~ '{"type": "function", "function": {' -%}
{%- for k, v in f.items() if v is not none -%}
{%- set tw.text = tw.text ~ (", " if not loop.first else "") -%}
{%- set tw.text = tw.text ~ (k | tojson) ~ ": " ~ (v | tojson) -%}
{%- endfor -%}
{%- set tw.text = tw.text ~ "}}" -%}
{%- endfor -%}
{%- set tw.text = tw.text ~ TAIL -%}
{%- if not messages or messages[0].role != "system" -%}
{%- set tw.out = [{"role": "system", "content": tw.text}] -%}
{%- endif -%}
{%- endif -%}
{%- for m in messages -%}
{%- if m.role == "tool" -%}
{%- set block = "<tool_response>\\n" ~ (m.content or "") ~ "\\n</tool_response>" -%}
{%- if tw.prev -%}
{%- set tw.out = tw.out[:-1] + [{"role": "user", "content": tw.out[-1].content ~ "\\n" ~ block}] -%}
{%- else -%}
{%- set tw.out = tw.out + [{"role": "user", "content": block}] -%}
{%- endif -%}
{%- set tw.prev = true -%}
{%- else -%}
{%- set tw.c = m.content if m.content is string else "" -%}
{%- if m.role == "system" and loop.first and tw.text -%}
{%- set tw.c = (tw.c | trim) ~ "\\n\\n" ~ tw.text if (tw.c | trim) else tw.text -%}
{%- endif -%}
{%- if m.role == "assistant" and m.tool_calls -%}
{%- set tw.parts = [tw.c | trim] if (tw.c | trim) else [] -%}
{%- for call in m.tool_calls -%}
{%- set fn = call.function if call.function is defined else call -%}
{%- set args = fn.arguments if fn.arguments is defined else {} -%}
{%- set args = args if args is string else (args | tojson) -%}
{%- set body = '{"name": ' ~ (fn.name | tojson) ~ ', "arguments": ' ~ args ~ '}' -%}
{%- set tw.parts = tw.parts + [OPEN ~ body ~ CLOSE] -%}
{%- endfor -%}
{%- set tw.c = tw.parts | join("\\n") -%}
{%- endif -%}
{%- set tw.out = tw.out + [{"role": m.role, "content": tw.c}] -%}
{%- set tw.prev = false -%}
{%- endif -%}
{%- endfor -%}
{%- set messages = tw.out -%}
{%- set tools = none -%}
{%- endif -%}
"""


def fallback_tool_template(template: str) -> str:
    """``template`` (a chat template that ignores tools) behind a preamble that shows tools and
    calls as tunewise's fallback prompt does (see ``runtime/tool_calls.py``)."""
    head, tail = tools_prompt_pieces()
    preamble = (
        _FALLBACK_JINJA.replace("HEAD", _jinja_str(head))
        .replace("TAIL", _jinja_str(tail))
        .replace("OPEN", _jinja_str(CALL_OPEN))
        .replace("CLOSE", _jinja_str(CALL_CLOSE))
    )
    return preamble + template


# A conversation with every shape the fallback renders: tools, a system turn, two calls in one
# turn (one with text), two results, a later question; and the same without the system turn.
_PROBE_TOOLS = [
    {"type": "function", "function": {"name": "lookup", "description": 'Find a "thing".'}},
    {
        "type": "function",
        "function": {
            "name": "book",
            "parameters": {"type": "object", "properties": {"n": {"type": "integer"}}},
        },
    },
]
_PROBE = [
    {"role": "system", "content": "Be brief. "},
    {"role": "user", "content": "Find x, then book 2."},
    {
        "role": "assistant",
        "content": "On it.",
        "tool_calls": [
            {
                "id": "a",
                "type": "function",
                "function": {"name": "lookup", "arguments": {"q": "x"}},
            },
            {"id": "b", "type": "function", "function": {"name": "book", "arguments": {"n": 2}}},
        ],
    },
    {"role": "tool", "tool_call_id": "a", "content": "x is here"},
    {"role": "tool", "tool_call_id": "b", "content": "booked"},
    {"role": "user", "content": "Thanks; and now?"},
]


def check_tool_template(tokenizer: Any, template: str) -> bool:
    """Whether ``template`` renders the probe conversations (tools passed the way vLLM passes
    them) exactly as tunewise renders them for training and evaluation."""
    for msgs in (_PROBE, _PROBE[1:]):
        ours = attach_tools([canonical_message(m) for m in msgs], _PROBE_TOOLS)
        shaped, tools = chat.tool_shaped(tokenizer, ours)
        want = tokenizer.apply_chat_template(
            shaped, tools=tools, tokenize=False, add_generation_prompt=True
        )
        try:
            got = tokenizer.apply_chat_template(
                msgs,
                tools=_PROBE_TOOLS,
                chat_template=template,
                tokenize=False,
                add_generation_prompt=True,
            )
        except Exception:  # a template our preamble breaks is not one to hand to vLLM
            return False
        if got != want:
            return False
    return True


def tool_serving(tokenizer: Any) -> ToolServing:
    """The vLLM parser (and, for the fallback, chat template) that serve the calls a model on
    ``tokenizer``'s chat template was trained to write."""
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    vocab = tokenizer.get_vocab()
    if not chat.renders_tools(tokenizer):
        wrapped = fallback_tool_template(template)
        serving = ToolServing("fallback", "hermes", True)
        if check_tool_template(tokenizer, wrapped):
            serving.chat_template = wrapped
        else:
            serving.notes.append(
                "could not restate the tools prompt in this chat template; vLLM will not show "
                "the tools as training did: serve calls through `tunewise serve`"
            )
        needs: tuple[str, ...] = (CALL_OPEN, CALL_CLOSE)
    else:
        found = [(parser, needs) for mark, parser, needs in TOOL_PARSERS if mark in template]
        if not found:
            return ToolServing(
                "native",
                None,
                False,
                notes=[
                    "the chat template renders tools in a format no known vLLM tool-call parser "
                    "reads; serve calls through `tunewise serve`, which reads them"
                ],
            )
        serving = ToolServing("native", found[0][0], True)
        needs = found[0][1]
    missing = [t for t in needs if t not in vocab]
    if missing:
        serving.usable = False
        serving.notes.append(
            f"the calls are in the format vLLM's --tool-call-parser {serving.parser} reads, but "
            f"that parser needs {' and '.join(missing)} as single tokens and this tokenizer "
            "writes them as plain text, so vLLM would refuse it; the command has no tool-call "
            "flags: serve calls through `tunewise serve` (it reads them), or train on a base "
            "whose vocabulary has them (Qwen 2.5, Hermes)"
        )
    return serving


def _tool_serving_of(versions: list[Version]) -> ToolServing | None:
    """:func:`tool_serving` for the first version trained on calls (None when none was)."""
    for v in versions:
        if not trained_with_tools(v) or v.path is None:
            continue
        folder = v.weights_dir
        if not (folder / "tokenizer_config.json").is_file():
            folder = Path(v.base_path or v.base_model or "")
        try:
            tok = models.load_tokenizer(models.ModelRef(v.spec, folder, "", "local"))
        except Exception:  # no tokenizer beside the adapter nor a local base: say so
            return ToolServing(
                "unknown",
                None,
                False,
                notes=[
                    f"{v.spec} was trained on function calls, but its chat template is not "
                    "available here to choose vLLM's --tool-call-parser"
                ],
            )
        return tool_serving(tok)
    return None


def _tool_flags(serving: ToolServing, root: Path) -> list[str]:
    flags = []
    if serving.chat_template is not None:
        flags += ["--chat-template", str(root / TOOL_TEMPLATE)]
    if serving.usable and serving.parser:
        flags += ["--enable-auto-tool-choice", "--tool-call-parser", serving.parser]
    return flags


def plan_vllm(
    specs: list[str],
    *,
    registry: Registry | None = None,
    layout: Path | None = None,
    max_lora_rank: int | None = None,
    max_loras: int | None = None,
    max_cpu_loras: int | None = None,
    tensor_parallel_size: int = 1,
) -> tuple[VllmPlan, list[Version]]:
    """Check ``specs`` for vLLM and build the serve command (paths relative to ``layout``)."""
    if not specs:
        raise UserError("name at least one registry model (NAME, NAME:VERSION or NAME@ALIAS)")
    reg = registry or Registry()
    versions = [reg.resolve(s) for s in specs]
    served = [
        v.name if sum(w.name == v.name for w in versions) == 1 else f"{v.name}-v{v.version}"
        for v in versions
    ]
    max_lora_rank, problems = _vllm_problems(versions, served, max_lora_rank)
    if problems:
        raise UserError("; ".join(problems))

    base = versions[0].base_path or versions[0].base_model or "BASE"
    max_loras = max_loras or len(versions)
    max_cpu_loras = max(max_cpu_loras or max_loras, max_loras)
    root = layout if layout is not None else Path("adapters")
    adapters = {name: root / "adapters" / name for name in served}
    cmd = [
        "vllm",
        "serve",
        str(base),
        "--enable-lora",
        "--lora-modules",
        *[f"{n}={p}" for n, p in adapters.items()],
        "--max-lora-rank",
        str(max_lora_rank),
        "--max-loras",
        str(max_loras),
        "--max-cpu-loras",
        str(max_cpu_loras),
    ]
    if tensor_parallel_size > 1:
        cmd += ["--tensor-parallel-size", str(tensor_parallel_size)]
    tools = _tool_serving_of(versions)
    warnings = list(tools.notes) if tools is not None else []
    if tools is not None:
        cmd += _tool_flags(tools, root)
    if versions[0].base_model and Path(str(base)).is_dir():
        warnings.append(
            f"base is a local folder ({base}); copy it to the serving machine or "
            "pass the hub id of the same weights"
        )
    for v, name in zip(versions, served, strict=True):
        if CONTEXT_FILE in v.files:  # train.context: the prompt carries retrieved examples
            warnings.append(
                f"{name} ({v.spec}) was trained with retrieved context (train.context): vLLM "
                "serves the adapter only, so build each prompt as tunewise does "
                f"(tunewise.baselines.context.ContextBuilder.load on its {CONTEXT_FILE}) or answer "
                "through `tunewise serve`, which does"
            )
    plan = VllmPlan(
        base=str(base),
        base_weight_hash=versions[0].base_weight_hash,
        adapters=adapters,
        max_lora_rank=max_lora_rank,
        max_loras=max_loras,
        max_cpu_loras=max_cpu_loras,
        tensor_parallel_size=tensor_parallel_size,
        command=cmd,
        warnings=warnings,
        tools=tools,
    )
    return plan, versions


def _vllm_problems(
    versions: list[Version], served: list[str], max_lora_rank: int | None
) -> tuple[int, list[str]]:
    """The ``--max-lora-rank`` to use, and everything vLLM would refuse at start-up."""
    problems: list[str] = []
    ranks = []
    for v in versions:
        rank, probs = check_vllm_adapter(v)
        ranks.append(rank)
        problems += probs
    hashes = {v.base_weight_hash for v in versions}
    if len(hashes) > 1:
        detail = ", ".join(f"{v.spec}={v.base_weight_hash[:12]}…" for v in versions)
        problems.append(
            f"adapters were trained on different base models ({detail}); "
            "one vLLM server serves LoRAs of one base"
        )
    if len(set(served)) != len(served):
        problems.append(f"two entries would be served under the same name: {served}")
    need = max(ranks) if ranks else 0
    fitting = [r for r in VLLM_MAX_LORA_RANKS if r >= need]
    if max_lora_rank is None:
        max_lora_rank = fitting[0] if fitting else VLLM_MAX_LORA_RANKS[-1]
    elif max_lora_rank not in VLLM_MAX_LORA_RANKS:
        problems.append(
            f"--max-lora-rank {max_lora_rank} is not one of vLLM's values "
            f"{list(VLLM_MAX_LORA_RANKS)}"
        )
    elif max_lora_rank < need:
        problems.append(f"--max-lora-rank {max_lora_rank} is below the largest adapter rank {need}")
    return max_lora_rank, problems


def export_vllm(
    specs: list[str],
    out: str | Path,
    *,
    force: bool = False,
    registry: Registry | None = None,
    **kwargs: Any,
) -> VllmPlan:
    """Write ``out/adapters/<name>/`` (adapter files only), ``serve.sh`` and ``manifest.json``."""
    out = Path(out)
    _out_dir_ready(out, force)
    plan, versions = plan_vllm(specs, registry=registry, layout=out.resolve(), **kwargs)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name, v in zip(plan.adapters, versions, strict=True):
            dst = tmp / "adapters" / name
            dst.mkdir(parents=True)
            assert v.path is not None
            adapter = RunDir(v.path)
            for f in (adapter.adapter_config, adapter.adapter_weights):
                shutil.copyfile(f, dst / f.name)
        if plan.tools is not None and plan.tools.chat_template is not None:
            atomic_write_text(tmp / TOOL_TEMPLATE, plan.tools.chat_template)
        atomic_write_text(
            tmp / "serve.sh",
            "#!/bin/sh\n# generated by tunewise export vllm\nexec " + plan.shell + "\n",
        )
        os.chmod(tmp / "serve.sh", 0o755)
        atomic_write_json(
            tmp / "manifest.json",
            {
                "base": plan.base,
                "base_weight_hash": plan.base_weight_hash,
                "adapters": {
                    n: {
                        "spec": v.spec,
                        "path": str(p),
                        "files": {k: h for k, h in v.files.items() if k.startswith("adapter_")},
                    }
                    for (n, p), v in zip(plan.adapters.items(), versions, strict=True)
                },
                "command": plan.command,
                "max_lora_rank": plan.max_lora_rank,
                "max_loras": plan.max_loras,
                "max_cpu_loras": plan.max_cpu_loras,
                "tool_calls": _tools_manifest(plan.tools),
                "warnings": plan.warnings,
            },
        )
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return plan


def _tools_manifest(serving: ToolServing | None) -> dict[str, Any] | None:
    if serving is None:
        return None
    return {
        "format": serving.format,
        "tool_call_parser": serving.parser,
        "parser_usable": serving.usable,
        "chat_template": TOOL_TEMPLATE if serving.chat_template is not None else None,
    }
