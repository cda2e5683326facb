"""The OpenAI wire format the server speaks: request bodies, response bodies and errors.

As in vLLM's ``entrypoints/openai/protocol.py``, every body that crosses the HTTP boundary is a
pydantic model in this one module, so the routes in :mod:`tunewise.serve.app` stay thin and the
shape
of each answer is written once. Requests ignore unknown fields (OpenAI clients send ``user``,
``seed``, ...), except those that ask for something this server does not do (``logprobs``,
``response_format`` other than text, ``tools``): a client relying on one is told, not answered as
if it had been honoured. Admin bodies forbid unknown fields, since a typo there is a mistake.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

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
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[_TextPart]

    def plain(self) -> dict[str, str]:
        text = (
            self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        )
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1, max_length=256)
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)  # decoding is greedy; accepted, ignored
    top_p: float | None = Field(None, ge=0, le=1)
    n: int = Field(1, ge=1, le=1)
    stream: bool = False
    stop: str | list[str] | None = None
    # Accepted only with values that ask for nothing (refuse_unsupported): no log-probabilities,
    # plain text, no tool calls.
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0)
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    functions: list[Any] | None = None  # the pre-tools names of the same
    function_call: str | dict[str, Any] | None = None

    def refuse_unsupported(self) -> None:
        """422 naming the first parameter that asks for what greedy text generation cannot give."""
        fmt = (self.response_format or {}).get("type", "text")
        asked = {
            "logprobs": (bool(self.logprobs), "log-probabilities are not returned"),
            "top_logprobs": (bool(self.top_logprobs), "log-probabilities are not returned"),
            "response_format": (
                fmt != "text",
                f"answers are plain text: only {{'type': 'text'}}, not {str(fmt)[:40]!r}",
            ),
            "tools": (bool(self.tools), "tool calls are not implemented"),
            "tool_choice": (
                self.tool_choice not in (None, "none", "auto"),
                "tool calls are not implemented",
            ),
            "functions": (bool(self.functions), "function calls are not implemented"),
            "function_call": (
                self.function_call not in (None, "none", "auto"),
                "function calls are not implemented",
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


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
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
    def of(cls, result: GenResult, *, cid: str, model: str, fingerprint: str) -> ChatCompletion:
        usage = Usage(
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            total_tokens=result.prompt_tokens + result.completion_tokens,
        )
        choice = Choice(
            message=AssistantMessage(content=result.text), finish_reason=result.finish_reason
        )
        return cls(
            id=cid, model=model, system_fingerprint=fingerprint, choices=[choice], usage=usage
        )


class StreamChoice(BaseModel):
    index: int = 0
    delta: dict[str, str]  # {"role", "content"} first, {"content"} after, {} with the finish
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
