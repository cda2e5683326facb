"""The ladder end to end on a tiny model: caching by content hash, partial reruns, Ctrl-C, curve,
final."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from tunewise.config import load_project
from tunewise.ladder.workflow import run_ladder

CATS = ["billing", "shipping", "login"]
WORDS = {
    "billing": ["invoice", "charged", "refund", "card", "payment"],
    "shipping": ["parcel", "delivery", "courier", "tracking", "late"],
    "login": ["password", "2fa", "locked", "sign in", "reset"],
}


def make_project(root, n=72):
    rng = random.Random(0)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "data.jsonl", "w") as fh:
        for i in range(n):
            cat = CATS[i % 3]
            words = rng.sample(WORDS[cat], 3)
            text = (
                f"ticket {i}: my {words[0]} and {words[1]} problem, also {words[2]} (ref "
                f"{rng.randint(1000, 9999)})"
            )
            msgs = [
                {"role": "system", "content": "Classify the ticket."},
                {"role": "user", "content": text},
                {"role": "assistant", "content": f"Category: {cat}"},
            ]
            fh.write(json.dumps({"messages": msgs}) + "\n")
    (root / "docs").mkdir(exist_ok=True)
    for cat in CATS:
        (root / "docs" / f"{cat}.md").write_text(
            f"# {cat}\nTickets about {', '.join(WORDS[cat])} are {cat}.\n"
        )
    return root


def write_cfg(root, model_dir, **train):
    raw = {
        "name": "tiny-ladder",
        "task": {
            "type": "labels",
            "system_prompt": "Classify the ticket.",
            "output_pattern": r"^Category: (?P<category>.+)$",
        },
        "data": {
            "train": "data.jsonl",
            "docs": "docs",
            "split": {"val": 0.2, "test": 0.2, "seed": 0},
            "max_len": 128,
        },
        "model": {"base": str(model_dir)},
        "train": {
            "method": "lora",
            "max_steps": 4,
            "batch_size": 8,
            "eval_every": 2,
            "save_every": 2,
            "overfit_sample": 2,
            **train,
        },
        "eval": {
            "candidates": ["prompt", "fewshot", "rag", "finetuned"],
            "batch_size": 16,
            "fewshot": {"k": 2},
            "rag": {"k": 2},
        },
    }
    (root / "project.yaml").write_text(yaml.safe_dump(raw))
    return root / "project.yaml"


@pytest.fixture
def project(tmp_path, tiny_model_dir):
    root = make_project(tmp_path / "proj")
    return write_cfg(root, tiny_model_dir)


def statuses(result):
    return {s.name: s.status for s in result.stages}


def test_ladder_runs_then_rerun_is_fully_cached(project):
    cfg = load_project(project)
    first = run_ladder(cfg, quiet=True)
    assert set(statuses(first).values()) == {"ran"}
    assert list(statuses(first)) == [
        "check",
        "split",
        "baselines",
        "train-lora",
        "evaluate",
        "compare-gate",
        "registry",
        "report",
    ]
    eval_dir = cfg.work_dir / "eval"
    for name in ("eval.json", "comparison.json", "verdict.json", "report.html", "report.md"):
        assert (eval_dir / name).is_file(), name
    verdict = json.loads((eval_dir / "verdict.json").read_text())
    assert verdict["candidate"] == "finetuned"
    assert {r["baseline"] for r in verdict["reasons"]} == {"prompt", "fewshot", "rag"}

    again = run_ladder(load_project(project), quiet=True)
    assert set(statuses(again).values()) == {"cached"}
    assert again.all_cached

    # The registry lives in $TUNEWISE_HOME, outside the project: an emptied one (the project on
    # another machine, a wiped home) is registered again, not reported cached over nothing.
    import shutil

    from tunewise import paths
    from tunewise.registry.store import Registry

    shutil.rmtree(paths.registry_dir())
    moved = statuses(run_ladder(load_project(project), quiet=True))
    assert moved["registry"] == "ran" and moved["train-lora"] == moved["evaluate"] == "cached"
    production = Registry().lookup(f"{cfg.name}@production")
    assert Path(production.source_run).is_relative_to(cfg.work_dir.resolve())
    assert statuses(run_ladder(load_project(project), quiet=True))["registry"] == "cached"

    # A training change reruns training and what depends on it, nothing upstream.
    changed = run_ladder(load_project(project, ["train.lr=1e-3"]), quiet=True)
    s = statuses(changed)
    assert s["check"] == s["split"] == s["baselines"] == "cached"
    assert s["train-lora"] == s["evaluate"] == s["compare-gate"] == s["report"] == "ran"


def test_ctrl_c_keeps_finished_stages(project, monkeypatch):
    import tunewise.train.trainer as trainer

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    real_train = trainer.train
    monkeypatch.setattr(trainer, "train", interrupted)
    from rich.console import Console

    con = Console(record=True, width=200)
    with pytest.raises(KeyboardInterrupt):
        run_ladder(load_project(project), console=con)
    said = con.export_text()
    assert "interrupted in [4/" in said and "(check, split, baselines)" in said
    assert "run the same command again to resume" in said
    state = json.loads((load_project(project).work_dir / "ladder.json").read_text())
    assert set(state) == {"check", "split", "baselines", "train-lora"}
    # the interrupted stage keeps only the attempt's time: nothing of it is reused
    assert "key" not in state["train-lora"]
    assert [a["how"] for a in state["train-lora"]["attempts"]] == ["interrupted"]
    # Not monkeypatch.undo(): that would also drop the per-test TUNEWISE_HOME, and the resumed
    # run would write its registry versions into the user's own home.
    monkeypatch.setattr(trainer, "train", real_train)
    resumed = run_ladder(load_project(project), quiet=True)
    s = statuses(resumed)
    assert s["check"] == s["split"] == s["baselines"] == "cached"
    assert s["train-lora"] == "ran"


def test_learning_curve_and_one_final_test_evaluation(project):
    from tunewise.data.seal import final_uses
    from tunewise.decide.advise import facts_from_dir

    raw = yaml.safe_load(project.read_text())
    raw["gate"] = {
        "baselines": ["prompt", "fewshot", "rag", "knn"]
    }  # the gate can hold it to kNN too
    project.write_text(yaml.safe_dump(raw))
    cfg = load_project(project)
    result = run_ladder(cfg, learning_curve=True, final=True, quiet=True)
    s = statuses(result)
    assert list(s) == [
        "check",
        "split",
        "baselines",
        "train-lora",
        "evaluate",
        "compare-gate",
        "learning-curve",
        "registry",
        "final-test",
        "report",
    ]
    work = cfg.work_dir
    n_train = len((work / "splits" / "train.jsonl").read_text().splitlines())
    curve = json.loads((work / "eval" / "learning_curve.json").read_text())
    assert [n for n, _ in curve["points"]] == [round(n_train / 4), round(n_train / 2), n_train]
    assert all(0.0 <= v <= 1.0 for _, v in curve["points"])
    assert curve["metric"] == "accuracy" and curve["method"] == "lora"
    # the 100% point is the ladder's own fine-tune, not a retrained one
    comp = json.loads((work / "eval" / "comparison.json").read_text())
    assert curve["points"][-1][1] == pytest.approx(
        comp["metrics"]["finetuned"]["accuracy"]["value"]
    )
    # subsets are nested, and each small run trained on exactly its subset
    quarter, half = (
        set((work / "learning-curve" / f"train-{n}.jsonl").read_text().splitlines())
        for n, _ in curve["points"][:2]
    )
    assert quarter < half
    for n, run_dir in curve["runs"].items():
        record = json.loads((Path(run_dir) / "run.json").read_text())
        assert record["examples"]["train"] == int(n)
    assert facts_from_dir(work / "eval").learning_curve == [tuple(p) for p in curve["points"]]
    verdict = json.loads((work / "eval" / "verdict.json").read_text())
    assert [r["baseline"] for r in verdict["reasons"]] == ["prompt", "fewshot", "rag", "knn"]
    assert not any("no paired test" in r["reason"] for r in verdict["reasons"])

    # the sealed test split was evaluated once, and a rerun does not spend it again
    test_eval = json.loads((work / "eval-test" / "eval.json").read_text())
    assert test_eval["split"] == "test"
    assert {c["name"] for c in test_eval["candidates"]} >= {
        "prompt",
        "fewshot",
        "rag",
        "knn",
        "finetuned",
    }
    assert len(final_uses(work / "splits" / "test.jsonl")) == 1
    again = run_ladder(load_project(project), learning_curve=True, final=True, quiet=True)
    assert set(statuses(again).values()) == {"cached"}
    assert len(final_uses(work / "splits" / "test.jsonl")) == 1


def test_final_scores_exactly_the_listed_candidates_and_shows_the_sealed_test(project):
    """--final: the sealed test scores what eval.candidates lists, as validation does (issue #16:
    a constrained variant not listed was scored on test); the summary prints the test table and
    verdict beside validation's; the report, rendered after the final stage, covers both."""
    from typer.testing import CliRunner

    from tunewise.cli import app

    raw = yaml.safe_load(project.read_text())
    raw["eval"]["candidates"] = ["prompt", "fewshot", "finetuned", "prompt+constrained"]
    raw["eval"]["classical"] = False  # keep the test small
    raw["gate"] = {"baselines": ["prompt", "fewshot"]}
    project.write_text(yaml.safe_dump(raw))
    r = CliRunner().invoke(app, ["run", str(project), "--final"])
    assert r.exit_code == 0, r.output
    work = load_project(project).work_dir
    # the report is rendered after the final stage
    assert r.output.index("] final-test in ") < r.output.index("] report in ")
    state = json.loads((work / "ladder.json").read_text())
    assert not any("attempts" in record for record in state.values())

    def names(d):
        return [c["name"] for c in json.loads((work / d / "eval.json").read_text())["candidates"]]

    assert names("eval-test") == names("eval")  # every split, the same candidates
    assert "prompt+constrained" in names("eval-test")
    assert not any(
        n in names("eval-test") for n in ("fewshot+constrained", "finetuned+constrained")
    )

    out = r.output
    assert "validation results" in out and "SEALED TEST results" in out
    assert "accuracy on validation" in out and "accuracy on test" in out  # side by side
    test_verdict = json.loads((work / "eval-test" / "verdict.json").read_text())
    shown = "SHIP finetuned" if test_verdict["ship"] else "DON'T SHIP finetuned"
    assert f"sealed test: {shown}" in out
    assert "used once" in out  # the one-use warning
    assert "✓ vs " not in out and "✗ vs " not in out  # "✓ vs prompt: beats prompt" said twice
    assert "tiny-ladder: val item" in out  # the example panel is titled by the project
    for report in ("report.html", "report.md"):
        text = (work / "eval" / report).read_text()
        assert "SEALED TEST SPLIT" in text and "used once" in text
        assert "prompt+constrained" in text

    # A rerun without --final keeps the sealed results (from the cache) and spends nothing.
    from tunewise.data.seal import final_uses

    again = run_ladder(load_project(project), quiet=True)
    assert statuses(again)["final-test"] == "cached" and again.test_dir == work / "eval-test"
    assert len(final_uses(work / "splits" / "test.jsonl")) == 1
    assert "SEALED TEST SPLIT" in (work / "eval" / "report.md").read_text()


def _easy_gate_project(project, tiny_model_dir):
    """The ladder's project with a gate the tiny model passes: not worse than the base prompt,
    or than production, by more than 0.5 (everything ties near zero)."""
    raw = yaml.safe_load(project.read_text())
    raw["eval"] = {"candidates": ["prompt", "finetuned"], "constrained": False, "max_new_tokens": 4}
    raw["gate"] = {
        "mode": "non_inferiority",
        "reference": "prompt",
        "margin": 0.5,
        "regression_margin": 0.5,
        "baselines": [],
        "guards": {"format_compliance": 0.99},
    }
    project.write_text(yaml.safe_dump(raw))
    return project


def test_rerun_after_the_challenger_shipped_is_a_no_op(project, tiny_model_dir, tmp_path):
    from _ship_helpers import make_run, write_verdict
    from tunewise.registry.store import Registry

    _easy_gate_project(project, tiny_model_dir)
    reg = Registry()
    v1_run = make_run(tiny_model_dir, tmp_path / "v1", seed=1, name="tiny-ladder")
    reg.add(v1_run, name="tiny-ladder", verdict=write_verdict(tmp_path / "v1.json", True))
    reg.promote("tiny-ladder", 1)

    first = run_ladder(load_project(project), quiet=True)
    assert set(statuses(first).values()) == {"ran"}
    assert first.verdict["ship"] and first.verdict["champion"]["version"] == "tiny-ladder:1"
    versions = reg.versions("tiny-ladder")
    assert [v.version for v in versions] == [1, 2] and "production" in versions[1].aliases

    # production is now the ladder's own run: the same command changes nothing
    again = run_ladder(load_project(project), quiet=True)
    assert set(statuses(again).values()) == {"cached"}, statuses(again)
    assert [v.version for v in reg.versions("tiny-ladder")] == [1, 2]

    # the registry stage run again (its record gone) finds the version it added, adds none
    (load_project(project).work_dir / "registry.json").unlink()
    third = run_ladder(load_project(project), quiet=True)
    assert statuses(third)["registry"] == "ran"
    assert [v.version for v in reg.versions("tiny-ladder")] == [1, 2]
    assert reg.lookup("tiny-ladder@production").version == 2
