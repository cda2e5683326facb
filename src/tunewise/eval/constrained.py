"""Constrained modes: the ``X+constrained`` candidates, whose answers are valid by construction.

* On a **labels** task: pick the allowed answer the model finds most likely (below).
* On a **tools** task: generate under the tools' call grammar (:mod:`tunewise.runtime.grammar`,
  :class:`ToolConstraints`): every call the answer makes names one of the item's tools and fits
  that tool's parameters schema. So the prompt rung gets its fairest chance (a base model that
  knows which call to make but not how to write it is no longer failed on the format), and a
  fine-tune's constrained score is what serving it with ``tool_choice`` gives. The same graders
  score both, so the evaluation shows validity and accuracy with and without the grammar.

Label scoring: pick the allowed answer the model finds most likely.

Instead of letting the model write freely (and sometimes invent a label or break the format), each
allowed answer is scored by its total log-probability after the prompt
(:meth:`tunewise.runtime.engine.Engine.score_continuations`) and the best one is taken. The answer
is
always valid, so comparing this candidate with free generation separates "the model does not know
the label" from "the model knows it but cannot write it in the format".

Raw log-likelihood favours answers the model likes regardless of the input (short, frequent
labels: on CLINC150 the intent "yes" wins almost every item). Scores are therefore calibrated by
default, as pointwise mutual information (Holtzman et al., 2021, "Surface Form Competition"): each
answer's log-probability after the real prompt minus its log-probability after the same prompt with
the last user turn replaced by "N/A". On 20 CLINC150 items with 20 intents (SmolLM2-135M, zero-shot)
that took accuracy from 1/20 (raw sum) and 4/20 (per-token mean) to 7/20.

Answers are rendered through the project's output format: a reference answer from train that
matches ``task.output_pattern`` is used as a template, and its named groups are replaced by the
candidate values, so "Category: billing\\nPriority: high" is scored as a whole. When the number of
combinations of field values is small (``max_combinations``) every combination is scored; beyond
that, fields are chosen one at a time, left to right, each scored up to the literal text that
follows it (so that "bill" cannot win over "billing" by being shorter).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tunewise.data.labels import SINGLE_FIELD, LabelSpec
from tunewise.data.schema import Example
from tunewise.errors import UserError
from tunewise.runtime.grammar import DEFAULT_MAX_CALLS, ToolConstraint, tool_constraint
from tunewise.runtime.tool_calls import attached_tools, parse_reply


class Scores(Protocol):
    def score_continuations(
        self,
        messages: list[dict[str, str]],
        continuations: list[str],
        adapter: str | None = None,
        end_of_turn: bool = True,
    ) -> list[float]: ...


@dataclass
class OutputTemplate:
    """Literal text around label slots: ``pieces[0] slot0 pieces[1] slot1 ... pieces[n]``."""

    pieces: list[str]
    slots: list[str]  # field names, in order of appearance

    def render(self, values: dict[str, str], upto: int | None = None) -> str:
        """The answer with ``values`` in the slots; with ``upto=j`` it stops after slot j and the
        literal text that follows it (the part that tells "bill" from "billing")."""
        out = [self.pieces[0]]
        last = len(self.slots) if upto is None else upto + 1
        for i in range(last):
            out.append(values[self.slots[i]])
            out.append(self.pieces[i + 1])
        return "".join(out)


def build_template(spec: LabelSpec, references: Sequence[str]) -> OutputTemplate:
    """A template from the first reference answer that fully matches the output pattern."""
    if spec.pattern is None or not spec.pattern.groupindex:
        return OutputTemplate(pieces=["", ""], slots=[SINGLE_FIELD])
    for ref in references:
        text = ref.strip()
        m = spec.pattern.fullmatch(text)
        if m is None or any(m.group(f) is None for f in spec.fields):
            continue
        spans = sorted((m.span(f), f) for f in spec.fields)
        if any(a[0][1] > b[0][0] for a, b in itertools.pairwise(spans)):
            continue  # nested groups: no clean template from this answer
        pieces, slots, pos = [], [], 0
        for (start, end), f in spans:
            pieces.append(text[pos:start])
            slots.append(f)
            pos = end
        pieces.append(text[pos:])
        return OutputTemplate(pieces=pieces, slots=slots)
    raise UserError(
        "constrained mode: no reference answer fully matches task.output_pattern, so the answer "
        "format cannot be rendered; fix the pattern or set eval.constrained: false"
    )


class ConstrainedLabeler:
    """Choose, per prompt, the allowed answer with the highest log-likelihood."""

    def __init__(
        self,
        spec: LabelSpec,
        references: Sequence[str],
        *,
        max_combinations: int = 64,
        calibrate: bool = True,
    ) -> None:
        missing = [f for f in spec.fields if not spec.labels.get(f)]
        if missing:
            raise UserError(
                f"constrained mode: no allowed values for field {missing[0]!r} (set task.labels)"
            )
        self.spec = spec
        self.template = build_template(spec, references)
        n = math.prod(len(spec.labels[f]) for f in self.template.slots)
        self.joint = n <= max_combinations
        self.n_combinations = n
        self.calibrate = calibrate
        self._priors: dict[str, list[float]] = {}

    def _score(
        self,
        engine: Scores,
        messages: list[dict[str, str]],
        texts: list[str],
        adapter: str | None,
        final: bool = True,
    ) -> list[float]:
        # A partial answer (field by field, not the last field) must not be scored as if the turn
        # ended after it: only the full answer is followed by the end-of-turn marker.
        kw: dict[str, Any] = {} if final else {"end_of_turn": False}
        scores = engine.score_continuations(messages, texts, adapter=adapter, **kw)
        if not self.calibrate:
            return scores
        null = null_messages(messages)
        key = json.dumps([null, texts, adapter, final])
        if key not in self._priors:  # the zero-shot null prompt is the same for every item
            self._priors[key] = engine.score_continuations(null, texts, adapter=adapter, **kw)
        return [s - p for s, p in zip(scores, self._priors[key], strict=True)]

    @property
    def mode(self) -> str:
        return "joint" if self.joint else "field-by-field"

    def _combos(self) -> list[dict[str, str]]:
        slots = self.template.slots
        return [
            dict(zip(slots, vals, strict=True))
            for vals in itertools.product(*(self.spec.labels[f] for f in slots))
        ]

    def choose(
        self, engine: Scores, messages: list[dict[str, str]], adapter: str | None = None
    ) -> tuple[str, dict[str, Any]]:
        """(answer text, meta with the winning log-prob and the runner-up's) for one prompt."""
        if self.joint:
            combos = self._combos()
            texts = [self.template.render(c) for c in combos]
            scores = self._score(engine, messages, texts, adapter)
            order = sorted(range(len(texts)), key=lambda i: -scores[i])
            best = order[0]
            margin = scores[best] - scores[order[1]] if len(order) > 1 else math.inf
            return texts[best], {"score": scores[best], "margin": margin}
        chosen: dict[str, str] = {}
        total = 0.0
        margins = []
        for j, f in enumerate(self.template.slots):
            values = self.spec.labels[f]
            texts = [self.template.render({**chosen, f: v}, upto=j) for v in values]
            scores = self._score(
                engine, messages, texts, adapter, final=j == len(self.template.slots) - 1
            )
            order = sorted(range(len(values)), key=lambda i: -scores[i])
            chosen[f] = values[order[0]]
            total = scores[
                order[0]
            ]  # each step's text includes the previous ones: the last is the total
            margins.append(scores[order[0]] - scores[order[1]] if len(order) > 1 else math.inf)
        return self.template.render(chosen), {"score": total, "margin": min(margins)}

    def choose_many(
        self,
        engine: Scores,
        prompts: Sequence[list[dict[str, str]]],
        adapter: str | None = None,
        progress: Any = None,
    ) -> list[tuple[str, dict[str, Any]]]:
        """``progress`` is an optional callable advanced by one per prompt."""
        out = []
        for msgs in prompts:
            out.append(self.choose(engine, msgs, adapter))
            if progress is not None:
                progress()
        return out


def null_messages(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The prompt with its last user turn emptied of content ("N/A"): the answers' prior."""
    out = [dict(m) for m in messages]
    for m in reversed(out):
        if m["role"] == "user":
            m["content"] = "N/A"
            break
    return out


def references(train: Sequence[Example]) -> list[str]:
    return [ex.target for ex in train]


# --------------------------------------------------------------------------------------------
# tools tasks: generation under the call grammar


def tool_choice_for(train: Sequence[Example]) -> str:
    """The ``tool_choice`` an evaluation decodes with: ``required`` when every training answer
    calls a tool, ``auto`` when some answer in plain text (then a plain reply must stay possible:
    forcing a call would make those items wrong by construction). Read from train, never from the
    evaluated items' own references."""
    return "auto" if any(not parse_reply(ex.target).calls for ex in train) else "required"


def max_calls_for(train: Sequence[Example]) -> int:
    """How many calls one constrained answer may hold: the most any training answer makes (at
    least 1). Without it the grammar admits up to ``DEFAULT_MAX_CALLS`` blocks, and a base model
    that never learnt when to stop repeats its call until ``max_new_tokens`` cuts one in half
    (SNIPS, one call per query: most prompt+constrained answers ended that way). OpenAI's
    ``parallel_tool_calls: false`` is the same limit at 1."""
    return max(1, max((len(_calls(ex)) for ex in train), default=1))


def string_cap_for(train: Sequence[Example]) -> int:
    """The longest free string argument a constrained call may write: twice the longest string
    argument of the training calls, at least 64 characters. A model that opens a quote and
    rambles (a weak base model does) is then made to close it and finish its call, instead of
    running into ``max_new_tokens`` with a broken one."""
    longest = max((_longest_string(c.arguments) for ex in train for c in _calls(ex)), default=0)
    return max(64, 2 * longest)


def _calls(ex: Example) -> list[Any]:
    return parse_reply(ex.target).calls


def _longest_string(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return max((_longest_string(v) for v in value), default=0)
    return 0


class ToolConstraints:
    """One :class:`ToolConstraint` per distinct tool list (usually the project's one list), in
    ``mode``, built against ``tokenizer`` (None: a backend without one, the grammar is checked
    when a generation starts); free strings capped at ``string_cap`` characters, at most
    ``max_calls`` calls in one answer."""

    def __init__(
        self,
        tokenizer: Any | None,
        mode: str,
        string_cap: int | None = None,
        max_calls: int = DEFAULT_MAX_CALLS,
    ) -> None:
        self.tokenizer = tokenizer
        self.mode = mode
        self.string_cap = string_cap
        self.max_calls = max_calls
        self._built: dict[str, ToolConstraint] = {}
        self.unconstrained = 0  # items without tools: generated freely

    def for_item(self, example: Example, messages: list[dict[str, Any]]) -> ToolConstraint | None:
        """The constraint of one item: its tools (its line's or the project's, as its prompt
        carries them); None when it has none."""
        tools = example.tools or attached_tools(messages)
        if not tools:
            self.unconstrained += 1
            return None
        key = json.dumps(tools, sort_keys=True)
        if key not in self._built:
            self._built[key] = tool_constraint(
                self.tokenizer,
                tools,
                self.mode,
                max_calls=self.max_calls,
                max_string_chars=self.string_cap,
            )
        return self._built[key]

    def describe(self) -> dict[str, Any]:
        """For the candidate's meta: how its answers were constrained."""
        from importlib.metadata import version  # stdlib; only asked when an evaluation ran it

        return {
            "mode": "tool-grammar",
            "tool_choice": self.mode,
            "tool_lists": len(self._built),
            "items_without_tools": self.unconstrained,
            "max_string_chars": self.string_cap,
            "max_calls": self.max_calls,
            "library": f"lm-format-enforcer {version('lm-format-enforcer')}",
        }
