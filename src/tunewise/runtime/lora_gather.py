"""A gathered LoRA forward for mixed-adapter batches (PEFT's ``adapter_names=``).

PEFT's ``Linear._mixed_batch_forward`` loops over a batch's adapters in every LoRA layer: per
adapter it gathers that adapter's rows, runs its two small matmuls and adds the result back. With
eight adapters that is dozens of small operations per layer and decode step, and their overhead,
not the arithmetic, sets the step's time.

Here each eligible layer keeps its resident adapters' weights stacked: A as (n, in, r_max) and B
as (n, r_max, out), zero-padded to the largest rank (the zeros add nothing). A mixed forward picks
each row's adapter by an index tensor and computes every row's LoRA term with two batched matmuls,
the Punica/S-LoRA "BGMV" idea in plain torch. Rows of the base (``"__base__"``) and of adapters
that do not target the layer get no term, as in PEFT.

It is installed as an instance attribute ``_mixed_batch_forward`` on each eligible layer. PEFT's
``forward`` calls ``self._mixed_batch_forward``, and an instance attribute shadows the class's
method: PEFT's argument checks, its disabled, merged and single-adapter paths stay as they are,
and the class's method stays at hand as the fallback. No subclass, no patched PEFT class.

Eligible layers, whose mixed path in PEFT 0.21 is ``lora_B(lora_A(dropout(x))) * scaling`` added
to the base layer's output: the plain LoRA ``Linear`` (a ``fan_in_fan_out`` base transposes
inside the base layer, the LoRA term is the same) and bitsandbytes' ``Linear4bit`` and
``Linear8bitLt``. PEFT's own path runs instead, per call, where a row's adapter in the layer is a
LoRA variant (DoRA, aLoRA, ...), has a bias on lora_B (``lora_bias``) or weights of another dtype
or device than the others; when the layer trains (dropout is on); under autocast (bitsandbytes
skips its casts there); and with input casting switched off. Conv and embedding layers keep
PEFT's path.

A layer's stack is one copy of its resident adapters' LoRA weights. It is rebuilt when the layer's
adapters or their weights change: it keeps weak references to the weight tensors it copied and
their version counters (an in-place edit bumps them), so an adapter deleted and loaded again under
the same name never runs on its old weights. :func:`drop` frees a deleted adapter's stacks at once
instead of at the next mixed forward (the adapter pool calls it).
"""

from __future__ import annotations

import functools
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from types import MethodType
from typing import Any

import torch
from peft.tuners.lora import bnb as lora_bnb
from peft.tuners.lora.layer import VARIANT_KWARG_KEYS, Linear

_STATE = "_tw_gather"
_MAX_PLANS = 16  # row layouts kept per layer: decode steps repeat the last few


@dataclass
class _Stack:
    """One layer's resident adapters, stacked (see the module docstring)."""

    names: tuple[str, ...]  # every adapter in the layer, stacked or not
    slots: dict[str, int]  # stacked adapter -> its index in a, b and scale
    # per stacked adapter: A weight (weak), its version, B weight (weak), its version, scaling
    sources: tuple[tuple[str, Any, int, Any, int, float], ...]
    a: torch.Tensor  # (n, in, r_max): A transposed
    b: torch.Tensor  # (n, r_max, out): B transposed
    scale: torch.Tensor  # (n,) float32


@dataclass(frozen=True)
class _Plan:
    """How one list of row adapters runs on one stack."""

    fallback: bool  # a row's adapter is not stacked here: PEFT's path
    rows: torch.Tensor | None = None  # rows with a LoRA term; None: every row
    idx: torch.Tensor | None = None  # their adapters' stack indices; None: no row has a term
    scale: torch.Tensor | None = None  # (rows, 1, 1) float32
    single: int | None = None  # the one stack index every such row uses, if so


_FALLBACK = _Plan(fallback=True)
_NOTHING = _Plan(fallback=False)


@dataclass
class _LayerState:
    stack: _Stack | None = None
    plans: OrderedDict[tuple[str, ...], _Plan] = field(default_factory=OrderedDict)


@functools.cache
def _eligible_types() -> frozenset[type]:
    found: set[type] = {Linear}
    for name in ("Linear8bitLt", "Linear4bit"):  # defined only where bitsandbytes is installed
        cls = getattr(lora_bnb, name, None)
        if cls is not None:
            found.add(cls)
    return frozenset(found)


def install(model: Any) -> int:
    """Give every eligible LoRA layer of ``model`` the gathered mixed forward; the layer count.

    Idempotent: call it after each adapter load (a load may wrap new layers).
    """
    count = 0
    for module in model.modules():
        if type(module) not in _eligible_types():
            continue
        if _STATE not in vars(module):
            setattr(module, _STATE, _LayerState())
            # shadows the class's method, which PEFT's forward calls (module docstring)
            module._mixed_batch_forward = MethodType(_mixed_forward, module)
        count += 1
    return count


def drop(model: Any, slot: str) -> None:
    """Free the stacks that hold adapter ``slot`` (call it after PEFT deleted the adapter)."""
    for module in model.modules():
        state = vars(module).get(_STATE)
        if state is not None and state.stack is not None and slot in state.stack.names:
            state.stack = None
            state.plans.clear()


def stacked_slots(model: Any) -> set[str]:
    """The adapters whose weights some layer of ``model`` holds stacked now."""
    found: set[str] = set()
    for module in model.modules():
        state = vars(module).get(_STATE)
        if state is not None and state.stack is not None:
            found.update(state.stack.slots)
    return found


def gathered_term(
    x: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    idx: torch.Tensor,
    scale: torch.Tensor,
    single: int | None,
) -> torch.Tensor:
    """Each row's LoRA term: ``(x_i @ a[idx_i]) @ b[idx_i] * scale_i``, shaped (rows, ..., out).

    ``single``: every row uses that one stack index, so its weights are used in place rather than
    gathered once per row.
    """
    x3 = x.reshape(x.shape[0], -1, x.shape[-1]).to(a.dtype)
    if single is not None:
        y = torch.matmul(torch.matmul(x3, a[single]), b[single])
    else:
        y = torch.bmm(torch.bmm(x3, a.index_select(0, idx)), b.index_select(0, idx))
    y = (y * scale).to(y.dtype)  # PEFT scales after both matmuls, in the LoRA weights' dtype
    return y.reshape(*x.shape[:-1], y.shape[-1])


def _mixed_forward(
    self: Any, x: torch.Tensor, *args: Any, adapter_names: list[str], **kwargs: Any
) -> torch.Tensor:
    """The layer's mixed-batch forward: the base layer's output plus each row's LoRA term."""
    plan = None
    if (
        not self.training
        and not torch.is_autocast_enabled(x.device.type)
        and vars(self).get("cast_input_dtype_enabled", True)
    ):
        plan = _plan_for(self, adapter_names)
    if plan is None:  # PEFT's own per-adapter path
        peft_forward = type(self)._mixed_batch_forward
        return peft_forward(self, x, *args, adapter_names=adapter_names, **kwargs)
    for key in VARIANT_KWARG_KEYS:  # no variant runs here; the base layer must not get them
        kwargs.pop(key, None)
    result = self.base_layer(x, *args, **kwargs)
    if plan.idx is None:
        return result
    stack = getattr(self, _STATE).stack
    sub = x if plan.rows is None else x.index_select(0, plan.rows)
    term = gathered_term(sub, stack.a, stack.b, plan.idx, plan.scale, plan.single)
    term = term.to(result.dtype)
    # in place, as PEFT's mixed path adds to the base output
    if plan.rows is None:
        return result.add_(term)
    return result.index_add_(0, plan.rows, term)


def _plan_for(module: Any, names: list[str]) -> _Plan | None:
    """The plan for rows ``names`` on the layer's current stack; None: PEFT's path."""
    state: _LayerState = getattr(module, _STATE)
    if state.stack is None or not _is_fresh(module, state.stack):
        state.stack = _build(module)
        state.plans.clear()
    key = tuple(names)
    plan = state.plans.get(key)
    if plan is None:
        plan = _make_plan(state.stack, key)
        state.plans[key] = plan
        if len(state.plans) > _MAX_PLANS:
            state.plans.popitem(last=False)
    return None if plan.fallback else plan


def _is_fresh(module: Any, stack: _Stack) -> bool:
    """Whether ``stack`` still holds exactly the layer's adapters and weights."""
    a_mods, b_mods, scaling = module.lora_A._modules, module.lora_B._modules, module.scaling
    if tuple(a_mods) != stack.names:
        return False
    for slot, a_ref, a_ver, b_ref, b_ver, scale in stack.sources:
        wa = a_mods[slot]._parameters["weight"]
        wb = b_mods[slot]._parameters["weight"]
        if wa is not a_ref() or wb is not b_ref() or scaling[slot] != scale:
            return False
        if wa._version != a_ver or wb._version != b_ver:
            return False
    return True


def _stackable(module: Any) -> list[str]:
    """The layer's adapters whose LoRA term is plain ``B(A(x)) * scaling``, in one dtype and
    device (the first such adapter's)."""
    a_mods, b_mods = module.lora_A._modules, module.lora_B._modules
    plain = [
        s
        for s in a_mods
        if s not in module.lora_variant
        and not module.lora_bias.get(s, False)
        and b_mods[s].bias is None
        and type(module.lora_dropout[s]) in (torch.nn.Identity, torch.nn.Dropout)
    ]
    if not plain:
        return []
    first = a_mods[plain[0]].weight
    return [
        s
        for s in plain
        if all(
            w.dtype == first.dtype and w.device == first.device
            for w in (a_mods[s].weight, b_mods[s].weight)
        )
    ]


@torch.no_grad()
def _build(module: Any) -> _Stack:
    a_mods, b_mods = module.lora_A._modules, module.lora_B._modules
    slots = _stackable(module)
    a_ws = [a_mods[s].weight for s in slots]  # (r, in)
    b_ws = [b_mods[s].weight for s in slots]  # (out, r)
    scales = [float(module.scaling[s]) for s in slots]
    if slots:
        r_max = max(w.shape[0] for w in a_ws)
        a = a_ws[0].new_zeros(len(slots), a_ws[0].shape[1], r_max)
        b = b_ws[0].new_zeros(len(slots), r_max, b_ws[0].shape[0])
        for i, (wa, wb) in enumerate(zip(a_ws, b_ws, strict=True)):
            a[i, :, : wa.shape[0]] = wa.T
            b[i, : wb.shape[1], :] = wb.T
    else:
        a = b = torch.zeros(0)
    sources = tuple(
        (s, weakref.ref(wa), wa._version, weakref.ref(wb), wb._version, module.scaling[s])
        for s, wa, wb in zip(slots, a_ws, b_ws, strict=True)
    )
    return _Stack(
        names=tuple(a_mods),
        slots={s: i for i, s in enumerate(slots)},
        sources=sources,
        a=a,
        b=b,
        scale=torch.tensor(scales, dtype=torch.float32, device=a.device),
    )


def _make_plan(stack: _Stack, names: tuple[str, ...]) -> _Plan:
    rows: list[int] = []
    idx: list[int] = []
    for i, name in enumerate(names):
        if name == "__base__":  # PEFT's name for the bare base, whatever the layer holds
            continue
        j = stack.slots.get(name)
        if j is not None:
            rows.append(i)
            idx.append(j)
        elif name in stack.names:  # the layer has this adapter, but not stacked
            return _FALLBACK
    if not rows:
        return _NOTHING
    device = stack.a.device
    index = torch.tensor(idx, dtype=torch.long, device=device)
    return _Plan(
        fallback=False,
        rows=None if len(rows) == len(names) else torch.tensor(rows, device=device),
        idx=index,
        scale=stack.scale.index_select(0, index).view(-1, 1, 1),
        single=idx[0] if len(set(idx)) == 1 else None,
    )
