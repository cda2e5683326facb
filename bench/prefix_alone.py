"""Requests that run alone, with and without the prefix cache, on one Engine.

One client asking in turn never fills a batch, so before 2026-12-06 every request prefilled its
whole prompt: the demo's 134-token system prompt each time, and in a chat every earlier turn
again. Now a request alone stores its prompt and the next one starts after the part it shares
with a stored one (tunewise.runtime.prefix_cache). Two scenarios, on the demo's tickets:

* ``next question``: one ticket after another under the demo's system prompt;
* ``conversation``: chats of ``--turns`` tickets, each turn after the earlier tickets and their
  reference answers (the history is fixed, so both arms see the same prompts).

Each request runs twice, with the cache and without (the same Engine, its cache switched off for
the plain arm; which arm goes first alternates), so both share the process, the weights and the
machine's drift. Printed: mean and median latency per arm and their ratio, how many answers are
equal, how many requests reused a stored prefix, the CPU's vector flags, torch threads and the
load average.

    .venv/bin/python bench/prefix_alone.py                 # SmolLM2-135M, 24 questions, 4 chats
    .venv/bin/python bench/prefix_alone.py --tiny --questions 4 --chats 1 --turns 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from shadow_latency import cpu_flags, tiny_model  # noqa: E402

DEMO = HERE.parent / "examples" / "ticket-triage" / "data" / "tickets.jsonl"


def tickets(n: int) -> list[list[dict[str, str]]]:
    """The first ``n`` demo tickets as chats (system, user, assistant)."""
    rows = [json.loads(line) for line in DEMO.read_text().splitlines()[:n]]
    return [row["messages"] for row in rows]


def questions(n: int) -> list[list[dict[str, str]]]:
    return [chat[:-1] for chat in tickets(n)]


def conversations(chats: int, turns: int) -> list[list[list[dict[str, str]]]]:
    """``chats`` lists of ``turns`` prompts; turn k holds the k earlier tickets and answers."""
    pool = tickets(chats * turns)
    out = []
    for c in range(chats):
        own = pool[c * turns : (c + 1) * turns]
        history = [own[0][0]]  # the system turn
        prompts = []
        for chat in own:
            prompts.append([*history, chat[1]])
            history += chat[1:]
        out.append(prompts)
    return out


def timed(engine, cache, messages, max_tokens: int) -> tuple[float, str]:
    from tunewise.runtime.engine import GenRequest

    engine.prefix_cache = cache
    t0 = time.perf_counter()
    (res,) = engine.generate([GenRequest(messages=messages, max_new_tokens=max_tokens)])
    return (time.perf_counter() - t0) * 1000, res.text


def run(engine, cache, prompts: list, max_tokens: int) -> dict:
    """Every prompt with and without the cache, alternating which goes first."""
    cached, plain, equal = [], [], 0
    for i, messages in enumerate(prompts):
        arms = [(cache, cached), (None, plain)]
        texts = []
        for arm_cache, out in arms if i % 2 == 0 else arms[::-1]:
            ms, text = timed(engine, arm_cache, messages, max_tokens)
            out.append(ms)
            texts.append(text)
        equal += texts[0] == texts[1]
    return {"cached": cached, "plain": plain, "equal": equal, "n": len(prompts)}


def report(name: str, r: dict) -> None:
    mc, mp = statistics.mean(r["cached"]), statistics.mean(r["plain"])
    dc, dp = statistics.median(r["cached"]), statistics.median(r["plain"])
    print(
        f"{name}: {r['n']} requests; mean {mp:.0f} ms without the cache, {mc:.0f} ms with it "
        f"(**{mp / mc:.2f}x**); median {dp:.0f} vs {dc:.0f} ms ({dp / dc:.2f}x); "
        f"answers equal {r['equal']}/{r['n']}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--questions", type=int, default=24)
    ap.add_argument("--chats", type=int, default=4)
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=12)
    ap.add_argument("--tiny", action="store_true", help="a random 2-layer model (smoke test)")
    args = ap.parse_args()

    import torch

    from tunewise.runtime import models
    from tunewise.runtime.engine import Engine
    from tunewise.runtime.prefix_cache import PrefixCache

    print(f"CPU: {cpu_flags()}; torch threads {torch.get_num_threads()}")
    print(f"load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        ref = models.resolve(str(tiny_model(Path(tmp) / "tiny")) if args.tiny else None)
        engine = Engine(ref)
        cache = engine.prefix_cache
        assert isinstance(cache, PrefixCache)
        timed(engine, None, questions(1)[0], args.max_tokens)  # warm-up, not counted
        cache.hits = cache.misses = 0
        report("next question", run(engine, cache, questions(args.questions), args.max_tokens))
        cache.clear()  # the chats start cold: what they reuse is their own earlier turns
        chats = conversations(args.chats, args.turns)
        turns = [prompt for chat in chats for prompt in chat]
        report(
            f"conversation ({args.chats} x {args.turns} turns)",
            run(engine, cache, turns, args.max_tokens),
        )
        print(
            f"prefix cache: {cache.hits} row(s) reused a stored prefix, {len(cache)} entries, "
            f"{cache.bytes / 2**20:.1f} MiB"
        )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
