"""Trainer checkpoints written atomically, and a full disk said in one line.

The Trainer writes ``checkpoint-N`` in place; a kill mid-write would leave a folder that
``get_last_checkpoint`` picks and resume then fails on. :func:`save_atomically` has it write
into ``checkpoints/.staging`` and renames the finished folder into place once every process has
finished writing, so ``checkpoints/checkpoint-N`` is always complete.

A save that fails (a full disk, Ctrl-C, SIGTERM) removes its staging folder: a half checkpoint
left there (30 MB for the tiny model's optimizer state, gigabytes for a real one) would keep the
disk full, and the ``--resume`` that follows would fail the same way. A staging folder left by a
process killed mid-save is removed by the next process to hold the run directory's lock
(:func:`clear_leftovers`). A full disk becomes :class:`DiskFull`, one line naming the
checkpoint (or final weights) it could not write and the last complete checkpoint to resume from.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tunewise.errors import UserError
from tunewise.fsio import fsync_dir, replace_dir

STAGING = ".staging"  # inside RUN/checkpoints: the checkpoint being written
FINAL_STAGING = ".final-tmp"  # inside RUN: the final weights being written (record.save_final)
CHECKPOINTS_KEPT = 2  # the newest checkpoints kept on disk; resume needs only the last

# The messages of a full disk from the writers a checkpoint goes through: Python's own OSError,
# safetensors' Rust I/O error ("No space left on device (os error 28)"), quotas.
_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_DISK_FULL_TEXT = ("no space left on device", "disk quota exceeded", "os error 28", "os error 122")
# torch.save's zip writer says only "unexpected pos N vs M" or "file write failed" when a write
# comes up short: with less free space than this left, a full disk is the cause.
LOW_SPACE_BYTES = 16 << 20


class DiskFull(UserError):
    """A checkpoint or the final weights did not fit on the disk (the half-written folder is
    already removed)."""


def free_bytes(path: str | Path) -> int | None:
    """Space left to this process on ``path``'s file system (root may use the reserved blocks)."""
    path = Path(path)
    while not path.exists() and path != path.parent:  # the folder may be gone, or not made yet
        path = path.parent
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    blocks = st.f_bfree if os.geteuid() == 0 else st.f_bavail
    return blocks * st.f_frsize


def is_disk_full(exc: BaseException, folder: str | Path) -> bool:
    """Whether ``exc``, raised while writing into ``folder``, means the disk (or quota) is full.

    Looked for along the exception's chain, since the libraries wrap the OSError; checked before
    the half-written files are removed, since those are part of what filled the disk.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _DISK_FULL_ERRNOS:
            return True
        if any(text in str(seen).lower() for text in _DISK_FULL_TEXT):
            return True
        seen = seen.__cause__ or seen.__context__
    if not isinstance(exc, (OSError, RuntimeError)):
        return False
    free = free_bytes(folder)
    return free is not None and free < LOW_SPACE_BYTES


def complete_checkpoints(checkpoints_root: str | Path) -> list[Path]:
    """The finished ``checkpoint-N`` folders, oldest first (the staging folder is not one)."""
    from transformers.trainer_utils import sort_checkpoints  # lazy: pulls torch, ~2 s

    if not os.path.isdir(checkpoints_root):
        return []
    return [Path(p) for p in sort_checkpoints(str(checkpoints_root))]


def disk_full_message(written: Path, run_dir: Path) -> str:
    done = complete_checkpoints(run_dir / "checkpoints")
    last = str(done[-1]) if done else "none"
    return (
        f"disk full writing {written}; the last complete checkpoint is {last}: free some space, "
        f"then `tunewise train --resume {run_dir}`"
    )


@contextlib.contextmanager
def removed_on_failure(staging: Path, written: Path, run_dir: Path, main: bool) -> Iterator[None]:
    """If the block fails, the main process removes ``staging``; a full disk (found before the
    removal) becomes :class:`DiskFull` about ``written``, any other error goes on."""
    try:
        yield
    except BaseException as exc:
        if not main:
            raise
        full = isinstance(exc, Exception) and is_disk_full(exc, staging)
        shutil.rmtree(staging, ignore_errors=True)
        if full:
            raise DiskFull(disk_full_message(written, run_dir)) from None
        raise


def clear_leftovers(run_dir: Path) -> None:
    """Remove the staging folders a killed process left in ``run_dir`` (the lock holder only)."""
    shutil.rmtree(run_dir / "checkpoints" / STAGING, ignore_errors=True)
    shutil.rmtree(run_dir / FINAL_STAGING, ignore_errors=True)


def save_atomically(trainer: Any, write: Callable[[str], None]) -> None:
    """Have ``write(staging_root)`` (the Trainer's own save) write ``checkpoint-N`` into the
    staging folder, then rename it into place and drop the checkpoints beyond the newest few."""
    final_root = trainer.args.output_dir
    staging = os.path.join(final_root, STAGING)
    name = f"checkpoint-{trainer.state.global_step}"
    main = trainer.args.should_save
    if main:
        shutil.rmtree(staging, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    root = Path(final_root)
    with removed_on_failure(Path(staging), root / name, root.parent, main):
        write(staging)
    trainer.accelerator.wait_for_everyone()
    if main:
        replace_dir(os.path.join(staging, name), os.path.join(final_root, name))
        fsync_dir(final_root)
        for old in complete_checkpoints(final_root)[:-CHECKPOINTS_KEPT]:
            shutil.rmtree(old, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
