"""``tunewise init DATA.jsonl``: scaffold a validated ``project.yaml`` from the data itself.

The task type, output format, allowed labels, graders and primary metric are inferred from the
assistant outputs (:func:`tunewise.data.formats.infer_format`), then written as a commented YAML
file that the user edits. Data with function calls (``tool_calls`` turns, or ``tools`` on its
lines) is a tools task, graded per call (:func:`propose_tools`). The file is validated by loading
it back before it is kept.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tunewise import paths
from tunewise.config import TOOLS_GRADERS, TOOLS_PRIMARY, ProjectConfig, load_project
from tunewise.data.formats import OutputFormat, infer_format
from tunewise.data.schema import group_references, input_text, load_examples
from tunewise.errors import UserError
from tunewise.fsio import atomic_write_text
from tunewise.ladder import estimate  # a module: tests replace estimate.calibrate
from tunewise.ladder.estimate import human_time, optimizer_steps
from tunewise.runtime import chat, device, models
from tunewise.runtime.tool_calls import tool_names


def _json_schema(fmt: OutputFormat, targets: list[str]) -> dict[str, Any]:
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

TARGET_STEPS = 300  # optimizer steps that trained CLINC's 20 intents well (docs/walkthrough-clinc)
BATCH_CHOICES = (8, 4)  # largest first: fewer, fuller steps when the data allows; 4 at least


def choose_batch(n_train: int, epochs: float) -> tuple[int, str]:
    """The largest batch of :data:`BATCH_CHOICES` whose epochs give ~300 optimizer steps, and why.

    Below batch 4 each step sees too few examples to be worth its noise, so a small train set
    keeps batch 4 and is told that it cannot reach the steps (and what would)."""
    for batch in BATCH_CHOICES:
        steps = optimizer_steps(n_train, batch, 1, epochs)
        if steps >= TARGET_STEPS:
            return batch, (
                f"batch size {batch}: {epochs:g} epoch(s) of {n_train} training examples give "
                f"{steps} optimizer steps (at least ~{TARGET_STEPS})"
            )
    batch = BATCH_CHOICES[-1]
    steps = optimizer_steps(n_train, batch, 1, epochs)
    return batch, (
        f"batch size {batch}: {epochs:g} epoch(s) of {n_train} training examples give only "
        f"{steps} optimizer steps, fewer than ~{TARGET_STEPS}, because train is small (a batch "
        f"under {batch} adds noise, not learning); more examples, or train.epochs up to 3, add "
        "steps"
    )


@dataclass
class CostEstimate:
    """What init learned about cost: notes for the user and the constrained scoring's share."""

    notes: list[str]
    constrained_s: float | None = None


def _cost_notes(cfg: ProjectConfig, examples: list[Any]) -> CostEstimate:
    """Tokens per example (and the system prompt's share), then one cost line per part of the
    ladder at this machine's measured speed (:mod:`tunewise.ladder.estimate`).

    An embedded model is converted first if it is not yet (it is needed anyway, and converting
    here beats asking for a rerun); a hub model is never downloaded by init.
    """
    try:
        ref = models.resolve(cfg.model.base, allow_download=False)
        tok = models.load_tokenizer(ref)
        system_prompt = cfg.task.system_prompt
        sys_tokens = (
            len(tok(system_prompt, add_special_tokens=False)["input_ids"]) if system_prompt else 0
        )
        work = estimate.workload_of(cfg, examples, tok)
        prefix = work.prefix_tokens
        placement = device.for_project(cfg, "infer")
        text = chat.render_for_count(tok, examples[0].with_system(system_prompt).messages)
        speed = estimate.calibrate(
            ref,
            text,
            placement=placement,
            eval_batch=cfg.eval.batch_size,
        )
        estimate.save_speed(paths.home(), ref.weight_hash, placement.device, speed)
    except UserError as err:
        return CostEstimate([f"cost not estimated: {err}"])
    except Exception as err:  # an estimate is a courtesy; never fail init over it
        return CostEstimate([f"cost not estimated: {type(err).__name__}: {err}"])
    batch = cfg.train.batch_size
    plain = work.example_tokens * work.n_train
    sharing = work.train_tokens_per_epoch < plain  # the workload counts the prefix when it pays
    notes = [
        f"{work.example_tokens:.0f} tokens per example on average (longest "
        f"{work.longest_example}); the system prompt is "
        f"{sys_tokens} of them"
        + (
            f"; the {prefix} tokens every example starts with run once per batch of {batch} "
            f"(train.shared_prefix: auto), so an epoch computes "
            f"{work.train_tokens_per_epoch / 1000:.0f}k tokens, not {plain / 1000:.0f}k"
            if sharing
            else " and is paid on every training example"
        ),
        f"speed on this machine ({speed.source}): prompts {speed.prefill_tps:.0f} tokens/s, "
        f"{speed.decode_step_s:.2f} s per decoding step of {speed.decode_batch} rows, label "
        f"scoring {speed.score_tps:.0f} tokens/s; training ~{speed.train_tps:.0f} tokens/s "
        f"(prompt speed / {estimate.TRAIN_COST_RATIO:g} until a training run here measures it); "
        f"the model is in {ref.path}",
    ]
    lines = estimate.estimate(cfg, work, speed)
    notes += [f"cost: {line.render()}" for line in lines]
    before_final = sum(line.seconds for line in lines if not line.stage.startswith("final"))
    notes.append(
        f"cost: the ladder without --final {estimate.human_time(before_final)}; "
        "`tunewise run --dry-run` prices it again, stage by stage"
    )
    training = next(line for line in lines if line.stage == "training")
    if training.seconds > 15 * 60 and placement.device == "cpu":
        notes.append("on a CPU, set train.max_steps or fewer epochs to try the ladder first")
    constrained = next((ln for ln in lines if ln.stage == "constrained scoring"), None)
    return CostEstimate(notes, constrained.seconds if constrained else None)


def propose(
    fmt: OutputFormat, targets: list[str], targets_by_prompt: dict[str, int] | None = None
) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """(task section, eval section, human-readable reasons) for an inferred output format.
    ``targets_by_prompt`` counts the references of each distinct prompt (free text says how many
    inputs have several)."""
    targets_by_prompt = targets_by_prompt or {}
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
        # Every example's answer is a reference, so a reference metric can decide. chrF, not BLEU:
        # on single sentences BLEU is often 0 for want of a 4-gram match, and chrF's character
        # n-grams agree better with people (WMT metrics tasks). No judge by default: with no
        # eval.judge_model the judge is the base model, no stronger than the candidates.
        ev = {"graders": ["chrf", "bleu", "rougeL", "exact"], "primary_metric": "chrf"}
        notes.append("task type: text (free-form answers)")
        notes.append(
            "graders: chrF, BLEU and ROUGE-L against the references, exact match; primary "
            f"metric: chrf{_references_note(targets_by_prompt)}"
        )
        notes.append(
            "no LLM judge: without eval.judge_model it would be the base model judging itself, "
            "which is not evidence; to add one, set eval.judge_model (an external endpoint or a "
            "larger local model) and add judge to eval.graders"
        )
    return task, ev, notes


def calls_tools(examples: list[Any]) -> bool:
    """Whether the data is about function calls: a line lists tools or a turn makes calls."""
    return any(e.tools or any(m.get("tool_calls") for m in e.messages) for e in examples)


def propose_tools(examples: list[Any]) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """(task section, eval section, reasons) for data whose answers are function calls.

    When every line lists the same tools they are written as ``task.tools`` (the lines' own stay,
    and are the same); when lines differ each keeps its own and ``task.tools`` is left unset."""
    task: dict[str, Any] = {"type": "tools"}
    calls = [m.get("tool_calls") or [] for m in (e.messages[-1] for e in examples)]
    names = Counter(c["function"]["name"] for turn in calls for c in turn)
    calling = sum(1 for turn in calls if turn)
    shown = ", ".join(f"{n} {k}" for n, k in names.most_common(8)) + (", ..." * (len(names) > 8))
    notes = [
        f"task type: tools; {calling} of {len(examples)} answers call a function"
        + (f" ({shown})" if shown else "")
        + (", the others answer in text" if calling < len(examples) else "")
    ]
    lists = {json.dumps(e.tools, sort_keys=True) for e in examples}
    if len(lists) == 1 and examples[0].tools:
        task["tools"] = examples[0].tools
        listed = ", ".join(tool_names(examples[0].tools))
        notes.append(f"task.tools: the functions every line lists ({listed})")
    elif any(e.tools for e in examples):
        notes.append("tools differ between lines: each line keeps its own (task.tools unset)")
    else:
        notes.append(
            "no tools in the data: set task.tools (the functions' JSON schemas) so that every "
            "prompt shows them and call_schema_valid can check the arguments"
        )
    ev = {"graders": list(TOOLS_GRADERS), "primary_metric": TOOLS_PRIMARY}
    notes.append(
        "graders: call accuracy (name and arguments exactly right), function-name accuracy, "
        "argument precision/recall/F1, schema validity of the calls (the format guard), calls "
        f"made where none was due and calls missed; primary metric: {TOOLS_PRIMARY}"
    )
    return task, ev, notes


def _references_note(targets_by_prompt: dict[str, int]) -> str:
    """How many inputs carry several references (a ``references`` field, or lines that share a
    prompt), said in init's notes: the scores use them all."""
    several = sum(1 for n in targets_by_prompt.values() if n > 1)
    if not several:
        return " (one reference per input)"
    return f" ({several} of {len(targets_by_prompt)} inputs have several references; all count)"


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


def _validated(out: Path, text: str) -> ProjectConfig:
    """The config ``text`` describes, loaded back from a probe file beside the target (so that
    relative paths resolve as they will): nothing is kept unless it loads."""
    out.mkdir(parents=True, exist_ok=True)
    probe = out / ".project.yaml.probe"
    atomic_write_text(probe, text)
    try:
        return load_project(probe)
    finally:
        probe.unlink(missing_ok=True)


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
    if calls_tools(examples):
        task, ev, notes = propose_tools(examples)
    else:
        targets = [e.target for e in examples]
        refs = {input_text(g): len(g.references) for g in group_references(examples)}
        task, ev, notes = propose(infer_format(targets), targets, refs)
    _choose_system_prompt(examples, task, notes)
    if docs is None and (data.parent / "docs").is_dir():
        docs = data.parent / "docs"
    n = len(examples)
    # Each split needs enough items for the paired tests to mean something.
    val = 0.1 if n >= 1000 else 0.15 if n >= 300 else 0.2
    epochs = 2 if n < 2000 else 1
    batch, batch_note = choose_batch(n - 2 * round(n * val), epochs)
    raw: dict[str, Any] = {
        "name": _project_name(name, data),
        "task": task,
        "data": {
            "train": os.path.relpath(data, out),
            **({"docs": os.path.relpath(Path(docs).resolve(), out)} if docs else {}),
            "split": {"val": val, "test": val, "seed": 0},
        },
        "model": {"base": "smollm2-135m-instruct"},
        "train": {"method": "lora", "epochs": epochs, "batch_size": batch},
        "eval": {**ev, "candidates": ["prompt", "fewshot", "rag", "finetuned"]},
        "gate": {"alpha": 0.05, "delta": 0.02},
    }
    if task["type"] == "labels":  # on by default, and costly: written out so it can be seen
        raw["eval"]["constrained"] = True
    if not docs:
        raw["eval"]["rag"] = {"sources": ["train"]}
        notes.append("RAG rung: no docs folder, so it retrieves labelled train examples (kNN)")
    notes.append(f"{n} examples; validation and sealed test get {val:.0%} each")
    notes.append(batch_note)
    header = (
        "# tunewise project, scaffolded by `tunewise init` from the data. Edit freely.\n"
        "# Every field and its default: docs/project-yaml.md of tunewise, and its README.\n"
        "# The ladder: `tunewise run project.yaml`; the sealed test once at the end: add --final.\n"
        "# What each stage will cost here, without running it: `tunewise run --dry-run`.\n"
    )
    text = header + yaml.dump(raw, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
    cfg = _validated(out, text)
    cost = _cost_notes(cfg, examples)
    notes += cost.notes
    atomic_write_text(target, _comment_constrained(text, cost.constrained_s))
    return target, notes


def _comment_constrained(text: str, seconds: float | None) -> str:
    """``eval.constrained`` with a comment on what it costs (measured when init could)."""
    price = f"{human_time(seconds)} on this machine" if seconds is not None else "costly on a CPU"
    comment = (
        f"  # every allowed label scored by log-likelihood for each local candidate: {price}; "
        "false: free generation only"
    )
    return text.replace("\n  constrained: true\n", f"\n  constrained: true{comment}\n", 1)
