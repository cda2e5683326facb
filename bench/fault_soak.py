"""Kill/fault soak of the registry and the trainer: random ``kill -9`` in the middle of ``registry
add``, ``promote``, ``rollback``, ``rebuild`` and ``train``, then the invariants.

Bounded: operations until ``--kills`` (default 50) of them were killed (at most 4x that many
operations), each started as its own ``tunewise`` process and killed after a random delay within
the time such an operation takes here (or let finish when it is quicker), on a throw-away
``TUNEWISE_HOME`` with a tiny random Llama (2 layers, the real tokenizer), so a training step
takes milliseconds and a kill can land anywhere.

After every operation, read straight from the files (not through the code under test):

* **lost**: a version or alias event whose record existed before is gone;
* **rewritten**: such a record's bytes changed (records and events are append-only);
* **ungated**: an alias points at a version whose record neither passed the gate nor was moved
  there by a forced promote with a reason;
(A version number reused for another run shows as a rewritten record.)

At the end ``tunewise registry doctor`` must pass (after ``registry rebuild`` when a kill left the
index behind, which doctor must say), and every killed training run must resume to completion.

    .venv/bin/python bench/fault_soak.py             # 50 kills
    .venv/bin/python bench/fault_soak.py --kills 10  # quicker

Exit code 1 when any invariant broke.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))  # raft_clinc's tiny model

NAME = "soak"
OPS = ("add", "promote", "rollback", "rebuild", "train")


def tiny_model(out: Path) -> Path:
    """The 2-layer random Llama of ``bench/raft_clinc.py --smoke``, with the embedded model's
    tokenizer (converted on first use)."""
    from raft_clinc import tiny_model as build
    from tunewise.runtime import models

    return build(out, models.resolve("smollm2-135m-instruct").path)


def project(root: Path, model: Path) -> Path:
    """A tiny labels project: 40 tickets, 8 training steps, a checkpoint every 2."""
    import yaml

    rng = random.Random(0)
    cats = ["billing", "shipping", "account"]
    with open(root / "data.jsonl", "w") as fh, open(root / "val.jsonl", "w") as val:
        for i in range(48):
            cat = cats[i % 3]
            words = " ".join(rng.choice(["please", "help", "now"]) for _ in range(4))
            msgs = [
                {"role": "user", "content": f"ticket {i}: {cat} problem {words}"},
                {"role": "assistant", "content": f"Category: {cat}"},
            ]
            (val if i >= 40 else fh).write(json.dumps({"messages": msgs}) + "\n")
    cfg = {
        "name": NAME,
        "data": {"train": "data.jsonl", "max_len": 96},
        "model": {"base": str(model)},
        "train": {
            "batch_size": 4,
            "max_steps": 8,
            "eval_every": 4,
            "save_every": 2,
            "overfit_sample": 0,
        },
    }
    (root / "project.yaml").write_text(yaml.safe_dump(cfg))
    return root / "project.yaml"


def train_args(proj: Path) -> list[str]:
    """The project and its own train/val files (the soak never splits)."""
    root = proj.parent
    return [str(proj), "--train-file", str(root / "data.jsonl"), "--val-file",
            str(root / "val.jsonl"), "--no-progress"]  # fmt: skip


def ship_verdict(path: Path) -> Path:
    path.write_text(
        json.dumps(
            {
                "candidate": "finetuned",
                "ship": True,
                "reasons": [],
                "guard_failures": [],
                "summary": "SHIP finetuned (soak)",
            }
        )
    )
    return path


class Soak:
    def __init__(self, home: Path, proj: Path, runs: list[Path], verdict: Path, seed: int):
        self.home, self.proj, self.runs, self.verdict = home, proj, runs, verdict
        self.env = {**os.environ, "TUNEWISE_HOME": str(home)}
        self.rng = random.Random(seed)
        self.records: dict[str, bytes] = {}
        self.broken: dict[str, int] = {k: 0 for k in ("lost", "rewritten", "ungated")}
        # seconds an uninterrupted op takes here (process start included), learnt as it goes:
        # the kill is drawn inside that span, so it lands in the work, not only in the imports
        self.typical: dict[str, float] = {op: 3.0 for op in OPS} | {"train": 15.0}
        self.killed: dict[str, int] = {op: 0 for op in OPS}
        self.finished: dict[str, int] = {op: 0 for op in OPS}
        self.killed_train: list[Path] = []

    def tw(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "tunewise", *args]

    def command(self, op: str) -> list[str]:
        versions = self.versions()
        if op == "add" or not versions:
            return self.tw(
                "registry",
                "add",
                str(self.rng.choice(self.runs)),
                "--name",
                NAME,
                "--verdict",
                str(self.verdict),
            )
        if op == "promote":
            return self.tw(
                "registry",
                "promote",
                f"{NAME}:{self.rng.choice(versions)}",
                "--force",
                "--reason",
                "soak",
            )
        if op == "rollback":
            return self.tw("registry", "rollback", NAME)
        if op == "rebuild":
            return self.tw("registry", "rebuild", "--force")
        run = self.proj.parent / "runs" / f"t{len(self.killed_train) + self.finished['train']}"
        return self.tw("train", *train_args(self.proj), "--run-dir", str(run))

    def versions(self) -> list[int]:
        folder = self.home / "registry" / "records" / NAME
        return sorted(int(p.stem) for p in folder.glob("[0-9]*.json")) if folder.is_dir() else []

    def step(self, op: str) -> None:
        cmd = self.command(op)
        delay = self.rng.uniform(0.4, 1.1) * self.typical[op]
        t0 = time.time()
        proc = subprocess.Popen(
            cmd, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            proc.wait(timeout=delay)
            self.finished[op] += 1
            self.typical[op] = 0.5 * self.typical[op] + 0.5 * (time.time() - t0)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            self.killed[op] += 1
            if op == "train":
                self.killed_train.append(Path(cmd[cmd.index("--run-dir") + 1]))
        self.check()

    def check(self) -> None:
        root = self.home / "registry" / "records"
        now = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*.json")}
        for rel, data in self.records.items():
            if rel not in now:
                self.broken["lost"] += 1
            elif now[rel] != data:
                self.broken["rewritten"] += 1
        self.records.update(now)
        self.check_aliases()

    def check_aliases(self) -> None:
        """Every alias points at a gated version or got there by a forced, reasoned move."""
        from tunewise.errors import UserError
        from tunewise.registry.store import Registry

        try:
            reg = Registry(self.home / "registry")
            rows = reg.summary()
        except UserError:
            return  # a damaged index: the final doctor/rebuild judges it
        for row in rows:
            for alias, version in row["aliases"].items():
                v = reg.get(row["name"], version)
                moves = [e for e in reg.history(row["name"], alias) if e["to_version"] == version]
                forced = bool(moves) and bool(moves[-1].get("forced")) and moves[-1].get("reason")
                if v.ship is not True and not forced:
                    self.broken["ungated"] += 1


def tw(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``tunewise ARGS`` to the end, output captured."""
    cmd = [sys.executable, "-m", "tunewise", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    started = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="tunewise-soak-"))
    home = tmp / "home"
    os.environ.setdefault("TUNEWISE_MODELS", str(Path.home() / ".tunewise" / "models"))
    model = tiny_model(tmp / "tiny")
    (tmp / "proj").mkdir()
    proj = project(tmp / "proj", model)
    env = {**os.environ, "TUNEWISE_HOME": str(home)}
    runs = []
    for i in range(2):  # two finished runs to register (different seeds: different weights)
        run = tmp / "proj" / "runs" / f"base{i}"
        made = tw(
            env, "train", *train_args(proj), "--run-dir", str(run), "--set", f"train.seed={i}"
        )
        if made.returncode != 0:
            raise SystemExit(f"could not train the runs to register: {made.stderr.strip()}")
        runs.append(run)
    soak = Soak(home, proj, runs, ship_verdict(tmp / "verdict.json"), args.seed)
    for _ in range(4 * args.kills):  # bounded even where ops finish before their kill
        if sum(soak.killed.values()) >= args.kills:
            break
        soak.step(soak.rng.choice(OPS))
    doctor = tw(env, "registry", "doctor")
    repaired = False
    if doctor.returncode != 0:
        said = (doctor.stdout + doctor.stderr).strip().splitlines()[-1:]
        print(f"doctor after the soak: exit {doctor.returncode}: {said}")
        tw(env, "registry", "rebuild", "--force")
        doctor = tw(env, "registry", "doctor")
        repaired = True
    soak.check()
    resumed = 0
    for run in soak.killed_train:
        if (run / "run.json").is_file():
            r = tw(env, "train", *train_args(proj), "--resume", str(run))
            record = json.loads((run / "run.json").read_text())
            resumed += r.returncode == 0 and record.get("status") == "completed"
    with_record = sum((r / "run.json").is_file() for r in soak.killed_train)
    report = {
        "kills": soak.killed,
        "finished_before_the_kill": soak.finished,
        "versions": len(soak.versions()),
        "broken": soak.broken,
        "doctor_ok": doctor.returncode == 0,
        "needed_rebuild": repaired,
        "killed_training_runs_resumed": f"{resumed} of {with_record} (killed before run.json: "
        f"{len(soak.killed_train) - with_record})",
        "seconds": round(time.time() - started),
        "cpu": sorted(
            set(
                subprocess.run(
                    ["grep", "-o", r"avx512[a-z_]*\|avx2\|amx[a-z_]*", "/proc/cpuinfo"],
                    capture_output=True,
                    text=True,
                ).stdout.split()
            )
        ),
    }
    print(json.dumps(report, indent=2))
    ok = not any(soak.broken.values()) and doctor.returncode == 0 and resumed == with_record
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
