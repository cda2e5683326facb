"""Trainer callbacks: validation monitor (early stopping + overfitting detector), progress, logs.

:func:`run_callbacks` is the list a training run gets.

The stop decision is a pure function of the evaluation history (:func:`decide`) so it can be
tested on synthetic sequences, and the history is rebuilt from ``TrainerState.log_history`` at
every evaluation, which the Trainer checkpoints: a resumed run decides exactly as an
uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.integrations import TensorBoardCallback

from tunewise.progress import Bar
from tunewise.runtime import chat
from tunewise.train.budget import EvalPlanner, FirstPass, overfit_max_new_tokens
from tunewise.train.phases import Prepared
from tunewise.train.record import BestKeeper, RunRecorder, is_main_process, recorder_callback

REP_KEY = "tw_repetition"  # log_history keys written by the monitor
DISTINCT_KEY = "tw_distinct2"


# --- repetition metrics -------------------------------------------------------------------------


def _ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def repeated_ngram_rate(text: str, n: int = 3) -> float:
    """Share of word n-grams that already occurred earlier in the same text (0 = no repetition)."""
    grams = _ngrams(text.split(), n)
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def distinct_n(text: str, n: int = 2) -> float:
    """Unique word n-grams over all n-grams (1 = every n-gram is new; too short a text counts 1)."""
    grams = _ngrams(text.split(), n)
    if not grams:
        return 1.0
    return len(set(grams)) / len(grams)


def repetition_scores(texts: Sequence[str]) -> dict[str, float]:
    """Mean repeated 3-gram rate and mean distinct-2 over a sample of generations."""
    if not texts:
        return {"repetition": 0.0, "distinct2": 1.0}
    return {
        "repetition": sum(repeated_ngram_rate(t) for t in texts) / len(texts),
        "distinct2": sum(distinct_n(t) for t in texts) / len(texts),
    }


# --- the decision ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalPoint:
    step: int
    val_loss: float
    repetition: float | None = None
    distinct2: float | None = None


@dataclass(frozen=True)
class Decision:
    stop: bool
    kind: str | None = None  # "early_stopping" | "overfitting"
    reason: str | None = None


def decide(
    history: Sequence[EvalPoint],
    *,
    patience: int,
    repetition_threshold: float,
    min_delta: float = 0.0,
) -> Decision:
    """Whether to stop after the latest evaluation, and why.

    * Overfitting (the article's rule): validation loss is still falling, yet the sampled
      generations' repetition rose since the previous evaluation and is now at or past the
      threshold. Loss alone would say "keep going"; the generations say the model is memorising.
    * Early stopping: the best validation loss is ``patience`` evaluations old.
    """
    if not history:
        return Decision(False)
    cur = history[-1]
    if len(history) >= 2:
        prev = history[-2]
        if (
            cur.repetition is not None
            and prev.repetition is not None
            and cur.val_loss < prev.val_loss
            and cur.repetition > prev.repetition
            and cur.repetition >= repetition_threshold
        ):
            return Decision(
                True,
                "overfitting",
                f"overfitting at step {cur.step}: validation loss is still falling "
                f"({prev.val_loss:.4f} -> {cur.val_loss:.4f}) but generations became repetitive "
                f"(repeated 3-gram rate {prev.repetition:.2f} -> {cur.repetition:.2f}, "
                f"threshold {repetition_threshold:.2f})",
            )
    best_i = 0
    for i, p in enumerate(history):
        if p.val_loss < history[best_i].val_loss - min_delta:
            best_i = i
    since = len(history) - 1 - best_i
    if since >= patience:
        best = history[best_i]
        return Decision(
            True,
            "early_stopping",
            f"early stopping at step {cur.step}: validation loss has not improved for {since} "
            "evaluations "
            f"(best {best.val_loss:.4f} at step {best.step}, now {cur.val_loss:.4f})",
        )
    return Decision(False)


def history_from_log(log_history: Sequence[dict[str, Any]]) -> list[EvalPoint]:
    """Evaluation points from ``TrainerState.log_history`` (eval_loss entries joined by step)."""
    reps: dict[int, dict[str, Any]] = {e["step"]: e for e in log_history if REP_KEY in e}
    points = []
    for e in log_history:
        if "eval_loss" in e and math.isfinite(e["eval_loss"]):
            r = reps.get(e["step"], {})
            points.append(
                EvalPoint(e["step"], float(e["eval_loss"]), r.get(REP_KEY), r.get(DISTINCT_KEY))
            )
    return points


# --- generation for the repetition check --------------------------------------------------------


@contextmanager
def _evaluating(model: Any) -> Iterator[None]:
    """``model`` in eval mode for the block (no dropout), back in training mode after if it was."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def generate_greedy(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[dict[str, str]]],
    *,
    max_new_tokens: int,
    batch_size: int = 32,
) -> list[str]:
    """Greedy completions of chat prompts, rendered with the same template as training.

    The overfitting check's prompts (``train.overfit_sample``, 4-8 of them) go through
    ``generate`` as one left-padded batch with the KV cache on; each row stops at EOS or the
    template's end of turn. Batching gives the same text as one prompt at a time (tested).
    """
    # Stop at the template's end of turn too: Gemma and Phi end a turn before their EOS, and
    # text generated past it would be scored as repetition.
    stop = [tokenizer.eos_token_id]
    eot_id = chat.end_of_turn_id(tokenizer, chat.end_of_turn(tokenizer))
    if eot_id is not None and eot_id not in stop:
        stop.append(eot_id)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    # chat.encode: control tokens quoted in a message stay text, as in training.
    encoded = chat.encode(
        tokenizer, [chat.render(tokenizer, p, generation_prompt=True) for p in prompts]
    )
    out: list[str] = []
    with _evaluating(model):
        device = next(model.parameters()).device
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start : start + batch_size]
            width = max(len(ids) for ids in chunk)
            # Left padding: decoder-only models continue from the right edge.
            input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in chunk])
            mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in chunk])
            with torch.no_grad():
                gen = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=mask.to(device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    use_cache=True,  # training may have turned it off in the config
                    pad_token_id=pad,
                    eos_token_id=stop,
                )
            out.extend(_decode_until_stop(tokenizer, gen[:, width:].tolist(), set(stop)))
    return out


def _decode_until_stop(tokenizer: Any, rows: list[list[int]], stop: set[int]) -> list[str]:
    """Each row's text up to its first stop token (rows that finished early are padded)."""
    cut = [next((row[:i] for i, t in enumerate(row) if t in stop), row) for row in rows]
    return tokenizer.batch_decode(cut, skip_special_tokens=True)


class ValidationMonitor(TrainerCallback):
    """At each evaluation: sample generations, score repetition, decide whether to stop."""

    def __init__(
        self,
        tokenizer: Any,
        prompts: Sequence[list[dict[str, str]]],
        *,
        patience: int,
        repetition_threshold: float,
        max_new_tokens: int = 64,
        console: Any = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.prompts = list(prompts)
        self.patience = patience
        self.threshold = repetition_threshold
        self.max_new_tokens = max_new_tokens
        self.console = console
        self.decision = Decision(False)
        self.last_samples: list[str] = []

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        model: Any = None,
        **kwargs: Any,
    ) -> None:
        if self.prompts and model is not None:
            # Timed so run.json can say what share of training the check costs (issue #14 asks
            # for at most 10% on the demo; the summary prints the measured share).
            t0 = time.perf_counter()
            texts = generate_greedy(
                model, self.tokenizer, self.prompts, max_new_tokens=self.max_new_tokens
            )
            seconds = time.perf_counter() - t0
            self.last_samples = texts
            scores = repetition_scores(texts)
            state.log_history.append(
                {
                    "step": state.global_step,
                    REP_KEY: round(scores["repetition"], 4),
                    DISTINCT_KEY: round(scores["distinct2"], 4),
                    "tw_sample": texts[0][:200] if texts else "",
                }
            )
            if metrics is not None:
                metrics["eval_repetition"] = scores["repetition"]
                metrics["eval_distinct2"] = scores["distinct2"]
                metrics["eval_overfit_check_s"] = seconds
        self.decision = decide(
            history_from_log(state.log_history),
            patience=self.patience,
            repetition_threshold=self.threshold,
        )
        if self.decision.stop:
            control.should_training_stop = True
            if self.console is not None and state.is_world_process_zero:
                self.console.print(f"[yellow]warning:[/] {self.decision.reason}; stopping")


# --- progress and logs ---------------------------------------------------------------------------


class RichProgress(TrainerCallback):
    """A rich progress bar with loss, validation loss, tokens/s and ETA (main process only)."""

    def __init__(self, console: Any = None) -> None:
        self.console = console
        self.progress: Any = None  # a tunewise.progress.Bar while training
        self._t0 = 0.0
        self._tokens0 = 0
        self._loss: float | None = None
        self._val: float | None = None

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if not state.is_world_process_zero:
            return
        self.progress = Bar(
            "train",
            state.max_steps,
            console=self.console,
            transient=False,
            completed=state.global_step,
        ).__enter__()
        self._t0 = time.time()
        self._tokens0 = int(state.num_input_tokens_seen or 0)

    def _stats(self, state: TrainerState) -> str:
        dt = max(time.time() - self._t0, 1e-9)
        tps = (int(state.num_input_tokens_seen or 0) - self._tokens0) / dt
        parts = []
        if self._loss is not None:
            parts.append(f"loss {self._loss:.4f}")
        if self._val is not None:
            parts.append(f"val {self._val:.4f}")
        parts.append(f"{tps:,.0f} tok/s")
        return "  ".join(parts)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if self.progress is not None:
            self.progress.update(completed=state.global_step, stats=self._stats(state))

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kw: Any,
    ) -> None:
        if self.progress is None or not logs:
            return
        if "loss" in logs:
            self._loss = float(logs["loss"])
        if "eval_loss" in logs:
            self._val = float(logs["eval_loss"])
        self.progress.update(stats=self._stats(state))

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if self.progress is not None:
            self.progress.update(completed=state.global_step, stats=self._stats(state))
            self.progress.__exit__(None, None, None)
            self.progress = None


class JsonlLogger(TrainerCallback):
    """Append every Trainer log record to ``RUN/logs.jsonl`` (one JSON object per line)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kw: Any,
    ) -> None:
        if not state.is_world_process_zero or not logs:
            return
        row = {
            "time": round(time.time(), 3),
            "step": state.global_step,
            "epoch": state.epoch,
            "tokens_seen": int(state.num_input_tokens_seen or 0),
            **logs,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, default=float) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


# --- the callbacks of a run ----------------------------------------------------------------------


def validation_monitor(prep: Prepared, console: Any) -> ValidationMonitor | None:
    """The monitor for a run with a validation split (None without one)."""
    if prep.val_ds is None:
        return None
    cfg = prep.cfg
    # FSDP/DeepSpeed shard the weights: generating the overfitting sample would need them whole.
    sharded = (
        os.environ.get("ACCELERATE_USE_FSDP") == "true"
        or os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true"
    )
    n = 0 if sharded else cfg.train.overfit_sample
    # A fixed, seeded sample of validation prompts: the same prompts at every evaluation.
    sample = random.Random(cfg.train.seed).sample(prep.val_examples, min(n, len(prep.val_examples)))
    longest = max(
        (len(prep.tokenizer(e.target)["input_ids"]) for e in prep.val_examples), default=32
    )
    return ValidationMonitor(
        prep.tokenizer,
        [e.prompt_messages for e in sample],
        patience=cfg.train.early_stopping_patience,
        repetition_threshold=cfg.train.overfit_repetition_threshold,
        max_new_tokens=overfit_max_new_tokens(longest),
        console=console,
    )


def run_callbacks(
    prep: Prepared,
    recorder: RunRecorder,
    monitor: ValidationMonitor | None,
    best: BestKeeper | None,
    console: Any,
    *,
    progress: bool,
) -> list[Any]:
    """Logs, TensorBoard (main process), the validation monitor, run.json, the evaluation
    scheduler (``train.eval_every: auto``), the progress bar."""
    callbacks: list[Any] = [JsonlLogger(prep.run_dir / "logs.jsonl")]
    tb_writer = None
    if is_main_process():
        from torch.utils.tensorboard import SummaryWriter  # lazy: tensorboard, main process only

        tb_writer = SummaryWriter(log_dir=str(prep.run_dir / "tb"))
        callbacks.append(TensorBoardCallback(tb_writer=tb_writer))
    if monitor is not None:
        callbacks.append(monitor)
    callbacks.append(recorder_callback(recorder, best, tb_writer))
    if prep.val_ds is not None and prep.cfg.train.eval_every == "auto":
        # After the monitor and the recorder: an evaluation's cost includes their work.
        callbacks.append(eval_scheduler(prep, monitor, recorder))
    if progress and is_main_process():
        callbacks.append(RichProgress(console))
    return callbacks


# --- train.eval_every: auto ----------------------------------------------------------------------


def decode_step_seconds(model: Any, rows: int, *, tokens: int = 4) -> float:
    """Seconds per greedy step of ``rows`` prompts through ``generate`` (its per-step overhead
    included, which on a small model outweighs the forward): the second of two short runs."""
    with _evaluating(model):
        device = next(model.parameters()).device
        ids = torch.zeros((rows, 4), dtype=torch.long, device=device)  # (rows, seq)
        seconds = 0.0
        for _ in range(2):  # the first run pays one-time allocations
            t0 = time.perf_counter()
            with torch.no_grad():
                model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=tokens,
                    min_new_tokens=tokens,
                    do_sample=False,
                    use_cache=True,
                    pad_token_id=0,
                )
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - t0
        return seconds / tokens


def loss_batch_seconds(trainer: Any, model: Any) -> float:
    """Seconds of the validation loss on the split's first batch, computed as an evaluation
    computes it (the trainer's ``prediction_step``: shared prefix, logits where labelled)."""
    ds = trainer.eval_dataset
    n = min(len(ds), trainer.args.per_device_eval_batch_size)
    batch = trainer._prepare_inputs(trainer.data_collator([ds[i] for i in range(n)]))
    with _evaluating(model):
        t0 = time.perf_counter()
        trainer.prediction_step(model, batch, prediction_loss_only=True)
        device = next(model.parameters()).device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0


def _agree(value: Any) -> Any:
    """The main process's ``value`` on every process (a broadcast under a launcher)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return value
    from accelerate.utils import broadcast_object_list  # lazy: only under a launcher

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


class EvalScheduler(TrainerCallback):
    """Asks the Trainer for an evaluation when :class:`~tunewise.train.budget.EvalPlanner` says
    it fits the budget (``eval_strategy`` is "no": nothing else asks). The main process decides
    at the planner's checks and the others follow; the accounting goes to run.json."""

    def __init__(
        self,
        planner: EvalPlanner,
        record: dict[str, Any],
        *,
        probe: Any = None,
    ) -> None:
        self.planner = planner
        self.record = record  # run.json's eval_budget (the recorder holds the same dict)
        self.probe = probe  # model -> seconds per greedy step of the check; None: no check
        # model -> seconds of one validation batch's loss; set once the Trainer exists
        # (:func:`attach_loss_probe`), and only for a single process
        self.loss_probe: Any = None

    @staticmethod
    def clock() -> float:
        # Looked up at each call: the same clock as the overfitting check's timer.
        return time.perf_counter()

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self.planner.evaluated_before = any("eval_loss" in e for e in state.log_history)
        self.planner.begin(state.global_step, self.clock())

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: Any = None,
        **kw: Any,
    ) -> None:
        p = self.planner
        if not p.due(state.global_step, state.max_steps):
            return
        evaluate = False
        if state.is_world_process_zero:
            self._run_probes(model)
            evaluate = p.decide(state.global_step, state.max_steps, self.clock())
        evaluate, p.next_check = _agree((evaluate, p.next_check))
        if evaluate:
            control.should_evaluate = True

    def _run_probes(self, model: Any) -> None:
        """Before the first evaluation is priced: time one greedy step and one validation batch
        (their seconds count as evaluation spending)."""
        p = self.planner
        if model is None or p.costs:
            return
        t0 = self.clock()
        if self.probe is not None and p.decode_s is None:
            p.decode_s = self.probe(model)
        if self.loss_probe is not None and p.batch_s is None:
            p.batch_s = self.loss_probe(model)
        p.other_s += self.clock() - t0

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if state.is_world_process_zero:
            self.planner.evaluated(self.clock())
            self._update()

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self.planner.finish(self.clock())
        self._update()

    def _update(self) -> None:
        self.record.clear()
        self.record.update(self.planner.record())


def attach_loss_probe(callbacks: list[Any], trainer: Any) -> None:
    """Give the run's :class:`EvalScheduler` (if any) its validation-loss probe on ``trainer``;
    only for a single process (under a launcher a forward on the main process alone could wait
    forever on a sharded model: the first estimate guesses from the step time there)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return
    for cb in callbacks:
        if isinstance(cb, EvalScheduler):
            cb.loss_probe = partial(loss_batch_seconds, trainer)


def eval_scheduler(
    prep: Prepared, monitor: ValidationMonitor | None, recorder: RunRecorder
) -> EvalScheduler:
    """The scheduler of a run with ``train.eval_every: auto`` (and a validation split)."""
    t = prep.cfg.train
    per_round = t.batch_size * int(os.environ.get("WORLD_SIZE", "1"))
    gen_rows = len(monitor.prompts) if monitor is not None else 0
    first = FirstPass(
        loss_batches=math.ceil(len(prep.val_ds or ()) / per_round),
        grad_accum=t.grad_accum,
        batch_size=t.batch_size,
        gen_rows=gen_rows,
        gen_tokens=monitor.max_new_tokens if monitor is not None else 0,
    )
    record: dict[str, Any] = {}
    recorder.track_eval_budget(record)
    return EvalScheduler(
        EvalPlanner(t.eval_budget, first),
        record,
        probe=(lambda model: decode_step_seconds(model, gen_rows)) if gen_rows else None,
    )
