"""OpenAI-compatible HTTP server: one base model, many LoRA adapters, micro-batched.

``model`` in a request may be the base model's name (or ``base``), an adapter given with
``--adapters name=PATH``, or a registry entry: ``name`` (its production alias, else its latest
version), ``name@alias`` or ``name:version``. Registry versions are loaded lazily onto the one
base model (the Engine keeps at most ``max_loaded_adapters`` resident, least recently used out)
and their files are hash-verified on load; a corrupted version is never served.

Alias resolutions are cached until ``POST /admin/adapters/refresh``: a ``registry rollback``
takes effect on the next request after a refresh, without a restart and without failing a
request in flight (the old version stays loaded until the LRU drops it).

Non-streaming requests go through a micro-batching queue: the worker takes the first waiting
request, collects whatever else arrives within ``batch_window_ms`` (up to ``max_batch``), and
makes one ``Engine.generate`` call, which groups the requests per adapter. Streams run in their
own threads; the Engine interleaves their forward steps with the batches.

Bad input always gets a 4xx in OpenAI's error shape (unknown model 404, bad schema 422, prompt
too long or body too large 413, bad key 401); an exception there is a bug and is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunewise.errors import UserError

log = logging.getLogger("tunewise.serve")


# --------------------------------------------------------------------------- errors


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
        self.status, self.message, self.type, self.code, self.param = (
            status,
            message,
            type,
            code,
            param,
        )

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


# --------------------------------------------------------------------------- request schema


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
    # Unknown OpenAI fields (user, seed, logprobs, ...) are accepted and ignored, as clients send them.
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

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        if len(stops) > 4 or any(not s for s in stops):
            raise APIError(422, "stop: at most 4 non-empty strings", param="stop")
        return stops


class AdminModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(None, min_length=1, max_length=256)
    name: str | None = Field(None, min_length=1, max_length=64)
    path: str | None = None


# --------------------------------------------------------------------------- settings & state


@dataclass
class ServeSettings:
    api_key: str | None = None
    batch_window_ms: float = 5.0
    max_batch: int = 32
    max_tokens_default: int = 256
    max_tokens_limit: int = 1024
    max_body_bytes: int = 1 << 20
    adapters: list[str] = field(default_factory=list)  # preloaded: registry specs or name=PATH


@dataclass
class _Job:
    request: Any  # GenRequest
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


class MicroBatcher:
    """Collect requests for a few ms, then make one ``Engine.generate`` call for all of them."""

    def __init__(self, engine: Any, window_s: float, max_batch: int) -> None:
        self.engine, self.window_s, self.max_batch = engine, window_s, max_batch
        self._q: queue.Queue[_Job | None] = queue.Queue()
        self.batches: list[dict[str, Any]] = []  # recent batch sizes per adapter (for /admin)
        self._thread = threading.Thread(target=self._run, name="tunewise-batcher", daemon=True)
        self._thread.start()

    def submit(self, request: Any) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._q.put(_Job(request, fut, loop))
        return fut

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            first = self._q.get()
            if first is None:
                return
            jobs = [first]
            deadline = time.monotonic() + self.window_s
            while len(jobs) < self.max_batch:
                remaining = deadline - time.monotonic()
                try:
                    job = (
                        self._q.get(timeout=max(remaining, 0))
                        if remaining > 0
                        else self._q.get_nowait()
                    )
                except queue.Empty:
                    break
                if job is None:
                    self._q.put(None)  # finish this batch, then stop
                    break
                jobs.append(job)
            self._execute(jobs)

    def _execute(self, jobs: list[_Job]) -> None:
        counts: dict[str, int] = {}
        for j in jobs:
            key = j.request.adapter or "<base>"
            counts[key] = counts.get(key, 0) + 1
        self.batches = [*self.batches[-99:], {"size": len(jobs), "adapters": counts}]
        try:
            results = self.engine.generate([j.request for j in jobs])
        except Exception as exc:
            if len(jobs) > 1:  # isolate the failing request; the others still get answers
                for j in jobs:
                    self._execute([j])
                return
            _resolve(jobs[0], exc=exc)
            return
        for j, r in zip(jobs, results, strict=True):
            _resolve(j, result=r)


def _resolve(job: _Job, *, result: Any = None, exc: BaseException | None = None) -> None:
    def _set() -> None:
        if job.future.done():
            return  # the client went away
        if exc is not None:
            job.future.set_exception(exc)
        else:
            job.future.set_result(result)

    job.loop.call_soon_threadsafe(_set)


class ModelTable:
    """Maps request ``model`` strings to Engine adapter names, loading registry versions lazily."""

    def __init__(self, engine: Any, registry: Any | None) -> None:
        self.engine = engine
        self.registry = registry
        self.base_ids = {engine.ref.name, "base"}
        self.direct: dict[str, Path] = {}  # name -> adapter dir (from --adapters name=PATH)
        self.resolved: dict[str, str] = {}  # model string -> engine adapter key (alias snapshot)
        # adapter key -> the project system prompt it was trained with (from the registry record)
        self.system_prompts: dict[str, str] = {}
        self._lock = threading.Lock()

    def add_direct(self, name: str, path: Path) -> str:
        from tunewise.registry import validate_name

        validate_name(name, "adapter name")
        self.engine.load_adapter(name, Path(path))
        self.direct[name] = Path(path)
        return name

    def refresh(self) -> dict[str, Any]:
        """Forget alias resolutions so the next request re-reads the registry."""
        with self._lock:
            before = dict(self.resolved)
            self.resolved = {k: v for k, v in before.items() if k in self.direct}
        after = {}
        for spec in before:
            if spec in self.direct:
                continue
            try:
                after[spec] = self.resolve(spec)
            except APIError as exc:
                after[spec] = f"error: {exc.message}"
        return {
            "changed": {
                s: {"from": before[s], "to": after[s]} for s in after if after[s] != before[s]
            },
            "resolved": after,
        }

    def resolve(self, model: str) -> str | None:
        """The Engine adapter key for ``model`` (None = the base model), loading it if needed."""
        if model in self.base_ids:
            return None
        if model in self.direct:
            if model not in self.engine.adapters():
                self.engine.load_adapter(model, self.direct[model])
            return model
        with self._lock:
            key = self.resolved.get(model)
            if key is not None and key in self.engine.adapters():
                return key
            return self._load_from_registry(model)

    def _load_from_registry(self, model: str) -> str:
        from tunewise.registry import CorruptedFileError

        if self.registry is None:
            raise APIError(404, f"model {model!r} not found", code="model_not_found", param="model")
        try:
            v = self.registry.lookup(model)
        except UserError as exc:
            raise APIError(
                404, f"model {model!r} not found: {exc}", code="model_not_found", param="model"
            ) from None
        key = v.spec
        if v.kind != "lora":
            raise APIError(
                409,
                f"{key} is a full fine-tune, not an adapter: serve it with "
                f"`tunewise serve --base` on its exported model",
                code="not_an_adapter",
            )
        if v.base_weight_hash != self.engine.ref.weight_hash:
            raise APIError(
                409,
                f"{key} was trained on base {v.base_weight_hash[:12]}…, but this "
                f"server's base {self.engine.ref.name!r} is "
                f"{self.engine.ref.weight_hash[:12]}…; refusing to serve it",
                code="base_mismatch",
                param="model",
            )
        if key not in self.engine.adapters():
            try:
                v = self.registry.resolve(key)  # hash-verified files
            except CorruptedFileError as exc:
                raise APIError(
                    503, str(exc), type="server_error", code="corrupted_adapter"
                ) from None
            self.engine.load_adapter(key, v.weights_dir, base_hash=v.base_weight_hash)
        prompt = ((v.config or {}).get("task") or {}).get("system_prompt")
        if prompt:
            self.system_prompts[key] = prompt
        self.resolved[model] = key
        return key

    def listing(self) -> list[str]:
        ids = [self.engine.ref.name, *self.direct]
        if self.registry is not None:
            for row in self.registry.summary():
                ids.append(row["name"])
                ids += [f"{row['name']}@{a}" for a in row["aliases"]]
        return ids


# --------------------------------------------------------------------------- app


def create_app(
    engine: Any, *, settings: ServeSettings | None = None, registry: Any | None = None
) -> FastAPI:
    """The FastAPI app over ``engine`` (an :class:`tunewise.infer.Engine`)."""
    from tunewise.infer import GenRequest, PromptTooLongError

    settings = settings or ServeSettings()
    table = ModelTable(engine, registry)
    for entry in settings.adapters:
        try:
            if "=" in entry:
                name, path = entry.split("=", 1)
                table.add_direct(name, Path(path))
            else:
                table.resolve(entry)
        except APIError as exc:
            raise UserError(f"--adapters {entry}: {exc.message}") from None
    batcher = MicroBatcher(engine, settings.batch_window_ms / 1000, settings.max_batch)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(batcher.close)  # finish queued batches, stop the worker

    app = FastAPI(
        title="tunewise", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )
    app.state.table, app.state.batcher, app.state.engine = table, batcher, engine

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
        return APIError(exc.status_code, str(exc.detail), type=kind).response()

    @app.exception_handler(Exception)
    async def _bug(_: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return APIError(
            500, f"internal error: {type(exc).__name__}", type="server_error"
        ).response()

    def _check_key(request: Request) -> None:
        if not settings.api_key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), settings.api_key.encode()
        )
        if not ok:
            raise APIError(
                401,
                "invalid or missing API key (Authorization: Bearer ...)",
                type="authentication_error",
                code="invalid_api_key",
            )

    async def _json_body(request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > settings.max_body_bytes:
            raise APIError(
                413, f"request body over {settings.max_body_bytes} bytes", code="body_too_large"
            )
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > settings.max_body_bytes:
                raise APIError(
                    413, f"request body over {settings.max_body_bytes} bytes", code="body_too_large"
                )
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks) or b"null")
        except (ValueError, RecursionError) as exc:  # bad JSON, bad UTF-8, absurd nesting or ints
            raise APIError(422, f"body is not valid JSON: {exc}", code="invalid_json") from None

    def _validate(model_cls: type[BaseModel], raw: Any) -> Any:
        try:
            return model_cls.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise APIError(
                422,
                f"{where}: {first['msg']} ({exc.error_count()} error(s))",
                code="invalid_schema",
                param=where,
            ) from None

    async def _resolve_model(model: str) -> str | None:
        try:
            return await run_in_threadpool(table.resolve, model)
        except APIError:
            raise
        except UserError as exc:  # e.g. the Engine refused the adapter
            raise APIError(409, str(exc), code="adapter_refused", param="model") from None

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "base": engine.ref.name}

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        _check_key(request)
        ids = await run_in_threadpool(table.listing)
        return {
            "object": "list",
            "data": [
                {"id": i, "object": "model", "created": 0, "owned_by": "tunewise"} for i in ids
            ],
        }

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        _check_key(request)
        req: ChatRequest = _validate(ChatRequest, await _json_body(request))
        max_new = (
            req.max_completion_tokens
            or req.max_tokens
            or min(settings.max_tokens_default, settings.max_tokens_limit)
        )
        if max_new > settings.max_tokens_limit:
            raise APIError(
                422, f"max_tokens: at most {settings.max_tokens_limit}", param="max_tokens"
            )
        stops = req.stops()
        adapter = await _resolve_model(req.model)
        messages = [m.plain() for m in req.messages]
        trained_with = table.system_prompts.get(adapter) if adapter else None
        if trained_with and messages[0]["role"] != "system":
            # A fine-tune answers best under the system prompt it was trained with; a client that
            # sends none gets that one rather than the chat template's generic default.
            messages.insert(0, {"role": "system", "content": trained_with})
        try:
            n_prompt = await run_in_threadpool(engine.prompt_tokens, messages)
        except Exception as exc:  # a chat template may reject a conversation shape
            raise APIError(
                422, f"messages: cannot render with the chat template: {exc}", param="messages"
            ) from None
        if n_prompt + max_new > engine.context_length:
            raise APIError(
                413,
                f"prompt of {n_prompt} tokens + max_tokens {max_new} exceeds the "
                f"context of {engine.context_length} tokens",
                code="context_length_exceeded",
                param="messages",
            )
        gen = GenRequest(messages=messages, adapter=adapter, max_new_tokens=max_new, stop=stops)
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        fingerprint = adapter or f"base-{engine.ref.weight_hash[:12]}"
        if req.stream:
            return StreamingResponse(
                _sse(engine, gen, req.model, cid, fingerprint),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Tunewise-Model": fingerprint},
            )
        try:
            result = await batcher.submit(gen)
        except PromptTooLongError as exc:
            raise APIError(413, str(exc), code="context_length_exceeded") from None
        except UserError as exc:
            raise APIError(409, str(exc), code="adapter_unavailable", param="model") from None
        body = {
            "id": cid,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.model,
            "system_fingerprint": fingerprint,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.text},
                    "finish_reason": result.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
                "total_tokens": result.prompt_tokens + result.completion_tokens,
            },
        }
        return JSONResponse(body, headers={"X-Tunewise-Model": fingerprint})

    @app.get("/admin/adapters")
    async def admin_list(request: Request) -> dict[str, Any]:
        _check_key(request)
        return {
            "registered": engine.adapters(),
            "loaded": engine.loaded_adapters(),
            "resolved": dict(table.resolved),
            "recent_batches": batcher.batches[-20:],
        }

    @app.post("/admin/adapters/load")
    async def admin_load(request: Request) -> dict[str, Any]:
        _check_key(request)
        body: AdminModel = _validate(AdminModel, await _json_body(request))
        if body.name and body.path:
            try:
                key = await run_in_threadpool(table.add_direct, body.name, Path(body.path))
            except UserError as exc:
                raise APIError(422, str(exc), param="path") from None
        elif body.model:
            key = await _resolve_model(body.model)
        else:
            raise APIError(422, "give either {model} or {name, path}", param="model")
        return {"loaded": key, "registered": engine.adapters()}

    @app.post("/admin/adapters/unload")
    async def admin_unload(request: Request) -> dict[str, Any]:
        _check_key(request)
        body: AdminModel = _validate(AdminModel, await _json_body(request))
        target = body.model or body.name
        if not target:
            raise APIError(422, "give {model}", param="model")
        key = table.resolved.get(target, target)
        if key not in engine.adapters():
            raise APIError(404, f"adapter {target!r} is not loaded", code="model_not_found")
        await run_in_threadpool(engine.unload_adapter, key)
        table.resolved = {m: k for m, k in table.resolved.items() if k != key}
        table.direct.pop(key, None)
        return {"unloaded": key, "registered": engine.adapters()}

    @app.post("/admin/adapters/refresh")
    async def admin_refresh(request: Request) -> dict[str, Any]:
        _check_key(request)
        return await run_in_threadpool(table.refresh)

    return app


async def _sse(
    engine: Any, gen: Any, model: str, cid: str, fingerprint: str
) -> AsyncIterator[bytes]:
    """Server-sent events: role chunk, content deltas, a finish chunk, then ``data: [DONE]``."""
    loop = asyncio.get_running_loop()
    q: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    cancelled = threading.Event()

    def produce() -> None:
        try:
            for delta in engine.stream(gen):
                if cancelled.is_set():
                    break
                loop.call_soon_threadsafe(q.put_nowait, ("delta", delta))
            loop.call_soon_threadsafe(q.put_nowait, ("end", None))
        except Exception as exc:
            loop.call_soon_threadsafe(q.put_nowait, ("error", exc))

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        body = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": fingerprint,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(body)}\n\n".encode()

    threading.Thread(target=produce, name="tunewise-stream", daemon=True).start()
    text = []
    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            kind, value = await q.get()
            if kind == "delta":
                text.append(value)
                yield chunk({"content": value})
            elif kind == "error":
                status = 413 if type(value).__name__ == "PromptTooLongError" else 500
                err = APIError(
                    status,
                    str(value),
                    type="server_error" if status == 500 else "invalid_request_error",
                )
                yield f"data: {json.dumps(err.body())}\n\n".encode()
                break
            else:
                n = await run_in_threadpool(lambda: len(engine.encode(["".join(text)])[0]))
                yield chunk({}, "length" if n >= gen.max_new_tokens else "stop")
                break
        yield b"data: [DONE]\n\n"
    finally:
        cancelled.set()


def serve(
    base: str | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    adapters: list[str] | None = None,
    api_key: str | None = None,
    max_loaded_adapters: int = 8,
    batch_size: int = 16,
    batch_window_ms: float = 5.0,
    quantize_4bit: bool = False,
    threads: int | None = None,
    log_level: str = "info",
    device: str = "auto",
) -> None:
    """Load the base model and run the server until interrupted."""
    import torch
    import uvicorn

    if threads:
        # On a shared or small CPU, fewer intra-op threads avoid oversubscription stalls.
        torch.set_num_threads(threads)
    from tunewise import device as device_policy
    from tunewise.infer import Engine
    from tunewise.models import resolve
    from tunewise.registry import Registry

    placement = device_policy.choose(
        device_policy.detect(),
        purpose="infer",
        quantize_4bit=quantize_4bit,
        device=device,
        where="--device",
    )
    engine = Engine(
        resolve(base),
        max_loaded_adapters=max_loaded_adapters,
        batch_size=batch_size,
        placement=placement,
    )
    quant = " (linears in NF4)" if placement.quantize_4bit else ""
    print(f"base {engine.ref.name} on {placement.device} in {placement.dtype}{quant}", flush=True)
    settings = ServeSettings(
        api_key=api_key or None,
        batch_window_ms=batch_window_ms,
        max_batch=max(batch_size, 1) * 2,
        adapters=list(adapters or []),
    )
    app = create_app(engine, settings=settings, registry=Registry())
    uvicorn.run(app, host=host, port=port, log_level=log_level)
