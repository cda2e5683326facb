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

Layout, after vLLM's ``entrypoints/openai``: bodies in :mod:`tunewise.serve.schemas`, state in
:mod:`tunewise.serve.state`, and here thin routes whose checks (API key, body size and schema)
are FastAPI dependencies. Every route but ``/health`` sits behind :func:`require_api_key`.

Function calls (``tools``, ``tool_choice``, ``message.tool_calls``) are read and written by
:mod:`tunewise.serve.tools`; the prompt gets the tools here, after the system prompt, as training
attaches them.

With ``--shadow`` a challenger answers sampled requests in the background, never in the way of
the response (:mod:`tunewise.serve.shadow`); the route only draws the sample and hands it the
request once production's answer is complete.

Bad input always gets a 4xx in OpenAI's error shape (unknown model 404, bad schema 422, bad tools
or call turns 400, prompt too long or body too large 413, bad key 401); an exception there is a
bug and is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hmac
import ipaddress
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunewise.baselines.release import RungRelease, query_of
from tunewise.errors import UserError
from tunewise.registry.store import Registry
from tunewise.runtime import device as device_policy
from tunewise.runtime.adapter_pool import BaseMismatchError, CorruptedAdapterError
from tunewise.runtime.backend import GenRequest, GenResult, PromptTooLongError
from tunewise.runtime.engine import Engine
from tunewise.runtime.models import resolve
from tunewise.serve.schemas import (
    AdapterStatus,
    AdminModel,
    APIError,
    ChatCompletion,
    ChatCompletionChunk,
    ChatRequest,
    Health,
    LoadResult,
    ModelCard,
    ModelList,
    RefreshResult,
    StreamChoice,
    UnloadResult,
)
from tunewise.serve.shadow import (
    CountRequests,
    Shadow,
    ShadowSettings,
    build_gen_request,
    start_shadow,
)
from tunewise.serve.state import MicroBatcher, ModelTable, admin_adapter_dir
from tunewise.serve.tools import (
    CallDeltas,
    PlainDeltas,
    ToolPlan,
    answer_deltas,
    check_choice_met,
    plan_tools,
    read_answer,
    request_messages,
)
from tunewise.serve.traffic import SHADOW, TrafficLog, TrafficSettings

__all__ = ["APIError", "MicroBatcher", "ModelTable", "ServeSettings", "create_app", "serve"]

log = logging.getLogger("tunewise.serve")

Body = TypeVar("Body", bound=BaseModel)


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServeSettings:
    api_key: str | None = None  # opens /v1 (clients); never /admin
    admin_key: str | None = None  # opens /admin; without it /admin is off ...
    allow_admin: bool = False  # ... unless this is set: open /admin to loopback clients, no key
    adapter_roots: list[Path] = field(default_factory=list)  # where admin `load` may read paths
    batch_window_ms: float = 5.0
    max_batch: int = 32
    max_tokens_default: int = 256
    max_tokens_limit: int = 1024
    max_body_bytes: int = 1 << 20
    adapters: list[str] = field(default_factory=list)  # preloaded: registry specs or name=PATH
    # The traffic log (see tunewise.serve.traffic): off unless log_traffic names a folder.
    log_traffic: Path | None = None
    traffic_sample: float = 1.0
    traffic_max_mb: float = 64.0
    traffic_keep_days: float | None = None
    traffic_seed: int | None = None  # None: $TUNEWISE_TRAFFIC_SEED, else unseeded
    shadow: ShadowSettings | None = None  # the challenger (tunewise.serve.shadow); off if None

    def traffic_settings(self, prefix: str = "traffic") -> TrafficSettings | None:
        if self.log_traffic is None:
            return None
        return TrafficSettings(
            dir=Path(self.log_traffic),
            sample=self.traffic_sample if prefix == "traffic" else 1.0,  # the shadow samples
            max_mb=self.traffic_max_mb,
            keep_days=self.traffic_keep_days,
            seed=self.traffic_seed,
            prefix=prefix,
        )


@dataclass
class ServerState:
    """What the routes reach through :func:`server_state` (kept on ``app.state.server``)."""

    engine: Engine
    table: ModelTable
    batcher: MicroBatcher
    settings: ServeSettings
    traffic: TrafficLog | None = None
    shadow: Shadow | None = None


# --------------------------------------------------------------------------- dependencies


# The dependencies are coroutines although they do no I/O: FastAPI would run plain functions in
# its thread pool, a hop per dependency per request.
async def server_state(request: Request) -> ServerState:
    return request.app.state.server


State = Annotated[ServerState, Depends(server_state)]
_bearer = HTTPBearer(auto_error=False)  # we answer 401 ourselves, in OpenAI's error shape


async def require_api_key(
    state: State,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """With an API key set, every request must carry ``Authorization: Bearer KEY``."""
    key = state.settings.api_key
    if not key:
        return
    token = credentials.credentials.strip() if credentials is not None else ""
    if not hmac.compare_digest(token.encode(), key.encode()):
        raise APIError(
            401,
            "invalid or missing API key (Authorization: Bearer ...)",
            type="authentication_error",
            code="invalid_api_key",
        )


def _is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:  # not an address (a test client's name, a unix socket)
        return False


async def require_admin(
    state: State,
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """``/admin`` needs the admin key; without one it is off, unless ``allow_admin`` opened it to
    loopback clients. The client key never opens it (a client must not load or unload adapters).
    """
    settings = state.settings
    if settings.admin_key:
        token = credentials.credentials.strip() if credentials is not None else ""
        if not hmac.compare_digest(token.encode(), settings.admin_key.encode()):
            raise APIError(
                401,
                "invalid or missing admin key (Authorization: Bearer ADMIN_KEY)",
                type="authentication_error",
                code="invalid_admin_key",
            )
        return
    if settings.allow_admin and _is_loopback(request.client.host if request.client else None):
        return
    raise APIError(
        403,
        "admin routes are off: start the server with --admin-key KEY "
        "(or --allow-admin on a loopback host)",
        type="permission_error",
        code="admin_disabled",
    )


async def _read_json(request: Request, limit: int) -> Any:
    """The body as JSON, refused (413) past ``limit`` bytes before it is all read."""
    too_large = APIError(413, f"request body over {limit} bytes", code="body_too_large")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks) or b"null")
    except (ValueError, RecursionError) as exc:  # bad JSON, bad UTF-8, absurd nesting or ints
        raise APIError(422, f"body is not valid JSON: {exc}", code="invalid_json") from None


def json_body(schema: type[Body]) -> Callable[[Request, ServerState], Awaitable[Body]]:
    """A dependency that reads the body (size-limited) and validates it as ``schema``.

    FastAPI's own body parsing would answer its own 422 shape and read any size; this one keeps
    OpenAI's error shape and the ``max_body_bytes`` bound.
    """

    async def parse(request: Request, state: State) -> Body:
        raw = await _read_json(request, state.settings.max_body_bytes)
        try:
            return schema.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise APIError(
                422,
                f"{where}: {first['msg']} ({exc.error_count()} error(s))",
                code="invalid_schema",
                param=where,
            ) from None

    return parse


ChatBody = Annotated[ChatRequest, Depends(json_body(ChatRequest))]
AdminBody = Annotated[AdminModel, Depends(json_body(AdminModel))]


# --------------------------------------------------------------------------- routes

public = APIRouter()
protected = APIRouter(dependencies=[Depends(require_api_key)])
admin = APIRouter(dependencies=[Depends(require_admin)])


@public.get("/health")
async def health(state: State) -> Health:
    return Health(base=state.engine.ref.name)


@protected.get("/v1/models")
async def list_models(state: State) -> ModelList:
    ids = await run_in_threadpool(state.table.listing)
    return ModelList(data=[ModelCard(id=i) for i in ids])


@protected.post("/v1/chat/completions", response_model=None)
async def chat(state: State, req: ChatBody) -> Response:
    started = time.perf_counter()
    req.refuse_unsupported()
    messages = request_messages(req.messages)
    key = await _resolve_model(state.table, req.model)
    plan = plan_tools(
        req.tools, req.tool_choice, state.table.default_tools(key), req.parallel_tool_calls
    )
    release = state.table.release(key)
    cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    logged = _traffic_hook(state, req, messages, key, cid, started, plan)
    if release is not None and not release.uses_llm:
        return await _classifier_answer(req, release, messages, cid, plan, str(key), logged)
    gen = await _gen_request(state, req, key, release, messages, plan)
    fingerprint = key or f"base-{state.engine.ref.weight_hash[:12]}"
    head = ChatCompletionChunk(id=cid, model=req.model, system_fingerprint=fingerprint, choices=[])
    if req.stream and not plan.promises_call:
        deltas = CallDeltas() if plan.reads_calls else PlainDeltas()
        return StreamingResponse(
            _sse(state.engine, gen, head, logged, deltas),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Tunewise-Model": fingerprint},
        )
    try:
        result = await state.batcher.submit(gen)
    except PromptTooLongError:
        raise  # the app's handler answers 413
    except UserError as exc:
        raise _refused(exc, code="adapter_unavailable") from None
    return _known_answer(req, result, plan, head, logged)


Logged = Callable[..., None]  # the traffic log's hook: (GenResult, tool_calls=None)


def _traffic_hook(
    state: ServerState,
    req: ChatRequest,
    messages: list[dict[str, Any]],
    key: str | None,
    cid: str,
    started: float,
    plan: ToolPlan,
) -> Logged | None:
    """The traffic log's callback for this request's answer; None: log off or not sampled.
    ``messages`` are the turns as received, before any system prompt."""
    if state.traffic is None:
        return None
    logged = state.traffic.hook(
        cid=cid,
        model=req.model,
        key=key,
        base_name=state.engine.ref.name,
        messages=messages,
        started=started,
        tools=plan.requested or None,
    )
    if logged is not None and state.shadow is not None:  # the challenger follows the record
        logged = state.shadow.follow(logged, req=req, messages=messages, cid=cid, key=key)
    return logged


def _known_answer(
    req: ChatRequest,
    result: GenResult,
    plan: ToolPlan,
    head: ChatCompletionChunk,
    logged: Logged | None,
) -> Response:
    """The response to an answer known whole: read for calls when tools were shown (a broken
    ``required`` / named-function promise is a 422, see :mod:`tunewise.serve.tools`), logged,
    then sent as one body or, for a stream, as its chunks at once."""
    answer = read_answer(result) if plan.reads_calls else None
    if answer is not None:
        check_choice_met(plan, answer)
    if logged is not None:
        logged(result, tool_calls=answer.tool_calls if answer else None)
    headers = {"X-Tunewise-Model": head.system_fingerprint}
    if req.stream:
        if answer is None:
            deltas = [dict(PlainDeltas.first), {"content": result.text}]
            finish = result.finish_reason
        else:
            deltas, finish = answer_deltas(answer), answer.finish_reason
        return StreamingResponse(
            _known_sse(head, deltas, finish),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", **headers},
        )
    body = ChatCompletion.of(
        result, cid=head.id, model=req.model, fingerprint=head.system_fingerprint, answer=answer
    )
    return JSONResponse(body.model_dump(), headers=headers)


async def _classifier_answer(
    req: ChatRequest,
    release: RungRelease,
    messages: list[dict[str, Any]],
    cid: str,
    plan: ToolPlan,
    fingerprint: str,
    logged: Logged | None = None,
) -> Response:
    """A classifier release (knn, tfidf, probe) answers in the task's output format, the very
    string the evaluator scored, with no language model: no tokens to count or stream."""
    query = query_of(messages)
    text = (await run_in_threadpool(release.answers, [query]))[0]
    result = GenResult(text=text, prompt_tokens=0, completion_tokens=0, finish_reason="stop")
    head = ChatCompletionChunk(id=cid, model=req.model, system_fingerprint=fingerprint, choices=[])
    return _known_answer(req, result, plan, head, logged)


async def _known_sse(
    head: ChatCompletionChunk, deltas: list[dict[str, Any]], finish: str
) -> AsyncIterator[bytes]:
    """The stream of an answer known at once: its deltas (role first), the finish, ``[DONE]``."""
    for delta, reason in [*((d, None) for d in deltas), ({}, finish)]:
        choice = StreamChoice(delta=delta, finish_reason=reason)
        body = head.model_copy(update={"choices": [choice]})
        yield f"data: {body.model_dump_json()}\n\n".encode()
    yield b"data: [DONE]\n\n"


@admin.get("/admin/adapters")
async def admin_list(state: State) -> AdapterStatus:
    return AdapterStatus(
        registered=state.engine.adapters(),
        loaded=state.engine.loaded_adapters(),
        resolved=state.table.resolutions(),
        recent_batches=state.batcher.batches[-20:],
    )


@admin.post("/admin/adapters/load")
async def admin_load(state: State, body: AdminBody) -> LoadResult:
    if body.name and body.path:
        folder = await run_in_threadpool(admin_adapter_dir, body.path, state.settings.adapter_roots)
        try:
            key = await run_in_threadpool(state.table.add_direct, body.name, folder)
        except APIError:
            raise
        except CorruptedAdapterError as exc:
            raise _refused(exc) from None
        except BaseMismatchError as exc:  # 409, as for a registry version on another base
            raise APIError(409, str(exc), code="base_mismatch", param="path") from None
        except UserError as exc:
            raise APIError(422, str(exc), param="path") from None
    elif body.model:
        key = await _resolve_model(state.table, body.model)
    else:
        raise APIError(422, "give either {model} or {name, path}", param="model")
    return LoadResult(loaded=key, registered=state.engine.adapters())


@admin.post("/admin/adapters/unload")
async def admin_unload(state: State, body: AdminBody) -> UnloadResult:
    target = body.model or body.name
    if not target:
        raise APIError(422, "give {model}", param="model")
    key = await run_in_threadpool(state.table.unload, target)
    return UnloadResult(unloaded=key, registered=state.engine.adapters())


@admin.post("/admin/adapters/refresh")
async def admin_refresh(state: State) -> RefreshResult:
    return await run_in_threadpool(state.table.refresh)


# --------------------------------------------------------------------------- route helpers


async def _resolve_model(table: ModelTable, model: str) -> str | None:
    try:
        return await run_in_threadpool(table.resolve, model)
    except APIError:
        raise
    except UserError as exc:  # e.g. the Engine refused the adapter
        raise _refused(exc) from None


def _refused(exc: UserError, code: str = "adapter_refused") -> APIError:
    """The answer when the Engine will not load or run an adapter: 503 when its files are
    damaged (nothing the client can fix), else 409."""
    if isinstance(exc, CorruptedAdapterError):
        return APIError(503, str(exc), type="server_error", code="corrupted_adapter")
    return APIError(409, str(exc), code=code, param="model")


async def _gen_request(
    state: ServerState,
    req: ChatRequest,
    adapter: str | None,
    release: RungRelease | None,
    messages: list[dict[str, Any]],
    plan: ToolPlan,
) -> GenRequest:
    """The engine request for ``req``, every check done: a stream must not fail after its 200.

    The prompt is built as training and evaluation build it (the system prompt the model was
    trained with, or the release's prompt, or the retrieved context; then the tools), by the
    function that builds the shadow challenger's too: :func:`build_gen_request`, in one hop to
    the thread pool (retrieval and tokenizing must not hold the event loop).
    """
    settings = state.settings
    return await run_in_threadpool(
        partial(
            build_gen_request,
            state.table,
            state.engine,
            req,
            adapter,
            release,
            messages,
            plan,
            default_tokens=settings.max_tokens_default,
            limit=settings.max_tokens_limit,
        )
    )


def _too_long(exc: PromptTooLongError) -> APIError:
    return APIError(413, str(exc), code="context_length_exceeded", param="messages")


async def _sse(
    engine: Engine,
    gen: GenRequest,
    head: ChatCompletionChunk,
    logged: Logged | None = None,
    deltas: PlainDeltas | None = None,
) -> AsyncIterator[bytes]:
    """Server-sent events: role chunk, content deltas, a finish chunk, then ``data: [DONE]``.

    The finish chunk carries the stream's own :class:`GenResult` ``finish_reason``. ``head`` holds
    the fields every chunk repeats (id, model, fingerprint). ``deltas`` turns the generated text
    into deltas (:class:`CallDeltas` reads calls; by default the text as it comes). ``logged``
    gets the finished answer, its text what the model generated, and the calls sent.
    """
    deltas = deltas or PlainDeltas()
    loop = asyncio.get_running_loop()
    q: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    cancelled = threading.Event()

    def put(kind: str, value: Any) -> None:
        loop.call_soon_threadsafe(q.put_nowait, (kind, value))

    def produce() -> None:
        stream = engine.stream(gen)
        try:
            while not cancelled.is_set():
                put("delta", next(stream))
        except StopIteration as stop:
            put("end", stop.value)
        except Exception as exc:
            put("error", exc)
        finally:
            stream.close()

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = StreamChoice(delta=delta, finish_reason=finish)
        body = head.model_copy(update={"choices": [choice]})
        return f"data: {body.model_dump_json()}\n\n".encode()

    sent: list[str] = []
    threading.Thread(target=produce, name="tunewise-stream", daemon=True).start()
    try:
        yield chunk(dict(deltas.first))
        while True:
            kind, value = await q.get()
            if kind == "delta":
                sent.append(value)
                for delta in deltas.feed(value):
                    yield chunk(delta)
                continue
            if kind == "end":
                result: GenResult = value
                for delta in deltas.finish():
                    yield chunk(delta)
                yield chunk({}, deltas.finish_reason(result.finish_reason))
                if logged is not None:
                    calls = deltas.tool_calls or None
                    logged(replace(result, text="".join(sent)), tool_calls=calls)
            else:
                if isinstance(value, PromptTooLongError):
                    err = _too_long(value)
                elif isinstance(value, UserError):
                    err = _refused(value, code="adapter_unavailable")
                else:
                    err = APIError(500, str(value), type="server_error")
                yield f"data: {json.dumps(err.body())}\n\n".encode()
            break
        yield b"data: [DONE]\n\n"
    finally:
        cancelled.set()


# --------------------------------------------------------------------------- app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(PromptTooLongError)
    async def _prompt_too_long(_: Request, exc: PromptTooLongError) -> JSONResponse:
        return _too_long(exc).response()

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


def create_app(
    engine: Engine, *, settings: ServeSettings | None = None, registry: Registry | None = None
) -> FastAPI:
    """The FastAPI app over ``engine`` (an :class:`tunewise.runtime.engine.Engine`)."""
    settings = settings or ServeSettings()
    settings.adapter_roots = check_admin_options(
        api_key=settings.api_key, admin_key=settings.admin_key, roots=settings.adapter_roots
    )
    if settings.shadow is not None:  # before anything starts: one-line errors
        settings.shadow.check(logging_traffic=settings.log_traffic is not None)
    table = ModelTable(engine, registry)
    table.preload(settings.adapters)
    shadow = start_shadow(
        table,
        settings.shadow,
        settings.traffic_settings(prefix=SHADOW),
        tokens=(settings.max_tokens_default, settings.max_tokens_limit),
    )
    batcher = MicroBatcher(engine, settings.batch_window_ms / 1000, settings.max_batch)
    traffic_settings = settings.traffic_settings()
    traffic = TrafficLog(traffic_settings) if traffic_settings else None

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(batcher.close)  # finish queued batches, stop the worker
        if shadow is not None:  # drains or drops its queue within its drain time
            await run_in_threadpool(shadow.close)
        if traffic is not None:  # after the batcher: its last answers are logged too
            await run_in_threadpool(traffic.close)

    app = FastAPI(
        title="tunewise", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )
    app.state.server = ServerState(
        engine=engine,
        table=table,
        batcher=batcher,
        settings=settings,
        traffic=traffic,
        shadow=shadow,
    )
    if shadow is not None:  # production first: the challenger steps only between requests
        app.add_middleware(CountRequests, load=shadow.load)
    _install_error_handlers(app)
    app.include_router(public)
    app.include_router(protected)
    app.include_router(admin)
    return app


def check_admin_options(
    *,
    host: str = "127.0.0.1",
    api_key: str | None = None,
    admin_key: str | None = None,
    allow_admin: bool = False,
    roots: Sequence[str | Path] = (),
) -> list[Path]:
    """Refuse admin settings that would open ``/admin`` to clients; the adapter roots, resolved.

    Checked before the model loads, so a mistake costs a second, not a model load.
    """
    if admin_key and api_key and hmac.compare_digest(admin_key.encode(), api_key.encode()):
        raise UserError("--admin-key must differ from --api-key: a client key must not open /admin")
    if allow_admin and host not in LOOPBACK_HOSTS:
        raise UserError(
            f"--allow-admin opens /admin without a key, so only on a loopback host, not {host!r}; "
            "use --admin-key KEY (or TUNEWISE_ADMIN_KEY) instead"
        )
    resolved = []
    for root in roots:
        real = Path(root).expanduser().resolve()
        if not real.is_dir():
            raise UserError(f"--adapter-root {root}: no such directory")
        resolved.append(real)
    return resolved


def serve(
    base: str | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    adapters: list[str] | None = None,
    api_key: str | None = None,
    admin_key: str | None = None,
    allow_admin: bool = False,
    adapter_roots: Sequence[str | Path] = (),
    max_loaded_adapters: int = 8,
    batch_size: int = 16,
    batch_window_ms: float = 5.0,
    quantize_4bit: bool = False,
    threads: int | None = None,
    log_level: str = "info",
    device: str = "auto",
    traffic: TrafficSettings | None = None,
    shadow: ShadowSettings | None = None,
    prefix_cache_mb: float = 256,
) -> None:
    """Load the base model and run the server until interrupted."""
    if traffic is not None:
        traffic.check()  # before the model loads: a mistake costs a second
    if shadow is not None:
        shadow.check(logging_traffic=traffic is not None)
    roots = check_admin_options(
        host=host,
        api_key=api_key,
        admin_key=admin_key,
        allow_admin=allow_admin,
        roots=adapter_roots,
    )
    # lazy: torch (~1 s) and uvicorn: a running server needs them, create_app does not
    import torch
    import uvicorn

    if threads:
        # On a shared or small CPU, fewer intra-op threads avoid oversubscription stalls.
        torch.set_num_threads(threads)
    placement = device_policy.choose(
        device_policy.detect(),
        purpose="infer",
        quantize_4bit=quantize_4bit,
        device=device,
        where="--device",
    )
    registry = Registry()
    registry.check()  # a missing or damaged index stops the start, in one line
    engine = Engine(
        resolve(base),
        max_loaded_adapters=max_loaded_adapters,
        batch_size=batch_size,
        placement=placement,
        prefix_cache_mb=prefix_cache_mb,
    )
    quant = " (linears in NF4)" if placement.quantize_4bit else ""
    print(f"base {engine.ref.name} on {placement.device} in {placement.dtype}{quant}", flush=True)
    settings = ServeSettings(
        api_key=api_key or None,
        admin_key=admin_key or None,
        allow_admin=allow_admin,
        adapter_roots=roots,
        batch_window_ms=batch_window_ms,
        max_batch=max(batch_size, 1) * 2,
        adapters=list(adapters or []),
    )
    if traffic is not None:
        settings.log_traffic, settings.traffic_sample = traffic.dir, traffic.sample
        settings.traffic_max_mb, settings.traffic_keep_days = traffic.max_mb, traffic.keep_days
        settings.traffic_seed = traffic.seed
    settings.shadow = shadow
    app = create_app(engine, settings=settings, registry=registry)
    uvicorn.run(app, host=host, port=port, log_level=log_level, log_config=log_config(log_level))


def log_config(log_level: str) -> dict[str, Any]:
    """uvicorn's logging setup, with tunewise's own loggers on its handler: without it, what the
    server says at INFO (the shadow's counts at shutdown, among others) is never shown."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["tunewise"] = {
        "handlers": ["default"],
        "level": log_level.upper(),
        "propagate": False,
    }
    return config
