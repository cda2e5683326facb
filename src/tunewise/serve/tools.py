"""Function calls on the wire: OpenAI's ``tools`` / ``tool_choice`` in, ``tool_calls`` out.

The model never sees OpenAI's structure: a request's tools ride on its system turn
(:func:`tunewise.runtime.tool_calls.attach_tools`) and its call turns are carried as their
``<tool_call>`` text (:func:`~tunewise.runtime.tool_calls.canonical_message`), exactly as training
and every rung render them, so the served model sees the prompt it was evaluated with. Its answer
is read back here, into ``message.tool_calls``, as a whole (:func:`read_answer`) or while it
streams (:class:`CallDeltas`), by one reader (:class:`ReplyReader`) so both agree.

Choices (README, "Function calls"):

* ``tool_choice`` defaults to ``auto`` when tools are shown, else ``none``. ``none`` shows no tools
  and reads no calls: the answer is the model's text, as without tools.
* A model trained with project-level tools (``task.tools``) gets them when a request sends none
  and its ``tool_choice`` is not ``none``: a client that omits them gets the model as evaluated.
  Tools the request sends replace them.
* ``required`` and a named function are promises that the answer holds a call (of one of the
  tools; of that function). Until decoding can be constrained to calls
  (:func:`with_tool_constraint`, the one place it joins a request), they are checked after
  generation and an answer that breaks the promise is a 422 ``tool_choice_unmet`` naming what the
  model wrote, never a 200 the client would read as a call. A stream under them is sent once the
  answer is known (the status must come before the stream).
* A ``<tool_call>`` block that is not a call (bad JSON, no name) stays in ``content`` as the text
  the model wrote: nothing the model said is dropped. Calls are returned as written (a function
  not in the tools, arguments off its schema): the graders measure that, constrained decoding will
  prevent it.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import jsonschema

from tunewise.runtime import grammar
from tunewise.runtime.backend import GenRequest, GenResult
from tunewise.runtime.tool_calls import (
    CALL_CLOSE,
    CALL_OPEN,
    ToolCall,
    call_from_openai,
    canonical_message,
    parse_reply,
)
from tunewise.serve.schemas import APIError, ChatMessage

CHOICES = ("none", "auto", "required")
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for a function name


def _bad(param: str, message: str, code: str = "invalid_tools") -> APIError:
    """A 400 in OpenAI's shape whose message starts with the field it is about."""
    return APIError(400, f"{param}: {message}", code=code, param=param)


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- the request


def check_tools(raw: Any) -> list[dict[str, Any]]:
    """The request's ``tools``, each ``{"type": "function", "function": {name, description?,
    parameters?, strict?}}``; a 400 naming the field otherwise (``parameters`` must be a valid
    JSON Schema). None or ``[]``: no tools."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _bad("tools", f"expected a list of tools, got {type(raw).__name__}")
    seen: set[str] = set()
    for i, tool in enumerate(raw):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise _bad(where, f"expected an object, got {_short(tool)}")
        if tool.get("type") != "function":
            raise _bad(
                f"{where}.type", f"only 'function' tools are served, not {_short(tool.get('type'))}"
            )
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise _bad(f"{where}.function", "missing: expected {name, description, parameters}")
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise _bad(
                f"{where}.function.name",
                f"expected 1-64 letters, digits, '_' or '-', got {_short(name)}",
            )
        if name in seen:
            raise _bad(f"{where}.function.name", f"{name!r} is listed twice")
        seen.add(name)
        if "description" in fn and not isinstance(fn["description"], str):
            raise _bad(f"{where}.function.description", "expected a string")
        if "parameters" in fn:
            _check_schema(fn["parameters"], f"{where}.function.parameters")
    return [dict(t) for t in raw]


def _check_schema(schema: Any, where: str) -> None:
    if not isinstance(schema, dict):
        raise _bad(where, f"expected a JSON Schema object, got {_short(schema)}")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        at = ".".join(str(p) for p in exc.path)
        where_at = f" at {at}" if at else ""
        raise _bad(where, f"not a valid JSON Schema{where_at}: {exc.message}") from None
    except (TypeError, ValueError, RecursionError) as exc:  # e.g. a $schema that is not a string
        raise _bad(where, f"not a valid JSON Schema: {exc}") from None


def check_tool_choice(raw: Any, tools: Sequence[dict[str, Any]]) -> tuple[str, str | None]:
    """``(choice, function)``: ``none``/``auto``/``required``, or ``function`` with its name.
    Omitted: ``auto`` when there are tools, else ``none`` (OpenAI's defaults)."""
    names = [t["function"]["name"] for t in tools]
    if raw is None:
        return ("auto" if tools else "none"), None
    if isinstance(raw, str):
        if raw not in CHOICES:
            raise _bad(
                "tool_choice",
                f"expected one of {', '.join(CHOICES)} or "
                "{'type': 'function', 'function': {'name': ...}}",
                "invalid_tool_choice",
            )
        if raw == "required" and not tools:
            raise _bad("tool_choice", "'required' needs tools to call", "invalid_tool_choice")
        return raw, None
    fn = raw.get("function") if isinstance(raw, dict) else None
    if not isinstance(raw, dict) or raw.get("type") != "function" or not isinstance(fn, dict):
        raise _bad(
            "tool_choice",
            f"expected {{'type': 'function', 'function': {{'name': ...}}}}, got {_short(raw)}",
            "invalid_tool_choice",
        )
    name = fn.get("name")
    if name not in names:
        listed = ", ".join(names) if names else "no tools"
        raise _bad(
            "tool_choice.function.name",
            f"{_short(name)} is not one of the tools ({listed})",
            "invalid_tool_choice",
        )
    return "function", name


def check_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Request turns (role, content text, and the raw ``tool_calls`` / ``tool_call_id``) in
    tunewise's form (:func:`canonical_message`); a 400 naming the field for a call that is not
    one, or a tool turn that answers no call made before it."""
    out: list[dict[str, Any]] = []
    ids: set[str] = set()
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        calls = m.get("tool_calls")
        if calls == []:  # some clients send it on every assistant turn: no calls
            calls = m["tool_calls"] = None
        if calls is not None and m["role"] != "assistant":
            raise _bad(f"{where}.tool_calls", "only assistant turns make calls", "invalid_messages")
        if calls is not None:
            if not isinstance(calls, list):
                raise _bad(f"{where}.tool_calls", "expected a list of calls", "invalid_messages")
            for j, call in enumerate(calls):
                try:
                    call_from_openai(call)
                except ValueError as exc:
                    raise _bad(
                        f"{where}.tool_calls[{j}].function", str(exc), "invalid_messages"
                    ) from None
        if m["role"] == "tool":
            answered = m.get("tool_call_id")
            if not isinstance(answered, str) or not answered:
                raise _bad(
                    f"{where}.tool_call_id",
                    "missing: a tool turn answers one call by its id",
                    "invalid_messages",
                )
            if answered not in ids:
                made = ", ".join(sorted(ids)) or "none"
                raise _bad(
                    f"{where}.tool_call_id",
                    f"{answered!r} answers no call made before it (calls made: {made})",
                    "invalid_messages",
                )
        msg = canonical_message({k: v for k, v in m.items() if v is not None})
        ids.update(c["id"] for c in msg.get("tool_calls", []))
        out.append(msg)
    return out


def request_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """A request's turns as the model is shown them: ``{role, content}`` as ever, and call and
    tool turns in tunewise's form (:func:`check_messages`)."""
    if not any(m.has_tool_fields for m in messages):
        return [m.plain() for m in messages]  # what a request without calls always got
    return check_messages([m.turn() for m in messages])


@dataclass(frozen=True)
class ToolPlan:
    """What a request asked of calls: the tools shown to the model, and ``tool_choice``."""

    tools: list[dict[str, Any]] = field(default_factory=list)
    choice: str = "none"  # none | auto | required | function
    function: str | None = None  # the function a named tool_choice asks for
    requested: list[dict[str, Any]] = field(default_factory=list)  # as the request sent them
    # OpenAI's ``parallel_tool_calls: false``: at most one call in the answer
    single_call: bool = False

    @property
    def reads_calls(self) -> bool:
        """Whether the answer is read for calls (tools were shown)."""
        return bool(self.tools) and self.choice != "none"

    @property
    def promises_call(self) -> bool:
        """``required`` or a named function: the answer must hold a call."""
        return self.choice in ("required", "function")


NO_TOOLS = ToolPlan()


def plan_tools(
    raw_tools: Any,
    raw_choice: Any,
    defaults: Sequence[dict[str, Any]],
    parallel: bool | None = None,
) -> ToolPlan:
    """The request's :class:`ToolPlan`; ``defaults`` are the project tools the model was trained
    with, shown when the request sends none and does not say ``tool_choice: none``; ``parallel``
    is the request's ``parallel_tool_calls`` (False: one call at most)."""
    requested = check_tools(raw_tools)
    tools = requested or (list(defaults) if raw_choice != "none" else [])
    choice, function = check_tool_choice(raw_choice, tools)
    if choice == "none":
        return ToolPlan(choice="none", requested=requested)
    return ToolPlan(
        tools=tools,
        choice=choice,
        function=function,
        requested=requested,
        single_call=parallel is False,
    )


def tool_constraint(plan: ToolPlan) -> Any | None:
    """The decoding constraint that makes ``required`` / a named function hold by construction
    (:func:`tunewise.runtime.grammar.tool_constraint`: only calls of the shown tools, of that
    function, arguments valid against its schema), or None when the request promises no call
    (``auto`` is left free: the model may answer in text, as OpenAI's ``auto`` allows). With
    ``parallel_tool_calls: false`` the answer holds one call at most: ``auto`` then decodes under
    the grammar's ``auto`` mode too (a plain reply stays free; a call, once opened, is the last).
    """
    if not plan.tools or not (plan.promises_call or (plan.single_call and plan.reads_calls)):
        return None
    mode = {"function": "named", "required": "required"}.get(plan.choice, "auto")
    max_calls = 1 if plan.single_call else grammar.DEFAULT_MAX_CALLS
    return grammar.tool_constraint(None, plan.tools, mode, plan.function, max_calls=max_calls)


def with_tool_constraint(gen: GenRequest, plan: ToolPlan) -> GenRequest:
    """``gen`` with the decoding constraint ``plan`` needs: the one place a constraint joins a
    generation request (``GenRequest.constraint``). :func:`check_choice_met` stays as a guard
    (an answer cut by ``max_tokens`` before its call closes still breaks the promise)."""
    constraint = tool_constraint(plan)
    return gen if constraint is None else replace(gen, constraint=constraint)


# --------------------------------------------------------------------------- the answer


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _partial_tag(text: str, tag: str) -> int:
    """How many characters at the end of ``text`` could be the start of ``tag``."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0


class ReplyReader:
    """A model's answer, read as it arrives, into text and calls.

    Calls are ``<tool_call>`` blocks (an unclosed last block is read at the end, as
    :func:`parse_reply` reads a cut answer), or an answer that is one bare JSON call and nothing
    else. Text that could still become a call is held back: a tail that may be the start of
    ``<tool_call>``, an answer that so far is a JSON object, whitespace around calls. The text is
    what :func:`parse_reply` calls ``content`` (stripped; blocks removed), except that a block
    that is not a call stays in it.

    ``feed`` and ``finish`` return events: ``("text", str)`` and ``("call", ToolCall)``.
    """

    def __init__(self) -> None:
        self._pending = ""  # not yet read
        self._in_call = False
        self._lead = ""  # text before anything was said: held while it may be a bare call
        self._said = False
        self._space = ""  # whitespace held until more text follows it
        self._blocks = 0

    def feed(self, delta: str) -> list[tuple[str, Any]]:
        self._pending += delta
        out: list[tuple[str, Any]] = []
        while True:
            if self._in_call:
                end = self._pending.find(CALL_CLOSE)
                if end < 0:
                    return out
                body, self._pending = self._pending[:end], self._pending[end + len(CALL_CLOSE) :]
                self._in_call = False
                out += self._block(body, closed=True)
                continue
            start = self._pending.find(CALL_OPEN)
            if start >= 0:
                text, self._pending = self._pending[:start], self._pending[start + len(CALL_OPEN) :]
                self._in_call, self._blocks = True, self._blocks + 1
                out += self._text(text, final=True)
                continue
            cut = len(self._pending) - _partial_tag(self._pending, CALL_OPEN)
            text, self._pending = self._pending[:cut], self._pending[cut:]
            return out + self._text(text)

    def finish(self) -> list[tuple[str, Any]]:
        rest, self._pending = self._pending, ""
        if self._in_call:
            self._in_call = False
            out = self._block(rest, closed=False)
        else:
            out = self._text(rest)
        if self._lead.strip():  # held all along: one bare JSON call, or text after all
            reply = parse_reply(self._lead) if not self._blocks else None
            if reply is not None and reply.calls:
                out += [("call", c) for c in reply.calls]
            else:
                out += self._say(self._lead.strip())
        self._lead, self._space = "", ""  # trailing whitespace is not part of the content
        return out

    def _text(self, text: str, *, final: bool = False) -> list[tuple[str, Any]]:
        """Text outside blocks; ``final``: nothing before it can be a bare call any more."""
        if self._said:
            return self._say(text)
        self._lead += text
        head = self._lead.lstrip()
        if not head or (head.startswith("{") and not self._blocks and not final):
            return []
        self._lead = ""
        return self._say(head)

    def _say(self, text: str) -> list[tuple[str, Any]]:
        joined = self._space + text
        body = joined.rstrip()
        self._space = joined[len(body) :]
        if not body:
            return []
        self._said = True
        return [("text", body)]

    def _block(self, body: str, *, closed: bool) -> list[tuple[str, Any]]:
        reply = parse_reply(f"{CALL_OPEN}{body}{CALL_CLOSE}")
        if len(reply.calls) == 1 and not reply.problems:
            return [("call", reply.calls[0])]
        raw = f"{CALL_OPEN}{body}{CALL_CLOSE if closed else ''}"
        return self._text(raw, final=True)


@dataclass
class Answer:
    """An answer in OpenAI's terms: its text (None when it is only calls), its calls as
    ``tool_calls`` entries (ids ``call_<hex>``), and the finish reason."""

    content: str | None
    tool_calls: list[dict[str, Any]]
    finish_reason: str

    @property
    def calls(self) -> list[ToolCall]:
        return [call_from_openai(c) for c in self.tool_calls]


def read_answer(result: GenResult) -> Answer:
    """``result``'s text read for calls (:class:`ReplyReader`, as a stream would read it)."""
    reader = ReplyReader()
    events = reader.feed(result.text) + reader.finish()
    text = "".join(v for kind, v in events if kind == "text")
    calls = [v.to_openai(new_call_id()) for kind, v in events if kind == "call"]
    finish = "tool_calls" if calls else result.finish_reason
    return Answer(text or (None if calls else ""), calls, finish)


def check_choice_met(plan: ToolPlan, answer: Answer) -> None:
    """422 ``tool_choice_unmet`` when ``required`` got no call of the tools, or a named function
    got no call or a call of another function (see the module docstring)."""
    if not plan.promises_call:
        return
    names = [c["function"]["name"] for c in answer.tool_calls]
    shown = {t["function"]["name"] for t in plan.tools}
    if plan.choice == "function":
        ok = bool(names) and all(n == plan.function for n in names)
        wanted = f"a call of {plan.function!r}"
    else:
        ok = bool(names) and all(n in shown for n in names)
        wanted = "a call of one of the tools"
    if ok:
        return
    said = (
        f"calls of {', '.join(map(repr, names))}"
        if names
        else f"text {_short(answer.content or '', 80)}"
    )
    raise APIError(
        422,
        f"tool_choice: the model answered with {said}, not {wanted}; this server cannot "
        "constrain decoding to calls yet, so it refuses rather than return an answer without "
        "the call asked for (send tool_choice 'auto' to get the model's own answer)",
        code="tool_choice_unmet",
        param="tool_choice",
    )


class PlainDeltas:
    """Stream deltas of an answer not read for calls: the text as it comes (the stream of a
    request without tools, unchanged)."""

    first: ClassVar[dict[str, Any]] = {"role": "assistant", "content": ""}  # never mutated

    def __init__(self) -> None:
        self.tool_calls: list[dict[str, Any]] = []

    def feed(self, text: str) -> list[dict[str, Any]]:
        return [{"content": text}]

    def finish(self) -> list[dict[str, Any]]:
        return []

    def finish_reason(self, generated: str) -> str:
        return generated


class CallDeltas(PlainDeltas):
    """Stream deltas of an answer read for calls, in OpenAI's shape: text as ``content``; each
    call, once its block closes, as ``tool_calls[{index, id, type, function: {name,
    arguments: ""}}]`` then its ``arguments``; the finish reason ``tool_calls`` after calls."""

    # content stays null when the answer is only calls
    first: ClassVar[dict[str, Any]] = {"role": "assistant"}

    def __init__(self) -> None:
        super().__init__()
        self._reader = ReplyReader()

    def feed(self, text: str) -> list[dict[str, Any]]:
        return self._deltas(self._reader.feed(text))

    def finish(self) -> list[dict[str, Any]]:
        return self._deltas(self._reader.finish())

    def finish_reason(self, generated: str) -> str:
        return "tool_calls" if self.tool_calls else generated

    def _deltas(self, events: list[tuple[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for kind, value in events:
            if kind == "text":
                out.append({"content": value})
                continue
            entry = value.to_openai(new_call_id())
            index = len(self.tool_calls)
            self.tool_calls.append(entry)
            head = {**entry, "function": {"name": value.name, "arguments": ""}}
            out.append({"tool_calls": [{"index": index, **head}]})
            args = entry["function"]["arguments"]
            out.append({"tool_calls": [{"index": index, "function": {"arguments": args}}]})
        return out


def answer_deltas(answer: Answer) -> list[dict[str, Any]]:
    """The deltas of an answer known at once (after a check), as :class:`CallDeltas` sends."""
    out: list[dict[str, Any]] = [dict(CallDeltas.first)]
    if answer.content:
        out.append({"content": answer.content})
    for index, entry in enumerate(answer.tool_calls):
        head = {**entry, "function": {"name": entry["function"]["name"], "arguments": ""}}
        out.append({"tool_calls": [{"index": index, **head}]})
        args = entry["function"]["arguments"]
        out.append({"tool_calls": [{"index": index, "function": {"arguments": args}}]})
    return out
