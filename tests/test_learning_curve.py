"""Learning-curve subsets: nested, label-proportional at every prefix, deterministic."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tunewise.data.schema import Example
from tunewise.eval.learning_curve import (
    load_curve,
    save_curve,
    stratified_order,
    subset_sizes,
    write_subset,
)


def examples(counts: dict[str, int]) -> list[Example]:
    out = []
    for label, c in counts.items():
        for i in range(c):
            out.append(
                Example(
                    messages=[
                        {"role": "user", "content": f"{label} case {i}"},
                        {"role": "assistant", "content": f"Category: {label}"},
                    ]
                )
            )
    return out


def test_every_prefix_is_label_proportional():
    counts = {"billing": 60, "shipping": 30, "login": 9, "legal": 1}
    exs = examples(counts)
    order = stratified_order(exs, seed=0, output_pattern=r"^Category: (?P<category>.+)$")
    assert sorted(order) == list(range(len(exs)))
    total = sum(counts.values())
    for n in (5, 25, 50, 75):
        got = Counter(exs[i].target.split(": ")[1] for i in order[:n])
        for label, c in counts.items():
            assert abs(got[label] - n * c / total) <= 1.0, (n, label, got)


def test_order_is_deterministic_and_seeded():
    exs = examples({"a": 10, "b": 10})
    assert stratified_order(exs, seed=3) == stratified_order(exs, seed=3)
    assert stratified_order(exs, seed=3) != stratified_order(exs, seed=4)


def test_subset_sizes_skip_duplicates_and_the_full_set():
    assert subset_sizes(100) == [25, 50]
    assert subset_sizes(2) == [1]  # 25% and 50% both round to one example
    assert subset_sizes(1) == []


def test_subsets_are_nested_and_keep_file_order(tmp_path):
    exs = examples({"a": 12, "b": 8})
    src = tmp_path / "train.jsonl"
    src.write_text("".join(json.dumps({"messages": e.messages}) + "\n" for e in exs))
    order = stratified_order(exs, seed=0)
    small = write_subset(src, tmp_path / "s.jsonl", 5, order).read_text().splitlines()
    big = write_subset(src, tmp_path / "b.jsonl", 10, order).read_text().splitlines()
    lines = src.read_text().splitlines()
    assert set(small) < set(big) < set(lines)
    assert big == [ln for ln in lines if ln in set(big)]  # original order kept


def test_curve_round_trip_and_bare_list(tmp_path):
    path = tmp_path / "curve.json"
    save_curve(path, [(100, 0.8), (25, 0.5), (50, 0.7)], {"metric": "accuracy"})
    assert load_curve(path) == [(25, 0.5), (50, 0.7), (100, 0.8)]
    path.write_text("[[10, 0.1], [20, 0.2]]")
    assert load_curve(path) == [(10, 0.1), (20, 0.2)]


@pytest.mark.parametrize("bad", ["{}", "[[1]]"])
def test_malformed_curve_raises(tmp_path, bad):
    path = tmp_path / "curve.json"
    path.write_text(bad)
    with pytest.raises((KeyError, ValueError)):
        load_curve(path)


def test_subset_keeps_lines_with_unicode_line_separators(tmp_path):
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"line\u2028break {i}"},
                {"role": "assistant", "content": "Category: a"},
            ]
        }
        for i in range(4)
    ]
    src = tmp_path / "train.jsonl"
    src.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    out = write_subset(src, tmp_path / "s.jsonl", 2, [3, 1, 0, 2])
    assert [json.loads(ln) for ln in out.read_text(encoding="utf-8").split("\n") if ln] == [
        rows[1],
        rows[3],
    ]
