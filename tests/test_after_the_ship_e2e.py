"""After the ship, end to end (issue #27's acceptance test), on the tiny model, loopback only.

serve v1 with the traffic log on -> a bounded client (some requests carry planted PII) ->
`tunewise data from-traffic` -> labels from a teacher (a second tunewise server) -> retrain on
train + the new examples -> champion/challenger (`tunewise gate`) -> promote v2 -> v3 in shadow
(`serve --shadow`), `compare-traffic` -> `registry rollback`, and the running server answers
with v1 again. Every command a user types goes through the CLI; the servers are the real app
under uvicorn (what `tunewise serve` runs), on 127.0.0.1. Waits are bounded by deadlines.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from _serve_helpers import running
from tunewise.cli import app
from tunewise.registry.store import Registry
from tunewise.serve.app import ServeSettings, create_app
from tunewise.serve.shadow import ShadowSettings
from tunewise.serve.traffic import read_traffic, traffic_files

runner = CliRunner()
NAME = "triage"
SYSTEM = "Classify the ticket: billing, shipping or login."
PATTERN = r"Category: (?P<category>\w+)"
# The category's words make the task learnable (the teacher, a TF-IDF classifier, learns them);
# the filler makes tickets far apart, so a new request is no near-duplicate of a train line.
KEYS = {
    "billing": "refund the double charge on my invoice",
    "shipping": "where is my parcel the courier lost",
    "login": "cannot sign in after the password reset",
}
_FILLER_TEXT = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november "
    "oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu amber blue "
    "coral denim ebony fern gold hazel ivory jade khaki lemon mauve navy olive pearl"
)
FILLER = _FILLER_TEXT.split()
EMAIL, PHONE, CARD = "jane.doe@example.com", "(555) 123-4567", "4111 1111 1111 1111"
SECRETS = (EMAIL, PHONE, CARD, "4111111111111111", "jane.doe", "123-4567")
WAIT = 60.0  # seconds a background writer or the shadow may take before the test fails


def ticket(i: int, cat: str) -> str:
    rng = random.Random(i)
    return f"{KEYS[cat]} " + " ".join(rng.sample(FILLER, 12)) + f" case {i}"


def row(i: int, cat: str) -> dict:
    answer = {"role": "assistant", "content": f"Category: {cat}"}
    return {"messages": [{"role": "user", "content": ticket(i, cat)}, answer]}


def cli(*args: object) -> str:
    """A command as a user types it; it must succeed."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"tunewise {' '.join(map(str, args))}:\n{result.output}"
    return result.output


def wait_until(ready: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def assert_no_pii(root: Path) -> int:
    """No planted PII string in any file under ``root`` (every byte of every file)."""
    files = [p for p in root.rglob("*") if p.is_file()]
    for path in files:
        data = path.read_bytes()
        for secret in SECRETS:
            assert secret.encode() not in data, f"{secret!r} reached {path}"
    return len(files)


# --------------------------------------------------------------------------- the project


def make_project(root: Path, model_dir: Path) -> Path:
    """A labels project (48 tickets) split by `tunewise data split`, the test split sealed."""
    root.mkdir(parents=True)
    cats = list(KEYS)
    rows = [row(i, cats[i % 3]) for i in range(48)]
    (root / "all.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {
        "name": NAME,
        "data": {"train": "all.jsonl", "max_len": 128},
        "model": {"base": str(model_dir)},
        "task": {
            "type": "labels",
            "system_prompt": SYSTEM,
            "output_pattern": PATTERN,
            "labels": {"category": cats},
        },
        "train": {
            "batch_size": 4,
            "max_steps": 3,
            "eval_every": 3,
            "save_every": 3,
            "overfit_sample": 0,
            "lr": 5e-3,
        },
        "eval": {"candidates": ["prompt"], "max_new_tokens": 6, "constrained": False},
        # "as good as the prompt rung, and no worse than production": two random tiny models
        # pass it, so the gate ships and promote obeys its champion check
        "gate": {
            "mode": "non_inferiority",
            "reference": "prompt",
            "margin": 0.5,
            "regression_margin": 0.5,
            "baselines": [],
        },
    }
    (root / "project.yaml").write_text(yaml.safe_dump(cfg))
    splits = root / ".tunewise" / "splits"
    fractions = ["--val", 0.25, "--test", 0.25, "--project", NAME]
    cli("data", "split", root / "all.jsonl", "--out", splits, *fractions)
    return root / "project.yaml"


def train(project: Path, run_dir: Path, seed: int) -> Path:
    cli("train", project, "--run-dir", run_dir, "--no-progress", "--set", f"train.seed={seed}")
    return run_dir


# --------------------------------------------------------------------------- the servers


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from tunewise.runtime.engine import Engine
    from tunewise.runtime.models import resolve

    return Engine(resolve(str(tiny_model_dir)), max_loaded_adapters=4, batch_size=4)


@contextlib.contextmanager
def server(engine, traffic: Path, **settings: object) -> Iterator[tuple[httpx.Client, object]]:
    """(a client of, app) what `tunewise serve --log-traffic DIR --allow-admin [--shadow ...]`
    runs, on the registry under $TUNEWISE_HOME (the one the CLI changes). One client for the
    round: httpx.post would build a client, TLS context included, per request."""
    cfg = ServeSettings(batch_window_ms=5, log_traffic=traffic, allow_admin=True, **settings)
    served = create_app(engine, settings=cfg, registry=Registry())
    with running(served) as url, httpx.Client(base_url=url, timeout=60) as http:
        yield http, served


def ask(http: httpx.Client, model: str, content: str) -> dict:
    """One request of the bounded client: a deadline, and it must be answered."""
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 6}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


@contextlib.contextmanager
def teacher_server(engine, project: Path, tmp: Path) -> Iterator[str]:
    """A second tunewise server, its own registry holding one version: a TF-IDF classifier
    release fitted on the project's train split (answers in the task's format, no LLM)."""
    from tunewise.baselines.classical_io import fit_for_release
    from tunewise.baselines.release import write_release
    from tunewise.config import load_project
    from tunewise.data.labels import LabelSpec
    from tunewise.data.schema import load_examples
    from tunewise.ladder.release_stage import release_data_hashes

    cfg = load_project(project)
    train_rows = load_examples(cfg.work_dir / "splits" / "train.jsonl")
    fitted = fit_for_release("tfidf", LabelSpec.from_config(cfg, train_rows), train_rows)
    folder = write_release(
        tmp / "teacher-release",
        "tfidf",
        cfg,
        train_rows,
        base=None,
        max_new_tokens=None,
        data_hashes=release_data_hashes(cfg),
        fitted=fitted,
    )
    registry = Registry(tmp / "teacher-registry")
    registry.add(folder, name="big")
    cfg_serve = ServeSettings(batch_window_ms=5)
    with running(create_app(engine, settings=cfg_serve, registry=registry)) as url:
        yield f"{url}/v1"


# --------------------------------------------------------------------------- the steps


def round_one(engine, traffic: Path, project: Path) -> dict[str, dict]:
    """v1 in production with the traffic log on; a bounded client: six new tickets (three with
    planted PII), a train line, a sealed test line, one repeat. Returns the answers by text."""
    from tunewise.data.schema import load_examples

    splits = project.parent / ".tunewise" / "splits"
    new = [ticket(100 + i, cat) for i, cat in enumerate([*KEYS, *KEYS])]
    new[0] += f" mail me at {EMAIL}"
    new[1] += f" or call {PHONE}"
    new[2] += f" the card was {CARD}"
    known = [load_examples(splits / f"{s}.jsonl")[0].user_text for s in ("train", "test")]
    sent = [*new, *known, new[3]]
    with server(engine, traffic) as (http, _):
        answers = {text: ask(http, f"{NAME}@production", text) for text in sent}
    assert {a["system_fingerprint"] for a in answers.values()} == {f"{NAME}:1"}
    records = read_traffic(traffic)  # the server closed: every record written and fsynced
    assert len(records) == len(sent)
    assert {json.dumps(r["resolved"]) for r in records} == {
        json.dumps({"key": f"{NAME}:1", "alias": "production"})
    }
    assert records[0]["messages"][0]["content"].endswith("mail me at [email]")
    assert assert_no_pii(traffic) >= 1
    return answers


def drafts_and_teacher(project: Path, traffic: Path, teacher_url: str, tmp: Path) -> list[dict]:
    """`data from-traffic` twice: drafts for people, then labels from the teacher."""
    drafts = tmp / "drafts.jsonl"
    out = cli("data", "from-traffic", traffic, "--out", drafts, "-p", project)
    for dropped in ("same input as a train line", "same input as a test line", "repeated"):
        assert any(dropped in ln and ln.rstrip(" │").endswith(" 1") for ln in out.splitlines()), (
            dropped,
            out,
        )
    (log_file,) = traffic_files(traffic)
    rows = jsonl(drafts)
    assert len(rows) == 6
    assert {r["origin"]["traffic_file"] for r in rows} == {log_file.name}
    assert {r["origin"]["labelled_by"] for r in rows} == {None}
    labelled = tmp / "labelled.jsonl"
    teach = ["--teacher", teacher_url, "--teacher-model", "big:1", "--teacher-samples", 2]
    out = cli("data", "from-traffic", traffic, "--out", labelled, "-p", project, *teach)
    assert "teacher: kept 6, dropped 0" in out, out
    rows = jsonl(labelled)
    assert {r["origin"]["labelled_by"] for r in rows} == {"teacher:big:1"}
    for r in rows:  # the teacher is right: the category's words are in the ticket
        cat = next(c for c, words in KEYS.items() if r["messages"][0]["content"].startswith(words))
        assert r["messages"][-1] == {"role": "assistant", "content": f"Category: {cat}"}
    assert_no_pii(tmp)
    return rows


def retrain_and_promote(project: Path, labelled: list[dict], tmp: Path) -> None:
    """Four teacher labels join train, two join val (the items new since the champion); v2
    trains, `tunewise gate` holds it to production (v1), promote obeys the verdict."""
    splits = project.parent / ".tunewise" / "splits"
    for split, rows in (("train", labelled[:4]), ("val", labelled[4:])):
        with open(splits / f"{split}.jsonl", "a") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
    train(project, tmp / "runs" / "v2", seed=2)
    ev = tmp / "eval-v2"
    cli("eval", project, "--finetuned", tmp / "runs" / "v2", "--out", ev, "-q")
    out = cli("gate", ev, "-c", "finetuned", "-p", project)
    verdict = json.loads((ev / "verdict.json").read_text())
    assert verdict["ship"] and verdict["champion"]["version"] == f"{NAME}:1", out
    assert verdict["champion"]["passed"], verdict["champion"]
    new = json.loads((ev / "comparison.json").read_text())["meta"]["champion"]["new_items"]
    assert new["n"] == 2, new  # the two traffic examples in val
    cli("registry", "add", tmp / "runs" / "v2", "--eval-dir", ev)
    assert "1 → 2" in cli("registry", "promote", f"{NAME}:2")
    shown = cli("registry", "show", f"{NAME}:2")
    (log_file,) = traffic_files(tmp / "traffic")
    window = next(ln for ln in shown.splitlines() if ln.strip().startswith("traffic "))
    assert log_file.name in window and "6 example(s) (train 4, val 2)" in window, shown
    assert "labelled by teacher:big:1 6" in shown, shown
    assert "on 2 new items" in shown, shown


def shadow_and_rollback(engine, project: Path, tmp: Path, v1_answers: dict[str, dict]) -> Path:
    """v3 answers in shadow beside v2; `registry rollback` while the server runs; after a
    refresh it answers with v1 again, as v1 answered. Returns the round's traffic folder."""
    train(project, tmp / "runs" / "v3", seed=3)
    cli("registry", "add", tmp / "runs" / "v3")
    staging = ["--alias", "staging", "--force", "--reason", "shadow before anything else"]
    cli("registry", "promote", f"{NAME}:3", *staging)
    traffic = tmp / "traffic-shadow"
    sent = [ticket(200 + i, cat) for i, cat in enumerate([*KEYS, *KEYS])]
    sent[0] += f" reach me at {EMAIL} or {PHONE}"
    shadowing = ShadowSettings(model=f"{NAME}@staging")
    again = next(iter(v1_answers))  # the first request of round one (it carries the email)
    with server(engine, traffic, shadow=shadowing) as (http, served):
        answers = [ask(http, f"{NAME}@production", text) for text in sent]
        assert {a["system_fingerprint"] for a in answers} == {f"{NAME}:2"}
        out = cli("registry", "rollback", NAME, "--reason", "v2 misroutes refunds")
        assert "2 → 1" in out, out
        r = http.post("/admin/adapters/refresh")
        assert r.status_code == 200, r.text
        assert r.json()["changed"][f"{NAME}@production"] == {"from": f"{NAME}:2", "to": f"{NAME}:1"}
        back = ask(http, f"{NAME}@production", again)
        assert back["system_fingerprint"] == f"{NAME}:1"
        first = v1_answers[again]["choices"][0]["message"]["content"]
        assert back["choices"][0]["message"]["content"] == first  # v1's own answer, greedy
        shadow = served.state.server.shadow
        wait_until(lambda: shadow.answered + shadow.failed >= len(sent) + 1, "the shadow")
    return traffic


def compare_round(project: Path, traffic: Path, teacher_url: str, tmp: Path) -> None:
    """The teacher labels the shadow round; `compare-traffic` reports agreement per (production,
    shadow) pair of versions and the paired metric on the labelled requests."""
    labels = tmp / "labels-shadow.jsonl"
    teach = ["--teacher", teacher_url, "--teacher-model", "big:1", "--margin-budget", 0]
    cli("data", "from-traffic", traffic, "--out", labels, "-p", project, *teach)
    kept = jsonl(labels)
    assert len(kept) == 6  # the seventh request is round one's, now a train line: dropped
    report = tmp / "compare.json"
    flags = ["--labels", labels, "-p", project, "--json", report, "--n-boot", 200]
    out = cli("compare-traffic", traffic, *flags)
    found = json.loads(report.read_text())
    c = found["counts"]
    assert (c["requests"], c["paired"], c["shadow_failed"]) == (7, 7, 0), c
    assert (c["labels"], c["labels_paired"]) == (6, 6), c
    groups = {(g["production"], g["shadow"]): g for g in found["groups"]}
    assert set(groups) == {(f"{NAME}:2", f"{NAME}:3"), (f"{NAME}:1", f"{NAME}:3")}
    after = groups[(f"{NAME}:2", f"{NAME}:3")]
    assert after["pairs"] == 6 and after["labelled"] == 6
    assert after["agree"] + len(after["disagreeing_ids"]) == 6
    assert after["comparison"] is not None and "agreement" in out
    assert groups[(f"{NAME}:1", f"{NAME}:3")]["pairs"] == 1


@pytest.mark.slow
def test_served_traffic_becomes_the_next_version_and_rolls_back(engine, tiny_model_dir, tmp_path):
    project = make_project(tmp_path / "proj", tiny_model_dir)
    v1 = train(project, tmp_path / "runs" / "v1", seed=1)
    cli("registry", "add", v1)
    cli("registry", "promote", f"{NAME}:1", "--force", "--reason", "the first version")

    traffic = tmp_path / "traffic"
    v1_answers = round_one(engine, traffic, project)
    with teacher_server(engine, project, tmp_path) as teacher_url:
        labelled = drafts_and_teacher(project, traffic, teacher_url, tmp_path)
        retrain_and_promote(project, labelled, tmp_path)
        shadow_traffic = shadow_and_rollback(engine, project, tmp_path, v1_answers)
        compare_round(project, shadow_traffic, teacher_url, tmp_path)

    assert Registry().lookup(f"{NAME}@production").version == 1
    # no planted PII in any file the loop wrote: logs, drafts, labels, runs, caches, registry
    assert assert_no_pii(tmp_path) > 50
