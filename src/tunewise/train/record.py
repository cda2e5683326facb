"""The run record: ``RUN/run.json`` kept current during training, and the best-weights keeper."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunewise.config import dump_project
from tunewise.errors import UserError
from tunewise.fsio import atomic_write_json, sha256_file

if TYPE_CHECKING:
    from tunewise.train.trainer import Prepared


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def versions() -> dict[str, str]:
    """Library versions recorded in every run.json."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("tunewise", "torch", "transformers", "peft", "accelerate", "bitsandbytes"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out


def read_run(run_dir: Path) -> dict[str, Any] | None:
    p = Path(run_dir) / "run.json"
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        raise UserError(f"{p}: unreadable run.json") from None


class RunRecorder:
    """Keeps run.json current: written at start, after each evaluation, and at the end."""

    def __init__(self, prep: Prepared) -> None:
        self.prep = prep
        self.path = prep.run_dir / "run.json"
        previous = read_run(prep.run_dir) if prep.resume_from is not None else None
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
            "data_hashes": {
                "train": sha256_file(prep.train_path),
                "val": sha256_file(prep.val_path) if prep.val_path else None,
            },
            "examples": {
                "train": len(prep.train_ds),
                "val": len(prep.val_ds) if prep.val_ds else 0,
            },
            "train_tokens_per_epoch": prep.train_ds.n_tokens,
            "overlong": {k: v.to_dict() for k, v in prep.reports.items()},
            "versions": versions(),
            "world_size": int(os.environ.get("WORLD_SIZE", "1")),
            "command": sys.argv,
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

    def write(self) -> None:
        if _is_main():
            self.record["wall_time_s"] = round(self._wall0 + time.time() - self._t0, 2)
            atomic_write_json(self.path, self.record)

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
        }
        # A resumed run re-evaluates nothing before its checkpoint, but a kill after an eval and
        # before the next checkpoint replays that eval: keep one row per step.
        self.record["metrics"] = [m for m in self.record["metrics"] if m["step"] < step] + [row]
        vals = [m for m in self.record["metrics"] if m["val_loss"] is not None]
        if vals:
            best = min(vals, key=lambda m: m["val_loss"])
            self.record["best_val_loss"], self.record["best_step"] = best["val_loss"], best["step"]
        self.write()


def recorder_callback(recorder: RunRecorder, best: BestKeeper | None, tb_writer: Any = None) -> Any:
    """Feeds run.json (and the repetition scores to logs.jsonl and TensorBoard) at each evaluation."""
    from transformers import TrainerCallback

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
            if state.is_world_process_zero:
                recorder.add_eval(state.global_step, state.epoch, metrics, self.last_loss)
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
        import torch

        if self.weights is None:
            return
        params = dict(model.named_parameters())
        with torch.no_grad():
            for n, w in self.weights.items():
                params[n].copy_(w.to(params[n].device))
