"""Causal-LM loss with logits computed only where there are labels.

tunewise trains on the answers: in a classification or extraction example the labelled tokens are
a few percent of the sequence. The stock loss still runs the LM head (for SmolLM2, 576 x 49,152:
a fifth of the model's FLOPs) and an fp32 log-softmax over the whole vocabulary at *every*
position, then throws almost all of it away. Passing ``logits_to_keep`` as a 1-D index tensor
(transformers 5) makes the model apply the head only at the positions that predict a labelled
token in some row of the batch; the loss over those positions is the same number, because every
other position contributes zero to it. Measured in ``bench/train_throughput.py``.
"""

from __future__ import annotations

import inspect
from typing import Any

IGNORE = -100


def forward_params(model: Any) -> set[str]:
    """Parameter names of the (unwrapped) model's own forward, below DDP/FSDP and PEFT."""
    inner = model
    # DDP/FSDP wrappers expose .module; a PeftModel exposes .get_base_model().
    while hasattr(inner, "module"):
        inner = inner.module
    if hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    try:
        return set(inspect.signature(inner.forward).parameters)
    except (TypeError, ValueError):
        return set()


def supports_sparse_logits(model: Any) -> bool:
    """Whether the (unwrapped) model's forward accepts ``logits_to_keep``."""
    return "logits_to_keep" in forward_params(model)


def labelled_positions(labels: Any) -> Any:
    """Sequence positions (1-D, sorted) whose *next* token is labelled in at least one row."""
    import torch  # lazy: torch, ~1 s; the dry-run estimate imports train.prefix without it

    keep = (labels[:, 1:] != IGNORE).any(dim=0)  # position p predicts token p + 1
    idx = keep.nonzero().squeeze(-1)
    if idx.numel() == 0:  # a batch with nothing to learn still needs a graph for backward
        idx = torch.zeros(1, dtype=torch.long, device=labels.device)
    return idx


def answer_loss(
    model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None
) -> tuple[Any, Any]:
    """(loss, outputs) with logits only at :func:`labelled_positions`.

    The reduction matches transformers' ``ForCausalLMLoss``: a sum divided by
    ``num_items_in_batch`` when the Trainer passes it (exact under gradient accumulation), else
    the mean over labelled tokens.
    """
    labels = inputs["labels"]
    idx = labelled_positions(labels)
    model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    outputs = model(**model_inputs, logits_to_keep=idx)
    # outputs.logits: (batch, len(idx), vocab); labels[:, idx + 1]: (batch, len(idx))
    return reduce_loss(outputs.logits, labels[:, idx + 1], num_items_in_batch), outputs


def reduce_loss(logits: Any, targets: Any, num_items_in_batch: Any = None) -> Any:
    """Cross-entropy of ``logits`` (batch, n, vocab) against ``targets`` (batch, n), reduced the way
    transformers' ``ForCausalLMLoss`` reduces it (see :func:`answer_loss`)."""
    # lazy: torch, ~1 s; the dry-run estimate imports train.prefix without it
    import torch
    import torch.nn.functional as F

    total = F.cross_entropy(
        logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="sum"
    )
    if num_items_in_batch is not None:
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(total.device)
        return total / num_items_in_batch
    count = (targets != IGNORE).sum().clamp(min=1)
    return total / count
