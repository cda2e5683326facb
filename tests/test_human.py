"""Side-by-side human rating: store, statistics, blinding, the HTTP API and the page in Chromium."""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from scipy import stats as sps

from _evalfakes import CHROMIUM, launch_chromium, make_run
from tunewise.errors import UserError
from tunewise.eval import human


@pytest.fixture
def eval_dir(tmp_path):
    d = tmp_path / "eval"
    d.mkdir()
    make_run({"prompt": 0.4, "lora": 0.8}, n=40).save(d / "eval.json")
    return d


@pytest.fixture
def server(eval_dir) -> Iterator[tuple[str, human.RatingSession]]:
    """A real uvicorn on a free loopback port, always shut down."""
    import uvicorn

    session = human.open_session(eval_dir, "lora", "prompt", seed=3)
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say TCP, and without it
    # every response's body waits ~40 ms for the client's delayed ACK (uvicorn writes twice).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))  # the kernel picks a free port; uvicorn serves on this socket
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(human.create_app(session), log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not srv.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", session
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
        sock.close()
        session.store.close()
    assert not thread.is_alive()


def test_wilson_matches_known_values():
    lo, hi = human.wilson(7, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.3968, 0.8922)
    assert human.wilson(0, 20)[0] == 0.0 and human.wilson(20, 20)[1] == 1.0


def test_store_is_wal_and_rerating_replaces(tmp_path):
    store = human.RatingStore(tmp_path / "r.sqlite")
    store.record("x", "y", "i1", "ann", "a", "a")
    store.record("x", "y", "i1", "ann", "a", "tie")  # changed her mind
    store.record("x", "y", "i1", "bob", "b", "b")
    store.close()
    con = sqlite3.connect(tmp_path / "r.sqlite")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert sorted(con.execute("SELECT rater, choice FROM ratings")) == [
        ("ann", "tie"),
        ("bob", "b"),
    ]
    con.close()
    s = human.summaries(tmp_path / "r.sqlite")[0]
    assert (s["wins_a"], s["wins_b"], s["ties"], s["raters"]) == (0, 1, 1, 2)
    assert s["win_rate_a"] == pytest.approx(0.25)  # a tie counts half


def test_summary_ties_split_and_sign_test(eval_dir):
    session = human.open_session(eval_dir, "lora", "prompt")
    plan = ["a"] * 12 + ["b"] * 4 + ["tie"] * 4 + ["skip"] * 2
    for item_id, want in zip(session.order[: len(plan)], plan, strict=True):
        left = session.left_is(item_id)
        choice = {"tie": "tie", "skip": "skip"}.get(want) or ("left" if left == want else "right")
        session.rate(item_id, choice)
    s = session.summary()
    assert (s["wins_a"], s["wins_b"], s["ties"], s["skips"], s["n"]) == (12, 4, 4, 2, 20)
    assert s["win_rate_a"] == pytest.approx(14 / 20)
    assert (s["ci_low"], s["ci_high"]) == pytest.approx(human.wilson(14, 20))
    assert s["p_value"] == pytest.approx(sps.binomtest(12, 16, 0.5).pvalue)
    assert session.progress() == {"rated": 22, "total": 40}


def test_order_and_sides_are_random_but_stable(eval_dir):
    s1 = human.open_session(eval_dir, "lora", "prompt", seed=0)
    s2 = human.open_session(eval_dir, "lora", "prompt", seed=0)
    ids = list(s1.items)
    assert s1.order == s2.order and s1.order != ids  # shuffled, reproducibly
    sides = [s1.left_is(i) for i in ids]
    assert sides == [s2.left_is(i) for i in ids]
    assert 8 <= sides.count("a") <= 32  # both candidates appear on the left


def test_bad_candidates_are_user_errors(eval_dir):
    with pytest.raises(UserError, match=r"'qlora' is not in eval\.json"):
        human.open_session(eval_dir, "qlora", "prompt")
    with pytest.raises(UserError, match="two different"):
        human.open_session(eval_dir, "lora", "lora")


def test_http_api_is_blinded_and_stores_ratings(server, eval_dir):
    url, _session = server
    with httpx.Client(base_url=url, timeout=10) as client:
        page = client.get("/")
        assert page.status_code == 200 and "Which answer is better?" in page.text
        first = client.get("/api/next").json()
        assert first["done"] is False and first["progress"] == {"rated": 0, "total": 40}
        assert "lora" not in str(first) and "prompt" not in {first["left"], first["right"]}
        assert set(first) == {"done", "item_id", "prompt", "reference", "left", "right", "progress"}
        lora_out = {
            it.item_id: it.output
            for it in make_run({"prompt": 0.4, "lora": 0.8}, n=40).candidate("lora").items
        }
        left_is_lora = first["left"] == lora_out[first["item_id"]]
        r = client.post("/api/rate", json={"item_id": first["item_id"], "choice": "left"})
        assert r.status_code == 200 and r.json()["progress"]["rated"] == 1
        second = client.get("/api/next").json()
        assert second["item_id"] != first["item_id"]
        assert (
            client.post("/api/rate", json={"item_id": "nope", "choice": "left"}).status_code == 404
        )
        assert (
            client.post(
                "/api/rate", json={"item_id": second["item_id"], "choice": "maybe"}
            ).status_code
            == 422
        )
        summary = client.get("/api/summary").json()
    assert (summary["wins_a"], summary["wins_b"]) == ((1, 0) if left_is_lora else (0, 1))
    rows = human.RatingStore(eval_dir / human.DB_NAME).rows("lora", "prompt")
    assert [(r["item_id"], r["choice"]) for r in rows] == [
        (first["item_id"], "a" if left_is_lora else "b")
    ]


@pytest.mark.browser
@pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not installed (apt-get install -y chromium)"
)
def test_rating_page_in_real_browser(server, eval_dir):
    from playwright.sync_api import sync_playwright

    url, session = server
    keys = ["1", "2", "0", "=", "s", "1"]
    seen = []
    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            page = browser.new_page()
            page.goto(url + "/")
            for key in keys:
                page.wait_for_function("document.body.dataset.item !== undefined")
                item = page.evaluate("document.body.dataset.item")
                seen.append(
                    (item, page.locator("#left").inner_text(), page.locator("#right").inner_text())
                )
                page.keyboard.press(key)
                page.wait_for_function(f"document.body.dataset.item !== {item!r}")
            progress = page.locator("#progress").inner_text()
            # user text is rendered as text, never as markup
            assert page.locator("#prompt script").count() == 0
            assert "<script>" in page.locator("#prompt").inner_text()
        finally:
            browser.close()
    assert progress == "6 / 40 rated"
    rows = {r["item_id"]: r for r in session.store.rows("lora", "prompt")}
    assert len(rows) == 6 and len({s[0] for s in seen}) == 6
    run = make_run({"prompt": 0.4, "lora": 0.8}, n=40)
    outputs = {c.name: {it.item_id: it.output for it in c.items} for c in run.candidates}
    for (item, left_text, right_text), key in zip(seen, keys, strict=True):
        left = session.left_is(item)  # 'a' = lora on the left
        shown = ("lora", "prompt") if left == "a" else ("prompt", "lora")
        assert (left_text, right_text) == (outputs[shown[0]][item], outputs[shown[1]][item])
        right = "b" if left == "a" else "a"
        assert rows[item]["left_is"] == left
        assert (
            rows[item]["choice"]
            == {"1": left, "2": right, "0": "tie", "=": "tie", "s": "skip"}[key]
        )
