"""Chat examples -> token ids with assistant-only labels, and a length-aware padding collator.

The model's own chat template renders every example, exactly as inference renders it. Labels are
found by *rendering*, not by guessing token ids: for each assistant turn ``i`` the template renders
``messages[:i]`` with the generation prompt (what the model sees at inference) and
``messages[:i+1]`` (the answer appended); the difference is the answer. The label span is the
answer up to and including the end-of-turn token (``<|im_end|>`` for ChatML), so the model learns
to stop. Text after it (ChatML's trailing newline) is not something the model ever generates, so
it is not a label.

Padding never decides what is masked: SmolLM2's pad id equals its EOS id, so masking by pad id
would hide every EOS label and the model would never learn to stop. Labels are masked by position.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch.utils.data import Dataset, Sampler

from tunewise.data.schema import Example
from tunewise.errors import DataError, UserError
from tunewise.runtime import chat

IGNORE_INDEX = -100  # the label value torch's cross-entropy ignores


@dataclass
class Encoded:
    """One tokenized example: ``input_ids`` and ``labels`` have the same length."""

    input_ids: list[int]
    labels: list[int]
    line: int = 0
    source: str = ""

    @property
    def n_label_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


@dataclass
class OverlongReport:
    """What happened to examples longer than ``max_len`` (shown to the user before training)."""

    max_len: int
    policy: str
    total: int = 0
    overlong: list[tuple[str, int, int]] = field(default_factory=list)  # (source, line, n_tokens)
    dropped: int = 0
    truncated: int = 0

    @property
    def kept(self) -> int:
        return self.total - self.dropped

    def summary(self) -> str:
        if not self.overlong:
            return f"all {self.total} examples fit in max_len={self.max_len}"
        longest = max(n for _, _, n in self.overlong)
        first = ", ".join(f"{s}:{line} ({n} tokens)" for s, line, n in self.overlong[:3])
        more = f" and {len(self.overlong) - 3} more" if len(self.overlong) > 3 else ""
        what = {"drop": f"dropped {self.dropped}", "truncate": f"truncated {self.truncated}"}.get(
            self.policy, ""
        )
        if self.policy == "truncate" and self.dropped:
            what += f", dropped {self.dropped} with no answer token left"
        return (
            f"{len(self.overlong)} of {self.total} examples exceed max_len={self.max_len} "
            f"(longest {longest} tokens): {first}{more}; overlong={self.policy}: {what}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_len": self.max_len,
            "policy": self.policy,
            "total": self.total,
            "overlong": len(self.overlong),
            "dropped": self.dropped,
            "truncated": self.truncated,
            "examples": [{"source": s, "line": ln, "tokens": n} for s, ln, n in self.overlong[:20]],
        }


def _render(
    tokenizer: Any, messages: list[dict[str, str]], *, generation_prompt: bool, allow: bool
) -> str:
    return chat.render(
        tokenizer, messages, generation_prompt=generation_prompt, allow_special_tokens=allow
    )


def segments(
    tokenizer: Any,
    messages: list[dict[str, str]],
    train_on: Literal["all", "last"] = "all",
    *,
    allow_special_tokens: bool = False,
    label_from: int = 0,
) -> list[tuple[str, bool]]:
    """Split the rendered conversation into ``(text, is_label)`` pieces, in order.

    Assistant turns before message ``label_from`` are never labels: they are retrieved context
    (few-shot answers of other examples, :mod:`tunewise.baselines.context`), part of the prompt.

    Concatenating the texts gives the template's rendering of ``messages`` up to the end of the
    last answer's end-of-turn token. Control tokens inside contents come out marked as text
    (:func:`tunewise.runtime.chat.render`) unless ``allow_special_tokens``.
    """
    eot = chat.end_of_turn(tokenizer)  # not EOS: Phi-3 ends a turn with <|end|>, EOS is later
    assistant_idx = [
        i for i, m in enumerate(messages) if m["role"] == "assistant" and i >= label_from
    ]
    if not assistant_idx:
        raise UserError("an example has no assistant turn")
    labelled = set(assistant_idx if train_on == "all" else assistant_idx[-1:])
    out: list[tuple[str, bool]] = []
    done = ""  # text already emitted, always a prefix of every later rendering
    # train_on=last renders only the last turn: its prompt is then one piece, tokenized exactly
    # as inference tokenizes it, and a template that rewrites history (Qwen3 drops past
    # reasoning) still trains.
    for i in sorted(labelled):
        prompt = _render(
            tokenizer, messages[:i], generation_prompt=True, allow=allow_special_tokens
        )
        full = _render(
            tokenizer, messages[: i + 1], generation_prompt=False, allow=allow_special_tokens
        )
        if not prompt.startswith(done) or not full.startswith(prompt):
            # A template that rewrites earlier turns (e.g. drops past reasoning) cannot be
            # trained turn by turn with a prompt identical to inference; refuse, never guess.
            raise UserError(
                "the chat template does not render conversations incrementally "
                "(a prefix changes when a turn is appended); use train.train_on=last"
                if train_on == "all"
                else "the chat template does not render the generation prompt as a prefix of the "
                "answer"
            )
        answer = full[len(prompt) :]
        cut = answer.rfind(eot) if eot else -1
        end = cut + len(eot) if cut >= 0 else len(answer.rstrip())
        out.append((prompt[len(done) :], False))
        out.append((answer[:end], i in labelled))
        done = prompt + answer[:end]
    return [(t, lab) for t, lab in out if t]


def encode(
    tokenizer: Any,
    example: Example,
    train_on: Literal["all", "last"] = "all",
    *,
    allow_special_tokens: bool = False,
    label_from: int = 0,
) -> Encoded:
    """Token ids and position-masked labels for one conversation.

    Each piece is tokenized on its own, so the prompt of the last turn tokenizes exactly as
    ``apply_chat_template(prompt, add_generation_prompt=True)`` does at inference.
    """
    ids: list[int] = []
    labels: list[int] = []
    pieces = segments(
        tokenizer,
        example.messages,
        train_on,
        allow_special_tokens=allow_special_tokens,
        label_from=label_from,
    )
    encoded = chat.encode(tokenizer, [text for text, _ in pieces])
    for (_text, is_label), piece in zip(pieces, encoded, strict=True):
        ids.extend(piece)
        labels.extend(piece if is_label else [IGNORE_INDEX] * len(piece))
    return Encoded(ids, labels, line=example.line, source=example.source)


def encode_all(
    tokenizer: Any,
    examples: Sequence[Example],
    *,
    max_len: int,
    overlong: Literal["drop", "truncate", "error"] = "drop",
    train_on: Literal["all", "last"] = "all",
    allow_special_tokens: bool = False,
    label_from: Sequence[int] | None = None,
) -> tuple[list[Encoded], OverlongReport]:
    """Encode every example and apply the overlong policy; the report says what was done.

    ``label_from``: per example, the first message that may be a label (see :func:`segments`).
    """
    report = OverlongReport(max_len=max_len, policy=overlong, total=len(examples))
    out: list[Encoded] = []
    starts = list(label_from) if label_from is not None else [0] * len(examples)
    for ex, start in zip(examples, starts, strict=True):
        try:
            enc = encode(
                tokenizer,
                ex,
                train_on,
                allow_special_tokens=allow_special_tokens,
                label_from=start,
            )
        except DataError:
            raise
        except UserError as exc:  # the template refused this example: say which one
            raise DataError(ex.source, ex.line or None, "messages", str(exc)) from None
        n = len(enc.input_ids)
        if n <= max_len:
            out.append(enc)
            continue
        report.overlong.append((ex.source, ex.line, n))
        if overlong == "error":
            continue
        if overlong == "drop":
            report.dropped += 1
            continue
        # truncate: keep the first max_len tokens (the prompt and as much answer as fits)
        enc = Encoded(enc.input_ids[:max_len], enc.labels[:max_len], enc.line, enc.source)
        if enc.n_label_tokens == 0:
            report.dropped += 1
            continue
        report.truncated += 1
        out.append(enc)
    if overlong == "error" and report.overlong:
        source, line, n = report.overlong[0]
        more = f" (and {len(report.overlong) - 1} more)" if len(report.overlong) > 1 else ""
        raise DataError(
            source,
            line or None,
            "messages",
            f"{n} tokens exceed data.max_len={max_len}{more}; raise data.max_len or set "
            "train.overlong=drop|truncate",
        )
    return out, report


class EncodedDataset(Dataset):
    """A list of encoded examples as the dicts HF ``Trainer`` feeds to the collator."""

    def __init__(self, items: Sequence[Encoded]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        e = self.items[i]
        return {"input_ids": e.input_ids, "labels": e.labels}

    @property
    def lengths(self) -> list[int]:
        return [len(e.input_ids) for e in self.items]

    @property
    def n_tokens(self) -> int:
        return sum(self.lengths)


@dataclass
class ChatCollator:
    """Pad a batch to its own longest example (not to max_len), right side.

    ``pad_to_multiple_of`` rounds the length up for tensor-core friendly shapes on GPUs. Padding
    positions get ``attention_mask`` 0 and label ``IGNORE_INDEX``; the pad id itself is irrelevant.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            longest = int(math.ceil(longest / self.pad_to_multiple_of) * self.pad_to_multiple_of)
        batch = len(features)
        input_ids = torch.full(
            (batch, longest), self.pad_token_id, dtype=torch.long
        )  # (batch, seq)
        labels = torch.full((batch, longest), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((batch, longest), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            input_ids[row, :n] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            labels[row, :n] = torch.as_tensor(f["labels"], dtype=torch.long)
            attention[row, :n] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


class LengthGroupedSampler(Sampler[int]):
    """Shuffle, then sort within mega-batches of ``group`` batches so a batch holds similar lengths.

    With ``groups`` (a prefix group id per example, -1 for none: :mod:`tunewise.train.prefix`),
    batches are formed inside each group, so a batch's rows share their group's prefix and, sorted
    by length within it, have suffixes of similar length; each group's last incomplete batch
    joins a pool of leftovers that is batched the same way.

    The order is a pure function of ``(seed, epoch)``: a resumed run replays exactly the order of
    an uninterrupted one (the Trainer calls :meth:`set_epoch` at every epoch), independent of
    whatever consumed the global RNG before. Batches are shuffled after grouping so training does
    not see lengths in a monotone order. The DataLoader cuts the index stream into batches of
    ``batch_size``: the one incomplete batch goes last so every batch before it stays as formed.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        seed: int = 0,
        group: int = 50,
        by_length: bool = True,
        groups: Sequence[int] | None = None,
    ) -> None:
        self.lengths = list(lengths)
        self.batch_size = max(1, batch_size)
        self.seed = seed
        self.group = group
        self.by_length = by_length
        self.groups = list(groups) if groups is not None else None
        if self.groups is not None and len(self.groups) != len(self.lengths):
            raise ValueError("groups: one group id per example")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def _pools(self, idx: list[int]) -> list[list[int]]:
        """``idx`` split into lists whose batches never mix prefix groups (the last: leftovers)."""
        if self.groups is None:
            return [idx]
        by_group: dict[int, list[int]] = {}
        for i in idx:
            by_group.setdefault(self.groups[i], []).append(i)
        rest = by_group.pop(-1, [])
        pools = []
        for members in by_group.values():
            cut = len(members) - len(members) % self.batch_size
            pools.append(members[:cut])
            rest += members[cut:]
        return [*pools, rest]

    def _batches(self, pool: list[int]) -> list[list[int]]:
        bs = self.batch_size
        if not self.by_length:
            return [pool[b : b + bs] for b in range(0, len(pool), bs)]
        mega = bs * self.group
        out: list[list[int]] = []
        for start in range(0, len(pool), mega):
            chunk = sorted(pool[start : start + mega], key=lambda i: -self.lengths[i])
            out.extend(chunk[b : b + bs] for b in range(0, len(chunk), bs))
        return out

    def __iter__(self) -> Iterator[int]:
        rng = random.Random(self.seed * 100_003 + self.epoch)
        idx = list(range(len(self.lengths)))
        rng.shuffle(idx)
        if not self.by_length and self.groups is None:
            return iter(idx)
        batches = [b for pool in self._pools(idx) for b in self._batches(pool) if b]
        full = [b for b in batches if len(b) == self.batch_size]
        partial = [b for b in batches if len(b) < self.batch_size]
        rng.shuffle(full)
        if full and self.by_length:
            # The longest batch goes first so an out-of-memory error shows up at step 1, not
            # hours in.
            longest = max(range(len(full)), key=lambda b: max(self.lengths[i] for i in full[b]))
            full.insert(0, full.pop(longest))
        # At most one short batch: every pool but the leftovers holds whole batches.
        return iter([i for b in [*full, *partial] for i in b])
