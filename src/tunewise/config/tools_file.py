"""``task.tools`` given as the path of a JSON file: the tool schemas it holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_tools(path: Path) -> list[dict[str, Any]]:
    """task.tools given as a file: the list of tool schemas it holds (a one-line error if not)."""
    try:
        tools = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: not JSON: {exc.msg}") from None
    if isinstance(tools, dict) and isinstance(tools.get("tools"), list):
        tools = tools["tools"]  # {"tools": [...]}, as an OpenAI request body writes them
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise ValueError(f"{path}: expected a JSON list of tool schemas")
    return tools
