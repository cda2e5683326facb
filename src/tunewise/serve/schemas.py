"""The OpenAI wire format the server speaks: request bodies, response bodies and errors.

As in vLLM's ``entrypoints/openai/protocol.py``, every body that crosses the HTTP boundary is a
pydantic model in this one module, so the routes in :mod:`tunewise.serve.app` stay thin and the
shape
of each answer is written once. Requests ignore unknown fields (OpenAI clients send ``user``,
``metadata``, ...), except those that ask for something this server does not do (``logprobs``,
``response_format`` other than text, the legacy ``functions``): a client relying on one is told,
not answered as if it had been honoured. ``tools`` and ``tool_choice`` are taken as sent and
checked by :mod:`tunewise.serve.tools` (a 400 naming the field). Admin bodies forbid unknown
fields, since a typo there is a mistake.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tunewise.runtime.backend import GenResult

# --------------------------------------------------------------------------- errors


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


class APIError(Exception):
    """An error rendered in OpenAI's shape: {"error": {message, type, param, code}}."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.info = ErrorInfo(message=message, type=type, param=param, code=code)

    @property
    def message(self) -> str:
        return self.info.message

    def body(self) -> dict[str, Any]:
        return ErrorResponse(error=self.info).model_dump()

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


# --------------------------------------------------------------------------- requests


class _TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    # null only on an assistant turn that makes calls (OpenAI's "calls only")
    content: str | list[_TextPart] | None = None
    # checked by tunewise.serve.tools.check_messages (a 400 naming the field), not here
    tool_calls: Any = None
    tool_call_id: Any = None

    @model_validator(mode="after")
    def _content_given(self) -> ChatMessage:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content: required (null only on an assistant turn with tool_calls)")
        return self

    @property
    def has_tool_fields(self) -> bool:
        return self.role == "tool" or self.tool_calls is not None

    def plain(self) -> dict[str, str]:
        if self.content is None or isinstance(self.content, str):
            text = self.content or ""
        else:
            text = "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}

    def turn(self) -> dict[str, Any]:
        """The turn as OpenAI wrote it, content as text (None kept), for ``check_messages``."""
        out: dict[str, Any] = {**self.plain(), "tool_calls": self.tool_calls}
        if self.content is None:
            out["content"] = None
        if self.role == "tool":
            out["tool_call_id"] = self.tool_call_id
        return out


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1, max_length=256)
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    # Omitted means greedy (temperature 0), not OpenAI's 1.0: a served answer then equals the
    # evaluated one. Above 0 the engine samples, within the top_p nucleus, repeatably with seed.
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)  # vLLM's bounds: a 64-bit integer
    n: int = Field(1, ge=1, le=1)
    stream: bool = False
    stop: str | list[str] | None = None
    # Checked by tunewise.serve.tools (plan_tools): a 400 naming the field, OpenAI's way.
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None  # False: at most one call (decoded under the grammar)
    # Accepted only with values that ask for nothing (refuse_unsupported): no log-probabilities,
    # plain text, none of the pre-tools function-call parameters.
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0)
    response_format: dict[str, Any] | None = None
    functions: list[Any] | None = None  # the pre-tools names of tools / tool_choice
    function_call: str | dict[str, Any] | None = None

    def refuse_unsupported(self) -> None:
        """422 naming the first parameter that asks for what this server does not give."""
        fmt = (self.response_format or {}).get("type", "text")
        asked = {
            "logprobs": (bool(self.logprobs), "log-probabilities are not returned"),
            "top_logprobs": (bool(self.top_logprobs), "log-probabilities are not returned"),
            "response_format": (
                fmt != "text",
                f"answers are plain text: only {{'type': 'text'}}, not {str(fmt)[:40]!r}",
            ),
            "functions": (bool(self.functions), "the legacy form: send tools instead"),
            "function_call": (
                self.function_call not in (None, "none", "auto"),
                "the legacy form: send tool_choice instead",
            ),
        }
        for param, (wanted, why) in asked.items():
            if wanted:
                raise APIError(
                    422,
                    f"{param}: not supported by this server ({why})",
                    code="unsupported_parameter",
                    param=param,
                )

    def sampling(self) -> dict[str, Any]:
        """The request's ``temperature``, ``top_p`` and ``seed`` as GenRequest fields, the
        omitted ones at tunewise's defaults (greedy, the whole nucleus, unseeded)."""
        return {
            "temperature": self.temperature or 0.0,
            "top_p": 1.0 if self.top_p is None else self.top_p,
            "seed": self.seed,
        }

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        if len(stops) > 4 or any(not s for s in stops):
            raise APIError(422, "stop: at most 4 non-empty strings", param="stop")
        return stops

    def new_tokens(self, default: int, limit: int) -> int:
        """The completion budget asked for (``default`` when none), at most ``limit``."""
        wanted = self.max_completion_tokens or self.max_tokens or min(default, limit)
        if wanted > limit:
            raise APIError(422, f"max_tokens: at most {limit}", param="max_tokens")
        return wanted


class AdminModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(None, min_length=1, max_length=256)
    name: str | None = Field(None, min_length=1, max_length=64)
    path: str | None = None


# --------------------------------------------------------------------------- responses


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    base: str


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "tunewise"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class FunctionCall(BaseModel):
    name: str
    arguments: str  # a JSON object, as a string (OpenAI's wire form)


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ToolCallMessage(BaseModel):
    """An answer that calls: ``content`` is its text part, null when it is only calls."""

    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallOut]


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage | ToolCallMessage
    finish_reason: str
    logprobs: None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class _Completion(BaseModel):
    """The fields a completion and each of its stream chunks share."""

    id: str
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    system_fingerprint: str


class ChatCompletion(_Completion):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[Choice]
    usage: Usage

    @classmethod
    def of(
        cls,
        result: GenResult,
        *,
        cid: str,
        model: str,
        fingerprint: str,
        answer: Any | None = None,
    ) -> ChatCompletion:
        """The completion of ``result``; ``answer`` (a :class:`tunewise.serve.tools.Answer`):
        its text read for calls, when the request showed tools."""
        usage = Usage(
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            total_tokens=result.prompt_tokens + result.completion_tokens,
        )
        if answer is None:
            message: AssistantMessage | ToolCallMessage = AssistantMessage(content=result.text)
            finish = result.finish_reason
        elif answer.tool_calls:
            message = ToolCallMessage(content=answer.content, tool_calls=answer.tool_calls)
            finish = answer.finish_reason
        else:
            message, finish = AssistantMessage(content=answer.content or ""), answer.finish_reason
        choice = Choice(message=message, finish_reason=finish)
        return cls(
            id=cid, model=model, system_fingerprint=fingerprint, choices=[choice], usage=usage
        )


class StreamChoice(BaseModel):
    index: int = 0
    # {"role", "content"} first, {"content"} or {"tool_calls"} after, {} with the finish
    delta: dict[str, Any]
    finish_reason: str | None = None


class ChatCompletionChunk(_Completion):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[StreamChoice]


class AdapterStatus(BaseModel):
    registered: list[str]
    loaded: list[str]
    resolved: dict[str, str]
    recent_batches: list[dict[str, Any]]


class LoadResult(BaseModel):
    loaded: str | None
    registered: list[str]


class UnloadResult(BaseModel):
    unloaded: str
    registered: list[str]


class RefreshResult(BaseModel):
    changed: dict[str, dict[str, str]]
    resolved: dict[str, str]
    # path-loaded adapters dropped because the registry has taken their name since they loaded
    dropped: list[str] = Field(default_factory=list)
