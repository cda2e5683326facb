"""The registry's plain types: what a version is and which names are safe.

Owns :class:`Version` (one immutable registry version), :class:`EvalRecord` (what a version keeps
of the evaluation that judged it), ``NAME_RE`` and :func:`validate_name`. They sit below
:mod:`tunewise.registry.store` (which writes and reads versions) and
:mod:`tunewise.registry.blobs` (which materialises their files), so both can use them without
importing each other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tunewise.errors import UserError
from tunewise.eval.results import Comparison, EvalSummary, Verdict
from tunewise.rundir import RunDir

# Names and aliases become folder names under the registry: a short, safe charset only. Matched
# with fullmatch and \A...\Z: ``$`` would also match before a final newline ("tt\n").
NAME_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")


@dataclass
class EvalRecord:
    """What a version keeps of the evaluation that judged it (all optional but the folder)."""

    eval_dir: str
    comparison: Comparison | None = None
    summary: EvalSummary | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"eval_dir": self.eval_dir}
        if self.comparison is not None:
            out["comparison"] = self.comparison.to_dict()
        if self.summary is not None:
            out["summary"] = self.summary.to_dict()
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> EvalRecord:
        comparison, summary = raw.get("comparison"), raw.get("summary")
        return cls(
            eval_dir=str(raw["eval_dir"]),
            comparison=None if comparison is None else Comparison.from_dict(comparison),
            summary=None if summary is None else EvalSummary.from_dict(summary),
        )


@dataclass
class Version:
    """One immutable registry version. ``path`` is set (verified files) once resolved for use."""

    name: str
    version: int
    created_at: float
    kind: str  # "lora" | "full"
    source_run: str
    base_model: str | None
    base_path: str | None
    base_weight_hash: str
    data_hashes: dict[str, Any]
    config: dict[str, Any]
    eval: EvalRecord | None
    verdict: Verdict | None
    ship: bool | None
    files: dict[str, str]  # relative path -> sha256
    aliases: list[str] = field(default_factory=list)
    path: Path | None = None

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def weights_dir(self) -> Path:
        """Directory to hand to PEFT (LoRA) or transformers (full)."""
        assert self.path is not None, "resolve the version first"
        # a version's files keep their run names, so its folder is laid out as a run directory
        return RunDir(self.path).model_dir if self.kind == "full" else self.path

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["eval"] = self.eval.to_dict() if self.eval is not None else None
        d["verdict"] = self.verdict.to_dict() if self.verdict is not None else None
        d["path"] = str(self.path) if self.path else None
        return d


def validate_name(name: str, what: str = "name") -> str:
    """Refuse anything but a short safe name: no separators, no ``..``, no NUL, no absolute path,
    no control character (a trailing newline included)."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or ".." in name:
        raise UserError(
            f"invalid {what} {name!r}: use 1-64 letters, digits, '_', '-', '.' "
            "(starting with a letter or digit, no '..')"
        )
    return name
