"""Retrieval-augmented fine-tuning (train.context): the training prompt is the evaluator's prompt,
no example retrieves itself, distractor rows, the shared prefix, and serving with the same context.

Retrieval uses the installed all-MiniLM-L6-v2 (as the fewshot and rag rungs do); models are the
tiny in-memory Llama of tests/conftest.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from _serve_helpers import SpyEngine
from _train_helpers import make_project
from tunewise.baselines.context import (
    CONTEXT_FILE,
    ContextBuilder,
    ContextSpec,
    is_distractor_row,
    training_examples,
)
from tunewise.config import load_project
from tunewise.data.schema import Example, load_examples
from tunewise.runtime import chat
from tunewise.train.collate import IGNORE_INDEX, encode

MODES = ["fewshot", "rag"]


def project(
    tmp_path: Path, model_dir, mode: str = "fewshot", *, selection: str = "similar", **train
) -> Path:
    """The tiny ticket project, with docs for rag, a long enough max_len, and a duplicate row."""
    path = make_project(tmp_path, model_dir, system_prompt="Classify the ticket.", **train)
    raw = yaml.safe_load(path.read_text())
    raw["data"]["max_len"] = 1024
    raw["data"]["docs"] = "docs"
    raw["train"]["context"] = mode
    raw["eval"] = {
        "fewshot": {"k": 3, "selection": selection},
        "rag": {"k": 3},
        "constrained": False,
        "classical": False,
    }
    raw["task"]["type"] = "labels"
    (tmp_path / "docs").mkdir(exist_ok=True)
    (tmp_path / "docs" / "billing.md").write_text("# Billing\nInvoices and charges are billing.\n")
    (tmp_path / "docs" / "account.md").write_text("# Account\nLogins and passwords: account.\n")
    path.write_text(yaml.safe_dump(raw))
    train_file = tmp_path / ".tunewise" / "splits" / "train.jsonl"
    rows = train_file.read_text().splitlines()
    train_file.write_text("\n".join([*rows, rows[0]]) + "\n")  # an exact duplicate
    return path


def splits(cfg) -> tuple[list[Example], list[Example]]:
    s = cfg.work_dir / "splits"
    return load_examples(s / "train.jsonl"), load_examples(s / "val.jsonl")


def context_user_turns(conv: Example, start: int) -> list[str]:
    """User texts the context put in front of the example (shots, or retrieved passages)."""
    turns = [m["content"] for m in conv.messages[:start] if m["role"] == "user"]
    system = conv.messages[0]["content"] if conv.messages[0]["role"] == "system" else ""
    return [*turns, system]


@pytest.mark.parametrize("mode", MODES)
def test_no_training_example_retrieves_itself(tmp_path, tiny_model_dir, mode):
    cfg = load_project(project(tmp_path, tiny_model_dir, mode))
    train, _ = splits(cfg)
    builder = ContextBuilder.from_config(cfg, mode, train)
    convs, starts = training_examples(builder, train, distractor_share=0.0, seed=0)
    assert len(convs) == len(train)
    shown_any = 0
    for ex, conv, start in zip(train, convs, starts, strict=True):
        # the example's own turns close the conversation, its answer last
        assert conv.messages[start:] == [m for m in ex.messages if m["role"] != "system"]
        context = context_user_turns(conv, start)
        assert not any(ex.user_text in text for text in context), ex.user_text
        shown_any += start > 1 or "[1]" in context[-1]
    assert shown_any == len(train)  # every example did get context
    # The duplicate pair: neither copy is shown to the other (same content id, same answer).
    assert train[0].uid == train[-1].uid


def test_distractor_rows_show_no_example_with_their_answer(tmp_path, tiny_model_dir):
    cfg = load_project(project(tmp_path, tiny_model_dir, "fewshot"))
    train, _ = splits(cfg)
    builder = ContextBuilder.from_config(cfg, "fewshot", train)
    convs, starts = training_examples(builder, train, distractor_share=0.5, seed=3)
    plain, _ = training_examples(builder, train, distractor_share=0.0, seed=3)
    chosen = [is_distractor_row(ex, 0.5, 3) for ex in train]
    assert 0 < sum(chosen) < len(train)
    for ex, conv, start, pick, base in zip(train, convs, starts, chosen, plain, strict=True):
        answers = [m["content"] for m in conv.messages[:start] if m["role"] == "assistant"]
        if pick:
            assert len(answers) == 3 and ex.target not in answers
        else:
            assert conv.messages == base.messages  # the evaluator's prompt, untouched
    # A rerun draws the same rows (seeded by content, not by order).
    again, _ = training_examples(builder, train[::-1], distractor_share=0.5, seed=3)
    assert [c.messages for c in again[::-1]] == [c.messages for c in convs]


@dataclass
class _Reply:
    text: str
    prompt_tokens: int = 1
    completion_tokens: int = 1
    finish_reason: str = "stop"


@dataclass
class RecordingEngine:
    """Answers every request with the same text and keeps the prompts it was sent."""

    prompts: list = field(default_factory=list)
    loaded: dict = field(default_factory=dict)

    def generate(self, requests, *, progress=False):
        self.prompts += [r.messages for r in requests]
        return [_Reply("Category: billing") for _ in requests]

    def max_new_tokens_for(self, answers):
        return 8

    def adapters(self):
        return list(self.loaded)

    def load_adapter(self, name, path):
        self.loaded[name] = path


def prompt_ids(tok, messages) -> list[int]:
    """The token ids inference feeds the model for ``messages`` (as the Engine renders them)."""
    return chat.encode(tok, [chat.render(tok, messages, generation_prompt=True)])[0]


def assert_trains_on_prompt(item, want: list[int]) -> None:
    """``item`` is ``want`` token for token, then the answer: the first label right after it."""
    first = next(i for i, t in enumerate(item.labels) if t != IGNORE_INDEX)
    assert item.input_ids[:first] == want
    assert all(t == IGNORE_INDEX for t in item.labels[:first])


@pytest.mark.parametrize("mode", MODES)
def test_training_prompt_equals_the_evaluators_token_for_token(tmp_path, tiny_model_dir, mode):
    from tunewise.eval.harness import _Harness, evaluate
    from tunewise.train.phases import RunStart
    from tunewise.train.trainer import setup

    cfg = load_project(project(tmp_path, tiny_model_dir, mode))
    train, val = splits(cfg)
    s = cfg.work_dir / "splits"
    prep = setup(cfg, RunStart(tmp_path / "run", s / "train.jsonl", s / "val.jsonl"))
    tok = prep.tokenizer
    assert prep.context is not None and len(prep.train_ds) == len(train)

    # Train examples: the trainer's prompt is the rung's prompt for that item (pool = train).
    h = _Harness(cfg, train, train, engine=None, progress=False)
    rung = h.fewshot_messages()[0] if mode == "fewshot" else h.rag_messages()[0]
    for item, msgs in zip(prep.train_ds.items, rung, strict=True):
        assert_trains_on_prompt(item, prompt_ids(tok, msgs))

    # Validation items: what the evaluator sends the context-trained run, read off its engine.
    run = tmp_path / "run"
    run.mkdir()
    (run / "adapter_config.json").write_text("{}")
    prep.context.save(run / CONTEXT_FILE)
    engine = RecordingEngine()
    result = evaluate(
        cfg, candidates=[], finetuned={f"finetuned+{mode}": run}, engine=engine, progress=False
    )
    assert [c.name for c in result.candidates] == [f"finetuned+{mode}"]
    assert result.candidates[0].meta["context"] == mode
    assert len(engine.prompts) == len(val) == len(prep.val_ds)
    for item, msgs in zip(prep.val_ds.items, engine.prompts, strict=True):
        assert_trains_on_prompt(item, prompt_ids(tok, msgs))
    # and the shots' own answers are never labels: only the example's answer is
    answer = encode(tok, val[0].with_system(cfg.task.system_prompt))
    n_labels = sum(t != IGNORE_INDEX for t in answer.labels)
    assert sum(t != IGNORE_INDEX for t in prep.val_ds.items[0].labels) == n_labels


def test_shared_prefix_with_context_is_the_system_prompt_and_matches_the_plain_path(
    tmp_path, tiny_model_dir
):
    from test_train_prefix import assert_same, tiny
    from tunewise.train.collate import ChatCollator
    from tunewise.train.prefix import SharedPrefix, shared_prefix_length

    cfg = load_project(project(tmp_path, tiny_model_dir, "fewshot"))
    train, _ = splits(cfg)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    convs, starts = training_examples(
        ContextBuilder.from_config(cfg, "fewshot", train), train[:4], distractor_share=0, seed=0
    )
    items = [encode(tok, c, label_from=s) for c, s in zip(convs, starts, strict=True)]
    inputs = ChatCollator(pad_token_id=tok.pad_token_id)(
        [{"input_ids": e.input_ids, "labels": e.labels} for e in items]
    )
    n = shared_prefix_length(inputs)
    system_only = prompt_ids(tok, [{"role": "system", "content": cfg.task.system_prompt}])
    # The rows share the system turn and the opening of the first (shot's) user turn, no more:
    # the retrieved shots differ per row.
    assert len(system_only) - 3 <= n < len(system_only) + 8
    model = tiny(tiny_model_dir, "lora")
    shared = SharedPrefix(True, "test")
    assert_same(model, inputs, lambda: shared.loss(model, inputs, None))


@pytest.mark.parametrize("selection", ["similar", "random"])
def test_served_answer_equals_the_evaluated_one(tmp_path, tiny_model_dir, selection):
    """A tiny context-trained run end to end: train, evaluate, register, serve; the server builds
    the same context from the registry's copy and answers exactly what the evaluation scored.
    With random shots too: they are drawn from the query's own turns, which a request has (not
    from its uid, which covers the data's system turn and the reference answer)."""
    import httpx

    from _serve_helpers import running
    from tunewise.eval.harness import evaluate
    from tunewise.registry.store import Registry
    from tunewise.runtime.engine import Engine
    from tunewise.runtime.models import resolve
    from tunewise.serve.app import ServeSettings, create_app
    from tunewise.train.trainer import train as train_run

    path = project(tmp_path, tiny_model_dir, selection=selection, max_steps=2, eval_every=2)
    cfg = load_project(path)
    run = tmp_path / "runs" / "ctx"
    record = train_run(cfg, run_dir=run, progress=False)
    assert record["status"] == "completed" and (run / CONTEXT_FILE).is_file()
    assert record["config"]["train"]["context"] == "fewshot"

    engine = SpyEngine(Engine(resolve(str(tiny_model_dir)), batch_size=8))
    name = "finetuned+fewshot"
    result = evaluate(cfg, candidates=[], finetuned={name: run}, engine=engine, progress=False)
    evaluated = result.candidate(name)
    evaluated_prompts = list(engine.prompts)
    max_new = evaluated.meta["max_new_tokens"]

    reg = Registry()
    version = reg.add(run, name="tickets")
    assert CONTEXT_FILE in version.files  # versioned with the adapter, hash-verified
    _, val = splits(cfg)
    app = create_app(engine, settings=ServeSettings(), registry=reg)
    # one client for every request: httpx.post builds a client (TLS context too) per call
    with running(app) as url, httpx.Client(base_url=url, timeout=120) as http:
        for ex, item in zip(val, evaluated.items, strict=True):
            own = [m for m in ex.prompt_messages if m["role"] != "system"]  # a client's turns
            body = {"model": "tickets:1", "messages": own, "max_tokens": max_new}
            resp = http.post("/v1/chat/completions", json=body)
            assert resp.status_code == 200, resp.text
            assert resp.json()["choices"][0]["message"]["content"] == item.output
    # The same prompts too, not just the same (tiny, random) answers: the evaluator's prompts
    # with retrieved shots, rebuilt by the server from the registry's copy of the pool.
    assert engine.prompts[len(val) :] == evaluated_prompts
    assert all(len(p) > 3 for p in evaluated_prompts)  # system, three shots' turns, the query
    meta = json.loads((run / CONTEXT_FILE).read_text())
    assert meta["spec"]["mode"] == "fewshot" and len(meta["train"]) == len(splits(cfg)[0])
    assert meta["spec"]["selection"] == selection


@pytest.mark.parametrize("mode", MODES)
def test_served_requests_leave_no_embedding_files(tmp_path, tiny_model_dir, tunewise_home, mode):
    """The server's requests are encoded without the on-disk cache (a file per distinct request
    would fill a live server's disk with every user's text as a vector); the pool stays cached."""
    from types import SimpleNamespace

    from tunewise.serve.state import ModelTable

    cfg = load_project(project(tmp_path, tiny_model_dir, mode))
    train, val = splits(cfg)
    table = ModelTable(SimpleNamespace(ref=SimpleNamespace(name="tiny")), registry=None)
    table.contexts["ctx"] = ContextBuilder.from_config(cfg, mode, train).warm()
    cache = tunewise_home / "embeddings"
    pool_files = sorted(cache.glob("*.npy"))
    assert pool_files  # the pool's vectors are cached
    for i in range(6):
        msgs = [{"role": "user", "content": f"request {i}: my invoice was charged twice"}]
        prompt = table.with_context("ctx", msgs)
        assert len(prompt) > 2  # the context was built
    assert sorted(cache.glob("*.npy")) == pool_files
    # The evaluator (and the trainer) still cache their queries.
    ContextBuilder.from_config(cfg, mode, train).prompts(val)
    assert len(list(cache.glob("*.npy"))) > len(pool_files)


def test_ladder_trains_plain_and_context_variants_and_compares_them(tmp_path, tiny_model_dir):
    """train.variants [none, fewshot]: two runs, both evaluated on the same items as the rungs,
    both gated and registered; the context-trained run carries its context into the registry."""
    from test_workflow import make_project as ladder_project
    from test_workflow import write_cfg
    from tunewise.eval.results import EvalRun
    from tunewise.ladder.workflow import run_ladder

    root = ladder_project(tmp_path / "proj", n=48)
    path = write_cfg(root, tiny_model_dir, variants=["none", "fewshot"])
    raw = yaml.safe_load(path.read_text())
    raw["data"]["max_len"] = 512
    # finetuned+fewshot listed, as docs/eval.md names it: skipped before training, then evaluated
    candidates = ["prompt", "fewshot", "finetuned", "finetuned+fewshot"]
    raw["eval"].update(candidates=candidates, classical=False)
    raw["eval"]["constrained"] = False
    raw["gate"] = {"baselines": ["prompt", "fewshot"]}
    path.write_text(yaml.safe_dump(raw))
    cfg = load_project(path)
    result = run_ladder(cfg, quiet=True)
    names = [s.name for s in result.stages]
    assert "train-lora" in names and "train-lora+fewshot" in names
    run = EvalRun.load(cfg.work_dir / "eval" / "eval.json")
    cands = {c.name: c for c in run.candidates}
    assert {"prompt", "fewshot", "finetuned", "finetuned+fewshot"} <= set(cands)
    assert cands["finetuned+fewshot"].meta["context"] == "fewshot"
    assert "context" not in cands["finetuned"].meta
    assert all(c.items[0].item_id == run.item_ids[0] for c in run.candidates)  # the same items
    comparison = json.loads((cfg.work_dir / "eval" / "comparison.json").read_text())
    pairs = {(p["candidate"], p["baseline"]) for p in comparison["pairs"]}
    assert ("finetuned+fewshot", "finetuned") in pairs  # the variant against plain LoRA
    record = json.loads((cfg.work_dir / "registry.json").read_text())
    # both runs, and the release rule's winner when it is neither (a rung)
    assert set(record["versions"]) - {record["release"]} == {"finetuned", "finetuned+fewshot"}
    runs = sorted(p.name for p in (cfg.work_dir / "runs").iterdir())
    assert len(runs) == 2 and runs[1].startswith("lora-fewshot-"), runs
    assert (cfg.work_dir / "runs" / runs[1] / CONTEXT_FILE).is_file()
    assert not (cfg.work_dir / "runs" / runs[0] / CONTEXT_FILE).exists()
    # Adding the variant kept the plain run's key: a rerun with variants [none] is all cached.
    plain_only = ["train.variants=[none]", "eval.candidates=[prompt,fewshot,finetuned]"]
    again = run_ladder(load_project(path, plain_only), quiet=True)
    assert {s.name: s.status for s in again.stages}["train-lora"] == "cached"


def test_listing_the_context_variant_without_training_it_is_one_clear_error(
    tmp_path, tiny_model_dir
):
    from test_workflow import make_project as ladder_project
    from test_workflow import write_cfg
    from tunewise.errors import UserError
    from tunewise.ladder.workflow import run_ladder

    root = ladder_project(tmp_path / "proj", n=24)
    path = write_cfg(root, tiny_model_dir)
    raw = yaml.safe_load(path.read_text())
    raw["eval"]["candidates"] = ["prompt", "finetuned", "finetuned+fewshot"]
    raw["gate"] = {"baselines": ["prompt"]}  # a gate baseline must be evaluated (config rule)
    path.write_text(yaml.safe_dump(raw))
    want = r"'finetuned\+fewshot'.* set train\.variants: \[none, fewshot\]$"
    with pytest.raises(UserError, match=want):
        run_ladder(load_project(path), quiet=True, dry_run=True)
    # trained (as the only variant, or beside plain LoRA), the listing is accepted
    for trained in ("train.context=fewshot", "train.variants=[none,fewshot]"):
        run_ladder(load_project(path, [trained]), quiet=True, dry_run=True)


def test_finetuned_fewshot_names_the_context_trained_runs_and_nothing_before_them(
    tmp_path, tiny_model_dir
):
    from tunewise.eval.harness import plan_candidates

    cfg = load_project(project(tmp_path, tiny_model_dir))
    listed = ["prompt", "finetuned+fewshot", "finetuned+fewshot+constrained"]
    assert plan_candidates(cfg, listed, {}) == ["prompt"]  # the baselines stage: no runs yet
    runs = {"finetuned-lora": tmp_path, "finetuned-lora+fewshot": tmp_path}
    assert plan_candidates(cfg, listed, runs) == [
        "prompt",
        "finetuned-lora+fewshot",
        "finetuned-lora",
        "finetuned-lora+fewshot+constrained",
    ]


def test_distractor_share_is_no_part_of_the_plain_runs_training_key(tmp_path, tiny_model_dir):
    from tunewise.baselines.context import training_key_inputs
    from tunewise.config import dump_project

    def key(context: str, share: float, selection: str = "similar") -> dict:
        path = project(tmp_path, tiny_model_dir, selection=selection)
        overrides = [f"train.context_distractor_share={share}"]
        return training_key_inputs(dump_project(load_project(path, overrides)), context)

    assert key("none", 0.3) == key("none", 0.0)
    assert "context_distractor_share" not in key("none", 0.3)["train"]
    assert key("fewshot", 0.3) != key("fewshot", 0.0)  # it shapes the context-trained rows
    # Random shots are now drawn from the prompt turns: runs trained on the old draw retrain.
    assert key("fewshot", 0.0, "random")["context"]["random_seed"] == "prompt-turns"
    assert "random_seed" not in key("fewshot", 0.0)["context"]


# --- the advisor ----------------------------------------------------------------------------------

# The banking run: every rung that shows examples beats the plain fine-tune.
BANKING = {"prompt": 0.0, "fewshot": 0.866, "rag": 0.852, "knn": 0.899, "finetuned": 0.624}


def _facts(metrics, *, contexts=None, better=None, rag_sources=("train",)):
    from tunewise.decide.advise import Facts

    methods = {c: "lora" for c in metrics if c.startswith("finetuned")}
    return Facts(
        primary_metric="accuracy",
        metrics=metrics,
        clearly_better=better or {},
        methods=methods,
        rag_sources=list(rag_sources),
        contexts=contexts or {},
    )


def test_advisor_points_a_losing_plain_fine_tune_to_the_context_trained_variant():
    from tunewise.decide.advise import recommend

    advice = recommend(_facts(BANKING))
    note = next(r for r in advice.reasons if "trails the rungs that show" in r)
    assert "finetuned, accuracy 0.624" in note
    assert "few-shot 0.866" in note and "RAG 0.852" in note
    assert "train.variants: [none, fewshot]" in note  # the better of the two rungs
    # RAG over documents only does not show examples: few-shot alone is named.
    docs_only = recommend(_facts(BANKING, rag_sources=("docs",)))
    note = next(r for r in docs_only.reasons if "trails the rungs" in r)
    assert "RAG" not in note.split("(")[2]


def test_advisor_reports_the_measured_context_variant_against_plain():
    from tunewise.decide.advise import recommend

    metrics = {**BANKING, "finetuned+fewshot": 0.93}
    advice = recommend(
        _facts(
            metrics,
            contexts={"finetuned+fewshot": "fewshot"},
            better={("finetuned+fewshot", "finetuned"): True},
        )
    )
    note = next(r for r in advice.reasons if "trails the rungs" in r)
    assert "context-trained finetuned+fewshot" in note
    assert "scores 0.930, clearly above the plain fine-tune's 0.624" in note
    assert "train.variants" not in note


def test_advisor_says_nothing_when_the_plain_fine_tune_keeps_up():
    from tunewise.decide.advise import recommend

    advice = recommend(_facts({**BANKING, "finetuned": 0.86}))
    assert not any("trails the rungs" in r for r in advice.reasons)


def test_vllm_export_warns_that_a_context_trained_adapter_needs_its_context(
    tmp_path, tiny_model_dir
):
    from _ship_helpers import make_run
    from tunewise.export.vllm import plan_vllm
    from tunewise.registry.store import Registry

    plain = make_run(tiny_model_dir, tmp_path / "plain", seed=1)
    ctx = make_run(tiny_model_dir, tmp_path / "ctx", seed=2)
    pool = [Example([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"}])]
    ContextBuilder(ContextSpec("fewshot", "Classify.", 2), pool).save(ctx / CONTEXT_FILE)
    reg = Registry()
    reg.add(plain, name="plain")
    reg.add(ctx, name="ctx")
    plan, _ = plan_vllm(["plain", "ctx"], registry=reg)
    about = [w for w in plan.warnings if "retrieved context" in w]
    assert len(about) == 1 and about[0].startswith("ctx (ctx:1)")
