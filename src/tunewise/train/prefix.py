"""Shared-prefix training: a batch's common token prefix runs once, not once per row.

Every row of a tunewise batch starts with the same tokens: the project's system prompt, rendered
by the chat template, then the opening of the user turn. On the demo that is 134 of the ~199
tokens of an example. The plain path pushes those tokens through the model once per row; here
they run once per batch:

1. **prefix pass**: the prefix ``ids[0, :P]`` runs at batch 1 and every layer's keys and values
   are kept (:class:`_PrefixCapture`);
2. **suffix pass**: the rows' own tokens ``ids[:, P:]`` run with position ids ``P, P+1, ...``, an
   attention mask over prefix plus suffix, and a cache that holds the prefix's keys and values
   *expanded* to the batch, a view, never a copy (:class:`_SharedPrefixLayer`);
3. the loss is computed at the labelled positions only, exactly as :func:`~tunewise.train.loss.
   answer_loss` does on the plain path.

Autograd sees the expand: the gradient reaching the prefix's keys and values is the sum over the
rows, which is the gradient the plain path accumulates over its B copies of the prefix. So the
loss and every gradient equal the plain path's (``tests/test_train_prefix.py``) with one
difference by design: LoRA dropout draws **one** mask for the prefix, shared by every row, where
the plain path draws one per row. With ``lora_dropout: 0`` the two paths are the same function.

The prefix ``P`` of a batch is the longest run of tokens every row has in common, cut so that
each row keeps at least one token and no labelled token (nor the position predicting it) falls
inside it. A batch whose prefix is shorter than :data:`MIN_PREFIX_TOKENS` runs the plain path.

Gradient checkpointing: transformers drops the cache from a checkpointed layer's inputs, since a
replay would write it twice. Both caches here are replay-safe (the capture keeps the first write,
the shared layer never writes), so they declare ``_can_checkpoint_with_cache`` on the layers
for the duration of the two passes. Reentrant checkpointing cannot carry the prefix's keys and
values into a checkpointed layer's gradient, so it turns the feature off.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from tunewise.train.loss import (
    IGNORE,
    answer_loss,
    forward_params,
    labelled_positions,
    reduce_loss,
    supports_sparse_logits,
)

if TYPE_CHECKING:
    from tunewise.train.collate import Encoded

# A prefix pass is one more forward call per batch: a fixed cost (a launch per layer on a GPU,
# Python per layer everywhere). 16 tokens keeps it away from batches that share only the chat
# template's opening (3-5 tokens); a conservative bar, not a measured break-even.
MIN_PREFIX_TOKENS = 16
# `auto` turns the feature on when an epoch would push at least this fraction fewer tokens
# through the model: below it, the changed batch order and dropout masks buy little.
MIN_SAVED_FRACTION = 0.10


# --- the two passes -------------------------------------------------------------------------------


def _cache_layers() -> tuple[type, type]:
    """The two cache layer classes (built on first use: transformers loads lazily)."""
    global _CACHE_LAYERS
    if _CACHE_LAYERS is not None:
        return _CACHE_LAYERS
    # lazy: torch and transformers, ~2 s; the dry-run estimate imports this module without them
    import torch
    from transformers.cache_utils import DynamicLayer

    class _PrefixCapture(DynamicLayer):
        """Keeps the prefix pass's keys and values; a checkpoint replay finds them kept."""

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> Any:
            if not self.is_initialized:  # the replay recomputes the same tensors: keep the first
                self.device = key_states.device
                self.keys, self.values = key_states, value_states
                self.is_initialized = True
            return key_states, value_states  # the cache was empty: attend to these alone

    class _SharedPrefixLayer(DynamicLayer):
        """Read-only: the prefix's (1, heads, P, dim) keys and values expanded to ``rows``."""

        def __init__(self, keys: Any, values: Any, rows: int) -> None:
            super().__init__()
            self.device = keys.device
            self.keys = keys.expand(rows, -1, -1, -1)  # a view: the prefix is stored once
            self.values = values.expand(rows, -1, -1, -1)
            self.is_initialized = True

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> Any:
            # Never stored, so a checkpoint replay computes exactly what the first pass did.
            return (
                torch.cat([self.keys, key_states], dim=-2),
                torch.cat([self.values, value_states], dim=-2),
            )

    _CACHE_LAYERS = (_PrefixCapture, _SharedPrefixLayer)
    return _CACHE_LAYERS


_CACHE_LAYERS: tuple[type, type] | None = None


def _unwrap(model: Any) -> Any:
    """The module under a DistributedDataParallel wrapper (a PeftModel stays a PeftModel)."""
    from torch.nn.parallel import DistributedDataParallel  # lazy: torch, as in _cache_layers

    while isinstance(model, DistributedDataParallel):
        model = model.module
    return model


def _decoder_config(model: Any) -> Any:
    config = _unwrap(model).config
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


@contextmanager
def _cache_kept_under_checkpointing(model: Any) -> Iterator[None]:
    """Let checkpointed decoder layers keep the (replay-safe) cache for the two passes."""
    from transformers.modeling_layers import GradientCheckpointingLayer  # lazy: pulls torch

    layers = [
        m
        for m in model.modules()
        if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing
    ]
    for m in layers:
        m._can_checkpoint_with_cache = True
    try:
        yield
    finally:
        for m in layers:
            m.__dict__.pop("_can_checkpoint_with_cache", None)


def shared_prefix_length(inputs: dict[str, Any]) -> int:
    """Tokens every row of the batch starts with that can run once (0 if none).

    Cut so that every row keeps one token of its own, and before the position that predicts the
    first labelled token: logits are computed in the suffix pass only.
    """
    ids, labels = inputs["input_ids"], inputs["labels"]  # (batch, seq)
    mask = inputs.get("attention_mask")
    same = (ids == ids[:1]).all(dim=0)
    if mask is not None:
        same &= mask.bool().all(dim=0)
    n = int(same.long().cumprod(dim=0).sum())
    shortest = int(mask.sum(dim=1).min()) if mask is not None else ids.shape[1]
    n = min(n, shortest - 1)
    labelled = (labels != IGNORE).any(dim=0).nonzero()
    if labelled.numel() == 0:  # nothing to learn: the plain path keeps a graph for backward
        return 0
    return max(min(n, int(labelled[0, 0]) - 1), 0)


def shared_prefix_loss(
    model: Any, inputs: dict[str, Any], prefix_len: int, num_items_in_batch: Any = None
) -> tuple[Any, Any]:
    """(loss, suffix outputs): :func:`~tunewise.train.loss.answer_loss` with the first
    ``prefix_len`` tokens (the same in every row) run once for the whole batch.

    ``inputs`` is a right-padded batch: ``input_ids``, ``attention_mask``, ``labels`` (batch, seq).
    """
    # lazy: torch and transformers, ~2 s; the dry-run estimate imports this module without them
    import torch
    from transformers.cache_utils import Cache

    capture_cls, shared_cls = _cache_layers()
    ids, labels = inputs["input_ids"], inputs["labels"]
    rows, length = ids.shape
    mask = inputs.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(ids)
    p = prefix_len
    device = ids.device
    # transformers 5 renamed past_key_values to cache (5.24 takes both, 5.17 the old name only)
    cache_kw = "cache" if "cache" in forward_params(model) else "past_key_values"
    n_layers = _decoder_config(model).num_hidden_layers
    capture = Cache(layers=[capture_cls() for _ in range(n_layers)])
    idx = labelled_positions(labels)  # every one >= p: shared_prefix_length cut p before them
    with _cache_kept_under_checkpointing(model):
        # The prefix pass needs no logits; through DDP's inner module so the wrapper sees one
        # forward per step (its gradient hooks sit on the parameters and fire either way).
        _unwrap(model)(
            input_ids=ids[:1, :p],
            attention_mask=mask[:1, :p],
            position_ids=torch.arange(p, device=device)[None, :],
            **{cache_kw: capture},
            use_cache=False,
            logits_to_keep=torch.zeros(0, dtype=torch.long, device=device),
        )
        shared = Cache(
            layers=[shared_cls(layer.keys, layer.values, rows) for layer in capture.layers]
        )
        outputs = model(
            input_ids=ids[:, p:],  # (batch, seq - p)
            attention_mask=mask,  # (batch, seq): prefix plus suffix
            position_ids=torch.arange(p, length, device=device)[None, :],
            **{cache_kw: shared},
            use_cache=False,
            logits_to_keep=idx - p,
        )
    # outputs.logits: (batch, len(idx), vocab), the same positions answer_loss keeps
    return reduce_loss(outputs.logits, labels[:, idx + 1], num_items_in_batch), outputs


# --- which rows share a prefix --------------------------------------------------------------------


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _prefix_cap(item: Encoded) -> int:
    """The longest prefix of this example that may run once: before its first label's logit."""
    first = next((i for i, t in enumerate(item.labels) if t != IGNORE), len(item.labels))
    return max(0, min(first - 1, len(item.input_ids) - 1))


@dataclass(frozen=True)
class PrefixLayout:
    """Which examples share a prefix, and what sharing it saves per epoch."""

    groups: list[int]  # group id per example; -1: shares no long prefix with any other example
    prefixes: list[int]  # tokens shared by each group, by group id
    sizes: list[int]  # examples per group, by group id
    saved_tokens: int  # tokens per epoch the prefix passes do not recompute
    total_tokens: int  # tokens per epoch on the plain path

    @property
    def saved_fraction(self) -> float:
        return self.saved_tokens / self.total_tokens if self.total_tokens else 0.0

    @property
    def main_prefix(self) -> int:
        """Tokens shared by the largest group (0 without groups)."""
        if not self.sizes:
            return 0
        return self.prefixes[max(range(len(self.sizes)), key=self.sizes.__getitem__)]


def prefix_layout(
    items: Sequence[Encoded], batch_size: int, min_tokens: int = MIN_PREFIX_TOKENS
) -> PrefixLayout:
    """Group examples by shared prefix: sort the token sequences; neighbours whose common prefix
    is at least ``min_tokens`` join a group.

    In sorted order the common prefix of two sequences is the minimum over the neighbours
    between them, so a group's shared prefix is the minimum of its neighbour prefixes (and of its
    members' label cuts), and every pair in it shares at least that much.
    """
    order = sorted(range(len(items)), key=lambda i: items[i].input_ids)
    groups = [-1] * len(items)
    prefixes: list[int] = []
    sizes: list[int] = []

    def close(members: list[int], shared: int) -> None:
        if len(members) < 2:
            return
        for i in members:
            groups[i] = len(prefixes)
        prefixes.append(shared)
        sizes.append(len(members))

    members: list[int] = []
    shared = 0
    for i in order:
        cap = _prefix_cap(items[i])
        if members:
            common = min(_common_prefix(items[members[-1]].input_ids, items[i].input_ids), cap)
            if min(shared, common) >= min_tokens:
                members.append(i)
                shared = min(shared, common)
                continue
            close(members, shared)
        members, shared = [i], cap
    close(members, shared)
    per_batch = max(1, batch_size)
    saved = sum(p * (n - -(-n // per_batch)) for p, n in zip(prefixes, sizes, strict=True))
    total = sum(len(e.input_ids) for e in items)
    return PrefixLayout(groups, prefixes, sizes, saved, total)


# --- the run's decision ---------------------------------------------------------------------------


@dataclass
class SharedPrefix:
    """Whether a run shares prefixes, why, and what it did (saved in run.json)."""

    enabled: bool
    reason: str
    warning: str | None = None  # a combination that cannot work turned it off
    layout: PrefixLayout | None = None
    min_tokens: int = MIN_PREFIX_TOKENS
    stats: dict[str, Any] = field(default_factory=dict)
    _checked: bool = False

    def __post_init__(self) -> None:
        self.stats.update(
            enabled=self.enabled,
            reason=self.reason,
            prefix_batches=0,  # training batches whose prefix ran once
            plain_batches=0,  # training batches that shared too little and ran as they are
            tokens_not_recomputed=0,
        )

    @property
    def groups(self) -> list[int] | None:
        """Group id per training example, for the sampler (None when off)."""
        return self.layout.groups if self.enabled and self.layout else None

    def turn_off(self, why: str) -> None:
        self.enabled = False
        self.warning = self.reason = why
        self.stats.update(enabled=False, reason=why)

    def loss(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any) -> Any:
        """(loss, outputs) of a batch: the prefix once when the batch shares enough of one."""
        if self.enabled and not self._checked:
            self._checked = True
            if why := checkpointing_problem(model):
                self.turn_off(why)
                warnings.warn(why, stacklevel=2)
        n = 0
        if self.enabled and set(inputs) <= {"input_ids", "attention_mask", "labels"}:
            rows = inputs["input_ids"].shape[0]
            n = shared_prefix_length(inputs) if rows > 1 else 0
        counted = model.training  # evaluation batches share too, but the counts are training's
        if n < self.min_tokens:
            if counted:
                self.stats["plain_batches"] += 1
            return answer_loss(model, inputs, num_items_in_batch)
        if counted:
            self.stats["prefix_batches"] += 1
            self.stats["tokens_not_recomputed"] += (inputs["input_ids"].shape[0] - 1) * n
        return shared_prefix_loss(model, inputs, n, num_items_in_batch)


def _checkpointing_can_keep_a_cache() -> bool:
    """Whether this transformers lets a layer keep its cache under checkpointing (opt-in flag)."""
    from transformers.modeling_layers import GradientCheckpointingLayer  # lazy: pulls torch

    return hasattr(GradientCheckpointingLayer, "_can_checkpoint_with_cache")


def checkpointing_problem(model: Any) -> str | None:
    """Why ``model``'s gradient checkpointing cannot carry a shared prefix (None: it can)."""
    from transformers.modeling_layers import GradientCheckpointingLayer  # lazy: pulls torch

    on = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
    if not on:
        return None
    layers = [m for m in on if isinstance(m, GradientCheckpointingLayer)]
    if not _checkpointing_can_keep_a_cache():
        return (
            "train.shared_prefix off: this transformers version drops the cache from every "
            "checkpointed layer (newer versions let a read-only cache through)"
        )
    if not layers:
        return (
            "train.shared_prefix off: this model checkpoints its layers in its own loop, which "
            "drops the prefix's keys and values"
        )
    func = getattr(layers[0], "_gradient_checkpointing_func", None)
    if getattr(func, "keywords", {}).get("use_reentrant", True) is not False:
        return (
            "train.shared_prefix off: reentrant gradient checkpointing (use_reentrant=True) does "
            "not backpropagate into the prefix's keys and values"
        )
    return None


def model_problem(model: Any) -> str | None:
    """Why ``model`` cannot share a prefix at all (None: it can)."""
    # lazy: transformers pulls torch (see _cache_layers)
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    if not supports_sparse_logits(model):
        return "its forward takes no logits_to_keep (tunewise's labelled-positions loss)"
    try:
        cache = DynamicCache(config=_unwrap(model).config)
    except Exception as exc:  # an architecture the cache does not know
        return f"no key/value cache for this architecture ({type(exc).__name__})"
    if any(type(layer) is not DynamicLayer for layer in cache.layers):
        return "sliding-window or hybrid attention layers cannot share one prefix cache"
    return None


def resolve(
    mode: Literal["auto", "off"],
    items: Sequence[Encoded],
    batch_size: int,
    model: Any,
) -> SharedPrefix:
    """The run's decision: ``off``; or ``auto``, on when the data shares a prefix that pays and the
    model and launcher allow it (a combination that cannot work turns it off with a warning)."""
    if mode == "off":
        return SharedPrefix(False, "off (train.shared_prefix: off)")
    if batch_size < 2:
        return SharedPrefix(False, "off: batch_size 1, no other row to share a prefix with")
    sharded = (
        os.environ.get("ACCELERATE_USE_FSDP") == "true"
        or os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true"
    )
    if sharded:
        why = (
            "train.shared_prefix off under FSDP/DeepSpeed: its second forward pass per step is "
            "untested with sharded weights"
        )
        return SharedPrefix(False, why, warning=why)
    if why := model_problem(model):
        why = f"train.shared_prefix off: {why}"
        return SharedPrefix(False, why, warning=why)
    layout = prefix_layout(items, batch_size)
    saved = f"{layout.saved_fraction:.0%} fewer tokens through the model per epoch"
    if layout.saved_fraction < MIN_SAVED_FRACTION or layout.main_prefix < MIN_PREFIX_TOKENS:
        return SharedPrefix(
            False,
            f"off (auto): the shared prefix ({layout.main_prefix} tokens) would save only {saved}",
            layout=layout,
        )
    shared_by = sum(layout.sizes)
    return SharedPrefix(
        True,
        f"on (auto): a {layout.main_prefix}-token prefix shared by {shared_by} of {len(items)} "
        f"examples: ~{saved} at batch size {batch_size}",
        layout=layout,
    )
