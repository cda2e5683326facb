"""The console every verb prints to."""

from __future__ import annotations

import os

from rich.console import Console

LOG_WIDTH = 160


def make_console() -> Console:
    """A terminal keeps its own width; a pipe or a log file gets whole tables, not 80-column cuts."""
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=LOG_WIDTH)
    return console
