"""``tunewise data split`` and the seal: no leakage, stratified, deterministic, sealed."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunewise.cli import app
from tunewise.data import seal
from tunewise.data.dedup import near_duplicate_clusters, normalize
from tunewise.data.split import SPLITS, assign, split_file
from tunewise.errors import SealedSplitError, UserError

runner = CliRunner()

_WORDS_TEXT = (
    "account invoice refund login password parcel courier tracking screen crash upload export "
    "billing address card charge twice slow broken email reset locked order missing damaged late "
    "subscription cancel upgrade plan discount coupon mobile app desktop sync error timeout"
)
WORDS = _WORDS_TEXT.split()
CATEGORIES = ["billing", "shipping", "login", "bug", "account", "other"]
PRIORITIES = ["low", "medium", "high"]


def ticket_file(tmp_path: Path, n: int = 300, seed: int = 1, near_dups: int = 40) -> Path:
    """Distinct random tickets, plus near-duplicate variants (case, punctuation, one word)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 18))) + f" ref {i}"
        answer = f"Category: {CATEGORIES[i % 6]}\nPriority: {PRIORITIES[(i // 6) % 3]}"
        rows.append((text, answer))
    for k in range(near_dups):
        text, answer = rows[k * 5]
        variant = text.capitalize() + "!!" if k % 2 else text.replace(" ref ", " reference ")
        rows.append((variant, answer))
    rng.shuffle(rows)
    path = tmp_path / "tickets.jsonl"
    with open(path, "w") as fh:
        for text, answer in rows:
            msgs = [
                {"role": "system", "content": "Triage the ticket."},
                {"role": "user", "content": text},
                {"role": "assistant", "content": answer},
            ]
            fh.write(json.dumps({"messages": msgs}) + "\n")
    return path


def read(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines()]


def user_text(row: dict) -> str:
    return next(m["content"] for m in row["messages"] if m["role"] == "user")


def test_no_exact_or_near_duplicate_leakage(tmp_path: Path) -> None:
    src = ticket_file(tmp_path)
    split_file(src, tmp_path / "out", val=0.1, test=0.1, seed=0)
    rows = {s: read(tmp_path / "out" / f"{s}.jsonl") for s in SPLITS}
    texts = [user_text(r) for s in SPLITS for r in rows[s]]
    owner = [s for s in SPLITS for _ in rows[s]]
    # Exact (normalised) duplicates never straddle splits.
    seen: dict[str, str] = {}
    for t, s in zip(texts, owner, strict=True):
        assert seen.setdefault(normalize(t), s) == s
    # Every near-duplicate cluster, recomputed on the output, lives in one split.
    clusters = near_duplicate_clusters(texts)
    homes: dict[int, set[str]] = {}
    for c, s in zip(clusters, owner, strict=True):
        homes.setdefault(c, set()).add(s)
    multi = [c for c in homes if Counter(clusters)[c] > 1]
    assert len(multi) >= 30  # the fixture really has near-duplicates
    assert all(len(homes[c]) == 1 for c in homes)


def test_stratified_within_one_example_per_label(tmp_path: Path) -> None:
    src = ticket_file(tmp_path)
    manifest = split_file(src, tmp_path / "out", val=0.15, test=0.1, seed=3)
    assert manifest["stratified"] is True
    assert manifest["format"]["label_fields"] == ["category", "priority"]
    rows = {s: read(tmp_path / "out" / f"{s}.jsonl") for s in SPLITS}
    strata = {s: Counter(r["messages"][-1]["content"] for r in rows[s]) for s in SPLITS}
    total = sum(strata.values(), Counter())
    assert len(total) == 18
    for s, frac in (("val", 0.15), ("test", 0.1)):
        for label, n in total.items():
            assert abs(strata[s][label] - n * frac) <= 1, (s, label, strata[s][label], n)
    # The manifest's per-label counts are the files' counts.
    cats = Counter(r["messages"][-1]["content"].split("\n")[0][10:] for r in rows["test"])
    assert manifest["splits"]["test"]["labels"]["category"] == dict(sorted(cats.items()))
    assert sum(manifest["splits"][s]["examples"] for s in SPLITS) == sum(total.values())


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    src = ticket_file(tmp_path)
    split_file(src, tmp_path / "a", seed=7)
    split_file(src, tmp_path / "b", seed=7)
    split_file(src, tmp_path / "c", seed=8)
    for name in ["train.jsonl", "val.jsonl", "test.jsonl"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "test.jsonl").read_bytes() != (
        tmp_path / "c" / "test.jsonl"
    ).read_bytes()


def test_manifest_hashes_match_files(tmp_path: Path) -> None:
    from tunewise.fsio import sha256_file

    src = ticket_file(tmp_path)
    manifest = split_file(src, tmp_path / "out")
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk == json.loads(json.dumps(manifest))
    for s in SPLITS:
        assert manifest["splits"][s]["sha256"] == sha256_file(tmp_path / "out" / f"{s}.jsonl")
    assert manifest["source"]["sha256"] == sha256_file(src)
    assert manifest["sealed_test"] == seal.content_hash(tmp_path / "out" / "test.jsonl")[0]


def test_sealed_test_is_refused_without_final(tmp_path: Path) -> None:
    src = ticket_file(tmp_path)
    split_file(src, tmp_path / "out", project="triage")
    test_path = tmp_path / "out" / "test.jsonl"
    assert seal.is_sealed(test_path)
    assert not seal.is_sealed(tmp_path / "out" / "val.jsonl")
    with pytest.raises(SealedSplitError, match="sealed test split of project 'triage'") as err:
        seal.guard(test_path, final=False, purpose="eval")
    assert err.value.exit_code == 2
    # A renamed, reordered copy is the same content and stays sealed.
    lines = test_path.read_text().splitlines()
    copy = tmp_path / "copy.jsonl"
    copy.write_text("\n".join(reversed(lines)) + "\n")
    with pytest.raises(SealedSplitError):
        seal.guard(copy, final=False, purpose="eval")
    # Final uses are allowed, recorded, and counted.
    assert seal.guard(test_path, final=True, purpose="final eval") == 0
    assert seal.guard(copy, final=True, purpose="again") == 1
    uses = seal.final_uses(test_path)
    assert [u["purpose"] for u in uses] == ["final eval", "again"]
    # Validation data is never refused.
    assert seal.guard(tmp_path / "out" / "val.jsonl", final=False, purpose="eval") == 0


def test_split_cli_and_seals_listing(tmp_path: Path) -> None:
    src = ticket_file(tmp_path)
    result = runner.invoke(app, ["data", "split", str(src), "--seed", "0", "--project", "demo"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "tickets-splits"
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "test.jsonl",
        "train.jsonl",
        "val.jsonl",
    ]
    listing = runner.invoke(app, ["data", "seals", "--json"])
    rows = json.loads(listing.stdout)
    assert rows[0]["project"] == "demo" and rows[0]["final_uses"] == 0


def test_split_refuses_a_file_with_errors_and_writes_nothing(tmp_path: Path) -> None:
    src = ticket_file(tmp_path, n=30, near_dups=0)
    lines = src.read_text().splitlines()
    lines.insert(4, '{"messages": [{"role": "user", "content": "x"}]}')
    src.write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, ["data", "split", str(src), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert f"{src}:5: messages: no assistant turn" in result.output
    assert not (tmp_path / "out").exists()


def test_bad_fractions_and_too_few_examples(tmp_path: Path) -> None:
    src = ticket_file(tmp_path, n=30, near_dups=0)
    with pytest.raises(UserError, match="together below 1"):
        split_file(src, tmp_path / "out", val=0.6, test=0.5)
    sub = tmp_path / "tiny"
    sub.mkdir()
    tiny = ticket_file(sub, n=3, near_dups=0)
    with pytest.raises(UserError, match="too few"):
        split_file(tiny, tmp_path / "out2", val=0.1, test=0.1)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()


def test_assign_keeps_clusters_whole_and_fills_quotas() -> None:
    # 100 singletons of label a, one cluster of 8 of label b plus 12 singletons of b.
    strata = ["a"] * 100 + ["b"] * 20
    clusters = list(range(100)) + [100] * 8 + list(range(108, 120))
    out = assign(strata, clusters, val=0.1, test=0.1, seed=0)
    assert len({out[i] for i in range(100, 108)}) == 1
    for sp in ("val", "test"):
        assert sum(1 for i in range(100) if out[i] == sp) == 10
        assert sum(1 for i in range(100, 120) if out[i] == sp) == 2


def test_free_text_outputs_are_split_unstratified(tmp_path: Path) -> None:
    rng = random.Random(0)
    path = tmp_path / "free.jsonl"
    with open(path, "w") as fh:
        for i in range(50):
            q = " ".join(rng.choice(WORDS) for _ in range(8)) + f" q{i}"
            a = " ".join(rng.choice(WORDS) for _ in range(20)) + f" answer {i}."
            fh.write(
                json.dumps(
                    {
                        "messages": [
                            {"role": "user", "content": q},
                            {"role": "assistant", "content": a},
                        ]
                    }
                )
                + "\n"
            )
    manifest = split_file(path, tmp_path / "out")
    assert manifest["stratified"] is False
    assert [manifest["splits"][s]["examples"] for s in SPLITS] == [40, 5, 5]
