"""Every rung is a releasable artefact (#24): the ladder registers and promotes its winner whatever
kind it is; a prompt, few-shot, RAG, kNN, TF-IDF or probe version is served from the registry,
answers (and prompts) equal to the evaluation's, kinds switch and roll back without a restart, and
a tampered blob of each kind is refused.

The tiny in-memory Llama of tests/conftest.py and the installed all-MiniLM-L6-v2 (no download)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from _serve_helpers import SpyEngine, running
from test_workflow import make_project, write_cfg
from tunewise.config import load_project
from tunewise.data.schema import load_examples
from tunewise.eval.results import EvalRun

ADMIN = {"Authorization": "Bearer admin-key"}
LLM_KINDS = ("prompt", "fewshot", "rag")


@pytest.fixture(scope="module")
def world(tiny_model_dir, tmp_path_factory, session_models_dir):
    """The ladder on the tiny ticket project (it releases its winner), then a release of every
    other rung and classifier, each registered as a version of the project."""
    tmp = tmp_path_factory.mktemp("release")
    # The module's own home (the autouse per-test home is not set up yet at module scope).
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNEWISE_HOME", str(tmp / "home"))
        mp.setenv("TUNEWISE_MODELS", str(session_models_dir))
        yield _build_world(tmp, tiny_model_dir)


def _build_world(tmp: Path, tiny_model_dir) -> dict:
    from tunewise.ladder import release_stage
    from tunewise.ladder.workflow import run_ladder
    from tunewise.registry.store import Registry

    cfg = load_project(write_cfg(make_project(tmp / "proj"), tiny_model_dir))
    result = run_ladder(cfg, quiet=True)
    eval_dir = cfg.work_dir / "eval"
    record = json.loads((cfg.work_dir / "registry.json").read_text())
    reg = Registry()
    versions = {cand: int(spec.split(":")[1]) for cand, spec in record["versions"].items()}
    for kind in ("prompt", "fewshot", "rag", "knn", "tfidf", "probe"):
        if kind not in versions:
            folder = release_stage.build(cfg, kind, eval_dir)
            versions[kind] = reg.add(folder, name=cfg.name, eval_dir=eval_dir).version
    return {
        "cfg": cfg,
        "reg": reg,
        "run": EvalRun.load(eval_dir / "eval.json"),
        "record": record,
        "versions": versions,
        "result": result,
        "val": load_examples(cfg.work_dir / "splits" / "val.jsonl"),
        "home": tmp / "home",
        "project": cfg.root / "project.yaml",
    }


def test_the_ladder_releases_its_winner_whatever_its_kind(world) -> None:
    """On the tiny ticket task TF-IDF is perfect and nothing dearer clearly beats it: the ladder
    registers it and puts it in production, with the rule's verdict."""
    record, reg = world["record"], world["reg"]
    decision = json.loads((world["cfg"].work_dir / "eval" / "release-decision.json").read_text())
    assert decision["winner"] == record["release"] == "tfidf", decision["reasons"]
    prod = reg.lookup("tiny-ladder@production")
    assert prod.spec == record["promoted"] and prod.kind == "tfidf" and prod.ship is True
    assert set(prod.files) == {"release.json", "classifier.json", "classifier.safetensors"}
    assert prod.verdict.summary.startswith("SHIP tfidf")
    assert prod.data_hashes["train"] and prod.config["name"] == "tiny-ladder"
    # the fine-tune is versioned too (as every trained run), not promoted
    assert reg.get("tiny-ladder", world["versions"]["finetuned"]).kind == "lora"


def _ask(http: httpx.Client, model: str, ex, **extra) -> str:
    own = [m for m in ex.prompt_messages if m["role"] != "system"]  # a client's own turns
    body = {"model": model, "messages": own, "temperature": 0, **extra}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def _answers(http: httpx.Client, model: str, world, kind: str) -> list[str]:
    extra = {}
    if kind.startswith("finetuned"):  # a release carries its decoding budget; an adapter not
        extra["max_tokens"] = world["run"].candidate(kind).meta["max_new_tokens"]
    return [_ask(http, model, ex, **extra) for ex in world["val"]]


def _evaluated(world, kind: str) -> list[str]:
    return [it.output for it in world["run"].candidate(kind).items]


@pytest.fixture(scope="module")
def server(world, tiny_model_dir):
    from tunewise.runtime.engine import Engine
    from tunewise.runtime.models import resolve
    from tunewise.serve.app import ServeSettings, create_app

    engine = SpyEngine(Engine(resolve(str(tiny_model_dir)), batch_size=8))
    app = create_app(engine, settings=ServeSettings(admin_key="admin-key"), registry=world["reg"])
    # One client for the module's ~200 requests: httpx.post builds a client (and its TLS
    # context) per call, ~20 ms each, more than the server takes to answer.
    with running(app) as url, httpx.Client(base_url=url, timeout=120) as http:
        yield http, engine


@pytest.mark.parametrize("kind", ["prompt", "fewshot", "rag", "knn", "tfidf", "probe"])
def test_served_answers_and_prompts_equal_the_evaluated_ones(world, server, kind) -> None:
    from tunewise.baselines.context import ContextBuilder
    from tunewise.baselines.prompt import base_messages

    http, engine = server
    spec = f"tiny-ladder:{world['versions'][kind]}"
    before = len(engine.prompts)
    assert _answers(http, spec, world, kind) == _evaluated(world, kind)
    served = engine.prompts[before:]
    cfg, val = world["cfg"], world["val"]
    if kind not in LLM_KINDS:
        assert served == []  # a classifier answers without the language model
        return
    if kind == "prompt":
        want = [base_messages(ex, cfg.task.system_prompt) for ex in val]
    else:
        train = load_examples(cfg.work_dir / "splits" / "train.jsonl")
        want, _, _ = ContextBuilder.from_config(cfg, kind, train).prompts(val)
    assert served == want


def test_a_classifier_streams_its_answer(world, server) -> None:
    http, _ = server
    ex = world["val"][0]
    body = {
        "model": "tiny-ladder@production",
        "stream": True,
        "messages": [m for m in ex.prompt_messages if m["role"] != "system"],
    }
    with http.stream("POST", "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == _evaluated(world, "tfidf")[0]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_production_switches_kinds_and_rolls_back_without_a_restart(world, server) -> None:
    """tfidf (the ladder's) -> few-shot -> the fine-tune -> rollback to few-shot -> probe -> the
    fine-tune -> rollback to probe: after each move and an admin refresh, tiny-ladder@production
    answers exactly as the version it names was evaluated."""
    http, _ = server
    reg, versions = world["reg"], world["versions"]

    def production_is(kind: str) -> None:
        r = http.post("/admin/adapters/refresh", headers=ADMIN, timeout=60)
        assert r.status_code == 200, r.text
        want = f"tiny-ladder:{versions[kind]}"
        assert r.json()["resolved"].get("tiny-ladder@production", want) == want
        assert _answers(http, "tiny-ladder@production", world, kind) == _evaluated(world, kind)

    production_is("tfidf")
    for kind, back in (("fewshot", None), ("finetuned", "fewshot"), ("probe", None)):
        reg.promote("tiny-ladder", versions[kind], force=True, reason=f"try {kind}")
        production_is(kind)
        if back:
            reg.rollback("tiny-ladder")
            production_is(back)
    reg.promote("tiny-ladder", versions["finetuned"], force=True, reason="fine-tune again")
    production_is("finetuned")
    reg.rollback("tiny-ladder")
    production_is("probe")
    reg.promote("tiny-ladder", versions["tfidf"], force=True, reason="back to the ladder's")


@pytest.mark.parametrize(
    ("kind", "blob"),
    [
        ("prompt", "release.json"),
        ("fewshot", "context.json"),
        ("rag", "context.json"),
        ("knn", "classifier.safetensors"),
        ("tfidf", "classifier.json"),
        ("probe", "classifier.safetensors"),
    ],
)
def test_a_tampered_release_is_refused(world, tiny_model_dir, tmp_path, kind, blob) -> None:
    """A blob of each kind changed on disk: the server answers 503 and loads nothing; serving it
    from the command line exits 2 with one line; the registry's doctor names the file."""
    from typer.testing import CliRunner

    from tunewise.cli import app as cli
    from tunewise.registry.store import Registry
    from tunewise.runtime.engine import Engine
    from tunewise.runtime.models import resolve
    from tunewise.serve.app import ServeSettings, create_app

    # a copy of the registry, so the other tests keep theirs intact
    root = tmp_path / "registry"
    shutil.copytree(world["reg"].root, root)
    reg = Registry(root)
    v = reg.get("tiny-ladder", world["versions"][kind])
    # the blob and any copy already materialised for serving: both are hash-checked
    served = root / "versions" / "tiny-ladder" / str(v.version) / blob
    for path in (reg.blob_path(v.files[blob]), served):
        if path.is_file():
            path.chmod(0o644)
            path.write_bytes(path.read_bytes()[:-4] + b"oops")
    engine = Engine(resolve(str(tiny_model_dir)), batch_size=8)
    app = create_app(engine, settings=ServeSettings(), registry=reg)
    with running(app) as url:
        body = {"model": v.spec, "messages": [{"role": "user", "content": "my invoice"}]}
        r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 503, r.text
    assert blob in r.json()["error"]["message"]
    # the home layout: $TUNEWISE_HOME/registry
    out = CliRunner().invoke(cli, ["registry", "doctor"], env={"TUNEWISE_HOME": str(tmp_path)})
    assert out.exit_code == 2 and blob in out.output, out.output


def test_a_probe_in_production_is_challenged_by_a_fine_tune_and_the_other_way_round(
    world, tmp_path, monkeypatch
) -> None:
    """Champion/challenger across kinds, on the same items: `tunewise gate` evaluates a probe in
    production through its release beside a fine-tune; and a fine-tune in production is the
    champion a rung must not regress from before the release rule may ship it."""
    from typer.testing import CliRunner

    from tunewise.candidates import CHAMPION
    from tunewise.cli import app as cli
    from tunewise.decide.comparison import build
    from tunewise.decide.release import decide_release
    from tunewise.eval.harness import evaluate

    monkeypatch.setenv("TUNEWISE_HOME", str(world["home"]))
    reg, versions, cfg = world["reg"], world["versions"], world["cfg"]
    probe = f"tiny-ladder:{versions['probe']}"
    ft = reg.get("tiny-ladder", versions["finetuned"])
    try:
        reg.promote("tiny-ladder", versions["probe"], force=True, reason="probe in production")
        eval_dir = tmp_path / "challenge"
        evaluate(cfg, candidates=["prompt"], finetuned={"finetuned": Path(ft.source_run)},
                 out_dir=eval_dir, progress=False)  # fmt: skip
        r = CliRunner().invoke(
            cli, ["gate", str(eval_dir), "-c", "finetuned", "-p", str(world["project"])]
        )
        assert r.exit_code in (0, 1), r.output
        run = EvalRun.load(eval_dir / "eval.json")
        prod = run.candidate(CHAMPION)  # the probe, answered through its release
        assert prod.kind == "champion" and prod.meta["release"] == "probe"
        assert [i.output for i in prod.items] == _evaluated(world, "probe")
        verdict = json.loads((eval_dir / "verdict.json").read_text())
        assert verdict["champion"]["version"] == probe

        reg.promote("tiny-ladder", ft.version, force=True, reason="fine-tune in production")
        resolved = reg.resolve(ft.spec)
        other = tmp_path / "rungs"
        run = evaluate(cfg, candidates=["prompt", "fewshot"],
                       finetuned={CHAMPION: Path(resolved.path)}, out_dir=other,
                       progress=False)  # fmt: skip
        comp = build(run, other, cfg.gate, gated=[], champion=ft.spec)
        decision = decide_release(comp, {}, cfg.gate)
        assert decision.verdict is not None and decision.verdict.champion["version"] == ft.spec
        tested = {(t.candidate, t.reference) for t in comp.margin_tests}
        assert {("prompt", CHAMPION), ("fewshot", CHAMPION)} <= tested
    finally:
        reg.promote("tiny-ladder", versions["tfidf"], force=True, reason="back to the ladder's")


def test_export_says_what_each_kind_needs(world, monkeypatch) -> None:
    """vLLM serves models and adapters: a prompt/few-shot/RAG release is the base model plus a
    prompt builder tunewise serves, a classifier has nothing for vLLM; neither has weights to
    merge (one line each, exit 2 from the CLI)."""
    from tunewise.errors import UserError
    from tunewise.export.vllm import export_merged, plan_vllm

    reg, versions = world["reg"], world["versions"]
    with pytest.raises(UserError, match="vLLM serves the base model"):
        plan_vllm([f"tiny-ladder:{versions['fewshot']}"], registry=reg)
    with pytest.raises(UserError, match="a classifier without a language model"):
        plan_vllm([f"tiny-ladder:{versions['probe']}"], registry=reg)
    with pytest.raises(UserError, match="no trained weights to merge"):
        export_merged(f"tiny-ladder:{versions['prompt']}", world["home"] / "merged", registry=reg)
    assert not (world["home"] / "merged").exists()


def test_run_prints_the_release_and_copyable_lines_that_serve_and_ask_it(world) -> None:
    import shlex

    from tunewise.cli import workflow_cmd

    eval_dir = world["cfg"].work_dir / "eval"
    with workflow_cmd.console.capture() as cap:
        workflow_cmd.show_release(eval_dir)
    out = cap.get()
    assert f"RELEASE tfidf → {world['record']['promoted']} (production)" in out
    serve, curl = out.strip().splitlines()[-2:]  # after the panel, one line each
    assert serve == "tunewise serve --port 8000"
    body = json.loads(shlex.split(curl)[-1])
    assert body["model"] == "tiny-ladder@production"
    assert body["messages"][0]["content"] == world["val"][0].user_text


def test_registry_show_says_a_classifier_has_no_base_model(world, monkeypatch) -> None:
    from typer.testing import CliRunner

    from tunewise.cli import app as cli

    monkeypatch.setenv("TUNEWISE_HOME", str(world["home"]))
    out = CliRunner().invoke(cli, ["registry", "show", f"tiny-ladder:{world['versions']['knn']}"])
    assert out.exit_code == 0, out.output
    assert "base model  none: a knn classifier answers without a language model" in out.output
    assert "classifier.safetensors" in out.output and "release.json" in out.output
