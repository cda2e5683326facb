"""Your own val/test files: used as given, leakage and label gaps counted, the test file sealed."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tunewise.cli import app
from tunewise.config import load_project
from tunewise.data import seal
from tunewise.data.own_splits import split_project, split_with_files
from tunewise.errors import DataError, SealedSplitError, UserError

runner = CliRunner()
_WORDS_TEXT = (
    "account invoice refund login password parcel courier tracking screen crash upload export "
    "billing address card charge twice slow broken email reset locked order missing damaged late "
    "subscription cancel upgrade plan discount coupon mobile app desktop sync error timeout"
)
WORDS = _WORDS_TEXT.split()
LABELS = ["billing", "shipping", "login", "bug"]


def _text(i: int) -> str:
    # 12 words drawn with a seed per text: texts share few word pairs, so none are near-duplicates.
    return " ".join(random.Random(i).sample(WORDS, 12)) + f" ticket {i}"


def _row(text: str, label: str) -> str:
    msgs = [
        {"role": "system", "content": "Triage the ticket."},
        {"role": "user", "content": text},
        {"role": "assistant", "content": f"Category: {label}"},
    ]
    return json.dumps({"messages": msgs}) + "\n"


def _write(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("".join(_row(t, lab) for t, lab in rows))
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """train (80, 4 labels), val (20) and test (24) with planted leaks and label gaps.

    val: line 1 repeats train line 1 exactly, line 2 is train line 2 with one word changed.
    test: lines 1-2 repeat train inputs exactly, line 3 is a near-duplicate of train line 3,
    line 4 repeats val line 5 exactly; lines 21-24 carry the label 'refund' (not in train), and
    test never shows 'bug'.
    """
    train = [(_text(i), LABELS[i % 4]) for i in range(80)]
    val = [(_text(100 + i), LABELS[i % 4]) for i in range(20)]
    val[0] = train[0]
    val[1] = (train[1][0].replace("ticket", "case"), train[1][1])
    test = [(_text(200 + i), LABELS[i % 3]) for i in range(20)]
    test += [(_text(300 + i), "refund") for i in range(4)]
    test[0], test[1] = train[8], train[9]
    test[2] = (train[12][0] + " please", train[12][1])
    test[3] = val[4]
    return {
        "train": _write(tmp_path / "train.jsonl", train),
        "val": _write(tmp_path / "val.jsonl", val),
        "test": _write(tmp_path / "test.jsonl", test),
    }


def _leak(manifest: dict, later: str, earlier: str) -> dict:
    found = [
        w
        for w in manifest["warnings"]
        if w["kind"] == "leakage" and w["details"]["later"] == later
        if w["details"]["earlier"] == earlier
    ]
    assert len(found) == 1, manifest["warnings"]
    return found[0]


def test_given_files_are_used_as_given_checked_and_sealed(files, tmp_path: Path) -> None:
    out = tmp_path / "splits"
    m = split_with_files(
        files["train"], out, val_file=files["val"], test_file=files["test"], project="p"
    )
    for s in ("train", "val", "test"):  # byte for byte: no re-split, no rewrite
        assert (out / f"{s}.jsonl").read_bytes() == files[s].read_bytes()
        assert m["sources"][s]["sha256"] == m["splits"][s]["sha256"]
    assert m["given"] == ["val", "test"]
    assert m["counts"] == {"train": 80, "val": 20, "test": 24}
    assert m["leakage"] == {
        "val_vs_train": {"exact": 1, "near": 1},
        "test_vs_train": {"exact": 2, "near": 1},
        "test_vs_val": {"exact": 1, "near": 0},
    }
    leak = _leak(m, "test", "train")
    assert leak["lines"] == [1, 2, 3]
    assert leak["details"]["exact_lines"] == [[1, 9], [2, 10]]
    assert leak["details"]["near_lines"] == [[3, 13]]
    assert _leak(m, "val", "train")["details"]["near_lines"] == [[2, 2]]
    unseen = [w for w in m["warnings"] if w["kind"] == "unseen_label"]
    assert [w["details"]["split"] for w in unseen] == ["test"]
    assert unseen[0]["details"]["values"] == {"refund": 4}
    assert unseen[0]["lines"] == [21, 22, 23, 24]
    absent = [w for w in m["warnings"] if w["kind"] == "absent_label"]
    assert [(w["details"]["split"], w["details"]["values"]) for w in absent] == [("test", ["bug"])]
    # The test content is sealed: the copy and the user's own file alike.
    assert m["sealed_test"] == seal.content_hash(files["test"])[0]
    assert seal.is_sealed(files["test"]) and not seal.is_sealed(files["val"])
    with pytest.raises(SealedSplitError):
        seal.guard(files["test"], final=False, purpose="tuning")


def test_clean_files_give_no_leakage_or_label_warning(tmp_path: Path) -> None:
    train = _write(tmp_path / "a.jsonl", [(_text(i), LABELS[i % 4]) for i in range(40)])
    val = _write(tmp_path / "b.jsonl", [(_text(100 + i), LABELS[i % 4]) for i in range(8)])
    test = _write(tmp_path / "c.jsonl", [(_text(200 + i), LABELS[i % 4]) for i in range(8)])
    m = split_with_files(train, tmp_path / "out", val_file=val, test_file=test)
    assert m["warnings"] == [] and m["leakage"] == {}


def test_only_a_test_file_carves_val_from_train(files, tmp_path: Path) -> None:
    out = tmp_path / "splits"
    m = split_with_files(files["train"], out, test_file=files["test"], val=0.25, seed=3)
    assert m["given"] == ["test"]
    assert m["counts"] == {"train": 60, "val": 20, "test": 24}
    assert m["stratified"] and m["params"]["val"] == 0.25 and m["params"]["test"] == 0.0
    # Stratified: 5 of each label's 20 in val.
    assert m["splits"]["val"]["labels"]["category"] == {lab: 5 for lab in LABELS}
    assert (out / "test.jsonl").read_bytes() == files["test"].read_bytes()
    rows = {s: (out / f"{s}.jsonl").read_text().splitlines() for s in ("train", "val")}
    assert not set(rows["train"]) & set(rows["val"])
    assert seal.is_sealed(files["test"])


def test_only_a_val_file_with_no_test_fraction_seals_nothing(files, tmp_path: Path) -> None:
    m = split_with_files(files["train"], tmp_path / "o", val_file=files["val"], test=0.0)
    assert m["counts"] == {"train": 80, "val": 20, "test": 0}
    assert m["sealed_test"] is None and seal.seals() == []


def test_refusals(files, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(UserError, match="same content as the val file"):
        split_with_files(files["train"], out, val_file=files["val"], test_file=files["val"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(files["val"].read_text() + '{"messages": []}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:21"):
        split_with_files(files["train"], out, val_file=bad, test_file=files["test"])
    seal.seal(files["test"], "p")
    with pytest.raises(UserError, match="is a sealed test split"):
        split_with_files(files["train"], out, val_file=files["test"])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(UserError, match="holds no examples"):
        split_with_files(files["train"], out, test_file=empty)
    assert not out.exists()  # nothing written by any refusal


def test_project_yaml_val_and_test(files, tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    raw = {"name": "own", "data": {"train": "../train.jsonl", "val": "../val.jsonl"}}
    raw["data"]["test"] = str(files["test"])  # absolute paths are kept as they are
    (proj / "project.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_project(proj)
    assert cfg.data.val == proj / "../val.jsonl" and cfg.data.test == files["test"]
    m = split_project(cfg, cfg.work_dir / "splits")
    assert m["given"] == ["val", "test"]
    assert (cfg.work_dir / "splits" / "val.jsonl").read_bytes() == files["val"].read_bytes()
    # Without own files, the same call re-splits train with data.split's fractions.
    cfg2 = load_project(proj, overrides=["data.val=null", "data.test=null"])
    m2 = split_project(cfg2, tmp_path / "resplit")
    assert "given" not in m2 and m2["counts"]["val"] == 8


def test_cli_split_with_files(files, tmp_path: Path) -> None:
    out = tmp_path / "cli-splits"
    args = ["data", "split", str(files["train"]), "--out", str(out)]
    res = runner.invoke(
        app, [*args, "--val-file", str(files["val"]), "--test-file", str(files["test"])]
    )
    assert res.exit_code == 0, res.output
    assert "test vs train: 3 of 24 test example(s)" in res.output
    assert "unseen_label" in res.output and "test.jsonl is sealed" in res.output
    res = runner.invoke(app, [*args, "--val", "0.2", "--val-file", str(files["val"])])
    assert res.exit_code == 2 and "give a fraction or a file, not both" in res.output


CLINC_LABELS = (
    "balance,bill_balance,bill_due,pay_bill,min_payment,credit_limit,transfer,freeze_account"
)


def test_clinc150_own_splits(clinc_path: Path, tmp_path: Path) -> None:
    """The README example: CLINC150's own train/val/test lists, converted and used as given."""
    tw = [sys.executable, "-m", "tunewise"]
    for key in ("train", "val", "test"):
        subprocess.run(
            [
                *tw,
                "data",
                "convert",
                str(clinc_path),
                str(tmp_path / f"{key}.jsonl"),
                "--from",
                "json-pairs",
                "--keys",
                key,
                "--labels",
                CLINC_LABELS,
            ],
            check=True,
            capture_output=True,
        )
    out = tmp_path / "splits"
    done = subprocess.run(
        [
            *tw,
            "data",
            "split",
            str(tmp_path / "train.jsonl"),
            "--out",
            str(out),
            "--val-file",
            str(tmp_path / "val.jsonl"),
            "--test-file",
            str(tmp_path / "test.jsonl"),
            "--project",
            "clinc",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    m = json.loads((out / "manifest.json").read_text())
    # CLINC150's published sizes per intent: 100 train, 20 val, 30 test.
    assert m["counts"] == {"train": 800, "val": 160, "test": 240}
    assert not [w for w in m["warnings"] if w["kind"] in ("unseen_label", "absent_label")]
    # Exact leakage as counted independently: identical user turns.
    users = {
        s: [
            json.loads(ln)["messages"][-2]["content"]
            for ln in (out / f"{s}.jsonl").read_text().splitlines()
        ]
        for s in ("train", "test")
    }
    exact = sum(1 for t in users["test"] if t.strip() in {u.strip() for u in users["train"]})
    assert m["leakage"].get("test_vs_train", {"exact": 0})["exact"] == exact
    assert m["sealed_test"] == seal.content_hash(tmp_path / "test.jsonl")[0]
