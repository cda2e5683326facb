"""Batched greedy generation with one base model and many LoRA adapters.

One :class:`Engine` holds one base model in memory. LoRA adapters are loaded onto it by name
(PEFT ``load_adapter``), at most ``max_loaded_adapters`` at a time (least recently used ones are
dropped from memory and reloaded from disk on their next request). The base model itself is always
available as adapter ``None`` (adapters disabled). A full fine-tune is a different base model: give
it its own Engine (:meth:`Engine.from_run`).

Generation is greedy and batched: requests are grouped per adapter, sorted by prompt length to limit
padding, and run ``batch_size`` at a time with left padding and a KV cache. Prompts that share a
token prefix (the system prompt, a fixed few-shot block) prefill that prefix once per batch and
share its keys and values. A row that reaches EOS, a stop string or its ``max_new_tokens`` leaves
the batch, so finished rows stop costing compute. The output of a batch equals what one-at-a-time
``model.generate`` gives on the same prompt (``bench/eval_throughput.py`` checks it).

Every model call takes ``self._lock`` for one forward step, so a server may call the engine from
several threads: their steps interleave, which also keeps a long stream from blocking short calls.
"""

from __future__ import annotations

import inspect
import json
import math
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunewise import decoding
from tunewise.decoding import Row, first_stop, stop_overlap
from tunewise.errors import UserError
from tunewise.fsio import sha256_file, sha256_text
from tunewise.models import ModelRef

if TYPE_CHECKING:
    import torch

    from tunewise.cache import GenCache
    from tunewise.device import Placement

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


class PromptTooLongError(UserError):
    """The prompt plus ``max_new_tokens`` does not fit the model's context window."""


@dataclass
class GenRequest:
    messages: list[dict[str, str]]  # chat messages WITHOUT the answer
    adapter: str | None = None  # None -> the base model
    max_new_tokens: int = 64
    stop: list[str] = field(default_factory=list)


@dataclass
class GenResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length"
    cached: bool = False


@dataclass
class _Adapter:
    name: str
    path: Path
    sha256: str  # of adapter_model.safetensors: part of the cache key
    slot: str  # PEFT adapter name (module-dict key: no dots, no '@' or ':')


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


def adapter_base_hash(path: Path) -> str | None:
    """The base model weight hash recorded in ``path/run.json`` (a tunewise training run), if any."""
    run = path / "run.json"
    if not run.is_file():
        return None
    try:
        data = json.loads(run.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{run}: unreadable run.json: {exc}") from None
    base = data.get("base_model") or {}
    value = base.get("weight_hash") if isinstance(base, dict) else None
    return str(value) if value else None


class Engine:
    """One base model, several LoRA adapters, batched greedy generation. See the module docstring."""

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
    ) -> None:
        import torch
        from transformers.utils import logging as hf_logging

        from tunewise import device
        from tunewise.models import load_model, load_tokenizer

        if batch_size < 1 or max_loaded_adapters < 1:
            raise UserError("batch_size and max_loaded_adapters must be at least 1")
        self.ref = ref
        self.batch_size = batch_size
        self.max_loaded_adapters = max_loaded_adapters
        self.cache = cache
        self.tokenizer = load_tokenizer(ref, trust_remote_code=trust_remote_code)
        hf_logging.disable_progress_bar()
        # Device, dtype, 4-bit and attention from the one policy (tunewise.device): a GPU gets
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
        self._peft: Any = None  # PeftModel wrapping _base once the first adapter is loaded
        self._device = next(base.parameters()).device
        self._lock = threading.Lock()  # one forward step at a time
        self._tok_lock = threading.Lock()  # fast tokenizers are not safe to call from two threads
        self._registered: dict[str, _Adapter] = {}
        self._loaded: OrderedDict[str, _Adapter] = OrderedDict()  # LRU order, most recent last
        self._pins: dict[str, int] = {}
        self._slots = 0
        self._active: str | None = None  # slot active in the PEFT model; None = adapters disabled
        self._adapters_enabled = True

        gen_eos = base.generation_config.eos_token_id
        eos = set(
            gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else []
        )
        if self.tokenizer.eos_token_id is not None:
            eos.add(self.tokenizer.eos_token_id)
        self.eos_ids: frozenset[int] = frozenset(int(e) for e in eos)
        self.pad_id = int(
            self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(eos)
        )
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
        self.end_of_turn = self._find_end_of_turn()
        self._torch = torch

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_run(cls, run_dir: Path, **kwargs: Any) -> Engine:
        """An Engine on a full fine-tune's own checkpoint (``RUN/model/``)."""
        from tunewise.models import resolve

        model_dir = Path(run_dir) / "model"
        if not (model_dir / "config.json").is_file():
            raise UserError(f"{run_dir}: not a full fine-tune run (no model/config.json)")
        return cls(resolve(str(model_dir)), **kwargs)

    @property
    def model(self) -> Any:
        """The module that runs: the PEFT wrapper once adapters exist, else the base model."""
        return self._peft if self._peft is not None else self._base

    def _find_end_of_turn(self) -> str:
        # The text a chat template closes an assistant turn with (ChatML: "<|im_end|>"), found by
        # rendering a turn with a marker answer; used to score "label + end of turn".
        marker = "TUNEWISEMARKER"
        try:
            full = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": "x"}, {"role": "assistant", "content": marker}],
                tokenize=False,
            )
            tail = full[full.rindex(marker) + len(marker) :].rstrip()
        except Exception:  # a template that rejects a lone turn: fall back to EOS
            tail = ""
        return tail or (self.tokenizer.eos_token or "")

    # ------------------------------------------------------------------ adapters
    def load_adapter(self, name: str, path: Path, *, base_hash: str | None = None) -> None:
        """Load the PEFT adapter in ``path`` under ``name`` (replacing a different one of that name).

        Refuses (UserError) an adapter whose training run recorded a different base model weight
        hash: ``base_hash`` when given (the registry knows it), else ``path/run.json``.
        """
        path = Path(path)
        if not (path / ADAPTER_CONFIG).is_file():
            raise UserError(f"{path}: not a LoRA adapter directory (no {ADAPTER_CONFIG})")
        weights = path / ADAPTER_WEIGHTS
        if not weights.is_file():
            raise UserError(f"{path}: no {ADAPTER_WEIGHTS} (only safetensors adapters are loaded)")
        expected = base_hash or adapter_base_hash(path)
        if expected is None:
            warnings.warn(
                f"{path}: no run.json with a base weight hash; cannot verify the base model",
                stacklevel=2,
            )
        elif expected != self.ref.weight_hash:
            raise UserError(
                f"adapter '{name}' ({path}) was trained on base {expected[:12]}, but the loaded base "
                f"'{self.ref.name}' is {self.ref.weight_hash[:12]}: refusing to mix them"
            )
        digest = sha256_file(weights)
        with self._lock:
            old = self._registered.get(name)
            if old is not None and old.sha256 == digest and old.path == path:
                self._touch(old)
                return
            if old is not None:
                self._drop(name)
            self._slots += 1
            entry = _Adapter(name=name, path=path, sha256=digest, slot=f"tw{self._slots}")
            self._registered[name] = entry
            try:
                self._ensure_loaded(entry)
            except Exception:
                self._registered.pop(name, None)
                raise

    def unload_adapter(self, name: str) -> None:
        """Forget an adapter entirely (memory and registration)."""
        with self._lock:
            if name not in self._registered:
                raise UserError(f"unknown adapter '{name}'")
            self._drop(name)

    def adapters(self) -> list[str]:
        """Names of every registered adapter (loaded now or reloadable on demand)."""
        return list(self._registered)

    def loaded_adapters(self) -> list[str]:
        """Adapters resident in memory, least recently used first."""
        return list(self._loaded)

    def adapter_hash(self, name: str | None) -> str:
        if name is None:
            return ""
        return self._get(name).sha256

    def _get(self, name: str) -> _Adapter:
        entry = self._registered.get(name)
        if entry is None:
            raise UserError(
                f"unknown adapter '{name}'; loaded: {', '.join(self._registered) or 'none'}"
            )
        return entry

    def _touch(self, entry: _Adapter) -> None:
        if entry.name in self._loaded:
            self._loaded.move_to_end(entry.name)

    def _drop(self, name: str) -> None:
        # caller holds self._lock
        entry = self._registered.pop(name)
        if name in self._loaded:
            self._evict(entry)

    def _evict(self, entry: _Adapter) -> None:
        del self._loaded[entry.name]
        if self._active == entry.slot:
            self._active = None
        self._peft.delete_adapter(entry.slot)

    def _ensure_loaded(self, entry: _Adapter) -> None:
        # caller holds self._lock
        if entry.name in self._loaded:
            self._loaded.move_to_end(entry.name)
            return
        while len(self._loaded) >= self.max_loaded_adapters:
            victim = next((a for a in self._loaded.values() if not self._pins.get(a.name)), None)
            if victim is None:  # everything resident is in use right now: exceed the bound briefly
                break
            self._evict(victim)
        try:
            if self._peft is None:
                from peft import PeftModel

                self._peft = PeftModel.from_pretrained(
                    self._base, str(entry.path), adapter_name=entry.slot
                )
                self._peft.eval()
            else:
                self._peft.load_adapter(str(entry.path), adapter_name=entry.slot)
        except (ValueError, KeyError, RuntimeError, OSError) as exc:
            raise UserError(
                f"adapter '{entry.name}' ({entry.path}) does not fit base '{self.ref.name}': {exc}"
            ) from exc
        self._active = None  # PEFT may have switched the active adapter while loading
        self._loaded[entry.name] = entry

    @contextmanager
    def _pinned(self, name: str | None) -> Iterator[None]:
        """Keep ``name`` resident (LRU never evicts it) while a generation uses it."""
        if name is None:
            yield
            return
        with self._lock:
            entry = self._get(name)
            self._pins[name] = self._pins.get(name, 0) + 1
            try:
                self._ensure_loaded(entry)
            except BaseException:
                self._pins[name] -= 1
                raise
        try:
            yield
        finally:
            with self._lock:
                self._pins[name] -= 1
                if not self._pins[name]:
                    del self._pins[name]

    def _activate(self, name: str | None) -> None:
        # caller holds self._lock
        if self._peft is None:
            if name is not None:
                raise UserError(f"unknown adapter '{name}'")
            return
        if name is None:
            if self._adapters_enabled:
                self._peft.base_model.disable_adapter_layers()
                self._adapters_enabled = False
            return
        entry = self._registered.get(name)
        if entry is None:
            raise UserError(f"adapter '{name}' was unloaded while in use")
        self._ensure_loaded(entry)
        if self._active != entry.slot:
            self._peft.set_adapter(entry.slot, inference_mode=True)
            self._active = entry.slot
        if not self._adapters_enabled:
            self._peft.base_model.enable_adapter_layers()
            self._adapters_enabled = True

    # ------------------------------------------------------------------ prompts
    def render(self, messages: list[dict[str, str]]) -> str:
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
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    def encode(self, texts: list[str]) -> list[list[int]]:
        with self._tok_lock:
            return [
                list(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]
            ]

    def decode(self, ids: list[int]) -> str:
        with self._tok_lock:
            return self.tokenizer.decode(ids, skip_special_tokens=True)

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        """How many tokens the rendered prompt takes (the server checks this against the context)."""
        return len(self.encode([self.render(messages)])[0])

    def max_new_tokens_for(self, answers: Sequence[str], *, margin: int = 8) -> int:
        """See :func:`max_new_tokens_for`; capped so that generation fits the context."""
        return max_new_tokens_for(
            self.tokenizer, answers, margin=margin, cap=max(1, self.context_length // 2)
        )

    # ------------------------------------------------------------------ generation
    def _params(self, req: GenRequest) -> dict[str, Any]:
        return {
            "decoding": "greedy",
            "max_new_tokens": int(req.max_new_tokens),
            "stop": list(req.stop),
        }

    def generate(self, requests: list[GenRequest], *, progress: bool = False) -> list[GenResult]:
        """Greedy completions for ``requests``, in request order (see the module docstring)."""
        if not requests:
            return []
        for i, r in enumerate(requests):
            if r.max_new_tokens < 1:
                raise UserError(f"request {i}: max_new_tokens must be at least 1")
            if r.adapter is not None:
                self._get(r.adapter)
        prompts = [self.render(r.messages) for r in requests]
        results: list[GenResult | None] = [None] * len(requests)
        keys: list[str] = []
        if self.cache is not None:
            from tunewise.cache import GenCache

            keys = [
                GenCache.key(self.model_key, self.adapter_hash(r.adapter), p, self._params(r))
                for r, p in zip(requests, prompts, strict=True)
            ]
            for i, hit in self.cache.get_many(keys).items():
                results[i] = GenResult(**hit, cached=True)
        todo = [i for i, r in enumerate(results) if r is None]
        if todo:
            ids = self.encode([prompts[i] for i in todo])
            rows = {
                i: Row(prompt=t, max_new=requests[i].max_new_tokens, stops=list(requests[i].stop))
                for i, t in zip(todo, ids, strict=True)
            }
            for i, row in rows.items():
                if len(row.prompt) + row.max_new > self.context_length:
                    raise PromptTooLongError(
                        f"request {i}: prompt of {len(row.prompt)} tokens + max_new_tokens {row.max_new} "
                        f"exceeds the context of {self.context_length} tokens"
                    )
            groups: dict[str | None, list[int]] = {}
            for i in todo:
                groups.setdefault(requests[i].adapter, []).append(i)
            batches: list[tuple[str | None, list[int]]] = []
            for adapter, idx in groups.items():
                # Longest first: the slowest batch starts while the progress bar is honest, and
                # neighbours in length share a batch so padding stays small.
                idx.sort(key=lambda i: (-len(rows[i].prompt), -rows[i].max_new))
                batches += [
                    (adapter, idx[s : s + self.batch_size])
                    for s in range(0, len(idx), self.batch_size)
                ]
            with _progress(progress, len(todo), "generating") as advance:
                for adapter, idx in batches:
                    batch_rows = [rows[i] for i in idx]
                    with self._pinned(adapter):
                        for _ in self._decode(adapter, batch_rows, track_text=False):
                            pass
                    fresh = {}
                    for i, row in zip(idx, batch_rows, strict=True):
                        results[i] = self._result(row)
                        if keys:
                            fresh[keys[i]] = _as_dict(results[i])
                    if fresh and self.cache is not None:
                        self.cache.put_many(fresh)
                    advance(len(idx))
        return [r for r in results if r is not None]

    def stream(self, request: GenRequest) -> Iterator[str]:
        """Text deltas of one greedy completion, for SSE. Stop strings are never emitted."""
        if request.max_new_tokens < 1:
            raise UserError("max_new_tokens must be at least 1")
        ids = self.encode([self.render(request.messages)])[0]
        if len(ids) + request.max_new_tokens > self.context_length:
            raise PromptTooLongError(
                f"prompt of {len(ids)} tokens + max_new_tokens {request.max_new_tokens} exceeds the "
                f"context of {self.context_length} tokens"
            )
        row = Row(prompt=ids, max_new=request.max_new_tokens, stops=list(request.stop))
        sent = 0
        with self._pinned(request.adapter):
            for _ in self._decode(request.adapter, [row], track_text=True):
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
        final = self._result(row).text
        if len(final) > sent:
            yield final[sent:]

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
    ) -> torch.Tensor:
        """One model call with ``adapter`` active, under the lock (see :mod:`tunewise.decoding`)."""
        kwargs: dict[str, Any] = {self._cache_kw: kv, "use_cache": True}
        if last_only and self._logits_to_keep:
            kwargs["logits_to_keep"] = 1  # the LM head over the vocabulary is costly: one row
        with self._lock, self._torch.inference_mode():
            self._activate(adapter)
            out = self.model(
                input_ids=input_ids.to(self._device),
                attention_mask=attention_mask.to(self._device),
                position_ids=position_ids.to(self._device),
                **kwargs,
            )
        return out.logits[:, -1, :] if last_only else out.logits

    def _decode(self, adapter: str | None, rows: list[Row], *, track_text: bool) -> Iterator[None]:
        return decoding.greedy_decode(
            partial(self._forward, adapter),
            self._base.config,
            rows,
            eos_ids=self.eos_ids,
            pad_id=self.pad_id,
            decode=self.decode,
            track_text=track_text,
        )

    # ------------------------------------------------------------------ constrained labels
    def score_continuations(
        self,
        messages: list[dict[str, str]],
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
            self._get(adapter)
        prompt = self.render(messages)
        key = None
        if self.cache is not None:
            from tunewise.cache import GenCache

            params = {
                "kind": "logprob",
                "continuations": list(continuations),
                "eot": self.end_of_turn if end_of_turn else "",
            }
            key = GenCache.key(self.model_key, self.adapter_hash(adapter), prompt, params)
            hit = self.cache.get_scores(key)
            if hit is not None:
                return hit
        prompt_ids = self.encode([prompt])[0]
        suffix = self.end_of_turn if end_of_turn else ""
        cont_ids = self.encode([c + suffix for c in continuations])
        if any(not c for c in cont_ids):
            raise UserError("score_continuations: an empty continuation has no tokens to score")
        if len(prompt_ids) + max(len(c) for c in cont_ids) > self.context_length:
            raise PromptTooLongError(
                f"prompt of {len(prompt_ids)} tokens + a label exceeds the context"
            )
        with self._pinned(adapter):
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


def engine_for_run(
    run_dir: Path, engine: Engine | None = None, *, name: str | None = None, **kwargs: Any
) -> tuple[Engine, str | None]:
    """The engine and adapter name that run a training run's output.

    A LoRA/QLoRA run is loaded as an adapter on ``engine`` (or on a new engine for the run's base);
    a full fine-tune gets an Engine of its own. Returns ``(engine, adapter_name_or_None)``.
    """
    run_dir = Path(run_dir)
    if (run_dir / ADAPTER_CONFIG).is_file():
        if engine is None:
            from tunewise.models import resolve

            run = (
                json.loads((run_dir / "run.json").read_text())
                if (run_dir / "run.json").is_file()
                else {}
            )
            base = (run.get("base_model") or {}).get("path") or (run.get("base_model") or {}).get(
                "name"
            )
            engine = Engine(resolve(base), **kwargs)
        adapter = name or run_dir.name
        engine.load_adapter(adapter, run_dir)
        return engine, adapter
    if (run_dir / "model" / "config.json").is_file():
        return Engine.from_run(run_dir, **kwargs), None
    raise UserError(f"{run_dir}: neither a LoRA adapter nor a full fine-tune run directory")


def _as_dict(r: GenResult | None) -> dict[str, Any]:
    assert r is not None
    return {
        "text": r.text,
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "finish_reason": r.finish_reason,
    }


@contextmanager
def _progress(enabled: bool, total: int, label: str) -> Iterator[Any]:
    from tunewise.progress import Bar

    with Bar(label, total, enabled=enabled) as bar:
        yield bar.advance


def text_hash(text: str) -> str:
    """The prompt hash used in cache keys (sha256 of the rendered prompt text)."""
    return sha256_text(text)
