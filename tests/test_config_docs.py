"""The config is the documentation (issue #22): every field is described, docs/project-yaml.md is
the generator's output, and the rules between sections are refused at load in one line."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml

from tunewise import config_docs
from tunewise.config import CROSS_SECTION_RULES, ProjectConfig, load_project
from tunewise.errors import UserError

DOCS_PAGE = Path(__file__).resolve().parent.parent / "docs" / "project-yaml.md"


# --- every field is described ---------------------------------------------------------------------


def _models(model: type[Any], path: str = "") -> list[tuple[str, type[Any]]]:
    """``model`` and every config model reachable through its fields' annotations (``X | None``,
    ``list[X]``), walked independently of the generator so that a section it skipped is caught."""
    found = [(path, model)]
    for name, field in model.model_fields.items():
        stack = [field.annotation]
        while stack:
            ann = stack.pop()
            if inspect.isclass(ann) and hasattr(ann, "model_fields"):
                found += _models(ann, f"{path}.{name}" if path else name)
            else:
                stack.extend(get_args(ann))
    return found


def test_every_field_of_every_config_model_has_a_description():
    models = _models(ProjectConfig)
    # task, data, data.split, model, train, eval (+ fewshot, rag, external), gate (+ cost),
    # tracking (+ mlflow) and the top level: a walk that finds fewer is broken, not clean.
    assert len(models) >= 14, [p for p, _ in models]
    missing = [
        f"{path + '.' if path else ''}{name}"
        for path, model in models
        for name, field in model.model_fields.items()
        if not (field.description or "").strip()
    ]
    assert not missing, f"fields without Field(description=...): {', '.join(missing)}"


# --- docs/project-yaml.md -------------------------------------------------------------------------


def test_docs_page_is_the_generators_output():
    assert DOCS_PAGE.is_file(), "run python -m tunewise.config_docs > docs/project-yaml.md"
    assert DOCS_PAGE.read_text(encoding="utf-8") == config_docs.render(), (
        "docs/project-yaml.md is out of date: "
        "run python -m tunewise.config_docs > docs/project-yaml.md"
    )


def test_the_page_has_every_section_field_and_rule():
    text = config_docs.render()
    for path, model in _models(ProjectConfig):
        if path:
            assert f"## `{path}`" in text, path
        for name, field in model.model_fields.items():
            if not field.exclude:
                assert f"| `{name}` |" in text, f"{path}.{name}"
    for rule in CROSS_SECTION_RULES:
        assert f"**`{rule.fields[0]}` / `{rule.fields[1]}`**" in text
    # a default, a bound and a literal type, as a reader needs them
    assert "| `lora_r` | `int (>= 1)` | `16` |" in text
    assert "| `method` | `lora \\| qlora \\| full` | `lora` |" in text


def test_out_writes_the_page_atomically(tmp_path):
    out = tmp_path / "docs" / "project-yaml.md"
    out.parent.mkdir()
    out.write_text("stale\n")
    assert config_docs.main(["--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == config_docs.render()
    assert [p.name for p in out.parent.iterdir()] == ["project-yaml.md"]  # no temporary left
    assert out.stat().st_mode & 0o044  # readable like a plain write, not mkstemp's 0600


# --- cross-section rules --------------------------------------------------------------------------


def _project(tmp_path: Path, settings: dict[str, Any]) -> Path:
    """A minimal project.yaml (the data file need not exist to load) with dotted ``settings``."""
    raw: dict[str, Any] = {"name": "rules", "data": {"train": "train.jsonl"}}
    for key, value in settings.items():
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    path = tmp_path / "project.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


EXTERNAL = [{"name": "gpt4", "base_url": "https://api.example/v1", "model": "gpt-4o"}]

# (id, settings that break a rule, the field the message starts with, the other field it names)
BROKEN = [
    (
        "baseline-not-evaluated",
        {"eval.candidates": ["prompt", "finetuned"]},
        "gate.baselines: 'fewshot' is not in",
        "eval.candidates [prompt, finetuned]",
    ),
    (
        "knn-baseline-on-a-text-task",
        {"task.type": "text", "gate.baselines": ["prompt", "knn"]},
        "gate.baselines: 'knn'",
        "eval.candidates",
    ),
    (
        "external-baseline-not-listed",
        {"eval.external": EXTERNAL, "gate.baselines": ["gpt4"]},
        "gate.baselines: 'gpt4'",
        "eval.candidates",
    ),
    (
        "fewshot-variant-not-trained",
        {"eval.candidates": ["prompt", "fewshot", "rag", "finetuned", "finetuned+fewshot"]},
        "eval.candidates: 'finetuned+fewshot'",
        "set train.variants: [none, fewshot]",
    ),
    (
        "constrained-fewshot-variant-not-trained",
        {
            "eval.candidates": ["prompt", "fewshot", "rag", "finetuned+fewshot+constrained"],
            "train.variants": ["none", "rag"],
        },
        "eval.candidates: 'finetuned+fewshot+constrained'",
        "train.variants is [none, rag]",
    ),
    (
        "judge-metric-without-judge-grader",
        {"eval.primary_metric": "judge"},
        "eval.primary_metric: 'judge' needs the judge grader",
        "eval.graders [format, label, exact]",
    ),
    (
        "exact-match-without-exact-grader",
        {"eval.primary_metric": "exact_match", "eval.graders": ["format", "label"]},
        "eval.primary_metric: 'exact_match'",
        "eval.graders",
    ),
    (
        "schema-valid-without-a-schema",
        {"task.type": "json", "eval.primary_metric": "schema_valid", "eval.graders": ["json"]},
        "eval.primary_metric: 'schema_valid'",
        "task.json_schema",
    ),
    (
        "format-compliance-without-a-format",
        {"task.type": "text", "eval.primary_metric": "format_compliance"},
        "eval.primary_metric: 'format_compliance' on a text task",
        "task.output_pattern",
    ),
    (
        "json-valid-without-json-grader",
        {"eval.primary_metric": "json_valid"},
        "eval.primary_metric: 'json_valid' needs the json grader",
        "eval.graders",
    ),
    (
        "rag-from-docs-without-docs",
        {"eval.rag.sources": ["docs"]},
        "eval.rag.sources: [docs]",
        "data.docs is not set",
    ),
    (
        "reference-unknown",
        {"gate.mode": "non_inferiority", "gate.reference": "gpt4"},
        "gate.reference: 'gpt4'",
        "eval.external",
    ),
]


@pytest.mark.parametrize(
    ("settings", "starts", "names"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN]
)
def test_a_broken_rule_is_one_line_naming_both_fields(tmp_path, settings, starts, names):
    path = _project(tmp_path, settings)
    with pytest.raises(UserError) as err:
        load_project(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: {starts}"), msg  # the file, then the field it is about
    assert names in msg, msg
    assert "Value error" not in msg  # pydantic's wrapper is not part of the line


# Settings beside each broken one that the code runs with: the rules refuse no more than that.
ACCEPTED = [
    {"eval.candidates": ["prompt", "finetuned"], "gate.baselines": ["prompt"]},
    # references the evaluator adds itself on a labels task (kNN beside rag over train examples,
    # the classical classifiers, a constrained rung) may be baselines without being listed
    {"gate.baselines": ["prompt", "knn", "tfidf", "probe", "prompt+constrained"]},
    {
        "eval.external": EXTERNAL,
        "eval.candidates": ["prompt", "external", "finetuned"],
        "gate.baselines": ["prompt", "gpt4"],
    },
    {
        "eval.candidates": ["prompt", "fewshot", "rag", "finetuned", "finetuned+fewshot"],
        "train.variants": ["none", "fewshot"],
    },
    {
        "eval.candidates": ["prompt", "fewshot", "rag", "finetuned+fewshot"],
        "train.context": "fewshot",
    },
    # finetuned+rag is the plain run with a RAG prompt: no variant needed
    {"eval.candidates": ["prompt", "fewshot", "rag", "finetuned", "finetuned+rag"]},
    {"eval.primary_metric": "judge", "eval.graders": ["exact", "judge"]},
    {"eval.primary_metric": "macro_f1"},
    {"task.type": "json", "eval.primary_metric": "json_valid", "eval.graders": ["exact"]},
    {
        "task.output_pattern": "^(?P<x>.+)$",
        "task.type": "text",
        "eval.primary_metric": "format_compliance",
    },
    {"eval.rag.sources": ["docs"], "data.docs": "docs"},
    # nothing retrieves with rag: documents-only sources are harmless
    {
        "eval.rag.sources": ["docs"],
        "eval.candidates": ["prompt", "fewshot", "finetuned"],
        "gate.baselines": ["prompt", "fewshot"],
    },
    # the reference is evaluated beside the listed candidates, so it need not be listed
    {"gate.mode": "non_inferiority", "gate.reference": "gpt4", "eval.external": EXTERNAL},
]


@pytest.mark.parametrize("settings", ACCEPTED)
def test_consistent_settings_load(tmp_path, settings):
    load_project(_project(tmp_path, settings))


def test_demo_projects_keep_every_rule():
    root = Path(__file__).resolve().parent.parent / "examples"
    for name in ("ticket-triage", "snips-slots"):
        load_project(root / name / "project.yaml")


def test_overrides_are_checked_with_the_file(tmp_path):
    path = _project(tmp_path, {"eval.candidates": ["prompt", "finetuned"]})
    with pytest.raises(UserError, match=r"gate\.baselines"):
        load_project(path)
    load_project(path, ["gate.baselines=[prompt]"])  # --set fixes what the file breaks
    with pytest.raises(UserError, match=r"eval\.primary_metric"):
        load_project(path, ["gate.baselines=[prompt]", "eval.primary_metric=judge"])


def test_a_recorded_run_config_is_not_held_to_the_rules(tmp_path):
    # `tunewise train --resume` validates the config a run recorded, without the load context: a
    # run recorded before a rule existed must stay resumable.
    raw = yaml.safe_load(_project(tmp_path, {"eval.candidates": ["prompt"]}).read_text())
    cfg = ProjectConfig.model_validate({**raw, "root": str(tmp_path)})
    assert cfg.gate.baselines == ["prompt", "fewshot", "rag"]


def test_accuracy_on_free_text_is_refused_at_load(tmp_path):
    import yaml

    from tunewise.config import load_project
    from tunewise.errors import UserError

    (tmp_path / "train.jsonl").write_text("", encoding="utf-8")
    path = tmp_path / "project.yaml"
    raw = {"name": "t", "data": {"train": "train.jsonl"}, "task": {"type": "text"},
           "eval": {"graders": ["exact"], "primary_metric": "accuracy"}}  # fmt: skip
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(UserError, match="'accuracy' means nothing on free text"):
        load_project(path)
    raw["eval"] = {"graders": ["chrf"], "primary_metric": "chrf"}
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert load_project(path).eval.primary_metric == "chrf"
