"""Batched generation (greedy, or sampled on request) with one base model and many LoRA adapters.

One :class:`Engine` holds one base model in memory and answers :class:`GenRequest` lists (it is a
:class:`tunewise.runtime.backend.Backend`). LoRA adapters are loaded onto it by name; their
residency
(at most ``max_loaded_adapters`` in memory, least recently used ones dropped and reloaded from disk
on their next request, never one a generation is using) belongs to its
:class:`tunewise.runtime.adapter_pool.AdapterPool`. The base model itself is always available as
adapter
``None`` (adapters disabled). A full fine-tune is a different base model: give it its own Engine
(:meth:`Engine.from_run`).

Generation is greedy and batched: requests are sorted by prompt length to limit padding and run
``batch_size`` at a time with left padding and a KV cache. With ``mixed_adapters`` (the default) a
batch holds rows of different adapters and of the base, run together in every forward through
PEFT's mixed batches (see :mod:`tunewise.runtime.adapter_pool`); a batch never needs more
adapters than ``max_loaded_adapters``, and an adapter PEFT cannot mix (DoRA, saved modules, ...)
gets batches of its own. ``mixed_adapters=False`` groups the batches per adapter, as before (the
reference of ``bench/serve_load.py``). Prompts that share a token prefix (the system prompt, a
fixed few-shot block) prefill that prefix once per batch and adapter and share its keys and
values. A row that reaches EOS, a stop string or its ``max_new_tokens`` leaves the batch, so
finished rows stop costing compute. The output of a batch equals what one-at-a-time
``model.generate`` gives on the same prompt (``bench/eval_throughput.py`` checks it).

A request with ``temperature`` > 0 is sampled instead (``top_p``, ``seed``: see
:mod:`tunewise.runtime.decoding`); its row draws from a generator of its own, so it may share a
batch with greedy rows and a seeded one answers the same in any batch. An unseeded sample is
never cached; a seeded one is, under a key that holds its settings.

Every model call holds the adapter pool for one forward step, so a server may call the engine from
several threads: their steps interleave, which also keeps a long stream from blocking short calls.
"""

from __future__ import annotations

import inspect
import math
import threading
from collections.abc import Generator, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunewise.errors import UserError
from tunewise.rundir import RunDir
from tunewise.runtime import chat, decoding, device
from tunewise.runtime.adapter_pool import AdapterPool
from tunewise.runtime.backend import (
    GenRequest,
    GenResult,
    Messages,
    PromptTooLongError,
    cached_generate,
    check_context,
    check_sampling,
    sampling_params,
)
from tunewise.runtime.cache import GenCache
from tunewise.runtime.decoding import Row, Sampler, first_stop, stop_overlap
from tunewise.runtime.models import ModelRef, load_model, load_tokenizer, resolve
from tunewise.runtime.prefix_cache import PrefixCache

if TYPE_CHECKING:
    import torch

    from tunewise.runtime.device import Placement

# GenRequest, GenResult and PromptTooLongError live in tunewise.runtime.backend; most callers know
# them
# as part of the engine's interface and import them from here.
__all__ = [
    "Engine",
    "GenRequest",
    "GenResult",
    "PromptTooLongError",
    "engine_for_run",
    "max_new_tokens_for",
]


def max_new_tokens_for(
    tokenizer: Any, answers: Sequence[str], *, margin: int = 8, cap: int = 1024
) -> int:
    """A ``max_new_tokens`` from the data: the longest reference answer in tokens, plus a margin.

    The margin (at least ``margin`` tokens, or 10% of the longest answer) leaves room for a model
    that phrases an answer slightly longer than the references, and one more token for the end of
    turn. Without answers, falls back to 64.
    """
    lengths = [len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers if a]
    if not lengths:
        return 64
    longest = max(lengths)
    return int(min(cap, longest + max(margin, math.ceil(0.1 * longest)) + 1))


class Engine:
    """One base model, many LoRA adapters, batched generation (see the module docstring)."""

    def __init__(
        self,
        ref: ModelRef,
        *,
        quantize_4bit: bool = False,
        max_loaded_adapters: int = 8,
        batch_size: int = 16,
        cache: GenCache | None = None,
        dtype: str | None = None,
        trust_remote_code: bool = False,
        placement: Placement | None = None,
        allow_special_tokens_in_content: bool = False,
        mixed_adapters: bool = True,
        prefix_cache_mb: float = 256,
    ) -> None:
        # lazy: torch and transformers, ~2 s to import; a model is loaded here, not on import
        import torch
        from transformers.utils import logging as hf_logging

        if batch_size < 1 or max_loaded_adapters < 1:
            raise UserError("batch_size and max_loaded_adapters must be at least 1")
        self.ref = ref
        self.batch_size = batch_size
        self.cache = cache
        # False: one adapter per batch (the old grouping, kept as the benchmarks' reference)
        self.mixed_adapters = mixed_adapters
        # False: a control token typed inside a message is text (see tunewise.runtime.chat)
        self.allow_special_tokens_in_content = allow_special_tokens_in_content
        self.tokenizer = load_tokenizer(ref, trust_remote_code=trust_remote_code)
        hf_logging.disable_progress_bar()
        # Device, dtype, 4-bit and attention from the one policy (tunewise.runtime.device): a GPU
        # gets
        # the weights in bf16/fp16; ``dtype`` and ``quantize_4bit`` are requests to that policy.
        if placement is None:
            placement = device.choose(
                device.detect(), purpose="infer", quantize_4bit=quantize_4bit, dtype=dtype or "auto"
            )
        self.placement = placement
        self.quantize_4bit = quantize_4bit = placement.quantize_4bit
        base = load_model(ref, placement=placement, trust_remote_code=trust_remote_code)
        base.eval()
        self._base = base
        self.pool = AdapterPool(base, ref, max_loaded=max_loaded_adapters)
        self._device = next(base.parameters()).device
        # Fast tokenizers are not safe to call from two threads. Reentrant: a constraint is
        # started (its tokenizer data built, once) under it, and may decode through it.
        self._tok_lock = threading.RLock()
        self.end_of_turn = self._find_end_of_turn()
        self.eos_ids: frozenset[int] = _eos_ids(base, self.tokenizer, self.end_of_turn)
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else min(self.eos_ids))
        self.context_length = int(getattr(base.config, "max_position_embeddings", 0) or 2048)
        params = inspect.signature(base.forward).parameters
        # transformers 5.x renamed past_key_values -> cache; accept both so other archs work.
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._logits_to_keep = "logits_to_keep" in params
        # fp32 keys stay as they were before the policy existed, so old caches keep their hits.
        dtype = placement.compute_dtype if quantize_4bit else placement.dtype
        self.model_key = (
            ref.weight_hash
            + (":nf4" if quantize_4bit else "")
            + (f":{dtype}" if dtype != "float32" else "")
        )
        self._torch = torch
        # Shared prompt prefixes' keys and values, kept per adapter weights across batches
        # (tunewise.runtime.prefix_cache); 0 turns it off.
        self.prefix_cache = (
            PrefixCache(int(prefix_cache_mb * 2**20), identity=self.adapter_hash)
            if prefix_cache_mb > 0
            else None
        )

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_run(cls, run_dir: Path, **kwargs: Any) -> Engine:
        """An Engine on a full fine-tune's own checkpoint (``RUN/model/``)."""
        run = RunDir(run_dir)
        if run.kind != "full":
            raise UserError(f"{run_dir}: not a full fine-tune run (no model/config.json)")
        return cls(resolve(str(run.model_dir)), **kwargs)

    @property
    def model(self) -> Any:
        """The module that runs: the PEFT wrapper once adapters exist, else the base model."""
        return self.pool.model

    @property
    def max_loaded_adapters(self) -> int:
        return self.pool.max_loaded

    def _find_end_of_turn(self) -> str:
        # The text a chat template closes an assistant turn with (ChatML: "<|im_end|>"); used to
        # stop generation and to score "label + end of turn".
        return chat.end_of_turn(self.tokenizer)

    # ------------------------------------------------------------------ adapters (see AdapterPool)
    def load_adapter(self, name: str, path: Path, *, base_hash: str | None = None) -> None:
        """Load the PEFT adapter in ``path`` as ``name`` (replacing a different one of that name).

        Refuses (UserError) an adapter whose training run recorded a different base model weight
        hash: ``base_hash`` when given (the registry knows it), else ``path/run.json``.
        """
        self.pool.register(name, path, base_hash=base_hash)

    def unload_adapter(self, name: str) -> None:
        """Forget an adapter entirely (memory and registration)."""
        self.pool.unregister(name)

    def adapters(self) -> list[str]:
        """Names of every registered adapter (loaded now or reloadable on demand)."""
        return self.pool.names()

    def loaded_adapters(self) -> list[str]:
        """Adapters resident in memory, least recently used first."""
        return self.pool.loaded()

    def adapter_hash(self, name: str | None) -> str:
        return self.pool.sha256(name)

    # ------------------------------------------------------------------ prompts
    def render(self, messages: Messages) -> str:
        """The prompt text: the chat template with the generation prompt appended."""
        if not isinstance(messages, list) or not messages:
            raise UserError("messages must be a non-empty list of {role, content}")
        for i, m in enumerate(messages):
            if (
                not isinstance(m, dict)
                or not isinstance(m.get("role"), str)
                or not isinstance(m.get("content"), str)
            ):
                raise UserError(f"messages[{i}]: expected {{'role': str, 'content': str}}")
        return chat.render(
            self.tokenizer,
            messages,
            generation_prompt=True,
            allow_special_tokens=self.allow_special_tokens_in_content,
        )

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of rendered prompts (or plain continuations); see :func:`chat.encode`."""
        with self._tok_lock:
            return chat.encode(self.tokenizer, texts)

    def decode(self, ids: list[int]) -> str:
        with self._tok_lock:
            return self.tokenizer.decode(ids, skip_special_tokens=True)

    def prompt_tokens(self, messages: Messages) -> int:
        """How many tokens the rendered prompt takes (the server checks it against the context)."""
        return len(self.encode([self.render(messages)])[0])

    def max_new_tokens_for(self, answers: Sequence[str], *, margin: int = 8) -> int:
        """See :func:`max_new_tokens_for`; capped so that generation fits the context."""
        return max_new_tokens_for(
            self.tokenizer, answers, margin=margin, cap=max(1, self.context_length // 2)
        )

    # ------------------------------------------------------------------ generation
    def generate(self, requests: list[GenRequest], *, progress: bool = False) -> list[GenResult]:
        """Completions for ``requests``, in request order (see the module docstring)."""
        if not requests:
            return []
        for i, r in enumerate(requests):
            if r.max_new_tokens < 1:
                raise UserError(f"request {i}: max_new_tokens must be at least 1")
            check_sampling(r, where=f"request {i}: ")
            if r.adapter is not None:
                self.pool.get(r.adapter)
        prompts = [self.render(r.messages) for r in requests]
        return cached_generate(
            requests,
            prompts,
            partial(self._generate_misses, requests, prompts),
            model_key=self.model_key,
            cache=self.cache,
            adapter_hash=self.adapter_hash,
            progress=progress,
            params=sampling_params,
        )

    def _generate_misses(
        self, requests: list[GenRequest], prompts: list[str], todo: list[int]
    ) -> Generator[dict[int, GenResult], None, None]:
        """Run requests ``todo`` in batches, yielding each batch's results as it finishes."""
        ids = self.encode([prompts[i] for i in todo])
        rows = {i: self._row(requests[i], t) for i, t in zip(todo, ids, strict=True)}
        for i, row in rows.items():  # all of them before any runs: fail fast, not half-way
            check_context(len(row.prompt), row.max_new, self.context_length, where=f"request {i}: ")
        for idx in self._batches(requests, rows):
            batch_rows = [rows[i] for i in idx]
            # every adapter of the batch stays resident until its last row is done
            with self.pool.pinned_all(row.group for row in batch_rows):
                for _ in self._decode(batch_rows, track_text=False):
                    pass
            yield {i: self._result(row) for i, row in zip(idx, batch_rows, strict=True)}

    def _batches(self, requests: list[GenRequest], rows: dict[int, Row]) -> list[list[int]]:
        """Batches of positions, at most ``batch_size`` rows and ``max_loaded_adapters``
        adapters each (the base does not count): across adapters with ``mixed_adapters``, else
        one adapter per batch. An adapter that cannot mix always gets batches of its own."""
        # Longest first: the slowest batch starts while the progress bar is honest, and
        # neighbours in length share a batch so padding stays small.
        order = sorted(rows, key=lambda i: (-len(rows[i].prompt), -rows[i].max_new))
        groups: dict[object, list[int]] = {}
        mixed = object()  # the key of every row that may share a batch with other adapters
        for i in order:
            adapter = requests[i].adapter
            key = mixed if self.mixed_adapters and self.pool.mixable(adapter) else adapter
            groups.setdefault(key, []).append(i)
        adapters = {i: requests[i].adapter for i in order}
        return [
            batch
            for idx in groups.values()
            for batch in fill_batches(idx, adapters, self.batch_size, self.max_loaded_adapters)
        ]

    def stream(self, request: GenRequest) -> Generator[str, None, GenResult]:
        """Text deltas of one completion, for SSE. Stop strings are never emitted.

        The generator's return value (``StopIteration.value``) is the whole :class:`GenResult`,
        so a caller knows the ``finish_reason`` and token counts without recounting the text.
        """
        row = self._one_row(request)
        sent = 0
        with self.pool.pinned(request.adapter):
            for _ in self._decode([row], track_text=True):
                if row.finish is not None:
                    break
                visible = row.text
                # Hold back a tail that may still become a stop string or a multi-byte character.
                hold = max([stop_overlap(visible, s) for s in row.stops] + [0])
                if visible.endswith("\ufffd"):
                    hold = max(hold, len(visible) - len(visible.rstrip("\ufffd")))
                end = len(visible) - hold
                if end > sent:
                    yield visible[sent:end]
                    sent = end
        result = self._result(row)
        if len(result.text) > sent:
            yield result.text[sent:]
        return result

    def steps(
        self, request: GenRequest, *, prefill_chunk: int | None = 64
    ) -> Generator[None, None, GenResult]:
        """One completion as a generator that yields after every forward pass, so that a caller
        may pause between any two (the shadow challenger gives way to production there); its
        return value (``StopIteration.value``) is the :class:`GenResult`.

        The prompt is rendered, encoded and checked now, in this call; nothing runs on the model
        before the first ``next()``. A prompt longer than ``prefill_chunk`` tokens is prefilled
        that many tokens per forward (see :func:`decoding.prefill_chunks`): ``ceil(n / chunk)``
        yields, the last of which carries the first token, then one per further token. The
        adapter stays pinned until the generator ends or is closed.

        ``prefill_chunk=None``, or a prompt no longer than it, runs exactly the path of
        :meth:`stream` and :meth:`generate` alone: the same answer, bit for bit. A chunked
        prefill computes the same math in other matmul shapes, so its logits may differ from a
        one-shot prefill's in the last bits. Greedy answers were equal on every prompt checked
        (tests/test_chunked_prefill.py: a tiny model, chunks of 1 to 32, with and without
        adapters, stop strings, a seeded sample, a tool constraint; SmolLM2-135M on CPU: 6
        prompts of 38 to 83 tokens, chunks of 16, 32 and 64, 32 new tokens, 18 of 18), but a
        near tie between two tokens could break either way.
        """
        row = self._one_row(request)
        return self._steps(row, prefill_chunk)

    def _steps(self, row: Row, prefill_chunk: int | None) -> Generator[None, None, GenResult]:
        with self.pool.pinned(row.group):
            yield from self._decode([row], track_text=False, prefill_chunk=prefill_chunk)
        return self._result(row)

    def _one_row(self, request: GenRequest) -> Row:
        """The checked row of one request (:meth:`stream`, :meth:`steps`)."""
        if request.max_new_tokens < 1:
            raise UserError("max_new_tokens must be at least 1")
        check_sampling(request)
        ids = self.encode([self.render(request.messages)])[0]
        check_context(len(ids), request.max_new_tokens, self.context_length)
        return self._row(request, ids)

    def _row(self, request: GenRequest, prompt: list[int]) -> Row:
        """A decode row for ``request``, its constraint (if any) started on this tokenizer, its
        sampler (if any) seeded."""
        row = Row(
            prompt=prompt,
            max_new=request.max_new_tokens,
            stops=list(request.stop),
            group=request.adapter,
        )
        if request.temperature > 0:
            row.sampler = Sampler(request.temperature, request.top_p, request.seed)
        if request.constraint is not None:
            with self._tok_lock:  # the first start reads the whole vocabulary
                row.constraint = request.constraint.start(self.tokenizer, self.eos_ids, self._raw)
        return row

    def _raw(self, ids: list[int]) -> str:
        """Token ids as text with control tokens kept, under the tokenizer lock (a grammar
        reads what it has seen so far)."""
        with self._tok_lock:
            return self.tokenizer.decode(ids)

    def _result(self, row: Row) -> GenResult:
        gen = row.gen[:-1] if row.gen and row.gen[-1] in self.eos_ids else row.gen
        text = self.decode(gen)
        if row.stops:
            cut = first_stop(text, row.stops)
            if cut is not None:
                text = text[:cut]
        return GenResult(
            text=text,
            prompt_tokens=len(row.prompt),
            completion_tokens=len(row.gen),
            finish_reason=row.finish or "length",
        )

    def _forward(
        self,
        adapter: str | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        kv: Any,
        last_only: bool = True,
        groups: list[str | None] | None = None,
    ) -> torch.Tensor:
        """One model call with ``adapter`` on, holding the pool (see
        :mod:`tunewise.runtime.decoding`). ``groups``, one adapter per row (decoding passes the
        rows' ``Row.group``), overrides ``adapter``: several run as one mixed batch."""
        kwargs: dict[str, Any] = {self._cache_kw: kv, "use_cache": True}
        if last_only and self._logits_to_keep:
            kwargs["logits_to_keep"] = 1  # the LM head over the vocabulary is costly: one row
        names = groups if groups is not None else [adapter]
        with self.pool.activated_rows(names) as (model, slots), self._torch.inference_mode():
            if slots is not None:
                kwargs["adapter_names"] = slots  # PEFT's mixed batch: one adapter per row
            out = model(
                input_ids=input_ids.to(self._device),
                attention_mask=attention_mask.to(self._device),
                position_ids=position_ids.to(self._device),
                **kwargs,
            )
        return out.logits[:, -1, :] if last_only else out.logits

    def _decode(
        self, rows: list[Row], *, track_text: bool, prefill_chunk: int | None = None
    ) -> Iterator[None]:
        # Each row carries its adapter as Row.group, and decoding passes ``groups`` whenever a
        # row has one: ``adapter=None`` here only ever runs rows that are all the base's.
        return decoding.greedy_decode(
            partial(self._forward, None),
            self._base.config,
            rows,
            eos_ids=self.eos_ids,
            pad_id=self.pad_id,
            decode=self.decode,
            track_text=track_text,
            prefill_chunk=prefill_chunk,
            prefix_cache=self.prefix_cache,
        )

    # ------------------------------------------------------------------ constrained labels
    def score_continuations(
        self,
        messages: Messages,
        continuations: list[str],
        adapter: str | None = None,
        *,
        end_of_turn: bool = True,
    ) -> list[float]:
        """Total log-probability of each continuation after the generation prompt: the
        constrained label mode scores every allowed label this way.

        With ``end_of_turn`` (the default) the template's end-of-turn marker is scored too, so a
        label that is a prefix of another ("bill" / "billing") is not favoured; pass False to
        score a partial answer (one field of several)."""
        if not continuations:
            return []
        if adapter is not None:
            self.pool.get(adapter)
        prompt = self.render(messages)
        suffix = self.end_of_turn if end_of_turn else ""
        key = self._score_key(prompt, continuations, suffix, adapter)
        if key is not None and self.cache is not None:
            hit = self.cache.get_scores(key)
            if hit is not None:
                return hit
        prompt_ids = self.encode([prompt])[0]
        cont_ids = self.encode([c + suffix for c in continuations])
        if any(not c for c in cont_ids):
            raise UserError("score_continuations: an empty continuation has no tokens to score")
        longest = max(len(c) for c in cont_ids)
        check_context(len(prompt_ids), longest, self.context_length, new_label="label tokens")
        with self.pool.pinned(adapter):
            scores = decoding.score_continuations(
                partial(self._forward, adapter),
                self._base.config,
                prompt_ids,
                cont_ids,
                pad_id=self.pad_id,
                chunk=max(self.batch_size, 8),
            )
        if key is not None and self.cache is not None:
            self.cache.put_scores(key, scores)
        return scores

    def _score_key(
        self, prompt: str, continuations: list[str], suffix: str, adapter: str | None
    ) -> str | None:
        """The cache key of a scoring call (None without a cache)."""
        if self.cache is None:
            return None
        params = {"kind": "logprob", "continuations": list(continuations), "eot": suffix}
        return GenCache.key(self.model_key, self.adapter_hash(adapter), prompt, params)


def fill_batches(
    order: list[int], adapters: dict[int, str | None], size: int, max_adapters: int
) -> list[list[int]]:
    """``order`` (positions, longest prompt first) cut into batches of at most ``size`` rows
    that need at most ``max_adapters`` adapters each (the base, None, needs none).

    A row whose adapter would be one too many waits for the next batch, which starts with the
    longest row still waiting, so batches stay sorted by length as far as the bound allows.
    """
    batches: list[list[int]] = []
    waiting = order
    while waiting:
        batch: list[int] = []
        used: set[str] = set()
        later: list[int] = []
        for pos, i in enumerate(waiting):
            if len(batch) == size:  # full: the rest waits as it is (one adapter stays O(n))
                later += waiting[pos:]
                break
            adapter = adapters[i]
            if adapter is None or adapter in used or len(used) < max_adapters:
                batch.append(i)
                if adapter is not None:
                    used.add(adapter)
            else:
                later.append(i)
        batches.append(batch)
        waiting = later
    return batches


def _eos_ids(base: Any, tokenizer: Any, end_of_turn: str) -> frozenset[int]:
    """Every token that ends a turn: the generation config's EOS ids, the tokenizer's, and the
    chat template's end-of-turn token."""
    gen_eos = base.generation_config.eos_token_id
    eos = set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
    if tokenizer.eos_token_id is not None:
        eos.add(tokenizer.eos_token_id)
    # The template's end-of-turn token stops generation even when the checkpoint's EOS is
    # another token (Llama 3.0 shipped EOS <|end_of_text|> while turns end in <|eot_id|>).
    eot_id = chat.end_of_turn_id(tokenizer, end_of_turn)
    if eot_id is not None:
        eos.add(eot_id)
    return frozenset(int(e) for e in eos)


def engine_for_run(
    run_dir: Path, engine: Engine | None = None, *, name: str | None = None, **kwargs: Any
) -> tuple[Engine, str | None]:
    """The engine and adapter name that run a training run's output.

    A LoRA/QLoRA run is loaded as an adapter on ``engine`` (or on a new engine for the run's base);
    a full fine-tune gets an Engine of its own. Returns ``(engine, adapter_name_or_None)``.
    """
    run = RunDir(run_dir)
    kind = run.kind
    if kind == "lora":
        if engine is None:
            engine = Engine(resolve(run.base_reference()), **kwargs)
        adapter = name or run.path.name
        engine.load_adapter(adapter, run.path)
        return engine, adapter
    if kind == "full":
        return Engine.from_run(run.path, **kwargs), None
    raise UserError(f"{run_dir}: neither a LoRA adapter nor a full fine-tune run directory")
