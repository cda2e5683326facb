"""What every text generator offers the rest of tunewise: requests, results, one protocol.

A :class:`Backend` answers a list of :class:`GenRequest` in request order, greedily unless a
request asks for sampling (``temperature`` > 0, which only the local engine honours). Two classes
implement it: :class:`tunewise.runtime.engine.Engine` (one local base model and its LoRA adapters)
and
:class:`tunewise.runtime.external.ExternalClient` (an OpenAI-compatible endpoint). The evaluation
harness,
the LLM judge and the server's micro-batcher take a Backend, so a frontier model and a local
fine-tune are interchangeable there.

Both cache through :func:`cached_generate`: the cache is read first, only the misses run, and
every finished chunk is stored at once, so an interrupted evaluation keeps what it already paid
for. Both refuse a prompt that does not fit the model's context with :func:`check_context`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from tunewise.errors import UserError
from tunewise.progress import Bar, make_console
from tunewise.runtime.cache import GenCache

if TYPE_CHECKING:
    from collections.abc import Collection

    from tunewise.runtime.decoding import RowConstraint

Messages = list[dict[str, str]]  # chat turns: {"role": ..., "content": ...}


class Constraint(Protocol):
    """What a request's answer may be (:class:`tunewise.runtime.grammar.ToolConstraint`)."""

    def key(self) -> str:
        """Identifies the constraint in the generation cache key."""
        ...

    def start(
        self,
        tokenizer: Any,
        eos_ids: Collection[int],
        decode: Callable[[list[int]], str] | None = None,
    ) -> RowConstraint:
        """A fresh per-row state for one generation with ``tokenizer``."""
        ...


@dataclass
class GenRequest:
    messages: Messages  # chat messages WITHOUT the answer
    adapter: str | None = None  # None -> the base model
    max_new_tokens: int = 64
    stop: list[str] = field(default_factory=list)
    # A decoding constraint (a local engine only): None generates freely.
    constraint: Constraint | None = None
    # Sampling (a local engine only): 0 is greedy, the answer every evaluation scores; above 0
    # tokens are drawn from softmax(logits / temperature) cut to the top_p nucleus. ``seed``
    # makes a sample repeatable (and cacheable); None draws a fresh one each time.
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass
class GenResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length"
    cached: bool = False

    def to_cache(self) -> dict[str, Any]:
        """The stored form: everything but ``cached``, which says where a result came from."""
        return {
            "text": self.text,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "finish_reason": self.finish_reason,
        }

    @classmethod
    def from_cache(cls, value: dict[str, Any]) -> GenResult:
        return cls(**value, cached=True)


class PromptTooLongError(UserError):
    """The prompt plus the tokens asked for does not fit the model's context window."""


def check_context(
    prompt_tokens: int,
    new_tokens: int,
    context_length: int,
    *,
    new_label: str = "max_new_tokens",
    where: str = "",
) -> None:
    """Raise :class:`PromptTooLongError` unless ``prompt_tokens + new_tokens`` fits the context.

    ``new_label`` names the second term as the caller's user knows it (``max_tokens`` for an
    OpenAI client); ``where`` prefixes the message (``"request 3: "``).
    """
    if prompt_tokens + new_tokens > context_length:
        raise PromptTooLongError(
            f"{where}prompt of {prompt_tokens} tokens + {new_label} {new_tokens} exceeds the "
            f"context of {context_length} tokens"
        )


class Backend(Protocol):
    """Generation (and, where the backend has token log-probabilities, label scores)."""

    cache: GenCache | None

    def generate(self, requests: list[GenRequest], *, progress: bool = False) -> list[GenResult]:
        """Completions in request order; ``cached`` marks results read from the cache."""
        ...

    def score_continuations(
        self,
        messages: Messages,
        continuations: list[str],
        adapter: str | None = None,
        *,
        end_of_turn: bool = True,
    ) -> list[float]:
        """Log-probability of each continuation after the prompt (UserError where unsupported)."""
        ...


def generation_params(req: GenRequest) -> dict[str, Any]:
    """The decoding parameters that, with model, adapter and prompt, determine a greedy output.
    An unconstrained request keeps the key it always had."""
    params: dict[str, Any] = {
        "decoding": "greedy",
        "max_new_tokens": int(req.max_new_tokens),
        "stop": list(req.stop),
    }
    if req.constraint is not None:
        params["constraint"] = req.constraint.key()
    return params


def sampling_params(req: GenRequest) -> dict[str, Any] | None:
    """:func:`generation_params` for a backend that samples: a greedy request keeps its key, a
    seeded sample adds its settings, and an unseeded one has no key (None: never cached, since
    the next call must draw again)."""
    params = generation_params(req)
    if req.temperature > 0:
        if req.seed is None:
            return None
        params.update(
            decoding="sample",
            temperature=float(req.temperature),
            top_p=float(req.top_p),
            seed=int(req.seed),
        )
    return params


def check_sampling(req: GenRequest, where: str = "") -> None:
    """UserError unless ``req``'s temperature is >= 0 and its top_p within [0, 1]."""
    if not 0 <= req.temperature < float("inf"):
        raise UserError(f"{where}temperature must be a number >= 0, not {req.temperature}")
    if not 0 <= req.top_p <= 1:
        raise UserError(f"{where}top_p must be within [0, 1], not {req.top_p}")


def _no_adapter(_: str | None) -> str:
    return ""


RunMisses = Callable[[list[int]], Generator[dict[int, GenResult], None, None]]


def cached_generate(
    requests: Sequence[GenRequest],
    prompts: Sequence[str],
    run: RunMisses,
    *,
    model_key: str,
    cache: GenCache | None,
    adapter_hash: Callable[[str | None], str] = _no_adapter,
    progress: bool = False,
    label: str = "generating",
    params: Callable[[GenRequest], dict[str, Any] | None] = generation_params,
) -> list[GenResult]:
    """``requests`` answered from ``cache`` where it can, by ``run`` where it cannot.

    ``prompts[i]`` is the text that identifies request i's prompt in the cache key (a local
    engine's rendered chat template, an endpoint's JSON messages). ``run(misses)`` gets the
    positions of the misses and yields ``{position: result}`` chunks as they finish; each chunk
    is stored before the next is asked for. ``params(request)`` gives the decoding parameters of
    the key, None for a request that must never be cached.
    """
    results: list[GenResult | None] = [None] * len(requests)
    keys: dict[int, str] = {}  # position -> key, for the cacheable requests
    if cache is not None:
        for i, (r, p) in enumerate(zip(requests, prompts, strict=True)):
            decoding = params(r)
            if decoding is not None:
                keys[i] = GenCache.key(model_key, adapter_hash(r.adapter), p, decoding)
        positions = list(keys)
        for j, hit in cache.get_many(list(keys.values())).items():
            results[positions[j]] = GenResult.from_cache(hit)
    misses = [i for i, r in enumerate(results) if r is None]
    if progress and len(misses) < len(requests):
        # Said, because a rerun's "generating 150 answers" that returns at once looks like a bug.
        hits = len(requests) - len(misses)
        rest = f", {len(misses)} to generate" if misses else ": nothing to generate"
        make_console(stderr=True).print(
            f"{hits} of {len(requests)} from the generation cache{rest}", highlight=False
        )
    if misses:
        with (
            Bar(label, len(misses), enabled=progress) as bar,
            contextlib.closing(run(misses)) as it,
        ):
            for chunk in it:
                for i, result in chunk.items():
                    results[i] = result
                stored = {keys[i]: r.to_cache() for i, r in chunk.items() if i in keys}
                if cache is not None and stored:
                    cache.put_many(stored)
                bar.advance(len(chunk))
    return [r for r in results if r is not None]
