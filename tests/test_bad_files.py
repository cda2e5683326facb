"""Bad files end in one line naming the file, exit 2, never a traceback (#26 finding 12):
project.yaml that is not UTF-8 or nested past Python's stack, eval.json nested as deep, and
eval.json whose scores are numbers written as strings (which one stage used to read as floats
and the next crash on); and the staging folder a `data split` killed with -9 leaves behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from _evalfakes import make_run
from test_data_split import ticket_file
from tunewise.cli import app
from tunewise.data.split import split_file

DEEP = 100_000


def invoke(args: list[str]):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_line(r, path: Path) -> None:
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    assert "Traceback" not in r.output and not isinstance(r.exception, RecursionError)
    assert str(path) in " ".join(r.output.split()), r.output  # rich may wrap a long path


@pytest.mark.parametrize(
    "content",
    [
        b"name: caf\xe9\ndata: {train: train.jsonl}\n",  # Latin-1, not UTF-8
        b"\xff\xfen\x00a\x00m\x00e\x00",  # UTF-16 with its byte order mark
        ("name: x\ndata: " + "[" * DEEP + "]" * DEEP + "\n").encode(),
        ("name: x\ndata: " + "{a: " * DEEP + "1" + "}" * DEEP + "\n").encode(),
        ("name: x\nsplit: {seed: " + "9" * 5000 + "}\n").encode(),  # past int()'s digit limit
    ],
    ids=["latin-1", "utf-16", "deep-list", "deep-map", "5000-digits"],
)
def test_an_unreadable_project_yaml_is_one_line(tmp_path, content):
    path = tmp_path / "project.yaml"
    path.write_bytes(content)
    assert_one_line(invoke(["run", tmp_path, "--dry-run"]), path)


def test_a_deeply_nested_set_value_is_one_line(tmp_path):
    (tmp_path / "project.yaml").write_text("name: x\ndata: {train: train.jsonl}\n")
    r = invoke(["run", tmp_path, "--dry-run", "--set", "train.lr=" + "[" * DEEP])
    assert r.exit_code == 2 and "--set train.lr" in r.output, (r.output, r.exception)


def _eval_dir(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "eval"
    folder.mkdir()
    (folder / "eval.json").write_text(text)
    return folder


COMMANDS = [
    ["compare"],
    ["gate", "--candidate", "finetuned", "--baseline", "prompt"],
    ["report"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_eval_json_nested_deeply_is_one_line(tmp_path, command):
    folder = _eval_dir(tmp_path, "[" * DEEP + "]" * DEEP)
    r = invoke([command[0], folder, *command[1:]])
    assert_one_line(r, folder / "eval.json")
    assert "nested too deeply" in r.output


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_scores_written_as_strings_are_one_line_naming_the_field(tmp_path, command):
    raw = make_run({"finetuned": 0.8, "prompt": 0.6}, n=30).to_dict()
    for cand in raw["candidates"]:
        for item in cand["items"]:
            item["scores"] = {k: str(v) for k, v in item["scores"].items()}
    folder = _eval_dir(tmp_path, json.dumps(raw))
    r = invoke([command[0], folder, *command[1:]])
    assert_one_line(r, folder / "eval.json")
    assert "candidates[0].items[0].scores.accuracy" in r.output
    assert not (folder / "comparison.json").exists()


# --------------------------------------------------------------------------- kill -9 in a split

_KILLED_SPLIT = """
import os, signal, sys
import tunewise.data.split as split

def killed(*args, **kwargs):  # the files are written, the swap not done: kill -9 now
    os.kill(os.getpid(), signal.SIGKILL)

split.swap_in = killed
split.split_file(sys.argv[1], sys.argv[2], test=0.0)
"""


def test_a_split_killed_with_9_leaves_nothing_the_next_split_keeps(tmp_path):
    data, out = ticket_file(tmp_path, n=60, near_dups=0), tmp_path / "splits"
    killed = subprocess.run([sys.executable, "-c", _KILLED_SPLIT, str(data), str(out)], check=False)
    assert killed.returncode == -9
    left = list(tmp_path.glob(".splits.*.tmp"))
    assert left and any(p.is_dir() and any(p.iterdir()) for p in left)  # the staged split
    split_file(data, out, test=0.0)
    assert not list(tmp_path.glob(".splits.*.tmp")), list(tmp_path.iterdir())
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "test.jsonl",
        "train.jsonl",
        "val.jsonl",
    ]
