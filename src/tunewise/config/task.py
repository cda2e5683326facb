"""The ``task`` section: what the model is asked to do, and what a correct answer looks like."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator

from tunewise.config.section import _Section


class TaskConfig(_Section):
    """What the model is asked to do, and what a correct answer looks like."""

    type: Literal["labels", "text", "json", "tools"] = Field(
        "labels",
        description=(
            "labels: outputs are categorical (one or more fields); text: free text; "
            "json: JSON objects; tools: function calls (OpenAI tool_calls, graded per call)"
        ),
    )
    system_prompt: str = Field(
        "", description="the 'good prompt' of the prompt baseline, also used by every candidate"
    )
    output_pattern: str | None = Field(
        None,
        description="regex the assistant output must match (format compliance); named groups are "
        "label fields, e.g. '^Category: (?P<category>.+)\\nPriority: (?P<priority>.+)$'. "
        "Inferred by `data check` when absent.",
    )
    labels: dict[str, list[str]] | None = Field(
        None, description="allowed values per label field; inferred from train when absent"
    )
    json_schema: dict[str, Any] | None = Field(
        None, description="JSON schema the output must conform to (type: json)"
    )
    tools: list[dict[str, Any]] | str | None = Field(
        None,
        description="the functions every example may call (type: tools): a list of OpenAI tool "
        "schemas, or the path of a JSON file holding one (relative to project.yaml). A data "
        "line's own 'tools' take precedence for that line",
    )
    refusal_pattern: str | None = Field(
        None,
        description="regex (searched, case-insensitive) that marks an answer as a refusal, e.g. "
        "'^(I'm sorry|I can't|I cannot)'. With it every candidate gets refusal_recall (refused "
        "where the reference refuses) and refusal_precision (refusals that were due); a line's "
        "'refusal': true/false overrides the pattern for its reference",
    )

    @field_validator("refusal_pattern")
    @classmethod
    def _refusal_pattern_compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"not a valid regex: {exc}") from None
        return v
