"""The ``rag`` rung: retrieve passages and put them, with citations, into the prompt.

Passages come from a docs folder (``.md``/``.txt`` files, chunked on paragraph boundaries), from
the labelled train examples (each one a question and its answer), or both. Retrieved documents
go into the system turn, numbered, each headed by its citation (``[1] docs/refunds.md``);
retrieved labelled examples go in as user/assistant turns before the query (retrieval-augmented
few-shot), because a small model copies a demonstrated answer format far more reliably than it
reads one out of a context block (on CLINC150, SmolLM2-135M answered the question itself instead
of classifying it when the same examples were pasted into the system turn). Retrieval is dense
(FAISS inner product over normalised all-MiniLM-L6-v2 embeddings, i.e. cosine similarity),
optionally fused with lexical BM25 (bm25s) by reciprocal rank fusion: BM25 catches exact terms
(order numbers, product names) that a small embedding model blurs.

:class:`KnnClassifier` is the honest reference for this rung on labels tasks: a majority vote of
the nearest labelled neighbours, with no language model at all. When RAG over train examples does
not beat it, the LLM is adding nothing on top of retrieval.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tunewise.baselines.embed import Embedder, default_embedder
from tunewise.baselines.prompt import base_messages
from tunewise.data.schema import Example
from tunewise.errors import UserError
from tunewise.fsio import sha256_json, sha256_text

RRF_K = 60  # the constant from Cormack et al. (2009); ranks matter, not raw scores
DOC_SUFFIXES = (".md", ".markdown", ".txt")


@dataclass(frozen=True)
class Passage:
    text: str
    source: str  # shown in citations: "docs/refunds.md" or "train.jsonl:12"
    label: str | None = None  # the answer, for passages made from labelled examples
    meta: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass
class Hit:
    passage: Passage
    score: float  # fused score (RRF) or cosine when dense only
    rank: int


def chunk_text(text: str, max_chars: int = 800) -> list[str]:
    """Split on blank lines into chunks of at most ~``max_chars``; a heading opens a new chunk."""
    paras = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    chunks: list[str] = []
    cur: list[str] = []
    size = 0
    for p in paras:
        starts_section = p.startswith("#")
        if cur and (size + len(p) > max_chars or starts_section):
            chunks.append("\n\n".join(cur))
            cur, size = [], 0
        # A single paragraph longer than the budget is cut on sentence ends, not mid-word.
        while len(p) > max_chars:
            cut = p.rfind(". ", 0, max_chars)
            cut = cut + 1 if cut > max_chars // 3 else max_chars
            chunks.append(p[:cut].strip())
            p = p[cut:].strip()
        if p:
            cur.append(p)
            size += len(p)
    if cur:
        chunks.append("\n\n".join(cur))
    return chunks


def load_docs(folder: Path, *, root: Path | None = None, max_chars: int = 800) -> list[Passage]:
    """Every ``.md``/``.txt`` file under ``folder``, chunked; sources are paths relative to
    ``root``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: data.docs folder not found")
    base = Path(root) if root is not None else folder.parent
    out: list[Passage] = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in DOC_SUFFIXES:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{path}: not UTF-8 text") from None
        try:
            source = str(path.relative_to(base))
        except ValueError:
            source = str(path)
        for i, chunk in enumerate(chunk_text(text, max_chars)):
            out.append(Passage(text=chunk, source=source, meta={"chunk": i}))
    return out


def example_passages(train: Sequence[Example]) -> list[Passage]:
    """One passage per labelled example: its question and its answer."""
    out = []
    for ex in train:
        src = f"{Path(ex.source).name}:{ex.line}" if ex.source else f"train:{ex.line}"
        out.append(
            Passage(
                text=f"Question: {ex.user_text}\nAnswer: {ex.target}",
                source=src,
                label=ex.target,
                meta={"uid": ex.uid, "user": ex.user_text},
            )
        )
    return out


def _tokenize(texts: list[str]) -> list[list[str]]:
    import bm25s  # lazy: bm25s, ~0.3 s to import, only for hybrid retrieval

    toks = bm25s.tokenize(texts, return_ids=False, show_progress=False, stopwords="en")
    return [list(t) for t in toks]


class RagIndex:
    """Dense (FAISS) retrieval over passages, optionally fused with BM25."""

    def __init__(
        self,
        passages: Sequence[Passage],
        *,
        embedder: Embedder | None = None,
        hybrid: bool = True,
        embed_fn: Callable[[list[str]], np.ndarray] | None = None,
    ) -> None:
        import faiss  # lazy: faiss, ~0.15 s to import, only for the RAG and kNN baselines

        if not passages:
            raise UserError(
                "the RAG index is empty: no documents and no train examples to retrieve from"
            )
        self.passages = list(passages)
        self.embedder = embedder or (None if embed_fn else default_embedder())
        self._embed = embed_fn or self.embedder.encode  # type: ignore[union-attr]
        self._own_embed_fn = embed_fn is not None
        self.hybrid = hybrid
        self.content_hash = sha256_json([[p.source, p.text] for p in self.passages])[:16]
        vecs = self._embed([p.text for p in self.passages])  # cached on disk by content hash
        self.index = faiss.IndexFlatIP(vecs.shape[1])
        self.index.add(np.ascontiguousarray(vecs, dtype=np.float32))
        self._bm25 = None
        if hybrid:
            import bm25s  # lazy: bm25s, ~0.3 s to import

            self._bm25 = bm25s.BM25()
            self._bm25.index(_tokenize([p.text for p in self.passages]), show_progress=False)

    def _dense(self, qvecs: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(np.ascontiguousarray(qvecs, dtype=np.float32), depth)

    def _lexical(self, queries: list[str], depth: int) -> list[list[int]]:
        assert self._bm25 is not None
        out: list[list[int]] = []
        for toks in _tokenize(queries):
            if not toks:  # a query of stop words only: BM25 has nothing to say
                out.append([])
                continue
            docs, scores = self._bm25.retrieve([toks], k=depth, show_progress=False)
            out.append([int(d) for d, s in zip(docs[0], scores[0], strict=True) if s > 0])
        return out

    def search_many(
        self, queries: list[str], k: int, *, qvecs: np.ndarray | None = None, cache: bool = True
    ) -> list[list[Hit]]:
        """Top-``k`` passages per query, best first (``cache=False``: the queries' vectors are not
        kept on disk, as for a server's requests; the passages' are)."""
        if not queries:
            return []
        k = min(k, len(self.passages))
        depth = min(len(self.passages), max(k * 4, 20))  # fuse over a deeper pool than we keep
        # (an embed_fn given instead of an embedder has no disk cache to skip)
        if qvecs is None and not cache and self.embedder is not None and not self._own_embed_fn:
            qvecs = self.embedder.encode(queries, cache=False)
        elif qvecs is None:
            qvecs = self._embed(queries)
        sims, ids = self._dense(qvecs, depth)
        lexical = self._lexical(queries, depth) if self._bm25 is not None else None
        results: list[list[Hit]] = []
        for qi in range(len(queries)):
            if lexical is None:
                ranked = [
                    (int(i), float(s)) for i, s in zip(ids[qi], sims[qi], strict=True) if i >= 0
                ][:k]
            else:
                fused: dict[int, float] = defaultdict(float)
                for r, i in enumerate(ids[qi]):
                    if i >= 0:
                        fused[int(i)] += 1.0 / (RRF_K + r + 1)
                for r, i in enumerate(lexical[qi]):
                    fused[i] += 1.0 / (RRF_K + r + 1)
                ranked = sorted(fused.items(), key=lambda t: (-t[1], t[0]))[:k]
            results.append([Hit(self.passages[i], s, r + 1) for r, (i, s) in enumerate(ranked)])
        return results

    def search(self, query: str, k: int) -> list[Hit]:
        return self.search_many([query], k)[0]


def render_context(hits: Sequence[Hit]) -> str:
    """Numbered passages, each headed by its citation: ``[1] docs/refunds.md``."""
    blocks = [f"[{i}] {h.passage.source}\n{h.passage.text}" for i, h in enumerate(hits, start=1)]
    return "\n\n".join(blocks)


RAG_INSTRUCTION = "Use the numbered passages below when they are relevant, and cite them like [1]."


def build_messages(system_prompt: str, hits: Sequence[Hit], query: Example) -> list[dict[str, str]]:
    """The prompt with retrieved documents (cited) in the system turn and retrieved labelled
    examples as earlier user/assistant turns, the closest one right before the query."""
    msgs = base_messages(query, system_prompt)
    docs = [h for h in hits if h.passage.label is None]
    examples = [h for h in hits if h.passage.label is not None]
    if docs:
        context = f"{RAG_INSTRUCTION}\n\n{render_context(docs)}"
        if msgs and msgs[0]["role"] == "system":
            msgs[0] = {"role": "system", "content": f"{msgs[0]['content']}\n\n{context}"}
        else:
            msgs.insert(0, {"role": "system", "content": context})
    if examples:
        head = 1 if msgs and msgs[0]["role"] == "system" else 0
        turns: list[dict[str, str]] = []
        for h in reversed(examples):  # hits are best first; the best goes last, next to the query
            turns += [
                {"role": "user", "content": h.passage.meta.get("user", h.passage.text)},
                {"role": "assistant", "content": h.passage.label or ""},
            ]
        msgs[head:head] = turns
    return msgs


def rag_version(k: int, hybrid: bool, index: RagIndex) -> str:
    return sha256_text(f"rag:v2:k={k}:hybrid={hybrid}:{index.content_hash}:{RAG_INSTRUCTION}")[:12]


class KnnClassifier:
    """Similarity-weighted majority vote of the ``k`` nearest labelled train examples.

    ``label_of`` maps an example's answer to its label key (e.g. the extracted fields); the
    prediction is the answer text of the closest neighbour carrying the winning label, so it is
    graded exactly like a model's output.
    """

    def __init__(
        self,
        train: Sequence[Example],
        *,
        k: int = 10,
        embedder: Embedder | None = None,
        label_of: Callable[[str], str | None] | None = None,
    ) -> None:
        if not train:
            raise UserError("the kNN classifier needs labelled train examples")
        self.train = list(train)
        self.embedder = embedder or default_embedder()
        key = label_of or (lambda t: t.strip())
        # None on a classifier restored from a release: its label keys were computed at fit.
        self.label_of: Callable[[str], str | None] | None = key
        vecs = self.embedder.encode([ex.user_text for ex in self.train])
        self._index(
            vecs,
            labels=[key(ex.target) for ex in self.train],
            uids=[ex.uid for ex in self.train],
            answers=[ex.target for ex in self.train],
            k=k,
        )

    def _index(
        self,
        vecs: np.ndarray,
        *,
        labels: list[str | None],
        uids: list[str],
        answers: list[str],
        k: int,
    ) -> None:
        """The fitted state: one vector, label key, uid and answer per train example. Only plain
        data besides the index, so a release can save it and :meth:`from_vectors` rebuild it."""
        import faiss  # lazy: faiss, ~0.15 s to import

        self.labels: list[str | None] = list(labels)
        self.uids: list[str] = list(uids)
        self.answers: list[str] = list(answers)
        self.k = min(k, len(self.uids))
        self.index = faiss.IndexFlatIP(vecs.shape[1])
        self.index.add(vecs)

    @classmethod
    def from_vectors(
        cls,
        vecs: np.ndarray,
        *,
        labels: list[str | None],
        uids: list[str],
        answers: list[str],
        k: int,
        embedder: Embedder,
    ) -> KnnClassifier:
        """A fitted classifier from saved state (a released artefact): the train examples' vectors,
        label keys, uids and answers, nothing re-embedded, so it votes exactly as the one saved."""
        if not uids:
            raise UserError("the kNN classifier needs labelled train examples")
        self = cls.__new__(cls)
        self.train, self.embedder, self.label_of = [], embedder, None
        self._index(vecs, labels=labels, uids=uids, answers=answers, k=k)
        return self

    def train_vectors(self) -> np.ndarray:
        """The train examples' vectors as indexed, float32 (a flat index stores them verbatim)."""
        return self.index.reconstruct_n(0, self.index.ntotal)

    def predict(self, queries: Sequence[Example]) -> list[str]:
        if not queries:
            return []
        qv = self.embedder.encode([q.user_text for q in queries])
        sims, ids = self.index.search(qv, min(self.k + 1, len(self.uids)))
        out: list[str] = []
        for qi, q in enumerate(queries):
            votes: dict[str | None, float] = defaultdict(float)
            best: dict[str | None, tuple[float, int]] = {}
            n = 0
            for s, i in zip(sims[qi], ids[qi], strict=True):
                if i < 0 or self.uids[i] == q.uid or n == self.k:
                    continue
                n += 1
                lab = self.labels[i]
                votes[lab] += float(s)
                if lab not in best or s > best[lab][0]:
                    best[lab] = (float(s), int(i))
            if not votes:
                out.append("")
                continue
            winner = max(votes, key=lambda lab: (votes[lab], best[lab][0]))
            out.append(self.answers[best[winner][1]])
        return out
