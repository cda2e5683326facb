"""Chunked prefill (issue #27): ``Engine.steps`` runs one request as a generator that yields after
every forward, its prompt prefilled ``prefill_chunk`` tokens at a time over the growing cache, so
the shadow challenger gives way to production between any two forwards.

On the tiny lively model the answers equal ``Engine.generate``'s token for token (greedy, a
seeded sample, stop strings, a tool constraint, with and without adapters); in a server, no
challenger forward (nor its prompt's encoding) starts while a production request is in flight.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import pytest
import torch

from _serve_helpers import running
from _ship_helpers import make_run
from test_mixed_adapters import LONG_SYSTEM, _msgs
from tunewise.runtime import grammar, models
from tunewise.runtime.engine import Engine, GenRequest, GenResult
from tunewise.serve import shadow as shadow_mod
from tunewise.serve.app import ServeSettings, create_app
from tunewise.serve.shadow import ShadowSettings
from tunewise.serve.traffic import read_traffic

WAIT = 30  # seconds an Event may take before the test fails instead of hanging
QUESTIONS = [
    "My invoice is wrong",
    "The app crashes every time I open the settings page on my phone, please help me now",
    "hi",
    "Where is my parcel?",
]
TOOLS = [{"type": "function", "function": {"name": "ping", "description": "ping the server"}}]


@pytest.fixture(scope="module")
def adapters(lively_dir: Path, tmp_path_factory) -> dict[str, Path]:
    """Two random LoRA adapters (on k/v projections: they change the prompt's keys and values)."""
    root = tmp_path_factory.mktemp("chunked-adapters")
    return {
        "a": make_run(lively_dir, root / "a", seed=1, target_modules=("q_proj", "k_proj")),
        "b": make_run(lively_dir, root / "b", seed=2, target_modules=("v_proj", "down_proj")),
    }


@pytest.fixture(scope="module")
def engine(lively_dir: Path, adapters: dict[str, Path]) -> Engine:
    eng = Engine(models.resolve(str(lively_dir)), batch_size=4, max_loaded_adapters=4)
    for name, path in adapters.items():
        eng.load_adapter(name, path)
    return eng


class Forwards:
    """Wraps ``Engine._forward``: the thread, width and input ids of every model call, and an
    optional hook run before the model (``on_call(thread_name)``)."""

    def __init__(self, engine: Engine, monkeypatch, on_call: Callable[[str], None] | None = None):
        self.calls: list[tuple[str, int, list[int]]] = []
        real = engine._forward

        def forward(adapter: Any, input_ids: torch.Tensor, *args: Any, **kw: Any) -> Any:
            name = threading.current_thread().name
            self.calls.append((name, input_ids.shape[1], input_ids[0].tolist()))
            if on_call is not None:
                on_call(name)
            return real(adapter, input_ids, *args, **kw)

        monkeypatch.setattr(engine, "_forward", forward)


def _drain(steps: Generator[None, None, GenResult]) -> GenResult:
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def _same(got: GenResult, want: GenResult) -> None:
    assert (got.text, got.completion_tokens, got.finish_reason, got.prompt_tokens) == (
        want.text,
        want.completion_tokens,
        want.finish_reason,
        want.prompt_tokens,
    )


# --------------------------------------------------------------------------- one forward a step


@pytest.mark.parametrize("chunk", [1, 5, 16, None, 10_000])
def test_the_step_generator_yields_once_per_forward(engine, monkeypatch, chunk) -> None:
    req = GenRequest(_msgs(QUESTIONS[1]), adapter="a", max_new_tokens=5)
    prompt = engine.encode([engine.render(req.messages)])[0]
    n = len(prompt)
    assert n > 16  # several chunks of 5 and 16
    monkeypatch.setattr(engine, "eos_ids", frozenset())  # every token of the 5 is generated
    engine.prefix_cache.clear()  # an earlier case stored this prompt: the widths are a cold one's
    spy = Forwards(engine, monkeypatch)
    steps = engine.steps(req, prefill_chunk=chunk)
    assert spy.calls == []  # nothing runs before the first next()
    seen: list[int] = []
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result = done.value
            break
        seen.append(len(spy.calls))
    c = min(chunk or n, n)  # None, or a chunk longer than the prompt: today's one-shot prefill
    k = math.ceil(n / c)
    # One forward per yield: k prefill chunks (the k-th one's logits give the first token),
    # then one per further token; nothing after the last yield.
    assert seen == list(range(1, k + 5)) and len(spy.calls) == k + 4
    assert [w for _, w, _ in spy.calls] == [c] * (k - 1) + [n - c * (k - 1)] + [1] * 4
    assert [t for _, _, ids in spy.calls[:k] for t in ids] == prompt  # the prompt, in order
    assert (result.prompt_tokens, result.completion_tokens) == (n, 5)


def test_a_closed_step_generator_unpins_its_adapter(engine) -> None:
    steps = engine.steps(GenRequest(_msgs(QUESTIONS[0]), adapter="b"), prefill_chunk=4)
    next(steps)
    assert "b" in engine.pool._pins
    steps.close()  # the shadow closes it at shutdown, mid-way
    assert "b" not in engine.pool._pins


# --------------------------------------------------------------------------- the same answers


def _requests(engine: Engine) -> list[GenRequest]:
    ping = grammar.tool_constraint(engine.tokenizer, TOOLS, "named", "ping", max_calls=1)
    plain = [
        GenRequest(_msgs(q, system), adapter=adapter, max_new_tokens=12)
        for q in QUESTIONS
        for system, adapter in ((LONG_SYSTEM, None), (None, "a"), (LONG_SYSTEM, "b"))
    ]
    return [
        *plain,
        GenRequest(_msgs(QUESTIONS[0]), adapter="a", max_new_tokens=12, stop=["e", "a"]),
        GenRequest(_msgs(QUESTIONS[1]), max_new_tokens=12, temperature=1.0, seed=3),
        GenRequest(_msgs(QUESTIONS[2]), adapter="b", temperature=0.8, top_p=0.9, seed=4),
        GenRequest(_msgs(QUESTIONS[3]), adapter="a", max_new_tokens=60, constraint=ping),
    ]


@pytest.mark.parametrize("chunk", [1, 3, 8, 32])
def test_the_steps_answer_what_generate_answers(engine, chunk) -> None:
    reqs = _requests(engine)
    want = [engine.generate([r])[0] for r in reqs]
    # not trivial: the adapters and the base answer differently, a stop string cut an answer
    assert len({w.text for w in want[:3]}) == 3
    assert want[12].finish_reason == "stop" and want[12].completion_tokens < 12
    assert '"ping"' in want[-1].text and want[-1].finish_reason == "stop"
    for req, w in zip(reqs, want, strict=True):
        _same(_drain(engine.steps(req, prefill_chunk=chunk)), w)


# --------------------------------------------------------------------------- in the shadow


class Production:
    """Production requests arriving at chosen moments of the challenger's work: ``arrive()``
    counts one in the shadow's load (as the middleware does); a helper thread ends it only once
    the challenger waits for it, so every arrival is seen by the challenger."""

    def __init__(self, shadow: Any, monkeypatch) -> None:
        self.load, self._pending, self._lock = shadow.load, 0, threading.Lock()
        self.waiting, self.done = threading.Event(), threading.Event()
        real_wait = self.load.wait_idle

        def wait_idle(stop: Callable[[], bool]) -> None:
            if self.load.busy:
                self.waiting.set()
            real_wait(stop)

        monkeypatch.setattr(self.load, "wait_idle", wait_idle)
        self._thread = threading.Thread(target=self._release, daemon=True)
        self._thread.start()

    def arrive(self) -> None:
        with self._lock:
            self._pending += 1
        self.load.enter()

    def _release(self) -> None:
        while not self.done.is_set():
            if self.waiting.wait(0.05):
                self.waiting.clear()
                # Only the arrivals the challenger waits for: it arrives again only once it
                # runs again, which these exits allow (an exit until idle could end those too).
                with self._lock:
                    n, self._pending = self._pending, 0
                for _ in range(n):
                    self.load.exit()

    def stop(self) -> None:
        self.done.set()
        self._thread.join(WAIT)


def test_no_challenger_forward_starts_while_production_is_in_flight(
    engine, adapters, tmp_path, monkeypatch
) -> None:
    chunk = 4
    monkeypatch.setattr(shadow_mod, "PREFILL_CHUNK", chunk)
    folder = tmp_path / "traffic"
    settings = ServeSettings(
        batch_window_ms=5,
        log_traffic=folder,
        shadow=ShadowSettings("base"),  # the base model challenges adapter "a"
        adapters=[f"a={adapters['a']}"],
    )
    app = create_app(engine, settings=settings, registry=None)
    shadow = app.state.server.shadow
    production = Production(shadow, monkeypatch)
    in_shadow = "tunewise-shadow"
    busy: list[tuple[str, bool]] = []  # (what the challenger started, production in flight)

    def on_forward(thread: str) -> None:
        if thread == in_shadow:
            busy.append(("forward", shadow.load.busy))
            production.arrive()  # a request arrives while this forward runs

    real_encode = engine.encode

    def encode(texts: list[str]) -> list[list[int]]:
        if threading.current_thread().name == in_shadow:
            busy.append(("encode", shadow.load.busy))
        out = real_encode(texts)
        if threading.current_thread().name == in_shadow:
            production.arrive()  # and right after the challenger encoded its prompt
        return out

    spy = Forwards(engine, monkeypatch, on_call=on_forward)
    monkeypatch.setattr(engine, "encode", encode)
    question = "The app crashes every time I open the settings page, please help me"
    try:
        with running(app) as url:
            import httpx

            payload = {"model": "a", "messages": _msgs(question, None), "max_tokens": 3}
            r = httpx.post(f"{url}/v1/chat/completions", json=payload, timeout=60)
            assert r.status_code == 200, r.text
    finally:
        production.stop()
    (record,) = read_traffic(folder, prefix="shadow")
    assert record["status"] == 200 and record["completion_tokens"] == 3
    n = record["prompt_tokens"]
    # Production arrived after every encode and during every forward of the challenger: it
    # never started the next one before production was done.
    assert [what for what, _ in busy].count("encode") >= 1
    assert busy and not any(b for _, b in busy), busy
    # and what it started was one chunk of the prompt, or one token
    widths = [w for thread, w, _ in spy.calls if thread == in_shadow]
    assert widths == [chunk] * (n // chunk) + [n % chunk] * (n % chunk > 0) + [1, 1]
