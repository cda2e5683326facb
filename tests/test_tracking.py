"""MLflow tracking against a real store: a real ``mlflow server`` (sqlite backend) on loopback.

The server is started once for this module on a free port. If it does not answer within
:data:`SERVER_WAIT_S` (it takes 10-70 s here, most of it creating the database tables), the
tests use the same sqlite store directly, which is the other real backend tunewise supports;
they skip only when mlflow is not installed (CI installs it: ``pip install -e '.[dev,mlflow]'``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner

pytest.importorskip("mlflow", reason="mlflow is not installed: pip install 'tunewise[mlflow]'")

from mlflow import MlflowClient

from _evalfakes import make_run as make_eval_run
from _ship_helpers import make_run
from tunewise import tracking
from tunewise.cli import app
from tunewise.config import load_project
from tunewise.errors import UserError
from tunewise.fsio import sha256_file
from tunewise.registry.store import Registry

SERVER_WAIT_S = 240
runner = CliRunner()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(url: str, http: httpx.Client | None = None) -> bool:
    try:
        return (http or httpx).get(url + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory):
    """A real tracking URI: an ``mlflow server`` on 127.0.0.1, else its sqlite store directly."""
    root = tmp_path_factory.mktemp("mlflow")
    db = f"sqlite:///{root / 'mlflow.db'}"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(root / "server.log", "wb")  # noqa: SIM115 - open for the server's lifetime
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "mlflow", "server", "--backend-store-uri", db),
            *("--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1"),
            *("--port", str(port), "--workers", "1"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"},
    )
    deadline = time.time() + SERVER_WAIT_S
    # Polled often (it is up within a second of being ready, not up to a second after), with one
    # client: httpx.get would build a client, TLS context included, at every poll.
    with httpx.Client() as http:
        while time.time() < deadline and server.poll() is None and not _healthy(url, http):
            time.sleep(0.1)
    try:
        if _healthy(url):
            yield url
        else:
            warnings.warn(
                f"mlflow server did not start in {SERVER_WAIT_S}s; using {db} directly",
                stacklevel=1,
            )
            yield db
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture
def client(mlflow_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)


def _experiment_runs(client: MlflowClient, experiment: str, kind: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r}"
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`tunewise.kind` = '{kind}'")


# ------------------------------------------------------------------------------ configuration


def test_unreachable_server_is_one_clear_error() -> None:
    started = time.time()
    with pytest.raises(UserError, match=r"MLflow tracking server http://127\.0\.0\.1:\d+ is not"):
        tracking.Tracker(tracking.Target(f"http://127.0.0.1:{_free_port()}", "x"))
    assert time.time() - started < 15  # not MLflow's minutes of retries


def test_ladder_metrics_flattening() -> None:
    from tunewise.eval.results import Comparison

    est = {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n": 10}
    pair = {"candidate": "ft", "baseline": "rag", "metric": "accuracy", "diff": 0.1}
    pair |= {"ci_low": 0.01, "ci_high": 0.2, "p_value": 0.03, "test": "mcnemar-exact", "n": 10}
    pair |= {"candidate_value": 0.6, "baseline_value": 0.5}
    nan = {"value": 1.0, "ci_low": None, "ci_high": None, "n": 1}  # no interval on one item
    comp = Comparison.from_dict(
        {
            "primary_metric": "accuracy",
            "metrics": {"rag+constrained": {"accuracy": est}, "x": {"judge": nan}},
            "pairs": [pair],
        }
    )
    assert tracking.ladder_metrics(comp) == {
        "x/judge": 1.0,
        "rag_constrained/accuracy": 0.5,
        "rag_constrained/accuracy/ci_low": 0.4,
        "rag_constrained/accuracy/ci_high": 0.6,
        "ft_vs_rag/accuracy/diff": 0.1,
        "ft_vs_rag/accuracy/ci_low": 0.01,
        "ft_vs_rag/accuracy/ci_high": 0.2,
        "ft_vs_rag/accuracy/p_value": 0.03,
    }


# ------------------------------------------------------------------------------ the ladder


def _gate_dir(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """An eval directory with comparison.json and one verdict, as the ladder's gate writes."""
    from tunewise.config import GateConfig
    from tunewise.decide.gate import decide, save_verdict
    from tunewise.eval import stats

    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    run = make_eval_run({"prompt": 0.4, "fewshot": 0.5, "rag": 0.55, "finetuned": 0.9}, n=120)
    run.save(eval_dir / "eval.json")
    comp = stats.compare(run, baselines=["prompt", "fewshot", "rag"], n_boot=300)
    stats.save_comparison(comp, eval_dir / "comparison.json")
    gate = GateConfig()
    verdict = decide(comp, "finetuned", gate)
    save_verdict(verdict, eval_dir / "verdict-finetuned.json", gate)
    save_verdict(verdict, eval_dir / "verdict.json", gate)
    (eval_dir / "report.md").write_text("# report\n")
    return eval_dir, {"finetuned": str(eval_dir / "verdict-finetuned.json")}


def test_ladder_logs_metrics_with_cis_verdict_and_report(mlflow_uri, client, tmp_path) -> None:
    (tmp_path / "t.jsonl").write_text("")
    raw = {"name": "ladder-proj", "data": {"train": "t.jsonl"}}
    raw["tracking"] = {"mlflow": {"uri": mlflow_uri, "experiment": "ladder-exp"}}
    (tmp_path / "project.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_project(tmp_path)
    eval_dir, verdicts = _gate_dir(tmp_path)
    run_id = tracking.log_ladder(
        cfg,
        eval_dir,
        verdicts=verdicts,
        ship="finetuned",
        report_files=[eval_dir / "report.md"],
        train_runs={},
    )
    run = client.get_run(run_id)
    comp = json.loads((eval_dir / "comparison.json").read_text())
    est = comp["metrics"]["finetuned"]["accuracy"]
    m = run.data.metrics
    assert m["finetuned/accuracy"] == pytest.approx(est["value"])
    assert m["finetuned/accuracy/ci_low"] == pytest.approx(est["ci_low"])
    assert m["finetuned/accuracy/ci_high"] == pytest.approx(est["ci_high"])
    assert m["prompt/accuracy"] == pytest.approx(comp["metrics"]["prompt"]["accuracy"]["value"])
    pair = next(p for p in comp["pairs"] if (p["candidate"], p["baseline"]) == ("finetuned", "rag"))
    assert m["finetuned_vs_rag/accuracy/p_value"] == pytest.approx(pair["p_value"])
    verdict = json.loads((eval_dir / "verdict.json").read_text())
    assert run.data.tags["tunewise.verdict"] == "ship"
    assert run.data.tags["tunewise.verdict.finetuned"] == verdict["summary"]
    assert run.data.params["primary_metric"] == "accuracy"
    assert run.data.params["n_items"] == "120"
    assert run.info.status == "FINISHED"
    names = {
        a.path
        for folder in ("gate", "report", "eval")
        for a in client.list_artifacts(run_id, folder)
    }
    assert {"gate/comparison.json", "gate/verdict.json", "report/report.md"} <= names
    assert "eval/eval.json" in names


# ------------------------------------------------------------------------------ the registry


def _versions_by_tag(client: MlflowClient, name: str) -> dict[str, object]:
    return {
        mv.tags["tunewise.version"]: mv for mv in client.search_model_versions(f"name = '{name}'")
    }


def test_registry_promote_and_rollback_mirror_versions_and_aliases(
    mlflow_uri, client, tiny_model_dir, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv(tracking.ENV_URI, mlflow_uri)
    reg = Registry()
    for seed in (1, 2):
        run_dir = make_run(tiny_model_dir, tmp_path / f"run{seed}", seed=seed, name="mirror-bot")
        reg.add(run_dir, name="mirror-bot")
    ok = runner.invoke(app, ["registry", "promote", "mirror-bot:1", "--force", "--reason", "t"])
    assert ok.exit_code == 0, ok.output
    assert "MLflow" in ok.output
    mirrored = _versions_by_tag(client, "mirror-bot")
    assert set(mirrored) == {"1", "2"}  # every version, in order
    v1 = reg.get("mirror-bot", 1)
    mv1 = mirrored["1"]
    assert mv1.tags["tunewise.base_weight_hash"] == v1.base_weight_hash
    assert mv1.tags["tunewise.base_model"] == v1.base_model
    assert client.get_model_version_by_alias("mirror-bot", "production").version == mv1.version

    # Adapter only, byte for byte: the files MLflow holds are the registry's files.
    got = Path(client.download_artifacts(mv1.run_id, "adapter", str(tmp_path / "dl")))
    assert {p.name for p in got.iterdir()} == set(v1.files)
    for rel, digest in v1.files.items():
        assert sha256_file(got / rel) == digest
    assert not any(p.name == "model.safetensors" for p in got.iterdir())  # no base weights

    ok = runner.invoke(app, ["registry", "promote", "mirror-bot:2", "--force", "--reason", "t"])
    assert ok.exit_code == 0, ok.output
    prod = client.get_model_version_by_alias("mirror-bot", "production")
    assert prod.tags["tunewise.version"] == "2"
    ok = runner.invoke(app, ["registry", "rollback", "mirror-bot"])
    assert ok.exit_code == 0, ok.output
    prod = client.get_model_version_by_alias("mirror-bot", "production")
    assert prod.tags["tunewise.version"] == "1"
    assert len(_versions_by_tag(client, "mirror-bot")) == 2  # nothing registered twice


def test_registry_without_tracking_touches_no_mlflow(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.delenv(tracking.ENV_URI, raising=False)
    reg = Registry()
    reg.add(make_run(tiny_model_dir, tmp_path / "r", name="quiet-bot"), name="quiet-bot")
    assert tracking.mirror_registry(reg, "quiet-bot") is None
    ok = runner.invoke(app, ["registry", "promote", "quiet-bot:1", "--force", "--reason", "t"])
    assert ok.exit_code == 0 and "MLflow" not in ok.output


def test_registry_mirror_failure_keeps_the_local_promotion(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(tracking.ENV_URI, f"http://127.0.0.1:{_free_port()}")
    reg = Registry()
    reg.add(make_run(tiny_model_dir, tmp_path / "r", name="down-bot"), name="down-bot")
    res = runner.invoke(app, ["registry", "promote", "down-bot:1", "--force", "--reason", "t"])
    assert res.exit_code == 1
    assert "promoted locally" in res.output and "not reachable" in res.output
    assert reg.aliases() == {"down-bot@production": 1}


# ------------------------------------------------------------------------------ training


def test_training_run_logs_params_metrics_per_step_and_adapter(
    mlflow_uri, client, tiny_model_dir, tmp_path, monkeypatch
) -> None:
    from _train_helpers import make_project
    from tunewise.train.trainer import train

    monkeypatch.setenv(tracking.ENV_URI, mlflow_uri)
    cfg = load_project(make_project(tmp_path, tiny_model_dir, max_steps=4, eval_every=2))
    run_dir = tmp_path / "run"
    record = train(cfg, run_dir=run_dir, progress=False)
    saved = json.loads((run_dir / "run.json").read_text())
    assert saved["mlflow"]["uri"] == mlflow_uri and saved["mlflow"]["experiment"] == "tiny"
    run = client.get_run(saved["mlflow"]["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    p = run.data.params
    assert p["method"] == "lora" and p["train.lora_r"] == "16" and p["train.max_steps"] == "4"
    assert p["model.weight_hash"] == record["base_model"]["weight_hash"]
    assert p["data.train_sha256"] == record["data_hashes"]["train"]
    # A metric per logged step, the same values as logs.jsonl.
    logs = [json.loads(ln) for ln in (run_dir / "logs.jsonl").read_text().splitlines()]
    eval_loss = {r["step"]: r["eval_loss"] for r in logs if "eval_loss" in r}
    history = client.get_metric_history(run.info.run_id, "eval_loss")
    assert {m.step: m.value for m in history} == pytest.approx(eval_loss)
    assert sorted(eval_loss) == [2, 4]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval_repetition")] == [2, 4]
    assert client.get_metric_history(run.info.run_id, "loss")
    assert run.data.metrics["best_val_loss"] == pytest.approx(record["best_val_loss"])
    assert run.data.tags["tunewise.status"] == "completed"
    got = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "dl")))
    assert sha256_file(got / "adapter" / "adapter_model.safetensors") == sha256_file(
        run_dir / "adapter_model.safetensors"
    )
    assert (got / "run.json").is_file() and (got / "logs.jsonl").is_file()


def test_a_resumed_training_continues_its_mlflow_run(mlflow_uri, client, tmp_path) -> None:
    (tmp_path / "t.jsonl").write_text("")
    raw = {"name": "resume-proj", "data": {"train": "t.jsonl"}}
    raw["tracking"] = {"mlflow": {"uri": mlflow_uri}}
    (tmp_path / "project.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_project(tmp_path)
    record = {"method": "lora", "config": {"train": {"lr": 1e-4}}}
    first = tracking.training_tracker(cfg, None)
    info = first.start(tmp_path / "run", record)
    first.tracker.log_metrics(info["run_id"], {"loss": 2.0}, step=1)
    again = tracking.training_tracker(cfg, {"mlflow": info})
    assert again.start(tmp_path / "run", record)["run_id"] == info["run_id"]
    other = {"mlflow": {**info, "uri": "http://elsewhere:5000"}}  # another server: a new run
    fresh = tracking.training_tracker(cfg, other).start(tmp_path / "r", record)
    assert fresh["run_id"] != info["run_id"]
    assert client.get_run(info["run_id"]).data.params["train.lr"] == "0.0001"


# ------------------------------------------------------------------------------ the whole ladder


def test_ladder_with_own_splits_logs_to_mlflow_once(mlflow_uri, client, tiny_model_dir, tmp_path):
    """Own val/test files and MLflow together, through `run_ladder` (the tiny-model ladder)."""
    from test_workflow import make_project as make_ladder_project
    from test_workflow import write_cfg
    from tunewise.data import seal
    from tunewise.ladder.workflow import run_ladder

    root = make_ladder_project(tmp_path / "proj")
    rows = (root / "data.jsonl").read_text().splitlines(keepends=True)
    (root / "train.jsonl").write_text("".join(rows[:48]))
    (root / "val.jsonl").write_text("".join(rows[48:60]))
    (root / "test.jsonl").write_text("".join(rows[60:]) + rows[0])  # one exact leak
    path = write_cfg(root, tiny_model_dir)
    raw = yaml.safe_load(path.read_text())
    raw["data"].update({"train": "train.jsonl", "val": "val.jsonl", "test": "test.jsonl"})
    raw["tracking"] = {"mlflow": {"uri": mlflow_uri, "experiment": "ladder-e2e"}}
    path.write_text(yaml.safe_dump(raw))
    cfg = load_project(path)

    result = run_ladder(cfg, quiet=True)
    assert [s.name for s in result.stages][-1] == "mlflow"
    splits = cfg.work_dir / "splits"
    assert (splits / "val.jsonl").read_bytes() == (root / "val.jsonl").read_bytes()
    manifest = json.loads((splits / "manifest.json").read_text())
    assert manifest["given"] == ["val", "test"]
    assert manifest["leakage"]["test_vs_train"]["exact"] == 1
    assert (cfg.work_dir / "check-val.json").is_file()
    assert (cfg.work_dir / "check-test.json").is_file()
    assert seal.is_sealed(root / "test.jsonl")

    (ladder_run,) = _experiment_runs(client, "ladder-e2e", "ladder")
    verdict = json.loads((cfg.work_dir / "eval" / "verdict.json").read_text())
    shipped = "ship" if verdict["ship"] else "dont_ship"
    assert ladder_run.data.tags["tunewise.verdict"] == shipped
    assert "finetuned/accuracy/ci_low" in ladder_run.data.metrics
    (train_run,) = _experiment_runs(client, "ladder-e2e", "train")
    assert train_run.data.tags["tunewise.gate"] == shipped
    assert ladder_run.data.tags["tunewise.train_runs"] == train_run.info.run_id
    mirrored = _versions_by_tag(client, "tiny-ladder")
    record = json.loads((cfg.work_dir / "registry.json").read_text())
    # the fine-tune, and the release rule's winner when it is a rung: every version mirrored
    assert set(mirrored) == {spec.split(":")[1] for spec in record["versions"].values()}
    assert mirrored["1"].tags["tunewise.ship"] == str(verdict["ship"]).lower()

    again = run_ladder(load_project(path), quiet=True)
    assert again.all_cached
    assert len(_experiment_runs(client, "ladder-e2e", "ladder")) == 1  # nothing logged twice
