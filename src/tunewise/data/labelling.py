"""A person labels drafts: ``tunewise rate --label DRAFTS --out LABELLED``.

The drafts are what ``tunewise data from-traffic`` writes: requests with the production answer as
the last turn and an ``origin`` naming the logged request (:mod:`tunewise.data.from_traffic`).
Each draft gets one decision:

* **accept**: the draft answer is right; the line goes to ``LABELLED`` as it is;
* **correct**: the person writes the right answer (calls as ``<tool_call>`` blocks, which become
  an OpenAI-format turn with ``tool_calls``); a correction that makes no valid data line (a call
  to a function the request did not offer, an empty answer) is refused and asked again;
* **reject**: the request is not worth training on (spam, out of scope); nothing is written to
  ``LABELLED``, the traffic id goes to ``LABELLED.rejected.json`` so it is not asked again;
* skip (ask again next time) and quit.

Written lines carry ``origin.labelled_by: "human"``. Every decision is written at once, each file
atomically (a crash loses at most the decision being made), and a rerun skips every traffic id
already in ``LABELLED`` or in the rejected list: labelling resumes where it stopped. The core,
:func:`label_drafts`, takes the decisions from a callable, so the terminal prompt in the CLI is a
thin shell and a test can drive it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tunewise.data.files import JSONProblem, loads
from tunewise.data.from_traffic import ORIGIN, assistant_turn, draft_problems, write_rows
from tunewise.data.schema import iter_lines, validate_record
from tunewise.errors import DataError, UserError
from tunewise.fsio import atomic_write_json, read_json_object
from tunewise.runtime.tool_calls import TOOLS_FIELD, canonical_message

Action = Literal["accept", "correct", "reject", "skip", "quit"]
HUMAN = "human"


@dataclass(frozen=True)
class Decision:
    action: Action
    answer: str | None = None  # "correct": the right answer (calls as <tool_call> blocks)


@dataclass
class Draft:
    row: dict[str, Any]
    line: int

    @property
    def key(self) -> str:
        return str(self.row[ORIGIN]["traffic_id"])

    @property
    def prompt(self) -> list[dict[str, Any]]:
        return [canonical_message(m) for m in self.row["messages"][:-1]]

    @property
    def answer(self) -> str:
        """The draft answer as text (calls as ``<tool_call>`` blocks): what a person edits."""
        return canonical_message(self.row["messages"][-1])["content"]

    @property
    def why(self) -> str:
        return str(self.row[ORIGIN].get("why") or "")

    @property
    def tools(self) -> list[dict[str, Any]]:
        return list(self.row.get(TOOLS_FIELD) or [])


def _read_rows(path: Path, *, drafts: bool) -> list[tuple[int, dict[str, Any]]]:
    """The lines of ``path``; a draft must be a valid line with ``origin.traffic_id``."""
    out = []
    for number, raw in iter_lines(path):
        try:
            row = loads(raw)
        except JSONProblem as exc:
            raise DataError(str(path), number, exc.field or "(line)", exc.message) from None
        problems = draft_problems(row, str(path), number) if drafts else []
        if problems:
            raise DataError(str(path), number, problems[0].field, problems[0].message)
        origin = row.get(ORIGIN) if isinstance(row, dict) else None
        if drafts and not (isinstance(origin, dict) and origin.get("traffic_id") is not None):
            why = "missing (drafts come from `tunewise data from-traffic`)"
            raise DataError(str(path), number, "origin.traffic_id", why)
        out.append((number, row))
    return out


class Labelling:
    """The drafts, the lines labelled so far and the rejected ids; writes each decision."""

    def __init__(self, drafts: str | Path, out: str | Path) -> None:
        self.drafts_path, self.out = Path(drafts), Path(out)
        if self.out.resolve() == self.drafts_path.resolve():
            raise UserError(f"--out {out}: is the drafts file itself; write labels elsewhere")
        self.rejected_path = self.out.with_name(self.out.name + ".rejected.json")
        self.drafts = [Draft(row, n) for n, row in _read_rows(self.drafts_path, drafts=True)]
        written = _read_rows(self.out, drafts=False) if self.out.exists() else []
        self.rows = [row for _, row in written]
        self.rejected: list[str] = []
        if self.rejected_path.exists():
            found = read_json_object(self.rejected_path, "rejected list").get("rejected", [])
            self.rejected = [str(k) for k in found] if isinstance(found, list) else []
        self.counts: Counter[str] = Counter()

    def done(self) -> set[str]:
        ids = (r.get(ORIGIN, {}).get("traffic_id") for r in self.rows if _has_origin(r))
        return {str(i) for i in ids if i is not None} | set(self.rejected)

    def pending(self) -> list[Draft]:
        """Drafts with no decision yet, in file order (a repeated traffic id: its first line)."""
        done, seen, out = self.done(), set(), []
        for d in self.drafts:
            if d.key not in done and d.key not in seen:
                seen.add(d.key)
                out.append(d)
        return out

    def labelled_row(self, draft: Draft, answer: str | None) -> dict[str, Any]:
        """The line to write: the draft, its answer replaced by ``answer`` when given, labelled by
        a person; a :class:`UserError` when the corrected line is not a valid data line."""
        row = dict(draft.row)
        if answer is not None:
            if not answer.strip():
                raise UserError("the corrected answer is empty")
            row["messages"] = [*row["messages"][:-1], assistant_turn(answer.strip())]
        row[ORIGIN] = {**row[ORIGIN], "labelled_by": HUMAN}
        problems = validate_record(row, "correction", 0)
        if problems:
            raise UserError(f"{problems[0].field}: {problems[0].message}")
        return row

    def apply(self, draft: Draft, decision: Decision) -> None:
        """Record one decision (skip and quit record nothing)."""
        if decision.action in ("accept", "correct"):
            answer = decision.answer if decision.action == "correct" else None
            row = self.labelled_row(draft, answer)
            write_rows(self.out, [*self.rows, row])
            self.rows.append(row)
        elif decision.action == "reject":
            atomic_write_json(self.rejected_path, {"rejected": [*self.rejected, draft.key]})
            self.rejected.append(draft.key)
        if decision.action != "quit":
            self.counts[decision.action] += 1


def _has_origin(row: Any) -> bool:
    return isinstance(row, dict) and isinstance(row.get(ORIGIN), dict)


Decide = Callable[[Draft, str | None], Decision]  # (draft, problem with the last try) -> decision


def label_drafts(session: Labelling, decide: Decide) -> Counter[str]:
    """Walk the pending drafts, asking ``decide`` for each; a correction that is refused, or
    accepting a draft whose answer is blank, is asked again with the reason. Stops at the end or
    at "quit"; returns the decisions made."""
    for draft in session.pending():
        problem = None
        while True:
            decision = decide(draft, problem)
            try:
                session.apply(draft, decision)
                break
            except UserError as err:
                if decision.action not in ("accept", "correct"):
                    raise
                problem = str(err)
        if decision.action == "quit":
            break
    return session.counts


def show_turns(turns: list[dict[str, Any]]) -> str:
    """Turns as ``role: content`` lines, for a terminal."""
    return "\n".join(
        f"{m['role']}: {m.get('content') or json.dumps(m.get('tool_calls'))}" for m in turns
    )
