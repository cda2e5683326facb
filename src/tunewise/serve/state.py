"""The server's two pieces of state: which adapter answers a ``model`` string, and the batch queue.

:class:`ModelTable` maps request ``model`` strings (the base name, ``--adapters`` names, registry
specs) to Engine adapter names, loading registry versions lazily; all of its state changes go
through its own methods, under its lock. :class:`MicroBatcher` turns concurrent non-streaming
requests into one ``Backend.generate`` call per few milliseconds.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tunewise.baselines.context import CONTEXT_FILE, ContextBuilder, load_run_context
from tunewise.baselines.release import LLM_KINDS, RELEASE_KINDS, RungRelease, query_of
from tunewise.data.schema import Example
from tunewise.errors import UserError
from tunewise.registry.blobs import CorruptedFileError
from tunewise.registry.index import RegistryIndexError, broken
from tunewise.registry.types import validate_name
from tunewise.rundir import RunDir
from tunewise.runtime.backend import Backend, GenRequest, GenResult, Messages
from tunewise.serve.schemas import APIError, RefreshResult

if TYPE_CHECKING:
    from tunewise.registry.store import Registry
    from tunewise.registry.types import Version
    from tunewise.runtime.engine import Engine

T = TypeVar("T")

# --------------------------------------------------------------------------- micro-batching


@dataclass
class _Job:
    request: GenRequest
    future: asyncio.Future[GenResult]
    loop: asyncio.AbstractEventLoop


class MicroBatcher:
    """Collect requests for a few ms, then make one ``generate`` call for all of them."""

    def __init__(self, engine: Backend, window_s: float, max_batch: int) -> None:
        self.engine, self.window_s, self.max_batch = engine, window_s, max_batch
        self._q: queue.Queue[_Job | None] = queue.Queue()
        self.batches: list[dict[str, Any]] = []  # recent batch sizes per adapter (for /admin)
        self._thread = threading.Thread(target=self._run, name="tunewise-batcher", daemon=True)
        self._thread.start()

    def submit(self, request: GenRequest) -> asyncio.Future[GenResult]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[GenResult] = loop.create_future()
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


def _resolve(
    job: _Job, *, result: GenResult | None = None, exc: BaseException | None = None
) -> None:
    def _set() -> None:
        if job.future.done():
            return  # the client went away
        if exc is not None:
            job.future.set_exception(exc)
        else:
            job.future.set_result(result)  # type: ignore[arg-type]

    job.loop.call_soon_threadsafe(_set)


# --------------------------------------------------------------------------- model table


def _not_found(model: str, why: str = "") -> APIError:
    return APIError(404, f"model {model!r} not found{why}", code="model_not_found", param="model")


def _index_damaged(message: str) -> APIError:
    return APIError(503, message, type="server_error", code="registry_index_damaged")


def registry_call(registry: Registry, read: Callable[..., T], *args: Any) -> T:
    """``read(*args)``, a query of ``registry``, with a damaged index answered as 503.

    The registry looks at its index once, when it is opened; a server runs for weeks. An index
    emptied since then reads as a registry without versions (every name 404, /v1/models short),
    and one overwritten with garbage fails the query: both are 503 here, in the registry's own
    one line naming the command that repairs it.
    """
    db = registry.db_path
    try:
        empty = not db.exists() or db.stat().st_size == 0
    except OSError:  # unreadable: the query below says how
        empty = False
    if empty and registry.has_data():
        raise _index_damaged(str(broken(db, "missing" if not db.exists() else "empty (0 bytes)")))
    try:
        return read(*args)
    except RegistryIndexError as exc:
        raise _index_damaged(str(exc)) from None


def admin_adapter_dir(raw: str, roots: Sequence[Path]) -> Path:
    """The real folder behind an admin ``load`` path, refused unless it lies under an adapter root
    (symlinks resolved, every file in it included) and holds a training run's record and
    safetensors weights.

    Containment is checked before existence, so the answer says nothing about files outside the
    roots.
    """
    if not roots:
        raise APIError(
            403,
            "loading adapters by path is off: start the server with --adapter-root DIR",
            type="permission_error",
            code="path_loading_disabled",
            param="path",
        )
    outside = APIError(
        403,
        f"path {raw!r} is outside the adapter roots (--adapter-root)",
        type="permission_error",
        code="outside_adapter_roots",
        param="path",
    )
    try:
        real = Path(raw).resolve()
    except (OSError, RuntimeError, ValueError):  # a NUL byte, a symlink loop
        raise outside from None
    if not _under(real, roots):
        raise outside
    if not real.is_dir():
        raise APIError(422, f"path {raw!r}: no such directory", code="not_a_run", param="path")
    run = RunDir(real)
    for need in (run.run_json, run.adapter_config, run.adapter_weights):
        if not need.exists():
            raise APIError(
                422,
                f"{real}: no {need.name}: only training runs with safetensors weights are loaded",
                code="not_a_run",
                param="path",
            )
    # Every entry, not only the files PEFT reads: the server also opens context.json, and a
    # link to a file outside the roots (/etc/passwd) must not be opened at all.
    for entry in real.iterdir():
        try:
            inside = _under(entry.resolve(), roots)
        except (OSError, RuntimeError):  # a symlink loop
            inside = False
        if not inside:
            raise APIError(
                403,
                f"{entry.name} in {raw!r} links outside the adapter roots (--adapter-root)",
                type="permission_error",
                code="outside_adapter_roots",
                param="path",
            )
    return real


def _under(path: Path, roots: Sequence[Path]) -> bool:
    return any(path.is_relative_to(root) for root in roots)


class ModelTable:
    """Maps request ``model`` strings to Engine adapter names, loading registry versions lazily."""

    def __init__(self, engine: Engine, registry: Registry | None) -> None:
        self.engine = engine
        self.registry = registry
        self.base_ids = {engine.ref.name, "base"}
        self.direct: dict[str, Path] = {}  # name -> adapter dir (from --adapters name=PATH)
        self.resolved: dict[str, str] = {}  # model string -> engine adapter key (alias snapshot)
        # adapter key -> the project system prompt it was trained with (from the registry record)
        self.system_prompts: dict[str, str] = {}
        # adapter or release key -> the project tools (task.tools) it was trained or evaluated
        # with: shown when a request sends none (tunewise.serve.tools.plan_tools)
        self.tools: dict[str, list[dict[str, Any]]] = {}
        # adapter key -> the retrieved context it was trained with (train.context), versioned
        # with it: the registry copies the run's context.json beside the adapter
        self.contexts: dict[str, ContextBuilder] = {}
        # registry spec -> a rung release (prompt, fewshot, rag on the base model; knn, tfidf,
        # probe without it): answered through the release, never through an Engine adapter
        self.releases: dict[str, RungRelease] = {}
        self._lock = threading.Lock()

    def preload(self, specs: Sequence[str]) -> None:
        """``--adapters``: registry specs, or ``name=PATH`` adapter directories."""
        for entry in specs:
            try:
                if "=" in entry:
                    name, path = entry.split("=", 1)
                    self.add_direct(name, Path(path))
                else:
                    self.resolve(entry)
            except APIError as exc:
                raise UserError(f"--adapters {entry}: {exc.message}") from None

    def add_direct(self, name: str, path: Path) -> str:
        validate_name(name, "adapter name")
        context = load_run_context(Path(path))
        with self._lock:
            self._check_name_free_locked(name)
            self.engine.load_adapter(name, Path(path))
            self.direct[name] = Path(path)
            self.contexts.pop(name, None)  # a name reused for another folder
            if context is not None:
                self.contexts[name] = context.warm()
        return name

    def _check_name_free_locked(self, name: str) -> None:
        """Refuse a name the base model or the registry answers to: a path-loaded adapter must
        never take over requests meant for a registry version."""
        owner = "the base model" if name in self.base_ids else None
        registry = self.registry
        if (
            owner is None
            and registry is not None
            and registry_call(registry, registry.has_name, name)
        ):
            owner = "the registry"
        if owner is not None:
            raise APIError(
                409,
                f"name {name!r} belongs to {owner}; load this adapter under another name",
                code="name_taken",
                param="name",
            )

    def resolve(self, model: str) -> str | None:
        """The Engine adapter key for ``model`` (None = the base model), loading it if needed."""
        if model in self.base_ids:
            return None
        with self._lock:
            if model in self.direct and not self._drop_if_registry_took_locked(model):
                if model not in self.engine.adapters():
                    self.engine.load_adapter(model, self.direct[model])
                return model
            key = self.resolved.get(model)
            if key is not None and (key in self.engine.adapters() or key in self.releases):
                return key
            return self._load_from_registry_locked(model)

    def release(self, key: str | None) -> RungRelease | None:
        """The rung release ``key`` resolves to (None for the base model and adapters)."""
        if key is None:
            return None
        with self._lock:
            return self.releases.get(key)

    def _drop_if_registry_took_locked(self, name: str) -> bool:
        """Whether the registry now owns ``name``, a path-loaded adapter's: then that adapter is
        dropped, and the name answers with the registry's version from now on.

        A name is checked free when an adapter is loaded by path, but ``registry add`` may take
        it later; a registry spec must always be answered by the registry. An index that cannot
        say (damaged) leaves the adapter serving: it was the name's owner when it was loaded.
        """
        if self.registry is None:
            return False
        try:
            taken = registry_call(self.registry, self.registry.has_name, name)
        except APIError:
            return False
        if taken:
            if name in self.engine.adapters():
                self.engine.unload_adapter(name)
            del self.direct[name]
            self.contexts.pop(name, None)
            self.resolved = {m: k for m, k in self.resolved.items() if k != name}
        return taken

    def refresh(self) -> RefreshResult:
        """Forget alias resolutions so the next request re-reads the registry; drop path-loaded
        adapters whose name the registry has taken since."""
        with self._lock:
            dropped = [
                name for name in list(self.direct) if self._drop_if_registry_took_locked(name)
            ]
            before = {**{name: name for name in dropped}, **self.resolved}
            self.resolved = {k: v for k, v in before.items() if k in self.direct}
        after = {}
        for spec in before:
            if spec in self.direct:
                continue
            try:
                after[spec] = self.resolve(spec)
            except APIError as exc:
                after[spec] = f"error: {exc.message}"
            except UserError as exc:  # the Engine refused the version the alias now names
                after[spec] = f"error: {exc}"
        changed = {s: {"from": before[s], "to": after[s]} for s in after if after[s] != before[s]}
        return RefreshResult(changed=changed, resolved=after, dropped=dropped)

    def unload(self, target: str) -> str:
        """Drop the adapter ``target`` names (a model string or an adapter key) from memory and
        from every resolution; returns its adapter key."""
        with self._lock:
            key = self.resolved.get(target, target)
            if key in self.releases:
                del self.releases[key]
                self.resolved = {m: k for m, k in self.resolved.items() if k != key}
                return key
            if key not in self.engine.adapters():
                raise APIError(404, f"adapter {target!r} is not loaded", code="model_not_found")
            self.engine.unload_adapter(key)
            self.resolved = {m: k for m, k in self.resolved.items() if k != key}
            self.direct.pop(key, None)
            self.contexts.pop(key, None)
        return key

    def resolutions(self) -> dict[str, str]:
        """A snapshot of model string -> adapter key, for ``/admin/adapters``."""
        with self._lock:
            return dict(self.resolved)

    def with_system_prompt(self, adapter: str | None, messages: Messages) -> Messages:
        """``messages``, led by the system prompt ``adapter`` was trained with when they have none.

        A fine-tune answers best under the system prompt it was trained with; a client that sends
        none gets that one rather than the chat template's generic default.
        """
        with self._lock:
            trained_with = self.system_prompts.get(adapter) if adapter else None
        if trained_with and messages[0]["role"] != "system":
            return [{"role": "system", "content": trained_with}, *messages]
        return messages

    def default_tools(self, key: str | None) -> list[dict[str, Any]]:
        """The project tools (``task.tools``) the model ``key`` resolves to was trained or
        evaluated with; empty for the base model and for models trained without."""
        with self._lock:
            return list(self.tools.get(key) or []) if key else []

    def with_context(self, adapter: str | None, messages: Messages) -> Messages:
        """``messages`` with the retrieved context ``adapter`` was trained with, built by the
        evaluator's own code (:mod:`tunewise.baselines.context`) from the same pool and settings.

        The request is the query: its turns are the conversation so far, its last user turn the
        text retrieval looks at. An adapter trained without context gets ``messages`` unchanged.
        """
        with self._lock:
            context = self.contexts.get(adapter) if adapter else None
        if context is None:
            return messages
        # An empty answer turn closes the query like an evaluated item's reference answer does;
        # the prompt is everything before it.
        query = Example(messages=[*messages, {"role": "assistant", "content": ""}])
        # Requests are encoded without the disk cache: a file per distinct request would fill
        # the disk and keep every user's text as a vector. The pool's vectors stay cached.
        prompts, _, _ = context.prompts([query], cache_queries=False)
        return prompts[0]

    def listing(self) -> list[str]:
        """Every model id a client may ask for, each once (a registry name that arrived after a
        path-loaded adapter of that name is still one id)."""
        with self._lock:
            ids = [self.engine.ref.name, *self.direct]
        if self.registry is not None:
            for row in registry_call(self.registry, self.registry.summary):
                ids.append(row["name"])
                ids += [f"{row['name']}@{a}" for a in row["aliases"]]
        return list(dict.fromkeys(ids))

    def _load_from_registry_locked(self, model: str) -> str:
        if self.registry is None:
            raise _not_found(model)
        try:
            v = registry_call(self.registry, self.registry.lookup, model)
        except APIError:
            raise
        except UserError as exc:
            raise _not_found(model, f": {exc}") from None
        self._check_servable(v)
        key = v.spec
        tools = ((v.config or {}).get("task") or {}).get("tools")
        if isinstance(tools, list) and tools:
            self.tools[key] = tools
        if v.kind in RELEASE_KINDS:
            if key not in self.releases:
                files = self._verified(key)
                self.releases[key] = _load_release(files)
            self.resolved[model] = key
            return key
        if key not in self.engine.adapters():
            v = self._verified(key)
            self.engine.load_adapter(key, v.weights_dir, base_hash=v.base_weight_hash)
        prompt = ((v.config or {}).get("task") or {}).get("system_prompt")
        if prompt:
            self.system_prompts[key] = prompt
        if CONTEXT_FILE in v.files and key not in self.contexts:
            files = v if v.path is not None else self._verified(key)
            self.contexts[key] = ContextBuilder.load(files.weights_dir / CONTEXT_FILE).warm()
        self.resolved[model] = key
        return key

    def _check_servable(self, v: Version) -> None:
        """A registry version this server can answer with: a LoRA adapter on its base."""
        ref = self.engine.ref
        if v.kind in RELEASE_KINDS and v.kind not in LLM_KINDS:
            return  # a classifier without a language model: any base will do
        if v.kind not in ("lora", *LLM_KINDS):
            raise APIError(
                409,
                f"{v.spec} is a full fine-tune, not an adapter: serve it with "
                f"`tunewise serve --base` on its exported model",
                code="not_an_adapter",
            )
        if v.base_weight_hash != ref.weight_hash:
            raise APIError(
                409,
                f"{v.spec} was {'trained' if v.kind == 'lora' else 'evaluated'} on base "
                f"{v.base_weight_hash[:12]}…, but this "
                f"server's base {ref.name!r} is {ref.weight_hash[:12]}…; refusing to serve it",
                code="base_mismatch",
                param="model",
            )

    def release_messages(self, release: RungRelease, messages: Messages) -> Messages:
        """The prompt an LLM release gives the base model for a request: the evaluator's, built
        by the release (its system prompt, and its retrieved context for fewshot and rag)."""
        # Requests are encoded without the disk cache (see with_context); the pool stays cached.
        prompts, _, _ = release.prompts([query_of(messages)], cache_queries=False)
        return prompts[0]

    def _verified(self, key: str) -> Version:
        """The version's hash-verified files (a corrupted version is never served)."""
        assert self.registry is not None
        try:
            return registry_call(self.registry, self.registry.resolve, key)
        except CorruptedFileError as exc:
            raise APIError(503, str(exc), type="server_error", code="corrupted_adapter") from None


def _load_release(v: Version) -> RungRelease:
    """A verified version's release, ready to answer (a damaged one is one line, 503)."""
    assert v.path is not None
    try:
        return RungRelease.load(v.path).warm()
    except UserError as exc:
        raise APIError(503, str(exc), type="server_error", code="corrupted_adapter") from None
