"""``project.yaml``: every default and every validation in one place.

A project names its data, its task and how each rung of the ladder runs. Paths in the file are
relative to the file's own folder. Field descriptions double as documentation:
``python -m tunewise.config_docs`` renders them, with the cross-section rules, to
``docs/project-yaml.md``.

Rules that span two sections (``gate.baselines`` must be evaluated, ``eval.candidates`` may only
name context-trained runs the ladder trains, ...) are :data:`CROSS_SECTION_RULES`. They are checked
when a project file is loaded (:func:`load_project`), not when a run's recorded config is read back
(``tunewise train --resume``): a run recorded before a rule existed stays resumable.

One module a job, and this package's face re-exports their public names:

* :mod:`~tunewise.config.section`: what every section shares (unknown keys, NaN, huge numbers);
* one module per section: :mod:`~tunewise.config.task`, :mod:`~tunewise.config.data`,
  :mod:`~tunewise.config.model`, :mod:`~tunewise.config.train`, :mod:`~tunewise.config.eval`,
  :mod:`~tunewise.config.gate`, :mod:`~tunewise.config.tracking`, each with the vocabulary its
  fields are validated against (device names, training methods, tools metrics, release order);
* :mod:`~tunewise.config.project`: :class:`ProjectConfig`, the sections together;
* :mod:`~tunewise.config.rules`: the cross-section rules;
* :mod:`~tunewise.config.load`: reading the file (with ``--set`` overrides) and dumping it back;
* :mod:`~tunewise.config.tools_file`: ``task.tools`` given as a JSON file.
"""

from tunewise.config.data import DataConfig, SplitConfig
from tunewise.config.eval import (
    TOOL_ERROR_RATES,
    TOOL_METRICS,
    TOOLS_GRADERS,
    TOOLS_PRIMARY,
    EvalConfig,
    ExternalConfig,
    FewShotConfig,
    RagConfig,
)
from tunewise.config.gate import RELEASE_ORDER, CostConfig, GateConfig, ReleaseEntry
from tunewise.config.load import apply_override, dump_project, load_project
from tunewise.config.model import DEVICE_HELP, DEVICE_PATTERN, ModelConfig
from tunewise.config.project import ProjectConfig
from tunewise.config.rules import CROSS_SECTION_RULES, RULES_CONTEXT, CrossSectionRule
from tunewise.config.section import MAX_MAGNITUDE
from tunewise.config.task import TaskConfig
from tunewise.config.tracking import MlflowConfig, TrackingConfig
from tunewise.config.train import LoraTarget, Method, TrainConfig

__all__ = [
    "CROSS_SECTION_RULES",
    "DEVICE_HELP",
    "DEVICE_PATTERN",
    "MAX_MAGNITUDE",
    "RELEASE_ORDER",
    "RULES_CONTEXT",
    "TOOLS_GRADERS",
    "TOOLS_PRIMARY",
    "TOOL_ERROR_RATES",
    "TOOL_METRICS",
    "CostConfig",
    "CrossSectionRule",
    "DataConfig",
    "EvalConfig",
    "ExternalConfig",
    "FewShotConfig",
    "GateConfig",
    "LoraTarget",
    "Method",
    "MlflowConfig",
    "ModelConfig",
    "ProjectConfig",
    "RagConfig",
    "ReleaseEntry",
    "SplitConfig",
    "TaskConfig",
    "TrackingConfig",
    "TrainConfig",
    "apply_override",
    "dump_project",
    "load_project",
]
