"""The overlong policy may drop the odd long example, not most of the training set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunewise.config import load_project
from tunewise.errors import UserError
from tunewise.train.collate import OverlongReport
from tunewise.train.trainer import MAX_DROPPED_SHARE, _refuse_mostly_dropped


def config(tmp_path: Path, **train):
    (tmp_path / "d.jsonl").write_text("")
    (tmp_path / "project.yaml").write_text(
        json.dumps(
            {
                "name": "long",
                "task": {"type": "labels"},
                "data": {"train": "d.jsonl", "max_len": 384},
                "train": train,
            }
        )
    )
    return load_project(tmp_path / "project.yaml")


def report(total: int, dropped: int, longest: int = 573) -> OverlongReport:
    rows = [("train.jsonl", i + 1, longest - i) for i in range(dropped)]
    return OverlongReport(max_len=384, policy="drop", total=total, overlong=rows, dropped=dropped)


def test_dropping_most_examples_is_refused_in_one_line_naming_the_fix(tmp_path):
    cfg = config(tmp_path, context="fewshot")
    with pytest.raises(UserError) as err:
        _refuse_mostly_dropped(cfg, Path("train.jsonl"), report(562, 518))
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("train.jsonl: 518 of 562 training examples are longer than ")
    assert "data.max_len=384" in msg and "at least 573" in msg
    assert "train.overlong: truncate" in msg
    assert "train.context fewshot" in msg  # the context is why they grew


def test_a_few_long_examples_are_still_dropped_quietly(tmp_path):
    cfg = config(tmp_path)
    half = int(562 * MAX_DROPPED_SHARE)
    _refuse_mostly_dropped(cfg, Path("train.jsonl"), report(562, half))  # the share itself: kept
    _refuse_mostly_dropped(cfg, Path("train.jsonl"), report(562, 0))
    with pytest.raises(UserError) as err:
        _refuse_mostly_dropped(cfg, Path("train.jsonl"), report(562, half + 1))
    assert "train.context" not in str(err.value)  # no context: not named
