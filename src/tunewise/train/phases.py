"""What one phase of a training run hands the next: :class:`RunStart` and :class:`Prepared`.

:func:`tunewise.train.trainer.train` runs its phases in order; the run directory's checks
(:mod:`tunewise.train.record`), the callbacks (:mod:`tunewise.train.callbacks`) and the trainer
all read these records, so they live below all three. Plain dataclasses: the types they name are
imported for type checking only, so importing this module loads no torch or transformers (the
run record imports it on processes that have not loaded them yet).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunewise.baselines.context import ContextBuilder
    from tunewise.config import ProjectConfig
    from tunewise.data.schema import Example
    from tunewise.runtime.models import ModelRef
    from tunewise.train.collate import EncodedDataset, OverlongReport


@dataclass(frozen=True)
class RunStart:
    """The main process's decision about the run directory, shared with every process."""

    run_dir: Path
    train_path: Path
    val_path: Path | None
    resume_from: Path | None = None  # the checkpoint to continue from; None: step 0
    previous: dict[str, Any] | None = None  # run.json of the run being resumed


@dataclass
class Prepared:
    """The tokenizer and the encoded data (:func:`tunewise.train.trainer.setup`), every process."""

    cfg: ProjectConfig
    method: str
    run_dir: Path
    train_path: Path
    val_path: Path | None
    ref: ModelRef
    tokenizer: Any
    train_ds: EncodedDataset
    val_ds: EncodedDataset | None
    val_examples: list[Example]
    reports: dict[str, OverlongReport]
    n_val: int = 0  # validation items encoded; val_ds holds the train.val_loss_items subset
    warnings: list[str] = field(default_factory=list)
    resume_from: Path | None = None
    previous: dict[str, Any] | None = None  # run.json of the run being resumed
    context: ContextBuilder | None = None  # train.context: the retrieval the run trains with
