"""What a ladder will cost on this machine, stage by stage, before anything runs.

Two halves, kept apart so each can be tested alone:

* :class:`Speed`: how fast this machine runs the model, in three figures the ladder's work is
  made of: training tokens/s (LoRA forward + backward), prompt tokens/s without gradients
  (prefill; constrained label scoring is the same kind of work), and seconds per greedy decoding
  step of one evaluation batch. :func:`calibrate` measures them in a few seconds; the last
  measurement is kept in ``$TUNEWISE_HOME/speed.json`` per model and device, and a finished
  training run of the project overrides the training figure with what it really did
  (:func:`recorded_speed`). Nothing here assumes a constant.
* :class:`Workload`: what the project asks for, in tokens: examples per split, prompt tokens per
  rung, answer tokens, labels to score, training tokens per epoch and steps
  (:func:`workload_of`). :func:`estimate` multiplies the two into one :class:`CostLine` per part:
  baselines, constrained scoring, training, evaluating the fine-tune, the sealed final test.

The figures are estimates of compute, not of waiting on a busy machine; they are as good as the
calibration, which runs under the machine's load at that moment.
"""

from __future__ import annotations

import inspect
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunewise.candidates import NO_LLM, is_finetune_name
from tunewise.config import ProjectConfig
from tunewise.data.labels import LabelSpec
from tunewise.data.schema import expand_references, group_references, load_examples
from tunewise.fsio import atomic_write_json
from tunewise.rungs import RUNGS
from tunewise.runtime import chat, models
from tunewise.runtime.decoding import new_cache, score_continuations
from tunewise.train.budget import loss_item_cap, overfit_max_new_tokens, simulate
from tunewise.train.prefix import MIN_PREFIX_TOKENS, MIN_SAVED_FRACTION

SPEED_FILE = "speed.json"
# A few seconds on 2 CPU cores: rows x tokens big enough for the matmuls to run at their usual
# rate, small enough that init stays quick on a loaded machine.
CALIBRATION_TOKENS = 64
CALIBRATION_ROWS = 4  # prefill and scoring rows
MAX_DECODE_ROWS = 16  # decoding is measured at eval.batch_size rows, up to this
DECODE_PROMPT_TOKENS = 16
DECODE_STEPS = 3
REPEATS = 2
# Training tokens/s = prompt tokens/s / this, until a training run of the project measures it
# (recorded_speed). Timing a LoRA step directly was tried: its first passes run 10-30x slower
# than its steady pace on a loaded CPU, so a quick calibration measured noise. Forward + backward
# is ~3 forward passes of compute; 3.5 is the steady-state ratio measured for SmolLM2-135M on
# 2 CPU cores (64-token LoRA step ~1.2 s against 256 prompt tokens in ~1.35 s).
TRAIN_COST_RATIO = 3.5
SCORED_ANSWERS = 16  # a constrained-scoring call of this many answers ...
ANSWER_TOKENS = 6  # ... of this many tokens each (a label and the end of turn)
PREFIX_SAMPLE = 64  # examples whose common token prefix estimates the one training shares
SAMPLE = 2000  # examples whose tokens are counted (a spread sample beyond that)


@dataclass(frozen=True)
class Speed:
    """How fast this machine runs one model (see the module docstring)."""

    train_tps: float  # training tokens/s, LoRA forward + backward (derived until a run measures)
    prefill_tps: float  # prompt tokens/s without gradients (prefill, validation loss)
    decode_step_s: float  # seconds per greedy step of a batch of ``decode_batch`` rows
    decode_batch: int
    source: str  # said beside every estimate: "measured now on cpu", "calibrated ...", ...
    score_tps: float = 0.0  # constrained scoring: (prompt + padded answers) tokens/s; 0: prefill

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Workload:
    """The ladder's work in tokens and items."""

    n_train: int
    n_val: int  # validation items evaluated (after eval.limit)
    n_val_loss: int  # validation items the trainer's loss pass reads (train.val_loss_items)
    n_test: int
    prompt_tokens: dict[str, float]  # rung -> mean prompt tokens per item
    max_new_tokens: int
    label_combinations: int  # 0 when no constrained scoring (not a labels task, or off)
    label_tokens: float  # tokens of one scored answer: the longest (answers are padded to it)
    example_tokens: float  # mean tokens of a whole training example
    longest_example: int  # tokens of the longest one (of the counted sample)
    train_tokens_per_epoch: float  # what the model computes (a shared prefix counted once/batch)
    prefix_tokens: int  # tokens every example starts with (0 when not measured)
    steps: int  # optimizer steps
    epochs: float
    overfit_new_tokens: int = 32  # tokens the overfitting check generates per prompt, at most

    @property
    def context_tokens(self) -> dict[str, float]:
        """train.context -> tokens its retrieved context adds to an example: what the rung's
        prompt has beyond the plain one (a context-trained run reads the rung's prompt)."""
        plain = self.prompt_tokens["prompt"]
        return {"none": 0.0, **{c: self.prompt_tokens[c] - plain for c in ("fewshot", "rag")}}


@dataclass(frozen=True)
class CostLine:
    """One part of the ladder's cost; ``stages`` splits it among the ladder's stages."""

    stage: str
    seconds: float
    detail: str
    stages: dict[str, float] = field(default_factory=dict)

    def render(self) -> str:
        return f"{self.stage}: {human_time(self.seconds)} ({self.detail})"


def human_time(seconds: float) -> str:
    if seconds < 90:
        return f"~{max(1, round(seconds))} s"
    if seconds < 5400:
        return f"~{seconds / 60:.0f} min"
    return f"~{seconds / 3600:.1f} h"


# --- the estimate ---------------------------------------------------------------------------------


def _generation_s(speed: Speed, w: Workload, prompt_tokens: float, items: int) -> float:
    """Items of greedy generation: each prompt once (the prefix every prompt shares once per
    batch, as :func:`tunewise.runtime.decoding.prefill` runs it), then up to ``max_new_tokens``
    steps."""
    batches = math.ceil(items / max(1, speed.decode_batch))
    shared = min(w.prefix_tokens, prompt_tokens - 1)
    prompts = items * (prompt_tokens - shared) + batches * shared
    return prompts / speed.prefill_tps + batches * w.max_new_tokens * speed.decode_step_s


def _scoring_s(speed: Speed, w: Workload, prompt_tokens: float, items: int) -> float:
    """Constrained scoring: each prompt once, then every allowed answer on the shared prompt."""
    per_item = prompt_tokens + w.label_combinations * w.label_tokens
    return items * per_item / (speed.score_tps or speed.prefill_tps)


def _tuned_prompt(w: Workload, context: str) -> float:
    """Prompt tokens of a fine-tune's evaluation item: its training context's rung prompt (a run
    trained with few-shot context is evaluated and served with it), else the plain prompt."""
    return w.prompt_tokens.get(context, w.prompt_tokens["prompt"])


def estimate(
    cfg: ProjectConfig, w: Workload, speed: Speed, *, runs: Mapping[str, str] | None = None
) -> list[CostLine]:
    """One line per part of the ladder: baselines, constrained scoring, training, evaluating the
    fine-tune, the sealed final test (only with ``--final``, but priced here so it is no
    surprise). ``runs`` maps each training stage to its ``train.context`` (methods x variants x
    seeds; default one run, ``train.context``): a context-trained run reads and is evaluated on
    longer prompts, so it is priced on its own."""
    runs = dict(runs or {f"train-{cfg.train.method}": cfg.train.context})
    baselines = [c for c in cfg.eval.candidates if c in RUNGS]
    others = [c for c in cfg.eval.candidates if c not in RUNGS and not is_finetune_name(c)]
    mnt = w.max_new_tokens
    lines: list[CostLine] = []
    gen = {r: _generation_s(speed, w, w.prompt_tokens[r], w.n_val) for r in baselines}
    no_llm = [c for c in others if c in NO_LLM]
    parts = ", ".join(f"{r} {human_time(s)}" for r, s in gen.items())
    lines.append(
        CostLine(
            "baselines",
            sum(gen.values()),
            f"{parts or 'none'}: {w.n_val} validation items, prompt + up to {mnt} new tokens"
            + (f"; {', '.join(no_llm)}: no LLM, seconds" if no_llm else ""),
        )
    )
    finetunes = len(runs)
    tuned_prompts = [_tuned_prompt(w, c) for c in runs.values()]
    if w.label_combinations:
        per_rung = {r: _scoring_s(speed, w, w.prompt_tokens[r], w.n_val) for r in baselines}
        tuned = sum(_scoring_s(speed, w, p, w.n_val) for p in tuned_prompts)
        total = sum(per_rung.values()) + tuned
        lines.append(
            CostLine(
                "constrained scoring",
                total,
                f"eval.constrained: {w.label_combinations} answers scored per item for "
                f"{len(baselines)} rung(s) and {finetunes} fine-tune(s); "
                "eval.constrained: false saves it",
                stages={"baselines": total - tuned, "evaluate": tuned},
            )
        )
    lines.append(_training_line(cfg, w, speed, runs))
    tuned_gen = sum(_generation_s(speed, w, p, w.n_val) for p in tuned_prompts)
    lines.append(
        CostLine(
            "evaluate the fine-tune",
            tuned_gen,
            f"{w.n_val} validation items" + (f", {finetunes} runs" if finetunes > 1 else ""),
        )
    )
    # --final scores exactly what validation did: the listed rungs, and every fine-tune when
    # none ships (the shipped one alone when one does), constrained too when it is on.
    test_s = sum(_generation_s(speed, w, w.prompt_tokens[r], w.n_test) for r in baselines)
    test_s += sum(_generation_s(speed, w, p, w.n_test) for p in tuned_prompts)
    if w.label_combinations:
        test_s += sum(_scoring_s(speed, w, w.prompt_tokens[r], w.n_test) for r in baselines)
        test_s += sum(_scoring_s(speed, w, p, w.n_test) for p in tuned_prompts)
    tuned_what = "the fine-tune" if finetunes == 1 else f"up to {finetunes} fine-tunes"
    lines.append(
        CostLine(
            "final test (--final, once)",
            test_s,
            f"{w.n_test} sealed items: {len(baselines)} listed rung(s) and {tuned_what}"
            + (", constrained too" if w.label_combinations else ""),
        )
    )
    return lines


def _overfit_check_s(cfg: ProjectConfig, w: Workload, speed: Speed, extra: float) -> float:
    """One overfitting check: ``train.overfit_sample`` validation prompts, prefilled, then greedy
    steps up to its cap, as one batch (:func:`tunewise.train.callbacks.generate_greedy`)."""
    rows = min(cfg.train.overfit_sample, max(w.n_val, w.n_val_loss))
    if rows == 0:
        return 0.0
    prompt = w.prompt_tokens["prompt"] + extra
    return rows * prompt / speed.prefill_tps + w.overfit_new_tokens * speed.decode_step_s


def _passes(cfg: ProjectConfig, w: Workload, train_s: float, pass_s: float) -> int:
    """Validation passes a run makes: every ``eval_every`` steps and at the last one, or with
    ``auto`` as many as ``train.eval_budget`` allows, by the trainer's own rule
    (:func:`tunewise.train.budget.simulate`) at these speeds."""
    t = cfg.train
    if isinstance(t.eval_every, int):
        return math.ceil(w.steps / t.eval_every)
    return len(simulate(w.steps, train_s / w.steps, pass_s, t.eval_budget)[0])


def _validation_note(cfg: ProjectConfig, w: Workload, passes: list[int], seconds: float) -> str:
    """The training line's words about validation: how many passes, over what, at what cost."""
    t = cfg.train
    counts = "/".join(str(n) for n in sorted(set(passes)))
    what = f"loss over {w.n_val_loss} items"
    if t.overfit_sample:
        what += f" + the overfitting check's {t.overfit_sample} generations"
    if isinstance(t.eval_every, int):
        return f"{counts} validation pass(es) ({what}) every {t.eval_every} steps: " + human_time(
            seconds
        )
    return (
        f"{counts} validation pass(es) ({what}) fit in train.eval_budget "
        f"{t.eval_budget:.0%} (eval_every auto): {human_time(seconds)}"
    )


def _training_line(cfg: ProjectConfig, w: Workload, speed: Speed, runs: dict[str, str]) -> CostLine:
    """Training, per run: its epochs' tokens at the training speed, and its validation passes
    (loss at the prompt speed, the overfitting check's generations at the decoding speed); a
    context-trained run's examples carry the retrieved context (not part of the shared prefix:
    it differs per example) in both."""
    per_stage: dict[str, float] = {}
    val_total = 0.0
    passes: list[int] = []
    for stage, context in runs.items():
        extra = w.context_tokens.get(context, 0.0)
        per_epoch = w.train_tokens_per_epoch + extra * w.n_train
        train_s = per_epoch * w.epochs / speed.train_tps
        pass_s = w.n_val_loss * (w.example_tokens + extra) / speed.prefill_tps
        pass_s += _overfit_check_s(cfg, w, speed, extra)
        passes.append(_passes(cfg, w, train_s, pass_s))
        per_stage[stage] = train_s + passes[-1] * pass_s
        val_total += passes[-1] * pass_s
    with_context = sorted({c for c in runs.values() if w.context_tokens.get(c)})
    context_note = ""
    for c in with_context:
        context_note += f"; train.context {c}: +{w.context_tokens[c]:.0f} tokens per example"
        longest = w.longest_example + w.context_tokens[c]
        if longest > cfg.data.max_len:  # the trainer would drop them (and refuses past half)
            context_note += f", ~{longest:.0f} at the longest: over data.max_len={cfg.data.max_len}"
    return CostLine(
        "training",
        sum(per_stage.values()),
        f"{w.steps} steps of {cfg.train.batch_size} x {w.epochs:g} epoch(s), "
        f"{w.train_tokens_per_epoch / 1000:.0f}k tokens per epoch at "
        f"{speed.train_tps:.0f} tokens/s; {_validation_note(cfg, w, passes, val_total)} of it"
        + (f"; {len(runs)} runs" if len(runs) > 1 else "")
        + context_note,
        stages=per_stage,
    )


# --- the workload ---------------------------------------------------------------------------------


def split_sizes(cfg: ProjectConfig, n_examples: int) -> tuple[int, int, int]:
    """(train, val, test) sizes the split will make from ``n_examples`` training rows (when not
    split yet). A split given as its own file (``data.val``, ``data.test``) counts that file's
    items, and takes nothing from train."""
    given = {"val": cfg.data.val, "test": cfg.data.test}
    fractions = {"val": cfg.data.split.val, "test": cfg.data.split.test}
    sizes = {
        s: _items_in(cfg, path) if path is not None else round(n_examples * fractions[s])
        for s, path in given.items()
    }
    taken = sum(n for s, n in sizes.items() if given[s] is None)
    return n_examples - taken, sizes["val"], sizes["test"]


def _items_in(cfg: ProjectConfig, path: Path) -> int:
    """Evaluation items in a split file: a text task's lines that share a prompt are one item."""
    examples = load_examples(path)
    return len(group_references(examples) if cfg.task.type == "text" else examples)


def optimizer_steps(n_train: int, batch: int, grad_accum: int, epochs: float) -> int:
    """Steps the trainer takes for ``epochs`` over ``n_train`` rows (``max_steps`` aside)."""
    return max(1, math.ceil(math.ceil(n_train / batch) / grad_accum * epochs))


def workload_of(
    cfg: ProjectConfig,
    examples: Sequence[Any],
    tokenizer: Any | None,
    *,
    sizes: tuple[int, int, int] | None = None,
) -> Workload:
    """The project's work in tokens. ``examples`` are the training file's (a spread sample is
    measured); ``tokenizer`` None counts 4 characters as a token. ``sizes`` are the split's own
    (train, val, test) counts when it exists. A prefix every example shares is computed once per
    training batch (:mod:`tunewise.train.prefix`), and counted so. An example with several
    references trains once per reference (without retrieved context), and is counted so."""
    if cfg.train.context == "none":
        examples = expand_references(list(examples))
    sample = list(examples[:: max(1, len(examples) // SAMPLE)])
    count = _counter(tokenizer)
    total = [
        count(_render(tokenizer, e.with_system(cfg.task.system_prompt).messages)) for e in sample
    ]
    answers = [count(e.target) for e in sample]
    system = count(cfg.task.system_prompt) if cfg.task.system_prompt else 0
    example_tokens = sum(total) / len(total)
    answer_tokens = sum(answers) / len(answers)
    prompt = example_tokens - answer_tokens
    turn = max(1.0, example_tokens - system)  # one earlier user+assistant turn (few-shot, RAG)
    n_train, n_val, n_test = sizes or split_sizes(cfg, len(examples))
    n_eval = min(n_val, cfg.eval.limit) if cfg.eval.limit else n_val
    t = cfg.train
    steps = t.max_steps or optimizer_steps(n_train, t.batch_size, t.grad_accum, t.epochs)
    epochs = steps * t.batch_size * t.grad_accum / max(1, n_train) if t.max_steps else t.epochs
    prefix_tokens = 0
    if tokenizer is not None and len(examples) > 1:
        prefix_tokens = shared_prefix_tokens(tokenizer, list(examples), cfg.task.system_prompt)
    per_epoch = example_tokens * n_train
    saved = prefix_tokens * (n_train - math.ceil(n_train / t.batch_size))
    if (
        t.shared_prefix == "auto"
        and prefix_tokens >= MIN_PREFIX_TOKENS
        and saved >= MIN_SAVED_FRACTION * per_epoch
    ):
        per_epoch -= saved
    longest = max(answers)
    mnt = cfg.eval.max_new_tokens
    return Workload(
        n_train=n_train,
        n_val=n_eval,
        n_val_loss=min(n_val, loss_item_cap(t.val_loss_items)),
        n_test=n_test,
        prompt_tokens={
            "prompt": prompt,
            "fewshot": prompt + cfg.eval.fewshot.k * turn,
            "rag": prompt + cfg.eval.rag.k * turn,
        },
        max_new_tokens=int(mnt) if mnt != "auto" else max(8, math.ceil(longest * 1.5) + 4),
        label_combinations=_combinations(cfg, examples),
        label_tokens=longest + 1,  # the end-of-turn marker is scored too
        example_tokens=example_tokens,
        longest_example=max(total),
        train_tokens_per_epoch=per_epoch,
        prefix_tokens=prefix_tokens,
        steps=steps,
        epochs=epochs,
        overfit_new_tokens=overfit_max_new_tokens(longest),
    )


def shared_prefix_tokens(tok: Any, examples: list[Any], system_prompt: str) -> int:
    """Tokens every training example starts with, as the chat template renders them with the
    project's system prompt (a spread sample; training measures each batch's own)."""
    step = max(1, len(examples) // PREFIX_SAMPLE)
    ids = [
        tok(
            chat.render_for_count(tok, e.with_system(system_prompt).messages),
            add_special_tokens=False,
        )["input_ids"]
        for e in examples[::step][:PREFIX_SAMPLE]
    ]
    limit, first, n = min(len(x) for x in ids) - 1, ids[0], 0
    while n < limit and all(x[n] == first[n] for x in ids):
        n += 1
    return n


def _combinations(cfg: ProjectConfig, examples: Sequence[Any]) -> int:
    """Answers constrained scoring rates per item: every combination when few, else field by
    field (see :mod:`tunewise.eval.constrained`); 0 when it does not run."""
    if cfg.task.type != "labels" or not cfg.eval.constrained:
        return 0
    spec = LabelSpec.from_config(cfg, examples)  # task.labels, else the labels train holds
    sizes = [len(v) for v in spec.labels.values() if v]
    if not sizes:
        return 0
    joint = math.prod(sizes)
    return joint if joint <= 64 else sum(sizes)


def _counter(tokenizer: Any | None) -> Any:
    if tokenizer is None:
        return lambda text: max(1, len(text) // 4)
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _render(tokenizer: Any | None, messages: list[dict[str, str]]) -> str:
    if tokenizer is None:
        return "\n".join(m["content"] for m in messages)
    return chat.render_for_count(tokenizer, messages)


# --- the speed ------------------------------------------------------------------------------------


def calibrate(ref: Any, text: str, *, placement: Any = None, eval_batch: int = 8) -> Speed:
    """Measure :class:`Speed` on this machine with a few passes over ``text`` (one rendered
    training example, repeated): seconds for a 135M model on a CPU. Each figure is the best of
    :data:`REPEATS` timings, as ``timeit`` does: a neighbour's burst of work should not set it.
    Training speed is derived from the prompt speed (:data:`TRAIN_COST_RATIO`); the project's
    first training run replaces it with its own figure."""
    import torch  # lazy: torch, ~1 s to import; pricing without calibrating needs none

    tok = models.load_tokenizer(ref)
    model = models.load_model(ref, placement=placement)
    device = next(model.parameters()).device
    ids = tok(text or "calibration", add_special_tokens=False)["input_ids"][:CALIBRATION_TOKENS]
    batch = torch.tensor([ids] * CALIBRATION_ROWS, device=device)  # (rows, seq), no padding
    # Decoding runs eval.batch_size rows per step, and a step's cost grows slower than its rows:
    # measured at that width, on short prompts so that the prefill before it stays cheap.
    rows = min(eval_batch, MAX_DECODE_ROWS)
    short = torch.tensor([ids[:DECODE_PROMPT_TOKENS]] * rows, device=device)
    prefill_s, _ = _time_inference(model, batch, steps=0)
    _, decode_s = _time_inference(model, short, steps=DECODE_STEPS, repeats=1)
    score_s = _time_scoring(model, ids, tok.pad_token_id)
    prefill_tps = batch.numel() / prefill_s
    return Speed(
        train_tps=prefill_tps / TRAIN_COST_RATIO,
        prefill_tps=prefill_tps,
        decode_step_s=max(1e-4, decode_s),
        decode_batch=rows,
        source=f"measured now on {device}",
        score_tps=(len(ids) + SCORED_ANSWERS * ANSWER_TOKENS) / score_s,
    )


def _time_scoring(model: Any, prompt: list[int], pad_id: int) -> float:
    """Seconds of one constrained-scoring call: the prompt, then :data:`SCORED_ANSWERS` answers of
    :data:`ANSWER_TOKENS` on its shared cache (what
    :func:`tunewise.runtime.decoding.score_continuations`
    does for every item)."""
    import torch  # lazy: torch, ~1 s to import; pricing without calibrating needs none

    params = inspect.signature(model.forward).parameters
    cache_kw = "cache" if "cache" in params else "past_key_values"

    def forward(ids: Any, mask: Any, pos: Any, kv: Any, last_only: bool = True) -> Any:
        out = model(
            input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **{cache_kw: kv}
        )
        return out.logits[:, -1, :] if last_only else out.logits

    answers = [prompt[i : i + ANSWER_TOKENS] for i in range(SCORED_ANSWERS)]
    answers = [a if len(a) == ANSWER_TOKENS else [pad_id] * ANSWER_TOKENS for a in answers]
    times = []
    with torch.inference_mode():
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            score_continuations(forward, model.config, prompt, answers, pad_id=pad_id, chunk=16)
            times.append(time.perf_counter() - t0)
    return min(times)


def _time_inference(
    model: Any, batch: Any, steps: int, repeats: int = REPEATS
) -> tuple[float, float]:
    """(seconds of one prefill of ``batch`` (rows, seq), seconds of one greedy step after it;
    0 when ``steps`` is 0)."""
    import torch  # lazy: torch, ~1 s to import; pricing without calibrating needs none

    model.eval()
    # transformers 5 renamed the cache argument; ask the way the Engine does
    params = inspect.signature(model.forward).parameters
    cache_kw = "cache" if "cache" in params else "past_key_values"
    prefill: list[float] = []
    times: list[float] = []
    with torch.inference_mode():
        model(input_ids=batch[:1, :8])  # warm-up: first-call allocations
        for _ in range(repeats):
            kv = new_cache(model.config)  # filled in place, as in the Engine's decoding
            t0 = time.perf_counter()
            out = model(input_ids=batch, use_cache=True, **{cache_kw: kv})
            prefill.append(time.perf_counter() - t0)
        nxt = out.logits[:, -1:].argmax(-1)  # (rows, 1)
        for _ in range(steps):  # greedy steps on the cache
            t0 = time.perf_counter()
            nxt = model(input_ids=nxt, use_cache=True, **{cache_kw: kv}).logits.argmax(-1)
            times.append(time.perf_counter() - t0)
    return min(prefill), min(times, default=0.0)


def _speed_key(model_hash: str, device: str) -> str:
    return f"{model_hash[:16]}@{device}"


def save_speed(home: Path, model_hash: str, device: str, speed: Speed) -> None:
    """Keep the last calibration, so a later ``run --dry-run`` prices stages without one."""
    path = home / SPEED_FILE
    try:
        known = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        known = {}
    known[_speed_key(model_hash, device)] = {
        **speed.to_dict(),
        "measured_at": time.strftime("%Y-%m-%d %H:%M"),
    }
    atomic_write_json(path, known)


def recorded_speed(home: Path, model_hash: str, device: str, work_dir: Path) -> Speed | None:
    """The last calibration of this model on this device, with the training figure of the
    project's last finished training run when there is one (what training really did here)."""
    try:
        rec = json.loads((home / SPEED_FILE).read_text())[_speed_key(model_hash, device)]
    except (OSError, json.JSONDecodeError, KeyError):
        return None
    speed = Speed(
        train_tps=float(rec["train_tps"]),
        prefill_tps=float(rec["prefill_tps"]),
        decode_step_s=float(rec["decode_step_s"]),
        decode_batch=int(rec["decode_batch"]),
        score_tps=float(rec.get("score_tps", 0.0)),
        source=f"calibrated {rec.get('measured_at', '')} on {device}".replace("  ", " "),
    )
    measured = _last_training_tps(work_dir, model_hash)
    if measured is None:
        return speed
    tps, run = measured
    return Speed(
        train_tps=tps,
        prefill_tps=speed.prefill_tps,
        decode_step_s=speed.decode_step_s,
        decode_batch=speed.decode_batch,
        score_tps=speed.score_tps,
        source=f"{speed.source}; training speed from {run}",
    )


def _last_training_tps(work_dir: Path, model_hash: str) -> tuple[float, str] | None:
    """Training tokens/s of the newest finished training run of this base model in the project,
    in the unit the estimate counts (:func:`training_tps`)."""
    best: tuple[float, float, str] | None = None
    for run_json in (work_dir / "runs").glob("*/run.json"):
        try:
            rec = json.loads(run_json.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        tps = training_tps(rec)
        if tps is None or rec.get("base_model", {}).get("weight_hash") != model_hash:
            continue
        mtime = run_json.stat().st_mtime
        if best is None or mtime > best[0]:
            best = (mtime, tps, run_json.parent.name)
    return None if best is None else (best[1], f"run {best[2]}")


def training_tps(rec: dict[str, Any]) -> float | None:
    """Tokens the model computed per second of optimizer steps, from a run.json: what
    :func:`estimate` divides an epoch's computed tokens by. run.json's ``tokens_per_s`` is the
    wrong figure for it: it counts the data's tokens (a shared prefix's repeats included, which
    the model did not compute) over the whole wall time (validation-loss passes and the
    overfitting check included, which the estimate prices on their own). None for a resumed run
    (its figures span sessions) or one that recorded too little."""
    if rec.get("resumed_from") or rec.get("status") != "completed":
        return None
    tokens, wall = rec.get("tokens_trained"), rec.get("wall_time_s")
    if not tokens or not wall:
        return None
    saved = (rec.get("shared_prefix") or {}).get("tokens_not_recomputed") or 0
    evals = sum(m.get("val_loss_s") or 0.0 for m in rec.get("metrics") or [])
    evals += rec.get("overfit_check_s") or 0.0
    seconds = wall - evals
    return (tokens - saved) / seconds if seconds > 0 and tokens > saved else None
