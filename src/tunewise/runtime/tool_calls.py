"""Function calls in chat data: one text form for a call, one parser, one fallback prompt.

The OpenAI chat format writes a call as structure (an assistant turn with ``tool_calls``, each
``{"id", "type": "function", "function": {"name", "arguments": "<JSON string>"}}``, and ``content``
null or text; a ``tool`` turn answers a ``tool_call_id``). tunewise keeps that structure on the
message *and* writes the call as text into the assistant turn's ``content``, in the shape
Hermes-style parsers read (vLLM's ``--tool-call-parser hermes``, Qwen 2.5's template)::

    <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>

so that everything that works on an answer's text (training targets, generation, caches, the
graders, the server) works on calls unchanged: a call is trained on, generated and compared as the
text the model writes. :func:`parse_reply` reads that text back into calls; it also reads a bare
``{"name": ..., "arguments"|"parameters": ...}`` object (Llama 3.1's shape), so that a base model
prompted without training gets its fairest reading.

The tools a conversation may use ride on its system turn as the key ``"tools"`` (see
:func:`attach_tools`). How they reach the model is decided once, in
:func:`tunewise.runtime.chat.render`: a chat template that renders ``tools=`` gets them that way
(with the calls as structured ``tool_calls``, :func:`native_messages`); one that ignores them
(SmolLM2's) gets :func:`fallback_messages`: the tool list as JSON in the system turn
(:func:`tools_prompt`) and each tool result as a user turn wrapped in ``<tool_response>`` (a user
turn, not a ``tool`` role, because many templates refuse or mis-render unknown roles, and
consecutive results are merged so templates that insist on alternation accept them). Tool results
are context either way, never a training label: only assistant turns are.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

TOOLS_FIELD = "tools"  # beside "messages" in a data line, and on a system turn once attached
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
RESPONSE_OPEN, RESPONSE_CLOSE = "<tool_response>", "</tool_response>"
_BLOCK = re.compile(re.escape(CALL_OPEN) + r"(.*?)(?:" + re.escape(CALL_CLOSE) + r"|\Z)", re.S)


@dataclass(frozen=True)
class ToolCall:
    """One call: a function name and its arguments as JSON values (``"3"`` and ``3`` differ)."""

    name: str
    arguments: dict[str, Any]

    def to_text(self) -> str:
        """The call as the model writes it (one ``<tool_call>`` block)."""
        body = json.dumps({"name": self.name, "arguments": self.arguments}, ensure_ascii=False)
        return f"{CALL_OPEN}{body}{CALL_CLOSE}"

    def to_openai(self, call_id: str) -> dict[str, Any]:
        """The call as an OpenAI ``tool_calls`` entry (``arguments`` a JSON string)."""
        args = json.dumps(self.arguments, ensure_ascii=False)
        return {
            "id": call_id,
            "type": "function",
            "function": {"name": self.name, "arguments": args},
        }

    def key(self) -> str:
        """Equal for equal calls whatever the order of keys (lists keep their order)."""
        return json.dumps([self.name, self.arguments], sort_keys=True, ensure_ascii=False)


@dataclass
class Reply:
    """An answer read back: the text outside calls, the calls, and blocks that were not calls."""

    content: str
    calls: list[ToolCall] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def function_of(tool: dict[str, Any]) -> dict[str, Any]:
    """The function schema of a tool, ``{"type": "function", "function": {...}}`` or bare."""
    inner = tool.get("function")
    return inner if isinstance(inner, dict) else tool


def normalize_tools(tools: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tools in the OpenAI shape ``{"type": "function", "function": {name, description?,
    parameters?}}``, whichever of the two common shapes they came in."""
    return [{"type": "function", "function": function_of(t)} for t in tools]


def tool_names(tools: Iterable[dict[str, Any]]) -> list[str]:
    return [str(function_of(t).get("name", "")) for t in tools]


def reply_text(content: str | None, calls: Sequence[ToolCall]) -> str:
    """The canonical text of an assistant turn: its text (if any), then one line per call."""
    parts = [content.strip()] if content and content.strip() else []
    parts += [c.to_text() for c in calls]
    return "\n".join(parts)


def call_from_openai(entry: dict[str, Any]) -> ToolCall:
    """A ``tool_calls`` entry as a :class:`ToolCall`; ``arguments`` may be a JSON string (the
    OpenAI wire format) or already an object. Raises ``ValueError`` on anything else."""
    fn = entry.get("function") if isinstance(entry, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise ValueError("expected {'function': {'name': ..., 'arguments': ...}}")
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = _loads(args) if args.strip() else {}
        except json.JSONDecodeError as exc:
            raise ValueError(f"arguments are not JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(args, dict):
        raise ValueError(f"arguments must be a JSON object, got {type(args).__name__}")
    return ToolCall(fn["name"], args)


def canonical_message(msg: dict[str, Any]) -> dict[str, Any]:
    """A validated data or request message in tunewise's form: ``role`` and ``content`` (a
    string: for a call turn, :func:`reply_text`), plus ``tool_calls`` (arguments as JSON strings)
    on a call turn and ``tool_call_id`` on a tool turn."""
    role, content = msg["role"], msg.get("content")
    raw_calls = msg.get("tool_calls") if role == "assistant" else None
    if raw_calls:
        calls = [call_from_openai(c) for c in raw_calls]
        ids = [str(c.get("id") or f"call_{i}") for i, c in enumerate(raw_calls)]
        text = content if isinstance(content, str) else ""
        # A message written by tunewise (a split file, a traffic draft) already carries the
        # calls' text in its content: canonical twice must equal canonical once, or every
        # round trip through a file would add one more copy of each call.
        written = "\n".join(c.to_text() for c in calls)
        if text.endswith(written):
            text = text[: len(text) - len(written)]
        return {
            "role": role,
            "content": reply_text(text, calls),
            "tool_calls": [c.to_openai(i) for c, i in zip(calls, ids, strict=True)],
        }
    out: dict[str, Any] = {"role": role, "content": content if isinstance(content, str) else ""}
    if role == "tool" and msg.get("tool_call_id") is not None:
        out["tool_call_id"] = str(msg["tool_call_id"])
    return out


def _loads(text: str) -> Any:
    """``json.loads``, with the errors a hostile answer can raise besides a syntax error (nesting
    past the stack, an integer past Python's digit limit) turned into ``JSONDecodeError``."""
    try:
        return json.loads(text)
    except (RecursionError, ValueError) as exc:
        if isinstance(exc, json.JSONDecodeError):
            raise
        raise json.JSONDecodeError(type(exc).__name__, text, 0) from None


def _as_call(obj: Any) -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models write the OpenAI wire form inside the block
        try:
            args = _loads(args)
        except json.JSONDecodeError:
            return None
    return ToolCall(obj["name"], args) if isinstance(args, dict) else None


def parse_reply(text: str) -> Reply:
    """Calls and text in a model's answer.

    Every ``<tool_call>`` block is a call when it holds ``{"name": ..., "arguments": {...}}``
    (``"parameters"`` accepted, arguments as a JSON string accepted); an unclosed last block (the
    answer was cut) is read too. A block that is not a call is a problem, named. Without blocks,
    an answer that is one JSON object with a name and arguments is read as one call.
    """
    blocks = list(_BLOCK.finditer(text))
    if not blocks:
        stripped = text.strip()
        if stripped.startswith("{"):
            try:
                call = _as_call(_loads(stripped))
            except json.JSONDecodeError:
                call = None
            if call is not None:
                return Reply("", [call])
        return Reply(stripped)
    calls: list[ToolCall] = []
    problems: list[str] = []
    for i, m in enumerate(blocks):
        body = m.group(1).strip()
        try:
            call = _as_call(_loads(body))
        except json.JSONDecodeError as exc:
            problems.append(f"call {i + 1}: not JSON ({exc.msg})")
            continue
        if call is None:
            problems.append(f"call {i + 1}: expected {{'name': ..., 'arguments': {{...}}}}")
        else:
            calls.append(call)
    content = _BLOCK.sub("", text).strip()
    return Reply(content, calls, problems)


def tools_prompt(tools: Sequence[dict[str, Any]]) -> str:
    """The fallback instruction listing the tools, for templates that do not render ``tools=``.

    Written once here so that training, every rung, the judge and the server show a model the same
    words. The shape follows Hermes 2 Pro's function-calling prompt (tools as JSON inside
    ``<tools>``; calls inside ``<tool_call>``) because that is what the common parsers read.
    """
    listed = "\n".join(json.dumps(t, ensure_ascii=False) for t in normalize_tools(tools))
    return (
        "You may call functions to answer the request. The functions are listed as JSON "
        f"schemas inside <tools></tools>:\n<tools>\n{listed}\n</tools>\n"
        "To call a function, reply with one line per call, each a JSON object with the function's "
        f'name and arguments inside {CALL_OPEN}{CALL_CLOSE} tags:\n{CALL_OPEN}{{"name": '
        f'<function-name>, "arguments": <arguments-object>}}{CALL_CLOSE}\n'
        "When no function fits the request, answer in plain text instead."
    )


def attach_tools(
    messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    """``messages`` with ``tools`` on their system turn (a system turn with empty content is
    added when there is none). No tools: the messages unchanged."""
    out = [dict(m) for m in messages]
    if not tools:
        return out
    tools = normalize_tools(tools)
    if out and out[0].get("role") == "system":
        out[0][TOOLS_FIELD] = tools
    else:
        out.insert(0, {"role": "system", "content": "", TOOLS_FIELD: tools})
    return out


def attached_tools(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tools :func:`attach_tools` put on ``messages`` (empty when none)."""
    if messages and messages[0].get("role") == "system":
        return list(messages[0].get(TOOLS_FIELD) or [])
    return []


def fallback_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """Plain ``role``/``content`` turns for a template that does not render tools: the tools as
    :func:`tools_prompt` in the system turn, calls as their text (already the content), tool
    results as one user turn of ``<tool_response>`` blocks per run of results."""
    tools = attached_tools(messages)
    out: list[dict[str, str]] = []
    for m in messages:
        role, content = m["role"], m.get("content") or ""
        if role == "system" and tools:
            content = "\n\n".join(p for p in (content.strip(), tools_prompt(tools)) if p)
        if role == "tool":
            block = f"{RESPONSE_OPEN}\n{content}\n{RESPONSE_CLOSE}"
            if out and out[-1].get("_tool"):
                out[-1]["content"] += "\n" + block
                continue
            out.append({"role": "user", "content": block, "_tool": "1"})
            continue
        out.append({"role": role, "content": content})
    return [{"role": m["role"], "content": m["content"]} for m in out]


def native_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Turns for a template that renders tools itself: calls as structured ``tool_calls`` with
    arguments as objects (what Hugging Face templates expect), the text part as content, tool
    results as ``tool`` turns. The tools themselves go to ``apply_chat_template(tools=...)``."""
    out: list[dict[str, Any]] = []
    for m in messages:
        m = {k: v for k, v in m.items() if k != TOOLS_FIELD}
        if m["role"] == "system" and not (m.get("content") or "").strip():
            continue  # only carried the tools
        if m["role"] == "assistant" and m.get("tool_calls"):
            calls = [call_from_openai(c) for c in m["tool_calls"]]
            m = {
                "role": "assistant",
                "content": parse_reply(m.get("content") or "").content,
                "tool_calls": [
                    {"type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                    for c in calls
                ],
            }
        out.append(m)
    return out
