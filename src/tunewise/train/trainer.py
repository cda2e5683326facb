"""One training engine for full | lora | qlora, on Hugging Face ``Trainer`` plus callbacks.

QLoRA is LoRA on a 4-bit NF4 base (``models.load_model(quantize_4bit=True)``), not a separate
code path. ``accelerate launch -m tunewise train ...`` scales the same code to several processes
(DDP, FSDP, DeepSpeed): the Trainer picks the launcher's settings up from the environment.

Shape (after litgpt): :func:`train` runs one function per phase, in order.

* start: :func:`~tunewise.train.record.join_process_group` (under a launcher the process group
  exists from here on), then, on the main process only, the run directory's lock (held until the
  end: one writer per run) and :func:`~tunewise.train.record.claim_run_dir`, which checks the run
  directory and finds the checkpoint to resume; the other processes wait for its answer
  (:func:`~tunewise.train.record.main_decides`) and never read run.json.
* :func:`setup`: load the tokenizer and encode the data -> :class:`~tunewise.train.phases.Prepared`
  (the records the phases hand each other live in :mod:`tunewise.train.phases`).
* :func:`build`: the model, the callbacks and the Trainer; the first run.json -> :class:`Built`.
* :func:`fit`: run the Trainer, resuming from the checkpoint -> :class:`Fitted`.
* :func:`finish`: apply the stop rule's outcome (restore the best weights), save the adapter or
  the model, and close run.json. :class:`~tunewise.train.record.RunRecorder` owns the record.

Layout of ``RUN/`` (read back through :class:`tunewise.rundir.RunDir`):

* LoRA/QLoRA: ``adapter_config.json`` + ``adapter_model.safetensors`` + tokenizer files at the
  root (``PeftModel.from_pretrained(base, RUN)`` works); full: ``model/``;
* ``run.json``: status, method, resolved config, base model + weight hash, data hashes, library
  versions, metrics per evaluation, wall time, tokens/s, stop reason;
* ``logs.jsonl``, ``tb/`` (TensorBoard), ``checkpoints/checkpoint-N/`` (written atomically,
  :mod:`tunewise.train.checkpoints`), ``.lock`` (:meth:`tunewise.rundir.RunDir.writer_lock`).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from rich.console import Console
from transformers import TrainerState, TrainingArguments, set_seed
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from tunewise import tracking
from tunewise.baselines.context import CONTEXT_FILE, ContextBuilder, training_examples
from tunewise.config import ProjectConfig
from tunewise.data.schema import Example, expand_references, load_examples
from tunewise.errors import UserError
from tunewise.progress import make_console
from tunewise.rundir import RunDir
from tunewise.runtime import device, models
from tunewise.train.budget import loss_item_cap, loss_order
from tunewise.train.callbacks import (
    ValidationMonitor,
    attach_loss_probe,
    run_callbacks,
    validation_monitor,
)
from tunewise.train.checkpoints import DiskFull, save_atomically
from tunewise.train.collate import (
    ChatCollator,
    EncodedDataset,
    LengthGroupedSampler,
    OverlongReport,
    encode_all,
)
from tunewise.train.loss import answer_loss, supports_sparse_logits
from tunewise.train.methods import METHODS, peft_target_modules
from tunewise.train.phases import Prepared, RunStart
from tunewise.train.prefix import SharedPrefix
from tunewise.train.prefix import resolve as resolve_shared_prefix
from tunewise.train.record import (
    BestKeeper,
    RunRecorder,
    claim_run_dir,
    finished_record,
    is_main_process,
    join_process_group,
    main_decides,
    save_final,
    sharding_warning,
)


def _console() -> Console:
    return make_console(stderr=True)


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


# --- start ----------------------------------------------------------------------------------------


def default_run_dir(cfg: ProjectConfig, method: str) -> Path:
    return cfg.work_dir / "runs" / f"{method}-{time.strftime('%Y%m%d-%H%M%S')}"


WHOLE_SPLIT = 10**9  # train.val_loss_items past any split: all of it


def load_run_config(run_dir: Path) -> tuple[ProjectConfig, dict[str, Any]]:
    """The resolved project config a run was started with (for ``--resume``)."""
    rec = RunDir(run_dir).record()
    raw = dict(rec["config"])
    raw["root"] = rec.get("project_root", ".")
    train = dict(raw.get("train") or {})
    # A run recorded before train.val_loss_items read its whole validation split: its resume
    # does too, or the losses before and after the resume would be over different items.
    train.setdefault("val_loss_items", WHOLE_SPLIT)
    raw["train"] = train
    cfg = ProjectConfig.model_validate(raw)
    return cfg, rec


def with_method(cfg: ProjectConfig, method: str | None) -> ProjectConfig:
    """``cfg`` with ``train.method`` set to the method asked for (checked)."""
    method = method or cfg.train.method
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}: use lora, qlora or full")
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"method": method})})


# --- setup ----------------------------------------------------------------------------------------


def epoch_warning(cfg: ProjectConfig, n_train: int, world_size: int = 1) -> str | None:
    """The article's 1-3 epochs, checked on the epochs the run will actually cover."""
    t = cfg.train
    if t.max_steps is not None:
        epochs = t.max_steps * t.batch_size * t.grad_accum * world_size / max(n_train, 1)
        what = f"train.max_steps={t.max_steps} covers {epochs:.2g} epochs"
    else:
        epochs = t.epochs
        what = f"train.epochs={epochs:g}"
    if 1 <= epochs <= 3:
        return None
    why = (
        "too few passes rarely learns the format"
        if epochs < 1
        else "more passes tend to memorise the data"
    )
    return f"{what}, outside the advised 1-3: {why}"


# train.overlong=drop is for the odd long example. Past this share, the run would train on a
# different dataset from the one asked for (seen: 518 of 562 demo tickets dropped once few-shot
# context made each one ~500 tokens, against max_len 384), and still look like a fine-tune.
MAX_DROPPED_SHARE = 0.5


def _refuse_mostly_dropped(cfg: ProjectConfig, path: Path, report: OverlongReport) -> None:
    """A one-line error when the overlong policy dropped most of the training examples."""
    if report.total == 0 or report.dropped <= MAX_DROPPED_SHARE * report.total:
        return
    longest = max(n for _, _, n in report.overlong)
    context = cfg.train.context
    why = (
        f" (train.context {context} puts the retrieved {context} context in every prompt)"
        if context != "none"
        else ""
    )
    raise UserError(
        f"{path}: {report.dropped} of {report.total} training examples are longer than "
        f"data.max_len={report.max_len} tokens{why} and would be dropped; set data.max_len to "
        f"at least {longest} (the longest), or train.overlong: truncate"
    )


def setup(cfg: ProjectConfig, start: RunStart) -> Prepared:
    """Load the tokenizer and encode the data (every process; nothing is written)."""
    warnings: list[str] = []
    ref = models.resolve(cfg.model.base)
    tokenizer = models.load_tokenizer(ref, trust_remote_code=cfg.model.trust_remote_code)
    reports: dict[str, OverlongReport] = {}
    t = cfg.train
    train_examples, train_starts, val_examples, val_starts, context = _conversations(cfg, start)
    train_items, reports["train"] = encode_all(
        tokenizer,
        train_examples,
        max_len=cfg.data.max_len,
        overlong=t.overlong,
        train_on=t.train_on,
        allow_special_tokens=cfg.model.allow_special_tokens_in_content,
        label_from=train_starts,
    )
    val_ds, n_val = None, 0
    if val_examples:
        val_items, reports["val"] = _encode_val(cfg, tokenizer, val_examples, val_starts)
        n_val = len(val_items)
        val_items = val_items[: loss_item_cap(t.val_loss_items)]
        val_ds = EncodedDataset(val_items) if val_items else None
    for split, rep in reports.items():
        if rep.overlong:
            warnings.append(f"{split}: {rep.summary()}")
    if not train_items:
        raise UserError(
            f"{start.train_path}: no training example left after the overlong policy "
            f"({reports['train'].summary()})"
        )
    _refuse_mostly_dropped(cfg, start.train_path, reports["train"])
    if w := epoch_warning(cfg, len(train_items), _world_size()):
        warnings.append(w)
    if val_ds is None:
        warnings.append(
            "no validation split: no validation loss, early stopping or overfitting check"
        )
    return Prepared(
        cfg=cfg,
        method=cfg.train.method,
        run_dir=start.run_dir,
        train_path=start.train_path,
        val_path=start.val_path,
        ref=ref,
        tokenizer=tokenizer,
        train_ds=EncodedDataset(train_items),
        val_ds=val_ds,
        val_examples=val_examples,
        reports=reports,
        n_val=n_val,
        warnings=warnings,
        resume_from=start.resume_from,
        previous=start.previous,
        context=context,
    )


def _encode_val(
    cfg: ProjectConfig, tokenizer: Any, examples: list[Example], starts: list[int] | None
) -> tuple[list[Any], OverlongReport]:
    """The validation split encoded (all of it: the overlong report covers the split), in the
    order whose first ``train.val_loss_items`` are the loss's subset
    (:func:`tunewise.train.budget.loss_order`)."""
    t = cfg.train
    order = loss_order(
        examples, t.val_loss_items, seed=t.seed, output_pattern=cfg.task.output_pattern
    )
    if order is not None:
        examples = [examples[i] for i in order]
        starts = [starts[i] for i in order] if starts is not None else None
    return encode_all(
        tokenizer,
        examples,
        max_len=cfg.data.max_len,
        overlong=t.overlong,
        train_on=t.train_on,
        allow_special_tokens=cfg.model.allow_special_tokens_in_content,
        label_from=starts,
    )


def _conversations(
    cfg: ProjectConfig, start: RunStart
) -> tuple[list[Example], list[int] | None, list[Example], list[int] | None, ContextBuilder | None]:
    """(train conversations, their first labelled message, the same for val, the context).

    The project's system prompt replaces the data's: the evaluator and the server use it too.
    With ``train.context``, each conversation is the evaluator's prompt for the example, context
    retrieved from the train examples by :mod:`tunewise.baselines.context` (itself excluded), plus
    its answer; validation items retrieve from the same pool, as the evaluator's do.

    An example with several references (a ``references`` field) trains once per reference
    (:func:`tunewise.data.schema.expand_references` says why), except with retrieved context:
    there a sibling reference in the pool would hand the model its own answer, so the first
    reference alone is trained on.
    """
    t, system = cfg.train, cfg.task.system_prompt
    train_raw = load_examples(start.train_path, cfg.task.tools)
    val_raw = load_examples(start.val_path, cfg.task.tools) if start.val_path else []
    if t.context == "none":
        own = [e.with_system(system) for e in expand_references(train_raw)]
        val = [e.with_system(system) for e in expand_references(val_raw)]
        return own, None, val, None, None
    # Queries keep their data content: a query's uid must equal its pool entry's to be excluded.
    context = ContextBuilder.from_config(cfg, t.context, train_raw)
    share = t.context_distractor_share
    train_ex, train_starts = training_examples(
        context, train_raw, distractor_share=share, seed=t.seed
    )
    val_ex, val_starts = training_examples(context, val_raw, distractor_share=0.0, seed=t.seed)
    return train_ex, train_starts, val_ex, val_starts, context


# --- build --------------------------------------------------------------------------------------


def lora_config(cfg: ProjectConfig) -> Any:
    t = cfg.train
    return LoraConfig(
        r=t.lora_r,
        lora_alpha=t.resolved_alpha,
        lora_dropout=t.lora_dropout,
        target_modules=peft_target_modules(t.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def build_model(cfg: ProjectConfig, ref: models.ModelRef, method: str) -> Any:
    """The model for a method: full (every weight trains), LoRA, or LoRA on a 4-bit NF4 base."""
    # Device, dtype, 4-bit and attention from the one policy (tunewise.runtime.device).
    placement = device.for_project(cfg, "train", method=method)
    cuda = placement.kind == "cuda"
    model = models.load_model(
        ref, placement=placement, trust_remote_code=cfg.model.trust_remote_code
    )
    if method == "full":
        return model
    if method == "qlora":
        # Casts the few unquantized weights (norms, embeddings) to fp32 for stable training and
        # freezes the base; gradient checkpointing pays off on GPUs only.
        # Non-reentrant, like train.gradient_checkpointing: a shared prefix needs it.
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=cuda,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    torch.manual_seed(cfg.train.seed)  # LoRA A matrices start random: same seed, same start
    try:
        return get_peft_model(model, lora_config(cfg))
    except ValueError as exc:
        raise UserError(f"train.target_modules={cfg.train.target_modules!r}: {exc}") from None


def _make_trainer_class() -> type:
    # lazy: transformers' Trainer pulls datasets, ~0.6 s on top of what this module loads
    from transformers import Trainer

    class TunewiseTrainer(Trainer):
        """HF Trainer with atomic checkpoints and a resumable, length-grouped data order."""

        _tw_staging: str | None = None
        _tw_sparse: bool | None = None  # model takes logits_to_keep; decided on the first batch
        _tw_prefix: SharedPrefix | None = None  # train.shared_prefix, resolved for this run

        def compute_loss(
            self,
            model: Any,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            if self._tw_sparse is None:
                self._tw_sparse = supports_sparse_logits(model)
            # nn.DataParallel (several GPUs without a launcher) would split the 1-D position index
            # across replicas along with the batch.
            if (
                not self._tw_sparse
                or "labels" not in inputs
                or self.label_smoother is not None
                or self.compute_loss_func is not None
                or self.args.n_gpu > 1
            ):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            # Same reduction rules as Trainer.compute_loss: normalised by the token count of the
            # whole accumulated batch when the model takes loss kwargs, which tells the Trainer
            # not to divide by the accumulation steps again.
            n_items = num_items_in_batch if self.model_accepts_loss_kwargs else None
            if self._tw_prefix is not None:
                loss, outputs = self._tw_prefix.loss(model, inputs, n_items)
            else:
                loss, outputs = answer_loss(model, inputs, n_items)
            if self.args.average_tokens_across_devices and n_items is not None:
                loss = loss * self.accelerator.num_processes  # n_items was summed over processes
            return (loss, outputs) if return_outputs else loss

        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            ds = train_dataset if train_dataset is not None else self.train_dataset
            return LengthGroupedSampler(
                ds.lengths,
                self.args.per_device_train_batch_size,
                seed=self.args.seed,
                by_length=self.args.train_sampling_strategy == "group_by_length",
                groups=self._tw_prefix.groups if self._tw_prefix is not None else None,
            )

        def _get_output_dir(self, trial: Any) -> str:
            return self._tw_staging or super()._get_output_dir(trial)

        def _save_checkpoint(self, model: Any, trial: Any) -> None:
            # Into a staging folder, renamed into place when complete (tunewise.train.checkpoints)
            parent = super()._save_checkpoint

            def write(staging: str) -> None:
                self._tw_staging = staging
                try:
                    parent(model, trial)
                finally:
                    self._tw_staging = None

            save_atomically(self, write)

    return TunewiseTrainer


def _shared_prefix(
    cfg: ProjectConfig, prep: Prepared, model: Any, recorder: RunRecorder, console: Console
) -> SharedPrefix:
    """train.shared_prefix resolved for this data and model; run.json follows its counts."""
    shared = resolve_shared_prefix(
        cfg.train.shared_prefix, prep.train_ds.items, cfg.train.batch_size, model
    )
    recorder.track_shared_prefix(shared.stats)
    if shared.warning:
        recorder.warn(shared.warning)
    if is_main_process():
        if shared.warning:
            console.print(f"[yellow]warning:[/] {shared.warning}")
        else:
            console.print(f"[dim]shared prefix: {shared.reason}[/]")
    return shared


def training_args(cfg: ProjectConfig, run_dir: Path, *, has_val: bool) -> Any:
    t = cfg.train
    placement = device.for_project(cfg, "train")
    cuda = placement.kind == "cuda"
    caps = device.detect()
    sched = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[
        t.scheduler
    ]
    # transformers renamed gradient_checkpointing to activation_checkpointing after 5.17 (the
    # version GPU images still carry); use the new name wherever it exists.
    every = t.eval_every if isinstance(t.eval_every, int) else None
    fields = TrainingArguments.__dataclass_fields__
    ckpt = (
        "activation_checkpointing"
        if "activation_checkpointing" in fields
        else "gradient_checkpointing"
    )
    return TrainingArguments(
        output_dir=str(run_dir / "checkpoints"),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.resolved_lr,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        lr_scheduler_type=sched,
        warmup_steps=t.warmup_ratio,  # a float below 1 is a ratio of the total steps
        weight_decay=t.weight_decay,
        # auto: tunewise.train.budget's scheduler asks for each evaluation itself.
        eval_strategy="steps" if has_val and every is not None else "no",
        eval_steps=every,
        save_strategy="steps",
        save_steps=t.save_every,
        logging_strategy="steps",
        logging_steps=max(1, min(10, every or 10)),
        report_to="none",  # TensorBoard is added as an explicit callback writing to RUN/tb
        disable_tqdm=True,  # the rich bar replaces tqdm
        seed=t.seed,
        data_seed=t.seed,
        include_num_input_tokens_seen="non_padding",
        # QLoRA on a CPU keeps its own bf16 compute dtype inside the 4-bit layers, without autocast.
        bf16=placement.autocast == "bf16",
        fp16=placement.autocast == "fp16",
        remove_unused_columns=False,
        label_names=["labels"],  # a PeftModel hides the signature the Trainer would infer it from
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        # Non-reentrant checkpointing needs no input that requires grad, so frozen-base LoRA works.
        **{
            ckpt: t.gradient_checkpointing,
            f"{ckpt}_kwargs": {"use_reentrant": False} if t.gradient_checkpointing else None,
        },
        ddp_find_unused_parameters=False if cfg.train.method != "full" else None,
        save_only_model=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=cuda,
        # Several processes without CUDA: accelerate's MULTI_CPU mode (DDP over gloo) needs the
        # CPU flag, or each process would train alone on its own copy.
        # Trainer refuses bf16 without CUDA unless told it runs on the CPU on purpose, and would
        # take a GPU (or mps) that model.device=cpu turned down.
        use_cpu=placement.kind == "cpu"
        and (
            int(os.environ.get("WORLD_SIZE", "1")) > 1
            or placement.autocast is not None
            or caps.cuda
            or caps.mps
        ),
    )


# --- build ----------------------------------------------------------------------------------------


@dataclass
class Built:
    """Everything :func:`fit` and :func:`finish` work on."""

    prep: Prepared
    trainer: Any
    recorder: RunRecorder
    monitor: ValidationMonitor | None
    best: BestKeeper | None  # the weights at the best validation loss (no validation: None)
    tracker: Any = None  # the MLflow callback when tracking is configured


def build(prep: Prepared, console: Console, *, progress: bool = True) -> Built:
    """The model, the callbacks and the Trainer; the main process writes the first run.json."""
    cfg = prep.cfg
    if is_main_process():
        for w in prep.warnings:
            console.print(f"[yellow]warning:[/] {w}")
    set_seed(cfg.train.seed)
    model = build_model(cfg, prep.ref, prep.method)
    # MLflow (optional): a resumed run continues the MLflow run its run.json names.
    tracker = tracking.training_tracker(
        cfg, RunDir(prep.run_dir).read() if prep.resume_from else None
    )
    recorder = RunRecorder(prep)
    if tracker is not None:
        recorder.set_tracking(tracker.start(prep.run_dir, recorder.record))
    recorder.set_placement(device.for_project(cfg, "train").to_dict())
    monitor = validation_monitor(prep, console)
    best = BestKeeper() if prep.val_ds is not None else None
    callbacks = run_callbacks(prep, recorder, monitor, best, console, progress=progress)
    if tracker is not None:  # after the monitor, whose repetition scores it logs
        callbacks.append(tracker)
    trainer = _make_trainer_class()(
        model=model,
        args=training_args(cfg, prep.run_dir, has_val=prep.val_ds is not None),
        train_dataset=prep.train_ds,
        eval_dataset=prep.val_ds,
        data_collator=ChatCollator(
            pad_token_id=prep.tokenizer.pad_token_id, pad_to_multiple_of=None
        ),
        processing_class=prep.tokenizer,
        callbacks=callbacks,
    )
    for cb in (ProgressCallback, PrinterCallback):
        trainer.remove_callback(cb)
    attach_loss_probe(callbacks, trainer)
    trainer._tw_prefix = _shared_prefix(cfg, prep, model, recorder, console)
    if w := sharding_warning(trainer.accelerator.distributed_type.value):
        recorder.warn(w)
        if is_main_process():
            console.print(f"[yellow]warning:[/] {w}")
    if is_main_process():
        prep.run_dir.mkdir(parents=True, exist_ok=True)
        if prep.context is not None:  # evaluation and serving retrieve from this same pool
            prep.context.save(prep.run_dir / CONTEXT_FILE)
    recorder.write()
    return Built(prep, trainer, recorder, monitor, best, tracker)


# --- fit ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fitted:
    result: Any  # the Trainer's TrainOutput
    seconds: float  # this session's training time
    tokens_before: int  # tokens seen before this session (a resume starts from its checkpoint's)


def fit(built: Built) -> Fitted:
    """Run the Trainer (from the checkpoint when resuming).

    Ctrl-C and SIGTERM (a :class:`KeyboardInterrupt`, see :mod:`tunewise.ladder.interrupt`) are
    recorded as stopped, a checkpoint that did not fit on the disk as failed; then re-raised.
    """
    resume_from = built.prep.resume_from
    t0 = time.time()
    tokens0 = 0
    if resume_from is not None:
        state = TrainerState.load_from_json(str(resume_from / "trainer_state.json"))
        tokens0 = int(state.num_input_tokens_seen or 0)
    try:
        result = built.trainer.train(
            resume_from_checkpoint=str(resume_from) if resume_from else None
        )
    except KeyboardInterrupt as exc:
        # The ladder's SIGTERM handler raises a KeyboardInterrupt that names its signal.
        built.recorder.interrupted(getattr(exc, "signal_name", "Ctrl-C"))
        _end_tracking(built, "KILLED")
        raise
    except DiskFull as exc:
        built.recorder.failed(str(exc))
        _end_tracking(built, "FAILED")
        raise
    return Fitted(result, time.time() - t0, tokens0)


def _end_tracking(built: Built, status: str) -> None:
    """Close the MLflow run of a run that did not finish; the error being raised matters more
    than a failed upload (the disk may be the one that is full)."""
    if built.tracker is not None:
        with contextlib.suppress(OSError):
            built.tracker.finish(built.prep.run_dir, built.recorder.record, status=status)


# --- finish ---------------------------------------------------------------------------------------


def _record_stop(built: Built, console: Console) -> None:
    """Completed, or stopped by a rule; after early stopping, the best weights come back."""
    decision = built.monitor.decision if built.monitor else None
    recorder, best = built.recorder, built.best
    if decision is None or not decision.stop:
        max_steps = built.prep.cfg.train.max_steps
        recorder.completed("max_steps reached" if max_steps else "all epochs done")
        return
    recorder.stopped(str(decision.kind), str(decision.reason))
    step = built.trainer.state.global_step
    if decision.kind != "early_stopping" or best is None or best.step in (None, step):
        return
    # After a resume the in-memory copy only covers evaluations since the restart; restore it
    # only when it is the run's best, never a "best since resume".
    if best.step == recorder.best_step:
        best.restore(built.trainer.model)
        recorder.restored_best(best.step)
        if is_main_process():
            loss = f"best validation loss {best.loss:.4f}"
            console.print(f"restored the weights of step {best.step} ({loss})")
    else:
        recorder.warn(
            f"the best step ({recorder.best_step}) predates the resume; the final weights are "
            f"those of step {step}"
        )


def finish(built: Built, fitted: Fitted, console: Console) -> dict[str, Any]:
    """Apply the stop rule's outcome, save the weights, close run.json; returns its content."""
    _record_stop(built, console)
    trainer = built.trainer
    tokens = int(trainer.state.num_input_tokens_seen or 0)
    try:
        files = save_final(trainer, built.prep)
    except DiskFull as exc:
        built.recorder.failed(str(exc))
        _end_tracking(built, "FAILED")
        raise
    record = built.recorder.finished(
        global_step=trainer.state.global_step,
        world_size=trainer.args.world_size,
        backend=dist.get_backend() if dist.is_available() and dist.is_initialized() else None,
        train_loss=float(fitted.result.training_loss),
        tokens_seen=tokens,
        tokens_this_session=tokens - fitted.tokens_before,
        seconds=fitted.seconds,
        files=files,
    )
    if built.tracker is not None:
        built.tracker.finish(built.prep.run_dir, record)
    if is_main_process():
        console.print(
            f"[green]{record['status']}[/]: {built.prep.run_dir} ({record['stop_reason']})"
        )
    return record


# --- the whole run --------------------------------------------------------------------------------


def train(
    cfg: ProjectConfig,
    *,
    run_dir: Path,
    method: str | None = None,
    train_path: Path | None = None,
    val_path: Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``cfg``'s model on its splits (or the given files); returns run.json's content.

    The main process holds the run directory's lock (:meth:`RunDir.writer_lock`) from before it
    looks at the directory until run.json's last write: a second training into the same folder
    is refused, not interleaved.
    """
    console = _console()
    cfg = with_method(cfg, method)
    join_process_group(cfg)
    run = RunDir(run_dir)
    with contextlib.ExitStack() as held:

        def decide() -> RunStart | dict[str, Any]:
            held.enter_context(run.writer_lock())
            done = finished_record(run) if resume else None
            if done is not None:
                return done
            return claim_run_dir(
                cfg, run, train_path=train_path, val_path=val_path, resume=resume, console=console
            )

        start = main_decides(decide)
        if isinstance(start, dict):
            if is_main_process():
                console.print(
                    f"nothing to resume: {run.path} already {start['status']} "
                    f"({start.get('stop_reason')})"
                )
            return start
        built = build(setup(cfg, start), console, progress=progress)
        return finish(built, fit(built), console)
