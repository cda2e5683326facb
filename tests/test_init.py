import json

import pytest
import yaml
from typer.testing import CliRunner

from tunewise.cli import app
from tunewise.config import load_project


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


def test_init_free_text_proposes_judge(tmp_path):
    write(
        tmp_path / "x.jsonl",
        [f"Sure, here is a long and unique answer number {i} with detail." for i in range(30)],
    )
    CliRunner().invoke(app, ["init", str(tmp_path / "x.jsonl")])
    raw = yaml.safe_load((tmp_path / "project.yaml").read_text())
    assert raw["task"]["type"] == "text" and raw["eval"]["primary_metric"] == "judge"


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
        from tunewise.init import init_project

        init_project(tmp_path / "t.jsonl")


def test_init_multiline_prompt_reads_as_a_block_and_cost_is_estimated(tmp_path, real_model):
    # CLINC-style: a system prompt that lists the labels on its own line, as a user would write it.
    system = "Classify the request. Reply with one intent:\nbalance, transfer, freeze_account"
    write(
        tmp_path / "c.jsonl",
        [["balance", "transfer", "freeze_account"][i % 3] for i in range(30)],
        system=system,
    )
    from tunewise.init import init_project

    target, notes = init_project(tmp_path / "c.jsonl")
    text = target.read_text()
    assert "system_prompt: |-\n    Classify the request." in text
    assert load_project(target).task.system_prompt == system
    # The model is local (real_model), so init measures tokens: the system prompt's share is named.
    assert any("tokens per example" in n and "system prompt is" in n for n in notes), notes
    assert any(n.startswith("training cost:") and "min of LoRA" in n for n in notes), notes


def test_cost_estimate_counts_a_shared_prefix_once_per_batch(tmp_path, real_model):
    """The demo's shape: a long system prompt every example starts with runs once per batch of 8
    (train.shared_prefix: auto), so the epoch's computed tokens drop by that prefix 7 times in 8."""
    import re

    from tunewise import models
    from tunewise.data.schema import load_examples
    from tunewise.init import _shared_prefix_tokens

    system = "Triage the support ticket. " + " ".join(f"Rule {i}: be precise." for i in range(20))
    write(tmp_path / "t.jsonl", [["billing", "bug"][i % 2] for i in range(80)], system=system)
    from tunewise.init import init_project

    _, notes = init_project(tmp_path / "t.jsonl")
    note = next(n for n in notes if "tokens per example" in n)
    assert "run once per batch of 8 (train.shared_prefix: auto)" in note, note
    computed, plain = (
        int(x) for x in re.search(r"computes (\d+)k tokens, not (\d+)k", note).groups()
    )
    tok = models.load_tokenizer(models.resolve(models.DEFAULT_MODEL, allow_download=False))
    prefix = _shared_prefix_tokens(tok, load_examples(tmp_path / "t.jsonl"), system)
    assert prefix > len(tok(system)["input_ids"])  # the system turn and the user turn's opening
    n_train = round(80 * 0.6)  # 20% validation, 20% sealed test below 300 examples
    assert abs(plain - computed - prefix * (n_train - n_train // 8) / 1000) <= 1
    cost = next(n for n in notes if n.startswith("training cost:"))
    assert f"{computed}k tokens computed per epoch" in cost


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
    from tunewise.init import init_project

    _, notes = init_project(tmp_path / "t.jsonl")
    note = next(n for n in notes if "tokens per example" in n)
    assert "is paid on every training example" in note and "once per batch" not in note
