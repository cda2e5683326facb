"""The ``tracking`` section: optional experiment tracking (MLflow) beside tunewise's own files."""

from __future__ import annotations

from pydantic import Field

from tunewise.config.section import _Section


class MlflowConfig(_Section):
    """Where MLflow records runs (optional: pip install 'tunewise[mlflow]')."""

    uri: str | None = Field(
        None,
        description="MLflow tracking URI: http://host:5000, or sqlite:///mlflow.db (relative to "
        "this file); the environment variable TUNEWISE_MLFLOW_URI overrides it",
    )
    experiment: str | None = Field(None, description="experiment name (default: the project name)")


class TrackingConfig(_Section):
    """Experiment tracking beside tunewise's own files."""

    mlflow: MlflowConfig = Field(
        MlflowConfig(),
        description="optional (pip install 'tunewise[mlflow]'): training runs, the ladder's "
        "results and registry aliases mirrored to MLflow",
    )
