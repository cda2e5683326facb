"""Shared pieces of the training benchmarks (train_throughput.py, clinc_learning.py).

CLINC150 -> chat JSONL, the one validation-loss function every run is scored with, batched greedy
generation, and a peak-RSS helper. Kept apart from the library on purpose: the benchmarks judge
the library, so they do not reuse its collator or its engine to score it.
"""

from __future__ import annotations

import json
import random
import resource
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CLINC = REPO.parent / "shared" / "datasets" / "clinc150" / "data_full.json"
DEMO = REPO / "examples" / "ticket-triage" / "data" / "tickets.jsonl"
IGNORE = -100


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def clinc_intents(path: Path, n_intents: int, seed: int = 0) -> list[str]:
    """A seeded sample of ``n_intents`` of CLINC150's 150 intents, sorted for a stable prompt."""
    data = json.loads(Path(path).read_text())
    all_intents = sorted({intent for _, intent in data["train"]})
    return sorted(random.Random(seed).sample(all_intents, n_intents))


def system_prompt(intents: Sequence[str]) -> str:
    return (
        "Classify the user's message into exactly one intent. Answer with the intent name only.\n"
        "Intents: " + ", ".join(intents)
    )


def clinc_chat(
    path: Path, split: str, intents: Sequence[str], per_intent: int | None = None, seed: int = 0
) -> list[dict[str, Any]]:
    """CLINC150 rows of ``split`` for ``intents`` as chat records, shuffled with ``seed``."""
    data = json.loads(Path(path).read_text())
    wanted = set(intents)
    by_intent: dict[str, list[str]] = {i: [] for i in intents}
    for text, intent in data[split]:
        if intent in wanted:
            by_intent[intent].append(text)
    sys_msg = system_prompt(intents)
    rows = []
    for intent in intents:
        texts = by_intent[intent][:per_intent] if per_intent else by_intent[intent]
        for text in texts:
            rows.append(
                {
                    "messages": [
                        {"role": "system", "content": sys_msg},
                        {"role": "user", "content": text},
                        {"role": "assistant", "content": intent},
                    ],
                    "label": intent,
                }
            )
    random.Random(seed).shuffle(rows)
    return rows


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def template_tokens(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    """Tokens in the chat-template rendering of a conversation (the 'trained tokens' unit)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False).rstrip("\n")
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _answer_encoding(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[list[int], int]:
    """Ids of the whole conversation and where the final answer starts (mask by position)."""
    prompt = tokenizer.apply_chat_template(
        messages[:-1], tokenize=False, add_generation_prompt=True
    )
    full = tokenizer.apply_chat_template(messages, tokenize=False).rstrip("\n")
    assert full.startswith(prompt), "chat template is not prefix-stable"
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    a_ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
    return p_ids + a_ids, len(p_ids)


def answer_loss(
    model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]], batch_size: int = 16
) -> float:
    """Mean cross-entropy over the final assistant turn's tokens (answer + end-of-turn), all rows.

    One definition for every run in a benchmark, whatever each trainer optimised.
    """
    import torch

    encoded = [_answer_encoding(tokenizer, r["messages"]) for r in rows]
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start : start + batch_size]
            longest = max(len(ids) for ids, _ in chunk)
            ids = torch.full(
                (len(chunk), longest), tokenizer.pad_token_id, dtype=torch.long
            )  # (batch, seq)
            labels = torch.full((len(chunk), longest), IGNORE, dtype=torch.long)
            mask = torch.zeros((len(chunk), longest), dtype=torch.long)
            for row, (seq, answer_start) in enumerate(chunk):
                ids[row, : len(seq)] = torch.tensor(seq)
                labels[row, answer_start : len(seq)] = torch.tensor(seq[answer_start:])
                mask[row, : len(seq)] = 1
            logits = model(input_ids=ids, attention_mask=mask).logits.float()  # (batch, seq, vocab)
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)),
                labels[:, 1:].reshape(-1),
                ignore_index=IGNORE,
                reduction="sum",
            )
            total += float(loss)
            count += int((labels[:, 1:] != IGNORE).sum())
    return total / max(count, 1)


def greedy_answers(
    model: Any,
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    max_new_tokens: int = 16,
    batch_size: int = 16,
) -> list[str]:
    """Greedy completions of each row's prompt (all turns but the last), left-padded batches."""
    import torch

    model.eval()
    out: list[str] = []
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            prompts = [
                tokenizer.apply_chat_template(
                    r["messages"][:-1], tokenize=False, add_generation_prompt=True
                )
                for r in chunk
            ]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                gen = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            new = gen[:, enc["input_ids"].shape[1] :]
            out.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = old_side
    return out


def label_of(answer: str) -> str:
    """The predicted intent: the first line of the answer, trimmed and lower-cased."""
    first = answer.strip().splitlines()[0] if answer.strip() else ""
    return first.strip().strip(".").strip().lower()
