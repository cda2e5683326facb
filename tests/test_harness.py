"""The evaluation harness: candidates on the same items, sealed test split, judge, CLI.

Most tests drive a fake engine with canned answers (model quality is not the point); one test runs
the real Engine on the tiny random model to check the wiring end to end, including the cache.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tunewise.config import load_project
from tunewise.errors import SealedSplitError, UserError
from tunewise.eval.harness import evaluate, plan_candidates
from tunewise.eval.results import EvalRun

CATS = {
    "billing": [
        "charged twice",
        "refund please",
        "invoice wrong",
        "card declined",
        "price too high",
    ],
    "bug": ["app crashes", "error 500", "page freezes", "button broken", "login fails"],
    "feature": ["add dark mode", "export to pdf", "support sso", "more themes", "api access"],
}
PRIO = {"billing": "high", "bug": "medium", "feature": "low"}
PATTERN = r"^Category: (?P<category>\w+)\nPriority: (?P<priority>\w+)$"


def answer(cat: str) -> str:
    return f"Category: {cat}\nPriority: {PRIO[cat]}"


def write_project(root: Path, n_per: int = 5, **eval_cfg) -> Path:
    rows = []
    rng = random.Random(0)
    for cat, texts in CATS.items():
        for t in texts[:n_per]:
            for variant in ("", " today", " again", " asap"):
                rows.append(
                    {
                        "messages": [
                            {"role": "user", "content": f"{t}{variant}"},
                            {"role": "assistant", "content": answer(cat)},
                        ]
                    }
                )
    rng.shuffle(rows)
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    docs = root / "docs"
    docs.mkdir(exist_ok=True)
    (docs / "policy.md").write_text("Billing problems are always high priority.")
    cfg = {
        "name": "tickets",
        "data": {"train": "train.jsonl", "docs": "docs", "split": {"val": 0.2, "test": 0.2}},
        "task": {
            "type": "labels",
            "output_pattern": PATTERN,
            "system_prompt": (
                "Triage the ticket. Categories: billing, bug, feature. Priority: low, medium, high."
            ),
        },
        "eval": {"candidates": ["prompt", "fewshot", "rag"], "fewshot": {"k": 2}, **eval_cfg},
    }
    (root / "project.yaml").write_text(yaml.safe_dump(cfg))
    return root / "project.yaml"


@dataclass
class _Res:
    text: str
    prompt_tokens: int = 1
    completion_tokens: int = 1
    finish_reason: str = "stop"


@dataclass
class FakeEngine:
    """Answers from keywords in the last user turn; 'sloppy' answers break the format."""

    sloppy: bool = False
    calls: list = field(default_factory=list)
    loaded: dict = field(default_factory=dict)

    def _cat(self, messages) -> str:
        text = messages[-1]["content"]
        return next((c for c, ts in CATS.items() if any(t in text for t in ts)), "bug")

    def generate(self, requests, *, progress=False):
        self.calls.append(requests)
        out = []
        for r in requests:
            a = answer(self._cat(r.messages))
            if r.adapter is None and self.sloppy:
                a += "\nHope this helps!"
            out.append(_Res(a))
        return out

    def score_continuations(self, messages, continuations, adapter=None, end_of_turn=True):
        text = messages[-1]["content"]
        cat = next(
            (c for c, ts in CATS.items() if any(t in text for t in ts)), None
        )  # None for "N/A"
        return [float(cat is not None and c == answer(cat)) for c in continuations]

    def max_new_tokens_for(self, answers):
        return 12

    def adapters(self):
        return list(self.loaded)

    def load_adapter(self, name, path):
        self.loaded[name] = path


def test_plan_candidates(tmp_path: Path) -> None:
    cfg = load_project(write_project(tmp_path))
    runs = {"finetuned": tmp_path / "run"}
    assert plan_candidates(cfg, None, {}) == [
        "prompt",
        "fewshot",
        "rag",
        "knn",
        "tfidf",
        "probe",
        "prompt+constrained",
        "fewshot+constrained",
        "rag+constrained",
    ]
    assert plan_candidates(cfg, ["prompt", "finetuned+rag", "prompt+constrained"], runs) == [
        "prompt",
        "tfidf",
        "probe",
        "finetuned+rag",
        "finetuned",
        "prompt+constrained",
    ]
    two = {"finetuned-lora": tmp_path / "a", "finetuned-full": tmp_path / "b"}
    assert plan_candidates(
        cfg, ["prompt", "finetuned", "finetuned+constrained", "fewshot+constrained"], two
    ) == [
        "prompt",
        "tfidf",
        "probe",
        "finetuned-lora",
        "finetuned-full",
        "finetuned-lora+constrained",
        "finetuned-full+constrained",
        "fewshot+constrained",
    ]
    with pytest.raises(UserError, match="unknown candidate 'rgt'"):
        plan_candidates(cfg, ["rgt"], {})
    with pytest.raises(UserError, match="needs a local model"):
        plan_candidates(cfg, ["knn+constrained"], {})


def test_every_candidate_on_the_same_items(tmp_path: Path) -> None:
    cfg = load_project(write_project(tmp_path))
    eng = FakeEngine(sloppy=True)
    run = evaluate(cfg, engine=eng, progress=False)
    names = [c.name for c in run.candidates]
    assert names == [
        "prompt",
        "fewshot",
        "rag",
        "knn",
        "tfidf",
        "probe",
        "prompt+constrained",
        "fewshot+constrained",
        "rag+constrained",
    ]
    assert len(run.item_ids) == len(set(run.item_ids)) > 5
    for c in run.candidates:
        assert [i.item_id for i in c.items] == run.item_ids
    prompt = run.candidate("prompt")
    # Sloppy free generation: right labels, broken format; constrained mode is always well formed.
    assert all(
        i.scores["accuracy"] == 1.0 and i.scores["format_compliance"] == 0.0 for i in prompt.items
    )
    cons = run.candidate("prompt+constrained")
    assert cons.kind == "constrained" and cons.meta["mode"] == "joint"
    assert all(
        i.scores["format_compliance"] == 1.0 and i.scores["accuracy"] == 1.0 for i in cons.items
    )
    assert prompt.items[0].gold is not None and "accuracy_priority" in prompt.items[0].scores
    # few-shot requests carry the shots, RAG requests carry citations.
    few_msgs = eng.calls[1][0].messages
    assert [m["role"] for m in few_msgs] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    rag_msgs = eng.calls[2][0].messages
    assert (
        "[1] docs/policy.md" in rag_msgs[0]["content"] or len(rag_msgs) > 2
    )  # cited docs or shown examples
    assert run.candidate("rag").items[0].meta["citations"]
    assert any(
        c.startswith("docs/policy.md") or c.startswith("train.jsonl")
        for c in run.candidate("rag").items[0].meta["citations"]
    )
    assert run.candidate("knn").kind == "knn"
    saved = EvalRun.load(cfg.work_dir / "eval" / "eval.json")
    assert saved.item_ids == run.item_ids and saved.split == "val" and len(saved.split_hash) == 64
    assert (cfg.work_dir / "splits" / "manifest.json").is_file()


def test_rag_records_the_sources_it_actually_used(tmp_path: Path) -> None:
    cfg = load_project(write_project(tmp_path))
    run = evaluate(cfg, candidates=["rag"], engine=FakeEngine(), progress=False)
    assert run.candidate("rag").meta["sources"] == ["docs", "train"]
    raw = yaml.safe_load((tmp_path / "project.yaml").read_text())
    del raw["data"]["docs"]  # the default sources ask for docs, but there are none
    (tmp_path / "project.yaml").write_text(yaml.safe_dump(raw))
    run = evaluate(
        load_project(tmp_path / "project.yaml"),
        candidates=["rag"],
        engine=FakeEngine(),
        progress=False,
    )
    assert run.candidate("rag").meta["sources"] == ["train"]


def test_sealed_test_split_needs_final_and_warns_on_reuse(tmp_path: Path) -> None:
    cfg = load_project(write_project(tmp_path))
    with pytest.raises(SealedSplitError, match="sealed"):
        evaluate(cfg, split="test", candidates=["prompt"], engine=FakeEngine(), progress=False)
    first = evaluate(
        cfg,
        split="test",
        candidates=["prompt"],
        final=True,
        engine=FakeEngine(),
        progress=False,
        out_dir=tmp_path / "t1",
    )
    assert first.meta["final_use"] == 1 and "warning" not in first.meta
    second = evaluate(
        cfg,
        split="test",
        candidates=["prompt"],
        final=True,
        engine=FakeEngine(),
        progress=False,
        out_dir=tmp_path / "t2",
    )
    assert (
        second.meta["final_use"] == 2 and "no longer an unbiased" in second.meta["warning"].lower()
    )


def test_finetuned_adapter_and_limit(tmp_path: Path) -> None:
    cfg = load_project(write_project(tmp_path, constrained=False, classical=False))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "adapter_config.json").write_text("{}")
    (run_dir / "adapter_model.safetensors").write_bytes(b"x")
    eng = FakeEngine(sloppy=True)
    run = evaluate(
        cfg,
        candidates=["prompt"],
        finetuned={"finetuned": run_dir},
        engine=eng,
        progress=False,
        limit=3,
    )
    assert [c.name for c in run.candidates] == ["prompt", "finetuned"] and len(run.item_ids) == 3
    ft = run.candidate("finetuned")
    assert (
        ft.kind == "finetuned" and ft.meta["adapter_hash"] and eng.loaded == {"finetuned": run_dir}
    )
    assert all(i.scores["format_compliance"] == 1.0 for i in ft.items)
    with pytest.raises(UserError, match="not a training run"):
        evaluate(
            cfg,
            candidates=["prompt"],
            finetuned={"finetuned": tmp_path / "docs"},
            engine=eng,
            progress=False,
        )


class JudgeEngine(FakeEngine):
    """Replies 'Score: 4' to judge prompts, except every third one, which it garbles."""

    n: int = 0

    def generate(self, requests, *, progress=False):
        if "Use this rubric" not in requests[0].messages[-1]["content"]:
            return super().generate(requests)
        out = []
        for _ in requests:
            self.n += 1
            out.append(_Res("hmm" if self.n % 3 == 0 else "Score: 4"))
        return out


def test_judge_scores_and_parse_failures(tmp_path: Path) -> None:
    cfg = load_project(
        write_project(tmp_path, graders=["format", "label", "judge"], constrained=False)
    )
    run = evaluate(cfg, candidates=["prompt"], engine=JudgeEngine(), progress=False, limit=6)
    c = run.candidate("prompt")
    judged = [i.scores["judge"] for i in c.items]
    assert sum(math.isnan(j) for j in judged) == 2 and judged[0] == 0.75
    assert c.meta["judge"]["parse_failures"] == 2 and len(c.meta["judge"]["version"]) == 12
    assert any("judges itself" in n for n in run.meta["notes"])
    # recorded for the gate: a base model judging itself is not evidence
    assert run.meta["judge"]["evidence"] is False


def test_real_engine_end_to_end_and_cached_rerun(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The real Engine (tiny random model): free generation + constrained, then a cached rerun."""
    path = write_project(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["model"] = {"base": str(tiny_model_dir)}
    raw["eval"]["candidates"] = ["prompt", "prompt+constrained"]
    raw["eval"]["classical"] = False
    raw["eval"]["max_new_tokens"] = 6
    raw["gate"] = {"baselines": ["prompt"]}  # a gate baseline must be evaluated (config rule)
    path.write_text(yaml.safe_dump(raw))
    cfg = load_project(path)
    run = evaluate(cfg, progress=False, limit=4)
    assert [c.name for c in run.candidates] == ["prompt", "prompt+constrained"]
    cons = run.candidate("prompt+constrained")
    assert all(i.scores["format_compliance"] == 1.0 for i in cons.items)  # valid by construction
    assert (
        all(math.isfinite(i.meta["score"]) for i in cons.items)
        and cons.meta["calibration"] == "pmi"
    )
    again = evaluate(cfg, progress=False, limit=4, out_dir=tmp_path / "again")
    assert [i.output for i in again.candidate("prompt").items] == [
        i.output for i in run.candidate("prompt").items
    ]
    # The rerun is served from the SQLite cache: no generation, no scoring.
    assert run.candidate("prompt").meta["cache_misses"] == 4
    assert (
        again.candidate("prompt").meta["cache_hits"] == 4
        and again.candidate("prompt").meta["cache_misses"] == 0
    )
    assert again.candidate("prompt+constrained").meta["cache_misses"] == 0


def test_cli_eval_prints_table(tmp_path: Path, tiny_model_dir: Path) -> None:
    from typer.testing import CliRunner

    from tunewise.cli import app

    path = write_project(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["model"] = {"base": str(tiny_model_dir)}
    raw["eval"]["max_new_tokens"] = 4
    path.write_text(yaml.safe_dump(raw))
    res = CliRunner().invoke(
        app,
        [
            "eval",
            str(path),
            "--candidates",
            "prompt,knn",
            "--limit",
            "3",
            "--out",
            str(tmp_path / "ev"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "knn" in res.output and "accuracy" in res.output
    assert (tmp_path / "ev" / "eval.json").is_file()
    res = CliRunner().invoke(app, ["eval", str(path), "--candidates", "prompt", "--split", "test"])
    assert res.exit_code == 2 and "sealed" in res.output


def test_external_candidate_against_a_loopback_stub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An OpenAI-compatible endpoint (a stub on 127.0.0.1) is one more candidate on the items."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[dict] = []

    class Stub(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"auth": self.headers.get("Authorization"), **body})
            cat = FakeEngine()._cat(body["messages"])
            reply = {
                "choices": [
                    {
                        "message": {"role": "assistant", "content": answer(cat)},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 4},
            }
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("STUB_KEY", "sk-test")
        ext = [
            {
                "name": "frontier",
                "base_url": f"http://127.0.0.1:{server.server_port}/v1",
                "model": "big-1",
                "api_key_env": "STUB_KEY",
            }
        ]
        cfg = load_project(write_project(tmp_path, external=ext, constrained=False))
        run = evaluate(
            cfg,
            candidates=["prompt", "external"],
            engine=FakeEngine(sloppy=True),
            progress=False,
            limit=4,
        )
        fr = run.candidate("frontier")
        assert fr.kind == "external" and fr.meta["model"] == "big-1"
        assert all(
            i.scores["accuracy"] == 1.0 and i.scores["format_compliance"] == 1.0 for i in fr.items
        )
        assert (
            len(seen) == 4 and seen[0]["model"] == "big-1" and seen[0]["auth"] == "Bearer sk-test"
        )
        assert seen[0]["messages"][0]["role"] == "system"
    finally:
        server.shutdown()
