"""What a function-call line may do: its tools are valid schemas, its calls use them rightly.

:func:`tunewise.data.schema.validate_record` checks the shape of a chat line; for lines with tools
or calls it hands over to :func:`check_tool_use`, which reports (each as ``field: message``, the
field an exact path such as ``messages[2].tool_calls[0].function.arguments``):

* ``tools`` that is not a list, an entry that is not a tool schema (no name, a ``parameters``
  that is not a valid JSON Schema: Draft 2020-12, checked with ``jsonschema``'s ``check_schema``,
  or one that does not describe an object), a name defined twice;
* ``tool_calls`` that is not a non-empty list, a call that is not an object, two calls of one turn
  with the same id, a ``type`` other than ``"function"``, a missing function name;
* ``arguments`` that are not JSON, or JSON but not an object;
* a function that is not among the tools the line may use, and arguments that break that
  function's ``parameters`` schema (the most relevant error, by ``jsonschema``'s ``best_match``,
  with its path in the arguments);
* a ``tool`` turn whose ``tool_call_id`` answers no earlier call of the conversation.

The tools a line may use are its own ``tools`` when it has a non-empty list, else the project's
(``task.tools``, or ``data check --tools FILE``), the same rule :meth:`Example.with_tools` applies.
With no tools known anywhere, names and arguments cannot be checked: that is no error here (a file
of calls whose tools live in the project is normal), and ``data check`` warns about it instead.

Schemas are compiled once per distinct tool list (a SNIPS file repeats the same seven on every
line) and never fetch anything: a remote ``$ref`` is reported as unresolvable, not downloaded.

This module sits below :mod:`tunewise.data.schema` (which imports it), so it takes the callbacks
that report a problem and quote a value (``schema._short``) as arguments instead of importing them.
"""

from __future__ import annotations

import difflib
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, best_match
from referencing import Registry
from referencing.exceptions import NoSuchResource

from tunewise.data import files
from tunewise.data.files import JSONProblem
from tunewise.errors import DataError
from tunewise.runtime.tool_calls import TOOLS_FIELD

Report = Callable[[str, str], None]  # (field, message)
Quote = Callable[[Any], str]  # a value as a short repr, for quoting in a message
MESSAGE_LIMIT = 120  # a schema error is cut to this many characters: one line, not a page


def _refuse(uri: str) -> Any:
    raise NoSuchResource(ref=uri)


# jsonschema's default fetches a remote $ref over HTTP: data must never reach the network.
_OFFLINE = Registry(retrieve=_refuse)


@dataclass(frozen=True)
class ToolSpec:
    """A usable tool: its name and the validator of its parameters (None: any arguments)."""

    name: str
    validator: Draft202012Validator | None


@dataclass(frozen=True)
class ToolSet:
    """The problems of one tool list and the tools in it that calls can be checked against."""

    problems: tuple[tuple[str, str], ...]
    specs: dict[str, ToolSpec]


def _clip(text: str, limit: int = MESSAGE_LIMIT) -> str:
    text = " ".join(str(text).split())  # one line, whatever the value held
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _schema_problem(schema: Any) -> str | None:
    """Why ``schema`` cannot be a function's ``parameters``, or None when it can."""
    if not isinstance(schema, dict):
        return f"expected a JSON Schema object, got {type(schema).__name__}"
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as err:
        return f"not a valid JSON Schema at {err.json_path}: {_clip(err.message)}"
    except RecursionError:
        return "not a valid JSON Schema: nested too deep"
    remote = _remote_ref(schema)
    if remote is not None:
        return (
            f"$ref {_clip(repr(remote), 60)} points outside the schema; tunewise never fetches "
            "schemas: put it under $defs and refer to '#/$defs/...'"
        )
    kind = schema.get("type", "object")
    if kind != "object" and not (isinstance(kind, list) and "object" in kind):
        return f"arguments are a JSON object, so the schema's type must be 'object', got {kind!r}"
    return None


def _remote_ref(schema: dict[str, Any]) -> str | None:
    """The first ``$ref`` that is not a pointer into the schema itself (when the schema names no
    ``$id`` of its own, against which a full URI could still resolve locally)."""
    stack: list[Any] = [schema]
    refs: list[str] = []
    while stack:  # iterative: a schema may be deep
        node = stack.pop()
        if isinstance(node, dict):
            if "$id" in node:
                return None
            ref = node.get("$ref")
            if isinstance(ref, str) and not ref.startswith("#"):
                refs.append(ref)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return refs[0] if refs else None


def _tool_problems(
    k: int, tool: Any, quote: Quote, names: dict[str, int]
) -> tuple[list[tuple[str, str]], ToolSpec | None]:
    """The problems of ``tools[k]``, and the tool when its name is usable."""
    at = f"{TOOLS_FIELD}[{k}]"
    if not isinstance(tool, dict):
        return [(at, f"expected a tool schema object, got {type(tool).__name__}")], None
    out: list[tuple[str, str]] = []
    if "type" in tool and tool["type"] != "function":
        out.append((f"{at}.type", f"expected 'function', got {quote(tool['type'])}"))
    fn = tool
    if "function" in tool:  # the OpenAI shape; a bare {name, parameters} is accepted too
        fn, at = tool["function"], f"{at}.function"
        if not isinstance(fn, dict):
            return [*out, (at, f"expected an object, got {type(fn).__name__}")], None
    name = fn.get("name")
    if not isinstance(name, str) or not name.strip():
        out.append((f"{at}.name", f"expected the function's name, got {quote(name)}"))
        name = None
    elif name in names:
        out.append((f"{at}.name", f"{quote(name)} is defined twice (also tools[{names[name]}])"))
    else:
        names[name] = k
    if "description" in fn and not isinstance(fn["description"], str):
        out.append((f"{at}.description", f"expected a string, got {quote(fn['description'])}"))
    validator = None
    if fn.get("parameters") is not None:
        problem = _schema_problem(fn["parameters"])
        if problem:
            out.append((f"{at}.parameters", problem))
        else:
            validator = Draft202012Validator(fn["parameters"], registry=_OFFLINE)
    return out, (ToolSpec(name, validator) if name else None)


@functools.lru_cache(maxsize=32)
def _tool_set_of(text: str, quote: Quote) -> ToolSet:
    tools = json.loads(text)
    if not isinstance(tools, list):
        got = type(tools).__name__
        return ToolSet(((TOOLS_FIELD, f"expected a list of tool schemas, got {got}"),), {})
    problems: list[tuple[str, str]] = []
    specs: dict[str, ToolSpec] = {}
    names: dict[str, int] = {}
    for k, tool in enumerate(tools):
        found, spec = _tool_problems(k, tool, quote, names)
        problems += found
        if spec is not None:
            specs.setdefault(spec.name, spec)
    return ToolSet(tuple(problems), specs)


def tool_set(tools: Any, quote: Quote) -> ToolSet:
    """Problems and usable tools of a ``tools`` value (cached: lines often share one list)."""
    try:
        text = json.dumps(tools, sort_keys=True, allow_nan=True)
    except (TypeError, ValueError, RecursionError):  # not JSON data (only from Python callers)
        return ToolSet(((TOOLS_FIELD, "expected a JSON list of tool schemas"),), {})
    return _tool_set_of(text, quote)


def read_tools_file(path: str | Path, quote: Quote) -> list[dict[str, Any]]:
    """The tool schemas in a JSON file (a list, or ``{"tools": [...]}``), every one valid; a
    :class:`DataError` names the first problem (and how many more)."""
    path = Path(path)
    try:
        data = files.loads(files.read_text(path))
    except JSONProblem as exc:
        raise DataError(str(path), exc.line, exc.field or "(file)", exc.message) from None
    if isinstance(data, dict) and isinstance(data.get(TOOLS_FIELD), list):
        data = data[TOOLS_FIELD]  # {"tools": [...]}, as an OpenAI request body holds them
    found = tool_set(data, quote)
    if found.problems:
        field, message = found.problems[0]
        more = f" (and {len(found.problems) - 1} more)" if len(found.problems) > 1 else ""
        raise DataError(str(path), None, field, message + more)
    return data


# ---------------------------------------------------------------- calls


def _arguments(fn: dict[str, Any], at: str, bad: Report, quote: Quote) -> dict[str, Any] | None:
    """The call's arguments as an object, or None after reporting why they are not one."""
    args = fn.get("arguments", {})  # none given: no arguments, as call_from_openai reads it
    if isinstance(args, str):
        try:
            args = files.loads(args) if args.strip() else {}
        except JSONProblem as exc:
            bad(f"{at}.arguments", f"{exc.message}: {quote(args)}")
            return None
    if not isinstance(args, dict):
        bad(f"{at}.arguments", f"expected a JSON object, got {type(args).__name__}: {quote(args)}")
        return None
    return args


def _schema_error(validator: Draft202012Validator, args: dict[str, Any]) -> str | None:
    try:
        err = best_match(validator.iter_errors(args))
    except Exception as exc:
        # A user's schema that cannot be applied (an unresolvable $ref, a bad regex, a $ref
        # loop) is a problem of the data, not a crash.
        return f"the schema cannot be applied ({type(exc).__name__}: {_clip(exc, 80)})"
    return None if err is None else f"{err.json_path}: {_clip(err.message)}"


def _check_function(
    fn: Any, at: str, specs: dict[str, ToolSpec] | None, bad: Report, quote: Quote
) -> None:
    """One call's ``function``: a name among the tools, arguments that fit its schema."""
    if not isinstance(fn, dict):
        bad(at, f"expected {{'name': ..., 'arguments': ...}}, got {quote(fn)}")
        return
    name = fn.get("name")
    if not isinstance(name, str) or not name.strip():
        bad(f"{at}.name", f"expected a function name, got {quote(name)}")
        name = None
    args = _arguments(fn, at, bad, quote)
    if name is None or specs is None:
        return
    spec = specs.get(name)
    if spec is None:
        listed = ", ".join(sorted(specs)[:8]) + (", ..." if len(specs) > 8 else "")
        close = difflib.get_close_matches(name, list(specs), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        bad(f"{at}.name", f"{quote(name)} is not one of the tools ({listed or 'none'}){hint}")
        return
    if args is not None and spec.validator is not None:
        problem = _schema_error(spec.validator, args)
        if problem:
            bad(f"{at}.arguments", f"do not fit the parameters of {quote(name)}: {problem}")


def _check_turn(
    calls: Any, where: str, specs: dict[str, ToolSpec] | None, bad: Report, quote: Quote
) -> list[str]:
    """An assistant turn's ``tool_calls``; returns the ids a ``tool`` turn may answer."""
    if not isinstance(calls, list) or not calls:
        bad(where, f"expected a non-empty list of calls, got {quote(calls)}")
        return []
    ids: dict[str, int] = {}
    for j, call in enumerate(calls):
        at = f"{where}[{j}]"
        if not isinstance(call, dict):
            bad(at, f"expected a call object, got {type(call).__name__}")
            continue
        cid = call.get("id")
        if cid is not None and not isinstance(cid, str):
            bad(f"{at}.id", f"expected a string, got {quote(cid)}")
        key = str(cid) if cid else f"call_{j}"  # the id canonical_message gives the call
        if key in ids:
            bad(f"{at}.id", f"{quote(key)} is also the id of tool_calls[{ids[key]}] in this turn")
        else:
            ids[key] = j
        if "type" in call and call["type"] != "function":
            bad(f"{at}.type", f"expected 'function', got {quote(call['type'])}")
        _check_function(call.get("function"), f"{at}.function", specs, bad, quote)
    return list(ids)


def _available(
    obj: dict[str, Any], project_tools: list[dict[str, Any]] | None, bad: Report, quote: Quote
) -> dict[str, ToolSpec] | None:
    """The tools the line may call (reporting its own ``tools``' problems); None: unknown."""
    own = obj.get(TOOLS_FIELD)
    if own is not None:
        found = tool_set(own, quote)
        for field, message in found.problems:
            bad(field, message)
        if own:  # the line's own list decides (an empty one falls back, as with_tools does);
            # with none of its tools usable, calls cannot be checked against them
            return found.specs or None
    if project_tools:
        return tool_set(project_tools, quote).specs
    return None


def check_tool_use(
    obj: dict[str, Any],
    bad: Report,
    *,
    quote: Quote,
    project_tools: list[dict[str, Any]] | None = None,
) -> None:
    """Report every problem of a parsed line's tools and calls through ``bad(field, message)``.

    ``obj`` is a line whose ``messages`` is a list (what :func:`validate_record` has checked).
    """
    msgs = obj["messages"]
    if TOOLS_FIELD not in obj and not any(
        isinstance(m, dict) and ("tool_calls" in m or m.get("role") == "tool") for m in msgs
    ):
        return  # a plain chat line: nothing to compile
    specs = _available(obj, project_tools, bad, quote)
    answered: set[str] = set()
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            continue
        where = f"messages[{i}]"
        role = m.get("role")
        if m.get("tool_calls") is not None and role != "assistant":
            bad(f"{where}.tool_calls", f"only an assistant turn calls tools, not {quote(role)}")
        elif role == "assistant" and m.get("tool_calls") is not None:
            answered.update(_check_turn(m["tool_calls"], f"{where}.tool_calls", specs, bad, quote))
        elif role == "tool" and isinstance(m.get("tool_call_id"), str):
            _check_answer(m["tool_call_id"], f"{where}.tool_call_id", answered, bad, quote)


def _check_answer(call_id: str, at: str, answered: set[str], bad: Report, quote: Quote) -> None:
    if call_id in answered:
        return
    if not answered:
        bad(at, f"{quote(call_id)} answers no call: no assistant turn before it calls a tool")
        return
    known = ", ".join(quote(c) for c in sorted(answered)[:5])
    bad(at, f"{quote(call_id)} answers no earlier call (the calls so far: {known})")
