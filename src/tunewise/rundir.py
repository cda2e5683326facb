"""One owner for the training run directory format.

A run directory is what ``tunewise train`` writes and every later stage reads::

    RUN/run.json                      status, method, resolved config, base model + weight hash,
                                      data lineage (tunewise.registry.lineage), ...
    RUN/adapter_config.json           LoRA/QLoRA: the PEFT adapter ...
    RUN/adapter_model.safetensors     ... and its weights
    RUN/model/config.json             full fine-tune: a complete HF checkpoint
    RUN/checkpoints/checkpoint-*/     Trainer checkpoints (resume)
    RUN/.lock                         held by the one process writing the run (:meth:`writer_lock`)

Everything that asks "is this LoRA or full?", "which base model?", "where are the weights?" or
"what did the record say?" asks a :class:`RunDir`, so the format has one reader and one writer.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psutil

from tunewise.errors import UserError
from tunewise.fsio import FolderLock, LockBusy, atomic_write_json

RUN_FILE = "run.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
FULL_MODEL_DIR = "model"

RunKind = Literal["lora", "full"]


@dataclass(frozen=True)
class RunDir:
    """A training run directory (it need not exist yet: ``write`` creates the record)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    # -- files ------------------------------------------------------------------------------
    @property
    def run_json(self) -> Path:
        return self.path / RUN_FILE

    @property
    def adapter_config(self) -> Path:
        return self.path / ADAPTER_CONFIG

    @property
    def adapter_weights(self) -> Path:
        return self.path / ADAPTER_WEIGHTS

    @property
    def model_dir(self) -> Path:
        """A full fine-tune's checkpoint directory."""
        return self.path / FULL_MODEL_DIR

    def has_record(self) -> bool:
        return self.run_json.is_file()

    # -- kind -------------------------------------------------------------------------------
    @property
    def kind(self) -> RunKind | None:
        """``lora`` (QLoRA too: an adapter), ``full``, or None when neither output is there."""
        if self.adapter_config.is_file():
            return "lora"
        if (self.model_dir / "config.json").is_file():
            return "full"
        return None

    def require_kind(self) -> RunKind:
        kind = self.kind
        if kind is None:
            raise UserError(
                f"{self.path}: not a training run "
                f"(no {ADAPTER_CONFIG} and no {FULL_MODEL_DIR}/config.json)"
            )
        return kind

    @property
    def weights_dir(self) -> Path:
        """The directory to hand to PEFT (LoRA) or transformers (full)."""
        return self.model_dir if self.require_kind() == "full" else self.path

    # -- record -----------------------------------------------------------------------------
    def read(self) -> dict[str, Any] | None:
        """run.json's content, None when there is none; a damaged file is a UserError."""
        if not self.run_json.is_file():
            return None
        try:
            data = json.loads(self.run_json.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UserError(f"{self.run_json}:{exc.lineno}: invalid JSON: {exc.msg}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{self.run_json}: unreadable run.json: {exc}") from None
        if not isinstance(data, dict):
            raise UserError(f"{self.run_json}: expected a JSON object")
        return data

    def record(self) -> dict[str, Any]:
        """run.json's content; a missing record is a UserError."""
        data = self.read()
        if data is None:
            raise UserError(f"{self.path}: not a training run (no {RUN_FILE})")
        return data

    def write(self, record: dict[str, Any]) -> None:
        """Replace run.json atomically (callers decide which process writes)."""
        atomic_write_json(self.run_json, record)

    def base_model(self) -> dict[str, Any]:
        """``{"name", "path", "weight_hash"}`` of the run's base model ({} if unknown)."""
        data = self.read() or {}
        base = data.get("base_model")
        return base if isinstance(base, dict) else {}

    def base_hash(self) -> str | None:
        value = self.base_model().get("weight_hash")
        return str(value) if value else None

    def base_reference(self) -> str | None:
        """What :func:`tunewise.runtime.models.resolve` accepts for the base: its path, else its
        name."""
        base = self.base_model()
        value = base.get("path") or base.get("name")
        return str(value) if value else None

    def method(self) -> str | None:
        data = self.read() or {}
        value = data.get("method")
        return str(value) if value else None

    def status(self) -> str | None:
        data = self.read() or {}
        value = data.get("status")
        return str(value) if value else None

    def effective_status(self) -> str | None:
        """The recorded status, except a ``running`` run whose process is gone: ``interrupted``.

        run.json says ``running`` until the trainer writes its end, so a ``kill -9`` (or a lost
        machine) leaves it saying so forever. The record carries the trainer's pid, host and the
        process's start time; on the same host a pid that no longer exists, or now belongs to a
        younger process (pid reuse), means the run was interrupted. On another host we cannot
        tell, so it stays ``running``.
        """
        data = self.read() or {}
        value = data.get("status")
        status = str(value) if value else None
        if status == "running" and _process_gone(data.get("process")):
            return "interrupted"
        return status

    def resume_command(self) -> str:
        """The command that continues this run from its last checkpoint."""
        return f"tunewise train --resume {self.path}"

    def writer_lock(self) -> contextlib.AbstractContextManager[None]:
        """Held by the one process that writes this run, for the whole training (see
        :func:`one_writer`); a second writer (a new run or a ``--resume`` into the same folder)
        is refused in one line naming the holder."""
        return one_writer(
            self.path,
            lambda holder: (
                f"{self.path}: another process is writing this run ({holder}); "
                "wait for it to end, or use another --run-dir"
            ),
        )


@contextlib.contextmanager
def one_writer(folder: Path, refusal: Callable[[str], str]) -> Iterator[None]:
    """Hold ``folder``'s OS lock (:class:`tunewise.fsio.FolderLock`) for the block.

    Two trainings in one run directory would each overwrite the other's checkpoints and record,
    and both exit 0: one result silently lost. When another process holds the lock this raises a
    UserError, ``refusal(description of the holder)``. The kernel drops the lock when its holder
    dies, ``kill -9`` included, so nothing stale is ever left to remove.
    """
    lock = FolderLock(folder, writer_identity())
    try:
        lock.acquire()
    except LockBusy as busy:
        raise UserError(refusal(describe_holder(busy.holder))) from None
    try:
        yield
    finally:
        lock.release()


def writer_identity() -> dict[str, Any]:
    """What a lock holder writes into its lock file: :func:`process_identity` and its command."""
    argv = list(sys.argv)
    if argv and Path(argv[0]).name in ("__main__.py", "tunewise"):
        argv[0] = "tunewise"  # `python -m tunewise` runs tunewise/__main__.py
    return process_identity() | {"command": shlex.join(argv)}


def describe_holder(holder: dict[str, Any] | None) -> str:
    """``pid 4242 on host gpu1, started 2026-12-01 10:00:00: tunewise train ...``."""
    if not holder:
        return "a process that is still starting"
    started = holder.get("started")
    when = (
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
        if isinstance(started, (int, float))
        else "?"
    )
    # one line, and no terminal escapes from whatever the holder's arguments held
    command = "".join(c if c.isprintable() else "?" for c in str(holder.get("command") or "?"))
    return (
        f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {when}: {command}"
    )


def process_identity() -> dict[str, Any]:
    """What run.json records about the training process, for :meth:`RunDir.effective_status`."""
    me = psutil.Process()
    return {"pid": me.pid, "host": socket.gethostname(), "started": me.create_time()}


def _process_gone(process: Any) -> bool:
    """True when ``process`` (a :func:`process_identity` record) was on this host and is gone."""
    if not isinstance(process, dict) or process.get("host") != socket.gethostname():
        return False
    pid = process.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool):
        return False
    try:
        proc = psutil.Process(pid)
        started = proc.create_time()
        if proc.status() == psutil.STATUS_ZOMBIE:  # killed, not yet reaped by its parent
            return True
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:  # e.g. access denied: it exists
        return False
    recorded = process.get("started")
    # A pid reused by a process that started after ours is not our run.
    return isinstance(recorded, (int, float)) and started > recorded + 1.0
