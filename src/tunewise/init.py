"""``tunewise init DATA.jsonl``: scaffold a validated ``project.yaml`` from the data itself.

The task type, output format, allowed labels, graders and primary metric are inferred from the
assistant outputs (:func:`tunewise.data.formats.infer_format`), then written as a commented YAML
file that the user edits. The file is validated by loading it back before it is kept.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from tunewise.config import load_project
from tunewise.data.formats import OutputFormat, infer_format
from tunewise.data.schema import load_examples
from tunewise.errors import UserError
from tunewise.fsio import atomic_write_text


def _json_schema(fmt: OutputFormat, targets: list[str]) -> dict[str, Any]:
    import json

    types: dict[str, Counter[str]] = {k: Counter() for k in fmt.fields}
    names = {
        str: "string",
        int: "integer",
        float: "number",
        bool: "boolean",
        list: "array",
        dict: "object",
    }
    for t in targets:
        try:
            obj = json.loads(t)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            for k in fmt.fields:
                if k in obj:
                    types[k][names.get(type(obj[k]), "string")] += 1
    props: dict[str, Any] = {}
    for k, counter in types.items():
        props[k] = {"type": counter.most_common(1)[0][0] if counter else "string"}
        if k in fmt.labels:
            props[k]["enum"] = fmt.labels[k]
    return {"type": "object", "properties": props, "required": list(fmt.fields)}


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (system prompts) as ``|-`` blocks, so they read as the prompt itself."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # PyYAML falls back to a quoted style by itself when a block cannot hold the text exactly.
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)

# LoRA on the 135M default model, measured on 2 idle CPU cores; a GPU is far faster. Tokens the
# model computes: a prefix shared by a batch (train.shared_prefix) counts once per batch.
CPU_TOKENS_PER_S = 250
PREFIX_SAMPLE = 64  # examples whose common token prefix estimates the one training shares


def _shared_prefix_tokens(tok: Any, examples: list[Any], system_prompt: str) -> int:
    """Tokens every training example starts with, as the chat template renders them with the
    project's system prompt (a spread sample; training measures each batch's own)."""
    step = max(1, len(examples) // PREFIX_SAMPLE)
    ids = [
        tok(
            tok.apply_chat_template(e.with_system(system_prompt).messages, tokenize=False),
            add_special_tokens=False,
        )["input_ids"]
        for e in examples[::step][:PREFIX_SAMPLE]
    ]
    limit, first, n = min(len(x) for x in ids) - 1, ids[0], 0
    while n < limit and all(x[n] == first[n] for x in ids):
        n += 1
    return n


def _cost_notes(
    examples: list[Any], model: str, system_prompt: str, epochs: float, train_frac: float
) -> list[str]:
    """Tokens per example (and the system prompt's share) and a CPU time estimate for training.

    The estimate counts what the model computes: with ``train.shared_prefix: auto`` (the
    default) a prefix every example shares runs once per batch. Only when the model is already
    local: init must stay instant and never download or convert.
    """
    from tunewise import models, paths
    from tunewise.config import TrainConfig
    from tunewise.data.checks import token_lengths
    from tunewise.train.prefix import MIN_PREFIX_TOKENS, MIN_SAVED_FRACTION

    if model in models.EMBEDDED and not (paths.models_dir() / model / models.MARKER).is_file():
        return [
            f"token lengths not measured ({model} is not converted yet): "
            "`tunewise data check` measures them"
        ]
    try:
        tok = models.load_tokenizer(models.resolve(model, allow_download=False))
        lengths = token_lengths(tok, [e.messages for e in examples])
        sys_tokens = (
            len(tok(system_prompt, add_special_tokens=False)["input_ids"]) if system_prompt else 0
        )
        prefix = _shared_prefix_tokens(tok, examples, system_prompt)
    except Exception as err:  # an estimate is a courtesy; never fail init over it
        return [f"token lengths not measured: {err}"]
    mean = sum(lengths) / len(lengths)
    n_train = max(1, round(len(examples) * train_frac))
    per_epoch = mean * n_train
    batch = TrainConfig().batch_size
    saved = prefix * (n_train - -(-n_train // batch))  # all but one row per batch skip it
    sharing = prefix >= MIN_PREFIX_TOKENS and saved >= MIN_SAVED_FRACTION * per_epoch
    computed = per_epoch - saved if sharing else per_epoch
    minutes = computed * epochs / CPU_TOKENS_PER_S / 60
    notes = [
        f"{mean:.0f} tokens per example on average (longest {max(lengths)}); the system prompt is "
        f"{sys_tokens} of them"
        + (
            f"; the {prefix} tokens every example starts with run once per batch of {batch} "
            f"(train.shared_prefix: auto), so an epoch computes {computed / 1000:.0f}k tokens, "
            f"not {per_epoch / 1000:.0f}k"
            if sharing
            else " and is paid on every training example"
        )
    ]
    note = (
        f"training cost: {computed / 1000:.0f}k tokens computed per epoch x {epochs:g} "
        f"epoch(s): ~{minutes:.0f} min of LoRA on 2 CPU cores (~{CPU_TOKENS_PER_S} tokens/s), "
        "minutes on a GPU"
    )
    if minutes > 15:
        note += "; on a CPU, set train.max_steps or fewer epochs to try the ladder first"
    return [*notes, note]


def propose(
    fmt: OutputFormat, targets: list[str]
) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """(task section, eval section, human-readable reasons) for an inferred output format."""
    notes: list[str] = []
    task: dict[str, Any]
    if fmt.kind in ("fields", "label") and fmt.label_fields:
        task = {"type": "labels", "output_pattern": fmt.regex, "labels": fmt.labels}
        ev = {"graders": ["format", "label", "exact"], "primary_metric": "accuracy"}
        sizes = ", ".join(f"{k}: {len(v)} values" for k, v in fmt.labels.items())
        notes.append(
            f"task type: labels; outputs look like `{fmt.pattern!s}` ({sizes}); "
            f"{fmt.coverage:.0%} of outputs match"
        )
        notes.append(
            "graders: format compliance, label accuracy/macro-F1, exact match; "
            "primary metric: accuracy"
        )
    elif fmt.kind == "json":
        task = {"type": "json", "json_schema": _json_schema(fmt, targets)}
        ev = {"graders": ["json", "exact"], "primary_metric": "exact_match"}
        notes.append(
            f"task type: json; objects with keys {', '.join(fmt.fields)}; "
            "schema inferred from the data"
        )
        notes.append(
            "graders: JSON validity and schema conformance, exact match; "
            "primary metric: exact_match"
        )
    else:
        task = {"type": "text"}
        ev = {"graders": ["exact", "judge"], "primary_metric": "judge"}
        notes.append("task type: text (free-form answers)")
        notes.append(
            "graders: exact match and an LLM judge with a fixed rubric; primary metric: judge "
            "(set eval.judge_model to a stronger model or an external endpoint if you have one)"
        )
    return task, ev, notes


def _choose_system_prompt(examples: list[Any], task: dict[str, Any], notes: list[str]) -> None:
    """The data's most common system prompt into ``task``, or a placeholder to be rewritten."""
    systems = Counter(
        e.messages[0]["content"] for e in examples if e.messages[0]["role"] == "system"
    )
    if systems:
        prompt, count = systems.most_common(1)[0]
        task["system_prompt"] = prompt
        notes.append(
            f"system prompt: taken from the data ({count}/{len(examples)} examples use it)"
        )
    else:
        task["system_prompt"] = (
            "You are a helpful assistant. Answer in exactly the format of the examples."
        )
        notes.append(
            "system prompt: none in the data; a placeholder was written: make it a good prompt, "
            "it is the first baseline"
        )


def _project_name(name: str | None, data: Path) -> str:
    """``name`` (or the data file's stem) reduced to characters safe in paths and run ids."""
    project_name = name or data.stem
    return (
        "".join(c if c.isalnum() or c in "._-" else "-" for c in project_name)[:64].strip("-")
        or "project"
    )


def _write_validated(out: Path, target: Path, text: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    # Validate before keeping: write beside the target, load it back, then rename over.
    probe = out / ".project.yaml.probe"
    atomic_write_text(probe, text)
    try:
        load_project(probe)
    finally:
        probe.unlink(missing_ok=True)
    atomic_write_text(target, text)


def init_project(
    data: Path,
    *,
    out: Path | None = None,
    name: str | None = None,
    docs: Path | None = None,
    force: bool = False,
) -> tuple[Path, list[str]]:
    """Write ``out/project.yaml`` for ``data``; returns its path and what was inferred."""
    data = Path(data).resolve()
    examples = load_examples(data)  # a DataError (exit 2) names the file, line and field
    if len(examples) < 20:
        raise UserError(
            f"{data}: only {len(examples)} examples; "
            "tunewise needs at least 20 to split and evaluate"
        )
    out = Path(out).resolve() if out else data.parent
    target = out / "project.yaml"
    if target.exists() and not force:
        raise UserError(f"{target}: already exists (use --force to overwrite)")
    targets = [e.target for e in examples]
    fmt = infer_format(targets)
    task, ev, notes = propose(fmt, targets)
    _choose_system_prompt(examples, task, notes)
    if docs is None and (data.parent / "docs").is_dir():
        docs = data.parent / "docs"
    n = len(examples)
    # Each split needs enough items for the paired tests to mean something.
    val = 0.1 if n >= 1000 else 0.15 if n >= 300 else 0.2
    raw: dict[str, Any] = {
        "name": _project_name(name, data),
        "task": task,
        "data": {
            "train": os.path.relpath(data, out),
            **({"docs": os.path.relpath(Path(docs).resolve(), out)} if docs else {}),
            "split": {"val": val, "test": val, "seed": 0},
        },
        "model": {"base": "smollm2-135m-instruct"},
        "train": {"method": "lora", "epochs": 2 if n < 2000 else 1},
        "eval": {**ev, "candidates": ["prompt", "fewshot", "rag", "finetuned"]},
        "gate": {"alpha": 0.05, "delta": 0.02},
    }
    if not docs:
        raw["eval"]["rag"] = {"sources": ["train"]}
        notes.append("RAG rung: no docs folder, so it retrieves labelled train examples (kNN)")
    notes.append(f"{n} examples; validation and sealed test get {val:.0%} each")
    notes += _cost_notes(
        examples, raw["model"]["base"], task["system_prompt"], raw["train"]["epochs"], 1 - 2 * val
    )
    header = (
        "# tunewise project, scaffolded by `tunewise init` from the data. Edit freely.\n"
        "# Every field and its default is documented in tunewise/config.py and the README.\n"
        "# The ladder: `tunewise run project.yaml`; the sealed test once at the end: add --final.\n"
    )
    text = header + yaml.dump(raw, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
    _write_validated(out, target, text)
    return target, notes
