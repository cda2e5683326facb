"""When validation runs: ``train.eval_every: auto`` keeps it within ``train.eval_budget`` of a run.

A fixed cadence prices evaluation blindly: on a 348-step Banking77 run, ``eval_every: 20`` spent
~14 of ~24 minutes measuring. With ``auto``, validation loss and the overfitting check together
take at most ``train.eval_budget`` (default 10%) of the run's wall time, the cadence chosen while
the run goes, from the planned steps and the *measured* cost of a step and of an evaluation.

**The rule** (:class:`EvalPlanner`). With ``E`` the wall time since training began (evaluations
included), ``S`` the seconds evaluations took so far, ``c`` what the next one is expected to cost
and ``b`` the budget, evaluate when both

    S + MARGIN * c <= b * (E + c)          (the share, with room for a slow evaluation)
    T >= (1 - b) / b * c                   (the spacing: T, training seconds since the last one)

The first keeps the share within ``b`` even if the evaluation takes ``MARGIN`` times its expected
cost: it holds after every evaluation as long as one costs at most ``(MARGIN - b) / (1 - b)``
times its estimate (2.1x at b = 0.1), and between evaluations the share only falls. The margin is
cheap: the k-th evaluation waits until ``E >= ((k - 1 + MARGIN) / b - 1) c``, so a margin of 2
rather than 1.5 costs half an evaluation over a whole run, and buys tolerance of a neighbour's
burst of work on a shared machine. The second is the pace the first settles into; alone the first
would spend budget left unspent (a first evaluation dearer in the estimate than in fact) in a burst
of evaluations at consecutive steps, and early stopping, which counts evaluations, would stop on
a few steps' noise.

* **The first evaluation** has no measured cost yet: it is priced from two timed probes at the
  first check, the validation loss of one batch (the number of batches times that) and a short
  greedy run (the overfitting check's generation, per token); see :class:`FirstPass`. Under a
  launcher the loss probe does not run (a forward on one process alone could wait forever on a
  sharded model) and a validation batch is priced at :data:`FORWARD_SHARE` of the measured
  training step instead, a guess that was 7x too dear on the demo. After the first evaluation
  its measured cost replaces the estimate.
* **The last step** evaluates only if the rule holds there, except that a run with no evaluation
  at all gets one at the end (validation loss, the stop rules and run.json need one), even over
  the budget; run.json's ``eval_budget.forced_final`` says so.
* **Checks, not every step**: the planner says at which step to look next (when the rule would
  hold at the pace so far, at the latest when the session's step count doubles, and at the last
  step). Under a launcher the main process decides at those steps only and every process follows
  its answer, so they all evaluate at the same step without a collective at every step.

The cost of an evaluation is the wall time from the decision to the end of its callbacks (loss,
generations, run.json write): never less than run.json's ``val_loss_s + overfit_check_s``.

The validation-loss subset (``train.val_loss_items``) is chosen here too (:func:`loss_order`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

MARGIN = 2.0
# A forward pass of one batch as a share of a training step of the same batch. Forward + backward
# with every weight training is ~3 forwards; LoRA's frozen base skips the weight gradients, ~2.
# The larger share prices the first evaluation on the safe side.
FORWARD_SHARE = 0.5
AUTO_VAL_LOSS_ITEMS = 128  # val_loss_items: auto caps the loss pass at this many items


def overfit_max_new_tokens(longest_answer: int) -> int:
    """Tokens the overfitting check generates per prompt: room to show runaway repetition
    (twice the longest validation answer, at least 32), bounded so evaluation stays cheap."""
    return min(256, max(32, 2 * longest_answer))


# --- the validation-loss subset ------------------------------------------------------------------


def loss_item_cap(setting: int | str) -> int:
    """``train.val_loss_items`` as a number of items."""
    return AUTO_VAL_LOSS_ITEMS if setting == "auto" else int(setting)


def loss_order(
    examples: Sequence[Any], setting: int | str, *, seed: int, output_pattern: str | None
) -> list[int] | None:
    """The order to take validation examples in for the loss, whose first ``cap`` are the subset;
    None when the split fits under the cap (all of it, in file order, as before the cap existed).

    Label-stratified and seeded (:func:`tunewise.eval.learning_curve.stratified_order`): every
    prefix holds each label in proportion, so the subset never drops a class by chance; without
    labels (free text) a seeded shuffle. The same items at every evaluation, so the comparisons
    early stopping makes are paired.
    """
    if len(examples) <= loss_item_cap(setting):
        return None
    from tunewise.eval.learning_curve import stratified_order  # lazy: only past the cap

    return stratified_order(list(examples), seed=seed, output_pattern=output_pattern)


# --- the schedule --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FirstPass:
    """What the first evaluation's cost is estimated from, before one is measured."""

    loss_batches: int  # validation batches of the loss pass, per process
    grad_accum: int  # forward + backward passes per optimizer step
    batch_size: int
    gen_rows: int = 0  # the overfitting check's prompts (0: no check)
    gen_tokens: int = 0  # tokens generated per prompt, at most

    def seconds(self, step_s: float, decode_s: float | None, batch_s: float | None = None) -> float:
        """``step_s``: seconds per optimizer step; ``decode_s``: seconds per greedy step of
        ``gen_rows`` prompts (measured), None to price each as a batch forward (dearer);
        ``batch_s``: seconds of one validation batch's loss (measured), None to guess it from
        the step time."""
        batch_fwd = batch_s if batch_s is not None else FORWARD_SHARE * step_s / self.grad_accum
        loss = self.loss_batches * batch_fwd
        if not self.gen_rows:
            return loss
        prefill = math.ceil(self.gen_rows / self.batch_size) * batch_fwd
        # Every prompt is priced as generating to the cap: early in training the model rambles.
        decode = self.gen_tokens * (decode_s if decode_s is not None else batch_fwd)
        return loss + prefill + decode


# The first evaluation's price: (step_s, decode_s, batch_s) -> seconds (FirstPass.seconds, or
# a cost known in advance in the estimate's simulation).
FirstCost = Callable[[float, "float | None", "float | None"], float]


class EvalPlanner:
    """The budget rule of the module docstring, as a pure object: times come in as arguments,
    so a fake clock drives it in tests and :func:`simulate` prices a run with it."""

    def __init__(
        self,
        budget: float,
        first: FirstPass | FirstCost,
        *,
        margin: float = MARGIN,
        evaluated_before: bool = False,
    ) -> None:
        self.budget = budget
        self.margin = margin
        self._first: FirstCost = first.seconds if isinstance(first, FirstPass) else first
        self.evaluated_before = evaluated_before  # a resumed run that has evaluated already
        self.decode_s: float | None = None  # a greedy step of the check's prompts, measured
        self.batch_s: float | None = None  # one validation batch's loss, measured
        self.costs: list[float] = []  # each evaluation's seconds, this session
        self.other_s = 0.0  # other seconds spent for evaluation (the decode probe)
        self.first_estimate: float | None = None
        self.forced_final = False
        self.next_check = 1
        self.elapsed = 0.0
        self._t0 = 0.0
        self._step0 = 0
        self._eval_t0: float | None = None
        self._last_end = 0.0  # when the last evaluation ended (or training began)

    @property
    def spent(self) -> float:
        return sum(self.costs) + self.other_s

    def begin(self, step: int, now: float) -> None:
        """Training (re)starts at ``step``; shares count from here (each session on its own)."""
        self._t0, self._step0, self.next_check = now, step, step + 1
        self._last_end = now

    def step_s(self, step: int, now: float) -> float:
        """Seconds per optimizer step so far, evaluation time left out."""
        return max(0.0, now - self._t0 - self.spent) / max(1, step - self._step0)

    def cost(self, step: int, now: float) -> float:
        """What the next evaluation is expected to cost: the last one's measured seconds, else
        the first pass's estimate at the pace so far."""
        if self.costs:
            return self.costs[-1]
        return self._first(self.step_s(step, now), self.decode_s, self.batch_s)

    def due(self, step: int, max_steps: int) -> bool:
        """Whether ``step`` is a check (every process computes the same answer)."""
        return step >= self.next_check or step >= max_steps

    def _wait(self, c: float, now: float) -> float:
        """Training seconds until both conditions hold (<= 0: they hold now): the share with
        ``margin`` times the expected cost, and the spacing since the last evaluation."""
        b = self.budget
        share = (self.spent + self.margin * c) / b - c - (now - self._t0)
        spacing = (1 - b) / b * c - (now - self._last_end)
        return max(share, spacing)

    def decide(self, step: int, max_steps: int, now: float) -> bool:
        """At a check: evaluate now? Sets :attr:`next_check` either way."""
        c = self.cost(step, now)
        wait = self._wait(c, now)
        fits = wait <= 0
        evaluate = fits
        if step >= max_steps and not fits and not (self.costs or self.evaluated_before):
            evaluate = self.forced_final = True  # no evaluation at all: one at the end anyway
        if evaluate:
            if not self.costs:
                self.first_estimate = c
            self._eval_t0 = now
            self.next_check = step + 1
            return True
        # In steps at the pace so far; looked at again at the latest when the session's steps
        # double (an early pace includes warm-up).
        pace = self.step_s(step, now)
        ahead = math.ceil(wait / pace) if pace > 0 else 1
        self.next_check = step + max(1, min(ahead, step - self._step0))
        return False

    def evaluated(self, now: float) -> None:
        """The evaluation decided on has finished; its cost is the time since the decision."""
        if self._eval_t0 is not None:
            self.costs.append(now - self._eval_t0)
            self._eval_t0 = None
            self._last_end = now

    def finish(self, now: float) -> None:
        self.elapsed = now - self._t0

    def record(self) -> dict[str, Any]:
        """run.json's ``eval_budget``: the planner's own accounting."""
        wall = self.elapsed
        return {
            "budget": self.budget,
            "evaluations": len(self.costs),
            "eval_s": round(self.spent, 3),
            "train_wall_s": round(wall, 3),
            "share": round(self.spent / wall, 4) if wall > 0 else None,
            "first_estimate_s": _round(self.first_estimate),
            "first_measured_s": _round(self.costs[0] if self.costs else None),
            "decode_step_s": _round(self.decode_s),
            "loss_batch_s": _round(self.batch_s),
            "forced_final": self.forced_final,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def simulate(
    steps: int,
    step_s: float,
    eval_s: float | Sequence[float],
    budget: float,
    *,
    first: FirstPass | None = None,
    decode_s: float | None = None,
    batch_s: float | None = None,
    margin: float = MARGIN,
) -> tuple[list[int], EvalPlanner]:
    """The steps a run of ``steps`` optimizer steps evaluates at, on a clock where a step takes
    ``step_s`` and the i-th evaluation ``eval_s[i]`` (the last one repeats; or always
    ``eval_s``); and the planner, with its accounting.

    ``first`` None: the first evaluation's cost is known in advance (the estimate's case); else it
    is estimated from the pace as in a real run, with ``decode_s`` and ``batch_s`` as the probes'
    figures."""
    costs = [eval_s] if isinstance(eval_s, (int, float)) else list(eval_s)
    planner = EvalPlanner(
        budget, first if first is not None else (lambda s, d, b: float(costs[0])), margin=margin
    )
    planner.decode_s, planner.batch_s = decode_s, batch_s
    now = 0.0
    planner.begin(0, now)
    done: list[int] = []
    for step in range(1, steps + 1):
        now += step_s
        if planner.due(step, steps) and planner.decide(step, steps, now):
            now += float(costs[min(len(done), len(costs) - 1)])
            done.append(step)
            planner.evaluated(now)
    planner.finish(now)
    return done, planner
