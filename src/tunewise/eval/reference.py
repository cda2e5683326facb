"""Reference metrics for free text: how close an answer is to any of its human references.

A free-text task (tone, structure, data-to-text) has no label to match, and a judge no stronger
than the candidates decides nothing. What such tasks are measured with in the literature is a
comparison with references written by people, several per input where the data has them. The
maintained implementations do the scoring, never code of ours:

* ``chrf`` and ``bleu``: sacrebleu, with its default settings (chrF2; BLEU-4 with the 13a
  tokenizer). Per item: the sentence score (BLEU with ``effective_order``, as sacrebleu advises for
  single sentences); per candidate: the corpus score exactly as ``sacrebleu.corpus_score`` reports
  it, which is what papers quote (:func:`corpus_scores`).
* ``rougeL``: rouge-score's ROUGE-L F-measure, the best over the references (``score_multi``).
* ``similarity``: the cosine between the answer and the closest reference under the embedding model
  tunewise already ships (all-MiniLM-L6-v2): meaning rather than wording.

Per-item scores are on 0..1 (sacrebleu's 0..100 divided by 100) so that the gate's ``delta`` and
the paired tests read them like every other metric; corpus scores keep sacrebleu's 0..100.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Final

REFERENCE_METRICS: Final = ("chrf", "bleu", "rougeL", "similarity")
CORPUS_METRICS: Final = ("chrf", "bleu")  # the ones sacrebleu defines at corpus level


@lru_cache(maxsize=1)
def _sacrebleu() -> tuple[Any, Any, Any]:
    # Imported on first use: free-text projects only pay for it.
    from sacrebleu.metrics import BLEU, CHRF

    return BLEU(), BLEU(effective_order=True), CHRF()


@lru_cache(maxsize=1)
def _rouge() -> Any:
    # rouge-score pulls nltk and absl at import: loaded on first use.
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


@contextmanager
def _root_logging_untouched() -> Iterator[None]:
    """rouge-score logs through ``logging.info``, which configures the root logger on first use
    (``basicConfig``): every library's DEBUG records (bm25s's) would then print between
    tunewise's lines. Whatever handler appears on the root meanwhile is taken off again."""
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        yield
    finally:
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)


def sentence_scores(
    answer: str, references: Sequence[str], metrics: Sequence[str] = REFERENCE_METRICS
) -> dict[str, float]:
    """The text metrics of one answer against all its references (0..1; ``similarity`` is not
    computed here, see :func:`similarity_scores`, which batches the embedding)."""
    refs = [r for r in references if r]
    if not refs:
        raise ValueError("no reference to score against")
    out: dict[str, float] = {}
    _, sentence_bleu, chrf = _sacrebleu()
    if "bleu" in metrics:
        out["bleu"] = sentence_bleu.sentence_score(answer, refs).score / 100.0
    if "chrf" in metrics:
        out["chrf"] = chrf.sentence_score(answer, refs).score / 100.0
    if "rougeL" in metrics:
        with _root_logging_untouched():
            out["rougeL"] = float(_rouge().score_multi(refs, answer)["rougeL"].fmeasure)
    return out


def corpus_scores(
    answers: Sequence[str], references: Sequence[Sequence[str]], metrics: Sequence[str]
) -> dict[str, float]:
    """Corpus BLEU and chrF as sacrebleu reports them (0..100), every item with all its references
    (sacrebleu takes reference *streams*: the k-th stream holds each item's k-th reference, None
    where an item has fewer)."""
    if len(answers) != len(references):
        raise ValueError("one list of references per answer")
    depth = max((len(r) for r in references), default=0)
    streams = [[r[k] if k < len(r) else None for r in references] for k in range(depth)]
    corpus_bleu, _, chrf = _sacrebleu()
    out = {}
    if "bleu" in metrics:
        out["bleu"] = float(corpus_bleu.corpus_score(list(answers), streams).score)
    if "chrf" in metrics:
        out["chrf"] = float(chrf.corpus_score(list(answers), streams).score)
    return out


def similarity_scores(
    answers: Sequence[str], references: Sequence[Sequence[str]], embedder: Any
) -> list[float]:
    """Per answer, the cosine to its closest reference (embeddings are unit-norm rows)."""
    flat = [r for refs in references for r in refs]
    vecs = embedder.encode(list(answers) + flat)
    answer_vecs, ref_vecs = vecs[: len(answers)], vecs[len(answers) :]
    out, at = [], 0
    for i, refs in enumerate(references):
        block = ref_vecs[at : at + len(refs)]
        at += len(refs)
        out.append(float((block @ answer_vecs[i]).max()) if len(refs) else float("nan"))
    return out
