"""The ladder's rungs, named once.

The article's ladder: a good prompt, then few-shot examples, then retrieval (RAG), and only then a
fine-tune. Every module that needs "the three cheap options" imports :data:`RUNGS` from here, in
ladder order (cheapest first), so adding or renaming a rung is one edit.

Other candidates (``knn``, the classifiers, the ``+constrained`` variants, the fine-tunes) are
named in :mod:`tunewise.candidates`; the references may be gate baselines when a project lists them
in ``gate.baselines``.
"""

from __future__ import annotations

from typing import Final

RUNGS: Final[tuple[str, ...]] = ("prompt", "fewshot", "rag")


def is_rung(name: str) -> bool:
    return name in RUNGS
