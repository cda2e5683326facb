"""The registry's files: content-addressed blobs, and versions materialised from them for use.

Layout under the registry folder::

    blobs/sha256/<hash>             one file's bytes, read-only, named by its sha256
    blobs/sha256/.incoming.<pid>.*  a blob being written by process <pid>
    versions/<name>/<version>/      a version's files under their run names, as PEFT expects

A blob is written to ``.incoming.<pid>.*``, fsynced and renamed to its hash, so a killed writer
leaves at most that temporary file; the next writer removes those whose process is gone.
Files are hashed again whenever a version is materialised: a corrupted file is reported
(:class:`CorruptedFileError`) and never served. On a read-only registry a version is copied into a
temporary folder of the reading process instead (removed when it exits).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import hashlib
import os
import re
import shutil
import tempfile
import time
from pathlib import Path, PurePosixPath

from tunewise.errors import UserError
from tunewise.fsio import sha256_file
from tunewise.registry.types import Version, validate_name

# Test hooks: make `add` exit abruptly at a named point to prove crash safety, or wait there (for
# a signal sent mid-write).
CRASH_ENV = "TUNEWISE_REGISTRY_CRASH_AT"
PAUSE_ENV = "TUNEWISE_REGISTRY_PAUSE_AT"
INCOMING = ".incoming."
# A leftover without a pid (written before pids were part of the name) is removed after this.
LEGACY_INCOMING_AGE_S = 3600
# Versions materialised outside a read-only registry, by (registry, name, version).
_PRIVATE_COPIES: dict[tuple[str, str, int], Path] = {}


class CorruptedFileError(UserError):
    """A registry file whose content no longer matches its recorded hash."""


def crash_point(point: str) -> None:
    if os.environ.get(CRASH_ENV) == point:
        os._exit(17)
    if os.environ.get(PAUSE_ENV) == point:
        time.sleep(60)


def safe_relpath(rel: str) -> str:
    p = PurePosixPath(rel)
    if "\x00" in rel or p.is_absolute() or any(part in ("", ".", "..") for part in p.parts):
        raise UserError(f"refusing unsafe file path {rel!r} in registry entry")
    return str(p)


class BlobStore:
    """Blobs and materialised versions under one registry folder ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blob_dir = root / "blobs" / "sha256"
        self.versions_dir = root / "versions"

    # -- blobs ------------------------------------------------------------------------------
    def path(self, digest: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise UserError(f"invalid blob hash {digest!r}")
        return self.blob_dir / digest

    def exist(self) -> bool:
        return self.blob_dir.is_dir() and any(
            not p.name.startswith(".") for p in self.blob_dir.iterdir()
        )

    def put(self, src: Path) -> str:
        """Copy ``src`` into the blob store atomically; return its sha256."""
        fd, tmp = tempfile.mkstemp(prefix=f"{INCOMING}{os.getpid()}.", dir=self.blob_dir)
        try:
            h = hashlib.sha256()
            with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
                while block := inp.read(1 << 20):
                    h.update(block)
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
            crash_point("inside_blob")
            digest = h.hexdigest()
            target = self.path(digest)
            if target.exists() and sha256_file(target) == digest:
                os.unlink(tmp)
            else:
                os.chmod(tmp, 0o444)
                os.replace(tmp, target)
            return digest
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def clean_incoming(self) -> int:
        """Remove the unfinished blob writes of processes that are gone; returns how many."""
        removed = 0
        for leftover in self.blob_dir.glob(INCOMING + "*"):
            owner = leftover.name[len(INCOMING) :].split(".", 1)[0]
            try:
                if owner.isdigit():
                    gone = not _process_alive(int(owner))
                else:
                    gone = time.time() - leftover.stat().st_mtime > LEGACY_INCOMING_AGE_S
                if gone:
                    leftover.unlink()
                    removed += 1
            except FileNotFoundError:  # its writer finished or another cleaner got there first
                continue
        return removed

    # -- versions ---------------------------------------------------------------------------
    def verify(self, v: Version) -> list[str]:
        """Relative paths whose blob is missing or no longer matches its hash."""
        bad = []
        for rel, digest in v.files.items():
            blob = self.path(digest)
            if not blob.is_file() or sha256_file(blob) != digest:
                bad.append(rel)
        return bad

    def _dir_ok(self, target: Path, v: Version) -> bool:
        return target.is_dir() and all(
            (target / safe_relpath(rel)).is_file() and sha256_file(target / rel) == digest
            for rel, digest in v.files.items()
        )

    def materialise(self, v: Version) -> Path:
        """A directory with the version's files under their run names, every hash checked."""
        target = self.versions_dir / validate_name(v.name) / str(int(v.version))
        if self._dir_ok(target, v):
            return target
        bad = self.verify(v)
        if bad:
            raise CorruptedFileError(
                f"{v.spec}: corrupted or missing file(s) {', '.join(sorted(bad))} "
                "(hash mismatch with the registry record); refusing to use this version"
            )
        if not _writable_dir(target.parent):  # a read-only home: a copy of this process's own
            return self._private_copy(v)
        tmp = Path(tempfile.mkdtemp(prefix=f".{v.version}.", dir=target.parent))
        try:
            self._copy_verified(v, tmp)
            try:
                os.replace(tmp, target)  # fails when another process materialised it first
            except OSError:
                if self._dir_ok(target, v):
                    shutil.rmtree(tmp, ignore_errors=True)
                    return target
                # a damaged copy: move it aside (never delete a folder under a reader's feet)
                aside = Path(tempfile.mkdtemp(prefix=f".{v.version}.stale.", dir=target.parent))
                os.replace(target, aside / "old")
                os.replace(tmp, target)
                shutil.rmtree(aside, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target

    def _copy_verified(self, v: Version, folder: Path) -> None:
        for rel, digest in v.files.items():
            dst = folder / safe_relpath(rel)
            dst.parent.mkdir(parents=True, exist_ok=True)
            # A copy, not a hardlink: a later write to the served copy cannot reach the blob.
            shutil.copyfile(self.path(digest), dst)
            if sha256_file(dst) != digest:
                raise CorruptedFileError(f"{v.spec}: {rel}: changed while being copied")

    def _private_copy(self, v: Version) -> Path:
        """The version's files in a temporary folder of this process, removed at exit."""
        key = (str(self.root), v.name, v.version)
        cached = _PRIVATE_COPIES.get(key)
        if cached is not None and self._dir_ok(cached, v):
            return cached
        folder = Path(tempfile.mkdtemp(prefix=f"tunewise-{v.name}-{v.version}-"))
        atexit.register(shutil.rmtree, folder, True)
        try:
            self._copy_verified(v, folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        _PRIVATE_COPIES[key] = folder
        return folder


def _writable_dir(folder: Path) -> bool:
    """Create ``folder`` if needed; False when the file system will not let us write there."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        return False
    return os.access(folder, os.W_OK)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
