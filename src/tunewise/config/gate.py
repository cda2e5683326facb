"""The ``gate`` section (with ``gate.cost``): whether a fine-tune ships, and the release rule's
cost order."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tunewise.config.section import _Section


class CostConfig(_Section):
    """The advisor's cost model, for the cost per 1,000 requests of a non-inferiority verdict."""

    requests_per_day: float = Field(..., gt=0, description="requests served per day")
    tokens_per_request: float = Field(..., gt=0, description="input + output tokens")
    api_price_per_mtok: float = Field(
        ..., gt=0, description="USD per million tokens of the API reference (blended)"
    )
    gpu_price_per_hour: float = Field(..., gt=0, description="USD per hour of the serving GPU")
    gpu_hours_per_day: float = Field(
        24.0,
        gt=0,
        le=24,
        description="hours a day the serving GPU is paid for (24: always on)",
    )


# The release rule's default cost order: no LLM first (TF-IDF needs no embedding model; kNN and the
# probe embed each request), then the base model with a growing prompt, then a trained adapter.
RELEASE_ORDER: tuple[str, ...] = ("tfidf", "knn", "probe", "prompt", "fewshot", "rag", "finetuned")
ReleaseEntry = Literal["tfidf", "knn", "probe", "prompt", "fewshot", "rag", "finetuned"]


class GateConfig(_Section):
    """Whether a fine-tune ships: paired tests on the primary metric, margins and guards."""

    mode: Literal["superiority", "non_inferiority"] = Field(
        "superiority",
        description="superiority: beat every baseline; non_inferiority: also be not worse than "
        "gate.reference by more than gate.margin (the cheaper-model case)",
    )
    reference: str | None = Field(
        None,
        description="non_inferiority: the candidate not to fall behind, e.g. an eval.external "
        "name (a frontier API)",
    )
    margin: float = Field(
        0.02, ge=0, lt=1, description="non_inferiority: the largest drop that is 'not worse'"
    )
    cost: CostConfig | None = Field(
        None, description="cost model for the cost per 1,000 requests in the verdict"
    )
    regression_margin: float = Field(
        0.01,
        ge=0,
        lt=1,
        description="a new version may trail the production version by at most this much "
        "(one-sided paired test on the same items)",
    )
    min_judge_kappa: float = Field(
        0.4,
        ge=-1,
        le=1,
        description="refuse a judge-scored primary metric when the judge's Cohen's kappa with "
        "human ratings (where they exist) is below this",
    )
    alpha: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="significance level of each paired test (McNemar for 0/1 metrics, paired "
        "bootstrap otherwise); every baseline must be beaten, so no multiplicity correction",
    )
    delta: float = Field(
        0.02, ge=0, description="minimum margin on the primary metric over every baseline"
    )
    baselines: list[str] = Field(
        ["prompt", "fewshot", "rag"],
        description="candidates a fine-tune must beat on the primary metric (p < alpha, margin "
        ">= delta); each must be evaluated. Default: the ladder's three cheaper rungs; add knn, "
        "tfidf, probe or an external name to hold it to those too",
    )
    guards: dict[str, float] = Field(
        default_factory=lambda: {"format_compliance": 0.02},
        description=(
            "metric -> tolerated drop versus the best baseline; format compliance is always a guard"
        ),
    )
    release_order: list[ReleaseEntry] = Field(
        default_factory=lambda: list(RELEASE_ORDER),
        description="the release rule's cost order, cheapest to serve first: `tunewise run` "
        "registers and promotes the first candidate that nothing later in the list clearly beats "
        "on the primary metric (p < alpha, margin >= delta) or on a guard; 'finetuned' stands for "
        "every fine-tune (which must also pass its gate verdict). Leave an entry out to never "
        "release it",
        min_length=1,
    )

    @model_validator(mode="after")
    def _reference_for_non_inferiority(self) -> GateConfig:
        if self.mode == "non_inferiority" and not self.reference:
            raise ValueError("gate.mode non_inferiority needs gate.reference (a candidate name)")
        return self
