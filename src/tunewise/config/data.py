"""The ``data`` section (and ``data.split``): the project's files and how train is split."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from tunewise.config.section import _Section


class SplitConfig(_Section):
    """How train is carved into train / validation / sealed test when no own file is given."""

    val: float = Field(
        0.1,
        ge=0.0,
        lt=0.5,
        description="fraction held out for validation (at least 10% is advised)",
    )
    test: float = Field(
        0.1,
        ge=0.0,
        lt=0.5,
        description="fraction sealed for the final test (`tunewise run --final`, used once)",
    )
    seed: int = Field(
        0,
        description="seeds the split's shuffle, and the fewshot rung's random selection: the same "
        "seed gives the same splits and shots on every machine",
    )


class DataConfig(_Section):
    """The project's data files; paths are relative to project.yaml's folder."""

    train: Path = Field(..., description="chat JSONL: one {'messages': [...]} per line")
    val: Path | None = Field(
        None,
        description="your own validation file (chat JSONL); when set, train is not re-split for it",
    )
    test: Path | None = Field(
        None,
        description="your own test file (chat JSONL), sealed like a test split tunewise makes; "
        "when set, train is not re-split for it",
    )
    docs: Path | None = Field(None, description="folder of .md/.txt documents for the RAG rung")
    split: SplitConfig = Field(
        SplitConfig(), description="fractions carved from train for val/test files not given"
    )
    max_len: int = Field(
        512,
        ge=16,
        description="token budget per example; longer ones are handled by train.overlong",
    )
