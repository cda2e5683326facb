"""The classical references (tfidf, probe): per-field models fitted on train only, answers graded
like a model's, and their place among the harness's candidates."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from tunewise.baselines import classical
from tunewise.config import load_project
from tunewise.data.labels import LabelSpec
from tunewise.data.schema import Example
from tunewise.errors import UserError

PATTERN = re.compile(r"^Category: (?P<category>\w+)\nPriority: (?P<priority>\w+)$", re.M)
SPEC = LabelSpec(pattern=PATTERN, fields=["category", "priority"])


def ex(user: str, cat: str, prio: str, line: int = 1) -> Example:
    msgs = [
        {"role": "user", "content": user},
        {"role": "assistant", "content": f"Category: {cat}\nPriority: {prio}"},
    ]
    return Example(messages=msgs, line=line, source="/p/train.jsonl")


# Category follows the noun (invoice/crash), priority follows the adverb (urgently/whenever):
# the two fields are independent, and train never shows (bug, low).
TRAIN = [
    ex(f"{noun} {detail} {adv}", cat, prio, i)
    for i, (noun, cat, adv, prio) in enumerate(
        [
            ("invoice", "billing", "urgently", "high"),
            ("invoice", "billing", "whenever", "low"),
            ("crash", "bug", "urgently", "high"),
        ]
        * 6
    )
    for detail in ["", "again"]
]


def test_tfidf_predicts_each_field_and_renders_an_unseen_combination() -> None:
    clf = classical.tfidf_classifier(SPEC, TRAIN)
    assert set(clf.models) == {"category", "priority"}  # one model per field
    queries = [ex("crash whenever", "bug", "low"), ex("invoice urgently", "billing", "high")]
    assert clf.predict_fields(queries) == [
        {"category": "bug", "priority": "low"},
        {"category": "billing", "priority": "high"},
    ]
    answers = clf.predict(queries)
    # (bug, low) never occurs in train: rendered from a train answer's own format.
    assert answers == ["Category: bug\nPriority: low", "Category: billing\nPriority: high"]
    assert all(PATTERN.fullmatch(a) for a in answers)


def test_a_field_with_one_train_value_is_predicted_as_that_value() -> None:
    train = [
        ex(f"{w} problem", c, "medium", i)
        for i, (w, c) in enumerate([("bill", "billing"), ("crash", "bug")] * 4)
    ]
    clf = classical.tfidf_classifier(SPEC, train)
    assert clf.constant == {"priority": "medium"} and set(clf.models) == {"category"}
    assert clf.predict([ex("crash again", "bug", "high")]) == ["Category: bug\nPriority: medium"]
    assert clf.describe()["constant_fields"] == ["priority"]


def test_probe_uses_the_given_embeddings_and_only_train_to_fit() -> None:
    seen: list[list[str]] = []

    def encode(texts: list[str]) -> np.ndarray:
        seen.append(list(texts))
        # a 2-d "embedding": does the text mention a crash, is it urgent
        return np.array([[("crash" in t) * 1.0, ("urgent" in t) * 1.0] for t in texts])

    clf = classical.probe_classifier(SPEC, TRAIN, encode)
    assert seen == [[e.user_text for e in TRAIN]]  # fitted on train texts, nothing else
    out = clf.predict_fields([ex("crash urgently", "bug", "high"), ex("invoice", "billing", "low")])
    assert out == [
        {"category": "bug", "priority": "high"},
        {"category": "billing", "priority": "low"},
    ]


def test_single_field_labels_are_whole_answers() -> None:
    spec = LabelSpec(pattern=None, fields=["label"])
    train = [
        Example(
            messages=[{"role": "user", "content": u}, {"role": "assistant", "content": a}],
            line=i,
        )
        for i, (u, a) in enumerate([("refund my charge", "billing"), ("app crashed", "bug")] * 5)
    ]
    clf = classical.tfidf_classifier(spec, train)
    assert clf.predict([train[0], train[1]]) == ["billing", "bug"]


def test_a_train_answer_that_does_not_parse_is_skipped_and_named() -> None:
    bad = Example(
        messages=[{"role": "user", "content": "x"}, {"role": "assistant", "content": "billing"}],
        line=7,
        source="/p/train.jsonl",
    )
    # One answer off the pattern (the data check only warns) must not stop a default reference.
    clf = classical.tfidf_classifier(SPEC, [*TRAIN, bad])
    described = clf.describe()
    assert described["skipped_train_answers"] == 1
    assert described["first_skipped"] == "/p/train.jsonl:7"
    assert described["train_examples"] == len(TRAIN)
    with pytest.raises(UserError, match=r"/p/train.jsonl:7: tfidf: no train answer matches"):
        classical.tfidf_classifier(SPEC, [bad])
    with pytest.raises(UserError, match="needs labelled train examples"):
        classical.tfidf_classifier(SPEC, [])


def test_harness_runs_both_references_beside_the_rungs(tmp_path: Path) -> None:
    from test_harness import FakeEngine, write_project
    from tunewise.eval.harness import evaluate, plan_candidates

    path = write_project(tmp_path, constrained=False)
    cfg = load_project(path)
    assert plan_candidates(cfg, None, {}) == ["prompt", "fewshot", "rag", "knn", "tfidf", "probe"]
    assert plan_candidates(cfg, ["tfidf"], {}) == ["tfidf"]  # asked for alone
    run = evaluate(
        cfg, candidates=["prompt", "tfidf", "probe"], engine=FakeEngine(), progress=False
    )
    for name in ("tfidf", "probe"):
        cand = run.candidate(name)
        assert cand.kind == "classical" and cand.meta["classifier"] == name
        assert [i.item_id for i in cand.items] == run.item_ids
        # graded like any model: format, per-field accuracy, label keys for macro-F1
        first = cand.items[0]
        assert {"accuracy", "accuracy_category", "format_compliance"} <= set(first.scores)
        assert first.gold is not None and first.predicted is not None
    # the toy tickets are keyword-separable: TF-IDF gets them all
    assert all(i.scores["accuracy"] == 1.0 for i in run.candidate("tfidf").items)

    raw = yaml.safe_load(path.read_text())
    raw["eval"]["classical"] = False
    path.write_text(yaml.safe_dump(raw))
    assert "tfidf" not in plan_candidates(load_project(path), None, {})
    with pytest.raises(UserError, match="needs a local model"):
        plan_candidates(cfg, ["tfidf+constrained"], {})


def test_text_tasks_never_get_classical_references(tmp_path: Path) -> None:
    from test_harness import write_project
    from tunewise.eval.harness import plan_candidates

    path = write_project(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["task"] = {"type": "text"}
    raw["eval"] = {**raw.get("eval", {}), "graders": ["exact"], "primary_metric": "exact_match"}
    path.write_text(yaml.safe_dump(raw))
    assert plan_candidates(load_project(path), None, {}) == ["prompt", "fewshot", "rag"]


def test_a_classical_reference_can_be_a_gate_baseline(tmp_path: Path) -> None:
    from test_harness import FakeEngine, write_project
    from tunewise.config import GateConfig
    from tunewise.decide.gate import decide
    from tunewise.eval.harness import evaluate
    from tunewise.eval.stats import compare

    cfg = load_project(write_project(tmp_path, constrained=False))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "adapter_config.json").write_text("{}")
    (run_dir / "adapter_model.safetensors").write_bytes(b"x")
    run = evaluate(
        cfg,
        candidates=["prompt", "tfidf"],
        finetuned={"finetuned": run_dir},
        engine=FakeEngine(sloppy=True),
        progress=False,
    )
    comp = compare(run, baselines=["prompt", "tfidf"], n_boot=500)
    verdict = decide(comp, "finetuned", GateConfig(baselines=["prompt", "tfidf"]))
    by_base = {r.baseline: r for r in verdict.reasons}
    # The fake fine-tune and TF-IDF are both perfect on these tickets: tied, so no ship.
    assert not by_base["tfidf"].passed and "tied" in by_base["tfidf"].reason
    assert not verdict.ship and "tfidf" in verdict.summary
