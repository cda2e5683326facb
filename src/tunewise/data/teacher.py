"""Teacher labels: an OpenAI-compatible model answers the requests selected for labelling.

``tunewise data from-traffic --teacher URL --teacher-model M`` asks a stronger model (a frontier
API, a vLLM server, another ``tunewise serve``) to answer each selected request, and keeps an
answer only when it can be trusted without a person looking:

* it was not cut at the token budget and is not empty;
* it passes the task's format: the project's format check (labels in ``task.output_pattern``
  with allowed values, valid JSON against ``task.json_schema``, calls that name one of the tools
  and fit its parameters schema), and the line it makes is a valid data line (calls included);
* with ``--teacher-samples 2``, a second answer sampled at a temperature above 0 says the same
  (:func:`tunewise.data.from_traffic.same_answer`: the same text up to whitespace, or the same
  calls). A model that answers differently when asked again is guessing, and a guess trained
  on is noise with a confident face. Self-consistency of this kind is the filter of
  Wang et al. 2022 ("Self-Consistency Improves Chain of Thought Reasoning"), reduced to two
  samples and exact agreement.

A kept answer becomes the line's last turn, with ``origin.labelled_by: "teacher:<model>"``; a
dropped one leaves the production draft for a person (``tunewise rate --label``). The client is
:class:`tunewise.runtime.external.ExternalClient` (retries, backoff, the generation cache) with
tools and a temperature added to each request; sampled answers are cached under their own key, so
a rerun asks the endpoint nothing it already answered.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from tunewise.data.from_traffic import (
    ORIGIN,
    FormatCheck,
    assistant_turn,
    same_answer,
)
from tunewise.data.schema import validate_record
from tunewise.errors import UserError
from tunewise.runtime.backend import GenRequest, GenResult, cached_generate
from tunewise.runtime.external import ExternalClient
from tunewise.runtime.tool_calls import TOOLS_FIELD, call_from_openai, normalize_tools, reply_text

TEMPERATURE = 0.7  # the second sample's: far enough from greedy that a guess shows
MAX_TOKENS = 512
# Why an answer was not kept, in the order they are checked.
CUT, EMPTY, BAD_FORMAT, DISAGREES = "cut at max tokens", "empty", "format", "samples disagree"


@dataclass
class TeacherRequest(GenRequest):
    tools: list[dict[str, Any]] = field(default_factory=list)
    temperature: float = 0.0


@dataclass
class TeacherReport:
    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)


class TeacherClient(ExternalClient):
    """An :class:`ExternalClient` that sends the request's tools and a temperature, and reads an
    answer's ``tool_calls`` back into canonical text (``<tool_call>`` blocks)."""

    def generate(self, requests: list[GenRequest], *, progress: bool = False) -> list[GenResult]:
        return cached_generate(
            requests,
            [_key_text(r) for r in requests],
            partial(self._complete_misses, requests),
            model_key=self.model_key,
            cache=self.cache,
            progress=progress,
            label=f"asking {self.name}",
        )

    def _complete(self, req: GenRequest) -> GenResult:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": req.messages,
            "max_tokens": int(req.max_new_tokens),
            "temperature": getattr(req, "temperature", 0.0),
        }
        tools = getattr(req, "tools", None)
        if tools:
            body["tools"] = normalize_tools(tools)
        data = self._post("/chat/completions", body)
        try:
            choice = data["choices"][0]
            message = choice["message"]
            text = _message_text(message.get("content") or "", message.get("tool_calls"))
        except (KeyError, IndexError, TypeError, AttributeError):
            raise UserError(
                f"teacher '{self.name}': unexpected response shape: {json.dumps(data)[:200]}"
            ) from None
        usage = data.get("usage") or {}
        return GenResult(
            text=text,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
        )


def _message_text(content: str, tool_calls: Any) -> str:
    """An answer message as canonical text. A call the parser cannot read stays in the text as
    a ``<tool_call>`` block that is not a call, so the format check drops it."""
    if not tool_calls:
        return content
    calls, broken = [], []
    for entry in tool_calls:
        try:
            calls.append(call_from_openai(entry))
        except ValueError:
            broken.append(f"<tool_call>{json.dumps(entry, ensure_ascii=False)}</tool_call>")
    return "\n".join([reply_text(content, calls), *broken]).strip()


def _key_text(req: GenRequest) -> str:
    """What identifies a request in the generation cache: the messages, the tools and the
    temperature (a sampled answer must never be served as the greedy one, nor the reverse)."""
    return json.dumps(
        {
            "messages": req.messages,
            "tools": getattr(req, "tools", []),
            "temperature": getattr(req, "temperature", 0.0),
        },
        sort_keys=True,
        ensure_ascii=False,
    )


def teacher_prompt(row: dict[str, Any], system_prompt: str = "") -> list[dict[str, Any]]:
    """The turns a teacher answers: the request's, with the project's system prompt first when
    the request has none (it says what the answer must look like)."""
    turns = [dict(m) for m in row["messages"][:-1]]
    if system_prompt and not (turns and turns[0].get("role") == "system"):
        turns.insert(0, {"role": "system", "content": system_prompt})
    return turns


def _why_not(
    first: GenResult,
    second: GenResult | None,
    labelled: dict[str, Any],
    tools: list[dict[str, Any]],
    format_ok: FormatCheck | None,
) -> str | None:
    """Why the teacher's answer is not kept, or None to keep it."""
    if first.finish_reason == "length":
        return CUT
    if not first.text.strip():
        return EMPTY
    if format_ok is not None and format_ok(first.text, tools) is False:
        return BAD_FORMAT
    if validate_record(labelled, "teacher", 0, tools=tools or None):
        return BAD_FORMAT  # e.g. a call to a function the request did not offer
    if second is not None and not same_answer(first.text, second.text):
        return DISAGREES
    return None


def label_with_teacher(
    rows: Sequence[dict[str, Any]],
    client: ExternalClient,
    *,
    samples: int = 1,
    temperature: float = TEMPERATURE,
    max_tokens: int = MAX_TOKENS,
    format_ok: FormatCheck | None = None,
    system_prompt: str = "",
    tools: list[dict[str, Any]] | None = None,
    progress: bool = False,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], TeacherReport]:
    """(lines the teacher labelled, drafts it did not, the counts) for draft ``rows``.

    ``tools``: the project's, for rows without their own. The first sample is greedy
    (temperature 0); with ``samples=2`` the second is drawn at ``temperature``.
    """
    if samples not in (1, 2):
        raise UserError(f"--teacher-samples must be 1 or 2, not {samples}")
    if samples == 2 and not temperature > 0:
        raise UserError(f"--teacher-temperature must be above 0 for a second sample: {temperature}")
    row_tools = [list(r.get(TOOLS_FIELD) or tools or []) for r in rows]
    reqs = [
        TeacherRequest(
            messages=teacher_prompt(r, system_prompt), max_new_tokens=max_tokens, tools=t
        )
        for r, t in zip(rows, row_tools, strict=True)
    ]
    first = client.generate(list(reqs), progress=progress)
    second: list[GenResult | None] = [None] * len(rows)
    if samples == 2:
        sampled = [replace(r, temperature=temperature) for r in reqs]
        second = list(client.generate(list(sampled), progress=progress))
    kept, rest, report = [], [], TeacherReport()
    label = f"teacher:{client.model}"
    for row, t, a, b in zip(rows, row_tools, first, second, strict=True):
        labelled = {
            **row,
            "messages": [*row["messages"][:-1], assistant_turn(a.text)],
            ORIGIN: {**row[ORIGIN], "labelled_by": label},
        }
        why = _why_not(a, b, labelled, t, format_ok)
        if why is None:
            kept.append(labelled)
            report.kept += 1
        else:
            rest.append(row)
            report.dropped[why] += 1
    return kept, rest, report
