"""examples/snips-slots/prepare.py on a tiny SNIPS-shaped folder: the invalid UTF-8 file stops
with a clear message, each explicit --errors choice does what it says, and the output is a valid
tunewise json project."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "snips-slots"
# "🍕" as two UTF-16 surrogates, each encoded as three UTF-8 bytes (CESU-8), as in the real file
CESU8_PIZZA = b"\xed\xa0\xbc\xed\xbd\x95"


def _prepare():
    spec = importlib.util.spec_from_file_location("snips_prepare", EXAMPLE / "prepare.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _query(*pieces: tuple[str, str | None]) -> dict:
    return {"data": [{"text": t, **({"entity": e} if e else {})} for t, e in pieces]}


@pytest.fixture
def source(tmp_path: Path) -> Path:
    prep = _prepare()
    root = tmp_path / "snips"
    root.mkdir()
    for intent in prep.INTENTS:
        queries = [
            _query((f"{intent} request {i} for ", None), (f"value {i}", "object_name"))
            for i in range(4)
        ]
        if intent == "BookRestaurant":  # a slot named twice in one query
            queries.append(
                _query(("table for ", None), ("me", "party"), (" and ", None), ("mum", "party"))
            )
        raw = json.dumps({intent: queries}, indent=2).encode()
        if intent == "PlayMusic":
            bad = json.dumps({intent: [*queries, _query(("play ", None), ("Pop XX", "playlist"))]})
            raw = bad.encode().replace(b"XX", CESU8_PIZZA)
        (root / f"train_{intent}_full.json").write_bytes(raw)
    return root


def test_invalid_utf8_stops_with_file_offset_and_choices(
    source: Path, tmp_path: Path, capsys
) -> None:
    prep = _prepare()
    rc = prep.main(
        ["--source", str(source), "--out", str(tmp_path / "o.jsonl"), "--per-intent", "3"]
    )
    err = capsys.readouterr().err
    assert rc == 2 and not (tmp_path / "o.jsonl").exists()
    assert "train_PlayMusic_full.json: byte 0xed at offset" in err
    assert "CESU-8" in err and "--errors cesu8" in err and "--errors skip" in err
    assert err.count("\n") == 1  # one line


@pytest.mark.parametrize(
    ("errors", "expected"),
    [("cesu8", "Pop 🍕"), ("replace", "Pop \ufffd\ufffd\ufffd\ufffd\ufffd\ufffd"), ("skip", None)],
)
def test_each_explicit_choice(
    source: Path, tmp_path: Path, errors: str, expected: str | None
) -> None:
    prep = _prepare()
    out = tmp_path / "o.jsonl"
    argv = ["--source", str(source), "--out", str(out), "--per-intent", "3", "--errors", errors]
    assert prep.main(argv) == 0
    assert len(out.read_text(encoding="utf-8").splitlines()) == 21
    answers = [
        prep.to_answer("PlayMusic", q["data"])
        for q in prep.load_intent(source, "PlayMusic", "utf-8", errors)
    ]
    slots = [json.loads(a[1])["slots"] for a in answers if a is not None]
    playlists = [s["playlist"] for s in slots if "playlist" in s]
    if expected is None:  # skip: the query with the bad byte is gone, the others stay
        assert len(answers) == 5 and answers.count(None) == 1 and playlists == []
    else:
        assert playlists == [expected]


def test_output_is_a_valid_json_project(source: Path, tmp_path: Path) -> None:
    from tunewise.data.schema import load_examples

    prep = _prepare()
    rows = prep.build(source, 4, 0, "utf-8", "cesu8")
    assert len({r["messages"][1]["content"] for r in rows}) == 28
    path = tmp_path / "snips.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    schema = yaml.safe_load((EXAMPLE / "project.yaml").read_text())["task"]["json_schema"]
    examples = load_examples(path)
    assert len(examples) == 28
    for ex in examples:
        jsonschema.validate(json.loads(ex.target), schema)
    pieces = [("table for ", None), ("me", "party"), (" and ", None), ("mum", "party")]
    query, answer = prep.to_answer("BookRestaurant", _query(*pieces)["data"])
    assert query == "table for me and mum"
    assert json.loads(answer)["slots"] == {"party": ["me", "mum"]}  # both kept, in query order
    with pytest.raises(prep.PrepareError, match="fewer than --per-intent 9"):
        prep.build(source, 9, 0, "utf-8", "cesu8")
    # a larger size contains the smaller one
    small = {r["messages"][1]["content"] for r in prep.build(source, 2, 0, "utf-8", "cesu8")}
    assert small <= {r["messages"][1]["content"] for r in rows}
