"""What an evaluated item was: its id, its prompt and its reference answer.

The harness ids items by content and records the split file it read; the report, the rating page
and the CLI read prompts and references back from there, so eval.json need not carry them. This
module is the one owner of that lookup; it imports nothing from the report or the rating app,
which both use it.
"""

from __future__ import annotations

import functools
from pathlib import Path

from tunewise.data.schema import Example, load_examples
from tunewise.errors import UserError
from tunewise.eval.results import EvalRun, ItemResult
from tunewise.fsio import sha256_file


def item_ids(items: list[Example]) -> list[str]:
    """Content ids, suffixed when the split holds the same conversation twice."""
    seen: dict[str, int] = {}
    out = []
    for ex in items:
        uid = ex.uid
        n = seen.get(uid, 0)
        seen[uid] = n + 1
        out.append(uid if n == 0 else f"{uid}-{n}")
    return out


def split_lookup(run: EvalRun) -> dict[str, tuple[str, str]]:
    """item_id -> (last user turn, reference answer), read back from the evaluated split file.

    If the file is gone or changed (its hash no longer matches), there is simply nothing to show.
    """
    split_path = run.meta.get("split_path")
    if not isinstance(split_path, str):
        return {}
    return _split_lookup(split_path, run.split_hash)


@functools.lru_cache(maxsize=4)
def _split_lookup(split_path: str, split_hash: str) -> dict[str, tuple[str, str]]:
    if not Path(split_path).is_file():
        return {}
    try:
        if split_hash and sha256_file(split_path) != split_hash:
            return {}
        examples = load_examples(split_path)
        return {
            i: (ex.user_text, ex.target) for i, ex in zip(item_ids(examples), examples, strict=True)
        }
    except (UserError, OSError, ValueError):
        return {}


def item_prompt(item: ItemResult, run: EvalRun | None = None) -> str:
    """The user-visible prompt of an item, wherever the harness put it."""
    meta = item.meta or {}
    for key in ("prompt", "input", "question"):
        if isinstance(meta.get(key), str):
            return meta[key]
    msgs = meta.get("messages")
    if isinstance(msgs, list):
        users = [
            m.get("content", "") for m in msgs if isinstance(m, dict) and m.get("role") == "user"
        ]
        if users:
            return str(users[-1])
    if run is not None:
        prompts = run.meta.get("prompts")
        if isinstance(prompts, dict) and isinstance(prompts.get(item.item_id), str):
            return prompts[item.item_id]
        found = split_lookup(run).get(item.item_id)
        if found:
            return found[0]
    return ""


def item_reference(item: ItemResult, run: EvalRun | None = None) -> str:
    """The reference answer of an item: from its meta, else the split file, else its gold label."""
    meta = item.meta or {}
    for key in ("reference", "target", "expected"):
        if isinstance(meta.get(key), str):
            return meta[key]
    if run is not None:
        found = split_lookup(run).get(item.item_id)
        if found:
            return found[1]
    return item.gold or ""
