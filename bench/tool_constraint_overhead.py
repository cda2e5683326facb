"""What the tool-call grammar costs per generated token, on the real model.

    .venv/bin/python bench/tool_constraint_overhead.py [--model smollm2-135m-instruct]
        [--tokens 64] [--repeats 3] [--threads N]

SNIPS-like weather and music tools are attached to a few requests (the fallback prompt SmolLM2
sees); each is answered one at a time, free and under ``tool_choice: required`` with one call
(:mod:`tunewise.runtime.grammar`), on the same loaded engine, alternating so that a busy
machine slows both alike. The time per decoded token is a full answer's (``--tokens`` at most)
minus a one-token answer's (the prefill), over the tokens in between; the median over
``--repeats``. Prints tokens/s for each, the grammar's cost per token, and the one-off cost of
preparing the tokenizer for the grammar. Greedy, no cache.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "GetWeather",
            "description": "The weather forecast for a place and time.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "country": {"type": "string"},
                    "timeRange": {"type": "string"},
                    "condition_description": {"type": "string"},
                },
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "PlayMusic",
            "description": "Play music on a service.",
            "parameters": {
                "type": "object",
                "properties": {
                    "artist": {"type": "string"},
                    "track": {"type": "string"},
                    "service": {"type": "string", "enum": ["spotify", "deezer", "youtube"]},
                    "year": {"type": "integer"},
                },
            },
        },
    },
]
QUESTIONS = [
    "Will it be sunny in Paris, France tomorrow afternoon?",
    "Play the latest song by Daft Punk on spotify",
    "what is the forecast for Rome next weekend",
    "put on some Miles Davis from 1959 on deezer",
]


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--tokens", type=int, default=64, help="max_new_tokens of every request")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    return p.parse_args()


def _timed(engine: Any, requests: list[Any]) -> tuple[float, int, list[str]]:
    t0 = time.perf_counter()
    results = engine.generate(requests)
    seconds = time.perf_counter() - t0
    return seconds, sum(r.completion_tokens for r in results), [r.text for r in results]


def _per_token(engine: Any, make: Any, tokens: int) -> tuple[float, float, list[str]]:
    """(seconds per generated token after the first, tokens per answer, texts): the time of a
    full answer minus that of a one-token answer (the prompt's prefill), over the tokens
    decoded in between, summed over the questions."""
    full = one = 0.0
    count = 0
    texts: list[str] = []
    for i in range(len(QUESTIONS)):
        s1, _, _ = _timed(engine, [make(i, 1)])
        sn, n, out = _timed(engine, [make(i, tokens)])
        one, full, count = one + s1, full + sn, count + n
        texts += out
    return (full - one) / max(1, count - len(QUESTIONS)), count / len(QUESTIONS), texts


def main() -> int:
    args = _args()
    import torch

    from tunewise.runtime import grammar, models
    from tunewise.runtime.engine import Engine, GenRequest
    from tunewise.runtime.tool_calls import attach_tools, parse_reply

    if args.threads:
        torch.set_num_threads(args.threads)
    engine = Engine(models.resolve(args.model))
    t0 = time.perf_counter()
    constraint = grammar.tool_constraint(engine.tokenizer, TOOLS, "required", max_calls=1)
    prepare_s = time.perf_counter() - t0
    msgs = [attach_tools([{"role": "user", "content": q}], TOOLS) for q in QUESTIONS]

    def maker(c: Any) -> Any:
        return lambda i, n: GenRequest(msgs[i], max_new_tokens=n, constraint=c)

    for c in (None, constraint):  # warm-up: first-call costs are not per token
        engine.generate([maker(c)(0, 4)])
    per: dict[str, list[float]] = {"free": [], "constrained": []}
    lengths: dict[str, float] = {}
    texts: dict[str, list[str]] = {}
    for _ in range(args.repeats):  # alternating: a busy machine slows both alike
        for label, c in (("free", None), ("constrained", constraint)):
            seconds, lengths[label], texts[label] = _per_token(engine, maker(c), args.tokens)
            per[label].append(seconds)
    free, held = statistics.median(per["free"]), statistics.median(per["constrained"])
    valid = sum(1 for t in texts["constrained"] if _complete(parse_reply(t)))
    print(f"model {args.model}, torch threads {torch.get_num_threads()}, one request at a time")
    print(f"grammar preparation (once per tokenizer): {prepare_s:.2f} s")
    print(
        f"free:        {1 / free:6.1f} tokens/s ({1000 * free:.1f} ms/token), "
        f"{lengths['free']:.0f} tokens per answer"
    )
    print(
        f"constrained: {1 / held:6.1f} tokens/s ({1000 * held:.1f} ms/token), "
        f"{lengths['constrained']:.0f} tokens per answer, {valid}/{len(QUESTIONS)} complete calls"
    )
    print(f"cost per token: {1000 * (held - free):+.2f} ms ({100 * (held / free - 1):+.1f}%)")
    for t in texts["constrained"]:
        print("  ", t.replace("\n", "\\n")[:160])
    return 0


def _complete(reply: Any) -> bool:
    return bool(reply.calls) and not reply.problems


if __name__ == "__main__":
    raise SystemExit(main())
