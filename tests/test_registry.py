"""Registry: versions, aliases, rollback, integrity and crash/concurrency faults."""

from __future__ import annotations

import itertools
import json
import multiprocessing as mp
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from _ship_helpers import concurrent_worker, make_run, write_verdict
from tunewise.cli import app
from tunewise.errors import UserError
from tunewise.registry.blobs import CRASH_ENV, CorruptedFileError
from tunewise.registry.store import Registry, parse_spec
from tunewise.registry.types import validate_name
from tunewise.rundir import RunDir


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return make_run(tiny_model_dir, tmp_path_factory.mktemp("run") / "run", seed=1)


@pytest.fixture
def ship(tmp_path) -> Path:
    return write_verdict(tmp_path / "ship" / "verdict.json", True)


@pytest.fixture
def noship(tmp_path) -> Path:
    return write_verdict(tmp_path / "noship" / "verdict.json", False)


def test_add_records_everything_and_versions_increment(run_dir, ship, tiny_model_dir):
    from tunewise.runtime.models import resolve

    reg = Registry()
    v1 = reg.add(run_dir, verdict=ship)
    v2 = reg.add(run_dir, name="other")
    v3 = reg.add(run_dir)
    assert (v1.spec, v2.spec, v3.spec) == ("bot:1", "other:1", "bot:2")
    assert v1.kind == "lora" and v1.ship is True and v3.ship is None
    assert v1.base_weight_hash == resolve(str(tiny_model_dir)).weight_hash
    assert v1.data_hashes == {"train": "tttttttt", "val": "vvvvvvvv"}
    assert v1.config["name"] == "bot"
    assert "adapter_model.safetensors" in v1.files and "run.json" in v1.files
    assert "logs.jsonl" not in v1.files  # only safetensors/json/tokenizer files are versioned
    # content-addressed: adding the same run again stores no new blob
    blobs = sorted(p.name for p in reg.blob_dir.iterdir())
    assert set(v1.files.values()) <= set(blobs)
    assert len(blobs) == len(set(v1.files.values()))
    assert {r["name"]: r["latest"] for r in reg.summary()} == {"bot": 2, "other": 1}


def test_resolve_materialises_verified_peft_dir(run_dir):
    from peft import PeftConfig

    reg = Registry()
    reg.add(run_dir)
    v = reg.resolve("bot:1")
    assert v.path is not None and (v.path / "adapter_model.safetensors").is_file()
    assert PeftConfig.from_pretrained(str(v.path)).r == 4


def test_promote_refuses_without_ship_unless_forced_with_reason(run_dir, ship, noship):
    reg = Registry()
    reg.add(run_dir, verdict=noship)
    reg.add(run_dir)  # no verdict at all
    reg.add(run_dir, verdict=ship)
    with pytest.raises(UserError, match="do not ship"):
        reg.promote("bot", 1)
    with pytest.raises(UserError, match="no verdict"):
        reg.promote("bot", 2)
    with pytest.raises(UserError, match="--reason"):
        reg.promote("bot", 1, force=True)
    reg.promote("bot", 3)  # the first production version: nothing to compare against
    reg.promote("bot", 1, force=True, reason="hotfix for the demo")
    assert reg.lookup("bot@production").version == 1
    last = reg.history("bot")[-1]
    assert (last["forced"], last["reason"], last["from_version"]) == (1, "hotfix for the demo", 3)


def test_rollback_walks_back_through_promotions(run_dir, ship, tmp_path):
    reg = Registry()
    reg.add(run_dir, verdict=ship)
    for v in (1, 2):  # each later version was compared with the one in production before it
        reg.add(run_dir, verdict=write_verdict(tmp_path / f"v{v + 1}.json", True, f"bot:{v}"))
    with pytest.raises(UserError, match="no previous version"):
        reg.rollback("bot")
    for v in (1, 2, 3):
        reg.promote("bot", v)
    assert reg.lookup("bot").version == 3  # a bare name means production
    assert reg.rollback("bot")["to_version"] == 2
    assert reg.lookup("bot@production").version == 2
    assert reg.rollback("bot")["to_version"] == 1
    with pytest.raises(UserError, match="no previous version"):
        reg.rollback("bot")
    reg.promote("bot", 3, alias="staging")
    assert reg.lookup("bot@staging").version == 3 and reg.lookup("bot@production").version == 1
    hist = reg.history("bot", "production")
    assert [(e["action"], e["to_version"]) for e in hist] == [
        ("promote", 1),
        ("promote", 2),
        ("promote", 3),
        ("rollback", 2),
        ("rollback", 1),
    ]
    assert all(e["at"] > 0 for e in hist)


def test_corrupted_blob_is_reported_and_never_served(run_dir):
    reg = Registry()
    v = reg.add(run_dir)
    blob = reg.blob_path(v.files["adapter_model.safetensors"])
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    assert reg.verify(v) == ["adapter_model.safetensors"]
    with pytest.raises(CorruptedFileError, match=r"adapter_model\.safetensors"):
        reg.resolve("bot:1")


def test_tampered_served_copy_is_rebuilt_from_verified_blob(run_dir):
    reg = Registry()
    reg.add(run_dir)
    v = reg.resolve("bot:1")
    served = v.path / "adapter_model.safetensors"
    good = served.read_bytes()
    served.write_bytes(b"garbage")
    assert reg.resolve("bot:1").path == v.path
    assert served.read_bytes() == good


@pytest.mark.parametrize("bad", ["../evil", "/abs", "a/b", "a\x00b", "", "..", ".hidden", "x" * 65])
def test_names_cannot_escape_the_registry(bad):
    with pytest.raises(UserError):
        validate_name(bad)
    with pytest.raises(UserError):
        parse_spec(bad + "@production")


def test_parse_spec_forms():
    assert parse_spec("bot") == ("bot", None, None)
    assert parse_spec("bot:3") == ("bot", 3, None)
    assert parse_spec("bot@prod") == ("bot", None, "prod")
    with pytest.raises(UserError):
        parse_spec("bot:latest")


def test_pickle_weights_are_refused(run_dir, copy_tree):
    run = copy_tree(run_dir, "pickled")
    (run / "adapter_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(UserError, match="pickle"):
        Registry().add(run)


def test_running_run_and_missing_hash_are_refused(run_dir, copy_tree):
    run = copy_tree(run_dir, "running")
    meta = RunDir(run).record()
    RunDir(run).write({**meta, "status": "running"})
    with pytest.raises(UserError, match="still running"):
        Registry().add(run)
    meta["base_model"].pop("weight_hash")
    RunDir(run).write(meta)
    with pytest.raises(UserError, match="weight_hash"):
        Registry().add(run)


def test_interrupted_run_says_how_to_resume(run_dir, copy_tree):
    import socket
    import subprocess
    import sys

    from tunewise.rundir import process_identity

    run = copy_tree(run_dir, "killed")
    meta = RunDir(run).record()
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # exited and reaped: its pid is gone, as after kill -9
    dead = {"pid": proc.pid, "host": socket.gethostname(), "started": 0.0}
    RunDir(run).write({**meta, "status": "running", "process": dead})
    with pytest.raises(UserError, match="interrupted") as err:
        Registry().add(run)
    assert f"tunewise train --resume {run}" in str(err.value)
    assert "wait for it to finish" not in str(err.value)
    RunDir(run).write({**meta, "status": "running", "process": process_identity()})
    with pytest.raises(UserError, match="still running"):  # a live trainer: wait
        Registry().add(run)


@pytest.mark.parametrize("point", ["after_blobs", "before_commit"])
def test_crash_inside_add_leaves_no_half_version(run_dir, tunewise_home, point):
    env = {**os.environ, CRASH_ENV: point, "TUNEWISE_HOME": str(tunewise_home)}
    code = f"from tunewise.registry.store import Registry; Registry().add({str(run_dir)!r})"
    proc = subprocess.run([sys.executable, "-c", code], env=env, timeout=120)
    assert proc.returncode == 17  # it really died at the hook
    reg = Registry()
    assert reg.summary() == []
    with pytest.raises(UserError, match="no model named"):
        reg.lookup("bot")
    # orphan blobs are harmless: the next add reuses them and verifies cleanly
    v = reg.add(run_dir)
    assert v.version == 1 and reg.verify(v) == []
    assert reg.resolve("bot:1").path is not None


def test_a_registry_opened_while_the_first_writer_creates_the_index_is_not_broken(
    run_dir, tunewise_home, monkeypatch
):
    # The two-process test below flaked under load: a process that opened the registry while the
    # other was creating the index saw a file with WAL's header and no tables yet, "not a registry
    # index". The index must appear whole: absent, then with its tables.
    from tunewise.registry import index, store

    seen: list[str | None] = []
    real = index.create_schema

    def create_and_look(db: sqlite3.Connection) -> None:
        real(db)
        seen.append(Registry()._problem)  # another process opening the registry now

    monkeypatch.setattr(store, "create_schema", create_and_look)
    monkeypatch.setattr(index, "create_schema", create_and_look)
    Registry().add(run_dir, name="bot")
    assert seen and all(p is None for p in seen), seen
    assert Registry().get("bot", 1).version == 1


def test_two_processes_adding_and_promoting_at_once(run_dir, ship, tunewise_home, tmp_path):
    # No index yet: the first child to write creates it while the other may be opening the
    # registry (see the test above), then both add and promote at the same instant.
    assert not Registry().db_path.exists()
    ctx = mp.get_context("spawn")
    n = 6
    start_at = time.time() + 3.0  # both children import and then start at the same instant
    outs = [tmp_path / f"out{i}.json" for i in range(2)]
    procs = [
        ctx.Process(
            target=concurrent_worker,
            args=(str(tunewise_home), str(run_dir), str(ship), n, start_at, str(o)),
        )
        for o in outs
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
        assert p.exitcode == 0
    got = sorted(json.loads(outs[0].read_text()) + json.loads(outs[1].read_text()))
    assert got == list(range(1, 2 * n + 1))  # no lost, no duplicated version
    reg = Registry()
    versions = reg.versions("shared")
    assert [v.version for v in versions] == got
    assert all(reg.verify(v) == [] for v in versions)
    events = reg.history("shared")
    assert len(events) == 2 * n
    # every promotion recorded the alias value it replaced: the chain is unbroken
    for prev, ev in itertools.pairwise(events):
        assert ev["from_version"] == prev["to_version"]
    assert reg.lookup("shared@production").version == events[-1]["to_version"]
    db = sqlite3.connect(reg.db_path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_cli_add_list_show_promote_history_rollback(run_dir, ship, noship):
    runner = CliRunner()
    r = runner.invoke(app, ["registry", "add", str(run_dir), "--verdict", str(noship)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["registry", "add", str(run_dir), "--eval-dir", str(ship.parent)])
    assert r.exit_code == 0 and "bot:2" in r.output
    r = runner.invoke(app, ["registry", "promote", "bot:1"])
    assert r.exit_code == 2 and "do not ship" in r.output
    assert runner.invoke(app, ["registry", "promote", "bot:2"]).exit_code == 0
    r = runner.invoke(
        app, ["registry", "promote", "bot:1", "--force", "--reason", "customer asked"]
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["registry", "list"])
    assert "production→1" in r.output
    r = runner.invoke(app, ["registry", "show", "bot@production", "--json"])
    assert json.loads(r.output)["version"] == 1
    r = runner.invoke(app, ["registry", "rollback", "bot"])
    assert r.exit_code == 0 and "→ 2" in r.output.replace("\x1b[1m", "")
    r = runner.invoke(app, ["registry", "history", "bot"])
    assert "customer asked" in r.output and "rollback" in r.output
    r = runner.invoke(app, ["registry", "show", "../etc"])
    assert r.exit_code == 2 and "invalid name" in r.output


def test_full_finetune_run_is_versioned_with_its_model_folder(run_dir, tiny_model_dir, tmp_path):
    import shutil

    full = tmp_path / "full-run"
    shutil.copytree(tiny_model_dir, full / "model")
    shutil.copyfile(run_dir / "run.json", full / "run.json")
    reg = Registry()
    v = reg.add(full, name="full")
    assert (
        v.kind == "full" and "model/model.safetensors" in v.files and "model/config.json" in v.files
    )
    served = reg.resolve("full:1")
    assert (served.weights_dir / "config.json").is_file()
    assert (served.weights_dir / "model.safetensors").read_bytes() == (
        tiny_model_dir / "model.safetensors"
    ).read_bytes()


def test_promote_to_production_needs_a_passed_comparison_with_the_current_one(
    run_dir, ship, tmp_path, tiny_model_dir
):
    reg = Registry()
    other = make_run(tiny_model_dir, tmp_path / "other-run", seed=2)  # different weights
    reg.add(run_dir, verdict=ship)
    reg.promote("bot", 1)  # nothing in production yet: the gate verdict is enough
    reg.add(other, verdict=ship)  # 2: a ship verdict, but no champion comparison recorded
    reg.add(other, verdict=write_verdict(tmp_path / "3.json", True, "bot:1", False))
    reg.add(other, verdict=write_verdict(tmp_path / "4.json", True, "bot:7"))
    reg.add(other, verdict=write_verdict(tmp_path / "5.json", True, "bot:1"))
    with pytest.raises(UserError, match="no recorded comparison against the production version"):
        reg.promote("bot", 2)
    with pytest.raises(UserError, match=r"failed the comparison .* bot:1: worse than production"):
        reg.promote("bot", 3)
    with pytest.raises(UserError, match="against bot:7, not the current production version bot:1"):
        reg.promote("bot", 4)
    assert reg.lookup("bot@production").version == 1  # every refusal left production alone
    reg.promote("bot", 2, alias="staging")  # other aliases are not gated on production
    assert reg.promote("bot", 5)["to_version"] == 5
    # the same weights registered again are the same model, not a challenger
    assert reg.promote("bot", 2)["to_version"] == 2
    # going back to bot:1's weights: its verdict predates bot:2; forcing records why
    with pytest.raises(UserError, match="--reason"):
        reg.promote("bot", 1, force=True)
    r = CliRunner().invoke(app, ["registry", "promote", "bot:1"])
    assert r.exit_code == 2 and "production version bot:2" in r.output
    reg.promote("bot", 1, force=True, reason="bot:2 broke a customer")
    last = reg.history("bot", "production")[-1]
    assert (last["to_version"], last["forced"], last["reason"]) == (1, 1, "bot:2 broke a customer")


def test_add_with_eval_dir_keeps_the_typed_comparison_summary_and_verdict(run_dir, tmp_path):
    from _evalfakes import make_run as make_eval_run
    from tunewise.config import GateConfig
    from tunewise.decide.gate import decide, save_verdict
    from tunewise.eval import stats
    from tunewise.eval.results import Comparison, Verdict

    ed = tmp_path / "eval"
    ev = make_eval_run({"prompt": 0.5, "lora": 0.8}, n=40, judge_nan={"lora": 0.25})
    ev.save(ed / "eval.json")
    comp = stats.compare(ev, baselines=["prompt"], n_boot=200)
    comp.save(ed / "comparison.json")
    cfg = GateConfig(baselines=["prompt"])
    save_verdict(decide(comp, "lora", cfg), ed / "verdict.json", cfg)

    v = Registry().add(run_dir, eval_dir=ed)
    assert v.ship is True and isinstance(v.verdict, Verdict) and v.verdict.candidate == "lora"
    assert v.verdict.gate is not None and v.verdict.gate["baselines"] == ["prompt"]
    assert isinstance(v.eval.comparison, Comparison)
    assert v.eval.comparison.pairs == Comparison.load(ed / "comparison.json").pairs
    # the means skip unparsed judge replies (NaN) instead of averaging them in
    judged = [it.scores["judge"] for it in ev.candidate("lora").items]
    scored = [x for x in judged if x == x]
    assert len(scored) < len(judged)
    means = v.eval.summary.means["lora"]
    assert means["judge"] == pytest.approx(sum(scored) / len(scored))
    assert v.eval.summary.n_items == 40 and v.eval.summary.primary_metric == "accuracy"
    # what `registry show --json` prints is plain JSON again (NaN as null, no dataclasses)
    shown = json.loads(CliRunner().invoke(app, ["registry", "show", v.spec, "--json"]).output)
    assert shown["eval"]["summary"]["means"]["lora"]["judge"] == pytest.approx(means["judge"])
    assert shown["verdict"]["gate"]["baselines"] == ["prompt"]


def test_damaged_eval_files_are_user_errors_naming_the_file(run_dir, tmp_path):
    ed = tmp_path / "eval"
    ed.mkdir()
    (ed / "comparison.json").write_text('{"metrics": {}}')
    with pytest.raises(UserError, match=r"comparison\.json: not a valid comparison file"):
        Registry().add(run_dir, eval_dir=ed)
    (ed / "comparison.json").unlink()
    (ed / "verdict.json").write_text('{"candidate": "x"}')
    with pytest.raises(UserError, match=r"verdict\.json: not a valid verdict file"):
        Registry().add(run_dir, eval_dir=ed)
    assert Registry().summary() == []  # nothing was registered
