"""Parse chat JSONL into :class:`Example` records, keeping line numbers for every error.

Each line is ``{"messages": [{"role": ..., "content": ...}, ...]}``, optionally with
``"references": ["...", ...]``: further answers people accept for the final turn besides the
assistant's (free-text tasks score an answer against all of them). Validation collects *all*
problems (a user fixing a 10k-line file wants the whole list, not one error per run), each as a
:class:`Problem` rendered ``file:line: field: message``. :func:`input_text` is the text an
example is compared by (near-duplicates, leakage).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tunewise.data.files import JSONProblem, loads, require_file
from tunewise.data.tool_checks import check_tool_use
from tunewise.errors import DataError
from tunewise.fsio import sha256_json
from tunewise.runtime.tool_calls import (
    TOOLS_FIELD,
    attach_tools,
    canonical_message,
)

ROLES = ("system", "user", "assistant", "tool")
REFERENCES_FIELD = "references"  # beside "messages": further accepted answers for the last turn
REFUSAL_FIELD = "refusal"  # beside "messages": true when the reference answer is a refusal


@dataclass(frozen=True)
class Problem:
    path: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.field}: {self.message}"


@dataclass
class Example:
    """One conversation. ``line`` is 1-based in ``source``."""

    messages: list[dict[str, str]]
    line: int = 0
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt_messages(self) -> list[dict[str, str]]:
        """Everything before the final assistant turn: what a model is given at inference."""
        return self.messages[:-1]

    @property
    def target(self) -> str:
        """The final assistant turn: what the model should answer."""
        return self.messages[-1]["content"]

    @property
    def user_text(self) -> str:
        """The last user turn, the text that retrieval and near-duplicate checks look at."""
        for m in reversed(self.messages):
            if m["role"] == "user":
                return m["content"]
        return ""

    @property
    def references(self) -> list[str]:
        """Every answer people accept for the final turn: the assistant's, then the line's
        ``references`` field."""
        return [self.target, *self.meta.get(REFERENCES_FIELD, [])]

    @property
    def uid(self) -> str:
        """Content id: identical conversations share it."""
        return sha256_json(self.messages)[:16]

    @property
    def tools(self) -> list[dict[str, Any]]:
        """The tools this conversation may call (its line's ``tools``), empty when none."""
        return list(self.meta.get(TOOLS_FIELD) or [])

    def with_system(self, system_prompt: str) -> Example:
        """The same conversation with ``system_prompt`` as its system turn (unchanged when empty),
        and the tools it may call (:attr:`tools`) on that turn.

        Training and every evaluation candidate go through this, so the model is trained on exactly
        the prompt it is evaluated and served with, whatever system turn the data carried.
        """
        if not system_prompt and not self.tools:
            return self
        msgs = self.messages
        if system_prompt:
            msgs = [{"role": "system", "content": system_prompt}] + [
                m for m in msgs if m["role"] != "system"
            ]
        msgs = attach_tools(msgs, self.tools)
        return Example(messages=msgs, line=self.line, source=self.source, meta=self.meta)

    def with_tools(self, tools: list[dict[str, Any]] | None) -> Example:
        """The example with ``tools`` (the project's ``task.tools``) unless its line has its own."""
        if not tools or self.tools:
            return self
        return Example(self.messages, self.line, self.source, {**self.meta, TOOLS_FIELD: tools})

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {"messages": self.messages}
        row.update(self.meta)
        return row


def group_references(examples: list[Example]) -> list[Example]:
    """One item per prompt: examples whose turns before the answer are identical become one, whose
    references are all their answers (first seen first). How a data set that writes one line per
    reference (DART, E2E) is scored: an answer is judged against every reference of its input."""
    groups: dict[str, list[Example]] = {}
    for ex in examples:
        groups.setdefault(sha256_json(ex.prompt_messages), []).append(ex)
    out = []
    for members in groups.values():
        first = members[0]
        refs = list(dict.fromkeys(r for ex in members for r in ex.references))
        meta = {**first.meta, REFERENCES_FIELD: refs[1:]} if len(refs) > 1 else first.meta
        out.append(Example(first.messages, first.line, first.source, meta))
    return out


def expand_references(examples: list[Example]) -> list[Example]:
    """One training example per reference. Every reference is an answer people wrote for that
    input, so each is trained on (rather than one per epoch): the model sees the range of wording
    people accept, and on a few hundred inputs with ~3 references each that is ~3x the data. An
    epoch then means one pass over every reference."""
    out = []
    for ex in examples:
        extra = ex.meta.get(REFERENCES_FIELD)
        if not extra:
            out.append(ex)
            continue
        meta = {k: v for k, v in ex.meta.items() if k != REFERENCES_FIELD}
        for answer in ex.references:
            msgs = [*ex.messages[:-1], {**ex.messages[-1], "content": answer}]
            out.append(Example(msgs, ex.line, ex.source, meta))
    return out


def input_text(ex: Example) -> str:
    """What a model is asked (every turn before the answer, except the shared system prompt).

    Splitting and the data checks compare examples by this text (near-duplicates, leakage), so it
    lives beside :class:`Example` for both to share.
    """
    return "\n".join(m["content"] for m in ex.prompt_messages if m["role"] != "system")


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut short: a message quotes a bad value, not a megabyte of it."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validate_record(
    obj: Any, path: str, line: int, *, tools: list[dict[str, Any]] | None = None
) -> list[Problem]:
    """Every structural problem in one parsed line, and every problem of its tools and calls
    (:mod:`tunewise.data.tool_checks`; ``tools``: the project's, for lines without their own)."""
    out: list[Problem] = []

    def bad(fld: str, msg: str) -> None:
        out.append(Problem(path, line, fld, msg))

    if not isinstance(obj, dict):
        bad("(line)", f"expected a JSON object, got {type(obj).__name__}")
        return out
    if "messages" not in obj:
        bad("messages", "missing")
        return out
    msgs = obj["messages"]
    if not isinstance(msgs, list):
        bad("messages", f"expected a list, got {type(msgs).__name__}")
        return out
    if not msgs:
        bad("messages", "empty list")
        return out
    prev_role: str | None = None
    roles: list[str | None] = []
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            bad(where, f"expected an object, got {type(m).__name__}")
            roles.append(None)
            prev_role = None
            continue
        role = m.get("role")
        if role not in ROLES:
            bad(
                f"{where}.role", f"unknown role {_short(role)} (expected one of {', '.join(ROLES)})"
            )
        content = m.get("content")
        calls = m.get("tool_calls") if role == "assistant" else None
        if calls and content is None:
            pass  # a call turn: null content is how the OpenAI format writes "calls only"
        elif not isinstance(content, str):
            bad(f"{where}.content", f"expected a string, got {type(content).__name__}")
        elif not content.strip() and not calls:
            bad(f"{where}.content", "empty")
        if role == "tool" and not isinstance(m.get("tool_call_id"), str):
            bad(f"{where}.tool_call_id", "missing: a tool turn answers one call by its id")
        if role == "system" and i != 0:
            bad(f"{where}.role", "system message must be the first message")
        if role in ROLES and role == prev_role:
            bad(f"{where}.role", f"two consecutive '{role}' turns")
        roles.append(role)
        prev_role = role
    check_tool_use(obj, bad, quote=_short, project_tools=tools)
    _check_references(obj.get(REFERENCES_FIELD, []), bad)
    if REFUSAL_FIELD in obj and not isinstance(obj[REFUSAL_FIELD], bool):
        bad(REFUSAL_FIELD, f"expected true or false, got {_short(obj[REFUSAL_FIELD])}")
    if "assistant" not in roles:
        bad("messages", "no assistant turn")
    elif roles[-1] != "assistant":
        last = f"messages[{len(msgs) - 1}].role"
        bad(last, f"last turn must be 'assistant', got {_short(roles[-1])}")
    return out


def _check_references(refs: Any, bad: Callable[[str, str], None]) -> None:
    if not isinstance(refs, list):
        bad(REFERENCES_FIELD, f"expected a list of strings, got {type(refs).__name__}")
        return
    for i, r in enumerate(refs):
        if not isinstance(r, str):
            bad(f"{REFERENCES_FIELD}[{i}]", f"expected a string, got {type(r).__name__}")
        elif not r.strip():
            bad(f"{REFERENCES_FIELD}[{i}]", "empty")


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    require_file(path)  # a directory or a FIFO is named as such, and a FIFO is never opened
    try:
        with open(path, "rb") as fh:
            yield from _decoded_lines(path, fh)
    except OSError as exc:
        raise DataError(str(path), None, "(file)", f"cannot read: {exc.strerror}") from None


def _decoded_lines(path: Path, fh: IO[bytes]) -> Iterator[tuple[int, str]]:
    # Decoded line by line so that a file saved in another encoding gets a file:line message
    # instead of a traceback; a UTF-8 byte-order mark (Excel, Notepad) is tolerated.
    for lineno, data in enumerate(fh, start=1):
        try:
            raw = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(
                str(path),
                lineno,
                "(line)",
                f"not valid UTF-8 (byte {exc.start + 1}); save the file as UTF-8",
            ) from None
        if lineno == 1:
            raw = raw.lstrip("\ufeff")
        if raw.strip():
            yield lineno, raw


def parse_jsonl(
    path: str | Path, tools: list[dict[str, Any]] | None = None
) -> tuple[list[Example], list[Problem]]:
    """All valid examples and all problems in ``path`` (``tools``: see :func:`validate_record`)."""
    path = Path(path)
    examples: list[Example] = []
    problems: list[Problem] = []
    for lineno, raw in iter_lines(path):
        try:
            obj = loads(raw)
        except JSONProblem as exc:
            problems.append(Problem(str(path), lineno, exc.field or "(line)", exc.message))
            continue
        found = validate_record(obj, str(path), lineno, tools=tools)
        if found:
            problems.extend(found)
            continue
        meta = {k: v for k, v in obj.items() if k != "messages"}
        msgs = [canonical_message(m) for m in obj["messages"]]
        examples.append(Example(messages=msgs, line=lineno, source=str(path), meta=meta))
    return examples, problems


def load_examples(path: str | Path, tools: list[dict[str, Any]] | None = None) -> list[Example]:
    """Valid examples, or a :class:`DataError` naming the first problem (and how many more).

    ``tools`` (the project's ``task.tools``) go to every example whose line has none of its own.
    """
    examples, problems = parse_jsonl(path, tools)
    if tools:
        examples = [ex.with_tools(tools) for ex in examples]
    if problems:
        first = problems[0]
        more = (
            f" (and {len(problems) - 1} more; run `tunewise data check`)"
            if len(problems) > 1
            else ""
        )
        raise DataError(first.path, first.line, first.field, first.message + more)
    return examples
