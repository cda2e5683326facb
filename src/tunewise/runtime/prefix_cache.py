"""Keys and values of prompt prefixes kept from one batch to the next, per adapter.

A server's requests share long prefixes: the chat template's system turn, a system prompt, a
fixed few-shot block, a tool list. Within one batch :func:`tunewise.runtime.decoding.prefill`
already runs a shared prefix once per adapter; this cache keeps those keys and values so the next
batch, or a request alone, starts after the prefix instead of computing it again (vLLM calls this
automatic prefix caching). It matters most when a batch's rows belong to different adapters: a
prefix's keys and values differ per adapter, so within one batch there is nothing to share, but
each adapter's copy is computed once and then reused by every later batch.

An entry is keyed by the group's identity (the engine passes its adapter's digest of weights
and config, so an adapter replaced or re-scaled under the same name never reuses the old one's
keys) and the prefix's token ids.
Entries are kept least recently used first and dropped past ``max_bytes``. Stored tensors are
never written: a cache built on them copies on its first update (see
:func:`tunewise.runtime.decoding.new_cache`).

A prefix computed apart from its suffix is the same math in other matmul shapes, so logits may
differ from a whole-prompt prefill in their last bits: greedy answers stay equal but at a near tie,
while a sampled row draws by walking the logits in sorted order, where near-equal logits swap
places on such a difference. A batch with a sampled row therefore runs without the cache, and a
seeded sample answers the same whatever the cache holds.

Which prefixes are stored: the common prefix of a batch's prompts (at least
:data:`tunewise.runtime.decoding.MIN_SHARED_PREFIX` tokens), and the whole prompt of a request
that runs alone (one client asking in turn has no batch to share within). A later batch, or a
single request, starts after the longest prefix all its prompts share with one stored entry,
all of it or its start (each prompt keeping one token of its own; at least MIN_SHARED_PREFIX
tokens): the keys and values of a prefix do not depend on what follows it, so the start of a
stored prompt serves the next question under the same system prompt, and a conversation's next
turn starts after its earlier turns. Entries its other adapters lack are computed once and
stored. An entry that a new one of the same identity starts with is dropped: the new one serves
it, sliced, and the budget holds one copy.
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

    def longest(self, prompts: Sequence[Sequence[int]], minimum: int = 1) -> tuple[int, ...]:
        """The longest prefix every prompt shares with one stored entry (the whole entry or its
        start), keeping at least one token of each prompt's own; ``()`` when it is shorter than
        ``minimum``."""
        if not prompts:
            return ()
        rows = [tuple(p) for p in prompts]
        limit = min(len(p) for p in rows) - 1
        with self._lock:
            stored = {tokens for _, tokens in self._entries}
        best = 0
        for tokens in stored:
            n = min(len(tokens), limit)
            for row in rows:
                if n <= best:
                    break
                n = shared_len(tokens, row, n)
            best = max(best, n)
        return rows[0][:best] if best >= max(minimum, 1) else ()

    def get(self, key: Hashable, tokens: tuple[int, ...]) -> Layers | None:
        """Keys and values of ``tokens`` for identity ``key``, marked recently used; None if
        absent. Its own entry, or the start of a longer entry of ``key`` (a prefix's keys and
        values do not depend on what follows it: causal attention, positions from 0)."""
        n = len(tokens)
        with self._lock:
            entry = (key, tokens)
            if entry not in self._entries:
                entry = next((e for e in self._entries if _starts(key, tokens, e)), None)
                if entry is None:
                    return None
            self._entries.move_to_end(entry)
            layers = self._entries[entry]
        if len(entry[1]) == n:
            return layers
        return [(k[:, :, :n], v[:, :, :n]) for k, v in layers]

    def put(self, key: Hashable, tokens: tuple[int, ...], layers: Layers) -> None:
        """Store ``layers`` (per layer: keys, values of batch 1) for identity ``key``; an entry
        larger than the whole budget is not stored."""
        size = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)
        if size > self.max_bytes:
            return
        with self._lock:
            entry = (key, tokens)
            # an entry this one starts with is served by slicing this one now: keep one copy
            for old in [e for e in self._entries if e[0] == key and tokens[: len(e[1])] == e[1]]:
                del self._entries[old]
                self.bytes -= self._sizes.pop(old)
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


def shared_len(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    """How many leading tokens ``a`` and ``b`` (both tuples or both lists) share, at most
    ``limit``: slices compare in C, so a binary search beats a Python loop over the tokens."""
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _starts(
    key: Hashable, tokens: tuple[int, ...], entry: tuple[Hashable, tuple[int, ...]]
) -> bool:
    """Whether ``entry`` belongs to ``key`` and is longer than ``tokens``, starting with them."""
    return entry[0] == key and len(entry[1]) > len(tokens) and entry[1][: len(tokens)] == tokens
