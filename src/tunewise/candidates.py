"""The candidate-name grammar: what a name in ``eval.candidates`` stands for, written once.

A candidate is something the evaluation scores on the same items as every other:

* a **rung** of the ladder (:data:`tunewise.rungs.RUNGS`: ``prompt``, ``fewshot``, ``rag``);
* a **reference without an LLM**: ``knn`` (nearest training example), ``tfidf`` and ``probe``
  (classifiers fitted on the training split);
* a **fine-tune group**: ``finetuned`` (every run the ladder trains), ``finetuned+fewshot`` (the
  runs trained with few-shot context), ``finetuned+rag`` (each plain run, prompted with RAG
  context). A group expands to one candidate per training run, named after the run
  (``finetuned``, ``finetuned-qlora``, ``finetuned+fewshot-s2``...);
* ``external``: every endpoint of ``eval.external``, each under its own name;
* ``production``: the registry's production version, evaluated for the champion/challenger check;
* any of those with ``+constrained``: the same prompt, the answer chosen among the allowed labels
  by log-likelihood instead of generated (labels tasks), or generated under the tools' call
  grammar, every call valid (tools tasks).

The harness, the ladder, the estimates and the advice all read names through this module, so the
grammar has one owner and a new kind of candidate is one edit here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from tunewise.rungs import RUNGS

CONSTRAINED_SUFFIX: Final = "+constrained"
FINETUNED: Final = "finetuned"
# The names that stand for training runs: each expands to the runs of its kind.
FINETUNED_GROUPS: Final = ("finetuned", "finetuned+rag", "finetuned+fewshot")
# The groups the ladder trains runs for (finetuned+rag reuses the plain runs with a RAG prompt).
TRAINED_GROUPS: Final = ("finetuned", "finetuned+fewshot")
CLASSICAL: Final = ("tfidf", "probe")  # fitted classifiers, in the order the harness runs them
KNN: Final = "knn"
NO_LLM: Final = (KNN, *CLASSICAL)  # references that answer without a language model
EXTERNAL: Final = "external"
CHAMPION: Final = "production"  # the production version inside an evaluation
CONTEXT_SUFFIXES: Final = ("+fewshot", "+rag")  # a fine-tune whose prompts carry retrieved context

Kind = Literal["rung", "no_llm", "finetune_group", "external", "champion", "other"]


@dataclass(frozen=True)
class Candidate:
    """One name, read: ``base`` is the name without ``+constrained``."""

    name: str
    base: str
    constrained: bool
    kind: Kind


def parse(name: str) -> Candidate:
    """Read one name of ``eval.candidates`` (or of an evaluation: a run's own name is ``other``)."""
    base = unconstrained(name)
    kind: Kind
    if base in RUNGS:
        kind = "rung"
    elif base in NO_LLM:
        kind = "no_llm"
    elif base in FINETUNED_GROUPS:
        kind = "finetune_group"
    elif base == EXTERNAL:
        kind = "external"
    elif base == CHAMPION:
        kind = "champion"
    else:
        kind = "other"
    return Candidate(name, base, base != name, kind)


def describe(name: str) -> str:
    """One phrase for a person: what the candidate is."""
    c = parse(name)
    what = {
        "rung": {
            "prompt": "the base model with the project's prompt",
            "fewshot": "the base model with few-shot examples",
            "rag": "the base model with retrieved context (RAG)",
        }.get(c.base, c.base),
        "no_llm": {
            KNN: "the label of the nearest training example (no LLM)",
            "tfidf": "a TF-IDF classifier (no LLM)",
            "probe": "a linear probe on sentence embeddings (no LLM)",
        }.get(c.base, c.base),
        "finetune_group": {
            "finetuned": "every fine-tune the ladder trains",
            "finetuned+fewshot": "the fine-tunes trained with few-shot context",
            "finetuned+rag": "each plain fine-tune, prompted with RAG context",
        }.get(c.base, c.base),
        "external": "each endpoint of eval.external",
        "champion": "the registry's production version",
        "other": f"the candidate {c.base!r}",
    }[c.kind]
    constrained = (
        ", its label chosen by log-likelihood (labels) or its calls decoded under the tools' "
        "JSON schemas (tools)"
    )
    return what + (constrained if c.constrained else "")


def is_constrained(name: str) -> bool:
    return name.endswith(CONSTRAINED_SUFFIX)


def unconstrained(name: str) -> str:
    return name.removesuffix(CONSTRAINED_SUFFIX)


def constrained(name: str) -> str:
    return name + CONSTRAINED_SUFFIX


def is_trained_group(name: str) -> bool:
    """A name the ladder answers by training (``finetuned``, ``finetuned+fewshot``)."""
    return name in TRAINED_GROUPS


def is_finetune_name(name: str) -> bool:
    """A fine-tune group or a training run's own name (``finetuned-qlora``, ``finetuned+rag``)."""
    return name.startswith(FINETUNED)


def listed_untrained(candidates: Sequence[str]) -> tuple[list[str], list[str]]:
    """``eval.candidates`` without the names the ladder trains: (rungs, everything else, which
    keeps ``finetuned+rag``: the harness expands it to the trained runs with a RAG prompt)."""
    rungs = [c for c in candidates if c in RUNGS]
    others = [c for c in candidates if c not in RUNGS and not is_trained_group(c)]
    return rungs, others


def run_names(methods: Sequence[str], variants: Sequence[str]) -> dict[tuple[str, str], str]:
    """Candidate name per (method, context variant): ``finetuned`` (one method, no context),
    ``finetuned-lora`` (several methods), ``finetuned+fewshot`` (trained with that context)."""
    out = {}
    for m in methods:
        for v in variants:
            base = f"{FINETUNED}-{m}" if len(methods) > 1 else FINETUNED
            out[m, v] = base if v == "none" else f"{base}+{v}"
    return out
