"""What serving costs: a frontier API priced per token against a self-hosted GPU priced per hour.

Owned here, below the gate and the advice, because both price a decision with it: the advice's
break-even volume and non-inferiority's "as good, and cheaper per 1,000 requests".
"""

from __future__ import annotations

from dataclasses import dataclass

from tunewise.errors import UserError


@dataclass
class CostInputs:
    requests_per_day: float
    tokens_per_request: float
    api_price_per_mtok: float  # frontier API, USD per million tokens (input + output blended)
    gpu_price_per_hour: float  # USD per hour for the GPU serving the small fine-tuned model
    gpu_hours_per_day: float = 24.0


@dataclass
class CostEstimate:
    api_cost_per_day: float
    gpu_cost_per_day: float
    break_even_requests_per_day: float
    cheaper: str  # "api" | "self-hosted"


def cost_estimate(c: CostInputs) -> CostEstimate:
    """Daily cost of a frontier API against a self-hosted GPU, and the break-even volume."""
    if c.tokens_per_request <= 0 or c.api_price_per_mtok <= 0:
        raise UserError("cost: tokens per request and API price must be positive")
    per_request = c.tokens_per_request * c.api_price_per_mtok / 1e6
    api = c.requests_per_day * per_request
    gpu = c.gpu_price_per_hour * c.gpu_hours_per_day
    break_even = gpu / per_request
    return CostEstimate(
        api_cost_per_day=api,
        gpu_cost_per_day=gpu,
        break_even_requests_per_day=break_even,
        cheaper="self-hosted" if gpu < api else "api",
    )


def cost_per_1000(c: CostInputs) -> tuple[float, float]:
    """(self-hosted, API) USD per 1,000 requests, from the same model as :func:`cost_estimate`:
    the GPU's daily cost spread over the day's requests, and the API's tokens at its price."""
    est = cost_estimate(c)
    if c.requests_per_day <= 0:
        raise UserError("cost: requests per day must be positive")
    self_hosted = est.gpu_cost_per_day / c.requests_per_day * 1000
    return self_hosted, est.api_cost_per_day / c.requests_per_day * 1000
