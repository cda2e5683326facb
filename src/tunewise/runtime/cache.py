"""Cached generations and label scores, so that rerunning an evaluation costs nothing.

One SQLite file in WAL mode (``paths.cache_db()``) is shared by every project and every process:
WAL lets readers run while one process writes, and ``busy_timeout`` makes a second writer wait
instead of failing. An entry is keyed by everything that determines a greedy output:

* the model hash (weights, plus quantisation), or ``external:<url>:<model>`` for an endpoint;
* the adapter hash (its weights and ``adapter_config.json``, see
  :func:`tunewise.runtime.adapter_pool.adapter_digest`; empty for the base model);
* the prompt hash (sha256 of the rendered prompt text, so a template change is a miss);
* the decoding parameters (greedy, ``max_new_tokens``, stop strings; the label list for scores).

A local engine's sampled answer (``temperature`` > 0) is stored only with a seed, its key adding
the temperature, ``top_p`` and seed; an unseeded one is neither stored nor read, since asking
again must draw again (:func:`tunewise.runtime.backend.sampling_params`). A greedy key is what it
always was.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunewise import paths
from tunewise.fsio import sha256_json, sha256_text

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,            -- 'gen' | 'score'
    model_hash TEXT NOT NULL,
    adapter_hash TEXT NOT NULL,
    prompt_hash TEXT NOT NULL,
    params TEXT NOT NULL,
    value TEXT NOT NULL,           -- JSON
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_adapter ON entries(adapter_hash);
"""


class CacheKey(str):
    """A cache key (hex digest) that remembers its parts, which are stored as columns so entries
    can be inspected, or invalidated per adapter."""

    parts: tuple[str, str, str, str]


class GenCache:
    """SQLite cache of generation results and continuation scores (see the module docstring)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else paths.cache_db()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # One connection shared by threads, serialised by self._lock; processes share the file.
        self._db = sqlite3.connect(
            self.path, timeout=30.0, check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.executescript(_SCHEMA)
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(
        model_hash: str, adapter_hash: str, prompt_text: str, params: dict[str, Any]
    ) -> CacheKey:
        prompt_hash = sha256_text(prompt_text)
        params_json = json.dumps(params, sort_keys=True, ensure_ascii=False)
        k = CacheKey(sha256_json([model_hash, adapter_hash, prompt_hash, params_json]))
        k.parts = (model_hash, adapter_hash, prompt_hash, params_json)
        return k

    def get_many(self, keys: Sequence[str]) -> dict[int, dict[str, Any]]:
        """Hits as {position in ``keys``: stored value}."""
        found: dict[str, dict[str, Any]] = {}
        uniq = list(dict.fromkeys(keys))
        with self._lock:
            for s in range(0, len(uniq), 500):  # SQLite caps the number of bound parameters
                part = uniq[s : s + 500]
                marks = ",".join("?" * len(part))
                rows = self._db.execute(
                    f"SELECT key, value FROM entries WHERE kind='gen' AND key IN ({marks})", part
                ).fetchall()
                found.update({k: json.loads(v) for k, v in rows})
        out = {i: dict(found[k]) for i, k in enumerate(keys) if k in found}
        self.hits += len(out)
        self.misses += len(keys) - len(out)
        return out

    def put_many(self, values: dict[str, dict[str, Any]], kind: str = "gen") -> None:
        now = time.time()
        rows = []
        for k, v in values.items():
            model_hash, adapter_hash, prompt_hash, params = getattr(k, "parts", ("", "", "", ""))
            rows.append(
                (k, kind, model_hash, adapter_hash, prompt_hash, params, json.dumps(v), now)
            )
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT OR REPLACE INTO entries VALUES (?,?,?,?,?,?,?,?)", rows
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def get_scores(self, key: str) -> list[float] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT value FROM entries WHERE kind='score' AND key=?", (key,)
            ).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return [float(x) for x in json.loads(row[0])]

    def put_scores(self, key: str, scores: list[float]) -> None:
        self.put_many({key: scores}, kind="score")  # type: ignore[dict-item]

    def stats(self) -> dict[str, Any]:
        with self._lock:
            rows = self._db.execute("SELECT kind, COUNT(*) FROM entries GROUP BY kind").fetchall()
        return {
            "path": str(self.path),
            "entries": dict(rows),
            "hits": self.hits,
            "misses": self.misses,
        }

    def clear(self, adapter_hash: str | None = None) -> int:
        """Delete every entry, or only those of one adapter; returns how many were deleted."""
        with self._lock:
            if adapter_hash is None:
                cur = self._db.execute("DELETE FROM entries")
            else:
                cur = self._db.execute("DELETE FROM entries WHERE adapter_hash=?", (adapter_hash,))
            return cur.rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> GenCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
