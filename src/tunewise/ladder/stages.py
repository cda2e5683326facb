"""The stage runner of the ladder: each stage cached by a content-hash key in ``ladder.json``.

A :class:`Stage` is one row of a ladder: its name, the inputs it depends on, the function that
runs it and the earlier stages it reads from. Its *key* hashes exactly those inputs and the keys
of the stages upstream of it. :class:`Ladder` walks the rows in order: a stage whose key is
unchanged (and whose files still exist) comes back from ``ladder.json``; any other runs, and its
key and outputs are written atomically as soon as it finishes. Ctrl-C or SIGTERM inside a stage
leaves every finished stage recorded, and the unfinished attempt's wall time beside it.

Which stages a project has is :mod:`tunewise.ladder.workflow`'s business; this module only runs
them.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from rich.console import Console

from tunewise import __version__
from tunewise.config import ProjectConfig
from tunewise.fsio import atomic_write_json, sha256_json
from tunewise.ladder.interrupt import Terminated, sigterm_as_interrupt

Outputs = dict[str, Any]  # what a stage returns: JSON values; absolute paths are checked on reuse


@dataclass(eq=False)  # compared and hashed by identity: a stage is a row of one ladder
class Stage:
    """One row of the ladder.

    ``inputs`` are what the stage depends on besides earlier stages (config sections, content
    hashes); ``after`` are the earlier stages it reads from, whose keys join its own; ``run``
    gets their outputs (``upstream[stage]``) and returns its own.
    """

    name: str
    inputs: dict[str, Any]
    run: Callable[[dict[Stage, Outputs]], Outputs]
    after: tuple[Stage, ...] = ()
    # For outputs that live outside the project's files (the registry's versions): whether the
    # recorded outputs still hold; a stage whose outputs do not runs again.
    holds: Callable[[Outputs], bool] | None = None

    @cached_property
    def depends(self) -> dict[str, Any]:
        """Everything the key covers: the inputs plus the upstream stages' keys, by name."""
        return self.inputs | {s.name: s.key for s in self.after}

    @cached_property
    def key(self) -> str:
        return sha256_json({"stage": self.name, "inputs": self.depends, "tunewise": __version__})


@dataclass
class StageResult:
    name: str
    status: str  # "ran" | "cached" | "skipped"
    seconds: float
    outputs: dict[str, Any]


@dataclass
class LadderResult:
    work_dir: Path
    stages: list[StageResult] = field(default_factory=list)
    verdict: dict[str, Any] | None = None
    eval_dir: Path | None = None
    test_dir: Path | None = None  # the sealed test evaluation, after --final

    @property
    def all_cached(self) -> bool:
        return all(s.status != "ran" for s in self.stages)


class Ladder:
    """Runs stages in order, skipping those whose key is unchanged."""

    def __init__(
        self, cfg: ProjectConfig, console: Console | None = None, quiet: bool = False
    ) -> None:
        self.cfg = cfg
        self.work = cfg.work_dir  # created by the first stage that runs (a dry run writes none)
        self.state_path = self.work / "ladder.json"
        self.console = console or Console(stderr=False, quiet=quiet)
        self.state: dict[str, Any] = self._load_state()
        self.result = LadderResult(work_dir=self.work)

    def _load_state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def run(self, stages: Sequence[Stage]) -> dict[Stage, Outputs]:
        """Every stage in order, numbered ``[i/n]``; returns each stage's outputs.

        SIGTERM (how a background job is stopped) is handled like Ctrl-C.
        """
        done: dict[Stage, Outputs] = {}
        with sigterm_as_interrupt():
            for index, stage in enumerate(stages, start=1):
                missing = [s.name for s in stage.after if s not in done]
                if missing:  # a mistake in the table, not the user's
                    raise ValueError(f"stage {stage.name} reads from {missing}, not run before it")
                label = f"[{index}/{len(stages)}] {stage.name}"
                done[stage] = self._stage(stage, label, {s: done[s] for s in stage.after})
        return done

    def reusable(self, stage: Stage) -> bool:
        """Whether ``stage`` would come back from the cache: same key, its files still there,
        and what it recorded elsewhere still holds (``Stage.holds``)."""
        prev = self.state.get(stage.name)
        return bool(
            prev
            and prev.get("key") == stage.key
            and all(Path(p).exists() for p in prev.get("paths", []))
            and (stage.holds is None or stage.holds(prev.get("outputs") or {}))
        )

    def _stage(self, stage: Stage, label: str, upstream: dict[Stage, Outputs]) -> Outputs:
        prev = self.state.get(stage.name) or {}
        if self.reusable(stage):
            self.console.print(f"[dim]✓ {label}: unchanged, cached[/]")
            self.result.stages.append(StageResult(stage.name, "cached", 0.0, prev["outputs"]))
            return prev["outputs"]
        self.work.mkdir(parents=True, exist_ok=True)
        self.console.rule(f"[bold]{label}")
        started = time.time()
        try:
            outputs = stage.run(upstream)
        except BaseException as exc:
            self._record_attempt(stage, exc, time.time() - started)
            if isinstance(exc, KeyboardInterrupt):
                # Without this the user sees a bare exit and cannot tell what was kept.
                kept = [s.name for s in self.result.stages]
                how = " (SIGTERM)" if isinstance(exc, Terminated) else ""
                self.console.print(
                    f"\n[yellow]interrupted{how} in {label}[/]; finished stages are kept"
                    f"{' (' + ', '.join(kept) + ')' if kept else ''}: "
                    "run the same command again to resume"
                )
            raise
        seconds = time.time() - started
        paths = [v for v in outputs.values() if isinstance(v, str) and v.startswith("/")]
        record: dict[str, Any] = {
            "key": stage.key,
            "outputs": outputs,
            "paths": paths,
            "seconds": round(seconds, 2),  # this run's wall time
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        # Work an interrupted attempt did (generations in the cache, training checkpoints) makes
        # this run fast; the time that work took is kept beside it.
        attempts = [a for a in prev.get("attempts", []) if a.get("key") == stage.key]
        if attempts:
            total = seconds + sum(float(a["seconds"]) for a in attempts)
            record |= {"attempts": attempts, "total_seconds": round(total, 2)}
        self.state[stage.name] = record
        # Recorded only after the stage finished: Ctrl-C inside it leaves the old outputs alone.
        atomic_write_json(self.state_path, self.state)
        spent = (
            f" ({total:.1f}s with {len(attempts)} earlier attempt(s) of this stage)"
            if attempts
            else ""
        )
        self.console.print(f"[green]✓ {label}[/] in {seconds:.1f}s{spent}")
        self.result.stages.append(StageResult(stage.name, "ran", seconds, outputs))
        return outputs

    def _record_attempt(self, stage: Stage, exc: BaseException, seconds: float) -> None:
        """Keep the wall time of an attempt that did not finish (interrupted, terminated, failed)
        beside the stage's record, without touching its outputs: the run that finishes the stage
        adds it to its own time."""
        how = (
            "terminated"
            if isinstance(exc, Terminated)
            else "interrupted"
            if isinstance(exc, KeyboardInterrupt)
            else "failed"
        )
        record = self.state.setdefault(stage.name, {})
        earlier = [a for a in record.get("attempts", []) if a.get("key") == stage.key]
        attempt = {"key": stage.key, "how": how, "seconds": round(seconds, 2)}
        record["attempts"] = [*earlier, attempt | {"at": time.strftime("%Y-%m-%dT%H:%M:%S")}]
        # The exception being handled matters more than this record: a failed write (disk full)
        # must not replace it.
        with contextlib.suppress(OSError):
            atomic_write_json(self.state_path, self.state)
