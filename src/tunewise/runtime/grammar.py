"""Constrained function calls: decode only valid calls of the given tools (or, in ``auto`` mode,
a plain reply).

A :class:`ToolConstraint` rides on a :class:`tunewise.runtime.backend.GenRequest`; the engine's
decode loop asks its per-row state, at every step, which tokens may come next and masks the
others' logits (``-inf``) before the next token is chosen, so greedy decoding and any sampler
over the same logits respect it. The grammar, in the call format of
:mod:`tunewise.runtime.tool_calls`::

    <tool_call>{"name": <one of the tools>, "arguments": <that tool's parameters>}</tool_call>
    ("\\n" <tool_call>...</tool_call>)*          at most ``max_calls`` blocks, then end of turn

Modes (OpenAI's ``tool_choice``):

* ``required``: one or more calls, nothing else; the end-of-turn token is allowed only once the
  last block is closed.
* ``named``: the same, restricted to one function (``tool_choice: {"function": {"name": ...}}``).
* ``auto``: the model writes freely (a plain reply stays possible, untouched by the grammar);
  once the text it wrote contains ``<tool_call>``, the rest of the answer is held to the
  grammar from the JSON of that block on: the call, its ``</tool_call>``, then only further calls
  or the end of turn (the shape :func:`tunewise.runtime.tool_calls.reply_text` writes: text first,
  then the calls). A model that writes a bare JSON object without the tag is not constrained.

The JSON is held to each tool's ``parameters`` JSON Schema by lm-format-enforcer (pure Python,
runs on the CPU with the pinned torch; xgrammar would pull triton, outlines a Rust core and many
more dependencies). What it enforces: types, ``enum``, ``const``, required keys, only the
declared keys (an object schema with ``properties`` admits no other key), nested objects and
arrays, ``anyOf``/``oneOf``/``allOf``, ``$ref`` into ``$defs``, string ``minLength``/
``maxLength``/``pattern``, ``minItems``/``maxItems``. What it does not: numeric ``minimum``/
``maximum``/``multipleOf``, ``uniqueItems``, string ``format``; a schema that relies on those can
still get a call that ``jsonschema`` refuses. Whitespace between JSON tokens is free (at most 12 in
a row), so a model trained on Qwen's ``<tool_call>\\n{...}\\n</tool_call>`` keeps its newlines.

This module is light (no torch); the parser and the per-row state live in
:mod:`tunewise.runtime.grammar_enforcer`, imported when a constrained row starts.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from tunewise.errors import UserError
from tunewise.runtime.tool_calls import function_of

if TYPE_CHECKING:
    from tunewise.runtime.decoding import RowConstraint

MODES: Final = ("required", "named", "auto")
DEFAULT_MAX_CALLS: Final = 8  # parallel calls in one turn; a runaway model stops here
# Part of every cache key: a change to the grammar must not read answers decoded under the old one.
GRAMMAR_VERSION: Final = "tool-grammar-1"
_DEFS = ("$defs", "definitions")


@dataclass(frozen=True)
class ToolConstraint:
    """What a constrained request may answer (see the module docstring). Built by
    :func:`tool_constraint`; immutable and independent of any tokenizer, so one instance serves
    every request with the same tools."""

    mode: str  # "required" | "named" | "auto"
    schema: str  # the JSON Schema of one call object, as canonical JSON
    names: tuple[str, ...]  # the functions it may call
    max_calls: int = DEFAULT_MAX_CALLS

    def key(self) -> str:
        """What identifies the constraint in a generation cache key."""
        return json.dumps(
            [GRAMMAR_VERSION, self.mode, json.loads(self.schema), self.max_calls], sort_keys=True
        )

    def describe(self) -> dict[str, Any]:
        """For an evaluation's meta: the mode and the functions."""
        return {
            "tool_choice": self.mode,
            "functions": list(self.names),
            "max_calls": self.max_calls,
        }

    def start(
        self,
        tokenizer: Any,
        eos_ids: Collection[int],
        decode: Callable[[list[int]], str] | None = None,
    ) -> RowConstraint:
        """A fresh per-row state for one generation with ``tokenizer`` (whose vocabulary the
        masks cover); ``eos_ids`` are the tokens that end the turn, allowed only where the
        grammar may end; ``decode`` (token ids to text) replaces ``tokenizer.decode`` where
        the caller guards its tokenizer with a lock."""
        # lazy: lm-format-enforcer imports torch; only a constrained generation needs it
        from tunewise.runtime import grammar_enforcer

        return grammar_enforcer.start_row(self, tokenizer, eos_ids, decode)


def tool_constraint(
    tokenizer: Any | None,
    tools: Sequence[dict[str, Any]],
    mode: str = "required",
    function_name: str | None = None,
    *,
    max_calls: int = DEFAULT_MAX_CALLS,
    max_string_chars: int | None = None,
) -> ToolConstraint:
    """The constraint for ``tools`` (OpenAI tool schemas or bare function schemas) in ``mode``
    (``required``, ``named`` with ``function_name``, ``auto``); put it on
    ``GenRequest.constraint``. ``max_calls=1`` is OpenAI's ``parallel_tool_calls: false``.
    ``max_string_chars`` caps every free string argument (one without ``maxLength``, ``enum`` or
    ``pattern`` of its own), so a model that never closes its quote still ends its call.

    A schema the grammar cannot use is a :class:`UserError` naming the tool (a server answers it
    with a 400). With a ``tokenizer``, the grammar is also built once against it here, so that the
    tokenizer's one-off preparation (about a second for a 49k vocabulary, cached per tokenizer)
    and any schema problem show now rather than in the middle of a generation.
    """
    if mode not in MODES:
        raise UserError(f"tool_choice mode {mode!r}: expected one of {', '.join(MODES)}")
    if max_calls < 1:
        raise UserError("max_calls must be at least 1")
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or not isinstance(function_of(t), dict):
            raise UserError(f"tools[{i}]: expected a tool object")
    functions = [function_of(t) for t in tools]
    names = [f.get("name") for f in functions]
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name:
            raise UserError(f"tools[{i}]: a function needs a non-empty string 'name'")
    if mode == "named":
        if function_name not in names:
            raise UserError(
                f"tool_choice names function {function_name!r}, which is not in the tools "
                f"({', '.join(map(str, names)) or 'none'})"
            )
        functions = [f for f in functions if f.get("name") == function_name]
    if not functions:
        raise UserError(f"tool_choice {mode!r} needs at least one tool to call")
    schema = call_schema(functions)
    if max_string_chars is not None:
        _cap_strings(schema, max_string_chars)
    constraint = ToolConstraint(
        mode,
        json.dumps(schema, sort_keys=True),
        tuple(str(f["name"]) for f in functions),
        max_calls,
    )
    if tokenizer is not None:
        constraint.start(tokenizer, [])  # builds the tokenizer data and checks the schema
    return constraint


def call_schema(functions: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The JSON Schema of one call object: ``{"name": <const>, "arguments": <parameters>}`` per
    function, ``anyOf`` over them; every ``$defs`` moved to the root, where ``$ref`` looks."""
    defs: dict[str, Any] = {}
    options = []
    for f in functions:
        name = str(f["name"])
        params = _parameters(name, f.get("parameters"), defs)
        options.append(
            {
                "type": "object",
                "properties": {"name": {"const": name}, "arguments": params},
                "required": ["name", "arguments"],
            }
        )
    for f, option in zip(functions, options, strict=True):
        _check_supported(option["properties"]["arguments"], f"tool {f['name']!r}: parameters", defs)
    for def_name, value in defs.items():
        _check_supported(value, f"$defs {def_name!r}", defs)
    schema: dict[str, Any] = options[0] if len(options) == 1 else {"anyOf": options}
    if defs:
        schema = {**schema, "$defs": defs}
    return schema


def _parameters(name: str, params: Any, defs: dict[str, Any]) -> dict[str, Any]:
    """A function's parameters schema ready for the grammar: none means no arguments (``{}``);
    its definitions go to ``defs`` (a name two tools define differently is refused: ``$ref``
    resolves by name at the root)."""
    if params is None:
        return {"type": "object", "properties": {}}
    if not isinstance(params, dict):
        raise UserError(f"tool {name!r}: parameters must be a JSON Schema object")
    params = copy.deepcopy(params)  # the caller's tools stay as they were
    for key in _DEFS:
        found = params.pop(key, None)
        if found is None:
            continue
        if not isinstance(found, dict):
            raise UserError(f"tool {name!r}: parameters.{key} must be an object")
        for def_name, value in found.items():
            if def_name in defs and defs[def_name] != value:
                raise UserError(
                    f"tool {name!r}: definition {def_name!r} differs from another tool's of "
                    "the same name; constrained decoding resolves $ref by name, rename one"
                )
            defs[def_name] = value
    if "type" not in params and "properties" in params:
        params["type"] = "object"
    return _split_type_lists(params)


def _split_type_lists(schema: Any) -> Any:
    """``{"type": ["string", "null"], ...}`` as ``anyOf`` of one schema per type, the other
    keywords on each: the library reads a type list as bare types and would drop ``maxLength``,
    ``items`` or ``properties`` beside it."""
    if isinstance(schema, list):
        return [_split_type_lists(v) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _split_type_lists(v) for k, v in schema.items()}
    kinds = out.get("type")
    if isinstance(kinds, list) and kinds:
        rest = {k: v for k, v in out.items() if k != "type"}
        return {"anyOf": [{**rest, "type": k} for k in kinds]}
    return out


_TYPES = frozenset({"string", "integer", "number", "boolean", "null", "object", "array"})


def _check_supported(schema: Any, where: str, defs: dict[str, Any]) -> None:
    """Refuse, naming the place, what the grammar would only find out in the middle of an
    answer: an unknown type, an enum it cannot write, a ``$ref`` to nothing."""
    if not isinstance(schema, dict):
        if isinstance(schema, bool):
            return  # true/false schemas: anything/nothing, as the library reads them
        raise UserError(f"{where}: a schema must be a JSON object")
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [] if kind is None else [kind]
    bad = [k for k in kinds if k not in _TYPES]
    if bad:
        raise UserError(f"{where}: type {bad[0]!r} is not a JSON Schema type")
    enum = schema.get("enum")
    if enum is not None and not (
        isinstance(enum, list)
        and enum
        and (
            all(isinstance(v, str) for v in enum)
            or all(isinstance(v, int | float) and not isinstance(v, bool) for v in enum)
        )
    ):
        raise UserError(
            f"{where}: constrained decoding takes an enum of strings or of numbers only"
        )
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.split("/")[-1] not in defs:
        raise UserError(f"{where}: $ref {ref!r} names no definition in $defs")
    for key, value in schema.items():
        if key in ("properties", "$defs", "definitions") and isinstance(value, dict):
            for name, sub in value.items():
                _check_supported(sub, f"{where}.{key}.{name}", defs)
        elif key in ("anyOf", "oneOf", "allOf") and isinstance(value, list):
            for i, sub in enumerate(value):
                _check_supported(sub, f"{where}.{key}[{i}]", defs)
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            _check_supported(value, f"{where}.{key}", defs)


def _cap_strings(schema: Any, cap: int) -> None:
    """Give every free string schema in ``schema`` a ``maxLength`` of ``cap`` (in place)."""
    if isinstance(schema, list):
        for item in schema:
            _cap_strings(item, cap)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        is_string = kind == "string" or (isinstance(kind, list) and "string" in kind)
        if is_string and not any(k in schema for k in ("maxLength", "enum", "const", "pattern")):
            schema["maxLength"] = cap
        for value in schema.values():
            _cap_strings(value, cap)
