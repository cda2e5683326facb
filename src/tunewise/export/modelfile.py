"""Ollama Modelfile for an exported GGUF: FROM, TEMPLATE, PARAMETER stop, SYSTEM.

Ollama renders prompts with Go's ``text/template``, not Jinja, so the chat template has to be
restated. Rather than translate Jinja, the template is *measured*: rendered with marker contents
and cut into per-role prefixes and suffixes (:class:`ChatPieces`). Those pieces must reproduce the
Jinja output exactly on a set of probe conversations; only then is a Go template written, built
from the same pieces and the same rule (:meth:`ChatPieces.render` is the Go template in Python).
A template that does not decompose that way (content-dependent logic, tools) gets no TEMPLATE
line and a note saying so; the GGUF file still carries the Jinja template for llama.cpp.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunewise.runtime import models

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

    def render(self, messages: list[dict[str, str]]) -> str:
        """What the Go template renders: the generation prompt follows a last non-assistant turn."""
        out = []
        for i, m in enumerate(messages):
            out += [self.prefix(m["role"], i), m["content"], self.suffix[m["role"]]]
        if messages and messages[-1]["role"] != "assistant":
            out.append(self.generation)
        return "".join(out)


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


def _go_string(s: str) -> str:
    """A Go string literal action: exact text, no template whitespace trimming can touch it."""
    return "{{- " + json.dumps(s, ensure_ascii=False) + " }}" if s else ""


def go_template(p: ChatPieces) -> str:
    """Ollama's TEMPLATE for ``p`` over ``.Messages``; mirrors :meth:`ChatPieces.render`.

    Every action starts with ``{{-`` so the line breaks of this layout never reach the prompt,
    and every literal is a quoted string, so its own whitespace is kept exactly.
    """
    lines = ["{{- range $i, $m := .Messages }}", "{{- $last := eq (len (slice $.Messages $i)) 1 }}"]
    for n, role in enumerate(ROLES):
        lines.append(f'{{{{- {"if" if n == 0 else "else if"} eq $m.Role "{role}" }}}}')
        first, later = p.prefix(role, 0), p.prefix(role, 1)
        if first == later:
            lines.append(_go_string(first))
        else:
            lines += ["{{- if eq $i 0 }}", _go_string(first), "{{- else }}", _go_string(later)]
            lines.append("{{- end }}")
        lines += ["{{- $m.Content }}", _go_string(p.suffix[role])]
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
    model_dir: Path, gguf_name: str, *, system_prompt: str = ""
) -> tuple[str, list[str]]:
    """The Modelfile text for ``gguf_name`` (beside it) and notes for what could not be written."""
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
        lines.append(f'TEMPLATE """{go_template(pieces)}"""')
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
