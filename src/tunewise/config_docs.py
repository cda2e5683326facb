"""Render ``docs/project-yaml.md`` from the ``project.yaml`` models: the config is the docs.

One section per config section (``task``, ``data``, ``data.split``, ...), each a table of field,
type, default and description, read from the pydantic models of :mod:`tunewise.config`; then the
cross-section rules checked at load (:data:`tunewise.config.CROSS_SECTION_RULES`). A test compares
the committed file with this output, so a new field or a changed default cannot leave the page
behind::

    python -m tunewise.config_docs > docs/project-yaml.md
    python -m tunewise.config_docs --out docs/project-yaml.md   # written atomically

Only :mod:`tunewise.config` and the standard library are imported: rendering the docs must not
need the ML stack.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import tempfile
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from tunewise.config.project import ProjectConfig
from tunewise.config.rules import CROSS_SECTION_RULES

REGENERATE = "python -m tunewise.config_docs > docs/project-yaml.md"
HEADER = f"""\
# project.yaml reference

<!-- Generated from src/tunewise/config/; do not edit by hand. Regenerate: {REGENERATE} -->

Every field of `project.yaml`, section by section: its type, its default and what it does. Paths
are relative to the folder of `project.yaml`. Unknown keys are refused (a typo in a training
config silently costs a day), and any value can be overridden on the command line with
`--set section.key=value` (parsed as YAML).
"""


def _model_in(annotation: Any) -> type[Any] | None:
    """The config model inside ``annotation`` (``X``, ``X | None``, ``list[X]``), if any."""
    if inspect.isclass(annotation) and hasattr(annotation, "model_fields"):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def sections(
    model: type[Any] = ProjectConfig, path: str = "", many: bool = False
) -> Iterator[tuple[str, type[Any], bool]]:
    """(dotted path, model, whether the file holds a list of them) for ``model`` and every
    section under it, in field order, each section before the ones nested in it."""
    yield path, model, many
    for name, field in model.model_fields.items():
        sub = _model_in(field.annotation)
        if sub is not None:
            is_list = get_origin(field.annotation) is list
            yield from sections(sub, f"{path}.{name}" if path else name, is_list)


def _type_name(annotation: Any) -> str:
    """``annotation`` in YAML terms: ``lora | qlora | full``, ``list[str]``, ``path | null``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    if _model_in(annotation) is not None:
        return "section"
    if annotation is Any:
        return "any"
    if annotation is Path:
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def _bounds(metadata: list[Any]) -> str:
    """The numeric limits pydantic enforces (``ge``/``gt``/``le``/``lt``), e.g. ``>= 0, < 0.5``."""
    ops = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
    return ", ".join(
        f"{sign} {getattr(m, attr):g}" for m in metadata for attr, sign in ops if hasattr(m, attr)
    )


def _yaml_value(value: Any) -> str:
    """A default as it would be written in project.yaml (flow style)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if _model_in(field.annotation) is not None and value is not None and value != []:
        return "see below"  # a section: its own table lists its defaults
    return f"`{_yaml_value(value)}`"


def _cell(text: str) -> str:
    # A "|" inside a cell would end it (GitHub reads "\|" as "|", in code spans too); a newline
    # would end the row; "<field>" outside a code span would be taken for an HTML tag and vanish.
    parts = " ".join(text.split()).replace("|", "\\|").split("`")
    return "`".join(p if i % 2 else p.replace("<", "\\<") for i, p in enumerate(parts))


def _table(model: type[Any]) -> list[str]:
    rows = ["| field | type | default | description |", "| --- | --- | --- | --- |"]
    for name, field in model.model_fields.items():
        if field.exclude:
            continue  # set by the loader, not written in the file (ProjectConfig.root)
        kind = _type_name(field.annotation)
        bounds = _bounds(field.metadata)
        kind = f"{kind} ({bounds})" if bounds else kind
        cells = (f"`{name}`", f"`{kind}`", _default(field), field.description or "")
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return rows


def render() -> str:
    """The whole of docs/project-yaml.md."""
    out = [HEADER]
    for path, model, many in sections():
        title = "Top level" if not path else f"`{path}`" + (" (a list of these)" if many else "")
        out += [f"## {title}", ""]
        if model.__doc__:
            out += [inspect.cleandoc(model.__doc__), ""]
        out += [*_table(model), ""]
    out += [
        "## Cross-section rules",
        "",
        "Checked when a project is loaded (`tunewise run`, `eval`, `train`, `gate`, ...); a "
        "project that breaks one is refused with one line naming both fields, before anything "
        "runs.",
        "",
    ]
    for rule in CROSS_SECTION_RULES:
        first, second = rule.fields
        out.append(f"- **`{first}` / `{second}`**: {_cell(rule.summary)}")
    return "\n".join(out) + "\n"


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file beside it: a reader (or an interrupted
    run) sees the old page or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        # mkstemp makes the file private (0600); the page keeps the mode a plain write would give.
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tunewise.config_docs", description="Render docs/project-yaml.md."
    )
    parser.add_argument("--out", type=Path, help="write here (atomically) instead of stdout")
    args = parser.parse_args(argv)
    text = render()
    if args.out is not None:
        write_atomically(args.out, text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
