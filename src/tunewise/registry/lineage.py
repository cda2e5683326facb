"""Lineage: which data files made a registry version, and which served traffic fed it.

Recorded where the data is read, copied into the version when it is registered:

* ``tunewise train`` writes ``lineage`` into run.json (:func:`of_run`): the files that run read;
* a rung release (prompt, few-shot, RAG, the classifiers) keeps ``lineage.json`` beside its files
  (:func:`of_release`, written by the ladder's release stage). It is metadata, not one of the
  version's files: the release's payload, and so "the same release registered again", is
  unchanged by it;
* ``Registry.add`` copies either into the version's ``data_hashes`` under ``"lineage"``
  (:func:`with_lineage`). That column every version already has, so the index schema, the records
  beside the blobs and their integrity checks stay as they were, and a version registered before
  lineage existed simply has none (:data:`NOT_RECORDED`). A run.json written before lineage gets
  one at registration when its train/val files still hash as the run recorded.

One lineage::

    {"format": 1, "recorded": "training" | "release" | "registration",
     "files": [{"role": "train", "path": "<as given>", "sha256": "...", "lines": 120,
                "items": ["<content id>", ...]},                      # train, val, test
               {"role": "source", "path": "...", "sha256": "...", "lines": 150},
               {"role": "docs", "path": "...", "sha256": "...", "files": 12}],
     "traffic": [{"traffic_file": "...", "first": "<ISO>", "last": "<ISO>", "count": 12,
                  "labelled_by": {"human": 3, "teacher:gpt-4o": 9}, "splits": {"train": 12}}]}

``lines`` counts non-blank lines. ``items`` are the content ids of a split's examples
(:attr:`tunewise.data.schema.Example.uid`, the ids the harness gives evaluated items), so
:func:`new_items` says which items a challenger has that its champion never saw, and the
champion/challenger comparison can be read on those alone.

An example made from served traffic (``tunewise data from-traffic``) carries ``origin``:
``{"traffic_id", "traffic_file", "time", "why", "labelled_by": "human" | "teacher:<model>" |
null}``. ``traffic`` summarises the split files' origins per traffic file (the source file holds
the same lines again, so it is not counted twice).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from tunewise.config import ProjectConfig
from tunewise.data.schema import parse_jsonl
from tunewise.errors import UserError
from tunewise.fsio import atomic_write_json, sha256_file, sha256_path

LINEAGE_KEY: Final = "lineage"  # in a version's data_hashes, and in run.json
LINEAGE_FILE: Final = "lineage.json"  # beside a rung release's files
FORMAT: Final = 1
SPLITS: Final = ("train", "val", "test")
NOT_RECORDED: Final = "lineage: not recorded (pushed before lineage existed)"
UNLABELLED: Final = "unlabelled"  # an origin whose labelled_by is null
_TEXT_MAX: Final = 120  # a traffic file or teacher name read from a data file, cut short

Lineage = dict[str, Any]


# --------------------------------------------------------------------------- recording


@dataclass
class _Window:
    """One traffic file's examples, as the split files hold them."""

    first: tuple[dt.datetime, str] | None = None
    last: tuple[dt.datetime, str] | None = None
    count: int = 0
    labelled_by: Counter[str] = field(default_factory=Counter)
    splits: Counter[str] = field(default_factory=Counter)

    def add(self, origin: Mapping[str, Any], role: str) -> None:
        self.count += 1
        self.splits[role] += 1
        who = origin.get("labelled_by")
        self.labelled_by[UNLABELLED if who is None else _text(who)] += 1
        when = _when(origin.get("time"))
        if when is not None:
            if self.first is None or when[0] < self.first[0]:
                self.first = when
            if self.last is None or when[0] > self.last[0]:
                self.last = when

    def to_dict(self, traffic_file: str) -> dict[str, Any]:
        return {
            "traffic_file": traffic_file,
            "first": self.first[1] if self.first else None,
            "last": self.last[1] if self.last else None,
            "count": self.count,
            "labelled_by": dict(sorted(self.labelled_by.items())),
            "splits": {s: self.splits[s] for s in SPLITS if self.splits[s]},
        }


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= _TEXT_MAX else text[: _TEXT_MAX - 1] + "…"


def _when(value: Any) -> tuple[dt.datetime, str] | None:
    """An ISO time (``Z`` or an offset; a naive one read as UTC), or None when unreadable."""
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return parsed, value.strip()


def _hash_and_count(path: Path) -> tuple[str, int]:
    """sha256 of the bytes and the number of non-blank lines, in one read."""
    digest = hashlib.sha256()
    lines = 0
    with open(path, "rb") as fh:
        for raw in fh:
            digest.update(raw)
            if raw.strip() and raw.strip() != b"\xef\xbb\xbf":
                lines += 1
    return digest.hexdigest(), lines


def describe_file(
    role: str,
    path: Path,
    *,
    tools: list[dict[str, Any]] | None = None,
    windows: dict[str, _Window] | None = None,
) -> dict[str, Any]:
    """One data file: path as given, sha256, lines; a split's item ids and traffic origins.

    ``windows`` (the split files): the items and origins are read with the data loader's own
    parser, so an item's id is the one the harness gives it; an invalid line is no item.
    """
    if path.is_dir():  # RAG documents
        files = sum(1 for p in path.rglob("*") if p.is_file())
        return {"role": role, "path": str(path), "sha256": sha256_path(path), "files": files}
    sha, lines = _hash_and_count(path)
    entry: dict[str, Any] = {"role": role, "path": str(path), "sha256": sha, "lines": lines}
    if windows is None:
        return entry
    try:
        examples, _problems = parse_jsonl(path, tools)
    except (UserError, OSError):  # unreadable as data: hashed and counted, no items
        return entry
    entry["items"] = sorted({ex.uid for ex in examples})
    for ex in examples:
        origin = ex.meta.get("origin")
        if isinstance(origin, Mapping):
            name = _text(origin.get("traffic_file") or "(no traffic_file)")
            windows.setdefault(name, _Window()).add(origin, role)
    return entry


def build(
    splits: Mapping[str, Path | None],
    sources: Mapping[str, Path | None] | None = None,
    *,
    tools: list[dict[str, Any]] | None = None,
    recorded: str = "training",
) -> Lineage:
    """The lineage of ``splits`` (train/val/test: items and traffic) and ``sources`` (the files
    and folders they came from: hash and count); absent files are left out."""
    windows: dict[str, _Window] = {}
    files = [
        describe_file(role, Path(p), tools=tools, windows=windows)
        for role, p in splits.items()
        if p is not None and Path(p).is_file()
    ]
    files += [
        describe_file(role, Path(p))
        for role, p in (sources or {}).items()
        if p is not None and Path(p).exists()
    ]
    traffic = [w.to_dict(name) for name, w in sorted(windows.items())]
    return {"format": FORMAT, "recorded": recorded, "files": files, "traffic": traffic}


def _sources(cfg: ProjectConfig, used: Iterable[Path | None], *, docs: bool) -> dict[str, Path]:
    """The project's own data files (those the splits were made from), minus any split itself."""
    seen = {Path(p).resolve() for p in used if p is not None}
    given = {"source": cfg.data.train, "source-val": cfg.data.val, "source-test": cfg.data.test}
    out = {k: Path(p) for k, p in given.items() if p is not None and Path(p).resolve() not in seen}
    if docs and cfg.data.docs is not None:
        out["docs"] = Path(cfg.data.docs)
    return out


def of_run(
    cfg: ProjectConfig, train_path: Path, val_path: Path | None, *, docs: bool = False
) -> Lineage:
    """What a training run reads: its train and val files, the sealed test split beside them
    (hashed, never evaluated here), the source files, and the RAG documents when it trains with
    retrieved documents (``docs``)."""
    splits_dir = cfg.work_dir / "splits"
    splits: dict[str, Path | None] = {"train": train_path, "val": val_path}
    if Path(train_path).resolve() == (splits_dir / "train.jsonl").resolve():
        splits["test"] = splits_dir / "test.jsonl"
    return build(splits, _sources(cfg, splits.values(), docs=docs), tools=cfg.task.tools)


def of_release(cfg: ProjectConfig, kind: str) -> Lineage:
    """What a rung release was built from: the project's splits (the few-shot, RAG or classifier
    pool is the train split; a prompt learns from none, so it records val and test only), the
    source files, and the documents a RAG release retrieves from."""
    splits_dir = cfg.work_dir / "splits"
    roles = ("val", "test") if kind == "prompt" else SPLITS
    splits = {r: splits_dir / f"{r}.jsonl" for r in roles}
    sources = _sources(cfg, splits.values(), docs=kind == "rag")
    return build(splits, sources, tools=cfg.task.tools, recorded="release")


def of_run_record(run: Mapping[str, Any]) -> Lineage | None:
    """The lineage of a run.json: the one training recorded; for a run made before lineage, the
    train/val files it names when they still hash as it recorded (else None: not recorded)."""
    recorded = run.get(LINEAGE_KEY)
    if isinstance(recorded, dict):
        return recorded
    paths, hashes = run.get("data"), run.get("data_hashes")
    if not isinstance(paths, dict) or not isinstance(hashes, dict) or not paths.get("train"):
        return None
    splits = {r: Path(paths[r]) for r in ("train", "val") if isinstance(paths.get(r), str)}
    for role, path in splits.items():
        try:
            if sha256_file(path) != hashes.get(role):
                return None
        except OSError:
            return None
    return build(splits, recorded="registration")


def with_lineage(data_hashes: Mapping[str, Any], lineage: Lineage | None) -> dict[str, Any]:
    """A version's data_hashes column: the hashes as before, plus the lineage when known."""
    out = dict(data_hashes)
    if lineage is not None:
        out[LINEAGE_KEY] = lineage
    return out


def run_hashes(run: Mapping[str, Any]) -> dict[str, Any]:
    """The data_hashes of a version registered from a training run (its run.json)."""
    return with_lineage(run.get("data_hashes") or {}, of_run_record(run))


def release_hashes(folder: Path, meta: Mapping[str, Any]) -> dict[str, Any]:
    """The data_hashes of a version registered from a rung release (its release.json)."""
    return with_lineage(meta.get("data_hashes") or {}, read_release_lineage(folder))


def write_release_lineage(folder: Path, lineage: Lineage) -> None:
    atomic_write_json(Path(folder) / LINEAGE_FILE, lineage)


def read_release_lineage(folder: Path) -> Lineage | None:
    """A release folder's lineage.json; None when absent or unreadable (it is metadata: a
    damaged one must not stop the release from being registered)."""
    path = Path(folder) / LINEAGE_FILE
    with contextlib.suppress(OSError, ValueError):
        found = json.loads(path.read_text(encoding="utf-8"))
        return found if isinstance(found, dict) else None
    return None


# --------------------------------------------------------------------------- reading


def of_version(version: Any) -> Lineage | None:
    """The lineage of a registry version (anything with ``data_hashes``), or of a lineage dict;
    None when none was recorded. Its parts are checked by the readers below, never trusted."""
    if isinstance(version, Mapping) and "files" in version:
        return dict(version)
    hashes = getattr(version, "data_hashes", None)
    found = hashes.get(LINEAGE_KEY) if isinstance(hashes, Mapping) else None
    return found if isinstance(found, dict) else None


def data_files(lineage: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The file entries that are well formed (a damaged record shows what it can)."""
    files = lineage.get("files")
    if not isinstance(files, list):
        return []
    return [
        f for f in files if isinstance(f, dict) and isinstance(f.get("path"), str) and f.get("role")
    ]


def traffic_windows(lineage: Mapping[str, Any]) -> list[dict[str, Any]]:
    windows = lineage.get("traffic")
    if not isinstance(windows, list):
        return []
    return [w for w in windows if isinstance(w, dict) and isinstance(w.get("count"), int)]


def label_counts(lineage: Mapping[str, Any]) -> dict[str, int]:
    """Examples from traffic by who labelled them (``human``, ``teacher:<model>``, unlabelled)."""
    total: Counter[str] = Counter()
    for w in traffic_windows(lineage):
        by = w.get("labelled_by")
        if isinstance(by, dict):
            total.update({str(k): int(v) for k, v in by.items() if isinstance(v, int)})
    return dict(sorted(total.items()))


def items_of(lineage: Mapping[str, Any]) -> frozenset[str] | None:
    """Every item id the lineage's split files hold; None when no file recorded its items."""
    found = [f["items"] for f in data_files(lineage) if isinstance(f.get("items"), list)]
    if not found:
        return None
    return frozenset(str(i) for items in found for i in items)


def of_items(role: str, item_ids: Iterable[str]) -> Lineage:
    """A lineage holding only items (an evaluation's, to ask which of them are new)."""
    items = sorted({item_key(i) for i in item_ids})
    entry = {"role": role, "path": "(evaluated items)", "items": items}
    return {"format": FORMAT, "recorded": "evaluation", "files": [entry], "traffic": []}


def item_key(item_id: str) -> str:
    """The content id of an evaluated item (the harness suffixes ``-1``, ``-2`` to repeats)."""
    return item_id.split("-", 1)[0]


def new_items(champion: Any, challenger: Any) -> frozenset[str] | None:
    """The items in the challenger's data files and in none of the champion's, by content id.

    Each side is a registry version or a lineage. None when either side recorded no items (a
    version pushed before lineage): "nothing new" would then be a guess.
    """
    mine, theirs = of_version(challenger), of_version(champion)
    if mine is None or theirs is None:
        return None
    new, old = items_of(mine), items_of(theirs)
    if new is None or old is None:
        return None
    return new - old
