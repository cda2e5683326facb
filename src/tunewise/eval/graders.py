"""Graders: turn one output (and its reference) into per-item scores.

Score keys are metric names (see :class:`tunewise.eval.results.ItemResult`): ``accuracy``,
``exact_match``, ``format_compliance``, ``json_valid``, ``schema_valid``, ``judge`` and per-field
``accuracy_<field>`` (label fields, or the top-level keys of a JSON answer); for a JSON answer
whose reference holds a flat object under a key (``slots``), ``<key>_precision``, ``_recall`` and
``_f1`` over its (name, value) pairs; for free text, the reference metrics ``chrf``, ``bleu``,
``rougeL`` and ``similarity`` against every reference of the item
(:mod:`tunewise.eval.reference`); for function calls (``task.type: tools``, or the ``tools``
grader) ``call_accuracy``, ``name_accuracy``, ``arg_precision``/``_recall``/``_f1``,
``call_schema_valid``, ``wrong_call``, ``missed_call`` and ``call_parse_errors``
(:mod:`tunewise.eval.tool_graders`). A project picks its graders in ``eval.graders``.
``accuracy`` is scored on labels and json tasks only: on free text it would be exact match under
another name, and a tools task has ``call_accuracy``.

Labels come out of the output through the project's ``task.output_pattern``, read by
:class:`tunewise.data.labels.LabelSpec`: its named groups are the label fields
(``(?P<category>...)``). Without a pattern the whole answer is the label. Values are compared after
stripping and case-folding, so "Billing" is the label "billing"; an answer that does not parse is
wrong, and its predicted label is None (statistics count it as a miss for its gold class; the
report shows it as "unparseable").

The LLM judge scores an answer against a fixed rubric; the rubric and the judge prompt are
versioned by their sha256, stored with every score. A reply the judge's parser cannot read is a
NaN score: counted and shown by the report, never silently dropped.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol

import jsonschema

from tunewise.baselines.embed import default_embedder
from tunewise.config import ProjectConfig
from tunewise.data.labels import LabelSpec, fold, normalise
from tunewise.data.schema import REFUSAL_FIELD, Example
from tunewise.errors import UserError
from tunewise.eval.reference import REFERENCE_METRICS, sentence_scores, similarity_scores
from tunewise.eval.tool_graders import tool_scores
from tunewise.fsio import sha256_text
from tunewise.runtime.engine import GenRequest


def label_scores(
    spec: LabelSpec, output: str, target: str
) -> tuple[dict[str, float], str | None, str | None, dict[str, Any]]:
    """``accuracy`` (every field right) and ``accuracy_<field>``; gold and predicted label keys."""
    gold_f = spec.extract(target)
    if gold_f is None:
        raise UserError(f"reference answer does not match task.output_pattern: {target[:80]!r}")
    gold_f = spec.canonical(gold_f)
    pred_f = spec.extract(output)
    pred_f = spec.canonical(pred_f) if pred_f is not None else None
    scores: dict[str, float] = {}
    all_right = pred_f is not None
    for f in spec.fields:
        ok = pred_f is not None and fold(pred_f[f]) == fold(gold_f[f])
        all_right = all_right and ok
        if len(spec.fields) > 1:
            scores[f"accuracy_{f}"] = float(ok)
    scores["accuracy"] = float(all_right)
    meta = {"gold_fields": gold_f, "predicted_fields": pred_f} if len(spec.fields) > 1 else {}
    return scores, spec.key(gold_f), spec.key(pred_f), meta


# --------------------------------------------------------------------------------------------
# exact match, format, JSON

_FENCE = re.compile(r"^```(?:json)?\s*\n(.*?)\n?```$", re.DOTALL)


def parse_json(text: str) -> tuple[bool, Any]:
    """(valid, value); a Markdown code fence around the JSON is tolerated."""
    text = text.strip()
    m = _FENCE.match(text)
    if m:
        text = m.group(1).strip()
    try:
        return True, json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return False, None


def json_scores(output: str, target: str, schema: dict[str, Any] | None) -> dict[str, float]:
    ok, value = parse_json(output)
    scores = {"json_valid": float(ok)}
    if schema is not None:
        validator_cls = jsonschema.validators.validator_for(schema)
        scores["schema_valid"] = float(ok and validator_cls(schema).is_valid(value))
    gold_ok, gold = parse_json(target)
    scores["accuracy"] = float(ok and gold_ok and value == gold)
    if gold_ok and isinstance(gold, dict):
        got = value if ok and isinstance(value, dict) else None
        for key, want in gold.items():
            if len(gold) > 1:  # per-field accuracy: which part of the object was wrong
                scores[f"accuracy_{key}"] = float(got is not None and got.get(key) == want)
            if isinstance(want, dict):  # e.g. slots: precision/recall/F1 over (name, value) pairs
                have = got.get(key) if got is not None else None
                scores.update(_pair_scores(key, want, have if isinstance(have, dict) else None))
    return scores


def _pairs(obj: dict[str, Any]) -> Counter[tuple[str, str]]:
    """(name, value) pairs of a flat object; a list value gives one pair per element."""
    out: Counter[tuple[str, str]] = Counter()
    for name, vals in obj.items():
        for v in vals if isinstance(vals, list) else [vals]:
            out[(str(name), fold(v if isinstance(v, str) else json.dumps(v)))] += 1
    return out


def _pair_scores(key: str, want: dict[str, Any], have: dict[str, Any] | None) -> dict[str, float]:
    """``<key>_precision``, ``_recall`` and ``_f1`` of one item's predicted pairs.

    Values compare after whitespace and case folding. No prediction claimed means no false
    positive (precision 1), no gold pair means nothing to miss (recall 1); an answer that is not a
    JSON object with this field scores 0 on all three, so a broken answer never looks precise.
    """
    if have is None:
        return {f"{key}_precision": 0.0, f"{key}_recall": 0.0, f"{key}_f1": 0.0}
    gold, pred = _pairs(want), _pairs(have)
    tp = sum((gold & pred).values())
    n_gold, n_pred = sum(gold.values()), sum(pred.values())
    return {
        f"{key}_precision": tp / n_pred if n_pred else 1.0,
        f"{key}_recall": tp / n_gold if n_gold else 1.0,
        f"{key}_f1": 2 * tp / (n_gold + n_pred) if n_gold + n_pred else 1.0,
    }


def check_schema(schema: dict[str, Any]) -> None:
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise UserError(f"task.json_schema: invalid schema: {exc.message}") from None


# --------------------------------------------------------------------------------------------
# the grader a project uses


class Grader:
    """All of a project's non-judge graders, applied to one output at a time."""

    def __init__(self, cfg: ProjectConfig, train: Sequence[Example] = ()) -> None:
        self.cfg = cfg
        self.task = cfg.task.type
        self.graders = list(cfg.eval.graders)
        self.spec = (
            LabelSpec.from_config(cfg, train)
            if self.task == "labels" or cfg.task.output_pattern
            else None
        )
        if cfg.task.json_schema is not None:
            check_schema(cfg.task.json_schema)
        self.reference_metrics = [m for m in REFERENCE_METRICS if m in self.graders]
        self.calls = self.task == "tools" or "tools" in self.graders
        project_tools = cfg.task.tools
        self.tools = project_tools if isinstance(project_tools, list) else []
        pattern = cfg.task.refusal_pattern
        self.refusal = re.compile(pattern, re.IGNORECASE) if pattern else None
        self._embedder: Any = None

    def grade(
        self, output: str, example: Example
    ) -> tuple[dict[str, float], str | None, str | None, dict]:
        """(scores, gold label, predicted label, meta) for one output."""
        target = example.target
        scores: dict[str, float] = {}
        gold = pred = None
        meta: dict[str, Any] = {}
        if "exact" in self.graders:
            scores["exact_match"] = float(normalise(output) == normalise(target))
        if "format" in self.graders and self.spec is not None:
            scores["format_compliance"] = float(self.spec.complies(output))
        if self.task == "json" or "json" in self.graders:
            scores.update(json_scores(output, target, self.cfg.task.json_schema))
            if "format" in self.graders and self.spec is None:
                scores["format_compliance"] = scores.get("schema_valid", scores["json_valid"])
        if (
            self.task == "labels"
            and self.spec is not None
            and ("label" in self.graders or "accuracy" not in scores)
        ):
            try:
                s, gold, pred, meta = label_scores(self.spec, output, target)
            except UserError as err:
                where = f"{example.source}:{example.line}: " if example.source else ""
                raise UserError(f"{where}{err}") from None
            scores.update(s)
        if self.calls:  # after the labels: their meta replaces the dict, this one adds to it
            scores.update(self.call_scores(output, example, meta))
        if self.reference_metrics:
            scores.update(self.reference_scores(output, example.references))
        if self.refusal is not None:
            scores.update(self.refusal_scores(output, example))
        if "accuracy" not in scores and self.task not in ("text", "tools"):
            scores["accuracy"] = float(normalise(output) == normalise(target))
        return scores, gold, pred, meta

    def call_scores(self, output: str, example: Example, meta: dict[str, Any]) -> dict[str, float]:
        """The tools grader's scores (``meta`` gets the argument counts); with the format grader
        and no output pattern, ``format_compliance`` is ``call_schema_valid``: a call that breaks
        its tool's schema is a format failure, which the gate always guards."""
        try:
            scores, counts = tool_scores(output, example.target, example.tools or self.tools)
        except UserError as err:
            where = f"{example.source}:{example.line}: " if example.source else ""
            raise UserError(f"{where}{err}") from None
        meta.update(counts)
        if "format" in self.graders and self.spec is None and self.task == "tools":
            scores["format_compliance"] = scores["call_schema_valid"]
        return scores

    def refusal_scores(self, output: str, example: Example) -> dict[str, float]:
        """Refusal style as two item metrics, each defined only where it applies (NaN elsewhere,
        so a candidate's mean over its items is the rate itself): ``refusal_recall`` on items
        whose reference refuses (1 = refused too), ``refusal_precision`` on items the answer
        refuses (1 = the reference refuses too)."""
        assert self.refusal is not None
        marked = example.meta.get(REFUSAL_FIELD)
        due = marked if isinstance(marked, bool) else bool(self.refusal.search(example.target))
        refused = bool(self.refusal.search(output))
        return {
            "refusal_recall": float(refused) if due else math.nan,
            "refusal_precision": float(due) if refused else math.nan,
        }

    def reference_scores(self, output: str, references: list[str]) -> dict[str, float]:
        """The reference metrics of one answer against all its references (an empty answer
        scores 0, as sacrebleu scores it; it is not a missing number)."""
        scores = sentence_scores(output, references, self.reference_metrics)
        if "similarity" in self.reference_metrics:
            if self._embedder is None:
                self._embedder = _Uncached(default_embedder())
            scores["similarity"] = similarity_scores([output], [references], self._embedder)[0]
        return scores


class _Uncached:
    """An embedder that never writes its cache: one file per graded answer would fill the disk."""

    def __init__(self, embedder: Any) -> None:
        self.embedder = embedder

    def encode(self, texts: list[str]) -> Any:
        return self.embedder.encode(texts, cache=False)


# --------------------------------------------------------------------------------------------
# LLM judges


class Generates(Protocol):
    """Anything with the Engine's ``generate`` (a local Engine or an external client)."""

    def generate(self, requests: list[Any], *, progress: bool = False) -> list[Any]: ...


RUBRIC = (
    "5: correct and complete; says what the reference says (wording may differ); follows the "
    "required format.\n"
    "4: correct, with a minor omission or a small format slip.\n"
    "3: partly correct: the main point is right but something important is missing or wrong.\n"
    "2: mostly wrong, but related to the request.\n"
    "1: wrong, irrelevant, empty or harmful."
)

JUDGE_TEMPLATE = """\
You are grading an assistant's answer. Use this rubric:
{rubric}

Request:
{request}

Reference answer:
{reference}

Assistant's answer:
{output}

Reply with one line, "Score: N", where N is 1, 2, 3, 4 or 5."""

PAIRWISE_TEMPLATE = """\
Two assistants answered the same request. Which answer is better? Judge correctness first (the
reference answer is correct), then following the required format, then clarity.

Request:
{request}

Reference answer:
{reference}

Answer A:
{a}

Answer B:
{b}

Reply with one line: "Winner: A", "Winner: B" or "Winner: tie"."""

_SCORE_RE = re.compile(r"score\s*[:=]?\s*\**\s*([1-5])\b", re.IGNORECASE)
_WINNER_RE = re.compile(r"winner\s*[:=]?\s*\**\s*(a|b|tie)\b", re.IGNORECASE)


def parse_score(reply: str) -> float:
    """Rubric score normalised to [0, 1] (1 -> 0, 5 -> 1); NaN when the reply has no score."""
    m = _SCORE_RE.search(reply)
    if m is None:
        bare = re.fullmatch(r"\s*([1-5])\s*\.?\s*", reply)
        if bare is None:
            return math.nan
        value = int(bare.group(1))
    else:
        value = int(m.group(1))
    return (value - 1) / 4


def parse_winner(reply: str) -> str | None:
    m = _WINNER_RE.search(reply)
    return m.group(1).lower() if m else None


def _request_text(messages: list[dict[str, str]]) -> str:
    return (
        "\n".join(f"{m['role']}: {m['content']}" for m in messages if m["role"] != "system")
        or "(empty)"
    )


def _requests(prompts: list[str], max_new_tokens: int, adapter: str | None) -> list[Any]:
    return [
        GenRequest(
            messages=[{"role": "user", "content": p}],
            adapter=adapter,
            max_new_tokens=max_new_tokens,
        )
        for p in prompts
    ]


class LLMJudge:
    """Scores answers against a fixed rubric with a local Engine or an external client."""

    def __init__(
        self,
        backend: Generates,
        *,
        rubric: str = RUBRIC,
        template: str = JUDGE_TEMPLATE,
        adapter: str | None = None,
        max_new_tokens: int = 12,
        name: str = "judge",
    ) -> None:
        self.backend = backend
        self.rubric = rubric
        self.template = template
        self.adapter = adapter
        self.max_new_tokens = max_new_tokens
        self.name = name

    @property
    def version(self) -> str:
        """sha256 of rubric + prompt: scores from different versions are not comparable."""
        return sha256_text(self.rubric + "\0" + self.template)[:12]

    def prompt(self, example: Example, output: str) -> str:
        return self.template.format(
            rubric=self.rubric,
            request=_request_text(example.prompt_messages),
            reference=example.target,
            output=output,
        )

    def score_many(
        self, examples: Sequence[Example], outputs: Sequence[str], *, progress: bool = False
    ) -> tuple[list[float], list[str]]:
        """(normalised scores, raw replies); a reply that does not parse scores NaN."""
        prompts = [self.prompt(ex, out) for ex, out in zip(examples, outputs, strict=True)]
        results = self.backend.generate(
            _requests(prompts, self.max_new_tokens, self.adapter), progress=progress
        )
        replies = [r.text for r in results]
        return [parse_score(r) for r in replies], replies


class PairwiseJudge:
    """Which of two answers is better; each pair is judged in both orders against position bias."""

    def __init__(
        self,
        backend: Generates,
        *,
        template: str = PAIRWISE_TEMPLATE,
        adapter: str | None = None,
        max_new_tokens: int = 12,
    ) -> None:
        self.backend = backend
        self.template = template
        self.adapter = adapter
        self.max_new_tokens = max_new_tokens

    @property
    def version(self) -> str:
        return sha256_text("pairwise\0" + self.template)[:12]

    def verdicts_both_orders(
        self,
        examples: Sequence[Example],
        a: Sequence[str],
        b: Sequence[str],
        *,
        progress: bool = False,
    ) -> tuple[list[str | None], list[str | None]]:
        """The raw winners ("a" = the answer shown first) with A first, then with B first; None
        where a reply did not parse. For the position-bias check (eval/calibration.py)."""
        prompts: list[str] = []
        for ex, x, y in zip(examples, a, b, strict=True):
            req, ref = _request_text(ex.prompt_messages), ex.target
            prompts.append(self.template.format(request=req, reference=ref, a=x, b=y))
            prompts.append(self.template.format(request=req, reference=ref, a=y, b=x))
        requests = _requests(prompts, self.max_new_tokens, self.adapter)
        replies = [r.text for r in self.backend.generate(requests, progress=progress)]
        return [parse_winner(r) for r in replies[0::2]], [parse_winner(r) for r in replies[1::2]]

    def compare_many(
        self,
        examples: Sequence[Example],
        a: Sequence[str],
        b: Sequence[str],
        *,
        progress: bool = False,
    ) -> list[float]:
        """Per item: 1.0 A wins, 0.0 B wins, 0.5 tie (or the orders disagree); NaN unparseable."""
        prompts: list[str] = []
        for ex, x, y in zip(examples, a, b, strict=True):
            req, ref = _request_text(ex.prompt_messages), ex.target
            prompts.append(self.template.format(request=req, reference=ref, a=x, b=y))
            prompts.append(self.template.format(request=req, reference=ref, a=y, b=x))
        replies = [
            r.text
            for r in self.backend.generate(
                _requests(prompts, self.max_new_tokens, self.adapter), progress=progress
            )
        ]
        out: list[float] = []
        for i in range(0, len(replies), 2):
            first, second = parse_winner(replies[i]), parse_winner(replies[i + 1])
            if first is None or second is None:
                out.append(math.nan)
                continue
            # In the swapped order "A" means the original B.
            s1 = {"a": 1.0, "b": 0.0, "tie": 0.5}[first]
            s2 = {"a": 0.0, "b": 1.0, "tie": 0.5}[second]
            out.append((s1 + s2) / 2)
        return out


def win_rate(prefs: Sequence[float]) -> tuple[float, int]:
    """Mean preference for A over parsed items, and how many replies failed to parse."""
    ok = [p for p in prefs if not math.isnan(p)]
    return (sum(ok) / len(ok) if ok else math.nan), len(prefs) - len(ok)
