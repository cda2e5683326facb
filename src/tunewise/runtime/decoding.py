"""The batched decode loop (greedy, or sampled per row) and continuation scoring, over any
causal LM forward.

Kept apart from :mod:`tunewise.runtime.engine` (which owns models, adapters, caching and threads)
so the
tensor bookkeeping reads in one place. ``forward(input_ids, attention_mask, position_ids, kv,
last_only)`` runs the model (with the right adapter, under the engine's lock) and returns logits:
``(b, vocab)`` for the last position when ``last_only``, else ``(b, seq, vocab)``. When a row
has a ``group`` it also gets ``groups`` (see below); a forward for group-less rows never does.

Batch layout, per row: ``[shared prefix P][left padding][own suffix][generated ...]``.

* Prompts that share a token prefix (a system prompt, a fixed few-shot block) prefill it once with
  batch 1; its keys and values are expanded to every row. On 2 CPU cores prefill dominates short
  answers, so this is most of the speed-up.
* Rows may belong to different *groups* (``Row.group``: the engine puts each row's LoRA adapter
  there): then every forward gets ``groups=[...]``, one per row of that call, and runs each row
  with its own weights. A shared prefix is then computed once per group, not once per batch: an
  adapter gives the same tokens other keys and values (directly on k/v projections, and through
  the hidden states in every layer above any LoRA layer).
* Position ids count real tokens only (``cumsum(mask) - 1``), the attention mask hides padding, so
  each row computes what it would compute alone: greedy outputs equal one-at-a-time
  ``model.generate`` token for token.
* A row that reaches EOS, a stop string or its ``max_new`` leaves the batch (its KV rows are
  dropped), so finished rows stop costing compute.
* A row may carry a :class:`RowConstraint` (a tool-call grammar, :mod:`tunewise.runtime.grammar`):
  before each token is chosen, the logits of the tokens it forbids become ``-inf`` in that row
  only. A batch without constrained rows runs exactly the unconstrained loop; in a mixed batch the
  other rows' logits pass through unchanged, so their answers stay what they are alone.
* A row may carry a :class:`Sampler` (temperature > 0): its token is drawn from
  softmax(logits / T) cut to the ``top_p`` nucleus, after its constraint masked the logits, with
  one uniform draw per step from the row's own generator. The draw depends on nothing but the
  row's logits and seed, so a seeded row answers the same alone or in any batch; rows without a
  sampler take the argmax as before (a batch without samplers runs exactly the greedy loop).
* One row may prefill its prompt in chunks (``prefill_chunk``, :func:`prefill_chunks`), one
  forward and one yield per chunk, so a caller can pause between any two forwards (the shadow
  challenger gives way to production). Same math, other matmul shapes: its logits may differ
  from a one-shot prefill's in the last bits; a prompt no longer than the chunk runs the
  one-shot path exactly.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Hashable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from tunewise.runtime.prefix_cache import shared_len

if TYPE_CHECKING:  # torch is imported where tensors are made: `tunewise --help` stays fast
    import torch

    from tunewise.runtime.prefix_cache import Layers, PrefixCache

Forward = Callable[..., "torch.Tensor"]
Pick = Callable[["torch.Tensor"], "torch.Tensor"]  # (b, vocab) logits -> (b,) chosen token ids


class RowConstraint(Protocol):
    """A per-row decoding constraint (see :mod:`tunewise.runtime.grammar`)."""

    def allowed(self, gen: list[int]) -> torch.Tensor | None:
        """Bool mask over the tokenizer's vocabulary of the tokens that may follow ``gen`` (the
        tokens generated so far), or None where the row is unconstrained at this step."""
        ...


MIN_SHARED_PREFIX = 8  # below this, a separate prefix pass costs more than it saves


class Sampler:
    """How one row draws its tokens: temperature (> 0), nucleus mass ``top_p``, and a generator
    of its own, seeded by ``seed`` (reproducible) or by ``os.urandom`` (None)."""

    def __init__(self, temperature: float, top_p: float = 1.0, seed: int | None = None) -> None:
        import torch  # lazy: torch, ~1 s; imported where tensors are made

        self.temperature, self.top_p = float(temperature), float(top_p)
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little")
        # A CPU generator: the same seed draws the same numbers on any device. manual_seed
        # takes 64 bits; a negative seed (OpenAI's is any integer) wraps.
        self.generator = torch.Generator().manual_seed(seed % 2**64)

    def uniform(self) -> float:
        """The next draw in [0, 1), one per generated token."""
        import torch  # lazy: torch, ~1 s; imported where tensors are made

        return float(torch.rand((), generator=self.generator, dtype=torch.float64))


@dataclass
class Row:
    """One sequence being generated; :func:`greedy_decode` mutates it in place."""

    prompt: list[int]
    max_new: int
    stops: list[str]
    gen: list[int] = field(default_factory=list)
    text: str = ""  # decoded so far, kept current only when stop strings or streaming need it
    finish: str | None = None  # "stop" | "length" once done
    constraint: RowConstraint | None = None  # None: free generation
    group: Hashable = None  # whose weights run this row (the engine's adapter; None: the base)
    sampler: Sampler | None = None  # None: greedy


def first_stop(text: str, stops: list[str]) -> int | None:
    """Character offset of the earliest stop string in ``text``, or None."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else None


def stop_overlap(text: str, stop: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``stop``.

    A stream must hold those characters back: they may still turn into the stop string.
    """
    for k in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:k]):
            return k
    return 0


def new_cache(
    config: Any, prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None, rows: int = 1
) -> Any:
    """An empty DynamicCache, or one holding ``prefix`` (per-layer keys, values) for ``rows``."""
    from transformers import DynamicCache  # lazy: transformers pulls torch

    if prefix is None:
        return DynamicCache(config=config)
    # expand() is a view; the cache copies it on its first update, so the prefix is never written.
    data = [(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in prefix]
    return DynamicCache(data, config=config)


def shareable(kv: Any) -> bool:
    """Whether keys and values can be copied between caches (plain layers, no sliding window)."""
    from transformers.cache_utils import DynamicLayer  # lazy: transformers pulls torch

    return all(type(layer) is DynamicLayer for layer in kv.layers)


def _common_prefix(prompts: list[list[int]]) -> int:
    if len(prompts) < 2:
        return 0
    first, n = prompts[0], min(len(p) for p in prompts) - 1  # each row keeps >= 1 own token
    for p in prompts[1:]:
        n = shared_len(first, p, n)
    return n


def _groups_kw(groups: list[Hashable] | None) -> dict[str, Any]:
    """The ``groups`` keyword of a forward call: only for rows that have groups."""
    return {} if groups is None else {"groups": groups}


def _run_prefix(
    forward: Forward, config: Any, prefix: list[int], kinds: list[Hashable] | None
) -> Layers:
    """Keys and values of ``prefix`` run once per group of ``kinds`` (None: one row, no groups):
    per layer, (len(kinds) or 1, heads, P, dim)."""
    import torch  # lazy: torch, ~1 s; imported where tensors are made

    n, k = len(prefix), 1 if kinds is None else len(kinds)
    ids = torch.tensor([prefix] * k)  # (k, P)
    kv = new_cache(config)
    forward(
        ids, torch.ones_like(ids), torch.arange(n)[None, :].expand(k, -1), kv, **_groups_kw(kinds)
    )
    return [(layer.keys, layer.values) for layer in kv.layers]


def _per_kind(layers: Layers, kinds: list[Hashable]) -> dict[Hashable, Layers]:
    """:func:`_run_prefix`'s layers split into one batch-1 copy per group."""
    if len(kinds) == 1:
        return {kinds[0]: layers}
    # a slice would keep the whole batch's tensors alive (in the prefix cache): copy each
    return {
        g: [(k[j : j + 1].clone(), v[j : j + 1].clone()) for k, v in layers]
        for j, g in enumerate(kinds)
    }


def _for_rows(
    config: Any, per_kind: dict[Hashable, Layers], groups: list[Hashable] | None, b: int
) -> Any:
    """A cache for ``b`` rows, each holding its group's prefix (one group: expanded views)."""
    import torch  # lazy: torch, ~1 s; imported where tensors are made

    if len(per_kind) == 1:
        return new_cache(config, next(iter(per_kind.values())), b)
    per_row = [per_kind[g] for g in groups or []]
    layers = [
        (torch.cat([r[i][0] for r in per_row]), torch.cat([r[i][1] for r in per_row]))
        for i in range(len(per_row[0]))
    ]
    return new_cache(config, layers, b)


def _prefill_prefix(
    forward: Forward, config: Any, prefix: list[int], groups: list[Hashable] | None, b: int
) -> Any:
    """A cache holding ``prefix`` for ``b`` rows, computed once per distinct group.

    Without groups (or with one) the prefix runs with batch 1 and its keys and values are
    expanded to every row. With several, it runs once per group (batch = the number of groups)
    and each row takes its own group's copy: what the row would compute alone.
    """
    kinds = [None] if groups is None else list(dict.fromkeys(groups))  # distinct, first seen first
    layers = _run_prefix(forward, config, prefix, None if groups is None else kinds)
    return _for_rows(config, _per_kind(layers, kinds), groups, b)


def _cached_prefix(
    forward: Forward,
    config: Any,
    prompts: list[list[int]],
    groups: list[Hashable] | None,
    shared: int,
    cache: PrefixCache,
) -> tuple[Any, int]:
    """A cache holding a prefix of every prompt, from ``cache`` where it has one, and the
    prefix's length (0 and no cache: run the prompts whole). See :mod:`.prefix_cache`.

    Two candidates: the longest stored prefix T every prompt starts with, and the batch's own
    common prefix of ``shared`` tokens. The batch's own (run once per group, then stored) wins
    when it saves at least as many prefill tokens as T does, ``(b - k) * shared >= (b - m) *
    |T|`` with b rows, k groups and m groups that lack T, or when it runs a whole
    ``MIN_SHARED_PREFIX`` past T: a block every prompt repeats after the stored one (few-shot
    examples after a system prompt) is worth storing even if this batch alone does not pay for
    it. With nothing stored the batch's own always wins, so a batch of one row per adapter still
    runs its prefix apart, at no extra cost, to store it.
    """
    b = len(prompts)
    kinds = [None] if groups is None else list(dict.fromkeys(groups))
    keys = {g: cache.identity(g) for g in kinds}
    stored = cache.longest(prompts, minimum=MIN_SHARED_PREFIX)
    found = {g: cache.get(keys[g], stored) for g in kinds} if stored else {}
    lacking = sum(1 for g in kinds if found.get(g) is None)
    longer = shared >= len(stored) + MIN_SHARED_PREFIX
    if shared >= MIN_SHARED_PREFIX and (
        longer or (b - len(kinds)) * shared >= (b - lacking) * len(stored)
    ):
        tokens, found = tuple(prompts[0][:shared]), {}
    elif stored:
        tokens = stored
    else:
        return None, 0
    missing = [g for g in kinds if found.get(g) is None]
    if missing:
        layers = _run_prefix(forward, config, list(tokens), None if groups is None else missing)
        for g, own in _per_kind(layers, missing).items():
            found[g] = own
            cache.put(keys[g], tokens, own)
    cache.count(hits=sum(1 for g in (groups or [None]) if g not in missing), misses=len(missing))
    return _for_rows(config, found, groups, b), len(tokens)


def prefill(
    forward: Forward,
    config: Any,
    prompts: list[list[int]],
    pad_id: int,
    *,
    groups: list[Hashable] | None = None,
    prefix_cache: PrefixCache | None = None,
) -> tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor]:
    """Run the prompts: (last logits (b, vocab), cache, attention mask (b, kv), last pos (b,)).

    ``groups`` (one per prompt, or None) is passed on to every forward, see the module docstring.
    ``prefix_cache`` keeps shared prefixes' keys and values across calls
    (:mod:`tunewise.runtime.prefix_cache`).
    """
    import torch  # lazy: torch, ~1 s; imported where tensors are made

    b = len(prompts)
    kv = new_cache(config)
    shared = _common_prefix(prompts)
    distinct = 1 if groups is None else len(set(groups))
    can_share = shareable(kv)
    if not can_share:
        shared = 0
    elif prefix_cache is not None:
        filled, shared = _cached_prefix(forward, config, prompts, groups, shared, prefix_cache)
        kv = filled if filled is not None else kv
    elif shared >= MIN_SHARED_PREFIX and distinct < b:
        # A prefix pass per group pays off only while groups are fewer than rows.
        kv = _prefill_prefix(forward, config, prompts[0][:shared], groups, b)
    else:
        shared = 0
    prefix_mask = torch.ones((b, shared), dtype=torch.long)
    suffixes = [p[shared:] for p in prompts]
    width = max(len(s) for s in suffixes)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)  # (b, S), left padded
    mask = torch.zeros((b, width), dtype=torch.long)
    for r, s in enumerate(suffixes):
        input_ids[r, width - len(s) :] = torch.tensor(s)
        mask[r, width - len(s) :] = 1
    positions = (shared + mask.cumsum(-1) - 1).clamp(min=0)
    full_mask = torch.cat([prefix_mask, mask], dim=1)  # (b, P + S)
    logits = forward(input_ids, full_mask, positions, kv, **_groups_kw(groups))
    if prefix_cache is not None and b == 1 and can_share:
        # A request alone has nobody to share with now, but the next one may: the same system
        # prompt, or this conversation a turn later. Its whole prompt is stored (no padding in
        # a batch of one), and PrefixCache serves the start of it to a prompt that goes elsewhere.
        key = prefix_cache.identity(None if groups is None else groups[0])
        prefix_cache.put(key, tuple(prompts[0]), [(lay.keys, lay.values) for lay in kv.layers])
    return logits, kv, full_mask, positions[:, -1]


Prefilled = tuple["torch.Tensor", Any, "torch.Tensor", "torch.Tensor"]  # what prefill returns


def prefill_chunks(
    forward: Forward,
    config: Any,
    prompt: list[int],
    chunk: int,
    *,
    groups: list[Hashable] | None = None,
) -> Generator[None, None, Prefilled]:
    """One row's prompt run ``chunk`` tokens per forward, yielding after every forward but the
    last (whose logits choose the first token); returns what :func:`prefill` returns.

    Each chunk extends the cache: its positions continue the previous chunk's and its attention
    mask covers every token so far (one row: nothing to pad). The same math as one forward over
    the whole prompt, in other matmul shapes, so logits may differ in their last bits.
    """
    import torch  # lazy: torch, ~1 s; imported where tensors are made

    if chunk < 1:
        raise ValueError(f"prefill_chunk must be at least 1, not {chunk}")
    n = len(prompt)
    kv = new_cache(config)
    for start in range(0, n, chunk):
        end = min(start + chunk, n)
        ids = torch.tensor([prompt[start:end]])  # (1, c)
        mask = torch.ones((1, end), dtype=torch.long)  # (1, tokens so far)
        positions = torch.arange(start, end)[None, :]
        logits = forward(ids, mask, positions, kv, **_groups_kw(groups))
        if end < n:
            yield
    return logits, kv, mask, positions[:, -1]


def _prefill_rows(
    forward: Forward,
    config: Any,
    rows: list[Row],
    pad_id: int,
    groups: list[Hashable] | None,
    chunk: int | None,
    prefix_cache: PrefixCache | None = None,
) -> Generator[None, None, Prefilled]:
    """:func:`prefill` in one forward (``chunk`` None, or no prompt longer than it: exactly the
    batched path), else one row's :func:`prefill_chunks`."""
    prompts = [r.prompt for r in rows]
    if chunk is None or max(len(p) for p in prompts) <= chunk:
        return prefill(forward, config, prompts, pad_id, groups=groups, prefix_cache=prefix_cache)
    if len(rows) != 1:
        raise ValueError("a chunked prefill runs one row")
    return (yield from prefill_chunks(forward, config, prompts[0], chunk, groups=groups))


def greedy_decode(
    forward: Forward,
    config: Any,
    rows: list[Row],
    *,
    eos_ids: frozenset[int],
    pad_id: int,
    decode: Callable[[list[int]], str],
    track_text: bool = False,
    pick: Pick | None = None,
    prefill_chunk: int | None = None,
    prefix_cache: PrefixCache | None = None,
) -> Iterator[None]:
    """Decode ``rows`` together, yielding after every step (a stream reads ``row.text``): the
    argmax, or a draw for a row with a :class:`Sampler`.

    ``pick`` chooses each step's tokens from the logits instead (every row's, overriding the
    rows' samplers); rows' constraints have masked those logits already, so a sampler respects
    them as greedy does.

    ``prefill_chunk`` (one row only) prefills a longer prompt that many tokens per forward
    (:func:`prefill_chunks`), yielding after each chunk too: then every yield follows exactly
    one forward, and the one after the last chunk carries the first token.

    ``prefix_cache``: shared prefixes' keys and values kept across calls, for the one-forward
    prefill of a batch without sampled rows (:mod:`tunewise.runtime.prefix_cache`).
    """
    import torch  # lazy: torch, ~1 s; imported where tensors are made

    grouped = any(r.group is not None for r in rows)
    groups = [r.group for r in rows] if grouped else None
    if any(r.sampler is not None for r in rows):
        # A draw walks the logits in sorted order, and near-equal logits swap places on a
        # last-bit difference (a prefix computed in another forward): a seeded sample must see
        # the same bits whatever the cache holds, so its batch runs without it.
        prefix_cache = None
    logits, kv, mask, last_pos = yield from _prefill_rows(
        forward, config, rows, pad_id, groups, prefill_chunk, prefix_cache
    )
    active = list(range(len(rows)))  # rows still in the batch, in batch order
    constrained = any(r.constraint is not None for r in rows)
    sampled = pick is None and any(r.sampler is not None for r in rows)
    while True:
        if constrained:
            logits = apply_constraints(logits, [rows[i] for i in active])
        if sampled:
            next_tok = sample(logits, [rows[i].sampler for i in active]).cpu()  # (b,)
        else:
            next_tok = (logits.argmax(-1) if pick is None else pick(logits)).cpu()  # (b,)
        keep: list[int] = []
        for j, r_idx in enumerate(active):
            row = rows[r_idx]
            tok = int(next_tok[j])
            row.gen.append(tok)
            if tok in eos_ids:
                row.finish = "stop"
            elif row.stops or track_text:
                row.text = decode(row.gen)
                if row.stops and first_stop(row.text, row.stops) is not None:
                    row.finish = "stop"
            if row.finish is None and len(row.gen) >= row.max_new:
                row.finish = "length"
            if row.finish is None:
                keep.append(j)
        yield
        if not keep:
            return
        if len(keep) < len(active):
            sel = torch.tensor(keep)
            kv.batch_select_indices(sel.to(logits.device))
            mask, last_pos, next_tok = mask[sel], last_pos[sel], next_tok[sel]
            active = [active[j] for j in keep]
        mask = torch.cat([mask, torch.ones((len(active), 1), dtype=mask.dtype)], dim=1)
        last_pos = last_pos + 1
        groups = [rows[i].group for i in active] if grouped else None
        logits = forward(next_tok[:, None], mask, last_pos[:, None], kv, **_groups_kw(groups))


def sample(logits: torch.Tensor, samplers: list[Sampler | None]) -> torch.Tensor:
    """(b,) token ids: the argmax for a row without a sampler, else a draw from its nucleus.

    Sampled rows go together: scale by 1/T, sort (stable: ties in the order argmax sees them),
    keep the most likely tokens until ``top_p`` of the mass is covered (the first always, so a
    tiny ``top_p`` is greedy), then invert the kept mass's running sum at the row's uniform.
    Tokens a constraint forbids (-inf) have no mass and are never drawn.
    """
    import torch  # lazy: torch, ~1 s; imported where tensors are made

    out = logits.argmax(-1)  # (b,)
    drawn = [j for j, s in enumerate(samplers) if s is not None]
    if not drawn:
        return out
    live = [s for s in samplers if s is not None]
    dev = logits.device
    sel = torch.tensor(drawn, device=dev)
    temp = torch.tensor([s.temperature for s in live], device=dev)[:, None]  # (k, 1)
    top_p = torch.tensor([s.top_p for s in live], device=dev)[:, None]
    scores, order = (logits.index_select(0, sel).float() / temp).sort(
        dim=-1, descending=True, stable=True
    )
    probs = scores.softmax(-1)  # (k, vocab), most likely first
    before = probs.cumsum(-1) - probs  # the mass ranked above each token
    keep = ((before < top_p) | (top_p >= 1.0)) & (probs > 0)  # a prefix of each sorted row
    keep[:, 0] = True
    mass = probs.masked_fill(~keep, 0.0).cumsum(-1)  # (k, vocab)
    u = torch.tensor([s.uniform() for s in live], device=dev)[:, None] * mass[:, -1:]
    at = torch.searchsorted(mass, u, right=True)  # the first token whose running mass passes u
    # u rounded up to the whole mass would land past the kept tokens: the last kept one instead
    at = torch.minimum(at, keep.sum(-1, keepdim=True) - 1)
    tok = order.gather(-1, at)[:, 0]
    # A row with every token forbidden has no mass to draw from: keep its argmax.
    tok = torch.where(torch.isfinite(scores[:, 0]), tok, out.index_select(0, sel))
    return out.index_copy(0, sel, tok)


def apply_constraints(logits: torch.Tensor, rows: list[Row]) -> torch.Tensor:
    """``logits`` (b, vocab) with every token a row's constraint forbids at ``-inf``; rows without
    a constraint (or free at this step) are untouched. Out of place: the logits come from
    inference mode."""
    import torch  # lazy: torch, ~1 s; imported where tensors are made

    masks = {}
    for j, row in enumerate(rows):
        if row.constraint is not None:
            m = row.constraint.allowed(row.gen)
            if m is not None:
                masks[j] = m
    if not masks:
        return logits
    # One numpy matrix, one torch op: small torch ops each wake the thread pool, which costs
    # more than the work on a busy CPU. Columns past the tokenizer's vocabulary (padded
    # embeddings) stay forbidden for a constrained row.
    allow = np.ones(tuple(logits.shape), dtype=bool)
    for j, m in masks.items():
        n = min(allow.shape[1], len(m))
        allow[j, :n] = m[:n].numpy()
        allow[j, n:] = False
    keep = torch.from_numpy(allow).to(logits.device)
    return torch.where(keep, logits, float("-inf"))


def score_continuations(
    forward: Forward,
    config: Any,
    prompt: list[int],
    continuations: list[list[int]],
    *,
    pad_id: int,
    chunk: int = 16,
) -> list[float]:
    """Sum of token log-probs of each continuation after ``prompt``.

    The prompt runs once; its keys and values are shared by every continuation (right padded,
    ``chunk`` at a time), so scoring 150 labels costs one prompt plus 150 short suffixes.
    """
    import torch  # lazy: torch, ~1 s; imported where tensors are made

    n = len(prompt)
    kv = new_cache(config)
    ids = torch.tensor([prompt])  # (1, n)
    first = forward(ids, torch.ones_like(ids), torch.arange(n)[None, :], kv)
    first_lp = torch.log_softmax(first.float(), dim=-1)[0].cpu()  # (vocab,): predicts token 0
    prefix = [(layer.keys, layer.values) for layer in kv.layers] if shareable(kv) else None
    scores: list[float] = []
    for s in range(0, len(continuations), chunk):
        part = continuations[s : s + chunk]
        b, width = len(part), max(len(c) for c in part)
        inp = torch.full((b, width), pad_id, dtype=torch.long)  # (b, W), right padded
        cmask = torch.zeros((b, width), dtype=torch.long)
        for r, c in enumerate(part):
            inp[r, : len(c)] = torch.tensor(c)
            cmask[r, : len(c)] = 1
        full_mask = torch.cat([torch.ones((b, n), dtype=torch.long), cmask], dim=1)
        if prefix is not None:
            positions = n + torch.arange(width)[None, :].expand(b, -1)
            logits = forward(
                inp, full_mask, positions, new_cache(config, prefix, b), last_only=False
            )
            lp = torch.log_softmax(logits[:, :-1].float(), dim=-1).cpu()  # predicts tokens 1..W-1
            rest = lp.gather(-1, inp[:, 1:, None])[..., 0]
            step_lp = torch.cat([first_lp[inp[:, 0]][:, None], rest], dim=1)  # (b, W)
        else:  # sliding-window caches cannot be shared: run prompt + continuation together
            full = torch.cat([ids.expand(b, -1), inp], dim=1)
            positions = torch.arange(n + width)[None, :].expand(b, -1)
            logits = forward(full, full_mask, positions, new_cache(config), last_only=False)[
                :, n - 1 : -1
            ]
            lp = torch.log_softmax(logits.float(), dim=-1).cpu()
            step_lp = lp.gather(-1, inp[..., None])[..., 0]
        scores += [float(x) for x in (step_lp * cmask).sum(-1)]
    return scores
