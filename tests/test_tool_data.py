"""Function-call data (#25 point 1): every bad tools/calls input is a ``file:line: field`` error
with exit 2, ``data check`` sees calls as calls, and ``data convert --from snips`` writes
tool-call examples (on a tiny SNIPS-shaped folder always, on ``../shared``'s SNIPS when present).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tunewise.cli import _Group, data_cmd
from tunewise.data.checks import check_examples
from tunewise.data.convert_snips import convert_snips, function_name
from tunewise.data.dedup import near_duplicate_clusters, normalize
from tunewise.data.schema import load_examples, parse_jsonl
from tunewise.errors import DataError, UserError

runner = CliRunner()
app = typer.Typer(cls=_Group, pretty_exceptions_enable=False, add_completion=False)
data_cmd.register(app)  # only the data verbs: the full command tree costs 0.15 s per call

SNIPS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "snips"
CESU8_PIZZA = "\ud83c\udf55".encode("utf-8", "surrogatepass")  # U+1F355 as two 3-byte halves

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {"name": "get_time", "parameters": {"type": "object", "properties": {}}}  # bare shape


def call(name: str = "get_weather", args: object = '{"city": "Paris"}', cid: str = "c1") -> dict:
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}


def line(
    calls: list | None = None,
    tools: object = None,
    user: str = "Weather in Paris?",
    answer_id: str | None = "c1",
) -> dict:
    """A user turn, an assistant call turn, the tool's answer, a final text turn."""
    calls = [call()] if calls is None else calls
    msgs: list[dict] = [
        {"role": "user", "content": user},
        {"role": "assistant", "content": None, "tool_calls": calls},
    ]
    if answer_id is not None:
        msgs += [
            {"role": "tool", "tool_call_id": answer_id, "content": "12 degrees"},
            {"role": "assistant", "content": "It is 12 degrees."},
        ]
    out: dict = {"messages": msgs}
    if tools is not None:
        out["tools"] = tools
    return out


def one_call(user: str, name: str, args: dict, tools: object = None) -> dict:
    """A line whose answer is one call (SNIPS's shape)."""
    rec = line([call(name, json.dumps(args))], tools=tools, user=user, answer_id=None)
    return rec


GOOD = line(tools=[WEATHER, TIME])
NO_CALL = {  # a turn that must NOT call a tool
    "tools": [WEATHER],
    "messages": [
        {"role": "user", "content": "Tell me a joke"},
        {"role": "assistant", "content": "Why did the chicken cross the road?"},
    ],
}


def write(tmp_path: Path, rows: list, name: str = "tools.jsonl") -> Path:
    path = tmp_path / name
    path.write_text(
        "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n",
        encoding="utf-8",
    )
    return path


def check(path: Path, *extra: str):
    return runner.invoke(app, ["data", "check", str(path), "--max-len", "4096", *extra])


def report_of(path: Path, tools: list | None = None):
    """``data check``'s report without token lengths (no tokenizer to load)."""
    examples, problems = parse_jsonl(path, tools)
    return check_examples(examples, errors=problems, path=str(path), tools=tools)


# ---------------------------------------------------------------- every bad input: file:line:field

ARGS = "messages[1].tool_calls[0].function.arguments"
NAME = "messages[1].tool_calls[0].function.name"
BAD_CASES = {
    "arguments_not_json": (line([call(args="{city: Paris}")], [WEATHER]), ARGS, "not valid JSON"),
    "arguments_not_object": (
        line([call(args="[1, 2]")], [WEATHER]),
        ARGS,
        "expected a JSON object, got list",
    ),
    "function_not_in_tools": (
        line([call(name="get_wether")], [WEATHER, TIME]),
        NAME,
        "'get_wether' is not one of the tools (get_time, get_weather); did you mean 'get_weather'",
    ),
    "arguments_wrong_type": (
        line([call(args='{"city": 3}')], [WEATHER]),
        ARGS,
        "do not fit the parameters of 'get_weather': $.city: 3 is not of type 'string'",
    ),
    "arguments_missing_required": (
        line([call(args='{"days": 2}')], [WEATHER]),
        ARGS,
        "$: 'city' is a required property",
    ),
    "arguments_unknown_key": (
        line([call(args='{"city": "Paris", "town": "x"}')], [WEATHER]),
        ARGS,
        "Additional properties are not allowed ('town' was unexpected)",
    ),
    "tool_answers_no_call": (
        line(tools=[WEATHER], answer_id="c9"),
        "messages[2].tool_call_id",
        "'c9' answers no earlier call (the calls so far: 'c1')",
    ),
    "duplicate_call_ids": (
        line([call(), call(args='{"city": "Rome"}')], [WEATHER]),
        "messages[1].tool_calls[1].id",
        "'c1' is also the id of tool_calls[0] in this turn",
    ),
    "tools_not_a_list": (
        line(tools={"get_weather": WEATHER}),
        "tools",
        "expected a list of tool schemas, got dict",
    ),
    "tool_without_name": (
        line(tools=[WEATHER, {"type": "function", "function": {"parameters": {}}}]),
        "tools[1].function.name",
        "expected the function's name, got None",
    ),
    "tool_not_an_object": (line(tools=[WEATHER, "get_time"]), "tools[1]", "expected a tool schema"),
    "parameters_not_json_schema": (
        line(tools=[{"name": "get_weather", "parameters": {"type": "strng"}}]),
        "tools[0].parameters",
        "not a valid JSON Schema at $.type:",
    ),
    "parameters_bad_regex": (
        line(
            tools=[{"name": "get_weather", "parameters": {"properties": {"c": {"pattern": "("}}}}]
        ),
        "tools[0].parameters",
        "not a valid JSON Schema at $.properties.c.pattern",
    ),
    "parameters_not_an_object_schema": (
        line(tools=[{"name": "get_weather", "parameters": {"type": "string"}}]),
        "tools[0].parameters",
        "the schema's type must be 'object', got 'string'",
    ),
    "parameters_remote_ref": (
        line(tools=[{"name": "get_weather", "parameters": {"$ref": "https://example.com/s"}}]),
        "tools[0].parameters",
        "points outside the schema; tunewise never fetches schemas",
    ),
    "tool_name_twice": (
        line(tools=[WEATHER, WEATHER]),
        "tools[1].function.name",
        "'get_weather' is defined twice (also tools[0])",
    ),
    "call_type_not_function": (
        line([{**call(), "type": "retrieval"}], [WEATHER]),
        "messages[1].tool_calls[0].type",
        "expected 'function', got 'retrieval'",
    ),
    "calls_on_a_user_turn": (
        {
            "tools": [WEATHER],
            "messages": [
                {"role": "user", "content": "hi", "tool_calls": [call()]},
                {"role": "assistant", "content": "hello"},
            ],
        },
        "messages[0].tool_calls",
        "only an assistant turn calls tools, not 'user'",
    ),
}


@pytest.mark.parametrize("kind", sorted(BAD_CASES))
def test_each_bad_tool_input_names_file_line_field_and_exits_2(tmp_path: Path, kind: str) -> None:
    bad, fld, fragment = BAD_CASES[kind]
    path = write(tmp_path, [GOOD, "", bad, NO_CALL])
    result = check(path)
    assert result.exit_code == 2, result.output
    expected = f"{path}:3: {fld}: "
    found = [ln for ln in result.output.splitlines() if ln.startswith(expected)]
    assert found, result.output
    assert fragment in found[0], found[0]
    assert "Traceback" not in result.output


def test_a_remote_ref_is_never_fetched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # jsonschema's default would fetch it over HTTP; a $ref in a nested $id'd schema reaches the
    # validator, which must refuse to retrieve it and report it on the call
    import urllib.request

    def no_network(*_a, **_k):
        raise AssertionError("the network was used")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    params = {"$id": "https://a.example/s", "properties": {"c": {"$ref": "https://b.example/x"}}}
    bad = line([call(args='{"c": 1}')], [{"name": "get_weather", "parameters": params}])
    examples, problems = parse_jsonl(write(tmp_path, [bad]))
    assert examples == []
    assert [str(p) for p in problems] == [
        f"{tmp_path / 'tools.jsonl'}:1: {ARGS}: do not fit the parameters of 'get_weather': the "
        "schema cannot be applied (_WrappedReferencingError: Unresolvable: https://b.example/x)"
    ]


def test_project_tools_name_the_functions_of_lines_without_their_own(tmp_path: Path) -> None:
    tools_file = tmp_path / "tools.json"
    tools_file.write_text(json.dumps({"tools": [WEATHER]}))
    path = write(tmp_path, [line(), line([call(name="get_time")])], name="data.jsonl")
    result = check(path, "--tools", str(tools_file))
    assert result.exit_code == 2, result.output
    assert f"{path}:2: {NAME}: 'get_time' is not one of the tools (get_weather)" in result.output
    # load_examples (the ladder's loader) raises the first one with task.tools
    with pytest.raises(DataError) as err:
        load_examples(path, tools=[WEATHER])
    assert (err.value.line, err.value.field) == (2, NAME)
    # a line's own tools take precedence over the project's
    own = write(tmp_path, [line([call(name="get_time")], tools=[TIME])], name="own.jsonl")
    assert check(own, "--tools", str(tools_file)).exit_code == 0


def test_a_bad_tools_file_is_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, [line()], name="data.jsonl")
    tools_file = tmp_path / "tools.json"
    tools_file.write_text(json.dumps([WEATHER, {"name": "x", "parameters": {"type": 5}}, 3]))
    result = check(path, "--tools", str(tools_file))
    assert result.exit_code == 2, result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert errors == [
        f"error: {tools_file}: tools[1].parameters: not a valid JSON Schema at $.type: 5 is not "
        "valid under any of the given schemas (and 1 more)"
    ]
    tools_file.write_text("[{")
    result = check(path, "--tools", str(tools_file))
    assert result.exit_code == 2 and "not valid JSON" in result.output, result.output


# ---------------------------------------------------------------- what data check says of calls


def test_valid_tool_lines_pass_and_the_format_is_named_as_calls(tmp_path: Path) -> None:
    two_calls = line(
        [call(), call(args='{"city": "Rome", "days": 2}', cid="c2")],
        tools=[WEATHER],
        user="Paris and Rome?",
        answer_id=None,
    )
    rows = [GOOD, NO_CALL, two_calls, one_call("time?", "get_time", {}, [WEATHER, TIME])]
    path = write(tmp_path, rows)
    result = check(path)
    assert result.exit_code == 0, result.output
    assert "tools: 2 functions, 2 lines call, 2 lines answer in text" in result.output
    report = report_of(path)
    assert report.format is None  # no guessed text/json format
    assert report.stats["tools"] == {"functions": 2, "calling": 2, "text": 2, "calls": 3}
    assert report.stats["labels"]["call"] == {"get_weather": 2, "(text)": 2, "get_time": 1}


def test_calls_without_any_tools_are_a_warning_not_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, [line(answer_id=None), {"messages": NO_CALL["messages"]}])
    result = check(path, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    unknown = [w for w in report["warnings"] if w["kind"] == "tools_unknown"]
    assert len(unknown) == 1 and unknown[0]["lines"] == [1]
    assert "tools: none given, 1 lines call, 1 lines answer in text" in check(path).output


def _findings(rows: list[dict], tmp_path: Path) -> dict:
    report = report_of(write(tmp_path, rows))
    assert report.errors == []
    return {w.kind: w for w in report.warnings}


def test_same_request_with_another_call_is_a_conflict(tmp_path: Path) -> None:
    tools = [WEATHER]
    rows = [
        one_call("Weather in Paris?", "get_weather", {"city": "Paris"}, tools),
        one_call("weather in paris", "get_weather", {"city": "Lyon"}, tools),
        one_call("Weather for Rome tomorrow", "get_weather", {"city": "Rome", "days": 1}, tools),
        one_call("weather for rome tomorrow!", "get_weather", {"days": 1, "city": "Rome"}, tools),
    ]
    found = _findings(rows, tmp_path)
    # Paris vs Lyon: the same request, two calls. Rome: the same call, keys in another order.
    assert found["conflict"].lines == [1, 2]
    assert len(found["conflict"].details["groups"]) == 1


def test_the_same_call_in_another_key_order_is_an_exact_duplicate(tmp_path: Path) -> None:
    tools = [WEATHER]
    rows = [
        one_call("Weather for Rome?", "get_weather", {"city": "Rome", "days": 1}, tools),
        one_call("Weather for Rome?", "get_weather", {"days": 1, "city": "Rome"}, tools),
        one_call("Weather for Rome?", "get_weather", {"days": 1, "city": "Rome"}, [WEATHER, TIME]),
    ]
    found = _findings(rows, tmp_path)
    assert found["exact_duplicate"].details["groups"] == [[1, 2]]  # other tools: another example
    assert "conflict" not in found


def test_shared_tools_do_not_make_every_example_a_near_duplicate(tmp_path: Path) -> None:
    big = [
        {"name": f"tool_{k}", "description": "does thing number " * 20, "parameters": {}}
        for k in range(10)
    ]
    queries = ["Weather in Paris?", "Book a table for two", "Play some jazz", "Rate this book 5"]
    rows = [one_call(q, "tool_1", {}, big) for q in queries]
    found = _findings(rows, tmp_path)
    assert "near_duplicate" not in found
    assert (
        "tools: 10 functions, 4 lines call, 0 lines answer in text"
        in check(write(tmp_path, rows)).output
    )


def test_near_duplicates_compare_calls_not_their_json() -> None:
    a = 'Paris?\n<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}'
    b = 'Paris?\n<tool_call>{"name": "get_weather", "arguments": {"days": 2, "city": "Paris"}}'
    c = 'Paris?\n<tool_call>{"name": "book_table", "arguments": {"city": "Paris", "people": 2}}'
    assert normalize(a + "</tool_call>") == normalize(b + "</tool_call>")
    assert normalize(a + "</tool_call>") == "paris call_get_weather city_paris days_2"
    assert near_duplicate_clusters([a, b, c]) == [0, 0, 2]


def test_token_lengths_count_the_tools_as_the_model_sees_them(tmp_path: Path, real_model) -> None:
    from tunewise.runtime import chat, models

    tok = models.load_tokenizer(real_model)
    examples, _ = parse_jsonl(write(tmp_path, [GOOD]))
    report = check_examples(examples, tokenizer=tok, max_len=64)
    expected = chat.render_for_count(tok, examples[0].with_system("").messages)
    assert "get_weather" in expected and "<tools>" in expected  # SmolLM2: the fallback prompt
    assert report.stats["tokens"]["max"] == len(tok(expected, add_special_tokens=False).input_ids)
    assert "too_long" in {w.kind for w in report.warnings}


# ---------------------------------------------------------------- SNIPS conversion


def _query(*pieces: tuple[str, str | None]) -> dict:
    return {"data": [{"text": t, **({"entity": e} if e else {})} for t, e in pieces]}


@pytest.fixture
def tiny_snips(tmp_path: Path) -> Path:
    """Two intents, five queries each, a slot named twice, and one CESU-8 emoji."""
    root = tmp_path / "snips"
    root.mkdir()
    playlist = [
        _query(("add ", None), (f"song {i}", "entity_name"), (" to ", None), ("jazz", "playlist"))
        for i in range(4)
    ]
    playlist.append(
        _query(("add ", None), ("a", "entity_name"), (" and ", None), ("b", "entity_name"))
    )
    weather = [_query(("weather in ", None), (f"city {i}", "city")) for i in range(4)]
    weather.append(_query(("weather ", None), ("XX", "condition_description")))
    (root / "train_AddToPlaylist_full.json").write_text(json.dumps({"AddToPlaylist": playlist}))
    raw = json.dumps({"GetWeather": weather}, indent=1).encode().replace(b"XX", CESU8_PIZZA)
    (root / "train_GetWeather_full.json").write_bytes(raw)
    (root / "README.md").write_text("not data")
    return root


def _rows(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines()]


def test_snips_folder_becomes_one_tool_per_intent(tiny_snips: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "snips.jsonl"
    result = runner.invoke(
        app, ["data", "convert", str(tiny_snips), str(out), "--from", "snips", "--errors", "cesu8"]
    )
    assert result.exit_code == 0, result.output
    assert "wrote 10 example(s) calling 2 tool(s)" in result.output
    assert "1 quer(ies) name a slot twice: the first value is kept" in result.output
    rows = _rows(out)
    assert rows[0]["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "add_to_playlist",
                "description": "Add a song, an artist or an album to a playlist.",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "entity_name": {"type": "string"},
                        "playlist": {"type": "string"},
                    },
                    "additionalProperties": False,
                },
            },
        },
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Get the weather forecast for a place and a time.",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "city": {"type": "string"},
                        "condition_description": {"type": "string"},
                    },
                    "additionalProperties": False,
                },
            },
        },
    ]
    by_query = {r["messages"][0]["content"]: r["messages"][1] for r in rows}
    assert by_query["add a and b"] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_0",
                "type": "function",
                "function": {"name": "add_to_playlist", "arguments": '{"entity_name": "a"}'},
            }
        ],
    }
    pizza = by_query["weather \U0001f355"]["tool_calls"][0]["function"]
    assert json.loads(pizza["arguments"]) == {"condition_description": "\U0001f355"}
    assert check(out).exit_code == 0  # what convert writes, data check accepts


def test_snips_tools_out_writes_them_once(tiny_snips: Path, tmp_path: Path) -> None:
    out, tools = tmp_path / "s.jsonl", tmp_path / "tools.json"
    result = convert_snips(tiny_snips, out, errors="skip", tools_out=tools, per_intent=3)
    assert result["skipped"] == 1 and result["labels"] == {"add_to_playlist": 3, "get_weather": 3}
    rows = _rows(out)
    assert len(rows) == 6 and all("tools" not in r for r in rows)
    assert [t["function"]["name"] for t in json.loads(tools.read_text())] == [
        "add_to_playlist",
        "get_weather",
    ]
    assert check(out, "--tools", str(tools)).exit_code == 0
    assert len(load_examples(out, tools=json.loads(tools.read_text()))) == 6


def test_snips_samples_are_seeded_and_nested(tiny_snips: Path, tmp_path: Path) -> None:
    def queries(n: int, seed: int) -> set[str]:
        out = tmp_path / f"{n}-{seed}.jsonl"
        convert_snips(tiny_snips, out, per_intent=n, seed=seed, errors="skip")
        return {r["messages"][0]["content"] for r in _rows(out)}

    assert queries(2, 0) == queries(2, 0)
    assert queries(2, 0) < queries(3, 0) < queries(4, 0)
    assert len({frozenset(queries(2, s)) for s in range(6)}) > 1
    with pytest.raises(UserError, match="GetWeather: 4 queries, fewer than --per-intent 5"):
        convert_snips(tiny_snips, tmp_path / "x.jsonl", per_intent=5, errors="skip")


def test_snips_bad_bytes_and_bad_records_are_one_line(tiny_snips: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.jsonl"
    result = runner.invoke(app, ["data", "convert", str(tiny_snips), str(out), "--from", "snips"])
    assert result.exit_code == 2
    (err,) = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert "train_GetWeather_full.json" in err and "CESU-8" in err and "--errors cesu8" in err
    assert not out.exists()
    bad = tmp_path / "train_Bad_full.json"
    bad.write_text(json.dumps({"Bad": [{"data": [{"text": "x"}, {"entity": "slot"}]}]}))
    with pytest.raises(DataError, match=r"Bad\[0\]\.data\[1\]: expected \{'text': \.\.\.\}"):
        convert_snips(bad, out)
    for flags in (["--per-intent", "3"], ["--tools-out", str(tmp_path / "t.json")]):
        csv = tmp_path / "a.csv"
        csv.write_text("text,label\nhi,x\n")
        res = runner.invoke(app, ["data", "convert", str(csv), str(out), "--from", "csv", *flags])
        assert res.exit_code == 2 and "only applies to --from snips" in res.output
    res = runner.invoke(
        app, ["data", "convert", str(tiny_snips), str(out), "--from", "snips", "--per-label", "3"]
    )
    assert res.exit_code == 2 and "use --per-intent N" in res.output


def test_function_names_are_snake_case() -> None:
    assert [
        function_name(n) for n in ("AddToPlaylist", "SearchScreeningEvent", "getHTTPStatus")
    ] == [
        "add_to_playlist",
        "search_screening_event",
        "get_http_status",
    ]


@pytest.mark.skipif(not SNIPS.is_dir(), reason=f"{SNIPS} is absent (the shared SNIPS files)")
def test_real_snips_at_70_per_intent(tmp_path: Path) -> None:
    out, tools = tmp_path / "snips.jsonl", tmp_path / "tools.json"
    strict = runner.invoke(app, ["data", "convert", str(SNIPS), str(out), "--from", "snips"])
    assert strict.exit_code == 2 and "train_PlayMusic_full.json" in strict.output
    result = convert_snips(SNIPS, out, per_intent=70, errors="cesu8", tools_out=tools)
    assert result["examples"] == 490 and result["tools"] == 7
    assert result["repeated_slots"] == 61  # of 13,784 queries: the first value kept
    assert set(result["labels"].values()) == {70}
    names = [t["function"]["name"] for t in json.loads(tools.read_text())]
    assert names == [
        "add_to_playlist",
        "book_restaurant",
        "get_weather",
        "play_music",
        "rate_book",
        "search_creative_work",
        "search_screening_event",
    ]
    report = report_of(out, json.loads(tools.read_text()))
    assert report.errors == [] and report.stats["tools"]["calling"] == 490
    small = tmp_path / "small.jsonl"
    convert_snips(SNIPS, small, per_intent=10, errors="cesu8")
    assert {r["messages"][0]["content"] for r in _rows(small)} <= {
        r["messages"][0]["content"] for r in _rows(out)
    }


# ---------------------------------------------------------------- properties: never a traceback

names = st.sampled_from(["get_weather", "get_time", "", "x y", "ü", "get_weather "])
json_schemas = st.recursive(
    st.one_of(
        st.sampled_from(
            [
                {"type": "string"},
                {"type": "integer", "minimum": 0},
                {"type": "strng"},
                {"enum": []},
                {"$ref": "#/nowhere"},
                {"$ref": "#"},
                {"pattern": "("},
                {"type": ["string", "null"]},
                {"multipleOf": 0},
            ]
        ),
        st.booleans(),
        st.integers(-2, 2),
        st.none(),
    ),
    lambda inner: st.one_of(
        st.fixed_dictionaries(
            {"type": st.just("object"), "properties": st.dictionaries(st.text(max_size=5), inner)},
            optional={"required": st.lists(st.text(max_size=5), max_size=2)},
        ),
        st.lists(inner, max_size=2),
    ),
    max_leaves=6,
)
tools_values = st.one_of(
    st.lists(
        st.one_of(
            st.fixed_dictionaries(
                {
                    "type": st.just("function"),
                    "function": st.fixed_dictionaries(
                        {"name": names}, optional={"parameters": json_schemas}
                    ),
                }
            ),
            st.fixed_dictionaries({"name": names}, optional={"parameters": json_schemas}),
            st.integers(),
        ),
        max_size=3,
    ),
    st.none(),
    st.text(max_size=3),
)
arg_values = st.one_of(st.text(max_size=8), st.integers(), st.none(), st.lists(st.integers()))
arguments = st.one_of(
    st.dictionaries(st.sampled_from(["city", "days", "x"]), arg_values, max_size=3).map(json.dumps),
    st.dictionaries(st.sampled_from(["city", "days"]), arg_values, max_size=2),
    st.sampled_from(["", "{", "[1]", "null", '"s"', "{}", '{"city": "\\ud800"}', "[" * 300]),
    st.integers(),
)
calls = st.fixed_dictionaries(
    {"function": st.fixed_dictionaries({"name": names, "arguments": arguments})},
    optional={"id": st.sampled_from(["c1", "c2", "", 3]), "type": st.just("function")},
)
tool_lines = st.builds(
    lambda tools, cs, answer: line(cs, tools=tools, answer_id=answer),
    tools_values,
    st.lists(calls, max_size=3),
    st.sampled_from(["c1", "c2", "call_0", None]),
)
valid_args = st.fixed_dictionaries(
    {"city": st.text(min_size=1, max_size=8)}, optional={"days": st.integers(0, 9)}
)
valid_lines = st.builds(
    lambda args, answered, text_only: (
        NO_CALL
        if text_only
        else line(
            [call("get_weather", json.dumps(a), cid=f"c{k}") for k, a in enumerate(args)],
            tools=[WEATHER, TIME],
            answer_id="c0" if answered else None,
        )
    ),
    st.lists(valid_args, min_size=1, max_size=3),
    st.booleans(),
    st.booleans(),
)


@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    rows=st.lists(
        st.one_of(valid_lines.map(lambda r: (r, True)), tool_lines.map(lambda r: (r, False))),
        min_size=1,
        max_size=4,
    ),
    project=tools_values,
)
def test_tool_lines_never_raise_more_than_one_line(tmp_path: Path, rows, project) -> None:
    path = write(tmp_path, [r for r, _ in rows])
    valid = {n for n, (_, ok) in enumerate(rows, start=1) if ok}
    # task.tools reaches the data as a list of objects (config.py checks that much)
    ok = isinstance(project, list) and all(isinstance(t, dict) for t in project)
    project_tools = project if ok else None
    try:
        examples, problems = parse_jsonl(path, project_tools)
    except UserError as err:  # a line the JSON reader refuses
        assert "\n" not in str(err)
        return
    event(f"{len(examples)} valid, {len(problems)} problem(s)")
    for p in problems:
        assert "\n" not in str(p) and str(p).startswith(f"{path}:")
    assert not valid & {p.line for p in problems}, [str(p) for p in problems]  # valid ones pass
    report = check_examples(examples, errors=problems, path=str(path), tools=project_tools)
    assert report.exit_code() == (2 if problems else 0)


snips_pieces = st.lists(
    st.fixed_dictionaries(
        {"text": st.one_of(st.text(max_size=6), st.integers())},
        optional={"entity": st.one_of(st.sampled_from(["city", "slot", ""]), st.none())},
    ),
    max_size=4,
)
snips_files = st.dictionaries(
    st.sampled_from(["GetWeather", "AddToPlaylist", "get_weather", "!!", "X"]),
    st.one_of(st.lists(st.fixed_dictionaries({"data": snips_pieces}), max_size=4), st.integers()),
    max_size=3,
)
valid_queries = (
    st.lists(
        st.tuples(
            st.text("abc \u00e9", min_size=1, max_size=5), st.sampled_from([None, "city", "x"])
        ),
        min_size=1,
        max_size=4,
    )
    .filter(lambda ps: "".join(t for t, _ in ps).strip())
    .map(lambda ps: _query(*ps))
)
valid_snips = st.dictionaries(
    st.sampled_from(["GetWeather", "AddToPlaylist"]),
    st.lists(valid_queries, min_size=2, max_size=4),
    min_size=1,
)


@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    data=st.one_of(valid_snips, valid_snips, snips_files),
    per_intent=st.sampled_from([None, 1, 2]),
    tail=st.one_of(st.just(b""), st.just(b"\n"), st.binary(max_size=3)),
)
def test_snips_conversion_never_raises_more_than_one_line(
    tmp_path: Path, data, per_intent, tail
) -> None:
    src = tmp_path / "train_X_full.json"
    src.write_bytes(json.dumps(data).encode() + tail)
    out = tmp_path / "out.jsonl"
    out.unlink(missing_ok=True)
    try:
        result = convert_snips(src, out, per_intent=per_intent, errors="skip")
    except UserError as err:
        event(f"refused: {str(err).split(': ')[1][:30]}")
        assert "\n" not in str(err)
        assert not out.exists()
        return
    event("converted")
    assert parse_jsonl(out)[1] == []  # what it writes is valid
    assert result["examples"] == len(_rows(out))
