"""The Backend helpers: the one context-length check and the one cached-generate loop."""

from __future__ import annotations

import pytest

from tunewise.errors import UserError
from tunewise.runtime.backend import (
    GenRequest,
    GenResult,
    PromptTooLongError,
    cached_generate,
    check_context,
)
from tunewise.runtime.cache import GenCache


def test_check_context_boundary_and_message() -> None:
    check_context(100, 28, 128)  # exactly full fits
    with pytest.raises(PromptTooLongError) as info:
        check_context(100, 29, 128, new_label="max_tokens", where="request 3: ")
    assert str(info.value) == (
        "request 3: prompt of 100 tokens + max_tokens 29 exceeds the context of 128 tokens"
    )
    assert isinstance(info.value, UserError)  # a user error: exit code 2 on the CLI


def _req(q: str, n: int = 4) -> GenRequest:
    return GenRequest(messages=[{"role": "user", "content": q}], max_new_tokens=n)


def test_cached_generate_runs_only_misses_and_stores_each_chunk() -> None:
    cache = GenCache()
    reqs = [_req("a"), _req("b"), _req("c")]
    prompts = [r.messages[0]["content"] for r in reqs]
    asked: list[list[int]] = []

    def run(todo):
        asked.append(list(todo))
        for i in todo:
            yield {i: GenResult(prompts[i].upper(), 1, 1, "stop")}

    first = cached_generate(reqs, prompts, run, model_key="m", cache=cache)
    assert [r.text for r in first] == ["A", "B", "C"] and not any(r.cached for r in first)
    more = [*reqs, _req("d"), _req("a", n=5)]  # another max_new_tokens: another key
    prompts = [r.messages[0]["content"] for r in more]
    again = cached_generate(more, prompts, run, model_key="m", cache=cache)
    assert asked == [[0, 1, 2], [3, 4]]
    assert [r.text for r in again] == ["A", "B", "C", "D", "A"]
    assert [r.cached for r in again] == [True, True, True, False, False]
    # another model or adapter hash is another key
    cached_generate(
        reqs[:1], prompts[:1], run, model_key="m", cache=cache, adapter_hash=lambda _: "x"
    )
    assert asked[-1] == [0]


def test_cached_generate_keeps_what_finished_before_a_failure() -> None:
    cache = GenCache()
    reqs = [_req("a"), _req("b")]
    prompts = ["a", "b"]
    closed: list[bool] = []

    def run(todo):
        try:
            yield {todo[0]: GenResult("A", 1, 1, "stop")}
            raise RuntimeError("provider down")
        finally:
            closed.append(True)

    with pytest.raises(RuntimeError, match="provider down"):
        cached_generate(reqs, prompts, run, model_key="m", cache=cache)
    assert closed == [True]

    def never(todo):
        assert todo == [1], "the finished request was not cached"
        yield {1: GenResult("B", 1, 1, "stop")}

    got = cached_generate(reqs, prompts, never, model_key="m", cache=cache)
    assert [(r.text, r.cached) for r in got] == [("A", True), ("B", False)]


def test_cached_generate_closes_the_runner_when_the_cache_write_fails() -> None:
    class BrokenCache(GenCache):
        def put_many(self, values, kind="gen"):
            raise OSError("disk full")

    stopped: list[str] = []

    def run(todo):
        try:
            for i in todo:
                yield {i: GenResult("x", 1, 1, "stop")}
        except GeneratorExit:
            stopped.append("closed")
            raise

    with pytest.raises(OSError, match="disk full"):
        cached_generate([_req("a"), _req("b")], ["a", "b"], run, model_key="m", cache=BrokenCache())
    assert stopped == ["closed"]  # an external client cancels its queued requests here


def test_cached_generate_says_how_many_answers_came_from_the_cache(capsys) -> None:
    """A rerun's evaluate stage printed "generating 150 answers" and returned at once (all of
    them cached): the count of cache hits is said, and nothing is said without progress."""
    cache = GenCache()
    reqs = [_req("a"), _req("b")]
    prompts = ["a", "b"]

    def run(todo):
        for i in todo:
            yield {i: GenResult(prompts[i].upper(), 1, 1, "stop")}

    cached_generate(reqs[:1], prompts[:1], run, model_key="m", cache=cache, progress=True)
    assert "from the generation cache" not in capsys.readouterr().err  # nothing cached yet
    cached_generate(reqs, prompts, run, model_key="m", cache=cache, progress=True)
    assert "1 of 2 from the generation cache, 1 to generate" in capsys.readouterr().err
    cached_generate(reqs, prompts, run, model_key="m", cache=cache, progress=True)
    assert "2 of 2 from the generation cache: nothing to generate" in capsys.readouterr().err
    cached_generate(reqs, prompts, run, model_key="m", cache=cache)
    assert capsys.readouterr().err == ""
