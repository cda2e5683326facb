"""The progress display: a rich bar on a terminal, plain periodic lines in a log."""

from __future__ import annotations

import io

from rich.console import Console

from tunewise.progress import Bar


def test_plain_lines_in_a_log_with_stats_and_a_final_line():
    out = io.StringIO()
    con = Console(file=out, force_terminal=False, width=200)
    with Bar("train", 4, console=con, interval=0.0) as bar:
        bar.update(completed=1, stats="loss 0.5000")
        bar.advance(3)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("train: 1/4  loss 0.5000 (") and "left)" in lines[0]
    assert lines[-1].startswith("train: 4/4  loss 0.5000 (") and "left" not in lines[-1]


def test_plain_lines_are_throttled():
    out = io.StringIO()
    with Bar(
        "generating", 100, console=Console(file=out, force_terminal=False), interval=3600
    ) as bar:
        for _ in range(100):
            bar.advance()
    assert out.getvalue().splitlines() == [out.getvalue().splitlines()[-1]]  # only the final line
    assert out.getvalue().startswith("generating: 100/100 (")


def test_quiet_prints_nothing_and_terminal_gets_a_bar():
    out = io.StringIO()
    with Bar(
        "x", 2, console=Console(file=out, force_terminal=False), enabled=False, interval=0.0
    ) as bar:
        bar.advance(2)
    assert out.getvalue() == ""
    tty = io.StringIO()
    with Bar(
        "x", 2, console=Console(file=tty, force_terminal=True, width=80), transient=False
    ) as bar:
        bar.advance(2)
    assert "2/2" in tty.getvalue() and "x: 2/2 (" not in tty.getvalue()
