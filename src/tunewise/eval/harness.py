"""Run every candidate on the same items, grade the outputs and save ``eval.json``.

Candidates (names as in ``eval.candidates``):

* ``prompt``: the base model with the project's system prompt, zero-shot;
* ``fewshot``: plus k train examples (random or most similar) as earlier turns;
* ``rag``: plus the top-k retrieved passages (docs and/or train examples) with citations;
* ``knn``: the embedding-kNN classifier over train examples, no LLM at all (labels tasks; added
  beside ``rag`` as its honest reference score);
* ``tfidf`` and ``probe``: logistic regressions on TF-IDF features and on the same embeddings,
  fitted on train only, one per label field (labels tasks; added beside the rungs while
  ``eval.classical`` is on; see :mod:`tunewise.baselines.classical`);
* ``finetuned`` (one per training run given in ``finetuned``): a LoRA/QLoRA adapter on the shared
  base model, or a full checkpoint on its own engine; ``finetuned+rag`` adds retrieval to it; a
  run trained with ``train.context`` (``finetuned+fewshot``) is always given the context it was
  trained with, built by :mod:`tunewise.baselines.context` from the run's own ``context.json``;
* every ``eval.external`` endpoint, by its name;
* ``<candidate>+constrained``: the same prompt, with the answer chosen among the allowed labels
  by log-likelihood instead of generated freely (labels tasks), or generated under the tools'
  call grammar, so that every call it makes is valid (tools tasks; see eval/constrained.py).

All candidates see the same items in the same order; the statistics pair them item by item. The
sealed test split is refused unless ``final`` is set, and every final use is recorded. Generations
go through the Engine's SQLite cache, so rerunning an evaluation costs nothing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.panel import Panel

from tunewise import __version__ as tw_version
from tunewise.baselines import classical
from tunewise.baselines import prompt as prompt_mod
from tunewise.baselines import rag as rag_mod
from tunewise.baselines.context import CONTEXT_FILE, ContextBuilder, load_run_context
from tunewise.baselines.release import RungRelease, is_release
from tunewise.candidates import (
    CHAMPION,
    CLASSICAL,
    EXTERNAL,
    FINETUNED_GROUPS,
    NO_LLM,
    parse,
)
from tunewise.candidates import CONSTRAINED_SUFFIX as CONSTRAINED
from tunewise.config import ExternalConfig, ProjectConfig
from tunewise.data.own_splits import split_project
from tunewise.data.schema import Example, group_references, load_examples
from tunewise.data.seal import guard
from tunewise.errors import UserError
from tunewise.eval.constrained import (
    ConstrainedLabeler,
    ToolConstraints,
    max_calls_for,
    string_cap_for,
    tool_choice_for,
)
from tunewise.eval.graders import Grader, LLMJudge
from tunewise.eval.items import item_ids
from tunewise.eval.reference import corpus_scores
from tunewise.eval.results import EVAL_FILE, CandidateResult, EvalRun, ItemResult
from tunewise.fsio import sha256_file
from tunewise.progress import Bar, make_console
from tunewise.rundir import RunDir
from tunewise.rungs import RUNGS
from tunewise.runtime import device, models
from tunewise.runtime.cache import GenCache
from tunewise.runtime.engine import Engine, GenRequest
from tunewise.runtime.external import ExternalClient

console = make_console(stderr=True)

Messages = list[dict[str, str]]


# --------------------------------------------------------------------------------------------
# inputs


def split_paths(cfg: ProjectConfig) -> dict[str, Path]:
    """``train``/``val``/``test`` files of the project, split (and the test sealed) on first use."""
    splits = cfg.work_dir / "splits"
    paths = {s: splits / f"{s}.jsonl" for s in ("train", "val", "test")}
    if not paths["train"].is_file():
        console.print(
            f"[dim]no splits in {splits}: splitting {cfg.data.train} (test split sealed)[/]"
        )
        split_project(cfg, splits)  # data.val / data.test, when given, are used as they are
    return paths


def _guard_test(path: Path, *, final: bool, purpose: str) -> dict[str, Any]:
    prior = guard(path, final=final, purpose=purpose)  # raises SealedSplitError unless final
    info: dict[str, Any] = {"final": True, "final_use": prior + 1}
    if prior > 0:
        msg = (
            f"The sealed test split {path} has been evaluated {prior} time(s) before. This number "
            "is NO LONGER an unbiased estimate: choices made after seeing earlier test results "
            "leak into it."
        )
        console.print(Panel(msg, title="WARNING: repeated final evaluation", style="bold red"))
        info["warning"] = msg
    return info


def auto_max_new_tokens(targets: list[str], tokenizer: Any | None) -> int:
    """Room for the longest reference answer plus half again, at least 8 tokens."""
    if tokenizer is not None:
        longest = max(
            (len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in targets), default=16
        )
    else:  # ~4 characters per token for English
        longest = max((len(t) // 3 + 1 for t in targets), default=16)
    return max(8, min(2048, math.ceil(longest * 1.5) + 4))


# --------------------------------------------------------------------------------------------
# the harness


class _Harness:
    def __init__(
        self,
        cfg: ProjectConfig,
        items: list[Example],
        train: list[Example],
        *,
        engine: Any | None,
        progress: bool,
    ) -> None:
        self.cfg = cfg
        self.items = items
        self.train = train
        self._engine = engine
        self._own_engines: list[Any] = []
        self.progress = progress
        self.grader = Grader(cfg, train)
        self.notes: list[str] = []
        self._mnt: int | None = None
        self._builders: dict[str, ContextBuilder] = {}  # fewshot / rag prompt builders
        self._run_contexts: dict[str, ContextBuilder | None] = {}  # by run name
        self._full: dict[str, Any] = {}  # engines of full fine-tuned checkpoints, by run name
        self.ids = item_ids(items)
        self._cache_seen = (0, 0)

    # -- engines -------------------------------------------------------------------------------
    def engine(self) -> Any:
        if self._engine is None:
            self._engine = self._new_engine(self.cfg.model.base)
        return self._engine

    def _new_engine(self, model: str | Path) -> Any:
        eng = Engine(
            models.resolve(model),
            batch_size=self.cfg.eval.batch_size,
            cache=GenCache(),
            placement=device.for_project(self.cfg, "infer"),  # model.device / model.dtype
            allow_special_tokens_in_content=self.cfg.model.allow_special_tokens_in_content,
        )
        self._own_engines.append(eng)
        return eng

    def external(self, ext: ExternalConfig) -> Any:
        """A client for an OpenAI-compatible endpoint, cached like a local engine."""
        client = ExternalClient.from_config(ext, cache=GenCache())
        self._own_engines.append(client)
        return client

    def max_new_tokens(self, engine: Any) -> int:
        if self.cfg.eval.max_new_tokens != "auto":
            return int(self.cfg.eval.max_new_tokens)
        if self._mnt is None:
            # From the reference answers of train only: the evaluated items' answers are not ours
            # to see.
            answers = [ex.target for ex in self.train]
            if hasattr(engine, "max_new_tokens_for"):
                self._mnt = int(engine.max_new_tokens_for(answers))
            else:  # an external client: no tokenizer of its own here
                self._mnt = auto_max_new_tokens(answers, None)
        return self._mnt

    # -- prompts -------------------------------------------------------------------------------
    def prompt_messages(self) -> list[Messages]:
        return [prompt_mod.build_messages(self.cfg, ex) for ex in self.items]

    def fewshot_messages(self) -> tuple[list[Messages], dict[str, Any]]:
        msgs, meta, _ = self.context_builder("fewshot").prompts(self.items)
        return msgs, meta

    def context_builder(self, mode: str) -> ContextBuilder:
        """The ``fewshot`` or ``rag`` rung's prompt builder over train (built once)."""
        if mode not in self._builders:
            rc = self.cfg.eval.rag
            if mode == "rag" and "docs" in rc.sources and self.cfg.data.docs is None:
                self.notes.append("rag: data.docs is not set, retrieving from train examples only")
            self._builders[mode] = ContextBuilder.from_config(self.cfg, mode, self.train)
        return self._builders[mode]

    def rag_index(self) -> rag_mod.RagIndex:
        return self.context_builder("rag").index()

    def rag_messages(self) -> tuple[list[Messages], dict[str, Any], list[dict[str, Any]]]:
        # The gate and the advisor call a RAG win a knowledge task only when documents were
        # there: meta["sources"] says what was actually retrieved from.
        msgs, meta, per_item = self.context_builder("rag").prompts(self.items)
        assert per_item is not None
        return msgs, meta, per_item

    def run_context(self, name: str, finetuned: dict[str, Path]) -> ContextBuilder | None:
        """The context builder a fine-tuned run was trained with (its ``context.json``)."""
        if name not in finetuned:
            return None
        if name not in self._run_contexts:
            self._run_contexts[name] = load_run_context(finetuned[name])
        return self._run_contexts[name]

    # -- running -------------------------------------------------------------------------------
    def generate(
        self, name: str, engine: Any, msgs: list[Messages], adapter: str | None
    ) -> list[str]:
        mnt = self.max_new_tokens(engine)
        reqs = [GenRequest(messages=m, adapter=adapter, max_new_tokens=mnt) for m in msgs]
        if self.progress:
            console.print(f"[bold]{name}[/]: {len(reqs)} answers (max {mnt} new tokens)")
        return [r.text for r in engine.generate(reqs, progress=self.progress)]

    def constrained(
        self, name: str, engine: Any, msgs: list[Messages], adapter: str | None
    ) -> tuple[list[str], dict, list[dict] | None]:
        if self.cfg.task.type == "tools":  # calls decoded under the tools' grammar
            outs, meta = self.tool_constrained(name, engine, msgs, adapter)
            return outs, meta, None
        spec = self.grader.spec
        assert spec is not None
        labeler = ConstrainedLabeler(spec, [ex.target for ex in self.train])
        with _bar(self.progress, f"{name} (scoring labels, {labeler.mode})", len(msgs)) as advance:
            chosen = labeler.choose_many(engine, msgs, adapter, progress=advance)
        meta = {
            "mode": labeler.mode,
            "combinations": labeler.n_combinations,
            "calibration": "pmi" if labeler.calibrate else "none",
        }
        return [c[0] for c in chosen], meta, [c[1] for c in chosen]

    def tool_constrained(
        self, name: str, engine: Any, msgs: list[Messages], adapter: str | None
    ) -> tuple[list[str], dict[str, Any]]:
        """Answers generated under the item's tools' call grammar (see eval/constrained.py)."""
        grammar = ToolConstraints(
            getattr(engine, "tokenizer", None),
            tool_choice_for(self.train),
            string_cap_for(self.train),
            max_calls_for(self.train),
        )
        mnt = self.max_new_tokens(engine)
        reqs = [
            GenRequest(m, adapter=adapter, max_new_tokens=mnt, constraint=grammar.for_item(ex, m))
            for ex, m in zip(self.items, msgs, strict=True)
        ]
        if self.progress:
            console.print(
                f"[bold]{name}[/]: {len(reqs)} answers under the tools' call grammar "
                f"(tool_choice {grammar.mode}, max {mnt} new tokens)"
            )
        outs = [r.text for r in engine.generate(reqs, progress=self.progress)]
        return outs, {**grammar.describe(), "max_new_tokens": mnt}

    def result(
        self,
        name: str,
        kind: str,
        outputs: list[str],
        meta: dict[str, Any],
        per_item: list[dict[str, Any]] | None = None,
    ) -> CandidateResult:
        items = []
        for i, (ex, out, iid) in enumerate(zip(self.items, outputs, self.ids, strict=True)):
            scores, gold, pred, m = self.grader.grade(out, ex)
            if per_item:
                m = {**per_item[i], **m}
            items.append(
                ItemResult(
                    item_id=iid, output=out, scores=scores, gold=gold, predicted=pred, meta=m
                )
            )
        if self.grader.reference_metrics:
            # What papers quote: the corpus score as sacrebleu reports it (0..100), beside the
            # per-item scores the paired tests resample.
            refs = [ex.references for ex in self.items]
            metrics = self.grader.reference_metrics
            meta = {**meta, "corpus": corpus_scores(outputs, refs, metrics)}
        return CandidateResult(name=name, kind=kind, items=items, meta=meta)

    def cache_delta(self) -> dict[str, int]:
        """Cache hits and misses since the last call, over every engine of this evaluation."""
        engines = [e for e in [self._engine, *self._own_engines] if e is not None]
        caches = {id(c): c for e in engines if (c := getattr(e, "cache", None)) is not None}
        hits = sum(getattr(c, "hits", 0) for c in caches.values())
        misses = sum(getattr(c, "misses", 0) for c in caches.values())
        prev = self._cache_seen
        self._cache_seen = (hits, misses)
        if not caches:
            return {}
        return {"cache_hits": hits - prev[0], "cache_misses": misses - prev[1]}

    def close(self) -> None:
        for eng in self._own_engines:
            for obj in (eng, getattr(eng, "cache", None)):
                close = getattr(obj, "close", None)
                if callable(close):
                    close()


@contextmanager
def _bar(enabled: bool, label: str, total: int) -> Iterator[Callable[[], None]]:
    """A progress display that yields an ``advance()`` callable (a no-op when quiet)."""
    with Bar(label, total, console=console, enabled=enabled) as bar:
        yield bar.advance


def _adapter_hash(run: RunDir) -> str | None:
    f = run.adapter_weights
    return sha256_file(f)[:16] if f.is_file() else None


def plan_candidates(
    cfg: ProjectConfig, candidates: list[str] | None, finetuned: dict[str, Path]
) -> list[str]:
    """The ordered candidate names this evaluation runs."""
    asked = list(candidates if candidates is not None else cfg.eval.candidates)
    ext_names = [e.name for e in cfg.eval.external]
    own = set(ext_names) | set(finetuned)  # names this project or this call gives meaning to
    for name in asked:
        c = parse(name)
        if c.kind in ("other", "champion") and c.base not in own and not c.base.endswith("+rag"):
            known = sorted({*RUNGS, *NO_LLM, *FINETUNED_GROUPS, EXTERNAL, *own})
            raise UserError(
                f"eval.candidates: unknown candidate {name!r} (known: {', '.join(known)})"
            )
    plan: list[str] = []
    for name in asked:
        if name.endswith(CONSTRAINED):
            continue
        if name == "finetuned":
            plan += [n for n in finetuned if n not in plan]
        elif name == "finetuned+fewshot":
            # the runs trained with few-shot context (none before the ladder has trained them)
            plan += [n for n in finetuned if n.endswith("+fewshot") and n not in plan]
        elif name == "finetuned+rag":
            # A context-trained run already carries its context; and a run trained with rag
            # context named "finetuned+rag" is that run, not "finetuned" with a RAG prompt.
            plan += [
                f"{n}+rag"
                for n in finetuned
                if not _context_trained(finetuned[n])
                and f"{n}+rag" not in finetuned
                and not is_release(finetuned[n])
            ]
        elif name == "external":
            plan += ext_names
        elif name not in plan:
            plan.append(name)
    # Training runs passed explicitly are evaluated even when "finetuned" is not listed.
    plan += [n for n in finetuned if n not in plan]
    _add_references(cfg, plan)
    return plan + _constrained_variants(cfg, asked, plan, finetuned)


def _add_references(cfg: ProjectConfig, plan: list[str]) -> None:
    """On a labels task, the references without an LLM beside the rungs (in place): kNN after
    a RAG rung that retrieves train examples, and the classical classifiers."""
    if (
        cfg.task.type == "labels"
        and "rag" in plan
        and "knn" not in plan
        and "train" in cfg.eval.rag.sources
    ):
        plan.insert(plan.index("rag") + 1, "knn")
    if cfg.task.type == "labels" and cfg.eval.classical and any(r in plan for r in RUNGS):
        # The cheapest honest bar on a label task: a classifier without an LLM, next to the rungs.
        at = 1 + max(plan.index(r) for r in (*RUNGS, "knn") if r in plan)
        plan[at:at] = [c for c in CLASSICAL if c not in plan]


def _constrained_variants(
    cfg: ProjectConfig, asked: list[str], plan: list[str], finetuned: dict[str, Path]
) -> list[str]:
    """The constrained candidates (labels scored, or calls decoded under the tools' grammar):
    those listed, one per training run for the ``finetuned...`` names; or, with none listed and
    ``eval.constrained`` on, one per local candidate of ``plan``."""
    explicit: list[str] = []
    for n in asked:
        if n in (f"finetuned{CONSTRAINED}", f"finetuned+rag{CONSTRAINED}"):  # one per training run
            suffix = n.removeprefix("finetuned")
            explicit += [f"{run}{suffix}" for run in finetuned if f"{run}{suffix}" not in explicit]
        elif n == f"finetuned+fewshot{CONSTRAINED}":
            explicit += [
                f"{run}{CONSTRAINED}"
                for run in finetuned
                if run.endswith("+fewshot") and f"{run}{CONSTRAINED}" not in explicit
            ]
        elif n.endswith(CONSTRAINED) and n not in explicit:
            explicit.append(n)
    if cfg.task.type in ("labels", "tools"):  # labels scored, or calls decoded under a grammar
        if explicit:
            local = set(RUNGS) | set(finetuned) | {f"{n}+rag" for n in finetuned}
            for n in explicit:
                if n.removesuffix(CONSTRAINED) not in local:
                    raise UserError(
                        f"candidate {n!r}: constrained mode needs a local model candidate "
                        f"({', '.join(sorted(local))})"
                    )
            return explicit
        elif cfg.eval.constrained:
            local = [
                n
                for n in plan
                if n in RUNGS or n in finetuned or n.removesuffix("+rag") in finetuned
            ]
            # a rung release answers as it was released (the server does not score labels)
            return [f"{n}{CONSTRAINED}" for n in local if not _is_release_run(finetuned, n)]
    return []


def _is_release_run(finetuned: dict[str, Path], name: str) -> bool:
    return name in finetuned and is_release(finetuned[name])


def _context_trained(run_dir: Path) -> bool:
    return (Path(run_dir) / CONTEXT_FILE).is_file()


def evaluate(
    cfg: ProjectConfig,
    *,
    split: str = "val",
    candidates: list[str] | None = None,
    finetuned: dict[str, Path] | None = None,
    final: bool = False,
    out_dir: Path | None = None,
    engine: Any | None = None,
    progress: bool = True,
    limit: int | None = None,
) -> EvalRun:
    """Evaluate every candidate on the same items of ``split`` and save ``out_dir/eval.json``."""
    if split not in ("val", "test"):
        raise UserError(f"--split {split!r}: expected val or test")
    finetuned = {k: Path(v) for k, v in (finetuned or {}).items()}
    plan = plan_candidates(cfg, candidates, finetuned)
    paths = split_paths(cfg)
    path = paths[split]
    if not path.is_file():
        raise UserError(f"{path}: split file not found; run `tunewise data split`")
    meta: dict[str, Any] = {
        "tunewise": tw_version,
        "split_path": str(path),
        "model": cfg.model.base,
        "candidates": plan,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if split == "test":
        meta.update(_guard_test(path, final=final, purpose=f"eval: {', '.join(plan)}"))
    items = load_examples(path, cfg.task.tools)
    if cfg.task.type == "text":
        # Lines that share a prompt are one input with several references (DART, E2E write a
        # line per reference): scored once, against all of them.
        items = group_references(items)
    limit = limit or cfg.eval.limit
    if limit:
        items = items[:limit]
    if not items:
        raise UserError(f"{path}: no items to evaluate")
    h = _Harness(
        cfg, items, load_examples(paths["train"], cfg.task.tools), engine=engine, progress=progress
    )
    spec = h.grader.spec
    h.notes += prompt_mod.prompt_notes(cfg, spec.labels if spec else None)
    asked = candidates if candidates is not None else cfg.eval.candidates
    if any(c in FINETUNED_GROUPS for c in asked) and not finetuned:
        h.notes.append(
            "finetuned: no training run given (pass --finetuned RUN); evaluated the other "
            "candidates"
        )
    try:
        results = _run_candidates(h, plan, finetuned)
        if "judge" in cfg.eval.graders:
            meta["judge"] = _judge_all(h, list(results.values()))
    finally:
        h.close()
    run = EvalRun(
        project=cfg.name,
        split=split,
        split_hash=sha256_file(path),
        primary_metric=cfg.eval.primary_metric,
        item_ids=h.ids,
        candidates=[results[n] for n in plan if n in results],
        meta={**meta, "notes": h.notes, "n_items": len(items), "limit": limit},
    )
    run.save(Path(out_dir if out_dir is not None else default_out_dir(cfg, split)) / EVAL_FILE)
    return run


def default_out_dir(cfg: ProjectConfig, split: str) -> Path:
    """Where an evaluation of ``split`` goes unless told: ``.tunewise/eval`` or ``eval-test``."""
    return cfg.work_dir / ("eval" if split == "val" else f"eval-{split}")


# (prompts, adapter, engine, meta, per-item meta) of a local candidate
_Prepared = tuple[list[Messages], str | None, Any, dict[str, Any], list[dict[str, Any]] | None]


def _run_candidates(
    h: _Harness, plan: list[str], finetuned: dict[str, Path]
) -> dict[str, CandidateResult]:
    """Every planned candidate's result, timed, with the cache hits it made."""
    results: dict[str, CandidateResult] = {}
    prompts: dict[str, _Prepared] = {}  # the free-generation prompts, reused by +constrained
    for name in plan:
        t0 = time.perf_counter()
        res = _run_candidate(h, name, finetuned, prompts)
        res.meta["seconds"] = round(time.perf_counter() - t0, 2)
        res.meta.update(h.cache_delta())
        results[name] = res
    return results


def _run_candidate(
    h: _Harness, name: str, finetuned: dict[str, Path], prompts: dict[str, _Prepared]
) -> CandidateResult:
    """One candidate's answers to every item, graded."""
    cfg, spec = h.cfg, h.grader.spec
    if name in finetuned and is_release(finetuned[name]):  # a registry version of a rung
        return _release_result(h, name, finetuned[name])
    base = name.removesuffix(CONSTRAINED)
    if name.endswith(CONSTRAINED):
        if base not in prompts:  # e.g. prompt+constrained asked without free prompt generation
            prompts[base] = _messages_for(h, base, finetuned)
        msgs, adapter, eng, pmeta, _ = prompts[base]
        outs, cmeta, per_item = h.constrained(name, eng, msgs, adapter)
        return h.result(name, "constrained", outs, {**pmeta, **cmeta, "of": base}, per_item)
    if name == "knn":
        knn = rag_mod.KnnClassifier(
            h.train, k=10, label_of=lambda t: spec.key(spec.extract(t)) if spec else t
        )
        knn_meta = {"k": knn.k, "embedding": knn.embedder.model_id}
        return h.result(name, "knn", knn.predict(h.items), knn_meta)
    if name in CLASSICAL:
        return _classical_result(h, name)
    if name in ext_map(cfg):
        ext = ext_map(cfg)[name]
        outs = h.generate(name, h.external(ext), h.prompt_messages(), None)
        ext_meta = {
            "base_url": ext.base_url,
            "model": ext.model,
            "prompt_version": prompt_mod.prompt_hash(cfg),
        }
        return h.result(name, "external", outs, ext_meta)
    prompts[name] = msgs, adapter, eng, pmeta, per_item = _messages_for(h, name, finetuned)
    outs = h.generate(name, eng, msgs, adapter)
    kind = "finetuned" if adapter or pmeta.get("full_checkpoint") else name
    if name == CHAMPION:  # the production version, evaluated for the regression check
        kind = "champion"
    meta = {**pmeta, "max_new_tokens": h.max_new_tokens(eng)}
    return h.result(name, kind, outs, meta, per_item)


def _messages_for(h: _Harness, name: str, finetuned: dict[str, Path]) -> _Prepared:
    """(prompts, adapter, engine, meta, per-item meta) of a local candidate."""
    eng, adapter, emeta = _local_engine(h, name, finetuned)
    per_item = None
    trained_with = h.run_context(name, finetuned)
    if trained_with is not None:  # a context-trained run: the context it was trained with
        msgs, pmeta, per_item = trained_with.prompts(h.items)
        pmeta = {**pmeta, "context": trained_with.spec.mode}
    elif name == "fewshot":
        msgs, pmeta = h.fewshot_messages()
    elif name == "rag" or name.endswith("+rag"):
        msgs, pmeta, per_item = h.rag_messages()
    else:  # prompt, and fine-tuned runs: the same zero-shot conversation
        msgs, pmeta = h.prompt_messages(), {"prompt_version": prompt_mod.prompt_hash(h.cfg)}
    return msgs, adapter, eng, {**pmeta, **emeta}, per_item


def _release_result(h: _Harness, name: str, folder: Path) -> CandidateResult:
    """A rung release (a registry version of the prompt, few-shot, RAG or a classifier) answered
    through the release itself, as the server answers it: the champion check of a production
    version that is not a fine-tune."""
    release = RungRelease.load(folder)
    meta: dict[str, Any] = {"run_dir": str(folder), "release": release.kind}
    per_item = None
    if release.uses_llm:
        eng = h.engine()
        have = getattr(getattr(eng, "ref", None), "weight_hash", None)
        if have is not None and release.base_weight_hash != have:
            raise UserError(
                f"{folder}: the {release.kind} release was evaluated on base "
                f"{str(release.base_weight_hash)[:12]}…, this project's base is {have[:12]}…"
            )
        msgs, pmeta, per_item = release.prompts(h.items)
        outs = h.generate(name, eng, msgs, None)
        meta |= {**pmeta, "model_hash": have, "max_new_tokens": h.max_new_tokens(eng)}
    else:
        outs = release.answers(h.items)
    kind = "champion" if name == CHAMPION else release.kind
    return h.result(name, kind, outs, meta, per_item)


def _classical_result(h: _Harness, name: str) -> CandidateResult:
    """A scikit-learn reference fitted on train only, graded like a model's answers."""
    spec = h.grader.spec
    if spec is None or h.cfg.task.type != "labels":
        raise UserError(f"candidate {name!r}: a classical classifier needs a labels task")
    if name == "tfidf":
        clf = classical.tfidf_classifier(spec, h.train)
        meta = {"features": "tf-idf word 1-2 + char 2-5 grams", "C": classical.TFIDF_C}
    else:
        embedder = rag_mod.default_embedder()
        clf = classical.probe_classifier(spec, h.train, embedder.encode)
        meta = {"embedding": embedder.model_id, "C": classical.PROBE_C}
    return h.result(name, "classical", clf.predict(h.items), {**clf.describe(), **meta})


def ext_map(cfg: ProjectConfig) -> dict[str, ExternalConfig]:
    return {e.name: e for e in cfg.eval.external}


def _local_engine(
    h: _Harness, name: str, finetuned: dict[str, Path]
) -> tuple[Any, str | None, dict[str, Any]]:
    """(engine, adapter name, meta) for a base-model or fine-tuned candidate."""
    # A run's own name first: a context-trained run may be called "finetuned+rag".
    run_name = name if name in finetuned else name.removesuffix("+rag")
    if run_name not in finetuned:
        eng = h.engine()
        ref = getattr(eng, "ref", None)
        return eng, None, {"model_hash": getattr(ref, "weight_hash", None)}
    run = RunDir(finetuned[run_name])
    meta: dict[str, Any] = {"run_dir": str(run.path)}
    if run.require_kind() == "lora":  # an adapter on the shared base engine
        eng = h.engine()
        if run_name not in eng.adapters():
            eng.load_adapter(run_name, run.path)  # refuses an adapter trained on another base
        return eng, run_name, {**meta, "adapter_hash": _adapter_hash(run)}
    if run_name not in h._full:  # a full checkpoint: an engine of its own
        h._full[run_name] = h._new_engine(run.model_dir)
    eng = h._full[run_name]
    model_hash = getattr(getattr(eng, "ref", None), "weight_hash", None)
    return eng, None, {**meta, "full_checkpoint": True, "model_hash": model_hash}


def _judge_all(h: _Harness, results: list[CandidateResult]) -> dict[str, Any]:
    """Add a ``judge`` score to every item of every candidate; unparseable replies stay NaN.
    Returns what the evaluation records of the judge: whether its scores are evidence."""
    cfg = h.cfg
    jm = cfg.eval.judge_model
    if jm and jm in ext_map(cfg):
        backend = h.external(ext_map(cfg)[jm])
        evidence = (True, f"the judge is the external endpoint {jm}")
    elif jm:
        backend = h._new_engine(jm)
        evidence = _local_judge_evidence(jm, backend, h.engine())
    else:
        backend = h.engine()
        evidence = (
            False,
            "eval.judge_model is not set: the base model judges itself, no stronger than the "
            "candidates",
        )
    if not evidence[0]:
        h.notes.append(f"judge: not evidence: {evidence[1]}")
    judge = LLMJudge(backend)
    for res in results:
        scores, replies = judge.score_many(
            h.items, [it.output for it in res.items], progress=h.progress
        )
        for it, s, r in zip(res.items, scores, replies, strict=True):
            it.scores["judge"] = s
            it.meta["judge_reply"] = r
        res.meta["judge"] = {
            "model": jm or cfg.model.base,
            "version": judge.version,
            "parse_failures": sum(1 for s in scores if math.isnan(s)),
        }
    return {"model": jm or cfg.model.base, "evidence": evidence[0], "why": evidence[1]}


def _parameters(engine: Any) -> int:
    return sum(p.numel() for p in engine.model.parameters())


def _local_judge_evidence(name: str, judge: Any, base: Any) -> tuple[bool, str]:
    """A local judge counts as evidence only when it is larger than the base model the
    candidates are built on: a judge no stronger than them cannot tell which of them is right."""
    have, need = _parameters(judge), _parameters(base)
    if have > need:
        return True, f"the judge {name} has {have:,} parameters, the base model {need:,}"
    return False, f"the judge {name} has {have:,} parameters, not more than the base's {need:,}"
