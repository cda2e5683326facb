"""Reference metrics for free text (tunewise.eval.reference), checked against the libraries'
own numbers on a fixed sample with a varying number of references per item."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from tunewise.eval.reference import corpus_scores, sentence_scores, similarity_scores

ANSWERS = [
    "Alimentum is a family friendly place in the city centre.",
    "Cocum is a cheap coffee shop serving English food.",
    "The Eagle is a pub near the river.",
]
REFERENCES = [
    [
        "Alimentum is not family-friendly and is in the city centre.",
        "In the city centre there is Alimentum, which is not family-friendly.",
        "Alimentum, in the city centre, is not a family place.",
    ],
    ["Cocum is a cheap English coffee shop.", "There is a cheap coffee shop called Cocum."],
    ["The Eagle is a pub by the riverside."],
]


def test_corpus_scores_equal_sacrebleus_own_with_ragged_references():
    # sacrebleu's own API, with the reference streams written out by hand: the k-th stream holds
    # the k-th reference of every item, None where an item has fewer.
    streams = [
        [REFERENCES[0][0], REFERENCES[1][0], REFERENCES[2][0]],
        [REFERENCES[0][1], REFERENCES[1][1], None],
        [REFERENCES[0][2], None, None],
    ]
    want_bleu = sacrebleu.corpus_bleu(ANSWERS, streams).score
    want_chrf = sacrebleu.corpus_chrf(ANSWERS, streams).score
    got = corpus_scores(ANSWERS, REFERENCES, ["bleu", "chrf"])
    assert got["bleu"] == pytest.approx(want_bleu, abs=1e-9)
    assert got["chrf"] == pytest.approx(want_chrf, abs=1e-9)
    # Every reference counts: with only the first reference per item the score is another one.
    first_only = corpus_scores(ANSWERS, [r[:1] for r in REFERENCES], ["bleu"])["bleu"]
    assert first_only != pytest.approx(got["bleu"])


def test_sentence_scores_use_every_reference_and_read_on_0_to_1():
    refs = REFERENCES[1]
    got = sentence_scores(ANSWERS[1], refs)
    assert set(got) == {"bleu", "chrf", "rougeL"}
    want_bleu = sacrebleu.sentence_bleu(ANSWERS[1], refs).score / 100
    assert got["bleu"] == pytest.approx(want_bleu)
    assert got["chrf"] == pytest.approx(sacrebleu.sentence_chrf(ANSWERS[1], refs).score / 100)
    rouge = rouge_scorer.RougeScorer(["rougeL"]).score_multi(refs, ANSWERS[1])["rougeL"]
    assert got["rougeL"] == pytest.approx(rouge.fmeasure)
    assert all(0.0 <= v <= 1.0 for v in got.values())
    # The best reference decides ROUGE-L: adding a worse one never lowers it.
    assert sentence_scores(ANSWERS[1], [*refs, "zzz"])["rougeL"] == pytest.approx(got["rougeL"])
    assert sentence_scores("same words", ["same words"])["chrf"] == pytest.approx(1.0)


def test_an_item_without_references_is_refused():
    with pytest.raises(ValueError, match="no reference"):
        sentence_scores("anything", ["", ""])


class _Embedder:
    """Unit vectors from a fixed table: the closest reference is known in advance."""

    def encode(self, texts):
        table = {"a": [1.0, 0.0], "b": [0.0, 1.0], "ab": [math.sqrt(0.5), math.sqrt(0.5)]}
        return np.array([table[t] for t in texts], dtype=np.float32)


def test_similarity_is_the_cosine_to_the_closest_reference():
    got = similarity_scores(["a", "ab"], [["b", "a"], ["b"]], _Embedder())
    assert got[0] == pytest.approx(1.0)
    assert got[1] == pytest.approx(math.sqrt(0.5))


def test_a_text_evaluation_scores_each_input_once_against_all_its_references(tmp_path):
    # DART/E2E style: one line per reference. The evaluation merges them per input, scores an
    # answer against all, and records the corpus scores as sacrebleu reports them.
    import json

    import yaml

    from test_harness import _Res
    from tunewise.config import load_project
    from tunewise.eval.harness import evaluate

    class Echo:
        """Answers every input with its second human reference (known to the test)."""

        def generate(self, requests, *, progress=False):
            return [_Res(_second(r.messages[-1]["content"])) for r in requests]

        def max_new_tokens_for(self, answers):
            return 32

    def _second(user: str) -> str:
        return f"By the river, {user.split(' |')[0]} serves Thai food."

    rows = []
    for i in range(40):
        user = f"Venue{i} | food | Thai\nVenue{i} | area | riverside"
        for answer in (f"Venue{i} is a Thai place by the river.", _second(user)):
            rows.append({"messages": [{"role": "user", "content": user},
                                      {"role": "assistant", "content": answer}]})  # fmt: skip
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = {
        "name": "d2t",
        "data": {"train": "d.jsonl", "split": {"val": 0.25, "test": 0.25}},
        "task": {"type": "text", "system_prompt": "Write one sentence."},
        "eval": {
            "candidates": ["prompt"],
            "graders": ["chrf", "bleu", "rougeL", "exact"],
            "primary_metric": "chrf",
        },
        "gate": {"baselines": ["prompt"]},
    }
    (tmp_path / "project.yaml").write_text(yaml.safe_dump(raw))
    out = tmp_path / "eval"
    cfg = load_project(tmp_path / "project.yaml")
    run = evaluate(cfg, engine=Echo(), progress=False, out_dir=out)
    prompt = run.candidate("prompt")
    assert len(run.item_ids) == 10  # 10 inputs of 40 in val, each once, not 20 lines
    assert all(i.scores["chrf"] == pytest.approx(1.0) for i in prompt.items)
    assert all("accuracy" not in i.scores for i in prompt.items)
    assert prompt.meta["corpus"]["bleu"] == pytest.approx(100.0)
    # exact match reads the first reference only, which the answers never are
    assert all(i.scores["exact_match"] == 0.0 for i in prompt.items)
    # the report shows the corpus scores as sacrebleu reports them, and no accuracy column
    from tunewise.decide.report_inputs import render_report

    _, md = render_report(out)
    text = md.read_text()
    assert "Corpus scores as sacrebleu reports them (0-100): prompt: bleu 100.0, chrf 100.0" in text
    assert "accuracy" not in text


def test_scoring_leaves_the_root_logger_as_it_found_it():
    # rouge-score's logging.info would otherwise install a root handler, and bm25s's DEBUG lines
    # then printed in the middle of `tunewise run` (seen on the DART walkthrough).
    import logging

    root = logging.getLogger()
    pytest_handlers = list(root.handlers)  # pytest's capture handlers would hide the effect
    for h in pytest_handlers:
        root.removeHandler(h)
    try:
        sentence_scores("a b c", ["a b d"])
        assert root.handlers == []
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in pytest_handlers:
            root.addHandler(h)
