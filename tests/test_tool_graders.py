"""Graders for function calls (#25 point 3): each scoring rule on hand examples, the benchmark's
slot F1 on a hand-computed case, a property test on random calls and garbage, the config rules for
tools tasks, `tunewise init` on tool-call data, and the report's whole-set argument figures."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tunewise.config import TOOL_METRICS, ProjectConfig, load_project
from tunewise.data.schema import Example
from tunewise.errors import UserError
from tunewise.eval import tool_graders
from tunewise.eval.graders import Grader
from tunewise.eval.report_tables import metric_rows
from tunewise.eval.results import CandidateResult, EvalRun, ItemResult
from tunewise.eval.stats import compare
from tunewise.eval.tool_graders import benchmark_slot_f1, micro_scores, slot_table, tool_scores
from tunewise.runtime.tool_calls import ToolCall, reply_text

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The forecast for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
PLAY = {
    "type": "function",
    "function": {
        "name": "play_music",
        "parameters": {"type": "object", "properties": {"artist": {"type": "string"}}},
    },
}
TOOLS = [WEATHER, PLAY]


def call(name: str, **args: Any) -> str:
    return ToolCall(name, args).to_text()


def calls(*blocks: str) -> str:
    return "\n".join(blocks)


PARIS = call("get_weather", city="Paris", days=3)
MUSIC = call("play_music", artist="Nina Simone")


def scores_of(output: str, target: str, tools: list[dict[str, Any]] = TOOLS) -> dict[str, float]:
    return tool_scores(output, target, tools)[0]


# --- each scoring rule ------------------------------------------------------------------------


def test_key_order_is_ignored():
    swapped = '<tool_call>{"arguments": {"days": 3, "city": "Paris"}, "name": "get_weather"}'
    s = scores_of(swapped + "</tool_call>", PARIS)
    assert s["call_accuracy"] == s["name_accuracy"] == s["arg_f1"] == 1.0
    assert s["call_schema_valid"] == 1.0 and s["missed_call"] == 0.0


def test_call_order_is_ignored():
    s = scores_of(calls(MUSIC, PARIS), calls(PARIS, MUSIC))
    assert s["call_accuracy"] == 1.0 and s["name_accuracy"] == 1.0


def test_a_string_three_is_not_the_number_three():
    s, meta = tool_scores(call("get_weather", city="Paris", days="3"), PARIS, TOOLS)
    assert s["call_accuracy"] == 0.0
    assert s["name_accuracy"] == 1.0  # the right function, a wrong argument
    assert (s["arg_precision"], s["arg_recall"], s["arg_f1"]) == (0.5, 0.5, 0.5)
    assert s["call_schema_valid"] == 0.0  # days is an integer
    assert meta[tool_graders.ARGS_META] == {"tp": 1, "fp": 1, "fn": 1}
    assert meta[tool_graders.SLOTS_META] == [
        ["get_weather", "city", 1, 0, 0],
        ["get_weather", "days", 0, 1, 1],
    ]


def test_an_extra_call_is_wrong():
    s = scores_of(calls(PARIS, MUSIC), PARIS)
    assert s["call_accuracy"] == 0.0 and s["name_accuracy"] == 0.0
    assert s["arg_recall"] == 1.0 and s["arg_precision"] == pytest.approx(2 / 3)
    assert s["missed_call"] == 0.0 and math.isnan(s["wrong_call"])  # the reference calls


def test_a_missing_call_is_wrong():
    s = scores_of(PARIS, calls(PARIS, MUSIC))
    assert s["call_accuracy"] == 0.0 and s["name_accuracy"] == 0.0
    assert s["arg_precision"] == 1.0 and s["arg_recall"] == pytest.approx(2 / 3)


def test_repeated_calls_count_as_a_multiset():
    twice = calls(PARIS, PARIS)
    assert scores_of(PARIS, twice)["call_accuracy"] == 0.0
    assert scores_of(twice, twice)["call_accuracy"] == 1.0


def test_plain_text_reference_against_a_call_and_against_text():
    plain = "Sorry, I can only tell the weather and play music."
    called = scores_of(PARIS, plain)
    assert called["call_accuracy"] == 0.0 and called["wrong_call"] == 1.0
    assert math.isnan(called["missed_call"])  # nothing was due
    assert called["arg_precision"] == 0.0 and called["arg_recall"] == 1.0
    quiet = scores_of("I cannot do that, sorry.", plain)
    assert quiet["call_accuracy"] == 1.0 and quiet["name_accuracy"] == 1.0
    assert quiet["wrong_call"] == 0.0 and quiet["arg_f1"] == 1.0
    assert quiet["call_schema_valid"] == 1.0  # no call emitted: nothing malformed
    missed = scores_of("It will be sunny.", PARIS)
    assert missed["missed_call"] == 1.0 and missed["call_accuracy"] == 0.0
    assert missed["call_schema_valid"] == 1.0 and missed["arg_recall"] == 0.0


def test_text_beside_the_calls_is_not_graded():
    ref = reply_text("Let me check.", [ToolCall("get_weather", {"city": "Paris", "days": 3})])
    assert scores_of("Checking now.\n" + PARIS, ref)["call_accuracy"] == 1.0


def test_a_malformed_block_is_never_right():
    s, meta = tool_scores(calls(PARIS, "<tool_call>{not json</tool_call>"), PARIS, TOOLS)
    assert s["call_parse_errors"] == 1.0
    assert s["call_accuracy"] == s["name_accuracy"] == s["call_schema_valid"] == 0.0
    assert s["arg_f1"] == 1.0  # the readable call's arguments are all right
    assert "not JSON" in meta["call_problems"][0]
    only_bad = scores_of("<tool_call>{not json</tool_call>", PARIS)
    assert only_bad["arg_precision"] == 0.0  # claimed something it could not say
    assert only_bad["missed_call"] == 1.0  # no readable call
    tried = scores_of('<tool_call>{"name": 3}</tool_call>', "No function fits.")
    assert tried["wrong_call"] == 1.0 and tried["call_accuracy"] == 0.0


def test_a_block_too_deep_or_too_long_for_json_is_a_parse_error_not_a_crash():
    for garbage in ("<tool_call>" + "[" * 50_000, "<tool_call>" + "1" * 5_000 + "</tool_call>"):
        s = scores_of(garbage, PARIS)
        assert s["call_parse_errors"] == 1.0 and s["call_accuracy"] == 0.0


def test_schema_violations_and_unknown_functions():
    extra = call("get_weather", city="Paris", days=3, unit="C")  # additionalProperties: false
    assert scores_of(extra, PARIS)["call_schema_valid"] == 0.0
    assert scores_of(call("get_weather", days=3), PARIS)["call_schema_valid"] == 0.0  # required
    unknown = scores_of(call("book_flight", city="Paris"), PARIS)
    assert unknown["call_schema_valid"] == 0.0 and unknown["name_accuracy"] == 0.0
    # bare function schemas (no {"type": "function"} wrapper) are read too
    bare = [WEATHER["function"]]
    assert scores_of(PARIS, PARIS, bare)["call_schema_valid"] == 1.0
    # with no tools given there is no schema to break: a well-formed call is valid
    assert scores_of(call("book_flight"), PARIS, [])["call_schema_valid"] == 1.0


def test_a_broken_tool_schema_is_one_line_naming_the_function_and_line():
    broken = [{"type": "function", "function": {"name": "f", "parameters": {"type": 12}}}]
    with pytest.raises(UserError, match="function 'f': its parameters are not a valid JSON"):
        tool_scores(call("f", x=1), call("f", x=1), broken)
    example = tools_example(call("f", x=1), broken, source="val.jsonl", line=7)
    with pytest.raises(UserError) as err:
        Grader(tools_cfg()).grade(call("f", x=1), example)
    assert str(err.value).startswith("val.jsonl:7: function 'f'") and "\n" not in str(err.value)


# --- aggregates ---------------------------------------------------------------------------------


def test_benchmark_slot_f1_by_hand():
    # Three items. city: due 3, tp 2, fp 1 (a wrong value) -> P 2/3, R 2/3, F1 2/3.
    # days: due 1, tp 0, fp 0 -> F1 0. artist: due 2, tp 2, fp 1 (a made-up one) -> P 2/3, R 1,
    # F1 0.8. Only predicted (unit): weighs nothing. Weighted: (3*2/3 + 1*0 + 2*0.8) / 6 = 0.6.
    items = [
        (call("get_weather", city="Paris"), call("get_weather", city="Paris", days=2)),
        (call("get_weather", city="Rome", unit="C"), call("get_weather", city="Oslo")),
        (
            calls(call("get_weather", city="Lima"), call("play_music", artist="A")),
            calls(call("get_weather", city="Lima"), call("play_music", artist="A")),
        ),
        (
            call("play_music", artist="B") + call("play_music", artist="C"),
            call("play_music", artist="B"),
        ),
    ]
    metas = [tool_scores(out, ref, TOOLS)[1] for out, ref in items]
    table = slot_table(metas)
    assert table[("get_weather", "city")] == (2, 1, 1)
    assert table[("get_weather", "days")] == (0, 0, 1)
    assert table[("play_music", "artist")] == (2, 1, 0)
    assert table[("get_weather", "unit")] == (0, 1, 0)
    # city: P 2/3 R 2/3 F1 2/3 (due 3); days: F1 0 (due 1); artist: P 2/3 R 1 F1 0.8 (due 2)
    assert benchmark_slot_f1(metas) == pytest.approx((3 * 2 / 3 + 0 + 2 * 0.8) / 6)
    # micro over every triple: tp 4, fp 3, fn 2
    micro = micro_scores(metas)
    assert micro == pytest.approx({"precision": 4 / 7, "recall": 4 / 6, "f1": 8 / 13})


def test_aggregates_of_items_without_counts():
    assert micro_scores([{}, {"prompt": "x"}]) is None
    assert benchmark_slot_f1([{}]) is None
    no_slots = [tool_scores("hello", "hi", TOOLS)[1]]
    assert micro_scores(no_slots) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert benchmark_slot_f1(no_slots) is None  # no reference slot: nothing to weigh


# --- never raises, always in [0, 1] -------------------------------------------------------------

NAMES = st.sampled_from(["get_weather", "play_music", "book_flight", "x"])
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.floats(allow_nan=False)
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
CALLS = st.builds(
    ToolCall,
    NAMES,
    st.dictionaries(st.sampled_from(["city", "days", "artist", "q"]), JSON_VALUES, max_size=3),
)
GARBAGE = st.sampled_from(
    ["<tool_call>", "</tool_call>", "<tool_call>{", '{"name": 1}', "{}", "[", "null", '"', "\n"]
)


@st.composite
def answers(draw: st.DrawFn) -> str:
    parts = draw(
        st.lists(st.one_of(CALLS.map(ToolCall.to_text), GARBAGE, st.text(max_size=20)), max_size=5)
    )
    return "".join(parts) if draw(st.booleans()) else "\n".join(parts)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    output=answers(),
    target=st.one_of(
        st.lists(CALLS, max_size=3).map(lambda c: reply_text("", c)), st.text(max_size=30)
    ),
    tools=st.sampled_from([TOOLS, [], [WEATHER["function"]]]),
)
def test_graders_never_raise_and_stay_in_range(output, target, tools):
    s, meta = tool_scores(output, target, tools)
    assert set(s) == set(TOOL_METRICS)
    for metric, value in s.items():
        if math.isnan(value):
            assert metric in tool_graders.WHERE_APPLICABLE, metric
        else:
            assert 0.0 <= value <= 1.0, (metric, value)
    assert math.isnan(s["wrong_call"]) != math.isnan(s["missed_call"])  # exactly one applies
    counts = meta[tool_graders.ARGS_META]
    assert min(counts.values()) >= 0
    assert sum(r[2] for r in meta[tool_graders.SLOTS_META]) == counts["tp"]
    itself = tool_scores(target, target, tools)[0]["call_accuracy"]
    assert itself == (0.0 if tool_graders.read_calls(target).problems else 1.0)
    for agg in (micro_scores([meta]), {"f1": benchmark_slot_f1([meta]) or 0.0}):
        assert all(0.0 <= v <= 1.0 for v in (agg or {}).values())


# --- the Grader on a tools task -----------------------------------------------------------------


def tools_cfg(**eval_: Any) -> ProjectConfig:
    raw: dict[str, Any] = {
        "name": "t",
        "data": {"train": "train.jsonl"},
        "task": {"type": "tools"},
        "root": Path("/tmp"),
    }
    if eval_:
        raw["eval"] = eval_
    return ProjectConfig.model_validate(raw)


def tools_example(target: str, tools: list[dict[str, Any]] | None = None, **kw: Any) -> Example:
    meta = {"tools": tools} if tools else {}
    msgs = [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": target},
    ]
    return Example(messages=msgs, meta=meta, **kw)


def test_grader_scores_calls_on_a_tools_task_by_default():
    cfg = tools_cfg()
    assert cfg.eval.graders == ["tools", "format"] and cfg.eval.primary_metric == "call_accuracy"
    grader = Grader(cfg)
    bad = call("get_weather", city="Paris", days="3")
    scores, gold, pred, meta = grader.grade(bad, tools_example(PARIS, TOOLS))
    assert scores["call_accuracy"] == 0.0 and scores["name_accuracy"] == 1.0
    assert scores["format_compliance"] == scores["call_schema_valid"] == 0.0  # the format guard
    assert "accuracy" not in scores  # exact match under another name: not on a tools task
    assert gold is None and pred is None
    assert meta[tool_graders.ARGS_META] == {"tp": 1, "fp": 1, "fn": 1}


def test_grader_uses_the_project_tools_when_the_line_has_none():
    cfg = tools_cfg()
    cfg.task.tools = [PLAY]
    s, *_ = Grader(cfg).grade(PARIS, tools_example(PARIS))
    assert s["call_schema_valid"] == 0.0  # get_weather is not among the project's tools
    s, *_ = Grader(cfg).grade(PARIS, tools_example(PARIS, [WEATHER]))
    assert s["call_schema_valid"] == 1.0  # the line's own tools take precedence


def test_the_tools_grader_works_beside_json_on_a_json_task():
    cfg = ProjectConfig.model_validate(
        {
            "name": "t",
            "data": {"train": "train.jsonl"},
            "task": {"type": "json"},
            "eval": {"graders": ["json", "tools"]},
            "root": Path("/tmp"),
        }
    )
    s, *_ = Grader(cfg).grade(PARIS, tools_example(PARIS, TOOLS))
    assert s["call_accuracy"] == 1.0 and "json_valid" in s


# --- config rules -------------------------------------------------------------------------------


def _project(tmp_path: Path, task: dict[str, Any], eval_: dict[str, Any] | None = None) -> Path:
    raw: dict[str, Any] = {"name": "tools", "data": {"train": "train.jsonl"}, "task": task}
    if eval_ is not None:
        raw["eval"] = eval_
    path = tmp_path / "project.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_tools_task_defaults_to_call_accuracy_but_keeps_what_the_file_says(tmp_path):
    cfg = load_project(_project(tmp_path, {"type": "tools"}))
    assert cfg.eval.graders == ["tools", "format"]
    assert cfg.eval.primary_metric == "call_accuracy"
    given = load_project(
        _project(tmp_path, {"type": "tools"}, {"graders": ["tools"], "primary_metric": "arg_f1"})
    )
    assert given.eval.graders == ["tools"] and given.eval.primary_metric == "arg_f1"
    # a labels task keeps its defaults
    assert load_project(_project(tmp_path, {"type": "labels"})).eval.primary_metric == "accuracy"


TOOLS_TASK = {"type": "tools"}
REFUSED = [
    (TOOLS_TASK, {"primary_metric": "accuracy"}, "eval.primary_metric: 'accuracy' is not"),
    (TOOLS_TASK, {"primary_metric": "macro_f1"}, "eval.primary_metric: 'macro_f1' is not"),
    (TOOLS_TASK, {"primary_metric": "wrong_call"}, "eval.primary_metric: 'wrong_call' is an"),
    (TOOLS_TASK, {"graders": ["tools", "label"]}, "eval.graders: 'label' does not fit task"),
    (TOOLS_TASK, {"graders": ["json"]}, "eval.graders: 'json' does not fit task.type tools"),
    (
        {"type": "labels"},
        {"primary_metric": "call_accuracy"},
        "eval.primary_metric: 'call_accuracy' needs the tools grader",
    ),
]


@pytest.mark.parametrize(("task", "eval_", "starts"), REFUSED)
def test_tools_rules_refuse_in_one_line(tmp_path, task, eval_, starts):
    path = _project(tmp_path, task, eval_)
    with pytest.raises(UserError) as err:
        load_project(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: {starts}"), msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    ("task", "eval_"),
    [
        ({"type": "tools"}, {"primary_metric": "name_accuracy"}),
        ({"type": "tools"}, {"primary_metric": "format_compliance"}),
        ({"type": "tools"}, {"graders": ["exact", "format"], "primary_metric": "call_accuracy"}),
        ({"type": "labels"}, {"graders": ["label", "tools"], "primary_metric": "arg_f1"}),
    ],
)
def test_tools_settings_that_work_load(tmp_path, task, eval_):
    load_project(_project(tmp_path, task, eval_))


# --- tunewise init --------------------------------------------------------------------------------


def _tools_line(i: int, tools: list[dict[str, Any]] | None) -> dict[str, Any]:
    city = ["Paris", "Rome", "Oslo"][i % 3]
    answer: dict[str, Any]
    if i % 5 == 4:  # a request no function fits: a plain answer
        answer = {"role": "assistant", "content": "I can only check the weather."}
    else:
        args = json.dumps({"city": city, "days": i % 4 + 1})
        answer = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": f"call_{i}",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": args},
                }
            ],
        }
    line: dict[str, Any] = {
        "messages": [{"role": "user", "content": f"weather in {city} for request {i}?"}, answer]
    }
    if tools is not None:
        line["tools"] = tools
    return line


def _write_lines(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


@pytest.fixture
def no_cost_estimate(monkeypatch):
    from tunewise.ladder import init as init_mod

    monkeypatch.setattr(init_mod, "_cost_notes", lambda cfg, ex: init_mod.CostEstimate([]))


def test_init_infers_a_tools_task_with_the_shared_tools(tmp_path, no_cost_estimate):
    from tunewise.cli import app

    data = _write_lines(tmp_path / "calls.jsonl", [_tools_line(i, [WEATHER]) for i in range(30)])
    result = CliRunner().invoke(app, ["init", str(data)])
    assert result.exit_code == 0, result.output
    cfg = load_project(tmp_path / "project.yaml")
    assert cfg.task.type == "tools"
    assert cfg.task.tools == [WEATHER]
    assert cfg.eval.primary_metric == "call_accuracy"
    assert cfg.eval.graders == ["tools", "format"]
    assert "24 of 30 answers call a function (get_weather 24), the others" in result.output
    assert "task.tools: the functions every line lists (get_weather)" in result.output


def test_init_leaves_differing_tools_per_line_and_says_when_there_are_none(
    tmp_path, no_cost_estimate
):
    from tunewise.ladder.init import init_project

    lines = [_tools_line(i, [WEATHER] if i % 2 else [WEATHER, PLAY]) for i in range(30)]
    path, notes = init_project(_write_lines(tmp_path / "mixed.jsonl", lines))
    raw = yaml.safe_load(path.read_text())
    assert raw["task"]["type"] == "tools" and "tools" not in raw["task"]
    assert any("each line keeps its own" in n for n in notes)

    bare = [_tools_line(i, None) for i in range(30)]
    out = tmp_path / "bare"
    path, notes = init_project(_write_lines(tmp_path / "bare.jsonl", bare), out=out)
    assert yaml.safe_load(path.read_text())["task"]["type"] == "tools"
    assert any("no tools in the data: set task.tools" in n for n in notes)


# --- the report ---------------------------------------------------------------------------------


def _tools_run() -> EvalRun:
    """Four candidates graded by the real Grader on 30 items, 6 of which need no call."""
    grader = Grader(tools_cfg())
    refs = [
        tools_example(
            "No function fits." if i % 5 == 0 else call("get_weather", city=f"c{i}"), TOOLS
        )
        for i in range(30)
    ]

    def answer(name: str, i: int) -> str:
        if name == "finetuned":
            return refs[i].target
        if i % 5 == 0:  # nothing due: the prompt calls anyway, the others answer in text
            return call("get_weather", city="x") if name == "prompt" else "No function fits."
        return call("get_weather", city=f"c{i}" if i % 3 else "wrong")

    cands = []
    for name in ("prompt", "fewshot", "rag", "finetuned"):
        items = []
        for i, ex in enumerate(refs):
            out = answer(name, i)
            scores, gold, pred, meta = grader.grade(out, ex)
            items.append(ItemResult(f"i{i}", out, scores, gold, pred, meta))
        cands.append(CandidateResult(name=name, kind=name, items=items))
    return EvalRun("tools", "val", "h", "call_accuracy", [f"i{i}" for i in range(30)], cands)


def test_report_shows_whole_set_argument_figures_and_no_unparsed_note(tmp_path):
    from tunewise.decide.report_inputs import render_report

    d = tmp_path / "eval"
    run = _tools_run()
    run.save(d / "eval.json")
    html, md = (p.read_text() for p in render_report(d))
    metas = [it.meta for it in run.candidate("finetuned").items]
    assert benchmark_slot_f1(metas) == 1.0
    assert "finetuned: micro P 1.000 R 1.000 F1 1.000, slot F1 (benchmark) 1.000" in md
    assert "slot F1 (benchmark)" in html and "the 2017 NLU benchmark" in html
    # wrong_call and missed_call are NaN where they do not apply: not "unparsed" answers
    assert "wrong_call unparsed" not in md and "missed_call unparsed" not in md
    # the gate and the paired tests decide on call_accuracy as on any 0/1 metric
    assert "SHIP finetuned: beats prompt, fewshot, rag on call\\_accuracy" in md


def test_the_best_error_rate_is_the_lowest():
    run = _tools_run()
    comp = compare(run, baselines=["prompt"], pairs=[], n_boot=200)
    names = [c.name for c in run.candidates]
    metrics = ["call_accuracy", "wrong_call"]
    rows = metric_rows(comp, names, metrics, ["prompt"], {n: "#000" for n in names})
    best = {
        m: [r["name"] for r in rows if r["cells"][j] and r["cells"][j]["best"]]
        for j, m in enumerate(metrics)
    }
    assert best["call_accuracy"] == ["finetuned"]
    # prompt calls on every item that needed no call (wrong_call 1.0): the worst, not the best
    assert set(best["wrong_call"]) == {"fewshot", "rag", "finetuned"}
