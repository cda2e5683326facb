"""The ``fewshot`` rung: k labelled training examples shown before the query.

The shots come from the train split only (never from the items being evaluated) and are chosen
either at random (seeded per item by its own prompt turns, so a rerun picks the same shots and hits
the generation cache, and a server that only has those turns picks the same shots too) or by
embedding similarity of their last user turn to the query's. They are rendered as
alternating user/assistant turns after the system prompt, the format a chat model imitates best.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Literal

import numpy as np

from tunewise.baselines.embed import Embedder, default_embedder
from tunewise.baselines.prompt import base_messages
from tunewise.data.schema import Example
from tunewise.fsio import sha256_json, sha256_text


def _shot_turns(shot: Example) -> list[dict[str, str]]:
    # A shot is its non-system turns: a multi-turn shot stays multi-turn, the answer stays last.
    return [dict(m) for m in shot.messages if m["role"] != "system"]


def random_seed_key(query: Example) -> str:
    """What seeds a query's random shots: its own prompt turns, without the system turn and the
    answer. A server request has exactly these (under the trained system prompt, with no answer),
    while ``uid`` hashes the whole conversation and so differs between evaluation and serving."""
    return sha256_json([m for m in query.prompt_messages if m["role"] != "system"])[:16]


class FewShotSelector:
    """Pick ``k`` shots from ``train`` for each query."""

    def __init__(
        self,
        train: Sequence[Example],
        *,
        k: int = 4,
        selection: Literal["random", "similar"] = "similar",
        seed: int = 0,
        embedder: Embedder | None = None,
    ) -> None:
        self.train = list(train)
        self.k = min(k, len(self.train))
        self.selection = selection
        self.seed = seed
        self._uids = [ex.uid for ex in self.train]
        self._vecs: np.ndarray | None = None
        self._embedder = embedder
        if selection == "similar" and self.train:
            self._embedder = embedder or default_embedder()
            self._vecs = self._embedder.encode([ex.user_text for ex in self.train])

    def select(self, query: Example, query_vec: np.ndarray | None = None) -> list[Example]:
        """The shots for ``query``, most similar first (random order for ``random``)."""
        if self.k == 0:
            return []
        if self.selection == "random":
            # Seeded by the query's own turns: stable across runs, independent of item order, and
            # the same for the evaluated item and the served request. The uid only excludes it.
            rng = random.Random(f"{self.seed}:{random_seed_key(query)}")
            pool = [i for i, u in enumerate(self._uids) if u != query.uid]
            return [self.train[i] for i in rng.sample(pool, min(self.k, len(pool)))]
        assert self._vecs is not None and self._embedder is not None
        if query_vec is None:
            query_vec = self._embedder.encode([query.user_text])[0]
        sims = self._vecs @ query_vec  # (n_train,)
        order = np.argsort(-sims, kind="stable")
        out: list[Example] = []
        for i in order:
            if self._uids[i] == query.uid:  # never show the item its own answer
                continue
            out.append(self.train[int(i)])
            if len(out) == self.k:
                break
        return out

    def select_many(self, queries: Sequence[Example], *, cache: bool = True) -> list[list[Example]]:
        """Shots for many queries, embedding all queries in one batch (``cache=False``: their
        vectors are not kept on disk, as for a server's requests)."""
        if self.selection == "similar" and self._embedder is not None and queries:
            texts = [q.user_text for q in queries]
            qv = self._embedder.encode(texts, cache=cache)
            return [self.select(q, qv[i]) for i, q in enumerate(queries)]
        return [self.select(q) for q in queries]

    def version(self) -> str:
        # v2 for random: its shots are seeded by the prompt turns (v1 seeded them by the uid).
        tag = "v2" if self.selection == "random" else "v1"
        return sha256_text(f"fewshot:{tag}:k={self.k}:{self.selection}:seed={self.seed}")[:12]


def build_messages(
    system_prompt: str, shots: Sequence[Example], query: Example
) -> list[dict[str, str]]:
    """System prompt, then each shot as user/assistant turns, then the query's own turns.

    Shots are placed least similar first so the closest example sits right before the query.
    """
    msgs = base_messages(query, system_prompt)
    head = msgs[:1] if msgs and msgs[0]["role"] == "system" else []
    body = msgs[len(head) :]
    shot_turns: list[dict[str, str]] = []
    for shot in reversed(list(shots)):
        shot_turns.extend(_shot_turns(shot))
    return head + shot_turns + body
