"""``ProjectConfig``: the whole ``project.yaml``, one section per stage of the ladder.

Its validators resolve paths against the file's folder, fill in a tools task's defaults and, when
:func:`tunewise.config.load.load_project` asks, hold the file to the cross-section rules
(:mod:`tunewise.config.rules`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from tunewise.config.data import DataConfig
from tunewise.config.eval import TOOLS_GRADERS, TOOLS_PRIMARY, EvalConfig
from tunewise.config.gate import GateConfig
from tunewise.config.model import ModelConfig
from tunewise.config.rules import CROSS_SECTION_RULES, RULES_CONTEXT
from tunewise.config.section import _Section
from tunewise.config.task import TaskConfig
from tunewise.config.tools_file import read_tools
from tunewise.config.tracking import TrackingConfig
from tunewise.config.train import TrainConfig


class ProjectConfig(_Section):
    """project.yaml: the project's name and one section per stage of the ladder."""

    name: str = Field(
        ...,
        description="the project's name: registry entry, run ids and MLflow experiment; letters, "
        "digits, '.', '_', '-' (max 64)",
    )
    task: TaskConfig = Field(TaskConfig(), description="what is asked and how answers look")
    data: DataConfig = Field(..., description="the data files")
    model: ModelConfig = Field(ModelConfig(), description="the base model")
    train: TrainConfig = Field(TrainConfig(), description="how the fine-tune is trained")
    eval: EvalConfig = Field(EvalConfig(), description="what is evaluated and how it is scored")
    gate: GateConfig = Field(GateConfig(), description="when a fine-tune ships")
    tracking: TrackingConfig = Field(
        TrackingConfig(), description="optional experiment tracking (MLflow)"
    )
    root: Path = Field(Path("."), exclude=True, description="folder of project.yaml (set on load)")

    @field_validator("name")
    @classmethod
    def _name_is_safe(cls, v: str) -> str:
        # The name becomes a registry entry and a folder name: no "..", no separators.
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", v) or ".." in v:
            raise ValueError(
                "use letters, digits, '.', '_' or '-' (max 64), starting with a letter or digit, "
                "no '..'"
            )
        return v

    @model_validator(mode="after")
    def _absolute_paths(self) -> ProjectConfig:
        root = self.root
        if isinstance(self.task.tools, str):
            self.task.tools = read_tools(root / self.task.tools)
        if not self.data.train.is_absolute():
            self.data.train = root / self.data.train
        for name in ("val", "test", "docs"):
            given = getattr(self.data, name)
            if given is not None and not given.is_absolute():
                setattr(self.data, name, root / given)
        uri = self.tracking.mlflow.uri
        if uri and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            # SQLAlchemy reads sqlite:///x.db relative to the working directory; a project's
            # paths are relative to its own folder.
            self.tracking.mlflow.uri = "sqlite:///" + str(root / uri.removeprefix("sqlite:///"))
        return self

    @model_validator(mode="after")
    def _tools_defaults(self) -> ProjectConfig:
        # A tools task is scored on its calls: the defaults written for a labels task (label
        # accuracy as the primary metric) would grade nothing. Only what the file leaves unset.
        if self.task.type != "tools":
            return self
        given = self.eval.model_fields_set
        update: dict[str, Any] = {}
        if "graders" not in given:
            update["graders"] = list(TOOLS_GRADERS)
        if "primary_metric" not in given:
            update["primary_metric"] = TOOLS_PRIMARY
        if update:
            self.eval = self.eval.model_copy(update=update)
        return self

    @model_validator(mode="after")
    def _cross_section_rules(self, info: ValidationInfo) -> ProjectConfig:
        # Only a project file being loaded is held to them (see the module docstring).
        if not (info.context or {}).get(RULES_CONTEXT):
            return self
        for rule in CROSS_SECTION_RULES:
            problem = rule.check(self)
            if problem:
                # A custom error keeps pydantic's "Value error, " prefix out of the one line; the
                # message is passed as context so braces in it are not read as placeholders.
                raise PydanticCustomError("cross_section", "{problem}", {"problem": problem})
        return self

    @property
    def work_dir(self) -> Path:
        """Where the ladder writes splits, runs and reports for this project."""
        return self.root / ".tunewise"
