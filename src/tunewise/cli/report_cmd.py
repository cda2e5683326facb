"""Placeholder: verbs for this area are registered here."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's verbs to the top-level app."""
