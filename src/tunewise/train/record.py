"""The run directory during training: who claims it, the run record, the best-weights keeper.

* Start: a new run needs a directory without run.json, a resumed one its run.json, the same
  data and (usually) a checkpoint. Under a launcher (``accelerate launch``, several processes)
  only the main process looks: :func:`claim_run_dir` runs there through :func:`main_decides`,
  and the other processes wait for its answer. Before this, rank 1 could find the run.json
  rank 0 had just written and stop with "a run already exists here".
* :class:`RunRecorder` keeps ``RUN/run.json`` current (main process only; every process keeps
  the same record in memory, so decisions taken from it agree across processes).
* :func:`save_final` swaps the adapter (or the full model) into the run directory at the end.

Reads and writes of run.json go through :class:`tunewise.rundir.RunDir`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import json
import os
import platform
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console

from tunewise.config import ProjectConfig, dump_project
from tunewise.errors import UserError
from tunewise.fsio import fsync_dir, replace_dir, sha256_file
from tunewise.registry import lineage
from tunewise.rundir import RunDir, process_identity
from tunewise.runtime import device
from tunewise.train.checkpoints import FINAL_STAGING, clear_leftovers, removed_on_failure
from tunewise.train.phases import Prepared, RunStart

T = TypeVar("T")


def is_main_process() -> bool:
    """The process that writes shared files; before the Trainer exists, the launcher's RANK."""
    return int(os.environ.get("RANK", "0")) == 0


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def versions() -> dict[str, str]:
    """Library versions recorded in every run.json."""
    out = {"python": platform.python_version()}
    for pkg in ("tunewise", "torch", "transformers", "peft", "accelerate", "bitsandbytes"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out


# --- start: the process group and the run directory ----------------------------------------------


def last_checkpoint(run_dir: Path) -> Path | None:
    from transformers.trainer_utils import get_last_checkpoint  # lazy: pulls torch, ~2 s

    ckpt_root = Path(run_dir) / "checkpoints"
    if not ckpt_root.is_dir():
        return None
    last = get_last_checkpoint(str(ckpt_root))
    return Path(last) if last else None


def join_process_group(cfg: ProjectConfig) -> None:
    """Under a launcher, join the process group now; without one, do nothing.

    The Trainer would create the group only when its arguments are built, after setup; the
    run-directory decision needs a barrier before that. accelerate's state is shared: when
    ``TrainingArguments`` sets it up again it finds the group initialised and keeps it, so the
    settings must be the ones ``training_args`` gives for several processes: ``use_cpu``
    exactly when the device policy places training on the CPU, and the Trainer's DDP timeout.
    """
    if _world_size() <= 1:
        return
    # lazy: accelerate and transformers pull torch; a one-process run never needs them
    from accelerate import PartialState
    from transformers import TrainingArguments

    cpu = device.for_project(cfg, "train").kind == "cpu"
    PartialState(cpu=cpu, timeout=timedelta(seconds=TrainingArguments.ddp_timeout))


def sharding_warning(distributed_type: str) -> str | None:
    """The launcher asked for FSDP or DeepSpeed, but accelerate set up something else.

    accelerate 1.15 turns ``--use_fsdp`` into FSDP only on GPU-like devices; on CPU processes
    it runs DDP over gloo (``MULTI_CPU``) without a word, every process holding the whole model.
    """
    asked = [
        kind
        for kind, env in (
            ("FSDP", "ACCELERATE_USE_FSDP"),
            ("DEEPSPEED", "ACCELERATE_USE_DEEPSPEED"),
        )
        if os.environ.get(env, "").lower() == "true"
    ]
    if not asked or distributed_type in asked:
        return None
    return (
        f"{asked[0]} was asked for, but accelerate runs {distributed_type} here: "
        "the weights are not sharded (accelerate shards on GPUs only)"
    )


def finished_record(run: RunDir) -> dict[str, Any] | None:
    """The record of a run that already ended (completed, or stopped by a rule), else None.

    Re-running such a run from its last checkpoint would overwrite the saved weights, e.g. the
    restored best of an early stop, so ``--resume`` leaves it alone.
    """
    previous = run.read()
    if previous and (previous.get("status") == "completed" or previous.get("stop_kind")):
        return previous
    return None


def data_paths(
    cfg: ProjectConfig, train_path: Path | None, val_path: Path | None
) -> tuple[Path, Path | None]:
    """The training and validation files: the ones given, else the project's splits."""
    splits = cfg.work_dir / "splits"
    train_path = (Path(train_path) if train_path else splits / "train.jsonl").resolve()
    if not train_path.is_file():
        raise UserError(
            f"{train_path}: training split not found; make the project's splits with "
            f"`{split_command(cfg, splits)}` (what `tunewise run` does first) or pass --train-file"
        )
    if (
        val_path is None
        and (splits / "val.jsonl").is_file()
        and train_path == (splits / "train.jsonl").resolve()
    ):
        val_path = splits / "val.jsonl"
    val_path = Path(val_path).resolve() if val_path else None
    if val_path is not None and not val_path.is_file():
        raise UserError(f"{val_path}: validation split not found")
    return train_path, val_path


def split_command(cfg: ProjectConfig, splits: Path) -> str:
    """The ``tunewise data split`` call that makes the splits the ladder would, in ``splits``."""
    data, fractions = cfg.data, cfg.data.split
    args = ["tunewise", "data", "split", str(data.train), "--out", str(splits)]
    # the project's own files and fractions, so the files equal the ladder's split stage
    for flag, own, fraction in (
        ("--val", data.val, fractions.val),
        ("--test", data.test, fractions.test),
    ):
        args += [f"{flag}-file", str(own)] if own is not None else [flag, str(fraction)]
    args += ["--seed", str(fractions.seed), "--project", cfg.name]
    if cfg.task.output_pattern:
        args += ["--pattern", cfg.task.output_pattern]
    return shlex.join(args)


def claim_run_dir(
    cfg: ProjectConfig,
    run: RunDir,
    *,
    train_path: Path | None,
    val_path: Path | None,
    resume: bool,
    console: Console | None = None,
) -> RunStart:
    """Check the run directory against what was asked (main process only, see the docstring).

    A new run needs a directory without run.json; a resumed one needs run.json and the data it
    started with. The directory itself is created when run.json is first written
    (:func:`tunewise.train.trainer.build`), so
    a user error found in between leaves nothing behind.
    """
    train_path, val_path = data_paths(cfg, train_path, val_path)
    previous = run.read()
    if not resume:
        if previous is not None:
            raise UserError(
                f"{run.path}: a run already exists here; use --resume {run.path} "
                "or another --run-dir"
            )
        return RunStart(run.path, train_path, val_path)
    if previous is None:
        raise UserError(f"{run.path}: nothing to resume (no run.json)")
    if previous.get("data_hashes") != data_hashes(train_path, val_path):
        raise UserError(
            f"{run.path}: the training data changed since this run started; start a new run"
        )
    # Holding the run's lock, nobody else is writing here: what a killed process was staging
    # is garbage, and on a nearly full disk it would make the resumed run's first save fail.
    clear_leftovers(run.path)
    resume_from = last_checkpoint(run.path)
    if resume_from is None and console is not None:
        console.print(f"[yellow]warning:[/] {run.path}: no checkpoint yet, restarting from step 0")
    return RunStart(run.path, train_path, val_path, resume_from, previous)


def main_decides(decide: Callable[[], T]) -> T:
    """``decide()`` on the main process only; every other process waits here for its answer.

    Under a launcher, decisions about the run directory (does a run exist, is there a checkpoint
    to resume) must be taken once: a process that looked for itself could find the run.json the
    main process had just written and refuse to start. The broadcast is the barrier: the other
    processes block in it until the main process has decided. A
    :class:`UserError` on the main process is raised on every process, so none waits forever.
    Needs the process group to exist already (:func:`join_process_group`).
    """
    if _world_size() <= 1:
        return decide()
    # lazy: accelerate pulls torch; a one-process run never needs it
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    box: list[Any] = [None]
    if PartialState().is_main_process:
        box[0] = {"error": "the main process failed while preparing the run; see its output"}
        try:
            box[0] = {"value": decide()}
        except UserError as exc:
            box[0] = {"error": str(exc)}
            raise
        finally:
            broadcast_object_list(box, from_process=0)
        return box[0]["value"]
    broadcast_object_list(box, from_process=0)
    if "error" in box[0]:
        raise UserError(box[0]["error"])
    return box[0]["value"]


# --- the record ----------------------------------------------------------------------------------


class RunRecorder:
    """Keeps run.json current: written at start, after each evaluation, and at the end.

    The phases of :func:`tunewise.train.trainer.train` say what happened through its methods
    (:meth:`add_eval`, :meth:`interrupted`, :meth:`stopped`, :meth:`completed`, :meth:`finished`);
    only the main process writes the file (through :class:`RunDir`).
    """

    def __init__(self, prep: Prepared) -> None:
        self.prep = prep
        self.run = RunDir(prep.run_dir)
        # Handed over by the main process (RunStart): no other process reads run.json.
        previous = prep.previous if prep.resume_from is not None else None
        self.record: dict[str, Any] = {
            "status": "running",
            "method": prep.method,
            "config": dump_project(prep.cfg),
            "project_root": str(prep.cfg.root),
            "base_model": {
                "name": prep.ref.name,
                "path": str(prep.ref.path),
                "weight_hash": prep.ref.weight_hash,
            },
            "data": {
                "train": str(prep.train_path),
                "val": str(prep.val_path) if prep.val_path else None,
            },
            "data_hashes": data_hashes(prep.train_path, prep.val_path),
            # the files this run read, per-item ids and traffic windows: `registry add` copies it
            "lineage": lineage.of_run(
                prep.cfg,
                prep.train_path,
                prep.val_path,
                docs=bool(prep.context and prep.context.docs),
            ),
            "examples": {
                "train": len(prep.train_ds),
                "val": prep.n_val,
                # items the validation loss is computed on (train.val_loss_items)
                "val_loss": len(prep.val_ds) if prep.val_ds else 0,
            },
            "train_tokens_per_epoch": prep.train_ds.n_tokens,
            "overlong": {k: v.to_dict() for k, v in prep.reports.items()},
            "versions": versions(),
            "world_size": int(os.environ.get("WORLD_SIZE", "1")),
            "command": sys.argv,
            "process": process_identity(),
            "warnings": prep.warnings,
            "metrics": [],
            "best_val_loss": None,
            "best_step": None,
            "stop_reason": None,
            "wall_time_s": 0.0,
            "tokens_per_s": None,
            "resumed_from": [],
        }
        if previous:
            self.record["metrics"] = previous.get("metrics", [])
            self.record["wall_time_s"] = previous.get("wall_time_s", 0.0)
            self.record["resumed_from"] = [*previous.get("resumed_from", []), str(prep.resume_from)]
        self._wall0 = float(self.record["wall_time_s"])
        self._t0 = time.time()

    @property
    def status(self) -> str:
        return str(self.record["status"])

    @property
    def stop_reason(self) -> str | None:
        return self.record.get("stop_reason")

    @property
    def best_step(self) -> int | None:
        return self.record.get("best_step")

    def write(self) -> None:
        if is_main_process():
            self.record["wall_time_s"] = round(self._wall0 + time.time() - self._t0, 2)
            self.run.write(self.record)

    def add_eval(
        self, step: int, epoch: float | None, metrics: dict[str, float], train_loss: float | None
    ) -> None:
        row = {
            "step": step,
            "epoch": round(epoch or 0.0, 4),
            "train_loss": train_loss,
            "val_loss": metrics.get("eval_loss"),
            "repetition": metrics.get("eval_repetition"),
            "distinct2": metrics.get("eval_distinct2"),
            # seconds spent on the validation loss and on the overfitting check's generations
            "val_loss_s": _rounded(metrics.get("eval_runtime")),
            "overfit_check_s": _rounded(metrics.get("eval_overfit_check_s")),
        }
        # A resumed run re-evaluates nothing before its checkpoint, but a kill after an eval and
        # before the next checkpoint replays that eval: keep one row per step.
        self.record["metrics"] = [m for m in self.record["metrics"] if m["step"] < step] + [row]
        # Derived from the rows, so a replayed evaluation after a resume is not counted twice.
        self.record["overfit_check_s"] = round(
            sum(m.get("overfit_check_s") or 0.0 for m in self.record["metrics"]), 2
        )
        vals = [m for m in self.record["metrics"] if m["val_loss"] is not None]
        if vals:
            best = min(vals, key=lambda m: m["val_loss"])
            self.record["best_val_loss"], self.record["best_step"] = best["val_loss"], best["step"]
        self.write()

    def set_placement(self, placement: dict[str, Any]) -> None:
        """Where the weights live and in which dtype (``tunewise.runtime.device``'s decision)."""
        self.record["placement"] = placement

    def set_tracking(self, mlflow: dict[str, str]) -> None:
        """The MLflow run this training run reports to (a resume continues it)."""
        self.record["mlflow"] = mlflow

    def track_eval_budget(self, accounting: dict[str, Any]) -> None:
        """train.eval_every auto: the scheduler's accounting, the same dict (it fills it in)."""
        self.record["eval_budget"] = accounting

    def track_shared_prefix(self, stats: dict[str, Any]) -> None:
        """The shared-prefix counters: the same dict, so run.json follows them as they grow."""
        self.record["shared_prefix"] = stats

    def interrupted(self, how: str = "Ctrl-C") -> None:
        """Ctrl-C or SIGTERM (``how``): recorded at once, since the exception ends the process."""
        self.record["status"] = "stopped"
        self.record["stop_reason"] = f"interrupted ({how}); resume with --resume"
        self.write()

    def failed(self, reason: str) -> None:
        """A write that did not fit on the disk ended the run; ``--resume`` continues it.

        Recorded at once, like an interrupt. run.json is small and the half-written files are
        removed by then, so this write usually fits; when it does not, the error being raised
        matters more (and run.json's ``running`` reads as interrupted once the process is gone).
        """
        self.record.pop("stop_kind", None)  # a rule's stop not saved is no end: resume may redo it
        self.record.update(status="failed", stop_reason=reason)
        with contextlib.suppress(OSError):
            self.write()

    def stopped(self, kind: str, reason: str) -> None:
        """A stop rule (early stopping, overfitting) ended the run."""
        self.record.update(status="stopped", stop_reason=reason, stop_kind=kind)

    def restored_best(self, step: int) -> None:
        self.record["restored_best_step"] = step

    def warn(self, message: str) -> None:
        self.record["warnings"].append(message)

    def completed(self, reason: str) -> None:
        self.record.update(status="completed", stop_reason=reason)

    def finished(
        self,
        *,
        global_step: int,
        world_size: int,
        backend: str | None,
        train_loss: float,
        tokens_seen: int,
        tokens_this_session: int,
        seconds: float,
        files: list[str],
    ) -> dict[str, Any]:
        """The end of the run (whatever its status): figures, saved files; writes run.json."""
        self.record.update(
            global_step=global_step,
            world_size=world_size,
            distributed_backend=backend,
            train_loss=train_loss,
            tokens_trained=tokens_seen,
            tokens_per_s=round(tokens_this_session / seconds, 2) if seconds > 0 else None,
            files=files,
        )
        self.write()
        return dict(self.record)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)


def data_hashes(train_path: Path, val_path: Path | None) -> dict[str, str | None]:
    """Content hashes of the data a run trains on (a resume refuses changed data)."""
    return {
        "train": sha256_file(train_path),
        "val": sha256_file(val_path) if val_path else None,
    }


# --- the final files -----------------------------------------------------------------------------


def save_final(trainer: Any, prep: Prepared) -> list[str]:
    """Write the adapter (RUN/) or the full model (RUN/model/) atomically; returns file names."""
    run_dir = prep.run_dir
    tmp = run_dir / FINAL_STAGING
    if trainer.is_world_process_zero():
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    main = trainer.is_world_process_zero()
    with removed_on_failure(tmp, run_dir, run_dir, main):
        trainer.save_model(str(tmp))  # collective under FSDP/DeepSpeed: every process calls it
        trainer.accelerator.wait_for_everyone()
        if main:
            prep.tokenizer.save_pretrained(tmp)
    written: list[str] = []
    if main:
        # training_args.bin is a pickle; the run's settings already live in run.json.
        (tmp / "training_args.bin").unlink(missing_ok=True)
        if prep.method == "full":
            target = run_dir / "model"
            replace_dir(tmp, target)
            written = ["model/"]
            for f in target.iterdir():  # tokenizer files also at the root, like the adapter layout
                if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
                    shutil.copy2(f, run_dir / f.name)
        else:
            for f in sorted(tmp.iterdir()):
                os.replace(f, run_dir / f.name)
                written.append(f.name)
            shutil.rmtree(tmp, ignore_errors=True)
        fsync_dir(str(run_dir))
    return written


# --- callbacks -----------------------------------------------------------------------------------


def recorder_callback(recorder: RunRecorder, best: BestKeeper | None, tb_writer: Any = None) -> Any:
    """Feeds run.json (and repetition scores to logs.jsonl and TensorBoard) at each evaluation."""
    from transformers import TrainerCallback  # lazy: pulls torch, ~2 s

    class _Cb(TrainerCallback):
        def __init__(self) -> None:
            self.last_loss: float | None = None

        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any
        ) -> None:
            if logs and "loss" in logs:
                self.last_loss = float(logs["loss"])

        def on_evaluate(
            self,
            args: Any,
            state: Any,
            control: Any,
            metrics: dict | None = None,
            model: Any = None,
            **kw: Any,
        ) -> None:
            if metrics is None:
                return
            if best is not None and model is not None:
                best.offer(state.global_step, metrics.get("eval_loss"), model)
            # Every process keeps the record (the metrics are the same on all of them), so the
            # restore decision at the end agrees; only the main process writes it.
            recorder.add_eval(state.global_step, state.epoch, metrics, self.last_loss)
            if state.is_world_process_zero:
                # The Trainer logs eval metrics before the monitor adds repetition; log those here.
                extra = {
                    k: float(v)
                    for k, v in metrics.items()
                    if k in ("eval_repetition", "eval_distinct2")
                }
                if extra:
                    row = {
                        "time": round(time.time(), 3),
                        "step": state.global_step,
                        "epoch": state.epoch,
                        **extra,
                    }
                    with open(recorder.prep.run_dir / "logs.jsonl", "a", encoding="utf-8") as fh:
                        fh.write(json.dumps(row) + "\n")
                    if tb_writer is not None:
                        for k, v in extra.items():
                            tb_writer.add_scalar(k.replace("eval_", "eval/"), v, state.global_step)
                        tb_writer.flush()

    return _Cb()


class BestKeeper:
    """A CPU copy of the trainable weights at the best validation loss (restored on early stop)."""

    def __init__(self) -> None:
        self.step: int | None = None
        self.loss = float("inf")
        self.weights: dict[str, Any] | None = None

    def offer(self, step: int, loss: float | None, model: Any) -> None:
        if loss is None or loss >= self.loss:
            return
        self.step, self.loss = step, loss
        self.weights = {
            n: p.detach().to("cpu", copy=True)
            for n, p in model.named_parameters()
            if p.requires_grad
        }

    def restore(self, model: Any) -> None:
        import torch  # lazy: torch, ~1 s; only a training process restores weights

        if self.weights is None:
            return
        params = dict(model.named_parameters())
        with torch.no_grad():
            for n, w in self.weights.items():
                params[n].copy_(w.to(params[n].device))
