"""The console every verb prints to (see :func:`tunewise.progress.make_console`)."""

from __future__ import annotations

from tunewise.progress import make_console

__all__ = ["make_console"]
