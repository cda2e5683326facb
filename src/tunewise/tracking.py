"""MLflow, optional: training runs, the ladder's results and registry aliases, mirrored.

``pip install 'tunewise[mlflow]'`` and either ``tracking.mlflow.uri`` in ``project.yaml`` or the
environment variable ``TUNEWISE_MLFLOW_URI`` (which wins: the same project can log to a team
server in CI and nowhere on a laptop). Nothing here runs unless one of them is set, and tunewise
itself never imports mlflow otherwise.

What goes where (one MLflow experiment per project, ``tracking.mlflow.experiment`` or the name):

* **a training run** (:class:`TrainingTracker`, a ``TrainerCallback``): the parameters that decide
  the run (method, the ``train`` section, base model and its weight hash, data hashes), every
  Trainer log as a metric at its optimizer step (loss, learning rate, grad norm, validation loss,
  and the overfitting detector's repetition scores), then ``run.json``, ``logs.jsonl`` and the
  adapter files as artefacts. Its MLflow run id is kept in ``run.json``, so a resumed training
  continues the same MLflow run.
* **a ladder run** (:func:`log_ladder`): every candidate's metrics with their confidence interval
  bounds, each fine-tune's paired differences against the baselines, the gate's verdict as tags,
  and the comparison, verdicts and report as artefacts; the fine-tune's training runs get the
  verdict as a tag too.
* **the model registry** (:func:`mirror_registry`): after ``registry promote`` / ``rollback``,
  MLflow's registered model of the same name holds one version per tunewise version (adapter
  files only; the base model is a reference in tags, never uploaded) and the same aliases.

Why not transformers' ``MLflowCallback``: it is configured only through process-wide environment
variables and MLflow's global "active run"; it logs ``TrainingArguments`` and the model config
(about 200 keys, most irrelevant) instead of what decides a tunewise run; it starts a new MLflow
run on every resume; and its artefact option logs each checkpoint as a ``pyfunc`` model, which is
a pickle. :class:`TrainingTracker` uses an explicit ``MlflowClient`` and run id instead.

Failures: an unreachable server or a missing ``mlflow`` package is a one-line ``UserError``
before anything starts (MLflow's own client would retry for minutes). A logging call that fails
in the middle of a training run warns once and stops logging; the training goes on.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from tunewise.errors import UserError
from tunewise.eval.results import COMPARISON_FILE, EVAL_FILE, VERDICT_FILE, Comparison, Verdict
from tunewise.progress import make_console
from tunewise.registry.store import Registry
from tunewise.rundir import RunDir

if TYPE_CHECKING:
    from tunewise.config import ProjectConfig
    from tunewise.registry.types import Version

ENV_URI = "TUNEWISE_MLFLOW_URI"
MAX_PARAM_CHARS = 6000  # MLflow's limit on a parameter value
_BAD_KEY = re.compile(r"[^0-9A-Za-z_\-. /:]")  # characters MLflow refuses in metric names


@dataclass(frozen=True)
class Target:
    """Where records go: a tracking URI (also the registry URI) and an experiment name."""

    uri: str
    experiment: str


def target_of(config: ProjectConfig | dict[str, Any] | None) -> Target | None:
    """The MLflow target of a project (a config or its ``dump_project`` dict); None when off."""
    if config is None:
        raw: dict[str, Any] = {}
        name = "tunewise"
    elif isinstance(config, dict):
        raw = ((config.get("tracking") or {}).get("mlflow")) or {}
        name = str(config.get("name") or "tunewise")
    else:
        raw = config.tracking.mlflow.model_dump()
        name = config.name
    uri = os.environ.get(ENV_URI) or raw.get("uri")
    if not uri:
        return None
    return Target(uri=str(uri), experiment=str(raw.get("experiment") or name))


def metric_key(name: str) -> str:
    """``name`` with the characters MLflow refuses (``+``, parentheses, ...) replaced by ``_``."""
    return _BAD_KEY.sub("_", name)


def _flat(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = str(value)[:MAX_PARAM_CHARS]


def flatten(params: dict[str, Any]) -> dict[str, str]:
    """``{"train": {"lr": 1e-4}}`` -> ``{"train.lr": "0.0001"}``: MLflow params are flat."""
    out: dict[str, str] = {}
    _flat("", params, out)
    return out


class Tracker:
    """One MLflow client for one :class:`Target`: experiment, runs, metrics, artefacts."""

    def __init__(self, target: Target) -> None:
        try:
            from mlflow import MlflowClient  # lazy: mlflow, ~1.5 s to import and an optional extra
        except ImportError:
            raise UserError(
                f"MLflow tracking is configured ({target.uri}) but mlflow is not installed: "
                "pip install 'tunewise[mlflow]', or unset tracking.mlflow.uri / " + ENV_URI
            ) from None
        # MLflow prints "View run ..." links on stdout, which would corrupt `--json` output.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.target = target
        _check_reachable(target.uri)
        self.client = MlflowClient(tracking_uri=target.uri, registry_uri=target.uri)
        self._experiment_id: str | None = None

    @property
    def experiment_id(self) -> str:
        """The experiment's id, created on first use (artefacts beside a sqlite database)."""
        if self._experiment_id is None:
            name = self.target.experiment
            found = self.client.get_experiment_by_name(name)
            if found is None:
                try:
                    self._experiment_id = self.client.create_experiment(
                        name, artifact_location=_artifact_location(self.target.uri, name)
                    )
                except Exception:  # another process created it first
                    found = self.client.get_experiment_by_name(name)
                    if found is None:
                        raise
            if found is not None:
                self._experiment_id = found.experiment_id
        return str(self._experiment_id)

    def start_run(self, name: str, tags: dict[str, str], resume_id: str | None = None) -> str:
        """A new run (or ``resume_id`` when that run still exists here); returns its id."""
        if resume_id:
            try:
                run = self.client.get_run(resume_id)
                if run.info.lifecycle_stage == "active":
                    self.client.update_run(resume_id, status="RUNNING")
                    return resume_id
            except Exception:  # deleted, or from another server: start afresh
                pass
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        return str(run.info.run_id)

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param  # lazy: mlflow, ~1.5 s to import and an optional extra

        items = [Param(k, v) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 per batch
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric  # lazy: mlflow, ~1.5 s to import and an optional extra

        now = int(time.time() * 1000)
        items = [Metric(metric_key(k), float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i : i + 1000])

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag  # lazy: mlflow, ~1.5 s to import and an optional extra

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_files(self, run_id: str, files: list[Path], artifact_path: str | None = None) -> None:
        for f in files:
            if f.is_file():
                self.client.log_artifact(run_id, str(f), artifact_path)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def run_url(self, run_id: str) -> str:
        if self.target.uri.startswith(("http://", "https://")):
            base = self.target.uri.rstrip("/")
            return f"{base}/#/experiments/{self.experiment_id}/runs/{run_id}"
        return f"{self.target.uri} run {run_id}"


def _check_reachable(uri: str) -> None:
    """A one-line error now, instead of MLflow's client retrying for minutes."""
    if uri.startswith(("http://", "https://")):
        try:
            httpx.get(uri.rstrip("/") + "/health", timeout=10).raise_for_status()
        except httpx.HTTPError as exc:
            raise UserError(
                f"MLflow tracking server {uri} is not reachable ({exc}); start it, or unset "
                f"tracking.mlflow.uri / {ENV_URI}"
            ) from None
    elif uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"{uri}: cannot create {db.parent}: {exc.strerror}") from None


def _artifact_location(uri: str, experiment: str) -> str | None:
    """Beside the database for a sqlite store (MLflow's default is ./mlruns in the working dir)."""
    if not uri.startswith("sqlite:///"):
        return None  # a server decides (its --artifacts-destination or default root)
    db = Path(uri.removeprefix("sqlite:///")).resolve()
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", experiment)
    return (db.parent / "mlflow-artifacts" / safe).as_uri()


# ------------------------------------------------------------------------------ training


def _numeric(logs: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in logs.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def training_tracker(cfg: ProjectConfig, previous: dict[str, Any] | None = None) -> Any:
    """A :class:`TrainingTracker` callback when tracking is configured, else None.

    ``previous`` is the ``run.json`` of the run being resumed: its MLflow run is continued.
    Only the main process tracks (the others get None).
    """
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    target = target_of(cfg)
    if target is None:
        return None
    return _tracker_class()(Tracker(target), cfg, previous)


# The callback's work, as plain functions of the callback (``cb``): the class itself is built
# lazily by _tracker_class, and keeping its methods one line each keeps that factory short.


def _start_run(cb: Any, run_dir: Path, record: dict[str, Any]) -> dict[str, str]:
    tags = {
        "tunewise.kind": "train",
        "tunewise.project": cb.cfg.name,
        "tunewise.run_dir": str(run_dir),
        "tunewise.method": str(record.get("method")),
    }
    cb.run_id = cb.tracker.start_run(run_dir.name, tags, cb.resume_id)
    if cb.run_id != cb.resume_id:
        cb.tracker.log_params(cb.run_id, training_params(record))
    return {
        "uri": cb.tracker.target.uri,
        "experiment": cb.tracker.target.experiment,
        "run_id": cb.run_id,
    }


def _call_safely(cb: Any, what: str, fn: Any, *args: Any) -> None:
    if cb.run_id is None or cb.failed:
        return
    try:
        fn(*args)
    except Exception as exc:  # tracking must never cost a training run
        cb.failed = f"MLflow {what} failed ({exc}); tracking stopped for this run"
        make_console(stderr=True).print(f"[yellow]warning:[/] {cb.failed}")


def _detector_metrics(metrics: dict | None) -> dict[str, Any]:
    # The overfitting detector adds these after the Trainer has logged the evaluation.
    return {k: v for k, v in (metrics or {}).items() if k in ("eval_repetition", "eval_distinct2")}


def _finish_run(cb: Any, run_dir: Path, record: dict[str, Any], status: str) -> None:
    files = [run_dir / "run.json", run_dir / "logs.jsonl"]
    adapter = [run_dir / f for f in record.get("files") or [] if not f.endswith("/")]
    tags = {
        "tunewise.status": record.get("status"),
        "tunewise.stop_reason": record.get("stop_reason"),
    }
    if any(f.endswith("/") for f in record.get("files") or []):
        tags["tunewise.weights"] = "not logged (full fine-tune: see the registry)"
    summary = {
        k: record[k]
        for k in ("best_val_loss", "train_loss", "tokens_per_s", "wall_time_s")
        if isinstance(record.get(k), int | float)
    }
    step = int(record.get("global_step") or 0)
    _call_safely(cb, "final metrics", cb.tracker.log_metrics, cb.run_id, summary, step)
    _call_safely(cb, "tags", cb.tracker.set_tags, cb.run_id, tags)
    _call_safely(cb, "artefacts", cb.tracker.log_files, cb.run_id, files)
    _call_safely(cb, "adapter upload", cb.tracker.log_files, cb.run_id, adapter, "adapter")
    _call_safely(cb, "end", cb.tracker.end_run, cb.run_id, status)


def _tracker_class() -> type:
    # Built on first use, so importing this module does not import transformers.
    from transformers import TrainerCallback

    class TrainingTracker(TrainerCallback):
        """Parameters at the start, every log as a metric, artefacts and status at the end."""

        def __init__(
            self, tracker: Tracker, cfg: ProjectConfig, previous: dict[str, Any] | None
        ) -> None:
            self.tracker = tracker
            self.cfg = cfg
            old = (previous or {}).get("mlflow") or {}
            same = old.get("uri") == tracker.target.uri
            self.resume_id = old.get("run_id") if same else None
            self.run_id: str | None = None
            self.failed: str | None = None

        def start(self, run_dir: Path, record: dict[str, Any]) -> dict[str, str]:
            """Create (or reattach to) the MLflow run; returns what ``run.json`` keeps of it."""
            return _start_run(self, run_dir, record)

        def _safely(self, what: str, fn: Any, *args: Any) -> None:
            _call_safely(self, what, fn, *args)

        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any
        ) -> None:
            if logs and state.is_world_process_zero:
                metrics, step = _numeric(logs), state.global_step
                self._safely("logging", self.tracker.log_metrics, self.run_id, metrics, step)

        def on_evaluate(
            self, args: Any, state: Any, control: Any, metrics: dict | None = None, **kw: Any
        ) -> None:
            extra = _detector_metrics(metrics)
            if extra and state.is_world_process_zero:
                extra, step = _numeric(extra), state.global_step
                self._safely("logging", self.tracker.log_metrics, self.run_id, extra, step)

        def finish(self, run_dir: Path, record: dict[str, Any], status: str = "FINISHED") -> None:
            """Artefacts (record, logs, adapter files) and the final status."""
            _finish_run(self, run_dir, record, status)

    return TrainingTracker


def training_params(record: dict[str, Any]) -> dict[str, Any]:
    """What decides a training run, from its ``run.json`` record."""
    config = record.get("config") or {}
    base = record.get("base_model") or {}
    return {
        "method": record.get("method"),
        "train": config.get("train") or {},
        "model": {"base": base.get("name"), "weight_hash": base.get("weight_hash")},
        "data": {
            **{f"{k}_sha256": v for k, v in (record.get("data_hashes") or {}).items()},
            **{f"{k}_examples": v for k, v in (record.get("examples") or {}).items()},
            "max_len": (config.get("data") or {}).get("max_len"),
        },
    }


# ------------------------------------------------------------------------------ the ladder


def ladder_metrics(comparison: Comparison) -> dict[str, float]:
    """Every candidate's metrics with CI bounds, and each fine-tune's paired differences.

    Keys: ``<candidate>/<metric>`` (the point estimate), ``.../ci_low``, ``.../ci_high``;
    ``<candidate>_vs_<baseline>/<metric>/diff`` with its ``ci_low``, ``ci_high`` and ``p_value``.
    NaN bounds (a metric with too few items for an interval) are left out.
    """
    out: dict[str, float] = {}
    for cand, metrics in comparison.metrics.items():
        for metric, est in metrics.items():
            base = f"{cand}/{metric}"
            out |= {base: est.value, f"{base}/ci_low": est.ci_low, f"{base}/ci_high": est.ci_high}
    for p in comparison.pairs:
        base = f"{p.candidate}_vs_{p.baseline}/{p.metric}"
        out |= {f"{base}/{k}": getattr(p, k) for k in ("diff", "ci_low", "ci_high", "p_value")}
    return {metric_key(k): float(v) for k, v in out.items() if v is not None and v == v}


def log_ladder(
    cfg: ProjectConfig,
    eval_dir: Path,
    *,
    verdicts: dict[str, str],
    ship: str | None,
    report_files: list[Path],
    train_runs: dict[str, Path],
) -> str | None:
    """One MLflow run for a ladder's comparison and verdict; returns its id (None when off).

    ``verdicts`` maps each fine-tuned candidate to its verdict file, ``train_runs`` to its run
    directory (whose ``run.json`` names its MLflow training run, if it was tracked here).
    """
    target = target_of(cfg)
    if target is None:
        return None
    tracker = Tracker(target)
    comparison = Comparison.load(eval_dir / COMPARISON_FILE)
    decided = {c: Verdict.load(p) for c, p in verdicts.items()}
    trained = {c: _mlflow_run_of(d, target.uri) for c, d in train_runs.items()}
    tags = {
        "tunewise.kind": "ladder",
        "tunewise.project": cfg.name,
        "tunewise.eval_dir": str(eval_dir),
        "tunewise.verdict": "ship" if ship else "dont_ship",
        "tunewise.shipped": ship or "",
        "tunewise.train_runs": ",".join(r for r in trained.values() if r),
    }
    for cand, v in decided.items():
        tags[f"tunewise.verdict.{metric_key(cand)}"] = v.summary
    run_id = tracker.start_run(f"ladder {cfg.name}", tags)
    meta = comparison.meta
    tracker.log_params(
        run_id,
        {
            "primary_metric": comparison.primary_metric,
            "gate": cfg.gate.model_dump(mode="json"),
            **{k: meta.get(k) for k in ("split", "n_items", "confidence", "ci_method")},
        },
    )
    tracker.log_metrics(run_id, ladder_metrics(comparison))
    files = [eval_dir / COMPARISON_FILE, eval_dir / VERDICT_FILE, *map(Path, verdicts.values())]
    tracker.log_files(run_id, files, "gate")
    tracker.log_files(run_id, [eval_dir / EVAL_FILE], "eval")
    tracker.log_files(run_id, report_files, "report")
    tracker.end_run(run_id)
    for cand, train_id in trained.items():
        if train_id:  # the verdict on the training run itself, where people look first
            shipped = cand in decided and decided[cand].ship
            tracker.set_tags(
                train_id,
                {
                    "tunewise.gate": "ship" if shipped else "dont_ship",
                    "tunewise.ladder_run": run_id,
                },
            )
    return run_id


def ladder_stage(
    cfg: ProjectConfig,
    eval_dir: Path,
    *,
    gate: dict[str, Any],
    report: dict[str, Any],
    runs: dict[str, Path],
) -> dict[str, Any]:
    """The ladder's ``mlflow`` stage: the ladder run, then the registry mirror of its name.

    ``gate`` and ``report`` are the outputs of the ladder's stages of those names.
    """
    run_id = log_ladder(
        cfg,
        eval_dir,
        verdicts=gate["verdicts"],
        ship=gate.get("ship"),
        report_files=[Path(report[k]) for k in ("html", "md") if report.get(k)],
        train_runs=runs,
    )
    mirrored = mirror_registry(Registry(), cfg.name, target_of(cfg)) if runs else None
    return {"run_id": run_id, "registry": mirrored}


def _mlflow_run_of(run_dir: Path, uri: str) -> str | None:
    """The MLflow run id ``run.json`` recorded for a training run tracked at ``uri``."""
    info = (RunDir(run_dir).read() or {}).get("mlflow") or {}
    return info.get("run_id") if info.get("uri") == uri else None


# ------------------------------------------------------------------------------ the registry


def mirror_registry(registry: Registry, name: str, target: Target | None = None) -> str | None:
    """Make MLflow's registered model ``name`` show tunewise's versions and aliases of ``name``.

    Every tunewise version missing there is added, in order (adapter files only: the base model
    is referenced by name, path and weight hash in tags); then every alias is pointed at the
    MLflow version of the same tunewise version. Idempotent: running it again after a failure
    finishes the job. Returns a one-line summary, or None when tracking is not configured for
    this name: ``target``, else ``TUNEWISE_MLFLOW_URI``, else the tracking section of its latest
    version's config.
    """
    versions = registry.versions(name)
    target = target or target_of(versions[-1].config)
    if target is None:
        return None
    tracker = Tracker(target)
    from mlflow.exceptions import MlflowException  # lazy: mlflow, as in Tracker

    try:
        return _mirror(tracker, registry, name, versions)
    except MlflowException as exc:
        raise UserError(f"MLflow registry {target.uri}: {exc.message}") from None


def _mirror(tracker: Tracker, registry: Registry, name: str, versions: list[Version]) -> str:
    client = tracker.client
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        client.create_registered_model(name, tags={"tunewise.registry": str(registry.root)})
    mirrored = {
        mv.tags.get("tunewise.version"): str(mv.version)
        for mv in client.search_model_versions(f"name = '{name}'")
    }
    added = []
    for v in versions:
        if str(v.version) not in mirrored:
            mirrored[str(v.version)] = _mirror_version(tracker, registry, v)
            added.append(v.version)
    moved = []
    for key, version in sorted(registry.aliases().items()):
        vname, alias = key.split("@", 1)
        if vname == name:
            client.set_registered_model_alias(name, alias, mirrored[str(version)])
            moved.append(f"{alias} -> {version}")
    new = f"added version(s) {', '.join(map(str, added))}; " if added else ""
    where = f"MLflow registry {tracker.target.uri} model {name}"
    return f"{where}: {new}aliases {', '.join(moved) or 'none'}"


def _mirror_version(tracker: Tracker, registry: Registry, v: Version) -> str:
    """Upload one version's adapter files to a run and register them; returns MLflow's version."""
    resolved = registry.resolve(v.spec)  # every hash checked before anything leaves the machine
    assert resolved.path is not None
    tags = {
        "tunewise.version": str(v.version),
        "tunewise.kind": v.kind,
        "tunewise.base_model": v.base_model or "",
        "tunewise.base_path": v.base_path or "",
        "tunewise.base_weight_hash": v.base_weight_hash,
        "tunewise.ship": "unknown" if v.ship is None else str(v.ship).lower(),
        "tunewise.source_run": v.source_run,
    }
    run_id = tracker.start_run(f"registry {v.spec}", {"tunewise.kind": "registry", **tags})
    with tempfile.TemporaryDirectory() as tmp:
        adapter = Path(tmp) / "adapter"
        adapter.mkdir()
        for rel in v.files:
            # A full fine-tune's weights are a whole model, not an adapter: they stay here.
            if v.kind == "full" and rel.startswith("model/") and rel.endswith(".safetensors"):
                continue
            dst = adapter / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(resolved.path / rel, dst)
        tracker.client.log_artifacts(run_id, str(adapter), "adapter")
    tracker.end_run(run_id)
    summary = v.verdict.summary if v.verdict is not None else ""
    mv = tracker.client.create_model_version(
        v.name,
        f"runs:/{run_id}/adapter",
        run_id=run_id,
        tags=tags,
        description=summary[:5000],
        await_creation_for=0,  # local and OSS stores are READY at once
    )
    return str(mv.version)
