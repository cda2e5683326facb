"""Reading user files that may be broken or hostile, and checking where output may go.

Everything here turns a way that input can break Python's readers into a
:class:`~tunewise.errors.DataError` naming the file, the line and the field, or a
:class:`~tunewise.errors.UserError` naming the path:

* :func:`require_file`: a path that is missing, a directory, a FIFO, a socket or a device is
  reported as what it is. It is checked with ``stat``, never opened: opening a FIFO blocks until
  some other process writes to it.
* :func:`read_text`: a whole file decoded with an explicit encoding; an undecodable byte names its
  line and byte offset, and the options that would read it (``--encoding``, ``--errors``). Nothing
  is fixed silently.
* :func:`loads`: ``json.loads`` for untrusted text. Nesting too deep for the parser (or deeper than
  :data:`MAX_DEPTH`), integers longer than Python will convert, and lone surrogates (``"\\ud800"``,
  which JSON allows but UTF-8 cannot encode, so the file could never be written back) all become a
  :class:`JSONProblem` with the field where they were found.
* :func:`check_output_file` and :func:`check_output_dir`: where ``data convert`` and ``data split``
  may write, decided before anything is read or written.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import stat
import sys
from pathlib import Path
from typing import Any

from tunewise.errors import DataError, UserError

# Chat records are three levels deep; metadata beside them rarely goes past ten. A bound this far
# below Python's recursion limit keeps every later step (repr, json.dumps, str) from recursing out.
MAX_DEPTH = 100
ERRORS = ("strict", "replace", "ignore")  # what --errors accepts; none can produce surrogates
_SURROGATE = re.compile("[\ud800-\udfff]")
# A lone surrogate can only come from a \uXXXX escape: text decoded from UTF-8 never holds one.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
_KINDS = (
    (stat.S_ISDIR, "is a directory, not a file"),
    (stat.S_ISFIFO, "is a FIFO (named pipe), not a regular file; save the data to a file first"),
    (stat.S_ISSOCK, "is a socket, not a regular file"),
    (stat.S_ISCHR, "is a character device, not a regular file"),
    (stat.S_ISBLK, "is a block device, not a regular file"),
)


def require_file(path: Path) -> None:
    """A ``DataError`` unless ``path`` is a regular file (symlinks followed)."""
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise DataError(str(path), None, "(file)", "not found") from None
    except OSError as exc:
        raise DataError(str(path), None, "(file)", f"cannot read: {exc.strerror}") from None
    for is_kind, what in _KINDS:
        if is_kind(mode):
            raise DataError(str(path), None, "(file)", what)


def check_encoding(encoding: str, errors: str) -> None:
    """A ``UserError`` unless ``encoding`` is a text codec and ``errors`` one of :data:`ERRORS`."""
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise UserError(f"--encoding {encoding!r}: unknown encoding") from None
    try:
        b"".decode(encoding)
    except LookupError:  # base64, rot13, zip: codecs, but not ones that decode text
        raise UserError(f"--encoding {encoding!r}: not a text encoding") from None
    if errors not in ERRORS:
        raise UserError(f"--errors {errors!r}: use one of {', '.join(ERRORS)}")


def read_text(path: Path, encoding: str = "utf-8", errors: str = "strict") -> str:
    """The decoded text of ``path``, without a leading byte-order mark."""
    check_encoding(encoding, errors)
    require_file(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(str(path), None, "(file)", f"cannot read: {exc.strerror}") from None
    try:
        text = data.decode(encoding, errors)
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(
            str(path),
            line,
            "(file)",
            f"not valid {encoding}: byte {exc.start - line_start + 1} of the line "
            f"(offset {exc.start} in the file) is 0x{data[exc.start]:02x}; save the file as "
            f"UTF-8, or name its encoding with --encoding (e.g. cp1252), or pass --errors replace",
        ) from None
    return text.removeprefix("\ufeff")


class JSONProblem(ValueError):
    """Untrusted JSON that cannot be used; ``line`` within the text when known."""

    def __init__(self, message: str, line: int | None = None, field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.field = field


def loads(text: str) -> Any:
    """``json.loads(text)``, or a :class:`JSONProblem` for any way hostile text breaks it."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise JSONProblem(f"not valid JSON: {exc.msg} at column {exc.colno}", exc.lineno) from None
    except RecursionError:
        raise JSONProblem(f"JSON nested more than {MAX_DEPTH} levels deep") from None
    except ValueError:  # the only other one: an integer longer than Python converts
        limit = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else 4300
        raise JSONProblem(f"a number with more than {limit} digits") from None
    if text.count("[") + text.count("{") > MAX_DEPTH or _SURROGATE_ESCAPE.search(text):
        _check_value(value)
    return value


def _check_value(value: Any) -> None:
    """Walk ``value`` (iteratively: it may be deep) for over-deep nesting and lone surrogates."""
    stack: list[tuple[Any, int, str]] = [(value, 0, "")]
    while stack:
        node, depth, where = stack.pop()
        if depth > MAX_DEPTH:
            short = where if len(where) <= 60 else where[:57] + "..."
            raise JSONProblem(f"JSON nested more than {MAX_DEPTH} levels deep", field=short)
        if isinstance(node, str):
            _check_string(node, where)
        elif isinstance(node, dict):
            for key, child in node.items():
                at = _field(where, key)
                _check_string(key, at)
                stack.append((child, depth + 1, at))
        elif isinstance(node, list):
            stack.extend((child, depth + 1, f"{where}[{i}]") for i, child in enumerate(node))


def _field(where: str, key: str) -> str:
    """``where.key``, or ``where["key"]`` (JSON-escaped, so ASCII on one line) for an odd key."""
    if _PLAIN_KEY.fullmatch(key):
        return f"{where}.{key}" if where else key
    return f"{where}[{json.dumps(key)}]"


def _check_string(text: str, where: str) -> None:
    found = _SURROGATE.search(text)
    if found:
        raise JSONProblem(
            f"lone surrogate \\u{ord(found.group()):04x} at character {found.start() + 1}: "
            "not a character, and not writable as UTF-8",
            field=where,
        )


def check_cli_text(value: str | None, option: str) -> None:
    """Command-line bytes that are not UTF-8 reach Python as lone surrogates (PEP 383)."""
    if value and _SURROGATE.search(value):
        raise UserError(f"{option}: not valid UTF-8 text")


def _first_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (symlinks followed)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_file(out: Path, src: Path) -> None:
    """``out`` may be written: not a directory, not ``src`` itself, not under a file."""
    if out.is_dir():
        raise UserError(f"{out}: is a directory; name the file to write (e.g. {out}/data.jsonl)")
    same = out.resolve() == src.resolve()
    if not same and out.exists():
        same = os.path.samefile(out, src)  # a hard link
    if same:
        raise UserError(f"{out}: is the source file itself; write the chat JSONL to another file")
    if out.exists() and not out.is_file():
        raise UserError(f"{out}: exists and is not a regular file")
    base = _first_existing(out.parent)
    if not base.is_dir():
        raise UserError(f"{out}: cannot write under {base}: it is a file, not a folder")


def check_output_dir(out_dir: Path, replaceable: set[str]) -> None:
    """``out_dir`` may be replaced whole: new, or a folder holding only ``replaceable`` names."""
    target = Path(os.path.abspath(out_dir))
    base = _first_existing(target)
    if not base.is_dir():
        if base == target:
            raise UserError(f"{out_dir}: is a file, not a folder")
        raise UserError(f"{out_dir}: cannot write under {base}: it is a file, not a folder")
    if base != target:
        return  # a new folder
    # Leftovers of an interrupted atomic write start with a dot and end in .tmp.
    others = sorted(
        p.name
        for p in base.iterdir()
        if p.name not in replaceable and not (p.name.startswith(".") and p.name.endswith(".tmp"))
    )
    if others:
        shown = ", ".join(others[:5]) + (f" (+{len(others) - 5} more)" if len(others) > 5 else "")
        raise UserError(
            f"{out_dir}: already holds other files ({shown}); the split folder is replaced "
            "whole, so give --out a new or empty folder"
        )
