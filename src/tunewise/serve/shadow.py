"""The shadow challenger of ``tunewise serve --shadow NAME@ALIAS --shadow-rate R``.

Production answers the client; the challenger answers the same request later, in one background
thread, and its answer goes to the traffic log beside production's. Why it is built this way:

* **Never in the way of a response.** The route only draws the sample and, once production's
  answer is complete (a stream's last chunk sent or a body built), puts a job on a bounded queue
  (``put`` never blocks: a full queue drops the job and counts it). The worker builds the
  challenger's prompt and generates there, never in the route.
* **Production first, forward by forward.** The challenger shares the base model (and the
  GIL), so while it generated, production's forward steps would alternate with its steps. It
  therefore waits until no production request is in flight (:class:`ProductionLoad`, counted by
  :class:`CountRequests` from a chat request's arrival to its response's last byte, so the batch
  window and the prompt building count too) before each piece of its work: building and
  counting its prompt, rendering and encoding it (``Engine.steps``), then every single forward
  pass, its prompt prefilled ``PREFILL_CHUNK`` tokens per forward (issue #27: one prefill of the
  whole prompt, hundreds of ms on 2 cores, was the longest wait production met). A production
  request that arrives mid-shadow waits for at most the one piece already running: a chunk of
  the prompt or one token's step. Under sustained load the challenger does not run at all and
  its queue fills: jobs are dropped and counted, production is untouched.
* **The request its release would get.** The challenger's prompt is built by the same function
  as production's (:func:`build_gen_request`): the same messages, the system prompt, tools and
  retrieved context *its* registry version was trained or evaluated with (through
  :class:`~tunewise.serve.state.ModelTable`), the request's ``tools`` / ``tool_choice`` planned
  against its own project tools, and its answer read for calls the same way.
* **Its own records.** The answers go to ``shadow-*.jsonl`` files in the traffic log's folder
  (a second :class:`~tunewise.serve.traffic.TrafficLog`, so the same whole-line appends, PII
  scrubbing, rotation and retention), one record per shadowed request, linked by ``shadow_of``
  to the production record's ``id``. Production's record is written when production answers,
  never held back for the shadow: a ``kill -9`` loses no more production records than before.
* **Bounded shutdown.** :meth:`Shadow.close` keeps answering queued jobs for ``drain_s``
  seconds, then drops the rest (and stops a generation mid-way), counts them and logs one line.

Which requests: a registry challenger (``bot@staging``, ``bot:3``) shadows the requests for its
registry name (``bot``, ``bot@production``, ``bot:2``); a path-loaded adapter or the base model
as challenger shadows every request. A request that production answered with the challenger's
own version is skipped (counted), there is nothing to compare. The sample is drawn among the
requests the traffic log keeps, so the effective share is ``traffic_sample * rate``.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tunewise.baselines.release import RungRelease, query_of
from tunewise.errors import UserError
from tunewise.runtime.backend import GenRequest, GenResult, PromptTooLongError, check_context
from tunewise.runtime.tool_calls import attach_tools
from tunewise.serve.schemas import APIError, ChatRequest
from tunewise.serve.tools import ToolPlan, plan_tools, read_answer, with_tool_constraint
from tunewise.serve.traffic import TrafficLog, TrafficSettings, env_seed

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

    from tunewise.serve.state import ModelTable

__all__ = [
    "CountRequests",
    "ProductionLoad",
    "Shadow",
    "ShadowSettings",
    "build_gen_request",
    "start_shadow",
]

log = logging.getLogger("tunewise.serve.shadow")

Logged = Callable[..., None]  # the traffic log's hook: (GenResult, tool_calls=None)

# The challenger prefills its prompt this many tokens per forward, so a production request that
# arrives mid-prefill waits for one chunk, not the whole prompt. SmolLM2-135M, one CPU thread
# (niced beside another job, medians of 15): one decode step 65-75 ms; a forward of 16 tokens
# over the cache 115-125 ms, 32 tokens 160-185, 64 tokens 245-270; the whole 45-token prompt of
# bench/shadow_latency.py at once 200-235 ms. Up to about 16 tokens a forward costs little more
# than a step (reading the weights dominates), past it the cost grows with the tokens. At 32 that
# prompt's first chunk would still cost 80% of the one-shot prefill; at 16 the longest wait
# production can meet is under 2 decode steps, for about 1.6x the challenger's prefill time
# (three forwards instead of one), which only runs while production is idle.
PREFILL_CHUNK = 16


@dataclass
class ShadowSettings:
    model: str  # the challenger: a registry spec (NAME@ALIAS, NAME:V, NAME), an adapter, base
    rate: float = 1.0  # share of the logged requests the challenger also answers, 0 < rate <= 1
    queue_size: int = 64  # jobs waiting for the worker before new ones are dropped
    drain_s: float = 10.0  # at shutdown, how long queued jobs may still be answered
    seed: int | None = None  # sampling seed (serve passes the traffic log's)

    def check(self, *, logging_traffic: bool) -> None:
        """One-line errors naming the flag, before the model loads."""
        if not logging_traffic:
            raise UserError(
                f"--shadow {self.model}: needs --log-traffic DIR (the shadow's answers are "
                "written beside production's in the traffic log)"
            )
        if not 0 < self.rate <= 1:
            raise UserError(f"--shadow-rate must be in (0, 1], not {self.rate}")
        if self.queue_size < 1:
            raise UserError(f"shadow queue size must be at least 1, not {self.queue_size}")
        if not self.drain_s >= 0:
            raise UserError(f"shadow drain time must be >= 0 s, not {self.drain_s}")


# --------------------------------------------------------------------------- the model's request


def model_messages(
    table: ModelTable,
    key: str | None,
    release: RungRelease | None,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], str | None]:
    """(prompt, Engine adapter) of the model ``key`` for a request's ``messages``, built as
    training and evaluation build it: the release's prompt (prompt / fewshot / rag, on the base
    model), else the system prompt the adapter was trained with; the retrieved context of a
    context-trained adapter; then ``tools`` on the system turn, as ``Example.with_system``
    attaches them. May retrieve (embeddings): call it off the event loop."""
    adapter = key
    if release is not None:
        messages = table.release_messages(release, messages)
        adapter = None
    else:
        messages = table.with_system_prompt(adapter, messages)
    if adapter is not None and adapter in table.contexts:
        messages = table.with_context(adapter, messages)
    if tools:
        messages = attach_tools(messages, tools)
    return messages, adapter


def build_gen_request(
    table: ModelTable,
    engine: Any,
    req: ChatRequest,
    key: str | None,
    release: RungRelease | None,
    messages: list[dict[str, Any]],
    plan: ToolPlan,
    *,
    default_tokens: int,
    limit: int,
) -> GenRequest:
    """The engine request of model ``key`` for ``req``, every check done (a stream must not fail
    after its 200): production's (the route runs it in the thread pool) and the challenger's."""
    if release is not None and release.max_new_tokens:  # what the release was evaluated with
        default_tokens = release.max_new_tokens
    max_new = req.new_tokens(default_tokens, limit)
    stops = req.stops()
    prompt, adapter = model_messages(table, key, release, messages, plan.tools)
    try:
        n_prompt = engine.prompt_tokens(prompt)
    except Exception as exc:  # a chat template may reject a conversation shape
        raise APIError(
            422, f"messages: cannot render with the chat template: {exc}", param="messages"
        ) from None
    check_context(n_prompt, max_new, engine.context_length, new_label="max_tokens")
    gen = GenRequest(
        messages=prompt, adapter=adapter, max_new_tokens=max_new, stop=stops, **req.sampling()
    )
    return with_tool_constraint(gen, plan)


# --------------------------------------------------------------------------- production first


class ProductionLoad:
    """How many production requests are in flight; the challenger waits for none."""

    def __init__(self) -> None:
        self._n = 0
        self._cond = threading.Condition()

    def enter(self) -> None:
        with self._cond:
            self._n += 1

    def exit(self) -> None:
        with self._cond:
            self._n -= 1
            if self._n <= 0:
                self._cond.notify_all()

    @property
    def busy(self) -> bool:
        return self._n > 0

    def wait_idle(self, stop: Callable[[], bool]) -> None:
        """Return once no production request is in flight, or as soon as ``stop()`` holds."""
        with self._cond:
            while self._n > 0 and not stop():
                self._cond.wait(0.05)  # the poll notices stop() without a notify

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


class CountRequests:
    """ASGI middleware: each chat request counted in a :class:`ProductionLoad` from its arrival
    to its response's last byte (a stream's included; a client gone away ends it too)."""

    PATH = "/v1/chat/completions"

    def __init__(self, app: ASGIApp, load: ProductionLoad) -> None:
        self.app, self.load = app, load

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != self.PATH:
            await self.app(scope, receive, send)
            return
        self.load.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.load.exit()


# --------------------------------------------------------------------------- records


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _resolved(model: str, key: str | None, base_name: str) -> dict[str, str | None]:
    alias = model.split("@", 1)[1] if "@" in model else None
    return {"key": key if key is not None else base_name, "alias": alias}


def shadow_record(
    job: _Job,
    *,
    model: str,
    resolved: dict[str, str | None],
    result: GenResult,
    tool_calls: list[dict[str, Any]] | None,
    started: float,
) -> dict[str, Any]:
    """The challenger's answer to the request whose production record has ``id`` ``job.cid``.

    ``latency_ms``: from the moment the worker took the job to the answer (the challenger's own
    time: prompt, waits for production, generation); ``queued_ms``: how long the job waited.
    """
    done = time.perf_counter()
    extra = {"tool_calls": tool_calls} if tool_calls else {}
    return {
        "time": _now(),
        "shadow_of": job.cid,
        "model": model,
        "resolved": resolved,
        "answer": result.text,
        "finish_reason": result.finish_reason,
        "latency_ms": round((done - started) * 1000, 1),
        "queued_ms": round((started - job.queued) * 1000, 1),
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        **extra,
        "status": 200,
    }


def error_record(job: _Job, model: str, status: int, message: str) -> dict[str, Any]:
    """A challenger that could not answer (its prompt too long, its version refused, ...)."""
    return {
        "time": _now(),
        "shadow_of": job.cid,
        "model": model,
        "error": message,
        "status": status,
    }


# --------------------------------------------------------------------------- the challenger


@dataclass
class _Job:
    cid: str  # the production record's id
    req: ChatRequest
    messages: list[dict[str, Any]]  # the turns as received (the challenger builds its own prompt)
    production_key: str | None
    queued: float  # time.perf_counter() when production's answer was complete


class _Abandoned(Exception):
    """Shutdown's drain time ran out while this job was being answered."""


def _name_of(model: str) -> str:
    return re.split(r"[@:]", model, maxsplit=1)[0]


class Shadow:
    """The challenger: sampling in the route, answering in one background thread."""

    def __init__(
        self,
        settings: ShadowSettings,
        *,
        table: ModelTable,
        log: TrafficLog,
        tokens: tuple[int, int],
    ) -> None:
        self.settings, self.table, self.log = settings, table, log
        self.load = ProductionLoad()  # counted by CountRequests on the app
        self.engine = table.engine  # the raw engine: its calls are not production's
        self.base_name = table.engine.ref.name
        self.tokens = tokens  # (the server's default max_tokens, its limit)
        self.key = self._resolve_at_start(settings.model)
        self.scope = self._scope(settings.model)
        seed = settings.seed if settings.seed is not None else log.settings.seed
        self._rng = random.Random(seed if seed is not None else env_seed())
        self._rng_lock = threading.Lock()
        self._jobs: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._deadline = 0.0
        self._busy = False  # a job is being answered
        self._abandoned = False  # close() gave up on that job: never write or count it again
        self.answered = self.failed = self.skipped = 0
        self.dropped_full = self.dropped_shutdown = 0
        self._thread = threading.Thread(target=self._run, name="tunewise-shadow", daemon=True)
        self._thread.start()

    def _resolve_at_start(self, model: str) -> str | None:
        """The challenger's key now: a name that resolves to nothing stops the start."""
        try:
            return self.table.resolve(model)
        except APIError as exc:
            raise UserError(f"--shadow {model}: {exc.message}") from None
        except UserError as exc:
            raise UserError(f"--shadow {model}: {exc}") from None

    def _scope(self, model: str) -> str | None:
        """The registry name whose requests are shadowed; None: every request."""
        if model in self.table.base_ids or model in self.table.direct:
            return None
        return _name_of(model)

    @property
    def dropped(self) -> int:
        return self.dropped_full + self.dropped_shutdown

    @property
    def pending(self) -> int:
        """Jobs queued or being answered."""
        with self._cond:
            return len(self._jobs) + int(self._busy)

    # -- the route's side ------------------------------------------------------------------

    def follow(
        self,
        logged: Logged,
        *,
        req: ChatRequest,
        messages: list[dict[str, Any]],
        cid: str,
        key: str | None,
    ) -> Logged:
        """``logged`` (production's traffic hook), followed by a shadow job when this request is
        drawn (once, on arrival); the job is offered after production's record, never before."""
        if self.scope is not None and _name_of(req.model) != self.scope:
            return logged
        with self._rng_lock:
            if self.settings.rate < 1 and self._rng.random() >= self.settings.rate:
                return logged

        def and_shadow(result: GenResult, tool_calls: list[dict[str, Any]] | None = None) -> None:
            logged(result, tool_calls=tool_calls)
            self.offer(_Job(cid, req, messages, key, time.perf_counter()))

        return and_shadow

    def offer(self, job: _Job) -> bool:
        """Queue ``job``; never blocks (a full queue drops and counts it). Whether it was kept."""
        with self._cond:
            if self._closing:
                self.dropped_shutdown += 1
                return False
            if len(self._jobs) >= self.settings.queue_size:
                self.dropped_full += 1
                return False
            self._jobs.append(job)
            self._cond.notify()
            return True

    # -- the worker ------------------------------------------------------------------------

    def _run(self) -> None:
        while (job := self._next()) is not None:
            try:
                record = self._answer(job)
            except _Abandoned:
                with self._cond:
                    self._busy = False
                    if not self._abandoned:
                        self.dropped_shutdown += 1
                continue
            except Exception:  # a bug must not stop the worker; the job is lost, counted
                log.exception("shadow: could not answer a request")
                record = error_record(job, self.settings.model, 500, "internal error")
            self._finish(record)

    def _next(self) -> _Job | None:
        with self._cond:
            while not self._jobs and not self._closing:
                self._cond.wait()
            if not self._jobs or (self._closing and time.monotonic() >= self._deadline):
                return None  # close() counts what is left
            self._busy = True
            return self._jobs.popleft()

    def _finish(self, record: dict[str, Any] | None) -> None:
        with self._cond:
            self._busy = False
            if self._abandoned:
                return
            if record is None:
                self.skipped += 1
                return
            if "error" in record:
                self.failed += 1
            else:
                self.answered += 1
            self.log.submit(record)  # never blocks: the shadow log's writer scrubs and writes

    def _wait_turn(self) -> None:
        """Wait until production generates nothing; past shutdown's drain time, give up."""
        self.load.wait_idle(lambda: self._closing)
        if self._closing and time.monotonic() >= self._deadline:
            raise _Abandoned

    def _answer(self, job: _Job) -> dict[str, Any] | None:
        """The challenger's record for ``job``; None when production answered with it."""
        self._wait_turn()
        started, model = time.perf_counter(), self.settings.model
        try:
            key = self.table.resolve(model)  # an alias moved by a refresh takes effect here
            if key == job.production_key:
                return None
            result, calls = self._answer_with(key, job)
        except APIError as exc:
            return error_record(job, model, exc.status, exc.message)
        except PromptTooLongError as exc:
            return error_record(job, model, 413, str(exc))
        except UserError as exc:  # the engine refused the adapter
            return error_record(job, model, 409, str(exc))
        resolved = _resolved(model, key, self.base_name)
        return shadow_record(
            job, model=model, resolved=resolved, result=result, tool_calls=calls, started=started
        )

    def _answer_with(
        self, key: str | None, job: _Job
    ) -> tuple[GenResult, list[dict[str, Any]] | None]:
        release = self.table.release(key)
        plan = plan_tools(
            job.req.tools,
            job.req.tool_choice,
            self.table.default_tools(key),
            job.req.parallel_tool_calls,
        )
        if release is not None and not release.uses_llm:
            # a classifier release answers in the task's format, no language model
            text = release.answers([query_of(job.messages)])[0]
            result = GenResult(text, prompt_tokens=0, completion_tokens=0, finish_reason="stop")
        else:
            default, limit = self.tokens
            self._wait_turn()  # rendering and counting the prompt is Python work: the GIL
            gen = build_gen_request(
                self.table,
                self.engine,
                job.req,
                key,
                release,
                job.messages,
                plan,
                default_tokens=default,
                limit=limit,
            )
            result = self.generate(gen)
        answer = read_answer(result) if plan.reads_calls else None
        return result, (answer.tool_calls or None) if answer is not None else None

    def generate(self, gen: GenRequest) -> GenResult:
        """One answer, a forward pass at a time (the prompt ``PREFILL_CHUNK`` tokens at a time),
        each only while production is idle; the prompt's rendering and encoding too."""
        self._wait_turn()
        steps = self.engine.steps(gen, prefill_chunk=PREFILL_CHUNK)  # renders and encodes
        try:
            while True:
                self._wait_turn()
                try:
                    next(steps)
                except StopIteration as stop:
                    return stop.value
        finally:
            steps.close()  # unpins the adapter of a generation stopped at shutdown

    # -- shutdown --------------------------------------------------------------------------

    def close(self) -> None:
        """Answer what is queued for at most ``drain_s`` seconds, drop the rest (counted), log
        the counts, then close the shadow's log (its records written and fsynced)."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._deadline = time.monotonic() + self.settings.drain_s
            self._cond.notify_all()
        self.load.wake()
        # A step in flight finishes before the worker sees the deadline: one more second.
        self._thread.join(timeout=self.settings.drain_s + 1.0)
        with self._cond:
            self.dropped_shutdown += len(self._jobs)
            self._jobs.clear()
            if self._thread.is_alive() and self._busy:
                self._abandoned = True
                self.dropped_shutdown += 1
        self.log.close()
        self._log_counts()

    def _log_counts(self) -> None:
        counts = (
            f"shadow {self.settings.model}: {self.answered} answered, {self.failed} failed, "
            f"{self.skipped} skipped (answered by production's own version), "
            f"{self.dropped} dropped ({self.dropped_full} queue full, "
            f"{self.dropped_shutdown} at shutdown)"
        )
        if self.dropped:
            log.warning(counts)
        else:
            log.info(counts)


def start_shadow(
    table: ModelTable,
    settings: ShadowSettings | None,
    log_settings: TrafficSettings | None,
    *,
    tokens: tuple[int, int],
) -> Shadow | None:
    """The challenger, started (None without one); ``log_settings``: the shadow's log. The app
    must count its chat requests in ``shadow.load`` (:class:`CountRequests`)."""
    if settings is None:
        return None
    if log_settings is None:
        settings.check(logging_traffic=False)  # raises: a shadow needs the traffic log
    assert log_settings is not None
    shadow_log = TrafficLog(log_settings)
    try:
        return Shadow(settings, table=table, log=shadow_log, tokens=tokens)
    except BaseException:
        shadow_log.close()  # a challenger that does not resolve leaves no writer thread behind
        raise
