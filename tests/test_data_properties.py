"""Property-based tests: whatever the input file holds, ``data check|split|convert`` never end in
a traceback. Each answer is success or a user error (exit 2), and a refused split or conversion
writes nothing.

Derandomized, with no example database, so every run tries the same inputs: a failure here is
a bug to fix, never a flake. The sizes keep the whole file to about half a minute on one core
(plus loading the embedded model's tokenizer once, which ``data check`` uses).

The commands run through the CLI's own error handler (``tunewise.cli._Group``) with only the
``data`` verbs registered: building the full command tree costs 0.15 s per invocation, more than
the verbs themselves.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

import typer
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tunewise.cli import _Group, data_cmd
from tunewise.data.schema import ROLES, load_examples

runner = CliRunner()
app = typer.Typer(cls=_Group, pretty_exceptions_enable=False, add_completion=False)
data_cmd.register(app)


def fixed_inputs(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


# Inputs people (and attackers) actually produce, mixed into the random ones.
HOSTILE_LINES = [
    "[" * 5000,
    "[" * 200 + "]" * 200,
    '{"messages": ' + "9" * 5000 + "}",
    '"\\ud800"',
    '{"messages": [{"role": "user", "content": "\\udfff"}, {"role": "assistant", "content": "x"}]}',
    '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], '
    '"meta": "\\ud83d"}',
    "\ufeff{}",
    "NaN",
    '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}',
    '{"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]}',
    "\x00",
    "\u2028",
]


def _no_newlines(text: str) -> str:
    return text.replace("\n", " ").replace("\r", " ")


# Text with the characters that break readers: lone surrogates (which st.text never draws), a
# valid pair, line and paragraph separators, NUL, a byte-order mark, quotes and braces.
odd_but_valid = st.sampled_from(
    ["\ud83d\ude00", "\u2028", "\x00", "\ufeff", "{text}", '"', "\\u0000", "\x1b[2J"]
)
odd_text = st.one_of(odd_but_valid, st.sampled_from(["\ud800", "x\udfff"]))
any_text = st.one_of(st.text(max_size=30), odd_text)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    any_text,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)


def _dumps(value) -> str:
    return json.dumps(value)  # \uXXXX escapes: how a lone surrogate reaches a file


# --- JSONL: mostly valid conversations, so the whole pipeline (formats, dedup, tokenizer, split)
# runs, with a few random or hostile lines mixed in.
words = st.text(min_size=1, max_size=30).map(lambda t: t + " w")
valid_chats = st.builds(
    lambda system, user, answer: {
        "messages": [
            *([{"role": "system", "content": system}] if system else []),
            {"role": "user", "content": user},
            {"role": "assistant", "content": answer},
        ]
    },
    st.one_of(st.none(), words),
    st.one_of(words, odd_but_valid.map(lambda t: t + " q")),
    st.one_of(st.sampled_from(["billing", "login", "Category: bug"]), words),
)
turns = st.fixed_dictionaries(
    {
        "role": st.one_of(st.sampled_from([*ROLES, "bot", ""]), json_scalars),
        "content": st.one_of(any_text, json_values),
    }
)
random_chats = st.fixed_dictionaries(
    {"messages": st.one_of(st.lists(turns, max_size=4), json_values)},
    optional={"id": json_values, "meta": json_values},
)
odd_lines = st.one_of(
    random_chats.map(_dumps),
    random_chats.map(lambda r: json.dumps(r, ensure_ascii=False)),
    json_values.map(_dumps),
    st.text(max_size=60).map(_no_newlines),
    st.sampled_from(HOSTILE_LINES),
)
# Bytes, so that a line can also be invalid UTF-8 (a lone surrogate encoded as UTF-8 is).
mostly_valid = st.tuples(
    st.lists(valid_chats.map(_dumps), min_size=10, max_size=20),  # enough to split
    st.lists(odd_lines, max_size=1),
).map(lambda parts: "\n".join(parts[0] + parts[1]).encode("utf-8", "surrogatepass"))
jsonl_files = st.one_of(
    mostly_valid,
    mostly_valid,
    st.lists(odd_lines, min_size=1, max_size=8).map(
        lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")
    ),
    st.binary(max_size=80),
)


def _fresh_dir(root: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=root))


def _assert_clean_exit(result, what: str, allowed: tuple[int, ...] = (0, 2)) -> None:
    event(f"{what}: exit {result.exit_code}")  # shown by --hypothesis-show-statistics
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{type(result.exception).__name__}: {result.exception}\n{result.output}"
    )
    assert result.exit_code in allowed, result.output
    assert "Traceback" not in result.output


@fixed_inputs(max_examples=60)
@given(data=jsonl_files)
def test_check_and_split_never_crash_on_random_jsonl(tmp_path: Path, data: bytes) -> None:
    work = _fresh_dir(tmp_path)
    src = work / "data.jsonl"
    src.write_bytes(data)
    check = runner.invoke(app, ["data", "check", str(src), "--max-len", "64"])
    _assert_clean_exit(check, "check")

    out = work / "splits"
    split = runner.invoke(app, ["data", "split", str(src), "--out", str(out)])
    _assert_clean_exit(split, "split")
    if split.exit_code == 0:
        assert {p.name for p in out.iterdir()} == {
            "train.jsonl",
            "val.jsonl",
            "test.jsonl",
            "manifest.json",
        }
        for name in ("train.jsonl", "val.jsonl", "test.jsonl"):
            load_examples(out / name)  # what split writes reads back cleanly
    else:
        assert not out.exists()
    assert sorted(p.name for p in work.iterdir()) == sorted(
        ["data.jsonl", *(["splits"] if split.exit_code == 0 else [])]
    )


csv_cells = st.one_of(
    st.text(max_size=30),
    st.sampled_from(['"', '""', "a,b", "x\ny", "\r\n", "\x00", ";", "\ufeff", "{text}", "{0}"]),
)
filled_cells = st.one_of(words, csv_cells.map(lambda t: "c" + t))  # never empty after strip


@st.composite
def csv_files(draw) -> tuple[bytes, str]:
    """A CSV file and the delimiter it was written with: usually well formed (a text and a label
    column, every cell filled), sometimes hand-made with stray quotes, odd headers, empty cells,
    trailing garbage bytes."""
    delimiter = draw(st.sampled_from([",", ";", "\t", "|"]))
    if draw(st.integers(0, 2)):  # well formed
        header = ["text", "label", *draw(st.lists(st.just("extra"), max_size=1))]
        rows = draw(
            st.lists(st.lists(filled_cells, min_size=3, max_size=3), min_size=1, max_size=8)
        )
        rows = [r[: len(header)] for r in rows]
    else:
        header = draw(
            st.one_of(
                st.lists(st.sampled_from(["text", "label", "extra", ""]), min_size=1, max_size=4),
                st.lists(csv_cells, min_size=1, max_size=3),
            )
        )
        rows = draw(st.lists(st.lists(csv_cells, max_size=4), max_size=8))
    if draw(st.booleans()):
        buf = io.StringIO()
        csv.writer(buf, delimiter=delimiter).writerows([header, *rows])
        text = buf.getvalue()
    else:  # hand-made, quotes and all
        text = "\n".join(delimiter.join(r) for r in [header, *rows])
    data = text.encode("utf-8", "surrogatepass")
    if not draw(st.integers(0, 4)):
        data += draw(st.binary(max_size=8))
    return data, delimiter


@fixed_inputs(max_examples=100)
@given(
    csv_file=csv_files(),
    template=st.sampled_from(
        ["{text}", "{text}", "{text}", "Q: {text} ({extra})", "{nope}", "{text.upper}", "{0}", "{"]
    ),
    delimiter=st.one_of(st.none(), st.none(), st.none(), st.sampled_from([";;", "", '"'])),
)
def test_convert_never_crashes_on_random_csv(
    tmp_path: Path, csv_file: tuple[bytes, str], template: str, delimiter: str | None
) -> None:
    data, natural = csv_file
    work = _fresh_dir(tmp_path)
    src = work / "in.csv"
    src.write_bytes(data)
    out = work / "out.jsonl"
    args = ["data", "convert", str(src), str(out), "--from", "csv", "--template", template]
    result = runner.invoke(app, [*args, "--delimiter", natural if delimiter is None else delimiter])
    _assert_clean_exit(result, "convert csv")
    if result.exit_code == 0:
        assert load_examples(out)  # every written record passes `data check`'s schema
    else:
        assert not out.exists()
    assert src.read_bytes() == data


pair_lists = st.lists(st.tuples(any_text, any_text), max_size=5)
alpaca_records = st.fixed_dictionaries(
    {"instruction": st.one_of(words, json_values), "output": st.one_of(words, json_values)},
    optional={"input": st.one_of(words, json_values), "system": json_values},
)
sharegpt_turns = st.fixed_dictionaries(
    {
        "from": st.one_of(st.sampled_from(["human", "gpt", "system", "alien"]), json_scalars),
        "value": st.one_of(words, json_values),
    }
)
sharegpt_records = st.one_of(
    st.fixed_dictionaries({"conversations": st.lists(sharegpt_turns, max_size=3)}),
    st.builds(
        lambda q, a: {
            "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
        },
        words,
        words,
    ),
)
json_sources = st.one_of(
    st.tuples(st.just("json-pairs"), pair_lists.map(lambda p: _dumps({"train": p}))),
    st.tuples(st.just("json-pairs"), st.lists(st.tuples(words, words), min_size=1).map(_dumps)),
    st.tuples(st.just("alpaca"), st.lists(alpaca_records, max_size=4).map(_dumps)),
    st.tuples(
        st.just("alpaca"),
        st.lists(alpaca_records, max_size=4).map(lambda recs: "\n".join(map(_dumps, recs))),
    ),
    st.tuples(
        st.just("sharegpt"),
        st.lists(sharegpt_records, max_size=3).map(lambda recs: "\n".join(map(_dumps, recs))),
    ),
    st.tuples(st.sampled_from(["json-pairs", "alpaca", "sharegpt"]), json_values.map(_dumps)),
    st.tuples(
        st.sampled_from(["json-pairs", "alpaca", "sharegpt"]), st.sampled_from(HOSTILE_LINES)
    ),
)


@fixed_inputs(max_examples=100)
@given(source_body=json_sources)
def test_convert_never_crashes_on_random_json_sources(
    tmp_path: Path, source_body: tuple[str, str]
) -> None:
    source, body = source_body
    work = _fresh_dir(tmp_path)
    src = work / "in.json"
    src.write_bytes(body.encode("utf-8", "surrogatepass"))
    out = work / "out.jsonl"
    result = runner.invoke(app, ["data", "convert", str(src), str(out), "--from", source])
    _assert_clean_exit(result, f"convert {source}")
    if result.exit_code == 0:
        assert load_examples(out)
    else:
        assert not out.exists()
