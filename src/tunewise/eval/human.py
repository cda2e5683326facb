"""Side-by-side rating by people: a small local web app over an evaluation directory.

A rater sees one prompt and two candidates' answers, labelled only A (left) and B (right); which
candidate sits on the left is drawn at random per item (seeded, so a reload shows the same
layout), and the page never receives candidate names until the summary. Keyboard: 1 = left
better, 2 = right better, 0 or = = tie, s = skip.

Ratings live in SQLite in WAL mode (``EVAL_DIR/ratings.sqlite``, or under ``$TUNEWISE_HOME``
when the eval directory is read-only), one row per (pair, item, rater), so several raters can
work at once and a re-rating replaces the earlier one. The result is A's win rate with ties
counted as half a win, a 95% Wilson interval, and a two-sided sign test on the decisive items.
"""

from __future__ import annotations

import math
import os
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from scipy import stats as sps

from tunewise import paths
from tunewise.errors import UserError
from tunewise.eval.items import item_prompt, item_reference
from tunewise.eval.results import EVAL_FILE, EvalRun
from tunewise.fsio import sha256_text

DB_NAME = "ratings.sqlite"
Choice = Literal["left", "right", "tie", "skip"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ratings (
    a TEXT NOT NULL, b TEXT NOT NULL, item_id TEXT NOT NULL, rater TEXT NOT NULL,
    left_is TEXT NOT NULL CHECK (left_is IN ('a', 'b')),
    choice TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie', 'skip')),
    created_at REAL NOT NULL,
    PRIMARY KEY (a, b, item_id, rater)
);
"""


def ratings_db(eval_dir: str | Path) -> Path:
    """``EVAL_DIR/ratings.sqlite``, or a per-directory file under $TUNEWISE_HOME if read-only."""
    eval_dir = Path(eval_dir)
    if os.access(eval_dir, os.W_OK):
        return eval_dir / DB_NAME
    root = paths.home() / "ratings"
    root.mkdir(parents=True, exist_ok=True)
    return root / f"{sha256_text(str(eval_dir.resolve()))[:16]}.sqlite"


class RatingStore:
    """Ratings in SQLite (WAL: readers never block the writer, several raters can share a file)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # The web server answers from a thread pool; one connection guarded by a lock is plenty
        # for a human clicking a few times a minute.
        self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=10.0)
        self._lock = threading.Lock()
        with self._tx() as c:
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=NORMAL")
            c.executescript(_SCHEMA)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._conn:
            yield self._conn

    def close(self) -> None:
        self._conn.close()

    def record(self, a: str, b: str, item_id: str, rater: str, left_is: str, choice: str) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO ratings VALUES (?, ?, ?, ?, ?, ?, ?)",
                (a, b, item_id, rater, left_is, choice, time.time()),
            )

    def rated(self, a: str, b: str, rater: str) -> set[str]:
        with self._tx() as c:
            rows = c.execute(
                "SELECT item_id FROM ratings WHERE a=? AND b=? AND rater=?", (a, b, rater)
            )
            return {r[0] for r in rows}

    def rows(self, a: str, b: str) -> list[dict[str, Any]]:
        with self._tx() as c:
            cur = c.execute(
                "SELECT item_id, rater, left_is, choice, created_at FROM ratings WHERE a=? AND "
                "b=? ORDER BY created_at",
                (a, b),
            )
            return [
                dict(zip(("item_id", "rater", "left_is", "choice", "created_at"), r, strict=True))
                for r in cur
            ]

    def pairs(self) -> list[tuple[str, str]]:
        with self._tx() as c:
            return [tuple(r) for r in c.execute("SELECT DISTINCT a, b FROM ratings ORDER BY a, b")]  # type: ignore[misc]


def wilson(successes: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval; ``successes`` may be fractional (ties counted as half a win)."""
    if n <= 0:
        return math.nan, math.nan
    z = float(sps.norm.ppf(1 - (1 - confidence) / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize(store: RatingStore, a: str, b: str) -> dict[str, Any]:
    rows = store.rows(a, b)
    wins_a = sum(r["choice"] == "a" for r in rows)
    wins_b = sum(r["choice"] == "b" for r in rows)
    ties = sum(r["choice"] == "tie" for r in rows)
    skips = sum(r["choice"] == "skip" for r in rows)
    n = wins_a + wins_b + ties
    lo, hi = wilson(wins_a + ties / 2, n)
    decisive = wins_a + wins_b
    return {
        "a": a,
        "b": b,
        "n": n,
        "wins_a": wins_a,
        "wins_b": wins_b,
        "ties": ties,
        "skips": skips,
        "raters": len({r["rater"] for r in rows}),
        "win_rate_a": (wins_a + ties / 2) / n if n else math.nan,
        "ci_low": lo,
        "ci_high": hi,
        "p_value": float(sps.binomtest(wins_a, decisive, 0.5).pvalue) if decisive else 1.0,
    }


def summaries(db: str | Path) -> list[dict[str, Any]]:
    """Every rated pair in a ratings file (for the report)."""
    store = RatingStore(db)
    try:
        return [summarize(store, a, b) for a, b in store.pairs()]
    finally:
        store.close()


@dataclass
class _Item:
    item_id: str
    prompt: str
    reference: str
    out_a: str
    out_b: str


class RatingSession:
    """The blinded queue of items for one pair of candidates and one rater."""

    def __init__(
        self,
        run: EvalRun,
        a: str,
        b: str,
        store: RatingStore,
        *,
        seed: int = 0,
        rater: str = "local",
    ) -> None:
        names = [c.name for c in run.candidates]
        for name in (a, b):
            if name not in names:
                raise UserError(
                    f"candidate {name!r} is not in eval.json (have: {', '.join(names)})"
                )
        if a == b:
            raise UserError("--a and --b must be two different candidates")
        self.a, self.b, self.store, self.seed, self.rater = a, b, store, seed, rater
        ca = {it.item_id: it for it in run.candidate(a).items}
        cb = {it.item_id: it for it in run.candidate(b).items}
        self.items: dict[str, _Item] = {}
        for item_id in run.item_ids:
            if item_id in ca and item_id in cb:
                it = ca[item_id]
                self.items[item_id] = _Item(
                    item_id,
                    item_prompt(it, run),
                    item_reference(it, run),
                    it.output,
                    cb[item_id].output,
                )
        if not self.items:
            raise UserError(f"{a} and {b} share no items to rate")
        self.order = list(self.items)
        random.Random(seed).shuffle(self.order)  # raters should not see items in dataset order

    def left_is(self, item_id: str) -> str:
        """Which candidate ('a' or 'b') is shown on the left: random per item, stable on reload."""
        return "a" if random.Random(f"{self.seed}:{item_id}").random() < 0.5 else "b"

    def progress(self) -> dict[str, int]:
        return {
            "rated": len(self.store.rated(self.a, self.b, self.rater) & set(self.items)),
            "total": len(self.items),
        }

    def next(self) -> dict[str, Any]:
        done = self.store.rated(self.a, self.b, self.rater)
        for item_id in self.order:
            if item_id not in done:
                it = self.items[item_id]
                left_a = self.left_is(item_id) == "a"
                return {
                    "done": False,
                    "item_id": item_id,
                    "prompt": it.prompt,
                    "reference": it.reference,
                    "left": it.out_a if left_a else it.out_b,
                    "right": it.out_b if left_a else it.out_a,
                    "progress": self.progress(),
                }
        return {"done": True, "progress": self.progress()}

    def rate(self, item_id: str, choice: Choice) -> None:
        if item_id not in self.items:
            raise KeyError(item_id)
        left = self.left_is(item_id)
        right = "b" if left == "a" else "a"
        stored = {"left": left, "right": right, "tie": "tie", "skip": "skip"}[choice]
        self.store.record(self.a, self.b, item_id, self.rater, left, stored)

    def summary(self) -> dict[str, Any]:
        return summarize(self.store, self.a, self.b)


class RateIn(BaseModel):
    """Body of ``POST /api/rate``: positions only, the page never knows which candidate is where."""

    item_id: str
    choice: Choice


def create_app(session: RatingSession):
    """The FastAPI app: the page at ``/`` and a small JSON API under ``/api``."""
    # lazy: fastapi, ~0.25 s to import, only for `tunewise rate`
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import HTMLResponse

    app = FastAPI(title="tunewise rate", docs_url=None, redoc_url=None)
    page = resources.files("tunewise").joinpath("assets/rate.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/api/next")
    def next_item() -> dict[str, Any]:
        return session.next()

    @app.post("/api/rate")
    def rate(body: RateIn) -> dict[str, Any]:
        try:
            session.rate(body.item_id, body.choice)
        except KeyError:
            raise HTTPException(status_code=404, detail=f"unknown item {body.item_id!r}") from None
        return {"ok": True, "progress": session.progress()}

    @app.get("/api/summary")
    def summary() -> dict[str, Any]:
        s = session.summary()
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in s.items()
        }

    return app


def open_session(
    eval_dir: str | Path,
    a: str,
    b: str,
    *,
    seed: int = 0,
    rater: str = "local",
    db: str | Path | None = None,
) -> RatingSession:
    eval_dir = Path(eval_dir)
    run = EvalRun.load(eval_dir / EVAL_FILE)
    return RatingSession(run, a, b, RatingStore(db or ratings_db(eval_dir)), seed=seed, rater=rater)


def serve(
    eval_dir: str | Path, a: str, b: str, *, port: int = 8765, seed: int = 0, rater: str = "local"
) -> None:
    """Serve the rating page on 127.0.0.1 only: ratings are local, nothing is exposed."""
    import uvicorn  # lazy: uvicorn, only for `tunewise rate`

    session = open_session(eval_dir, a, b, seed=seed, rater=rater)
    uvicorn.run(create_app(session), host="127.0.0.1", port=port, log_level="warning")
