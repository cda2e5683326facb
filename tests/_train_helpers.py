"""A tiny labelled task and project files for the training tests."""

from __future__ import annotations

import contextlib
import json
import os
import random
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
CATEGORIES = ["billing", "shipping", "account"]


def example(i: int, rng: random.Random) -> dict:
    cat = CATEGORIES[i % len(CATEGORIES)]
    filler = " ".join(
        rng.choice(["please", "help", "now", "today", "thanks"]) for _ in range(rng.randint(1, 12))
    )
    return {
        "messages": [
            {"role": "system", "content": "Classify the ticket."},
            {"role": "user", "content": f"ticket {i}: {cat} problem {filler}"},
            {"role": "assistant", "content": f"Category: {cat}"},
        ]
    }


def make_project(
    root: Path,
    model_dir: Path | str,
    *,
    n_train: int = 40,
    n_val: int = 8,
    system_prompt: str | None = None,
    **train: object,
) -> Path:
    """project.yaml plus splits in ``root/.tunewise/splits`` (where the ladder puts them).

    ``system_prompt`` sets task.system_prompt (replacing the data's short one in every example).
    """
    rng = random.Random(0)
    splits = root / ".tunewise" / "splits"
    splits.mkdir(parents=True, exist_ok=True)
    for name, n, offset in (("train", n_train, 0), ("val", n_val, 1000)):
        with open(splits / f"{name}.jsonl", "w") as fh:
            for i in range(n):
                fh.write(json.dumps(example(offset + i, rng)) + "\n")
    (root / "all.jsonl").write_text((splits / "train.jsonl").read_text())
    cfg = {
        "name": "tiny",
        "data": {"train": "all.jsonl", "max_len": 128},
        "model": {"base": str(model_dir)},
        "train": {
            "batch_size": 4,
            "max_steps": 8,
            "eval_every": 4,
            "save_every": 4,
            "overfit_sample": 2,
            **train,
        },
    }
    if system_prompt is not None:
        cfg["task"] = {"system_prompt": system_prompt}
    path = root / "project.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file, skipping a last line cut short by a kill."""
    rows = []
    for line in Path(path).read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            rows.append(json.loads(line))
    return rows


def losses_by_step(logs: list[dict]) -> dict[int, float]:
    """Training loss per logged step; a step logged twice (before a kill and after resume) keeps
    the last."""
    return {r["step"]: r["loss"] for r in logs if "loss" in r}


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


PYTHON = sys.executable
