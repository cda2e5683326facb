import json
import re
from dataclasses import replace

import pytest
import yaml
from typer.testing import CliRunner

from tunewise.cli import app
from tunewise.config import load_project
from tunewise.ladder import estimate
from tunewise.ladder.estimate import Speed

# init calibrates the machine's speed (seconds of real model passes); these tests check what it
# does with a speed, so a fixed one stands in (tests/test_estimate.py measures a real one).
FAKE_SPEED = Speed(
    train_tps=200.0, prefill_tps=1000.0, decode_step_s=0.05, decode_batch=4, source="test speed"
)


@pytest.fixture(autouse=True)
def fixed_speed(monkeypatch):
    monkeypatch.setattr(estimate, "calibrate", lambda *a, **k: FAKE_SPEED)


def write(path, answers, system="Triage the ticket."):
    with open(path, "w") as fh:
        for i, a in enumerate(answers):
            msgs = [{"role": "system", "content": system}] if system else []
            msgs += [
                {"role": "user", "content": f"ticket number {i} about thing {i % 7}"},
                {"role": "assistant", "content": a},
            ]
            fh.write(json.dumps({"messages": msgs}) + "\n")


def test_init_infers_labels_task(tmp_path):
    cats, pris = ["billing", "bug", "shipping"], ["low", "high"]
    write(
        tmp_path / "t.jsonl",
        [f"Category: {cats[i % 3]}\nPriority: {pris[i % 2]}" for i in range(60)],
    )
    result = CliRunner().invoke(app, ["init", str(tmp_path / "t.jsonl")])
    assert result.exit_code == 0, result.output
    cfg = load_project(tmp_path / "project.yaml")
    assert cfg.task.type == "labels"
    assert cfg.task.labels == {"category": sorted(cats), "priority": sorted(pris)}
    assert cfg.eval.primary_metric == "accuracy"
    assert cfg.task.system_prompt == "Triage the ticket."
    assert cfg.data.train == (tmp_path / "t.jsonl")
    import re

    assert re.match(cfg.task.output_pattern, "Category: bug\nPriority: low").groupdict() == {
        "category": "bug",
        "priority": "low",
    }


def test_init_infers_json_task_with_schema(tmp_path):
    write(
        tmp_path / "j.jsonl",
        [json.dumps({"intent": ["a", "b"][i % 2], "n": i}) for i in range(40)],
        system=None,
    )
    CliRunner().invoke(app, ["init", str(tmp_path / "j.jsonl"), "--out", str(tmp_path / "proj")])
    cfg = load_project(tmp_path / "proj")
    assert cfg.task.type == "json"
    assert cfg.task.json_schema["properties"]["n"]["type"] == "integer"
    assert cfg.eval.graders == ["json", "exact"]
    # no system prompt in the data: a placeholder the user is told to improve
    assert cfg.task.system_prompt.startswith("You are a helpful assistant.")


def test_init_free_text_proposes_a_reference_metric_not_the_base_model_as_judge(tmp_path):
    write(
        tmp_path / "x.jsonl",
        [f"Sure, here is a long and unique answer number {i} with detail." for i in range(30)],
    )
    result = CliRunner().invoke(app, ["init", str(tmp_path / "x.jsonl")])
    raw = yaml.safe_load((tmp_path / "project.yaml").read_text())
    assert raw["task"]["type"] == "text" and raw["eval"]["primary_metric"] == "chrf"
    assert "judge" not in raw["eval"]["graders"]
    assert "one reference per input" in result.output


def test_init_bad_data_exits_2_and_writes_nothing(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"messages": []}\n')
    result = CliRunner().invoke(app, ["init", str(tmp_path / "bad.jsonl")])
    assert result.exit_code == 2
    assert "bad.jsonl:1: messages" in result.output
    assert not (tmp_path / "project.yaml").exists()


def test_init_refuses_to_overwrite(tmp_path):
    write(tmp_path / "t.jsonl", [f"Category: {'ab'[i % 2]}" for i in range(30)])
    assert CliRunner().invoke(app, ["init", str(tmp_path / "t.jsonl")]).exit_code == 0
    again = CliRunner().invoke(app, ["init", str(tmp_path / "t.jsonl")])
    assert again.exit_code == 2 and "already exists" in again.output
    assert CliRunner().invoke(app, ["init", str(tmp_path / "t.jsonl"), "--force"]).exit_code == 0


def test_init_too_few_examples(tmp_path):
    write(tmp_path / "t.jsonl", ["Category: a"] * 5)
    with pytest.raises(Exception, match="at least 20"):
        from tunewise.ladder.init import init_project

        init_project(tmp_path / "t.jsonl")


def test_init_multiline_prompt_reads_as_a_block_and_cost_is_estimated(tmp_path, real_model):
    # CLINC-style: a system prompt that lists the labels on its own line, as a user would write it.
    system = "Classify the request. Reply with one intent:\nbalance, transfer, freeze_account"
    write(
        tmp_path / "c.jsonl",
        [["balance", "transfer", "freeze_account"][i % 3] for i in range(30)],
        system=system,
    )
    from tunewise.ladder.init import init_project

    target, notes = init_project(tmp_path / "c.jsonl")
    text = target.read_text()
    assert "system_prompt: |-\n    Classify the request." in text
    assert load_project(target).task.system_prompt == system
    # The model is local (real_model), so init measures tokens: the system prompt's share is named.
    assert any("tokens per example" in n and "system prompt is" in n for n in notes), notes
    assert any(n.startswith("cost: training: ~") for n in notes), notes


def test_cost_estimate_counts_a_shared_prefix_once_per_batch(tmp_path, real_model):
    """The demo's shape: a long system prompt every example starts with runs once per batch of 8
    (train.shared_prefix: auto), so the epoch's computed tokens drop by that prefix 7 times in 8."""
    import re

    from tunewise.data.schema import load_examples
    from tunewise.ladder.estimate import shared_prefix_tokens
    from tunewise.runtime import models

    system = "Triage the support ticket. " + " ".join(f"Rule {i}: be precise." for i in range(20))
    write(tmp_path / "t.jsonl", [["billing", "bug"][i % 2] for i in range(80)], system=system)
    from tunewise.ladder.init import init_project

    _, notes = init_project(tmp_path / "t.jsonl")
    note = next(n for n in notes if "tokens per example" in n)
    assert "run once per batch of 4 (train.shared_prefix: auto)" in note, note
    computed, plain = (
        int(x) for x in re.search(r"computes (\d+)k tokens, not (\d+)k", note).groups()
    )
    tok = models.load_tokenizer(models.resolve(models.DEFAULT_MODEL, allow_download=False))
    prefix = shared_prefix_tokens(tok, load_examples(tmp_path / "t.jsonl"), system)
    assert prefix > len(tok(system)["input_ids"])  # the system turn and the user turn's opening
    n_train = round(80 * 0.6)  # 20% validation, 20% sealed test below 300 examples
    assert abs(plain - computed - prefix * (n_train - n_train // 4) / 1000) <= 1
    cost = next(n for n in notes if n.startswith("cost: training:"))
    assert f"{computed}k tokens per epoch" in cost


def test_cost_estimate_pays_the_prefix_per_row_when_sharing_would_not_pay(tmp_path, real_model):
    long_user = " ".join(f"word{i}" for i in range(400))
    with open(tmp_path / "t.jsonl", "w") as fh:
        for i in range(30):
            msgs = [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"{i} {long_user}"},
                {"role": "assistant", "content": ["yes", "no"][i % 2]},
            ]
            fh.write(json.dumps({"messages": msgs}) + "\n")
    from tunewise.ladder.init import init_project

    _, notes = init_project(tmp_path / "t.jsonl")
    note = next(n for n in notes if "tokens per example" in n)
    assert "is paid on every training example" in note and "once per batch" not in note


def clinc_like(path, n=1000, labels=20):
    """CLINC's shape: one intent name per answer, a system prompt listing them."""
    names = [f"intent_{j}" for j in range(labels)]
    write(path, [names[i % labels] for i in range(n)], system="Reply with one intent: " +
          ", ".join(names))  # fmt: skip


def test_init_writes_constrained_with_its_cost_and_prices_every_part(tmp_path, monkeypatch):
    """#17: eval.constrained was on but invisible, and the estimate covered training only."""
    clinc_like(tmp_path / "c.jsonl")
    from tunewise.ladder.init import init_project

    target, notes = init_project(tmp_path / "c.jsonl")
    text = target.read_text()
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("constrained:"))
    assert line.startswith("  constrained: true  # every allowed label scored"), line
    assert "on this machine; false: free generation only" in line
    assert load_project(target).eval.constrained is True
    costs = [n.removeprefix("cost: ").split(":")[0] for n in notes if n.startswith("cost: ")]
    assert costs[:5] == [
        "baselines",
        "constrained scoring",
        "training",
        "evaluate the fine-tune",
        "final test (--final, once)",
    ], notes
    assert any("speed on this machine (test speed): prompts 1000 tokens/s" in n for n in notes)
    # The figures follow the measured speed, not a constant: half the training speed, more
    # training time (and the baselines, which do not train, stay as they were).
    monkeypatch.setattr(estimate, "calibrate", lambda *a, **k: replace(FAKE_SPEED, train_tps=100.0))
    _, slower = init_project(tmp_path / "c.jsonl", force=True)
    fast_line, slow_line = (next(n for n in ns if n.startswith("cost: training:"))
                            for ns in (notes, slower))  # fmt: skip
    assert "at 200 tokens/s" in fast_line and "at 100 tokens/s" in slow_line
    assert _seconds(slow_line) > 1.5 * _seconds(fast_line)
    assert [n for n in slower if "baselines" in n] == [n for n in notes if "baselines" in n]


def _seconds(cost_note: str) -> float:
    """The ``~N s`` / ``~N min`` / ``~N.N h`` figure of a cost note, in seconds."""
    value, unit = re.search(r"~([\d.]+) (s|min|h)\b", cost_note).groups()
    return float(value) * {"s": 1, "min": 60, "h": 3600}[unit]


def test_init_text_task_writes_no_constrained_and_no_scoring_line(tmp_path):
    write(tmp_path / "x.jsonl", [f"A long, unique answer number {i} here." for i in range(30)])
    from tunewise.ladder.init import init_project

    target, notes = init_project(tmp_path / "x.jsonl")
    assert "constrained" not in target.read_text()
    assert not any(n.startswith("cost: constrained") for n in notes)
    assert any(n.startswith("cost: baselines") for n in notes)


def test_choose_batch_gives_300_steps_or_says_why_not():
    from tunewise.ladder.init import choose_batch

    batch, why = choose_batch(700, 2)  # the CLINC walkthrough's train split
    assert batch == 4 and "350 optimizer steps" in why
    batch, why = choose_batch(2400, 2)
    assert batch == 8 and "600 optimizer steps" in why
    batch, why = choose_batch(48, 2)
    assert batch == 4 and "only 24 optimizer steps, fewer than ~300" in why
    assert "train.epochs up to 3" in why


def test_init_batch_size_on_clinc_sized_data(tmp_path):
    """#17: init's batch of 8 gave 174 steps on CLINC's 20 intents; the walkthrough needed 350."""
    clinc_like(tmp_path / "c.jsonl")
    from tunewise.ladder.init import init_project

    target, notes = init_project(tmp_path / "c.jsonl")
    cfg = load_project(target)
    assert cfg.train.batch_size == 4 and cfg.train.epochs == 2
    assert (
        "batch size 4: 2 epoch(s) of 800 training examples give 400 optimizer steps"
        in notes[notes.index(next(n for n in notes if n.startswith("batch size")))]
    )


def test_init_converts_the_model_and_measures_instead_of_asking_for_a_rerun(
    tmp_path, monkeypatch, fake_conversion, capsys
):
    """#17: with the model not converted in this home, init said "token lengths not measured (…
    is not converted yet)"; now it converts it where every command will look, and measures."""
    write(tmp_path / "t.jsonl", [["balance", "transfer"][i % 2] for i in range(40)])
    from tunewise.ladder.init import init_project

    _, notes = init_project(tmp_path / "t.jsonl")
    assert not any("not converted" in n or "not measured" in n for n in notes), notes
    assert any("tokens per example" in n for n in notes), notes
    home = fake_conversion / "smollm2-135m-instruct"
    assert (home / "tunewise.json").is_file()
    assert any(f"the model is in {home}" in n for n in notes)
    err = capsys.readouterr().err
    assert f"converting smollm2-135m-instruct (once, about 10 s) into {home}" in err


def test_init_on_free_text_with_references_picks_a_reference_metric(tmp_path):
    import json

    from tunewise.config import load_project
    from tunewise.ladder.init import init_project

    rows = []
    for i in range(30):
        user = f"Venue{i} | food | Thai\nVenue{i} | area | riverside"
        answers = [f"Venue{i} serves Thai food by the river.", f"By the river, Venue{i} is Thai."]
        rows.append({"messages": [{"role": "user", "content": user},
                                  {"role": "assistant", "content": answers[0]}],
                     "references": answers[1:]})  # fmt: skip
    data = tmp_path / "d2t.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    path, notes = init_project(data)
    cfg = load_project(path)
    assert cfg.task.type == "text"
    assert cfg.eval.primary_metric == "chrf"
    assert {"chrf", "bleu", "rougeL"} <= set(cfg.eval.graders)
    assert "judge" not in cfg.eval.graders
    said = "\n".join(notes)
    assert "30 of 30 inputs have several references" in said
    assert "no LLM judge" in said
