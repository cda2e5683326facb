"""Atomic file writes and content hashes.

Every file that matters is written to a temporary file in the same directory, fsynced, then
renamed over the target: a crash or Ctrl-C leaves either the old file or the new one, never half
of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any


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
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


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
def staging_dir(target: str | Path) -> Iterator[Path]:
    """A new, empty folder beside ``target`` to build it in, then move it with :func:`replace_dir`.

    On a failure inside the block the folder and its contents are removed (with any parent folders
    this made), so nothing half-built is left. Beside ``target`` means on the same file system,
    where the final rename is atomic. Its mode is that of ``target`` when it exists, else 0755
    (``mkdtemp`` makes 0700).
    """
    target = Path(target)
    with created_parents(target):
        stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        try:
            os.chmod(stage, target.stat().st_mode & 0o777 if target.is_dir() else 0o755)
            yield stage
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


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
