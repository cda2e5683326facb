"""The traffic log of ``tunewise serve --log-traffic DIR``: one JSONL record per answered request.

Why these choices:

* PII is scrubbed (:func:`scrub`) with the detectors ``tunewise data check`` uses
  (:func:`tunewise.data.checks.find_pii`), in the writer thread, before a byte reaches the disk.
* Files are append-only and rotated by size: ``traffic-<UTC timestamp>-<n>.jsonl``. Each record
  is one ``os.write`` of a whole line on an unbuffered descriptor, so the kernel has it when the
  call returns; a file is fsynced when it is closed (rotation, shutdown) and never opened again.
  A ``kill -9`` therefore loses at most the records still queued and a partly written last line
  of the open file, which :func:`read_traffic` skips.
* The route never waits on the disk: :meth:`TrafficLog.submit` puts the record on a bounded
  queue that one background thread drains; when the queue is full the record is dropped and
  counted (``TrafficLog.dropped``, logged at shutdown), because a slow disk must not slow answers.
* Sampling is drawn per request from one ``random.Random``; a seed (``traffic_seed`` or
  ``$TUNEWISE_TRAFFIC_SEED``) makes the logged subset reproducible in tests.
* A shadow challenger (``serve --shadow``, :mod:`tunewise.serve.shadow`) writes its answers
  through a second log in the same folder, files ``shadow-<UTC timestamp>-<n>.jsonl``
  (``prefix="shadow"``), one record per shadowed request linked by ``shadow_of`` to the
  production record's ``id``. Separate files keep :func:`read_traffic`'s default (the requests
  clients made, answered by production) free of challenger answers.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tunewise.data.checks import find_pii
from tunewise.errors import UserError
from tunewise.fsio import fsync_dir
from tunewise.runtime.backend import GenResult

__all__ = [
    "TrafficLog",
    "TrafficSettings",
    "env_seed",
    "iter_traffic",
    "read_traffic",
    "scrub",
    "traffic_files",
]

log = logging.getLogger("tunewise.serve.traffic")

SEED_ENV = "TUNEWISE_TRAFFIC_SEED"
PRODUCTION, SHADOW = "traffic", "shadow"  # file name prefixes: the requests, the shadow's
_NAME = re.compile(r"^(traffic|shadow)-(\d{8}T\d{6}Z)-(\d+)\.jsonl$")
_STOP = object()  # the writer's shutdown sentinel


@dataclass
class TrafficSettings:
    dir: Path
    sample: float = 1.0  # share of requests logged, 0 < sample <= 1
    max_mb: float = 64.0  # rotate once the open file would pass this size
    keep_days: float | None = None  # delete closed files older than this; None keeps all
    seed: int | None = None  # sampling seed; None reads $TUNEWISE_TRAFFIC_SEED, else random
    queue_size: int = 4096  # records waiting for the writer before new ones are dropped
    prefix: str = PRODUCTION  # file names: traffic-*.jsonl, or shadow-*.jsonl for the shadow's

    def check(self) -> None:
        """One-line errors naming the flag, before the model loads."""
        if not 0 < self.sample <= 1:
            raise UserError(f"--traffic-sample must be in (0, 1], not {self.sample}")
        if not self.max_mb > 0:
            raise UserError(f"--traffic-max-mb must be positive, not {self.max_mb}")
        if self.keep_days is not None and not self.keep_days > 0:
            raise UserError(f"--traffic-keep-days must be positive, not {self.keep_days}")


# --------------------------------------------------------------------------- scrubbing


def scrub(text: str) -> str:
    """``text`` with every e-mail, phone and Luhn-valid card number replaced by
    ``[email]``, ``[phone]``, ``[card]``."""
    # A few passes: replacing one find can expose another (a phone inside a longer number).
    for _ in range(3):
        found = find_pii(text)
        if not found:
            return text
        pairs = [(value, kind) for kind, values in found.items() for value in values]
        # Longest first, so a value that is part of a longer one never leaves a tail behind.
        for value, kind in sorted(pairs, key=lambda p: -len(p[0])):
            text = text.replace(value, f"[{kind}]")
    return text


def _scrub_tree(value: Any) -> Any:
    """Every string in a JSON-like value, scrubbed (messages may carry nested parts)."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, list):
        return [_scrub_tree(v) for v in value]
    if isinstance(value, dict):
        return {k: _scrub_tree(v) for k, v in value.items()}
    return value


def scrubbed(record: dict[str, Any]) -> dict[str, Any]:
    """The record with its client-supplied text scrubbed; ids, times and numbers are ours."""
    out = dict(record)
    for key in ("model", "messages", "answer", "resolved", "tool_calls", "tools", "error"):
        if key in out:
            out[key] = _scrub_tree(out[key])
    return out


# --------------------------------------------------------------------------- files


def traffic_files(folder: str | Path, prefix: str = PRODUCTION) -> list[Path]:
    """The log files in ``folder`` (``prefix``: ``traffic`` or ``shadow``), oldest first
    (timestamp, then sequence number)."""
    found = []
    for path in Path(folder).glob(f"{prefix}-*.jsonl"):
        m = _NAME.match(path.name)
        if m and m.group(1) == prefix:
            found.append((m.group(2), int(m.group(3)), path))
    return [p for _, _, p in sorted(found)]


def _read_file(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    data = path.read_bytes()
    lines = data.split(b"\n")
    # Everything after the last newline is a record a kill cut short: skip it, never fail on it.
    for number, line in enumerate(lines[:-1], start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise UserError(f"{path}:{number}: not a JSON record") from None
        if not isinstance(record, dict):
            raise UserError(f"{path}:{number}: not a JSON object")
        yield number, record


def iter_traffic(
    folder: str | Path, prefix: str = PRODUCTION
) -> Iterator[tuple[Path, int, dict[str, Any]]]:
    """(file, line, record) of every complete record, oldest first: for readers whose errors
    name the line (``tunewise compare-traffic``)."""
    for path in traffic_files(folder, prefix):
        for number, record in _read_file(path):
            yield path, number, record


def read_traffic(folder: str | Path, prefix: str = PRODUCTION) -> list[dict[str, Any]]:
    """Every complete record under ``folder``, oldest first; a torn last line is skipped.
    ``prefix="shadow"`` reads the shadow challenger's records instead of the requests."""
    return [rec for _, _, rec in iter_traffic(folder, prefix)]


def _utc_stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def delete_expired(
    folder: Path, keep_days: float | None, *, keep: Path | None = None, prefix: str = PRODUCTION
) -> int:
    """Delete log files last written more than ``keep_days`` ago (never ``keep``, the open one)."""
    if keep_days is None:
        return 0
    cutoff = time.time() - keep_days * 86400
    deleted = 0
    for path in traffic_files(folder, prefix):
        if path == keep:
            continue
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                deleted += 1
        except FileNotFoundError:  # another process's retention got there first
            continue
    return deleted


class _Appender:
    """The open log file: whole-line appends, size rotation, fsync on close. Writer thread only."""

    def __init__(
        self, folder: Path, max_bytes: int, keep_days: float | None, prefix: str = PRODUCTION
    ) -> None:
        self.folder, self.max_bytes, self.keep_days = folder, max_bytes, keep_days
        self.prefix = prefix
        self.fd: int | None = None
        self.path: Path | None = None
        self.size = 0
        self.seq = 0

    def _open(self) -> None:
        stamp = _utc_stamp()
        while True:  # a restart within the same second must not reopen a closed file
            path = self.folder / f"{self.prefix}-{stamp}-{self.seq}.jsonl"
            self.seq += 1
            try:
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND
                self.fd = os.open(path, flags, 0o600)  # messages are private even scrubbed
                break
            except FileExistsError:
                continue
        self.path, self.size = path, 0
        fsync_dir(self.folder)

    def write(self, line: bytes) -> None:
        if self.fd is not None and self.size and self.size + len(line) > self.max_bytes:
            self.close()
            delete_expired(self.folder, self.keep_days, prefix=self.prefix)
        if self.fd is None:
            self._open()
        assert self.fd is not None
        written = os.write(self.fd, line)  # one write() of the whole line
        while written < len(line):  # short writes are rare (full disk, signals); finish the line
            written += os.write(self.fd, line[written:])
        self.size += len(line)

    def close(self) -> None:
        if self.fd is None:
            return
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd, self.path = None, None


class TrafficLog:
    """Sampling in the caller's thread, scrubbing and writing in one background thread."""

    def __init__(self, settings: TrafficSettings) -> None:
        settings.check()
        self.settings = settings
        self.folder = Path(settings.dir).expanduser()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(
                f"--log-traffic {settings.dir}: cannot create: {exc.strerror}"
            ) from None
        seed = settings.seed if settings.seed is not None else env_seed()
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self.dropped = 0
        self.written = 0
        delete_expired(self.folder, settings.keep_days, prefix=settings.prefix)
        max_bytes = max(1, int(settings.max_mb * 2**20))
        self._out = _Appender(self.folder, max_bytes, settings.keep_days, settings.prefix)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=settings.queue_size)
        self._thread = threading.Thread(
            target=self._drain, name=f"tunewise-{settings.prefix}-log", daemon=True
        )
        self._thread.start()

    def sampled(self) -> bool:
        """Draw whether this request is logged (one draw per request, in arrival order)."""
        if self.settings.sample >= 1:
            return True
        with self._rng_lock:
            return self._rng.random() < self.settings.sample

    def hook(
        self,
        *,
        cid: str,
        model: str,
        key: str | None,
        base_name: str,
        messages: list,
        started: float,
        tools: list[dict[str, Any]] | None = None,
    ) -> Callable[..., None] | None:
        """What to call with the finished answer (and the ``tool_calls`` it was read into) to
        log it; None when this request is not in the sample (drawn here, once per request, in
        arrival order). ``tools``: those the request sent, kept beside its calls."""
        if not self.sampled():
            return None

        def logged(result: GenResult, tool_calls: list[dict[str, Any]] | None = None) -> None:
            record = traffic_record(
                cid=cid,
                model=model,
                key=key,
                base_name=base_name,
                messages=messages,
                answer=result.text,
                finish_reason=result.finish_reason,
                started=started,
                prompt_tokens=result.prompt_tokens,
                completion_tokens=result.completion_tokens,
                tool_calls=tool_calls,
                tools=tools,
            )
            self.submit(record)  # never blocks: scrubbing and the disk are the writer's

        return logged

    def submit(self, record: dict[str, Any]) -> None:
        """Queue ``record`` for writing; never blocks (a full queue drops and counts it)."""
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    def _drain(self) -> None:
        while True:
            record = self._queue.get()
            if record is _STOP:
                break
            try:
                line = json.dumps(scrubbed(record), ensure_ascii=False) + "\n"
                self._out.write(line.encode())
                self.written += 1
            except Exception:  # a full disk must not kill the writer; the record is lost
                self.dropped += 1
                log.exception("%s log: could not write a record", self.settings.prefix)
        self._out.close()

    def close(self) -> None:
        """Write what is queued, fsync and close the open file; log the drop count."""
        if not self._thread.is_alive():
            return
        self._queue.put(_STOP)
        self._thread.join()
        what = self.settings.prefix
        if self.dropped:
            log.warning(
                "%s log: %d record(s) dropped (queue full, write failed)", what, self.dropped
            )
        else:
            log.info("%s log: %d record(s) written, none dropped", what, self.written)


def env_seed() -> int | None:
    """``$TUNEWISE_TRAFFIC_SEED`` as an integer (None when unset): the sampling seed."""
    raw = os.environ.get(SEED_ENV, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"${SEED_ENV} must be an integer, not {raw!r}") from None


def traffic_record(
    *,
    cid: str,
    model: str,
    key: str | None,
    base_name: str,
    messages: list[dict[str, str]],
    answer: str,
    finish_reason: str | None,
    started: float,
    prompt_tokens: int,
    completion_tokens: int,
    tool_calls: list[dict[str, Any]] | None = None,
    tools: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One log record; ``started`` is the ``time.perf_counter()`` when the request arrived.

    An answer read for calls also has ``tool_calls`` (OpenAI's entries, as the client got them;
    ``answer`` stays the text the model wrote), and a request that sent tools has ``tools``:
    what a later round needs to train on the call.
    """
    alias = model.split("@", 1)[1] if "@" in model else None
    extra: dict[str, Any] = {}
    if tools:
        extra["tools"] = tools
    if tool_calls:
        extra["tool_calls"] = tool_calls
    return {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "id": cid,
        "model": model,
        "resolved": {"key": key if key is not None else base_name, "alias": alias},
        "messages": messages,
        "answer": answer,
        "finish_reason": finish_reason,
        "latency_ms": round((time.perf_counter() - started) * 1000, 1),
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        **extra,
        "status": 200,
    }
