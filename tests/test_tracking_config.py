"""MLflow tracking settings: where records go, and what happens without mlflow installed.

These need no MLflow store (and run without mlflow installed); tests/test_tracking.py checks the
records themselves against a real server.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from tunewise import tracking
from tunewise.config import load_project
from tunewise.errors import UserError


def test_target_from_config_and_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(tracking.ENV_URI, raising=False)
    (tmp_path / "t.jsonl").write_text("")
    raw = {"name": "proj", "data": {"train": "t.jsonl"}}
    (tmp_path / "project.yaml").write_text(yaml.safe_dump(raw))
    assert tracking.target_of(load_project(tmp_path)) is None
    raw["tracking"] = {"mlflow": {"uri": "sqlite:///runs/mlflow.db"}}
    (tmp_path / "project.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_project(tmp_path)
    # A relative sqlite path is relative to project.yaml's folder, like every other path.
    assert tracking.target_of(cfg) == tracking.Target(
        f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}", "proj"
    )
    monkeypatch.setenv(tracking.ENV_URI, "http://127.0.0.1:1")
    assert tracking.target_of(cfg) == tracking.Target("http://127.0.0.1:1", "proj")
    dumped = {"name": "n", "tracking": {"mlflow": {"uri": None, "experiment": "e"}}}
    assert tracking.target_of(dumped) == tracking.Target("http://127.0.0.1:1", "e")


def test_without_mlflow_installed_the_error_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what `import mlflow` meets when absent
    with pytest.raises(UserError, match=r"pip install 'tunewise\[mlflow\]'"):
        tracking.Tracker(tracking.Target("sqlite:////tmp/x.db", "x"))


def test_no_tracking_configured_means_no_tracker(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(tracking.ENV_URI, raising=False)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # and mlflow is never imported
    (tmp_path / "t.jsonl").write_text("")
    (tmp_path / "project.yaml").write_text(
        yaml.safe_dump({"name": "p", "data": {"train": "t.jsonl"}})
    )
    assert tracking.training_tracker(load_project(tmp_path)) is None


def test_flatten_params() -> None:
    assert tracking.flatten({"train": {"lr": 1e-4, "target_modules": ["q", "v"]}, "x": None}) == {
        "train.lr": "0.0001",
        "train.target_modules": "['q', 'v']",
        "x": "None",
    }
    assert tracking.metric_key("fewshot+constrained/accuracy (macro)") == (
        "fewshot_constrained/accuracy _macro_"
    )
