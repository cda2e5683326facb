"""Non-inferiority: the one-sided margin tests (exact size, simulated false-ship rate, power) and
the decision, on constructed comparisons."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import gammaln

from tunewise.config import GateConfig
from tunewise.decide.decisions import decide_non_inferiority
from tunewise.decide.gate import decide
from tunewise.errors import UserError
from tunewise.eval import margin as mg
from tunewise.eval.results import (
    CandidateResult,
    Comparison,
    EvalRun,
    ItemResult,
    MarginTest,
    MetricEstimate,
    PairedTest,
)

ALPHA = 0.05


# ----------------------------------------------------------------------------- the statistics
def _exact_size(n: int, m: float, alpha: float, loss_rates: np.ndarray) -> float:
    """Largest probability, over the disagreement rate, that the rule claims non-inferiority when
    the true difference is exactly -m: every (wins, losses) outcome enumerated, no sampling."""
    w, ll = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    ok = w + ll <= n
    w, ll = w[ok], ll[ok]
    reject = np.array(
        [
            mg.tango_z(float(a), float(b), n, -m) > mg.sps.norm.isf(alpha)
            for a, b in zip(w, ll, strict=True)
        ]
    )
    w, ll = w[reject].astype(float), ll[reject].astype(float)
    rest = n - w - ll
    comb = gammaln(n + 1) - gammaln(w + 1) - gammaln(ll + 1) - gammaln(rest + 1)
    worst = 0.0
    for q in loss_rates:  # P(loss) = q, P(win) = q - m: the difference sits on the margin
        p_win, p_tie = q - m, 1 - 2 * q + m
        logp = comb + w * np.log(p_win) + ll * np.log(q) + rest * np.log(p_tie)
        worst = max(worst, float(np.exp(logp).sum()))
    return worst


@pytest.mark.parametrize("n", [8, 25, 60, 150])
@pytest.mark.parametrize("m", [0.0, 0.02, 0.1])
def test_exact_false_claim_rate_is_at_most_alpha_on_the_margin(n: int, m: float) -> None:
    rates = np.linspace(m + 1e-4, (1 + m) / 2 - 1e-4, 60)
    size = _exact_size(n, m, ALPHA, rates)
    assert size <= ALPHA
    assert size > 0.25 * ALPHA or n < 30  # not so conservative that it never claims anything


def test_the_bound_and_the_p_value_tell_the_same_story() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(rng.integers(5, 300))
        wins = int(rng.integers(0, n + 1))
        losses = int(rng.integers(0, n - wins + 1))
        m = float(rng.choice([0.0, 0.01, 0.05]))
        cand = np.array([1] * wins + [0] * losses + [1] * (n - wins - losses), dtype=float)
        ref = np.array([0] * wins + [1] * losses + [1] * (n - wins - losses), dtype=float)
        diff, lower, p, w, lo = mg.binary_margin(cand, ref, m, ALPHA)
        assert (w, lo) == (wins, losses) and diff == pytest.approx((wins - losses) / n)
        assert lower <= diff + 1e-9
        if abs(lower + m) > 1e-6:  # away from the boundary the two criteria agree exactly
            assert (p < ALPHA) == (lower > -m)


def _run(cols: dict[str, np.ndarray], kind: dict[str, str] | None = None, metric="accuracy"):
    n = len(next(iter(cols.values())))
    ids = [f"i{k}" for k in range(n)]
    cands = [
        CandidateResult(
            name=name,
            kind=(kind or {}).get(name, "finetuned"),
            items=[
                ItemResult(item_id=ids[k], output="", scores={metric: float(v)})
                for k, v in enumerate(vals)
            ],
        )
        for name, vals in cols.items()
    ]
    return EvalRun("p", "val", "h", metric, ids, cands)


def _paired_binary(rng, n: int, p_win: float, p_loss: float, base: float = 0.8):
    """Reference right with prob ``base``; the candidate flips wins/losses at the given rates."""
    u = rng.random(n)
    ref = (rng.random(n) < base).astype(float)
    cand = ref.copy()
    # wins need ref == 0, losses ref == 1: rescale the rates to those strata
    cand[(ref == 0) & (u < p_win / (1 - base))] = 1.0
    cand[(ref == 1) & (u < p_loss / base)] = 0.0
    return cand, ref


def test_simulated_false_ship_rate_on_the_margin_through_the_decision() -> None:
    """2,000 simulated evaluations whose true difference is exactly -margin: the gate in
    non-inferiority mode ships at most alpha of them."""
    rng = np.random.default_rng(20261129)
    m, n, reps = 0.05, 120, 2000
    cfg = GateConfig(mode="non_inferiority", reference="api", margin=m, baselines=[])
    ships = 0
    for _ in range(reps):
        cand, ref = _paired_binary(rng, n, p_win=0.05, p_loss=0.10)  # true diff -0.05
        run = _run({"ft": cand, "api": ref}, kind={"api": "external"})
        comp = Comparison("accuracy", {c: {} for c in ("ft", "api")}, [])
        comp.margin_tests = mg.margin_tests(run, ["ft"], "api", m, ALPHA)
        ships += decide(comp, "ft", cfg).ship
    assert ships / reps <= ALPHA
    assert ships > 0  # it is a test, not a refusal


def test_power_when_the_candidate_is_truly_as_good() -> None:
    rng = np.random.default_rng(7)
    ships = 0
    for _ in range(300):
        cand, ref = _paired_binary(rng, 400, p_win=0.06, p_loss=0.06)  # true diff 0
        t = mg.margin_test(_run({"ft": cand, "api": ref}), "ft", "api", "accuracy", 0.05, ALPHA)
        ships += t.p_value < ALPHA
    assert ships / 300 > 0.8


def test_simulated_continuous_judge_scores_on_the_margin() -> None:
    """Judge scores (continuous, paired t): the false-claim rate at the margin is nominal; 4,000
    simulated sets land within Monte Carlo error of alpha (3 standard errors: 0.0103)."""
    rng = np.random.default_rng(11)
    m, n, reps = 0.05, 80, 4000
    claims = 0
    for _ in range(reps):
        item = rng.random(n)  # shared item difficulty: the pairing is what the test exploits
        ref = np.clip(0.3 + 0.5 * item + rng.normal(0, 0.1, n), 0, 1)
        cand = np.clip(ref - m + rng.normal(0, 0.15, n), -1, 2)  # not clipped to [0, 1]: exact -m
        _, _, p = mg.continuous_margin(cand - ref, m, ALPHA)
        claims += p < ALPHA
    assert claims / reps <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / reps)


def test_margin_test_reads_the_run_and_refuses_what_it_cannot_test() -> None:
    run = _run({"ft": np.array([1, 1, 0, 1.0]), "api": np.array([1, 0, 0, 1.0])})
    t = mg.margin_test(run, "ft", "api", "accuracy", 0.02, ALPHA)
    assert (t.n, t.wins, t.losses, t.test) == (4, 1, 0, "tango-score-cc")
    assert (
        t.candidate_value == 0.75 and t.reference_value == 0.5 and t.reference_kind == "finetuned"
    )
    with pytest.raises(UserError, match="per-item metric"):
        mg.margin_test(run, "ft", "api", "macro_f1", 0.02, ALPHA)
    with pytest.raises(UserError, match="'gpt' is not in the evaluation"):
        mg.margin_test(run, "ft", "gpt", "accuracy", 0.02, ALPHA)
    assert mg.margin_tests(run, ["ft", "api", "other"], "api", 0.02, ALPHA)[0].candidate == "ft"
    assert mg.margin_tests(run, ["ft"], "missing", 0.02, ALPHA) == []
    judge = _run(
        {"ft": np.array([0.5, 0.75, np.nan]), "api": np.array([0.5, 0.5, 1.0])}, metric="judge"
    )
    tj = mg.margin_test(judge, "ft", "api", "judge", 0.1, ALPHA)
    assert tj.test == "paired-t" and tj.n == 2  # the unscored item drops out of the pair


def test_paired_differences_with_a_constant_nonzero_shift_show_nothing() -> None:
    """Every item moved by the same nonzero amount: a paired t test has no variance to work with,
    and zero sample spread is not proof of non-inferiority."""
    diff, lower, p = mg.continuous_margin(np.array([-0.25, -0.25]), 0.01, ALPHA)
    assert diff == -0.25 and math.isnan(lower) and math.isnan(p)
    judge = _run({"ft": np.array([0.25, 0.5]), "api": np.array([0.5, 0.75])}, metric="judge")
    t = mg.margin_test(judge, "ft", "api", "judge", 0.01, ALPHA)
    v = decide(_comp([t]), "ft", NI.model_copy(update={"margin": 0.01}))
    assert not v.ship
    assert "every paired difference is -0.250" in v.reasons[0].reason, v.reasons[0].reason


def test_no_difference_on_any_item_is_bounded_by_the_items_that_could_differ() -> None:
    """A retrained model that answers like production on every item (seen on DART: chrF equal on
    all 100): the bound is the Clopper-Pearson limit on how many items could differ, each losing
    at most 1, so 100 tied items do not show a 0.01 margin and 300 do; the reason says so and
    counts the identical answers instead of saying "cannot bound it"."""
    m = 0.01
    need = mg.items_to_show_tie(m, ALPHA, "no-difference")
    assert need == 299  # (1 - 0.01) ** 299 < 0.05 <= (1 - 0.01) ** 298
    for n, shown in ((100, False), (need, True)):
        scores = np.linspace(0.2, 0.9, n)
        run = _run({"ft": scores, "api": scores.copy()}, metric="chrf")
        t = mg.margin_test(run, "ft", "api", "chrf", m, ALPHA)
        assert t.test == "no-difference" and t.diff == 0.0 and t.same_outputs == n
        assert t.lower_bound == pytest.approx(-(1 - ALPHA ** (1 / n)))
        assert t.p_value == pytest.approx((1 - m) ** n)
        v = decide(_comp([t]), "ft", NI.model_copy(update={"margin": m}))
        assert v.ship is shown, v.reasons[0].reason
        if not shown:
            reason = v.reasons[0].reason
            assert "cannot bound" not in reason
            assert "scored the same as api on every item with the very same answer" in reason
            assert f"about {need} would" in reason


def test_the_size_of_the_no_difference_bound_holds_at_the_margin() -> None:
    """Exact: a true drop of exactly m needs items that differ at a rate r >= m (each loses <= 1);
    the chance that none of n differs is (1 - r) ** n <= p, so claiming when p < alpha is right."""
    for n in (20, 100, 299, 700):
        for m in (0.01, 0.02, 0.05):
            _, p = mg.no_difference_bound(n, m, ALPHA)
            for r in (m, 1.5 * m, 3 * m):
                assert (1 - r) ** n <= p + 1e-15
            claimed = p < ALPHA
            assert not claimed or (1 - m) ** n < ALPHA


def test_items_to_show_a_tie_agree_with_the_tango_test() -> None:
    crit = mg.sps.norm.isf(ALPHA)
    for m in (0.01, 0.02, 0.05):
        n = mg.items_to_show_tie(m, ALPHA, "tango-score-cc")
        assert mg.tango_z(0, 0, n, -m) > crit >= mg.tango_z(0, 0, n - 1, -m)


# ----------------------------------------------------------------------------- the decision
def _mt(
    diff: float, lower: float, p: float, n: int = 200, kind: str = "external", **kw
) -> MarginTest:
    base = {
        "candidate": "ft",
        "reference": "api",
        "metric": "accuracy",
        "margin": 0.02,
        "alpha": ALPHA,
        "candidate_value": 0.80 + diff,
        "reference_value": 0.80,
        "diff": diff,
        "lower_bound": lower,
        "p_value": p,
        "test": "tango-score-cc",
        "n": n,
        "reference_kind": kind,
    }
    return MarginTest(**(base | kw))


def _comp(tests: list[MarginTest], with_prompt: float | None = None, fmt=None) -> Comparison:
    def est(v: float) -> MetricEstimate:
        return MetricEstimate(v, v, v, 200)

    metrics = {"ft": {"accuracy": est(0.8)}, "api": {"accuracy": est(0.8)}}
    pairs = []
    if fmt is not None:
        metrics["ft"]["format_compliance"] = est(fmt)
        metrics["api"]["format_compliance"] = est(1.0)
    if with_prompt is not None:
        metrics["prompt"] = {"accuracy": est(0.8 - with_prompt)}
        pairs.append(
            PairedTest(
                "ft",
                "prompt",
                "accuracy",
                0.8,
                0.8 - with_prompt,
                with_prompt,
                with_prompt - 0.05,
                with_prompt + 0.05,
                0.001 if with_prompt > 0.1 else 0.5,
                "mcnemar-exact",
                200,
            )
        )
    return Comparison("accuracy", metrics, pairs, margin_tests=tests)


NI = GateConfig(mode="non_inferiority", reference="api", margin=0.02, baselines=[])


def test_ships_when_the_bound_clears_the_margin_and_states_margin_bound_and_cost() -> None:
    cost = {
        "requests_per_day": 10_000,
        "tokens_per_request": 500,
        "api_price_per_mtok": 2.0,
        "gpu_price_per_hour": 1.0,
    }
    cfg = GateConfig.model_validate(NI.model_dump() | {"cost": cost})
    v = decide(_comp([_mt(0.0, -0.015, 0.01)]), "ft", cfg)
    assert v.ship
    r = v.reasons[0]
    assert r.passed and "margin 0.02" in r.reason and "one-sided 95% lower bound -0.015" in r.reason
    # GPU $24/day over 10,000 requests = $2.40 per 1,000; API 500 tokens * $2/M = $1.00 per 1,000
    assert "ft $2.40 (self-hosted) vs api $1.00 (API): not cheaper" in v.summary
    assert v.summary.startswith("SHIP ft: not worse than api on accuracy by more than 0.02")


def test_a_tie_on_a_tiny_sample_is_not_non_inferiority() -> None:
    v = decide(_comp([_mt(0.0, -0.45, 0.6, n=6)]), "ft", NI)
    assert not v.ship
    assert "6 items cannot rule out a drop of 0.02" in v.reasons[0].reason
    assert "not compared (set gate.cost" in v.summary


def test_bound_on_the_wrong_side_or_a_stale_margin_refuses() -> None:
    assert not decide(_comp([_mt(-0.01, -0.03, 0.2)]), "ft", NI).ship
    stale = decide(_comp([_mt(0.0, -0.01, 0.01, margin=0.05)]), "ft", NI)
    assert not stale.ship and "rerun `tunewise compare`" in stale.reasons[0].reason
    nan = decide(_comp([_mt(float("nan"), float("nan"), float("nan"), n=0)]), "ft", NI)
    assert not nan.ship and "no usable score" in nan.reasons[0].reason


def test_missing_reference_or_missing_test() -> None:
    comp = _comp([])
    v = decide(comp, "ft", NI)
    assert not v.ship and "no margin test of ft against it" in v.reasons[0].reason
    del comp.metrics["api"]
    v = decide(comp, "ft", NI)
    assert "gate.reference is missing from the evaluation" in v.reasons[0].reason
    with pytest.raises(UserError, match=r"is gate\.reference"):
        decide(_comp([]), "api", NI)
    with pytest.raises(ValueError, match=r"needs gate\.reference"):
        GateConfig(mode="non_inferiority")


def test_baselines_and_guards_still_apply() -> None:
    cfg = NI.model_copy(update={"baselines": ["prompt"]})
    good = _mt(0.0, -0.015, 0.01)
    v = decide(_comp([good], with_prompt=0.3), "ft", cfg)
    assert v.ship and [r.baseline for r in v.reasons] == ["api", "prompt"]
    v = decide(_comp([good], with_prompt=0.01), "ft", cfg)
    assert not v.ship and "does not clearly beat prompt" in v.summary
    # format compliance is guarded against the reference too
    v = decide(_comp([good], fmt=0.9), "ft", NI)
    assert not v.ship and "format_compliance" in v.guard_failures[0]


def test_non_inferiority_direct_call_and_round_trip() -> None:
    comp = _comp([_mt(0.0, -0.015, 0.01, kind="finetuned")])
    cost = {
        "requests_per_day": 100,
        "tokens_per_request": 1,
        "api_price_per_mtok": 1,
        "gpu_price_per_hour": 1,
    }
    cfg = GateConfig.model_validate(NI.model_dump() | {"cost": cost})
    v = decide_non_inferiority(comp, "ft", cfg)
    assert "vs api $240.00 (self-hosted)" in v.summary  # a registry version costs what ft costs
    back = Comparison.from_dict(comp.to_dict())
    assert back.margin_test("ft", "api") == comp.margin_tests[0]
