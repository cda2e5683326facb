"""The ``prompt`` rung: the base model with the project's system prompt, zero-shot.

Every candidate starts from the same conversation: the project's ``task.system_prompt`` (when set,
it replaces any system turn in the data, so all candidates see the same instructions) followed by
the item's turns up to, not including, the answer. Few-shot and RAG add to this; the fine-tune gets
exactly this.
"""

from __future__ import annotations

from tunewise.config import ProjectConfig
from tunewise.data.schema import Example
from tunewise.fsio import sha256_text


def base_messages(example: Example, system_prompt: str = "") -> list[dict[str, str]]:
    """The item's prompt turns with ``system_prompt`` as the system turn (kept from data when
    empty)."""
    return [dict(m) for m in example.with_system(system_prompt).prompt_messages]


def build_messages(cfg: ProjectConfig, example: Example) -> list[dict[str, str]]:
    """The zero-shot prompt for one item."""
    return base_messages(example, cfg.task.system_prompt)


def prompt_hash(cfg: ProjectConfig) -> str:
    """Version of the prompt rung: changes whenever the system prompt does."""
    return system_prompt_hash(cfg.task.system_prompt)


def system_prompt_hash(system_prompt: str) -> str:
    """The same version string from the system prompt alone (a release keeps only that)."""
    return sha256_text("prompt:v1\n" + system_prompt)[:12]


def prompt_notes(cfg: ProjectConfig, labels: dict[str, list[str]] | None) -> list[str]:
    """Advice about the prompt rung, e.g. a labels task whose prompt never names its labels."""
    notes: list[str] = []
    sp = cfg.task.system_prompt
    if not sp:
        notes.append(
            "task.system_prompt is empty: the prompt baseline runs with the model's default "
            "system prompt"
        )
    elif cfg.task.type == "labels" and labels:
        missing = [v for vals in labels.values() for v in vals if v.lower() not in sp.lower()]
        if missing:
            notes.append(
                f"task.system_prompt does not name {len(missing)} allowed label(s) (e.g. "
                f"{missing[0]!r}): "
                "the zero-shot baseline cannot guess them; list them for a fair baseline"
            )
    return notes
