"""Graders for function calls (``task.type: tools``): one answer against its reference, per item.

The reference is an example's :attr:`~tunewise.data.schema.Example.target`, the canonical text of
its last assistant turn (calls as ``<tool_call>`` blocks, see :mod:`tunewise.runtime.tool_calls`);
the answer is read back with the same parser. Scores, each 0 to 1 per item:

* ``call_accuracy`` (the primary metric): the set of calls is the reference's, name and
  arguments exactly right as JSON values (``"3"`` is not ``3``), the order of keys and of calls
  ignored (:meth:`ToolCall.key`). A reference without calls (a plain-text answer) is right when the
  answer makes no call either; its wording is not graded here (``exact`` or a judge does that).
* ``name_accuracy``: the multiset of function names is the reference's (the intent, in NLU terms).
* ``arg_precision``, ``arg_recall``, ``arg_f1``: over (function, argument, value) triples, the
  slot-F1 of NLU benchmarks, per item. No triple claimed is precision 1 and no triple due is
  recall 1 (as the json grader's slot scores), except that an answer with an unreadable call block
  has precision 0: it claimed something it could not say. The item's counts (``tp``, ``fp``,
  ``fn``) go to the item's meta (:data:`ARGS_META`), per slot too (:data:`SLOTS_META`), so that a
  report can add them up: :func:`micro_scores` and :func:`benchmark_slot_f1`.
* ``call_schema_valid``: every emitted call names one of the item's tools and its arguments pass
  that tool's ``parameters`` JSON Schema. An answer without calls is valid (nothing it emitted is
  malformed; whether a call was due is ``missed_call``'s business), and so is any well-formed call
  when the item lists no tools at all (there is no schema to break). A tool without
  ``parameters`` accepts any arguments.
* ``wrong_call``, on items whose reference makes no call (NaN elsewhere, so the mean is the rate
  among them): 1 when the answer called anyway (an unreadable block counts: it tried).
* ``missed_call``, on items whose reference calls (NaN elsewhere): 1 when the answer has no
  readable call.
* ``call_parse_errors``: 1 when a ``<tool_call>`` block did not hold a call (not JSON, no name).

A malformed block is never the right answer: with one, ``call_accuracy``, ``name_accuracy`` and
``call_schema_valid`` are 0. The last three metrics are error rates, lower is better
(:data:`tunewise.config.TOOL_ERROR_RATES`); the gate's primary metric is never one of them
(refused at load). The metric names live in :mod:`tunewise.config`, which validates them.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

import jsonschema

from tunewise.errors import UserError
from tunewise.runtime.tool_calls import Reply, ToolCall, function_of, parse_reply

ARGS_META = "tool_args"  # item meta: {"tp", "fp", "fn"} over (function, argument, value) triples
SLOTS_META = "tool_slots"  # item meta: [[function, argument, tp, fp, fn], ...], one per slot
# Defined only where they apply (NaN elsewhere by design): not "unparsed" answers.
WHERE_APPLICABLE = ("wrong_call", "missed_call")

Triple = tuple[str, str, str]  # (function, argument, value as canonical JSON)


def read_calls(text: str) -> Reply:
    """:func:`parse_reply`, with a block too deep or too large for Python's JSON reader (a
    5000-digit number, arrays nested past the stack) counted as a malformed block, not raised."""
    try:
        return parse_reply(text)
    except (RecursionError, ValueError) as exc:
        return Reply(text.strip(), [], [f"unreadable ({type(exc).__name__})"])


def _value(v: Any) -> str:
    # The same canonical form as ToolCall.key(): equal JSON values, equal strings; "3" != 3.
    return json.dumps(v, sort_keys=True, ensure_ascii=False)


def _triples(calls: Sequence[ToolCall]) -> Counter[Triple]:
    return Counter((c.name, str(arg), _value(v)) for c in calls for arg, v in c.arguments.items())


def _slot_counts(gold: Counter[Triple], pred: Counter[Triple]) -> list[list[Any]]:
    """[function, argument, tp, fp, fn] per slot (a function's argument) seen on either side."""
    rows: dict[tuple[str, str], list[int]] = {}
    for triple in gold | pred:
        tp = min(gold[triple], pred[triple])
        counts = rows.setdefault(triple[:2], [0, 0, 0])
        counts[0] += tp
        counts[1] += pred[triple] - tp
        counts[2] += gold[triple] - tp
    return [[fn, arg, *counts] for (fn, arg), counts in sorted(rows.items())]


def _arg_scores(tp: int, fp: int, fn: int, unreadable: bool) -> dict[str, float]:
    n_pred, n_gold = tp + fp, tp + fn
    nothing = 0.0 if unreadable else 1.0  # nothing claimed: right, unless a block was unreadable
    precision = tp / n_pred if n_pred else nothing
    recall = tp / n_gold if n_gold else 1.0
    f1 = 2 * tp / (n_pred + n_gold) if n_pred + n_gold else nothing
    return {"arg_precision": precision, "arg_recall": recall, "arg_f1": f1}


@lru_cache(maxsize=256)
def _validator(schema_json: str) -> Any:
    """A validator for a tool's ``parameters`` (cached: every item of a task shares its tools)."""
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)  # SchemaError: the tool is broken, not the answer
    return cls(schema)


def _call_valid(call: ToolCall, by_name: dict[str, dict[str, Any]]) -> bool:
    fn = by_name.get(call.name)
    if fn is None:
        return False
    schema = fn.get("parameters")
    if not isinstance(schema, dict):
        return True
    try:
        return bool(_validator(_value(schema)).is_valid(call.arguments))
    except jsonschema.SchemaError as exc:
        raise UserError(
            f"function {call.name!r}: its parameters are not a valid JSON Schema: {exc.message}"
        ) from None
    except Exception as exc:  # a $ref that resolves nowhere raises from `referencing`, and more
        raise UserError(
            f"function {call.name!r}: its parameters schema cannot be checked: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None


def _schema_valid(got: Reply, tools: Sequence[dict[str, Any]]) -> bool:
    if got.problems:
        return False
    by_name: dict[str, dict[str, Any]] = {}
    for tool in tools:
        fn = function_of(tool)
        by_name.setdefault(str(fn.get("name", "")), fn)
    if not by_name:  # no tools given for the item: nothing to check a well-formed call against
        return True
    return all(_call_valid(c, by_name) for c in got.calls)


def tool_scores(
    output: str, target: str, tools: Sequence[dict[str, Any]] = ()
) -> tuple[dict[str, float], dict[str, Any]]:
    """(scores, meta) of one answer: the metrics of the module docstring, and the argument
    counts an aggregate needs (:data:`ARGS_META`, :data:`SLOTS_META`)."""
    gold, got = read_calls(target), read_calls(output)
    bad = bool(got.problems)
    want_keys = Counter(c.key() for c in gold.calls)
    want_names = Counter(c.name for c in gold.calls)
    g, p = _triples(gold.calls), _triples(got.calls)
    tp = sum((g & p).values())
    fp, fn = sum(p.values()) - tp, sum(g.values()) - tp
    scores = {
        "call_accuracy": float(not bad and Counter(c.key() for c in got.calls) == want_keys),
        "name_accuracy": float(not bad and Counter(c.name for c in got.calls) == want_names),
        **_arg_scores(tp, fp, fn, bad),
        "call_schema_valid": float(_schema_valid(got, tools)),
        "wrong_call": math.nan if gold.calls else float(bool(got.calls) or bad),
        "missed_call": float(not got.calls) if gold.calls else math.nan,
        "call_parse_errors": float(bad),
    }
    meta: dict[str, Any] = {
        ARGS_META: {"tp": tp, "fp": fp, "fn": fn},
        SLOTS_META: _slot_counts(g, p),
    }
    if bad:
        meta["call_problems"] = got.problems[:3]
    return scores, meta


# --------------------------------------------------------------------------------------------
# aggregates over items (from the counts in each item's meta)


def _counts(metas: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    return (m[ARGS_META] for m in metas if isinstance(m.get(ARGS_META), dict))


def micro_scores(metas: Iterable[dict[str, Any]]) -> dict[str, float] | None:
    """Argument precision, recall and F1 over every item's triples at once (micro); None when
    no item carries counts (not a tools evaluation)."""
    found = list(_counts(metas))
    if not found:
        return None
    tp, fp, fn = (sum(int(c.get(k, 0)) for c in found) for k in ("tp", "fp", "fn"))
    return {
        "precision": tp / (tp + fp) if tp + fp else 1.0,
        "recall": tp / (tp + fn) if tp + fn else 1.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0,
    }


def slot_table(metas: Iterable[dict[str, Any]]) -> dict[tuple[str, str], tuple[int, int, int]]:
    """(function, argument) -> summed (tp, fp, fn) over the items."""
    total: dict[tuple[str, str], list[int]] = {}
    for meta in metas:
        for row in meta.get(SLOTS_META) or []:
            fn_name, arg, *counts = row
            acc = total.setdefault((str(fn_name), str(arg)), [0, 0, 0])
            for i, c in enumerate(counts[:3]):
                acc[i] += int(c)
    return {slot: (c[0], c[1], c[2]) for slot, c in total.items()}


def benchmark_slot_f1(metas: Iterable[dict[str, Any]]) -> float | None:
    """Slot F1 the way the 2017 NLU benchmark (Snips, api.ai, Luis, Wit, Alexa) reports it: per
    slot, precision and recall from the counts over all items and their F1; then the mean of those
    F1s weighted by each slot's share of the reference's slot occurrences (tp + fn).

    A slot is a function's argument: the benchmark scored each intent's slots apart, and a
    function plays the intent. A slot only ever predicted (never in a reference) weighs nothing;
    its false positives are not counted against the true slots. None when no reference has a slot.
    """
    weighted, occurrences = 0.0, 0
    for tp, fp, fn in slot_table(metas).values():
        due = tp + fn
        if not due:
            continue
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / due
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        weighted += due * f1
        occurrences += due
    return weighted / occurrences if occurrences else None
