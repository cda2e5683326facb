"""Retrieved context in a prompt: one owner for the rungs, context-trained fine-tunes and serving.

The ``fewshot`` and ``rag`` rungs put retrieved labelled examples (or passages) into the prompt.
A fine-tune trained with ``train.context: fewshot | rag`` (retrieval-augmented fine-tuning, RAFT,
Zhang et al. 2024) is trained on prompts that carry the same context, and is evaluated and served
with it. All three build that context here, with the same code and settings:

* :class:`ContextSpec`: what decides the context (mode, k, selection, retrieval settings, the
  system prompt, the embedding model), taken from ``eval.fewshot`` / ``eval.rag``;
* :class:`ContextBuilder`: the spec plus the pool it retrieves from (train examples, documents);
  :meth:`ContextBuilder.prompts` is the prompt builder of the evaluator's ``fewshot`` and ``rag``
  candidates, of a context-trained run's training examples and of the server's requests.

A query never retrieves itself: a pool example with the query's content id (``Example.uid``) is
skipped, which is what keeps a training example's own answer out of its prompt. Random few-shot
selection is seeded by the query's own prompt turns instead (``fewshot.random_seed_key``): the uid
covers the answer, which a server request does not have.

A context-trained run keeps its builder in ``RUN/context.json`` (the spec and the pool, no
vectors: embeddings are recomputed, and cached on disk by content). The registry copies that file
with the adapter, hash-verified, so a served version retrieves from exactly the index it was
trained and evaluated with.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from tunewise.baselines import fewshot as fewshot_mod
from tunewise.baselines import rag as rag_mod
from tunewise.baselines.embed import default_embedder
from tunewise.data.schema import Example
from tunewise.errors import UserError
from tunewise.fsio import atomic_write_json

if TYPE_CHECKING:
    from tunewise.config import ProjectConfig

ContextMode = Literal["none", "fewshot", "rag"]
CONTEXT_MODES: Final[tuple[str, ...]] = ("none", "fewshot", "rag")
CONTEXT_FILE: Final[str] = "context.json"
FORMAT: Final[int] = 1

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class ContextSpec:
    """Everything besides the pool that decides which context a prompt gets."""

    mode: str  # "fewshot" | "rag"
    system_prompt: str
    k: int
    selection: str = "similar"  # fewshot: "similar" | "random"
    # fewshot: seeds the random selection (data.split.seed, as the rung uses), with each query's
    # own prompt turns, which the evaluator, the trainer and a server request all have
    seed: int = 0
    hybrid: bool = True  # rag: dense retrieval fused with BM25
    sources: tuple[str, ...] = ()  # rag: what is retrieved from ("docs", "train")

    @classmethod
    def of(cls, cfg: ProjectConfig, mode: str) -> ContextSpec:
        """The spec the ``mode`` rung of ``cfg`` uses (``eval.fewshot`` or ``eval.rag``)."""
        sp = cfg.task.system_prompt
        if mode == "fewshot":
            fc = cfg.eval.fewshot
            return cls(mode, sp, fc.k, selection=fc.selection, seed=cfg.data.split.seed)
        if mode == "rag":
            rc = cfg.eval.rag
            # docs requested without data.docs retrieves from train only: record what is used
            used = tuple(s for s in rc.sources if s != "docs" or cfg.data.docs is not None)
            return cls(mode, sp, rc.k, hybrid=rc.hybrid, sources=used)
        raise ValueError(f"no context for mode {mode!r}")


class ContextBuilder:
    """Builds the prompt with retrieved context for queries, from a spec and a pool."""

    def __init__(
        self,
        spec: ContextSpec,
        train: Sequence[Example],
        docs: Sequence[rag_mod.Passage] = (),
        *,
        embedder: Any | None = None,
    ) -> None:
        self.spec = spec
        self.train = list(train)
        self.docs = list(docs)
        self._embedder = embedder
        self._selector: fewshot_mod.FewShotSelector | None = None
        self._index: rag_mod.RagIndex | None = None

    @classmethod
    def from_config(cls, cfg: ProjectConfig, mode: str, train: Sequence[Example]) -> ContextBuilder:
        """The builder of ``cfg``'s ``mode`` rung over ``train`` (and ``data.docs`` for rag)."""
        spec = ContextSpec.of(cfg, mode)
        docs: list[rag_mod.Passage] = []
        if mode == "rag" and "docs" in spec.sources and cfg.data.docs is not None:
            docs = rag_mod.load_docs(cfg.data.docs, root=cfg.root)
        return cls(spec, train, docs)

    # -- retrieval ---------------------------------------------------------------------------
    def selector(self) -> fewshot_mod.FewShotSelector:
        if self._selector is None:
            s = self.spec
            self._selector = fewshot_mod.FewShotSelector(
                self.train, k=s.k, selection=s.selection, seed=s.seed, embedder=self._embedder
            )
        return self._selector

    def index(self) -> rag_mod.RagIndex:
        if self._index is None:
            passages = list(self.docs)
            if "train" in self.spec.sources:
                passages += rag_mod.example_passages(self.train)
            self._index = rag_mod.RagIndex(
                passages, hybrid=self.spec.hybrid, embedder=self._embedder
            )
        return self._index

    def warm(self) -> ContextBuilder:
        """Build the selector or index now (the server's first request should not pay it, and
        concurrent requests must not build it twice)."""
        if self.spec.mode == "fewshot":
            self.selector()
        else:
            self.index()
        return self

    def _rag_hits(
        self, queries: Sequence[Example], depth: int, *, cache: bool = True
    ) -> list[list[rag_mod.Hit]]:
        """Hits per query, best first, with any passage made from the query itself dropped."""
        hits = self.index().search_many([q.user_text for q in queries], depth, cache=cache)
        return [
            [h for h in hs if h.passage.meta.get("uid") != q.uid]
            for q, hs in zip(queries, hits, strict=True)
        ]

    # -- prompts -----------------------------------------------------------------------------
    def prompts(
        self, queries: Sequence[Example], *, cache_queries: bool = True
    ) -> tuple[list[Messages], dict[str, Any], list[dict[str, Any]] | None]:
        """(prompt per query, meta, per-query meta): the evaluator's, trainer's and server's.

        ``cache_queries=False`` (the server) keeps the queries' embeddings off the disk cache:
        a live server would write a file per distinct request. The pool's stay cached."""
        s = self.spec
        if s.mode == "fewshot":
            sel = self.selector()
            shots = sel.select_many(list(queries), cache=cache_queries)
            msgs = [
                fewshot_mod.build_messages(s.system_prompt, sh, q)
                for sh, q in zip(shots, queries, strict=True)
            ]
            meta = {"k": sel.k, "selection": s.selection, "prompt_version": sel.version()}
            return msgs, meta, None
        # A train passage that IS the query would leak its answer: retrieve one extra, drop it.
        hits = [hs[: s.k] for hs in self._rag_hits(queries, s.k + 1, cache=cache_queries)]
        msgs, per_item = [], []
        for q, hs in zip(queries, hits, strict=True):
            for r, h in enumerate(hs, start=1):
                h.rank = r
            msgs.append(rag_mod.build_messages(s.system_prompt, hs, q))
            per_item.append({"citations": [h.passage.source for h in hs]})
        index = self.index()
        meta = {
            "k": s.k,
            "hybrid": s.hybrid,
            "sources": list(s.sources),
            "passages": len(index.passages),
            "prompt_version": rag_mod.rag_version(s.k, s.hybrid, index),
        }
        return msgs, meta, per_item

    def distractor_prompts(self, queries: Sequence[Example]) -> list[Messages]:
        """Prompts whose context holds no example with the query's own answer (RAFT's
        distractor-only rows): the most similar examples with another answer for few-shot; for
        RAG, the passages ranked just below the top k, labelled ones only with another answer."""
        s = self.spec
        if s.mode == "fewshot":
            deep = fewshot_mod.FewShotSelector(
                self.train,
                k=len(self.train),
                selection=s.selection,
                seed=s.seed,
                embedder=self._embedder,
            )
            out = []
            for q, ranked in zip(queries, deep.select_many(list(queries)), strict=True):
                shots = [ex for ex in ranked if ex.target != q.target][: s.k]
                out.append(fewshot_mod.build_messages(s.system_prompt, shots, q))
            return out
        out = []
        for q, hs in zip(queries, self._rag_hits(queries, s.k * 5 + 1), strict=True):
            rest = [h for h in hs[s.k :] if h.passage.label is None or h.passage.label != q.target]
            rest = rest[: s.k]
            for r, h in enumerate(rest, start=1):
                h.rank = r
            out.append(rag_mod.build_messages(s.system_prompt, rest, q))
        return out

    # -- persistence -------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """``context.json``: the spec and the pool (examples and document chunks)."""
        atomic_write_json(
            Path(path),
            {
                "format": FORMAT,
                "spec": {**asdict(self.spec), "sources": list(self.spec.sources)},
                "embedding": self._embedding_id(),
                "train": [
                    {"messages": ex.messages, "line": ex.line, "source": Path(ex.source).name}
                    for ex in self.train
                ],
                "docs": [{"text": p.text, "source": p.source, "meta": p.meta} for p in self.docs],
            },
        )

    def _embedding_id(self) -> str:
        return str(getattr(self._embedder or default_embedder(), "model_id", ""))

    @classmethod
    def load(cls, path: Path) -> ContextBuilder:
        """The builder a run saved; refuses a file from another format or embedding model."""
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
            spec = ContextSpec(**{**raw["spec"], "sources": tuple(raw["spec"]["sources"])})
            train = [Example(**row) for row in raw["train"]]
            docs = [rag_mod.Passage(**row) for row in raw["docs"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path}: unreadable context file: {exc}") from None
        if raw.get("format") != FORMAT:
            raise UserError(f"{path}: context format {raw.get('format')!r}, expected {FORMAT}")
        builder = cls(spec, train, docs)
        have = builder._embedding_id()
        if raw.get("embedding") and raw["embedding"] != have:
            raise UserError(
                f"{path}: the context was retrieved with embedding model {raw['embedding']}, "
                f"this installation has {have}; retrieval would differ from training"
            )
        return builder


def load_run_context(run_dir: Path) -> ContextBuilder | None:
    """The context a run was trained with (None for a run trained without)."""
    path = Path(run_dir) / CONTEXT_FILE
    return ContextBuilder.load(path) if path.is_file() else None


def own_turns_start(prompt: Messages, query: Example, system_prompt: str) -> int:
    """Index in ``prompt`` of the query's own first non-system turn (context turns come before)."""
    own = [m for m in query.with_system(system_prompt).prompt_messages if m["role"] != "system"]
    return len(prompt) - len(own)


def is_distractor_row(example: Example, share: float, seed: int) -> bool:
    """Whether ``example`` trains on distractor-only context: a draw seeded by its content, so a
    rerun or a resumed run picks the same rows whatever their order."""
    return share > 0 and random.Random(f"{seed}:distractor:{example.uid}").random() < share


def training_examples(
    builder: ContextBuilder, examples: Sequence[Example], *, distractor_share: float, seed: int
) -> tuple[list[Example], list[int]]:
    """Each example as the conversation it trains on: the evaluator's prompt for it (context
    retrieved from the pool, itself excluded) plus its answer; and, per example, the index of its
    own first turn (the context's assistant turns before it are never labels)."""
    examples = list(examples)
    prompts, _, _ = builder.prompts(examples)
    chosen = [i for i, ex in enumerate(examples) if is_distractor_row(ex, distractor_share, seed)]
    if chosen:
        distract = builder.distractor_prompts([examples[i] for i in chosen])
        for i, msgs in zip(chosen, distract, strict=True):
            prompts[i] = msgs
    out, starts = [], []
    for ex, msgs in zip(examples, prompts, strict=True):
        out.append(Example([*msgs, dict(ex.messages[-1])], ex.line, ex.source, ex.meta))
        starts.append(own_turns_start(msgs, ex, builder.spec.system_prompt))
    return out, starts


# --- the ladder's context variants (train.variants) ----------------------------------------------


def training_key_inputs(
    full_cfg: dict[str, Any], context: str, *, docs_hash: str | None = None
) -> dict[str, Any]:
    """The config a training run with ``context`` depends on (its ladder key). Without context
    the RAFT keys are left out, so a project that does not use them keeps its cached runs; with
    it, the retrieval settings and the documents (``docs_hash``, rag) are part of the run: they
    shape every training prompt."""
    train = {k: v for k, v in full_cfg["train"].items() if k != "variants"}
    train["context"] = context
    if context == "none":
        # no context, no distractor rows: the share shapes only context-trained runs
        train.pop("context")
        train.pop("context_distractor_share", None)
        return {"train": train}
    retrieval = {
        "retrieval": full_cfg["eval"][context],
        "split_seed": full_cfg["data"]["split"]["seed"],
        "docs": docs_hash if context == "rag" else None,
    }
    if context == "fewshot" and retrieval["retrieval"].get("selection") == "random":
        # Random shots are seeded by the query's prompt turns (they were seeded by its uid,
        # which serving could not reproduce): a run trained on the old shots trains again.
        retrieval["random_seed"] = "prompt-turns"
    return {"train": train, "context": retrieval}
