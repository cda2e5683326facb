"""Output-format inference: the one answer to "what is the label of this example"."""

from __future__ import annotations

import re

import pytest

from tunewise.data.dedup import near_duplicate_clusters, signatures
from tunewise.data.formats import OutputFormat, infer_format, infer_labels
from tunewise.errors import UserError


def test_fields_format_regex_and_labels() -> None:
    targets = [
        f"Category: {c}\nPriority: {p}"
        for c in ("billing", "bug", "login")
        for p in ("low", "high")
    ] * 3
    targets.append("Category: bug")  # outlier
    fmt, labels = infer_labels(targets)
    assert fmt.kind == "fields"
    assert fmt.label_fields == ["category", "priority"]
    assert fmt.labels == {"category": ["billing", "bug", "login"], "priority": ["high", "low"]}
    assert re.match(fmt.regex, "Category: bug\nPriority: low")
    assert labels[0] == {"category": "billing", "priority": "low"}
    assert labels[-1] is None
    assert fmt.label_key("Category: bug\nPriority: high") == "bug|high"
    assert fmt.coverage == pytest.approx(18 / 19)


def test_free_text_field_is_not_a_label() -> None:
    targets = [
        f"Intent: {('refund', 'status')[i % 2]}\nReply: Sure thing, case {i} is handled now."
        for i in range(20)
    ]
    fmt = infer_format(targets)
    assert fmt.fields == ["intent", "reply"]
    assert fmt.label_fields == ["intent"]


def test_json_and_single_label_and_text_kinds() -> None:
    js = infer_format(['{"intent": "a", "slots": {"x": 1}}', '{"intent": "b", "slots": {}}'] * 3)
    assert js.kind == "json" and js.fields == ["intent", "slots"] and js.label_fields == ["intent"]
    assert js.parse('{"intent": "a"}') is None  # missing key: an outlier
    lab = infer_format(["balance", "transfer", "balance", "oos"] * 5)
    assert lab.kind == "label" and lab.labels == {"label": ["balance", "oos", "transfer"]}
    text = infer_format([f"A long and unique answer number {i}." for i in range(10)])
    assert text.kind == "text" and text.label_fields == [] and text.label_of("x") is None


def test_user_pattern_overrides_inference() -> None:
    fmt, labels = infer_labels(["Intent: a", "Intent: b", "intent=a"], r"^Intent: (?P<intent>\w+)$")
    assert fmt.pattern == "Intent: <intent>"
    assert labels == [{"intent": "a"}, {"intent": "b"}, None]
    with pytest.raises(UserError, match="invalid regex"):
        OutputFormat.from_regex("(?P<x>", [])


def test_minhash_estimates_jaccard_and_is_deterministic() -> None:
    a = "my parcel never arrived and the tracking page has not changed since monday"
    b = "my parcel never arrived and the tracking page has not updated since monday"
    sig = signatures([a, b], num_perm=1024)
    # true Jaccard over words + word pairs: 22 shared of 28
    assert abs((sig[0] == sig[1]).mean() - 22 / 28) < 0.05
    assert (signatures([a], num_perm=64) == signatures([a], num_perm=64)).all()
    clusters = near_duplicate_clusters([a, "something else entirely here", b.upper() + "!", "x"])
    assert clusters == [0, 1, 0, 3]
