"""Shared pieces of the training benchmarks (train_throughput.py, clinc_learning.py).

CLINC150 -> chat JSONL, the one validation-loss function every run is scored with (also as a
curve during training, :class:`ValCurve`), batched greedy generation, the CPU's flags, and a
peak-RSS helper. Kept apart from the library on purpose: the benchmarks judge the library, so
they do not reuse its collator or its engine to score it.
"""

from __future__ import annotations

import json
import os
import random
import resource
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CLINC = REPO.parent / "shared" / "datasets" / "clinc150" / "data_full.json"
DEMO = REPO / "examples" / "ticket-triage" / "data" / "tickets.jsonl"
IGNORE = -100


CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")
# Settings that cap what torch, oneDNN and MKL use, e.g. to run an AVX2 measurement on a newer CPU.
ISA_ENV = (
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "MKL_ENABLE_INSTRUCTIONS",
    "OMP_NUM_THREADS",
)


def cpu_report() -> dict[str, Any]:
    """What the bench ran on: the CPU's vector flags, what torch dispatches to, the ISA caps."""
    import torch

    flags: set[str] = set()
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            elif line.startswith("model name") and model == "?":
                model = line.split(":", 1)[1].strip()
    except OSError:  # not Linux: torch's own view below still says what it dispatches to
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "flags": {f: f in flags for f in CPU_FLAGS},
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "env": {k: os.environ[k] for k in ISA_ENV if k in os.environ},
        "load_avg": os.getloadavg()[0],
    }


def cpu_line(report: dict[str, Any]) -> str:
    flags = " ".join(f"{f}={'yes' if on else 'no'}" for f, on in report["flags"].items())
    env = " ".join(f"{k}={v}" for k, v in report["env"].items()) or "no ISA caps set"
    return (
        f"CPU: {report['cpu']} ({report['cores']} cores); {flags}; torch dispatches to "
        f"{report['torch_cpu_capability']} with {report['torch_threads']} threads; {env}; "
        f"load average {report['load_avg']:.1f}"
    )


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


def val_curve(tokenizer: Any, rows: Sequence[dict[str, Any]], every: int) -> Any:
    """A ``TrainerCallback`` that records validation loss (:func:`answer_loss`) every ``every``
    optimizer steps against training seconds, in ``.points`` as (seconds, step, loss); the
    evaluations' own time is kept out of the clock (``.paused``). One class for every trainer of
    a bench (plain ``Trainer``, TRL's, tunewise's), so all are measured by the same code."""
    from transformers import TrainerCallback

    class ValCurve(TrainerCallback):
        def __init__(self) -> None:
            self.points: list[tuple[float, int, float]] = []
            self.paused = 0.0
            self.t0 = time.perf_counter()

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.t0, self.paused = time.perf_counter(), 0.0
            self._measure(kw["model"], 0)

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step % every == 0 or state.global_step >= state.max_steps:
                self._measure(kw["model"], state.global_step)

        def _measure(self, model: Any, step: int) -> None:
            start = time.perf_counter()
            elapsed = start - self.t0 - self.paused
            training = model.training
            loss = answer_loss(model, tokenizer, rows)
            model.train(training)
            self.points.append((elapsed, step, loss))
            self.paused += time.perf_counter() - start

    return ValCurve()


def time_to_loss(curve: Sequence[Sequence[float]], target: float) -> float | None:
    """Training seconds until the curve first reaches ``target`` (linear between points)."""
    prev: tuple[float, float] | None = None
    for t, _step, loss in curve:
        if loss <= target:
            if prev is None or prev[1] <= loss:
                return t
            t0, l0 = prev
            return t0 + (t - t0) * (l0 - target) / (l0 - loss)
        prev = (t, loss)
    return None


def speedup_at_equal_loss(
    ref: Sequence[Sequence[float]], new: Sequence[Sequence[float]]
) -> tuple[float, float] | None:
    """(t_ref / t_new, target): how much sooner ``new`` reaches the worse of the two final
    validation losses (both curves reach it by their end)."""
    target = max(ref[-1][2], new[-1][2])
    t_ref, t_new = time_to_loss(ref, target), time_to_loss(new, target)
    if not t_ref or not t_new:
        return None
    return t_ref / t_new, target


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
