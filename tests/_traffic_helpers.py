"""Traffic logs and a split labels project for the from-traffic, teacher and labelling tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

import yaml

from tunewise.data.split import split_file

_WORDS_TEXT = (
    "account invoice refund login password parcel courier tracking screen crash upload export "
    "billing address card charge twice slow broken email reset locked order missing damaged late "
    "subscription cancel upgrade plan discount coupon mobile app desktop sync error timeout"
)
WORDS = _WORDS_TEXT.split()
CATEGORIES = ["billing", "shipping", "login"]
PATTERN = r"Category: (?P<category>\w+)"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def ticket(i: int, rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(14)) + f" ref {i}"


def labels_project(root: Path, n: int = 40, **task) -> Path:
    """A labels project split (sealed test) into ``root/.tunewise/splits``."""
    rng = random.Random(3)
    rows = [
        {
            "messages": [
                {"role": "user", "content": ticket(i, rng)},
                {"role": "assistant", "content": f"Category: {CATEGORIES[i % 3]}"},
            ]
        }
        for i in range(n)
    ]
    data = root / "all.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    split_file(data, root / ".tunewise" / "splits", val=0.2, test=0.2, project="tix")
    cfg = {
        "name": "tix",
        "data": {"train": "all.jsonl"},
        "task": {
            "type": "labels",
            "output_pattern": PATTERN,
            "labels": {"category": CATEGORIES},
            **task,
        },
    }
    (root / "project.yaml").write_text(yaml.safe_dump(cfg))
    return root / "project.yaml"


def record(rid: str, user: str, answer: str = "Category: billing", **extra) -> dict:
    return {
        "time": f"2026-12-01T10:00:{len(rid):02d}.000+00:00",
        "id": rid,
        "model": "tix@production",
        "resolved": {"key": "tix:1", "alias": "production"},
        "messages": [{"role": "user", "content": user}],
        "answer": answer,
        "finish_reason": "stop",
        "latency_ms": 12.0,
        "prompt_tokens": 20,
        "completion_tokens": 3,
        **extra,
        "status": 200,
    }


def write_log(folder: Path, records: list[dict], name: str = "traffic-20261201T100000Z-0.jsonl"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
