"""Where tunewise keeps user state.

Everything lives under one directory, ``$TUNEWISE_HOME`` (default ``~/.tunewise``), so tests can
point it at a temporary folder and users can wipe it in one go. Converted models may live
elsewhere (``$TUNEWISE_MODELS``) because they are large and shareable between homes.
"""

from __future__ import annotations

import os
from pathlib import Path


def default_home() -> Path:
    """Where state lives when ``$TUNEWISE_HOME`` is not set."""
    return Path.home() / ".tunewise"


def home() -> Path:
    root = Path(os.environ.get("TUNEWISE_HOME", default_home())).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def models_dir() -> Path:
    override = os.environ.get("TUNEWISE_MODELS")
    root = Path(override).expanduser() if override else home() / "models"
    root.mkdir(parents=True, exist_ok=True)
    return root


def models_origin() -> str:
    """Why :func:`models_dir` is where it is, in words a user can act on."""
    if os.environ.get("TUNEWISE_MODELS"):
        return "$TUNEWISE_MODELS"
    if os.environ.get("TUNEWISE_HOME"):
        return "$TUNEWISE_HOME/models"
    return "the default home; set TUNEWISE_HOME or TUNEWISE_MODELS to move it"


def registry_dir(create: bool = True) -> Path:
    """The registry folder; ``create=False`` only names it (a dry run must write nothing)."""
    if not create:
        return Path(os.environ.get("TUNEWISE_HOME", default_home())).expanduser() / "registry"
    root = home() / "registry"
    root.mkdir(parents=True, exist_ok=True)
    return root


def cache_db() -> Path:
    """SQLite file for cached generations and scores (shared by every project)."""
    return home() / "cache.sqlite"


def seals_db() -> Path:
    """SQLite file that records sealed test splits and every final use of them."""
    return home() / "seals.sqlite"
