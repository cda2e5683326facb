"""Keys and values of prompt prefixes kept from one batch to the next, per adapter.

A server's requests share long prefixes: the chat template's system turn, a system prompt, a
fixed few-shot block, a tool list. Within one batch :func:`tunewise.runtime.decoding.prefill`
already runs a shared prefix once per adapter; this cache keeps those keys and values so the next
batch, or a request alone, starts after the prefix instead of computing it again (vLLM calls this
automatic prefix caching). It matters most when a batch's rows belong to different adapters: a
prefix's keys and values differ per adapter, so within one batch there is nothing to share, but
each adapter's copy is computed once and then reused by every later batch.

An entry is keyed by the group's identity (the engine passes its adapter's digest of weights and config,
so an adapter replaced or re-scaled under the same name never reuses the old one's keys) and the prefix's token ids.
Entries are kept least recently used first and dropped past ``max_bytes``. Stored tensors are
never written: a cache built on them copies on its first update (see
:func:`tunewise.runtime.decoding.new_cache`).

A prefix computed apart from its suffix is the same math in other matmul shapes, so logits may
differ from a whole-prompt prefill in their last bits: greedy answers stay equal but at a near tie,
while a sampled row draws by walking the logits in sorted order, where near-equal logits swap
places on such a difference. A batch with a sampled row therefore runs without the cache, and a
seeded sample answers the same whatever the cache holds.

Which prefixes are stored: the common prefix of a batch's prompts (at least
:data:`tunewise.runtime.decoding.MIN_SHARED_PREFIX` tokens). A later batch, or a single request,
uses the longest stored prefix that all its prompts start with (each keeping one token of its
own), computing the entries its other adapters lack.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where tensors are made: `tunewise --help` stays fast
    import torch

Layers = list[tuple["torch.Tensor", "torch.Tensor"]]  # per layer: keys, values (1, heads, P, dim)


class PrefixCache:
    """Per-group keys and values of prompt prefixes, bounded by ``max_bytes`` (LRU)."""

    def __init__(
        self, max_bytes: int, identity: Callable[[Hashable], Hashable] | None = None
    ) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be at least 0, not {max_bytes}")
        self.max_bytes = max_bytes
        # a group (the engine's adapter name) -> what its keys depend on (weights and config)
        self._identity = identity or (lambda group: group)
        self._entries: OrderedDict[tuple[Hashable, tuple[int, ...]], Layers] = OrderedDict()
        self._sizes: dict[tuple[Hashable, tuple[int, ...]], int] = {}
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = 0  # rows that started after a stored prefix
        self.misses = 0  # prefix copies computed (one per group and prefix)

    def identity(self, group: Hashable) -> Hashable:
        return self._identity(group)

    def longest(self, prompts: Sequence[Sequence[int]]) -> tuple[int, ...]:
        """The longest stored prefix every prompt starts with, keeping at least one token of its
        own; ``()`` when none."""
        if not prompts:
            return ()
        limit = min(len(p) for p in prompts) - 1
        with self._lock:
            stored = {tokens for _, tokens in self._entries}
        best: tuple[int, ...] = ()
        for tokens in stored:
            n = len(tokens)
            if len(best) < n <= limit and all(tuple(p[:n]) == tokens for p in prompts):
                best = tokens
        return best

    def get(self, key: Hashable, tokens: tuple[int, ...]) -> Layers | None:
        """The entry of identity ``key`` for ``tokens``, marked recently used; None if absent."""
        with self._lock:
            found = self._entries.get((key, tokens))
            if found is not None:
                self._entries.move_to_end((key, tokens))
            return found

    def put(self, key: Hashable, tokens: tuple[int, ...], layers: Layers) -> None:
        """Store ``layers`` (per layer: keys, values of batch 1) for identity ``key``; an entry
        larger than the whole budget is not stored."""
        size = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)
        if size > self.max_bytes:
            return
        with self._lock:
            entry = (key, tokens)
            if entry in self._entries:
                self.bytes -= self._sizes.pop(entry)
            self._entries[entry] = layers
            self._entries.move_to_end(entry)
            self._sizes[entry] = size
            self.bytes += size
            while self.bytes > self.max_bytes:
                old, _ = self._entries.popitem(last=False)
                self.bytes -= self._sizes.pop(old)

    def count(self, *, hits: int, misses: int) -> None:
        """Add to the counters (rows that reused a stored prefix, prefix copies computed)."""
        with self._lock:
            self.hits += hits
            self.misses += misses

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._sizes.clear()
            self.bytes = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
