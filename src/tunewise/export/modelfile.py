"""Ollama Modelfile for an exported GGUF: FROM, TEMPLATE, PARAMETER stop, SYSTEM.

Ollama renders prompts with Go's ``text/template``, not Jinja, so the chat template has to be
restated. Rather than translate Jinja, the template is *measured*: rendered with marker contents
and cut into per-role prefixes and suffixes (:class:`ChatPieces`). Those pieces must reproduce the
Jinja output exactly on a set of probe conversations; only then is a Go template written, built
from the same pieces and the same rule (:meth:`ChatPieces.render` is the Go template in Python).
A template that does not decompose that way (content-dependent logic, tools) gets no TEMPLATE
line and a note saying so; the GGUF file still carries the Jinja template for llama.cpp.

Function calls (a model trained on a ``tools`` task, on a template that ignores tools such as
SmolLM2's): the TEMPLATE also restates tunewise's fallback prompt (``runtime/tool_calls.py``)
over Ollama's ``.Tools`` and ``.ToolCalls``: the tools as :func:`tools_prompt` words in the system
turn, each call as a ``<tool_call>`` line (which is also how Ollama finds the calls in an answer),
each run of tool results as one user turn of ``<tool_response>`` blocks. It is checked the same
way, on tool conversations (:func:`check_tool_pieces`). One difference remains and is said in a
note: Ollama hands the template typed values, so the JSON inside (the tool schemas, a call's
arguments) is written by Go's ``json`` (compact, its own key order), not by Python's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunewise.runtime import chat, models
from tunewise.runtime.tool_calls import (
    CALL_CLOSE,
    CALL_OPEN,
    RESPONSE_CLOSE,
    RESPONSE_OPEN,
    attach_tools,
    canonical_message,
    function_of,
    normalize_tools,
    tools_prompt,
)

ROLES = ("system", "user", "assistant")
# Contents for the probes: several lines, inner spaces, no outer whitespace (templates that trim
# content would otherwise disagree with Go's template, which has no trim).
PROBES = (
    ("user",),
    ("system", "user"),
    ("user", "assistant", "user"),
    ("system", "user", "assistant", "user"),
    ("system", "user", "assistant"),
)


def _mark(i: int) -> str:
    return f"TWMARK{i}X"


@dataclass(frozen=True)
class ChatPieces:
    """The chat template as text around each message's content."""

    first: dict[str, str]  # role -> text before the content of the first message
    later: dict[str, str]  # role -> text before the content of any later message
    suffix: dict[str, str]  # role -> text after the content
    generation: str  # text that asks the model to answer

    def prefix(self, role: str, index: int) -> str:
        if index == 0 and role in self.first:
            return self.first[role]
        return self.later.get(role, self.first.get(role, ""))

    def render(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        dumps: Callable[[Any], str] = json.dumps,
    ) -> str:
        """What the Go template renders: the generation prompt follows a last non-assistant turn.

        Messages are Ollama's (``tool_calls`` as ``{"function": {"name", "arguments": {...}}}``;
        ``tool`` turns); ``dumps`` stands for Go's ``json`` (Python's, to compare with training).
        """
        lead = bool(tools) and not (messages and messages[0]["role"] == "system")
        out = []
        if lead:
            out += [self.prefix("system", 0), tools_text(tools or [], dumps), self.suffix["system"]]
        for i, m in enumerate(messages):
            role, content = m["role"], m.get("content") or ""
            index = 0 if i == 0 and not lead else 1
            if role == "tool":
                after_tool = i > 0 and messages[i - 1]["role"] == "tool"
                before_tool = i + 1 < len(messages) and messages[i + 1]["role"] == "tool"
                out += ["\n" if after_tool else self.prefix("user", index)]
                out += [f"{RESPONSE_OPEN}\n{content}\n{RESPONSE_CLOSE}"]
                out += [] if before_tool else [self.suffix["user"]]
                continue
            if role == "system" and tools and i == 0:
                content += ("\n\n" if content else "") + tools_text(tools, dumps)
            for j, call in enumerate(m.get("tool_calls") or []):
                fn = call["function"]
                body = f'{{"name": {dumps(fn["name"])}, "arguments": {dumps(fn["arguments"])}}}'
                content += ("\n" if j or m.get("content") else "") + CALL_OPEN + body + CALL_CLOSE
            out += [self.prefix(role, index), content, self.suffix[role]]
        if messages and messages[-1]["role"] != "assistant":
            out.append(self.generation)
        return "".join(out)


def tools_prompt_pieces() -> tuple[str, str]:
    """:func:`tools_prompt`'s text before and after its tool lines, to restate it elsewhere."""
    probe = {"type": "function", "function": {"name": "tunewise_probe"}}
    line = json.dumps(normalize_tools([probe])[0], ensure_ascii=False)
    head, tail = tools_prompt([probe]).split(line)
    return head, tail


def tools_text(tools: list[dict[str, Any]], dumps: Callable[[Any], str] = json.dumps) -> str:
    """The tools prompt as the Go template writes it: every function with its name,
    description and parameters, in that order (Ollama's typed tools always have all three)."""
    head, tail = tools_prompt_pieces()
    lines = []
    for tool in tools:
        fn = function_of(tool)
        lines.append(
            f'{{"type": "function", "function": {{"name": {dumps(fn["name"])}, '
            f'"description": {dumps(fn.get("description", ""))}, '
            f'"parameters": {dumps(fn.get("parameters", {}))}}}}}'
        )
    return head + "\n".join(lines) + tail


def _render(tokenizer: Any, roles: tuple[str, ...], gen: bool, contents: list[str]) -> str:
    msgs = [{"role": r, "content": c} for r, c in zip(roles, contents, strict=True)]
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)


def _cut(tokenizer: Any, roles: tuple[str, ...], gen: bool = False) -> list[str]:
    """The rendered conversation split at each message's content (len(roles) + 1 segments)."""
    marks = [_mark(i) for i in range(len(roles))]
    text = _render(tokenizer, roles, gen, marks)
    segments = []
    for m in marks:
        if text.count(m) != 1:
            raise ValueError(f"content {m} rendered {text.count(m)} times")
        head, text = text.split(m)
        segments.append(head)
    return [*segments, text]


def _after(text: str, head: str) -> str:
    if not text.startswith(head):
        raise ValueError(f"{text!r} does not start with {head!r}")
    return text[len(head) :]


def measure(tokenizer: Any) -> ChatPieces | None:
    """The template's pieces, or None when they do not reproduce it on every probe."""
    try:
        first, suffix, later = {}, {}, {}
        for role in ("system", "user"):
            first[role], suffix[role] = _cut(tokenizer, (role,))
        _, between, suffix["assistant"] = _cut(tokenizer, ("user", "assistant"))
        later["assistant"] = _after(between, suffix["user"])
        later["user"] = _after(
            _cut(tokenizer, ("user", "assistant", "user"))[2], suffix["assistant"]
        )
        generation = _after(
            _render(tokenizer, ("user",), True, ["x"]), _render(tokenizer, ("user",), False, ["x"])
        )
        pieces = ChatPieces(first, later, suffix, generation)
        for n, roles in enumerate(PROBES):
            contents = [f"{r} turn {n}.{i}\nsecond line  with  spaces" for i, r in enumerate(roles)]
            msgs = [{"role": r, "content": c} for r, c in zip(roles, contents, strict=True)]
            want = _render(tokenizer, roles, roles[-1] != "assistant", contents)
            if pieces.render(msgs) != want:
                return None
        return pieces
    except Exception:  # a template that raises on a probe cannot be restated either
        return None


_PROBE_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": 'Find a "thing".',
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "book",
            "description": "Book it.",
            "parameters": {"type": "object", "properties": {"n": {"type": "integer"}}},
        },
    },
]
_LOOKUP = {"function": {"name": "lookup", "arguments": {"q": "x"}}}
_BOOK = {"function": {"name": "book", "arguments": {"n": 2}}}
# Every shape the fallback renders: tools with and without a system turn, calls with and without
# text, one and several in a turn, runs of tool results, a turn after them.
TOOL_PROBES: tuple[list[dict[str, Any]], ...] = (
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Find x, then book 2."},
        {"role": "assistant", "content": "On it.", "tool_calls": [_LOOKUP, _BOOK]},
        {"role": "tool", "content": "x is here"},
        {"role": "tool", "content": "booked"},
        {"role": "user", "content": "Thanks; and now?"},
    ],
    [
        {"role": "user", "content": "Find x."},
        {"role": "assistant", "content": "", "tool_calls": [_LOOKUP]},
        {"role": "tool", "content": "x is here"},
        {"role": "assistant", "content": "Found it."},
    ],
)


def _python_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def check_tool_pieces(tokenizer: Any, pieces: ChatPieces) -> bool:
    """Whether ``pieces`` with tools render :data:`TOOL_PROBES` as training renders them
    (JSON written the Python way: what is checked is where every piece of text goes)."""
    if chat.renders_tools(tokenizer):
        return False  # the template's own tool format: not tunewise's fallback
    for probe in TOOL_PROBES:
        ours = attach_tools([canonical_message(m) for m in probe], _PROBE_TOOLS)
        shaped, tools = chat.tool_shaped(tokenizer, ours)
        gen = probe[-1]["role"] != "assistant"
        want = tokenizer.apply_chat_template(
            shaped, tools=tools, tokenize=False, add_generation_prompt=gen
        )
        if pieces.render(probe, _PROBE_TOOLS, dumps=_python_json) != want:
            return False
    return True


def _go_string(s: str) -> str:
    """A Go string literal action: exact text, no template whitespace trimming can touch it."""
    return "{{- " + json.dumps(s, ensure_ascii=False) + " }}" if s else ""


def go_template(p: ChatPieces, tools: bool = False) -> str:
    """Ollama's TEMPLATE for ``p`` over ``.Messages``; mirrors :meth:`ChatPieces.render`
    (``tools``: with ``.Tools``, ``.ToolCalls`` and ``tool`` turns, see the module docstring).

    Every action starts with ``{{-`` so the line breaks of this layout never reach the prompt,
    and every literal is a quoted string, so its own whitespace is kept exactly.
    """
    if not tools:
        return _go_plain(p)
    lines = [
        '{{- $sys := and .Messages (eq (index .Messages 0).Role "system") }}',
        "{{- $lead := and .Tools (not $sys) }}",
        "{{- $prevtool := false }}",
        "{{- if $lead }}",
        _go_string(p.prefix("system", 0)),
        *_go_tools(),
        _go_string(p.suffix["system"]),
        "{{- end }}",
        "{{- range $i, $m := .Messages }}",
        "{{- $last := eq (len (slice $.Messages $i)) 1 }}",
        "{{- $first := and (eq $i 0) (not $lead) }}",
        '{{- $nexttool := and (not $last) (eq (index (slice $.Messages $i) 1).Role "tool") }}',
    ]
    for n, role in enumerate(ROLES):
        lines.append(f'{{{{- {"if" if n == 0 else "else if"} eq $m.Role "{role}" }}}}')
        lines += [*_go_prefix(p, role, "$first"), "{{- $m.Content }}"]
        if role == "system":
            lines += ["{{- if and $.Tools (eq $i 0) }}", '{{- if $m.Content }}{{- "\\n\\n" }}']
            lines += ["{{- end }}", *_go_tools(), "{{- end }}"]
        if role == "assistant":
            lines += [
                "{{- range $j, $c := $m.ToolCalls }}",
                '{{- if or $j $m.Content }}{{- "\\n" }}{{- end }}',
                _go_string(CALL_OPEN + '{"name": ') + "{{- json $c.Function.Name }}",
                _go_string(', "arguments": ') + "{{- json $c.Function.Arguments }}",
                _go_string("}" + CALL_CLOSE),
                "{{- end }}",
            ]
        lines.append(_go_string(p.suffix[role]))
    lines += ['{{- else if eq $m.Role "tool" }}', '{{- if $prevtool }}{{- "\\n" }}{{- else }}']
    lines += [*_go_prefix(p, "user", "$first"), "{{- end }}", _go_string(RESPONSE_OPEN + "\n")]
    lines += ["{{- $m.Content }}", _go_string("\n" + RESPONSE_CLOSE)]
    lines += ["{{- if not $nexttool }}", _go_string(p.suffix["user"]), "{{- end }}", "{{- end }}"]
    lines += ['{{- $prevtool = eq $m.Role "tool" }}']
    lines += ['{{- if and $last (ne $m.Role "assistant") }}', _go_string(p.generation)]
    lines += ["{{- end }}", "{{- end }}"]
    return "\n".join(line for line in lines if line)


def _go_prefix(p: ChatPieces, role: str, first: str) -> list[str]:
    """The prefix of a ``role`` turn: the first one's when ``first`` (a Go condition) holds."""
    head, later = p.prefix(role, 0), p.prefix(role, 1)
    if head == later:
        return [_go_string(head)]
    return [
        f"{{{{- if {first} }}}}",
        _go_string(head),
        "{{- else }}",
        _go_string(later),
        "{{- end }}",
    ]


def _go_tools() -> list[str]:
    """The tools prompt over ``$.Tools`` (:func:`tools_text`, with Go's ``json``)."""
    head, tail = tools_prompt_pieces()
    return [
        _go_string(head),
        "{{- range $j, $t := $.Tools }}",
        '{{- if $j }}{{- "\\n" }}{{- end }}',
        _go_string('{"type": "function", "function": {"name": ') + "{{- json $t.Function.Name }}",
        _go_string(', "description": ') + "{{- json $t.Function.Description }}",
        _go_string(', "parameters": ') + "{{- json $t.Function.Parameters }}",
        _go_string("}}"),
        "{{- end }}",
        _go_string(tail),
    ]


def _go_plain(p: ChatPieces) -> str:
    """The TEMPLATE of a model without function calls (``.Messages`` of three roles)."""
    lines = ["{{- range $i, $m := .Messages }}", "{{- $last := eq (len (slice $.Messages $i)) 1 }}"]
    for n, role in enumerate(ROLES):
        lines.append(f'{{{{- {"if" if n == 0 else "else if"} eq $m.Role "{role}" }}}}')
        lines += [*_go_prefix(p, role, "eq $i 0"), "{{- $m.Content }}", _go_string(p.suffix[role])]
    lines.append("{{- end }}")
    lines.append('{{- if and $last (ne $m.Role "assistant") }}')
    lines += [_go_string(p.generation), "{{- end }}", "{{- end }}"]
    return "\n".join(line for line in lines if line)


def stop_tokens(tokenizer: Any, p: ChatPieces) -> list[str]:
    """Special tokens that end the assistant's turn or start the next one, then EOS."""
    special = [t.content for t in tokenizer.added_tokens_decoder.values() if t.special]
    where = p.suffix["assistant"] + p.prefix("user", 1)
    found = sorted((where.index(t), t) for t in special if t and t in where)
    stops = [t for _, t in found]
    if tokenizer.eos_token and tokenizer.eos_token not in stops:
        stops.append(tokenizer.eos_token)
    return stops


def build_modelfile(
    model_dir: Path, gguf_name: str, *, system_prompt: str = "", tools: bool = False
) -> tuple[str, list[str]]:
    """The Modelfile text for ``gguf_name`` (beside it) and notes for what could not be written.

    ``tools``: the model was trained on function calls; its TEMPLATE then renders them too.
    """
    tokenizer = models.load_tokenizer(models.ModelRef(model_dir.name, model_dir, "", "local"))
    notes: list[str] = []
    lines = [
        "# Written by `tunewise export gguf`. Use: ollama create NAME -f Modelfile",
        f"FROM ./{gguf_name}",
    ]
    pieces = measure(tokenizer)
    if pieces is None:
        notes.append(
            "the chat template does not split into per-role prefixes and suffixes; the Modelfile "
            "has no TEMPLATE (Ollama falls back to the template inside the GGUF, if it knows it)"
        )
    else:
        with_tools = tools and _tool_notes(tokenizer, pieces, notes)
        lines.append(f'TEMPLATE """{go_template(pieces, tools=with_tools)}"""')
        for stop in stop_tokens(tokenizer, pieces):
            lines.append(f"PARAMETER stop {json.dumps(stop, ensure_ascii=False)}")
    # tunewise evaluates greedy answers; temperature 0 makes Ollama answer the same way.
    lines.append("PARAMETER temperature 0")
    if system_prompt and '"""' in system_prompt:
        notes.append(
            'the system prompt contains """ and cannot be written as SYSTEM; add it by hand'
        )
    elif system_prompt:
        lines.append(f'SYSTEM """{system_prompt}"""')
    return "\n".join(lines) + "\n", notes


def _tool_notes(tokenizer: Any, pieces: ChatPieces, notes: list[str]) -> bool:
    """Whether the TEMPLATE can render function calls as trained (else a note says why not)."""
    if chat.renders_tools(tokenizer):
        notes.append(
            "the chat template renders tools in its own format; the TEMPLATE restates plain "
            "turns only: serve function calls with Ollama's template for the model's family "
            "(from the GGUF) or through `tunewise serve`"
        )
        return False
    if not check_tool_pieces(tokenizer, pieces):
        notes.append(
            "the tools prompt does not restate in this chat template; the TEMPLATE has no "
            "tools: serve function calls through `tunewise serve`"
        )
        return False
    notes.append(
        "TEMPLATE shows tools and calls as training did, except the JSON inside (tool schemas, "
        "call arguments): Ollama writes it with Go's json, compact and in its own key order"
    )
    return True
