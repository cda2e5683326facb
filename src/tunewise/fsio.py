"""Atomic file writes, content hashes, and one writer per folder.

Every file that matters is written to a temporary file in the same directory, fsynced, then
renamed over the target: a crash or Ctrl-C leaves either the old file or the new one, never half
of one. A folder that several processes could write at once (a training run, a project's work
folder) is guarded by a :class:`FolderLock`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from tunewise.errors import UserError


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temp file beside ``path``; on clean exit fsync and rename it over ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    binary = "b" in mode
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates 0600; keep the mode of the file we replace, else the usual 0644, so a
        # report or a split written by tunewise can be shared like any other file.
        os.chmod(tmp, target.stat().st_mode & 0o777 if target.exists() else 0o644)
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if is_disk_full(exc):
            # every atomic write of every command says it the same way, in one line
            raise UserError(
                f"disk full writing {target}; nothing was changed (the temporary file is removed "
                "and the previous file, if any, is intact)"
            ) from None
        raise


def is_disk_full(exc: BaseException) -> bool:
    """An out-of-space error (ENOSPC, or EDQUOT on a quota)."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def replace_dir(src: str | Path, dst: str | Path) -> None:
    """Move the finished directory ``src`` to ``dst``, replacing whatever was there.

    ``src`` is written completely before this is called, so readers never see a half-written
    ``dst``; the rename itself is atomic, only the removal of an old ``dst`` before it is not.
    """
    if os.path.exists(dst):
        shutil.rmtree(dst)
    os.replace(src, dst)


@contextlib.contextmanager
def created_parents(path: str | Path) -> Iterator[None]:
    """Create the missing parent folders of ``path``; if the block fails, remove them again.

    With it a failed write leaves the tree as it was, not with new empty folders.
    """
    missing = []
    parent = Path(os.path.abspath(path)).parent
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    created: list[Path] = []
    try:
        for folder in reversed(missing):
            folder.mkdir()
            created.append(folder)
        yield
    except BaseException:
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


@contextlib.contextmanager
def staging_dir(target: str | Path, *, reap: bool = False) -> Iterator[Path]:
    """A new, empty folder beside ``target`` to build it in, then move it with :func:`replace_dir`.

    On a failure inside the block the folder and its contents are removed (with any parent folders
    this made), so nothing half-built is left. Beside ``target`` means on the same file system,
    where the final rename is atomic. Its mode is that of ``target`` when it exists, else 0755
    (``mkdtemp`` makes 0700).

    A process killed with -9 (or a lost machine) runs no cleanup. With ``reap`` the folder's name
    carries this process's id, and the folders earlier stagings of ``target`` left behind by
    processes that are gone are removed first (:func:`reap_stale_staging`).
    """
    target = Path(target)
    with created_parents(target):
        prefix = f".{target.name}."
        if reap:
            reap_stale_staging(target)
            prefix += f"{os.getpid()}."
        stage = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=target.parent))
        try:
            os.chmod(stage, target.stat().st_mode & 0o777 if target.is_dir() else 0o755)
            yield stage
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise


def reap_stale_staging(target: str | Path) -> list[Path]:
    """Remove the staging folders of ``target`` (``.NAME.PID.XXXXXXXX.tmp``, made by
    :func:`staging_dir` with ``reap``) whose process no longer runs; returns them.

    A folder whose process is alive is another writer's, mid-build, and is left alone; so is
    every name of another shape (another target's, or one with no process id to ask about).
    """
    target = Path(target)
    head = f".{target.name}."
    gone = []
    for path in target.parent.glob(f"{glob.escape(head)}*.tmp"):
        found = re.fullmatch(r"(\d+)\.[a-z0-9_]{8}", path.name[len(head) : -len(".tmp")])
        if found and path.is_dir() and not _running(int(found[1])):
            shutil.rmtree(path, ignore_errors=True)
            gone.append(path)
    return gone


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: no signal sent, only whether the process exists
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process; an absurd number
        return True
    return True


def fsync_dir(path: str | Path) -> None:
    """fsync a directory, so that new names and renames in it survive a crash (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_json_object(path: str | Path, what: str) -> dict[str, Any]:
    """A JSON file that must hold an object, or one line naming the file (UserError)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise UserError(f"{path}: unreadable {what}: {exc}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    return raw


def atomic_write_json(path: str | Path, obj: Any) -> None:
    # Keys keep the order they were given, never sorted: a config read back from run.json or a
    # release must render the same prompt, and a tools list's key order is part of the prompt
    # (apply_chat_template and the fallback both render the JSON as it comes).
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: str | Path, rows: Iterable[Any]) -> None:
    with atomic_open(path, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_json(obj: Any) -> str:
    """Hash of a JSON-serialisable value, independent of key order."""
    return sha256_text(json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")))


def sha256_path(path: str | Path | None) -> str | None:
    """A file's hash, or a folder's (every file under it, by relative path); None when absent."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return sha256_json([[str(p.relative_to(path)), sha256_file(p)] for p in files])
    return sha256_file(path) if path.is_file() else None


# --- one writer per folder --------------------------------------------------------------------

LOCK_FILE = ".lock"


class LockBusy(Exception):
    """Another process holds the folder's lock; ``holder`` is what it wrote into the lock file
    (None when unreadable, or when it took the lock a moment ago and has not written yet)."""

    def __init__(self, path: Path, holder: dict[str, Any] | None) -> None:
        super().__init__(f"{path}: locked by another process")
        self.path = path
        self.holder = holder


class FolderLock:
    """An exclusive ``flock`` on ``FOLDER/.lock``, taken without waiting.

    The kernel drops the lock when the process ends, however it ends (``kill -9`` included): a
    crash never leaves a stale lock to remove by hand, and no pid file can be taken for a live
    process. Once locked, ``holder`` (pid, host, start time, command) is written into the file,
    for the refusal message of the next process. A folder this lock created is removed again on
    release when nothing but the lock file is left in it (a run refused before it wrote anything).
    """

    def __init__(self, folder: str | Path, holder: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.holder = holder
        self._fd: int | None = None
        self._created: list[Path] = []

    def acquire(self) -> None:
        """Take the lock, or raise :class:`LockBusy` naming the process that holds it."""
        missing = []
        folder = Path(os.path.abspath(self.folder))
        while not folder.exists() and folder != folder.parent:
            missing.append(folder)
            folder = folder.parent
        for folder in reversed(missing):
            with contextlib.suppress(FileExistsError):  # another process made it first
                folder.mkdir()
                self._created.append(folder)
        try:
            self._fd = _locked_fd(self.path)
        except BaseException:
            self._remove_created()
            raise
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(self.holder).encode("utf-8"), 0)

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            # Cleared and removed while still locked, so no other process reads a stale holder.
            os.ftruncate(fd, 0)
            if self._created and [p.name for p in self.folder.iterdir()] == [LOCK_FILE]:
                self.path.unlink()
                self._remove_created()
        finally:
            os.close(fd)  # drops the lock

    def _remove_created(self) -> None:
        for folder in reversed(self._created):
            with contextlib.suppress(OSError):  # not empty: something else lives there now
                folder.rmdir()
        self._created = []

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _locked_fd(path: Path) -> int:
    """An open descriptor of ``path`` holding its exclusive flock (LockBusy when held)."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:  # the holder removed the folder it had made: make it again
            path.parent.mkdir(parents=True, exist_ok=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise LockBusy(path, holder) from None
        except BaseException:
            os.close(fd)
            raise
        # The holder before us may have removed the file between our open and our flock: a lock
        # on a removed file guards nothing, so lock the file that is there now.
        try:
            now = os.stat(path)
        except FileNotFoundError:
            now = None
        mine = os.fstat(fd)
        if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
            return fd
        os.close(fd)


def _read_holder(fd: int) -> dict[str, Any] | None:
    try:
        data = json.loads(os.pread(fd, 1 << 16, 0).decode("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
