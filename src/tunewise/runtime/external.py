"""The ``external`` candidate: any OpenAI-compatible chat endpoint (a frontier model, vLLM, ...).

:class:`ExternalClient` is a :class:`tunewise.runtime.backend.Backend`, like the local Engine, so
the
evaluation harness treats an endpoint like a local model. Requests run concurrently (a small
thread pool), greedy (``temperature: 0``), with timeouts; 429 and 5xx answers and dropped
connections are retried with exponential backoff (honouring ``Retry-After``); 401/403/404 and
other 4xx answers become one-line :class:`UserError` messages, since retrying cannot fix them.
Results are cached like local ones (:func:`tunewise.runtime.backend.cached_generate`; key: endpoint
URL
and model name, the JSON messages, decoding parameters), so a rerun does not pay the provider twice.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any

import httpx

from tunewise.errors import UserError
from tunewise.runtime.backend import GenRequest, GenResult, Messages, cached_generate
from tunewise.runtime.decoding import first_stop

if TYPE_CHECKING:
    from tunewise.config.eval import ExternalConfig
    from tunewise.runtime.cache import GenCache

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class ExternalClient:
    """A client for ``POST {base_url}/chat/completions`` (``base_url`` usually ends in ``/v1``)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = None,
        name: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        concurrency: int = 4,
        cache: GenCache | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise UserError(
                f"external '{name or model}': base_url must start with http:// or https://, "
                f"got {base_url!r}"
            )
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = name or model
        self.api_key_env = api_key_env
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.concurrency = max(1, concurrency)
        self.cache = cache
        headers = {"Content-Type": "application/json"}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise UserError(
                    f"external '{self.name}': environment variable {api_key_env} "
                    "(the API key) is not set"
                )
            headers["Authorization"] = f"Bearer {key}"
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            headers=headers,
            transport=transport,
        )
        self.model_key = f"external:{self.base_url}:{self.model}"

    @classmethod
    def from_config(cls, cfg: ExternalConfig, **kwargs: Any) -> ExternalClient:
        """From a ``project.yaml`` ``eval.external`` entry."""
        return cls(cfg.base_url, cfg.model, api_key_env=cfg.api_key_env, name=cfg.name, **kwargs)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ExternalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the Backend interface
    def generate(self, requests: list[GenRequest], *, progress: bool = False) -> list[GenResult]:
        """Greedy completions in request order; cached when a cache is given."""
        return cached_generate(
            requests,
            [_prompt_text(r) for r in requests],
            partial(self._complete_misses, requests),
            model_key=self.model_key,
            cache=self.cache,
            progress=progress,
            label=f"querying {self.name}",
        )

    def _complete_misses(
        self, requests: list[GenRequest], todo: list[int]
    ) -> Generator[dict[int, GenResult], None, None]:
        """Requests ``todo``, ``concurrency`` at a time; each result is yielded in request order."""
        with ThreadPoolExecutor(self.concurrency) as pool:
            futures = {i: pool.submit(self._complete, requests[i]) for i in todo}
            try:
                for i, fut in futures.items():
                    yield {i: fut.result()}
            except BaseException:  # a failure, or the caller stopped: send nothing more
                for fut in futures.values():
                    fut.cancel()
                raise

    def score_continuations(
        self,
        messages: Messages,
        continuations: list[str],
        adapter: str | None = None,
        *,
        end_of_turn: bool = True,
    ) -> list[float]:
        raise UserError(
            f"external '{self.name}': constrained label scoring needs token log-probabilities of "
            "a local model; use free generation for external candidates"
        )

    # ------------------------------------------------------------------ one request
    def _complete(self, req: GenRequest) -> GenResult:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": req.messages,
            "max_tokens": int(req.max_new_tokens),
            "temperature": 0,
        }
        if req.stop:
            body["stop"] = list(req.stop)[:4]  # the OpenAI API accepts at most four
        data = self._post("/chat/completions", body)
        try:
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
            finish = choice.get("finish_reason") or "stop"
        except (KeyError, IndexError, TypeError, AttributeError):
            raise UserError(
                f"external '{self.name}': unexpected response shape: {json.dumps(data)[:200]}"
            ) from None
        if req.stop:  # some servers ignore stop strings, or accept fewer than we have
            cut = first_stop(text, list(req.stop))
            if cut is not None:
                text, finish = text[:cut], "stop"
        usage = data.get("usage") or {}
        return GenResult(
            text=text,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            finish_reason="length" if finish == "length" else "stop",
        )

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        url = self.base_url + path
        last = ""
        for attempt in range(self.max_retries + 1):
            try:
                resp = self._http.post(url, json=body)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                last = f"{type(exc).__name__}: {exc}"
                resp = None
            if resp is not None:
                if resp.status_code < 300:
                    try:
                        return resp.json()
                    except ValueError:
                        raise UserError(
                            f"external '{self.name}': {url} answered non-JSON: {resp.text[:200]!r}"
                        ) from None
                if resp.status_code not in RETRY_STATUS:
                    raise UserError(self._describe(resp, url))
                last = f"HTTP {resp.status_code}: {_error_message(resp)}"
            if attempt == self.max_retries:
                break
            time.sleep(self._delay(attempt, resp))
        raise UserError(
            f"external '{self.name}': {url} failed after {self.max_retries + 1} attempts ({last})"
        )

    def _delay(self, attempt: int, resp: httpx.Response | None) -> float:
        retry_after = resp.headers.get("retry-after") if resp is not None else None
        if retry_after:
            try:
                return min(self.max_backoff, max(0.0, float(retry_after)))
            except ValueError:
                pass  # an HTTP date: fall back to our own schedule
        # exponential with jitter, so that concurrent workers do not retry in lockstep
        return min(self.max_backoff, self.backoff * 2**attempt) * (0.5 + random.random() / 2)

    def _describe(self, resp: httpx.Response, url: str) -> str:
        msg = _error_message(resp)
        code = resp.status_code
        if code in (401, 403):
            hint = (
                f"check ${self.api_key_env}"
                if self.api_key_env
                else "set eval.external[].api_key_env"
            )
            return f"external '{self.name}': {url} refused the API key (HTTP {code}: {msg}); {hint}"
        if code == 404:
            return (
                f"external '{self.name}': {url} not found or unknown model '{self.model}' "
                f"(HTTP 404: {msg}); check base_url and model"
            )
        return f"external '{self.name}': {url} rejected the request (HTTP {code}: {msg})"


def _error_message(resp: httpx.Response) -> str:
    try:
        data = resp.json()
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:200]
        if isinstance(err, str):
            return err[:200]
        if isinstance(data, dict) and data.get("detail"):
            return str(data["detail"])[:200]
    except ValueError:
        pass
    return resp.text[:200] or resp.reason_phrase


def _prompt_text(req: GenRequest) -> str:
    return json.dumps(req.messages, sort_keys=True, ensure_ascii=False)
