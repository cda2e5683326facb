"""SNIPS NLU benchmark files as function calls: ``tunewise data convert --from snips``.

The source is the folder of ``train_<Intent>_full.json`` files (or one such file) of the 2017
custom-intent-engines benchmark: ``{"<Intent>": [{"data": [{"text": "Add "}, {"text": "Diamonds",
"entity": "entity_name"}, ...]}, ...]}``. The pieces' ``text`` joined is the query; a piece with an
``entity`` is a slot value.

Each intent becomes one tool, each query one example that calls it::

    {"tools": [...], "messages": [
      {"role": "user", "content": "Add Diamonds to my roadtrip playlist"},
      {"role": "assistant", "content": null, "tool_calls": [{"id": "call_0", "type": "function",
        "function": {"name": "add_to_playlist",
                     "arguments": "{\\"entity_name\\": \\"Diamonds\\", ...}"}}]}]}

Choices, and why:

* Function names are the intent in snake_case (``AddToPlaylist`` -> ``add_to_playlist``): the
  convention of OpenAI-style tool schemas, so a model prompted without training meets names shaped
  like those it has seen (``get_weather``).
* Parameters are the intent's slot names, collected from *every* query of its file (not only the
  sampled ones, so a sample of 70 and one of 400 share one tool list and a held-out query never
  uses a slot its tool lacks). Each is an optional string (values are copied from the query); the
  schema forbids other names (``additionalProperties: false``), so an invented slot breaks it.
  Descriptions are one short sentence per tool and none per parameter: the seven tools are about
  1,070 SmolLM2 tokens in the fallback prompt as it is, on every example. How to fill arguments
  (copy the words) is an instruction for the system prompt (``system``), not tool data.
* A slot named twice in one query (61 of the 13,784 queries, 0.4%) keeps its first value and is
  counted (``repeated_slots`` in the result). An array-typed parameter for them would make every
  parameter ``string | array`` for 0.4% of the data: a harder grammar to constrain, and a call
  graded by exact arguments against a rare shape. The count says how much the choice drops.
* By default every line carries the seven tools: the file stands alone (``data check``, ``data
  split`` and any OpenAI-format reader take it as it is). ``tools_out`` writes them once to a JSON
  file instead and leaves them off the lines (a tenth of the size); the project then names that
  file in ``task.tools``.
* ``per_intent`` samples each intent with a seeded shuffle (``random.Random(f"{seed}:{intent}")``,
  the first N), then shuffles all rows with ``random.Random(seed)``, as
  ``examples/snips-slots/prepare.py`` does: a size is reproducible, a larger size holds every query
  of a smaller one, and the same seed and size pick the same queries as that script.

``train_PlayMusic_full.json`` is not valid UTF-8 as published (an emoji written as two UTF-16
surrogates, each encoded alone: CESU-8). Nothing is fixed silently: by default the conversion
stops and names the file and offset; ``errors`` chooses, as ``prepare.py``'s ``--errors`` does:
``cesu8`` (decode the pair back to its character), ``replace`` (U+FFFD), ``ignore`` (drop the
bytes) or ``skip`` (drop every query holding one).
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunewise.data import files
from tunewise.data.files import JSONProblem
from tunewise.data.schema import _short, validate_record
from tunewise.errors import DataError, UserError
from tunewise.fsio import atomic_write_jsonl, atomic_write_text, created_parents

ERRORS = ("strict", "cesu8", "replace", "ignore", "skip")
CALL_ID = "call_0"
FILE_GLOB = "train_*_full.json"
# What each benchmark intent does, for the tool's description; another intent gets its name's words.
DESCRIPTIONS = {
    "AddToPlaylist": "Add a song, an artist or an album to a playlist.",
    "BookRestaurant": "Book a table at a restaurant.",
    "GetWeather": "Get the weather forecast for a place and a time.",
    "PlayMusic": "Play music: a track, an album, an artist, a genre or a playlist, on a service.",
    "RateBook": "Rate a book or another written work.",
    "SearchCreativeWork": "Find a creative work: a book, a song, a film, a TV show, a game.",
    "SearchScreeningEvent": "Find a film's showtimes, or the cinemas that show it.",
}
# A UTF-16 surrogate (U+D800..U+DFFF) encoded as three UTF-8 bytes: ED A0..BF xx.
_CESU8_SURROGATE = re.compile(rb"\xed[\xa0-\xbf][\x80-\xbf]")
_ESCAPED = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of an undecodable byte
# errors=skip: each undecodable byte becomes this noncharacter (never used for interchange, so no
# real query holds it), and the queries holding one are dropped
SKIP_MARK = "\ufdd0"
_NAME_SPLIT = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def function_name(intent: str) -> str:
    """``AddToPlaylist`` -> ``add_to_playlist``; anything but letters and digits becomes ``_``."""
    words = _NAME_SPLIT.sub("_", intent.strip())
    return re.sub(r"[^a-z0-9]+", "_", words.lower()).strip("_")


def read_snips_text(path: Path, encoding: str = "utf-8", errors: str = "strict") -> str:
    """The text of a SNIPS file; ``errors`` one of :data:`ERRORS` (see the module docstring).
    Under ``skip`` an undecodable byte becomes :data:`SKIP_MARK`, which marks its query."""
    if errors not in ERRORS:
        raise UserError(f"--errors {errors!r}: for SNIPS use one of {', '.join(ERRORS)}")
    files.check_encoding(encoding, "strict")
    files.require_file(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(str(path), None, "(file)", f"cannot read: {exc.strerror}") from None
    try:
        if errors == "cesu8":
            # Surrogate pairs written as two 3-byte sequences: decode them with surrogatepass,
            # then let UTF-16 recombine each pair into the character it encodes.
            text = raw.decode(encoding, "surrogatepass")
            return text.encode("utf-16", "surrogatepass").decode("utf-16").removeprefix("\ufeff")
        if errors == "skip":
            text = _ESCAPED.sub(SKIP_MARK, raw.decode(encoding, "surrogateescape"))
            return text.removeprefix("\ufeff")
        return raw.decode(encoding, errors).removeprefix("\ufeff")
    except UnicodeError as exc:
        at = getattr(exc, "start", 0)
        hint = ""
        if _CESU8_SURROGATE.match(raw, at):
            hint = " (a UTF-16 surrogate encoded as UTF-8, i.e. CESU-8: an emoji in two halves)"
        bad = f"byte 0x{raw[at]:02x}" if at < len(raw) else "the end"
        raise DataError(
            str(path),
            raw.count(b"\n", 0, at) + 1,
            "(file)",
            f"{bad} at offset {at} is not valid {encoding}{hint}; choose how to read it: "
            "--errors cesu8 (recover the character), --errors replace (U+FFFD), --errors skip "
            "(drop that query) or --encoding NAME",
        ) from None


@dataclass
class Intent:
    """One intent's queries (text and slots, in file order) and what reading them found."""

    name: str
    path: Path
    queries: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    slots: set[str] = field(default_factory=set)
    repeated: int = 0  # queries naming a slot twice (the first value kept)
    skipped: int = 0  # queries dropped under errors=skip


def _query(path: Path, where: str, record: Any) -> tuple[str, dict[str, str], int]:
    """(query, slots, slots named again) of one SNIPS record; a ``DataError`` names what is bad."""
    pieces = record.get("data") if isinstance(record, dict) else None
    if not isinstance(pieces, list):
        raise DataError(str(path), None, where, "expected an object with a 'data' list")
    text: list[str] = []
    slots: dict[str, str] = {}
    again = 0
    for k, piece in enumerate(pieces):
        at = f"{where}.data[{k}]"
        if not isinstance(piece, dict) or not isinstance(piece.get("text"), str):
            raise DataError(str(path), None, at, f"expected {{'text': ...}}, got {_short(piece)}")
        text.append(piece["text"])
        entity = piece.get("entity")
        if entity is None:
            continue
        if not isinstance(entity, str) or not entity.strip():
            raise DataError(
                str(path), None, f"{at}.entity", f"expected a slot name, got {entity!r}"
            )
        value = piece["text"].strip()
        if entity in slots:
            again += 1  # kept the first value: see the module docstring
        elif value:
            slots[entity] = value
    query = "".join(text).strip()
    if not query:
        raise DataError(str(path), None, where, "empty query")
    return query, slots, again


def _read_file(path: Path, encoding: str, errors: str) -> list[Intent]:
    try:
        data = files.loads(read_snips_text(path, encoding, errors))
    except JSONProblem as exc:
        raise DataError(str(path), exc.line, exc.field or "(file)", exc.message) from None
    if not isinstance(data, dict) or not data:
        raise DataError(str(path), None, "(file)", 'expected {"<Intent>": [queries...]}')
    out = []
    for name, records in data.items():
        if not isinstance(records, list):
            raise DataError(str(path), None, name, "expected a list of queries")
        if not function_name(name):
            raise DataError(str(path), None, "(file)", f"intent {_short(name)}: not a usable name")
        intent = Intent(name, path)
        for i, record in enumerate(records):
            query, slots, again = _query(path, f"{name}[{i}]", record)
            if errors == "skip" and (SKIP_MARK in query or any(SKIP_MARK in k for k in slots)):
                intent.skipped += 1  # an undecodable byte in this query
                continue
            intent.queries.append((query, slots))
            intent.slots.update(slots)
            intent.repeated += bool(again)
        out.append(intent)
    return out


def read_intents(src: Path, encoding: str = "utf-8", errors: str = "strict") -> list[Intent]:
    """Every intent of ``src`` (a folder of ``train_<Intent>_full.json`` files, or one file), in
    the order of their names."""
    if src.is_dir():
        paths = sorted(src.glob(FILE_GLOB))
        if not paths:
            raise UserError(f"{src}: no {FILE_GLOB} files (is this the SNIPS folder?)")
    else:
        paths = [src]
    intents: dict[str, Intent] = {}
    names: dict[str, str] = {}
    for path in paths:
        for intent in _read_file(path, encoding, errors):
            fn = function_name(intent.name)
            if fn in names:
                raise UserError(
                    f"{path}: intent {intent.name!r} gives the function name {fn!r}, as does "
                    f"{names[fn]!r} in {intents[names[fn]].path}"
                )
            names[fn] = intent.name
            intents[intent.name] = intent
    return [intents[k] for k in sorted(intents)]


def intent_tool(intent: Intent) -> dict[str, Any]:
    """The OpenAI tool schema of an intent: its slots as optional string parameters."""
    words = " ".join(_NAME_SPLIT.sub(" ", intent.name).split()).capitalize()
    return {
        "type": "function",
        "function": {
            "name": function_name(intent.name),
            "description": DESCRIPTIONS.get(intent.name, f"{words}."),
            "parameters": {
                "type": "object",
                "properties": {s: {"type": "string"} for s in sorted(intent.slots)},
                "additionalProperties": False,
            },
        },
    }


def _sample(intents: list[Intent], per_intent: int | None, seed: int) -> list[tuple[Intent, int]]:
    """(intent, query index) pairs: each intent's first ``per_intent`` of a seeded shuffle (all
    when None), then every pair in one seeded shuffle."""
    picked: list[tuple[Intent, int]] = []
    for intent in intents:
        order = list(range(len(intent.queries)))
        random.Random(f"{seed}:{intent.name}").shuffle(order)
        if per_intent is not None:
            if per_intent > len(order):
                raise UserError(
                    f"{intent.name}: {len(order)} queries, fewer than --per-intent {per_intent}"
                )
            order = order[:per_intent]
        picked += [(intent, i) for i in order]
    random.Random(seed).shuffle(picked)
    return picked


def _record(
    intent: Intent, i: int, system: str | None, tools: list[dict[str, Any]] | None
) -> dict[str, Any]:
    query, slots = intent.queries[i]
    call = {
        "id": CALL_ID,
        "type": "function",
        "function": {
            "name": function_name(intent.name),
            "arguments": json.dumps(slots, ensure_ascii=False),
        },
    }
    msgs: list[dict[str, Any]] = [
        {"role": "user", "content": query},
        {"role": "assistant", "content": None, "tool_calls": [call]},
    ]
    if system:
        msgs.insert(0, {"role": "system", "content": system})
    return {"tools": tools, "messages": msgs} if tools else {"messages": msgs}


def _check_outputs(src: Path, out: Path, tools_out: Path | None) -> None:
    files.check_output_file(out, src)
    if tools_out is not None:
        files.check_output_file(tools_out, src)
        if tools_out.resolve() == out.resolve():
            raise UserError(f"--tools-out {tools_out}: is the data file too; name another file")


def convert_snips(
    src: str | Path,
    out: str | Path,
    *,
    per_intent: int | None = None,
    seed: int = 0,
    tools_out: str | Path | None = None,
    system: str | None = None,
    encoding: str = "utf-8",
    errors: str = "strict",
) -> dict[str, Any]:
    """Write the SNIPS queries of ``src`` as tool-call chat JSONL at ``out`` (atomically; with
    ``tools_out``, the tools to that JSON file and not on the lines); returns counts."""
    src, out = Path(src), Path(out)
    tools_path = Path(tools_out) if tools_out is not None else None
    if not src.exists():
        raise DataError(str(src), None, "(file)", "not found")
    _check_outputs(src, out, tools_path)
    files.check_cli_text(system, "--system")
    if per_intent is not None and per_intent < 1:
        raise UserError(f"--per-intent {per_intent}: must be at least 1")
    intents = read_intents(src, encoding, errors)
    tools = [intent_tool(intent) for intent in intents]
    picked = _sample(intents, per_intent, seed)
    records = []
    for intent, i in picked:
        rec = _record(intent, i, system, None if tools_path else tools)
        problems = validate_record(rec, str(intent.path), 0, tools=tools)
        if problems:  # a query the chat format refuses (an empty one): name it, write nothing
            p = problems[0]
            raise DataError(p.path, None, f"{intent.name}[{i}]: {p.field}", p.message)
        records.append(rec)
    if not records:
        raise UserError(f"{src}: nothing to write (no queries)")
    _write(out, records, tools_path, tools)
    counts = Counter(function_name(intent.name) for intent, _ in picked)
    return {
        "source": str(src),
        "out": str(out),
        "from": "snips",
        "examples": len(records),
        "tools": len(tools),
        "tools_out": str(tools_path) if tools_path else None,
        "labels": dict(sorted(counts.items())),
        "repeated_slots": sum(it.repeated for it in intents),
        "skipped": sum(it.skipped for it in intents),
        "short_labels": {},
    }


def _write(
    out: Path, records: list[dict[str, Any]], tools_path: Path | None, tools: list[dict[str, Any]]
) -> None:
    """The tools file first (a data file naming tools that were never written is the worse
    half-state), then the data; each write atomic."""
    target = out
    try:
        if tools_path is not None:
            target = tools_path
            with created_parents(tools_path):
                atomic_write_text(
                    tools_path, json.dumps(tools, indent=2, ensure_ascii=False) + "\n"
                )
        target = out
        with created_parents(out):
            atomic_write_jsonl(out, records)
    except OSError as exc:
        raise UserError(f"{target}: cannot write: {exc.strerror or exc}") from None
