"""Reading ``project.yaml`` (with ``--set section.key=value`` overrides) into a
:class:`~tunewise.config.project.ProjectConfig`, and writing the resolved config back out.

Every problem is one :class:`~tunewise.errors.UserError` line naming the file and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tunewise.config.project import ProjectConfig
from tunewise.config.rules import RULES_CONTEXT
from tunewise.errors import UserError


def _format_validation(path: Path, err: ValidationError) -> str:
    first = err.errors()[0]
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    if first["type"] == "cross_section":
        return f"{path}: {first['msg']}{more}"  # the message starts with the field it is about
    loc = ".".join(str(p) for p in first["loc"]) or "(root)"
    return f"{path}: {loc}: {first['msg']}{more}"


def load_project(path: str | Path, overrides: list[str] | None = None) -> ProjectConfig:
    """Read and validate ``project.yaml``; ``overrides`` are ``section.key=value`` strings."""
    path = Path(path)
    if path.is_dir():
        path = path / "project.yaml"
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f"{path}:{line + 1}" if line is not None else str(path)
        raise UserError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except (RecursionError, ValueError) as exc:  # nested past Python's stack; a 5000-digit int
        raise UserError(f"{path}: invalid YAML: {_unreadable(exc)}") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping at the top level")
    for item in overrides or []:
        apply_override(raw, item)
    raw["root"] = path.parent.resolve()
    try:
        return ProjectConfig.model_validate(raw, context={RULES_CONTEXT: True})
    except ValidationError as err:
        raise UserError(_format_validation(path, err)) from None


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply ``train.lr=1e-4`` to a raw config dict; the value is parsed as YAML."""
    if "=" not in item:
        raise UserError(f"--set {item!r}: expected key=value, e.g. train.lr=1e-4")
    key, value = item.split("=", 1)
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {item!r}: {part} is not a section")
    try:
        node[parts[-1]] = yaml.safe_load(value)
    except (yaml.YAMLError, RecursionError, ValueError) as exc:
        raise UserError(f"--set {key}: invalid YAML value: {_unreadable(exc)}") from None


def _unreadable(exc: BaseException) -> str:
    """What stopped the YAML reader, in a few words (one line)."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    text = str(getattr(exc, "problem", None) or exc)
    return text.splitlines()[0] if text else type(exc).__name__


def dump_project(cfg: ProjectConfig) -> dict[str, Any]:
    """The resolved config as plain JSON-able values (saved beside every run)."""
    return cfg.model_dump(mode="json")
