"""Lineage: every registry version records the data files and the traffic windows that made it;
``registry show`` prints them; the champion/challenger comparison is also read on the new items."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from _ship_helpers import make_run, write_verdict
from _train_helpers import example, make_project
from tunewise.candidates import CHAMPION
from tunewise.cli import app
from tunewise.config import GateConfig, load_project
from tunewise.data.schema import Example
from tunewise.decide.champion import attach_margin_tests
from tunewise.eval.results import CandidateResult, Comparison, EvalRun, ItemResult
from tunewise.eval.stats import compare
from tunewise.fsio import sha256_file
from tunewise.registry import lineage
from tunewise.registry.records import doctor
from tunewise.registry.store import Registry, version_files
from tunewise.rundir import RunDir

T0 = "2026-12-01T09:00:00Z"
NEW = "finetuned"  # the challenger's candidate name (write_verdict's)


def _row(i: int, origin: dict | None = None) -> dict:
    import random

    row = example(i, random.Random(i))
    if origin is not None:
        row["origin"] = origin
    return row


def _origin(i: int, traffic_file: str, time: str, labelled_by: str | None) -> dict:
    """The ``origin`` that ``tunewise data from-traffic`` writes on an example."""
    return {
        "traffic_id": f"r{i}",
        "traffic_file": traffic_file,
        "time": time,
        "why": "low margin",
        "labelled_by": labelled_by,
    }


def _write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _uid(row: dict) -> str:
    return Example(row["messages"]).uid


def _traffic_rows() -> list[dict]:
    """Two traffic files: one labelled by people and a teacher, one by the teacher only."""
    day1 = "traffic-20261201.jsonl"
    day2 = "traffic-20261202.jsonl"
    return [
        _row(100, _origin(100, day1, "2026-12-01T10:15:00Z", "human")),
        _row(101, _origin(101, day1, "2026-12-01T08:05:00+00:00", "teacher:gpt-4o")),
        _row(102, _origin(102, day1, "2026-12-01T17:40:00Z", "human")),
        _row(103, _origin(103, day2, "2026-12-02T11:00:00Z", "teacher:gpt-4o")),
        _row(104, _origin(104, day2, "2026-12-02T12:30:00Z", None)),
    ]


@pytest.fixture(scope="module")
def made_run(tiny_model_dir, tmp_path_factory) -> Path:
    return make_run(tiny_model_dir, tmp_path_factory.mktemp("run") / "run", seed=1)


@pytest.fixture
def run_dir(made_run, tmp_path) -> Path:
    """A finished LoRA run whose run.json has no lineage (one made before lineage existed)."""
    return Path(shutil.copytree(made_run, tmp_path / "run"))


def _with_lineage(run_dir: Path, found: dict) -> Path:
    """``run_dir`` as a run that recorded ``found`` when it trained."""
    rd = RunDir(run_dir)
    rd.write({**rd.record(), "lineage": found})
    return run_dir


def _without_lineage(run_dir: Path) -> Path:
    rd = RunDir(run_dir)
    rd.write({k: v for k, v in rd.record().items() if k != "lineage"})
    return run_dir


# --------------------------------------------------------------------------- recording


def test_training_records_its_data_files_and_the_pushed_version_keeps_them(
    tmp_path, tiny_model_dir
):
    from tunewise.train.trainer import train

    project = make_project(tmp_path, tiny_model_dir, n_train=12, n_val=4, max_steps=2)
    splits = tmp_path / ".tunewise" / "splits"
    train_rows = [json.loads(x) for x in (splits / "train.jsonl").read_text().splitlines()]
    _write(splits / "train.jsonl", train_rows + _traffic_rows())
    _write(splits / "test.jsonl", [_row(500), _row(501)])
    run = tmp_path / "run"
    train(load_project(project), run_dir=run, progress=False)

    found = RunDir(run).record()["lineage"]
    files = {f["role"]: f for f in found["files"]}
    assert set(files) == {"train", "val", "test", "source"}
    assert files["train"]["sha256"] == sha256_file(splits / "train.jsonl")
    assert files["train"]["lines"] == 17 and files["val"]["lines"] == 4
    assert files["test"]["lines"] == 2 and files["source"]["path"].endswith("all.jsonl")
    assert files["train"]["path"] == str((splits / "train.jsonl").resolve())
    assert set(files["train"]["items"]) == {_uid(r) for r in train_rows + _traffic_rows()}
    assert [w["count"] for w in found["traffic"]] == [3, 2]

    v = Registry().add(run, name="tiny")
    assert v.data_hashes["train"] == files["train"]["sha256"]  # the flat hashes, as before
    assert lineage.of_version(v) == found
    assert lineage.of_version(Registry().get("tiny", 1)) == found  # read back from the index


def test_origin_lines_give_traffic_windows_and_labeller_counts(tmp_path):
    rows = _traffic_rows()
    train = _write(tmp_path / "train.jsonl", [_row(1), *rows[:4]])
    val = _write(tmp_path / "val.jsonl", [_row(2), rows[4]])
    found = lineage.build({"train": train, "val": val})

    assert found["traffic"] == [
        {
            "traffic_file": "traffic-20261201.jsonl",
            "first": "2026-12-01T08:05:00+00:00",  # by time, not by line order
            "last": "2026-12-01T17:40:00Z",
            "count": 3,
            "labelled_by": {"human": 2, "teacher:gpt-4o": 1},
            "splits": {"train": 3},
        },
        {
            "traffic_file": "traffic-20261202.jsonl",
            "first": "2026-12-02T11:00:00Z",
            "last": "2026-12-02T12:30:00Z",
            "count": 2,
            "labelled_by": {"teacher:gpt-4o": 1, "unlabelled": 1},
            "splits": {"train": 1, "val": 1},
        },
    ]
    assert lineage.label_counts(found) == {"human": 2, "teacher:gpt-4o": 2, "unlabelled": 1}


def test_a_source_file_is_hashed_and_counted_but_its_traffic_is_not_counted_twice(tmp_path):
    rows = _traffic_rows()
    train = _write(tmp_path / "train.jsonl", rows)
    source = _write(tmp_path / "all.jsonl", [_row(1), *rows])
    found = lineage.build({"train": train}, {"source": source})
    src = next(f for f in found["files"] if f["role"] == "source")
    assert src == {
        "role": "source",
        "path": str(source),
        "sha256": sha256_file(source),
        "lines": 6,
    }
    assert sum(w["count"] for w in found["traffic"]) == 5


def test_a_run_made_before_lineage_gets_one_at_push_only_if_its_files_are_unchanged(
    run_dir, tmp_path
):
    train = _write(tmp_path / "train.jsonl", [_row(1), _row(2)])
    rd = RunDir(run_dir)
    rd.write(
        {
            **rd.record(),
            "data": {"train": str(train), "val": None},
            "data_hashes": {"train": sha256_file(train), "val": None},
        }
    )
    v1 = Registry().add(run_dir, name="old")
    assert lineage.of_version(v1)["recorded"] == "registration"
    _write(train, [_row(3)])  # the file the run read is gone: nothing to claim
    v2 = Registry().add(run_dir, name="old")
    assert lineage.of_version(v2) is None


def test_a_release_records_its_pool_and_keeps_lineage_out_of_its_files(tmp_path, tiny_model_dir):
    from tunewise.baselines.release import write_release
    from tunewise.runtime.models import resolve

    cfg = load_project(make_project(tmp_path, tiny_model_dir, n_train=6, n_val=3))
    train = [Example(r["messages"]) for r in [_row(i) for i in range(6)]]
    ref = resolve(str(tiny_model_dir))
    base = {"name": ref.name, "path": str(ref.path), "weight_hash": ref.weight_hash}
    folder = tmp_path / "release"
    for kind, roles in (("prompt", {"val", "source"}), ("fewshot", {"train", "val", "source"})):
        write_release(folder, kind, cfg, train, base=base, max_new_tokens=8, data_hashes={"x": "y"})
        lineage.write_release_lineage(folder, lineage.of_release(cfg, kind))
        assert lineage.LINEAGE_FILE not in version_files(folder)  # metadata, not payload
        v = Registry().add(folder, name=f"rel-{kind}")
        assert lineage.LINEAGE_FILE not in v.files and v.data_hashes["x"] == "y"
        recorded = lineage.of_version(v)
        assert recorded["recorded"] == "release"
        assert {f["role"] for f in recorded["files"]} == roles  # no test split made here


def test_the_ladder_release_stage_writes_the_release_lineage(tmp_path, tiny_model_dir, monkeypatch):
    from tunewise.ladder import release_stage

    cfg = load_project(make_project(tmp_path, tiny_model_dir, n_train=6, n_val=3))
    ids = ["a" * 16]
    prompt = CandidateResult("prompt", "prompt", [ItemResult(ids[0], "x", {})], {})
    eval_dir = tmp_path / "eval"
    EvalRun("tiny", "val", "h", "accuracy", ids, [prompt]).save(eval_dir / "eval.json")
    # the answer check runs the model on every item (tested with the ladder): not the point here
    monkeypatch.setattr(release_stage, "_check_answers", lambda *a: None)
    folder = release_stage.build(cfg, "prompt", eval_dir)

    recorded = lineage.read_release_lineage(folder)
    val = cfg.work_dir / "splits" / "val.jsonl"
    files = {f["role"]: f for f in recorded["files"]}
    assert files["val"]["sha256"] == sha256_file(val) and files["val"]["lines"] == 3
    assert lineage.of_version(Registry().add(folder, name="tiny")) == recorded


# --------------------------------------------------------------------------- registry show


def test_registry_show_prints_data_files_traffic_windows_and_labellers(run_dir, tmp_path):
    rows = _traffic_rows()
    train = _write(tmp_path / "train.jsonl", [_row(1), *rows[:4]])
    val = _write(tmp_path / "val.jsonl", [_row(2), rows[4]])
    found = lineage.build({"train": train, "val": val})
    Registry().add(_with_lineage(run_dir, found), name="bot")

    res = CliRunner().invoke(app, ["registry", "show", "bot:1"])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "lineage     2 data file(s), recorded at training" in out
    assert sha256_file(train)[:12] in out and sha256_file(val)[:12] in out
    assert "5 lines" in out and "2 lines" in out and str(train) in out
    assert (
        "traffic-20261201.jsonl  2026-12-01T08:05:00+00:00 → 2026-12-01T17:40:00Z  "
        "3 example(s) (train 3)"
    ) in out
    assert "labelled by human 2, teacher:gpt-4o 2, unlabelled 1" in out
    assert '"lineage"' not in out  # the data hashes line stays the flat hashes
    assert lineage.NOT_RECORDED not in out


def test_an_old_version_shows_lineage_not_recorded_and_the_registry_stays_sound(run_dir):
    reg = Registry()
    old = reg.add(run_dir, name="bot")  # a run.json with no lineage
    assert lineage.of_version(old) is None
    found = lineage.of_items("val", ["a" * 16])
    reg.add(_with_lineage(run_dir, found), name="bot")

    res = CliRunner().invoke(app, ["registry", "show", "bot:1"])
    assert res.exit_code == 0, res.output
    assert lineage.NOT_RECORDED in res.output
    assert "Traceback" not in res.output
    assert all(f.ok for f in doctor(reg)), [f.text for f in doctor(reg)]
    res = CliRunner().invoke(app, ["registry", "rebuild", "--force"])
    assert res.exit_code == 0, res.output
    assert lineage.of_version(Registry().get("bot", 2)) == found  # the records keep it
    assert lineage.of_version(Registry().get("bot", 1)) is None


def test_a_damaged_lineage_never_crashes_show(run_dir):
    bad = {"files": [{"role": "train"}, "x", {"role": "val", "path": "v.jsonl"}], "traffic": 3}
    Registry().add(_with_lineage(run_dir, bad), name="bot")
    res = CliRunner().invoke(app, ["registry", "show", "bot:1"])
    assert res.exit_code == 0, res.output
    assert "v.jsonl" in res.output and "traffic     none" in res.output


# --------------------------------------------------------------------------- new items


def test_new_items_finds_exactly_the_added_lines(tmp_path):
    old_rows = [_row(i) for i in range(10)]
    added = [_row(100), _row(101), _row(102)]
    champion = lineage.build({"train": _write(tmp_path / "a" / "train.jsonl", old_rows)})
    # the same conversation with another origin, or in another split, is not a new item
    again = {**old_rows[3], "origin": _origin(3, "t.jsonl", T0, "human")}
    challenger = lineage.build(
        {
            "train": _write(
                tmp_path / "b" / "train.jsonl", [*old_rows[:3], again, *old_rows[4:9], *added[:2]]
            ),
            "val": _write(tmp_path / "b" / "val.jsonl", [old_rows[9], added[2]]),
        }
    )
    assert lineage.new_items(champion, challenger) == {_uid(r) for r in added}
    assert lineage.new_items(challenger, champion) == set()
    assert lineage.new_items(None, challenger) is None  # a champion without lineage: unknown


def _eval(ids: list[str], new_right: list[int], champ_right: list[int]) -> EvalRun:
    """An evaluation of the challenger ``finetuned`` beside the champion, on items ``ids``."""

    def cand(name: str, right: list[int]) -> CandidateResult:
        items = [
            ItemResult(i, str(r), {"accuracy": float(r)}) for i, r in zip(ids, right, strict=True)
        ]
        return CandidateResult(name, "finetuned", items)

    cands = [cand("prompt", [0] * len(ids)), cand(CHAMPION, champ_right), cand(NEW, new_right)]
    return EvalRun("p", "val", "h", "accuracy", ids, cands)


def _attach(run: EvalRun, version: str) -> Comparison:
    comp = compare(run, baselines=["prompt"], n_boot=200)
    return attach_margin_tests(comp, run, GateConfig(baselines=["prompt"]), [NEW], version)


def test_the_champion_comparison_is_also_reported_on_the_new_items(run_dir, tmp_path):
    old_rows = [_row(i) for i in range(30)]
    new_rows = [_row(100 + i) for i in range(10)]
    champion = lineage.build({"val": _write(tmp_path / "val-old.jsonl", old_rows)})
    Registry().add(_with_lineage(run_dir, champion), name="bot")
    _without_lineage(run_dir)  # the challenger: another run
    ids = [_uid(r) for r in old_rows + new_rows]
    # on the old items both are right; on the new ones the challenger gets 8 of 10, the champion 0
    comp = _attach(_eval(ids, [1] * 38 + [0] * 2, [1] * 30 + [0] * 10), "bot:1")
    on_new = comp.meta["champion"]["new_items"]
    assert (on_new["n"], on_new["of"]) == (10, 40)
    assert on_new["tests"][NEW]["candidate_value"] == pytest.approx(0.8)
    assert on_new["tests"][NEW]["reference_value"] == 0.0 and on_new["tests"][NEW]["n"] == 10
    assert comp.margin_test(NEW, CHAMPION).n == 40  # the gate still reads every item

    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    comp.save(eval_dir / "comparison.json")
    verdict = write_verdict(eval_dir / "verdict.json", True, champion="bot:1")
    Registry().add(run_dir, name="bot", verdict=verdict, eval_dir=eval_dir)
    res = CliRunner().invoke(app, ["registry", "show", "bot:2"])
    assert res.exit_code == 0, res.output
    assert (
        "champion    finetuned vs bot:1 on accuracy: 0.950 vs 0.750 on all 40 items; "
        "0.800 vs 0.000 on 10 new items"
    ) in res.output


def test_a_champion_without_lineage_gets_no_new_items_entry(run_dir):
    Registry().add(run_dir, name="bot")
    ids = [_uid(_row(i)) for i in range(20)]
    comp = _attach(_eval(ids, [1] * 20, [1] * 20), "bot:1")
    assert comp.meta["champion"] == {"candidate": CHAMPION, "version": "bot:1"}
    assert comp.margin_test(NEW, CHAMPION).n == 20
