"""One progress display for every slow loop: training, generation, evaluation.

On a terminal it is a rich bar (count, extra stats, ETA). Redirected to a file or a CI log, a bar
only renders once at the end, so a 20-minute training run looked hung; there it prints a plain
line every ``interval`` seconds instead (and one when it finishes), which is what a log needs.
"""

from __future__ import annotations

import os
import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

PLAIN_INTERVAL_S = 30.0
LOG_WIDTH = 160


def make_console(stderr: bool = False) -> Console:
    """A terminal keeps its own width; a pipe or a log file gets whole lines, not 80-column cuts."""
    console = Console(stderr=stderr)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=stderr, width=LOG_WIDTH)
    return console


class Bar:
    """``with Bar("train", total) as bar: bar.update(completed=k, stats="loss 0.41")``."""

    def __init__(
        self,
        label: str,
        total: int,
        *,
        console: Console | None = None,
        enabled: bool = True,
        transient: bool = True,
        completed: int = 0,
        interval: float = PLAIN_INTERVAL_S,
    ) -> None:
        self.label, self.total, self.enabled, self.transient = label, total, enabled, transient
        self.console = console or make_console(stderr=True)
        self.interval = interval
        self.completed = completed
        self.stats = ""
        self._start_count = completed
        self._rich: Any = None
        self._task: Any = None
        self._t0 = self._last_line = 0.0

    @property
    def plain(self) -> bool:
        return not self.console.is_terminal

    def __enter__(self) -> Bar:
        self._t0 = self._last_line = time.time()
        if not self.enabled or self.plain:
            return self
        self._rich = Progress(
            TextColumn(f"[bold]{self.label}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=self.transient,
        )
        self._rich.start()
        self._task = self._rich.add_task(
            self.label, total=self.total, completed=self.completed, stats=""
        )
        return self

    def advance(self, n: int = 1) -> None:
        self.update(completed=self.completed + n)

    def update(self, *, completed: int | None = None, stats: str | None = None) -> None:
        if completed is not None:
            self.completed = completed
        if stats is not None:
            self.stats = stats
        if not self.enabled:
            return
        if self._rich is not None:
            self._rich.update(self._task, completed=self.completed, stats=self.stats)
        elif time.time() - self._last_line >= self.interval:
            self._line()

    def _line(self, done: bool = False) -> None:
        self._last_line = now = time.time()
        elapsed = now - self._t0
        rate = (self.completed - self._start_count) / elapsed if elapsed > 0 else 0.0
        left = self.total - self.completed
        eta = f", ~{left / rate:.0f}s left" if (rate > 0 and left > 0 and not done) else ""
        stats = f"  {self.stats}" if self.stats else ""
        self.console.print(
            f"{self.label}: {self.completed}/{self.total}{stats} ({elapsed:.0f}s{eta})",
            highlight=False,
            markup=False,
        )

    def __exit__(self, *exc: object) -> None:
        if self._rich is not None:
            self._rich.stop()
        elif self.enabled and self.plain and self.completed > self._start_count:
            self._line(done=True)
