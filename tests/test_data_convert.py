"""``tunewise data convert``: CSV, JSON pairs, Alpaca, ShareGPT -> chat JSONL; CLINC150 end to
end."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunewise.cli import app
from tunewise.data.checks import check_file
from tunewise.data.convert import convert
from tunewise.data.schema import load_examples
from tunewise.data.split import SPLITS, split_file
from tunewise.errors import DataError, UserError

runner = CliRunner()


def read(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines()]


def test_csv_with_templates_and_system_prompt(tmp_path: Path) -> None:
    src = tmp_path / "tickets.csv"
    src.write_text(
        'body,cat,channel\n"My card, it was charged twice",billing,email\nCannot log '
        "in,login,chat\n"
    )
    out = tmp_path / "out.jsonl"
    result = runner.invoke(
        app,
        [
            "data", "convert", str(src), str(out), "--from", "csv",
            "--text-col", "body", "--label-col", "cat",
            "--template", "Ticket via {channel}: {text}",
            "--answer-template", "Category: {label}",
            "--system", "Triage support tickets.",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = read(out)
    assert rows[0]["messages"] == [
        {"role": "system", "content": "Triage support tickets."},
        {"role": "user", "content": "Ticket via email: My card, it was charged twice"},
        {"role": "assistant", "content": "Category: billing"},
    ]
    assert rows[1]["messages"][2]["content"] == "Category: login"
    assert len(load_examples(out)) == 2


def test_csv_errors_name_the_line_and_write_nothing(tmp_path: Path) -> None:
    src = tmp_path / "bad.csv"
    src.write_text("text,label\nfine,ok\n,missing-text\nalso fine,ok\n")
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["data", "convert", str(src), str(out), "--from", "csv"])
    assert result.exit_code == 2
    assert f"{src}:3: messages[0].content: empty" in result.output
    assert not out.exists()

    with pytest.raises(DataError, match="no such column for --label-col"):
        convert(src, out, source="csv", label_col="intent")
    with pytest.raises(UserError, match=r"--template uses \{channel\}"):
        convert(src, out, source="csv", template="{channel}: {text}")
    assert not out.exists()


def write_pairs(tmp_path: Path) -> Path:
    data = {
        "train": [
            ["book a flight to oslo", "book_flight"],
            ["what's my balance", "balance"],
            ["hi", "greeting"],
        ],
        "val": [["fly me to rome", "book_flight"]],
        "oos_train": [["how tall is everest", "oos"]],
    }
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(data))
    return path


def test_json_pairs_keys_and_label_subset(tmp_path: Path) -> None:
    src = write_pairs(tmp_path)
    out = tmp_path / "out.jsonl"
    stats = convert(
        src, out, source="json-pairs", keys=["train", "val"], labels=["book_flight", "balance"]
    )
    assert stats["examples"] == 3
    assert stats["labels"] == {"balance": 1, "book_flight": 2}
    assert [r["messages"][-1]["content"] for r in read(out)] == [
        "book_flight",
        "balance",
        "book_flight",
    ]
    everything = convert(src, tmp_path / "all.jsonl", source="json-pairs")
    assert everything["examples"] == 5
    with pytest.raises(
        UserError, match=r"no list named 'tset' \(available: train, val, oos_train\)"
    ):
        convert(src, out, source="json-pairs", keys=["tset"])
    with pytest.raises(UserError, match="did you mean 'book_flight'"):
        convert(src, tmp_path / "typo.jsonl", source="json-pairs", labels=["book_flihgt"])
    assert not (tmp_path / "typo.jsonl").exists()


def test_per_label_cap_keeps_the_first_n_of_each_label(tmp_path: Path) -> None:
    src = write_pairs(tmp_path)
    out = tmp_path / "capped.jsonl"
    res = runner.invoke(
        app,
        [
            "data",
            "convert",
            str(src),
            str(out),
            "--from",
            "json-pairs",
            "--keys",
            "train,val",
            "--per-label",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    rows = read(out)
    answers = [r["messages"][-1]["content"] for r in rows]
    assert Counter(answers) == {a: 1 for a in answers}  # one of each label
    convert(src, tmp_path / "all.jsonl", source="json-pairs", keys=["train", "val"])
    everything = read(tmp_path / "all.jsonl")
    firsts = [
        r
        for i, r in enumerate(everything)
        if r["messages"][-1]["content"]
        not in {e["messages"][-1]["content"] for e in everything[:i]}
    ]
    assert rows == firsts  # the first of each label, in file order: deterministic
    res = runner.invoke(
        app,
        [
            "data",
            "convert",
            str(src),
            str(tmp_path / "x.jsonl"),
            "--from",
            "json-pairs",
            "--per-label",
            "0",
        ],
    )
    assert res.exit_code == 2 and "--per-label 0: must be at least 1" in res.output
    alpaca = tmp_path / "a.json"
    alpaca.write_text(json.dumps([{"instruction": "hi", "output": "hello"}]))
    res = runner.invoke(
        app,
        [
            "data",
            "convert",
            str(alpaca),
            str(tmp_path / "y.jsonl"),
            "--from",
            "alpaca",
            "--per-label",
            "2",
        ],
    )
    assert res.exit_code == 2 and "--per-label only applies to labelled sources" in res.output


def test_json_pairs_bad_item_is_named(tmp_path: Path) -> None:
    src = tmp_path / "bad.json"
    src.write_text(json.dumps({"train": [["ok", "a"], ["only text"]]}))
    with pytest.raises(DataError, match=r"train\[1\]: expected a \[text, label\] pair"):
        convert(src, tmp_path / "out.jsonl", source="json-pairs")
    assert not (tmp_path / "out.jsonl").exists()


def test_alpaca_json_and_jsonl(tmp_path: Path) -> None:
    recs = [
        {"instruction": "Summarise.", "input": "A long text.", "output": "Short."},
        {"instruction": "Say hi.", "input": "", "output": "Hi!"},
    ]
    as_json = tmp_path / "a.json"
    as_json.write_text(json.dumps(recs))
    as_jsonl = tmp_path / "a.jsonl"
    as_jsonl.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    for src in (as_json, as_jsonl):
        out = tmp_path / f"{src.stem}-{src.suffix[1:]}.out.jsonl"
        convert(src, out, source="alpaca", system="Be brief.")
        rows = read(out)
        assert rows[0]["messages"][1] == {"role": "user", "content": "Summarise.\n\nA long text."}
        assert rows[1]["messages"] == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hi."},
            {"role": "assistant", "content": "Hi!"},
        ]


def test_sharegpt_roles_and_validation(tmp_path: Path) -> None:
    recs = [
        {
            "conversations": [
                {"from": "system", "value": "Be nice."},
                {"from": "human", "value": "Hi"},
                {"from": "gpt", "value": "Hello"},
                {"from": "human", "value": "Bye"},
                {"from": "gpt", "value": "Bye!"},
            ]
        },
        {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},
    ]
    src = tmp_path / "sg.json"
    src.write_text(json.dumps(recs))
    out = tmp_path / "out.jsonl"
    convert(src, out, source="sharegpt")
    rows = read(out)
    assert [m["role"] for m in rows[0]["messages"]] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    assert rows[1]["messages"][1] == {"role": "assistant", "content": "A"}

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([recs[1], {"conversations": [{"from": "human", "value": "Q"}]}]))
    with pytest.raises(DataError, match=r"\[1\]\.messages: no assistant turn"):
        convert(bad, tmp_path / "bad.jsonl", source="sharegpt")
    weird = tmp_path / "weird.json"
    weird.write_text(json.dumps([{"conversations": [{"from": "alien", "value": "Q"}]}]))
    with pytest.raises(DataError, match=r"conversations\[0\]\.from: unknown speaker 'alien'"):
        convert(weird, tmp_path / "weird.jsonl", source="sharegpt")
    assert not (tmp_path / "bad.jsonl").exists() and not (tmp_path / "weird.jsonl").exists()


def test_clinc150_convert_check_split(clinc_path: Path, tmp_path: Path) -> None:
    """The real CLINC150 file: 150 intents, converted, checked and split without leakage."""
    out = tmp_path / "clinc.jsonl"
    result = runner.invoke(
        app,
        ["data", "convert", str(clinc_path), str(out), "--from", "json-pairs",
         "--keys", "train,val,test", "--system", "Classify the banking/travel/utility intent."],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "22500 example(s), 150 label(s)" in result.output

    report = check_file(out)
    assert report.errors == []
    assert report.format is not None and report.format.kind == "label"
    assert len(report.stats["labels"]["label"]) == 150
    assert report.stats["tokens"]["max"] < 512
    kinds = {w.kind for w in report.warnings}
    assert "near_duplicate" in kinds  # CLINC has templated paraphrases

    manifest = split_file(out, tmp_path / "splits", seed=0)
    assert manifest["stratified"] and manifest["near_duplicate_clusters"] > 100
    counts = {s: manifest["splits"][s]["labels"]["label"] for s in SPLITS}
    for label in counts["train"]:
        n = sum(counts[s].get(label, 0) for s in SPLITS)
        assert abs(counts["test"].get(label, 0) - 0.1 * n) <= 1
        assert abs(counts["val"].get(label, 0) - 0.1 * n) <= 1
    # No user text appears in two splits.
    owner: dict[str, str] = {}
    for s in SPLITS:
        for row in read(tmp_path / "splits" / f"{s}.jsonl"):
            text = row["messages"][1]["content"].lower().strip()
            assert owner.setdefault(text, s) == s
    assert Counter(owner.values())["test"] > 2000


def test_per_label_names_labels_short_of_the_cap_and_prints_the_counts(tmp_path: Path) -> None:
    """CLINC with --per-label 50 wrote 991 rows, not 1000, without saying which label was thin."""
    src = tmp_path / "pairs.json"
    pairs = [[f"a {i}", "alpha"] for i in range(3)] + [[f"b {i}", "beta"] for i in range(1)]
    pairs += [[f"c {i}", "gamma"] for i in range(5)]
    src.write_text(json.dumps(pairs))
    out = tmp_path / "out.jsonl"
    result = convert(src, out, source="json-pairs", per_label=3)
    assert result["examples"] == 7
    assert result["short_labels"] == {"beta": 1}
    res = runner.invoke(
        app, ["data", "convert", str(src), str(out), "--from", "json-pairs", "--per-label", "3"]
    )
    assert res.exit_code == 0, res.output
    assert "1 label(s) have fewer than 3 rows: beta (1)" in res.output
    assert "examples per label" in res.output
    cells = [ln.split("│")[1:3] for ln in res.output.splitlines() if ln.count("│") == 3]
    rows = {label.strip(): n.strip() for label, n in cells}
    assert rows == {"alpha": "3", "beta": "1 (< 3)", "gamma": "3"}


def test_labels_prints_the_per_label_table_and_a_plain_run_does_not(tmp_path: Path) -> None:
    src = write_pairs(tmp_path)
    out = tmp_path / "out.jsonl"
    args = ["data", "convert", str(src), str(out), "--from", "json-pairs"]
    res = runner.invoke(app, [*args, "--labels", "book_flight,balance"])
    assert res.exit_code == 0, res.output
    assert "examples per label" in res.output
    assert any("book_flight" in ln and "2" in ln for ln in res.output.splitlines())
    assert "fewer than" not in res.output
    plain = runner.invoke(app, args)
    assert plain.exit_code == 0 and "examples per label" not in plain.output
