"""The candidate-name grammar (tunewise.candidates): one reading of every name."""

from __future__ import annotations

import pytest

from tunewise.candidates import (
    CHAMPION,
    FINETUNED_GROUPS,
    NO_LLM,
    constrained,
    describe,
    is_finetune_name,
    listed_untrained,
    parse,
    run_names,
)
from tunewise.rungs import RUNGS


@pytest.mark.parametrize(
    ("name", "kind", "base", "is_constrained"),
    [
        ("prompt", "rung", "prompt", False),
        ("rag+constrained", "rung", "rag", True),
        ("knn", "no_llm", "knn", False),
        ("probe", "no_llm", "probe", False),
        ("finetuned+fewshot", "finetune_group", "finetuned+fewshot", False),
        ("finetuned+constrained", "finetune_group", "finetuned", True),
        ("external", "external", "external", False),
        (CHAMPION, "champion", CHAMPION, False),
        ("finetuned-qlora", "other", "finetuned-qlora", False),
    ],
)
def test_parse_reads_kind_base_and_constraint(name, kind, base, is_constrained):
    c = parse(name)
    assert (c.kind, c.base, c.constrained) == (kind, base, is_constrained)
    assert constrained(c.base) == name if is_constrained else c.base == name


def test_every_known_name_has_its_own_description():
    names = [*RUNGS, *NO_LLM, *FINETUNED_GROUPS, "external", CHAMPION]
    texts = [describe(n) for n in names]
    assert len(set(texts)) == len(names)  # no two kinds described alike
    assert describe("prompt+constrained").startswith(describe("prompt"))
    assert "log-likelihood" in describe("prompt+constrained")


def test_run_names_follow_methods_and_variants():
    assert run_names(["lora"], ["none", "fewshot"]) == {
        ("lora", "none"): "finetuned",
        ("lora", "fewshot"): "finetuned+fewshot",
    }
    two = run_names(["lora", "qlora"], ["none"])
    assert two == {("lora", "none"): "finetuned-lora", ("qlora", "none"): "finetuned-qlora"}
    assert all(is_finetune_name(n) for n in two.values())


def test_listed_untrained_keeps_what_the_ladder_does_not_train():
    rungs, others = listed_untrained(
        ["prompt", "knn", "finetuned", "finetuned+fewshot", "finetuned+rag", "rag"]
    )
    assert rungs == ["prompt", "rag"]
    # finetuned+rag is the trained runs with a RAG prompt: evaluated, not trained
    assert others == ["knn", "finetuned+rag"]
