"""GenCache: SQLite WAL, keyed by model, adapter, prompt and decoding parameters."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
from pathlib import Path

from tunewise import paths
from tunewise.runtime.cache import GenCache

PARAMS = {"decoding": "greedy", "max_new_tokens": 16, "stop": []}
VALUE = {"text": "hi", "prompt_tokens": 3, "completion_tokens": 2, "finish_reason": "stop"}


def test_roundtrip_and_default_location(tunewise_home: Path) -> None:
    cache = GenCache()
    assert cache.path == paths.cache_db() and str(cache.path).startswith(str(tunewise_home))
    k = GenCache.key("m", "", "prompt", PARAMS)
    assert cache.get_many([k]) == {}
    cache.put_many({k: VALUE})
    assert cache.get_many(["other", k, k]) == {1: VALUE, 2: VALUE}
    assert cache.hits == 2 and cache.misses == 2
    with sqlite3.connect(cache.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        row = db.execute("SELECT model_hash, adapter_hash, params FROM entries").fetchone()
    assert row[0] == "m" and row[1] == "" and '"max_new_tokens": 16' in row[2]
    cache.close()
    assert GenCache().get_many([k]) == {0: VALUE}  # persisted


def test_every_key_part_matters() -> None:
    base = GenCache.key("m", "a", "p", PARAMS)
    variants = [
        GenCache.key("m2", "a", "p", PARAMS),
        GenCache.key("m", "b", "p", PARAMS),
        GenCache.key("m", "a", "p ", PARAMS),
        GenCache.key("m", "a", "p", {**PARAMS, "max_new_tokens": 17}),
        GenCache.key("m", "a", "p", {**PARAMS, "stop": ["\n"]}),
    ]
    assert len({base, *variants}) == 6
    assert (
        GenCache.key("m", "a", "p", dict(reversed(list(PARAMS.items())))) == base
    )  # key order is irrelevant


def test_scores_and_clear_per_adapter() -> None:
    cache = GenCache()
    ka = GenCache.key("m", "adapter-a", "p", {"kind": "logprob", "continuations": ["x", "y"]})
    kb = GenCache.key("m", "adapter-b", "p", PARAMS)
    cache.put_scores(ka, [-1.5, -2.25])
    cache.put_many({kb: VALUE})
    assert cache.get_scores(ka) == [-1.5, -2.25]
    assert cache.get_many([ka]) == {}  # a score is not a generation
    assert cache.stats()["entries"] == {"gen": 1, "score": 1}
    assert cache.clear("adapter-a") == 1
    assert cache.get_scores(ka) is None and cache.get_many([kb]) == {0: VALUE}
    assert cache.clear() == 1


def _writer(db: str, worker: int, n: int) -> None:
    cache = GenCache(db)
    for i in range(n):
        k = GenCache.key("m", "", f"w{worker}-{i}", PARAMS)
        cache.put_many({k: {**VALUE, "text": f"{worker}:{i}"}})


def test_concurrent_processes_lose_nothing(tmp_path: Path) -> None:
    db = str(tmp_path / "shared.sqlite")
    GenCache(db).close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(db, w, 40)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    cache = GenCache(db)
    keys = [GenCache.key("m", "", f"w{w}-{i}", PARAMS) for w in range(3) for i in range(40)]
    got = cache.get_many(keys)
    assert len(got) == 120
    assert got[41]["text"] == "1:1"
