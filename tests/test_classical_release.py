"""Classical references as releases: saved as JSON + safetensors (never pickle), loaded back in a
fresh object or another process, answering exactly as the fitted classifier did."""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from tunewise.baselines import classical, classical_io, rag
from tunewise.baselines.classical_io import load_classifier, save_classifier, save_knn
from tunewise.data.labels import LabelSpec
from tunewise.data.schema import Example
from tunewise.errors import UserError

PATTERN = re.compile(r"^Category: (?P<category>\w+)\nPriority: (?P<priority>\w+)$", re.M)
SPEC = LabelSpec(
    pattern=PATTERN,
    fields=["category", "priority"],
    labels={"category": ["billing", "bug", "feature"], "priority": ["high", "low", "medium"]},
)
SINGLE = LabelSpec(pattern=None, fields=["label"])


def ex(user: str, answer: str, line: int = 1) -> Example:
    msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return Example(messages=msgs, line=line, source="/p/train.jsonl")


def ticket(user: str, cat: str, prio: str, line: int = 1) -> Example:
    return ex(user, f"Category: {cat}\nPriority: {prio}", line)


# The noun gives the category, the adverb the priority: two independent fields. Train never shows
# (bug, low) nor (feature, high), so predicting them needs the template renderer.
NOUNS = {"invoice": "billing", "crash": "bug", "idea": "feature"}
ADVERBS = {"urgently": "high", "whenever": "low", "soon": "medium"}
UNSEEN = {("bug", "low"), ("feature", "high")}
TRAIN = [
    ticket(f"{noun} {detail} {adv}", cat, prio, i)
    for i, (noun, cat, adv, prio, detail) in enumerate(
        (noun, cat, adv, prio, detail)
        for noun, cat in NOUNS.items()
        for adv, prio in ADVERBS.items()
        if (cat, prio) not in UNSEEN
        for detail in ["", "again", "please help"]
    )
]
QUERIES = [
    ticket("crash whenever", "bug", "low"),  # a combination train never shows
    ticket("my idea urgently", "feature", "high"),  # the other one
    ticket("invoice soon please", "billing", "medium"),
    ticket("something else entirely", "bug", "high"),  # off every keyword: any answer, but same
    TRAIN[0],  # a train item (kNN must not vote for itself)
]

SINGLE_TRAIN = [
    ex(u, a, i)
    for i, (u, a) in enumerate(
        [("refund my charge", "billing"), ("app crashed", "bug"), ("add dark mode", "feature")] * 4
    )
]
SINGLE_QUERIES = [ex("charge refund", "billing"), ex("crashed again", "bug"), ex("mode", "feature")]


class FakeEmbedder:
    """Deterministic unit vectors: a fixed random vector per word, summed. Like the real one it
    has a ``model_id`` and an ``encode`` returning float32 rows."""

    def __init__(self, model_id: str = "fake-words:32", dim: int = 32) -> None:
        self.model_id = model_id
        self.dim = dim

    def _word(self, word: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "little")
        return np.random.default_rng(seed).standard_normal(self.dim)

    def encode(self, texts: list[str], **_: object) -> np.ndarray:
        rows = [sum((self._word(w) for w in t.lower().split()), np.zeros(self.dim)) for t in texts]
        vecs = np.array(rows, dtype=np.float32) + 1e-3
        return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


def knn_label(spec: LabelSpec):
    return lambda t: spec.key(spec.extract(t))  # as the harness keys kNN's votes


def fitted(kind: str, spec: LabelSpec, train: list[Example], embedder: FakeEmbedder):
    if kind == "tfidf":
        return classical.tfidf_classifier(spec, train)
    if kind == "probe":
        return classical.probe_classifier(spec, train, embedder.encode)
    return rag.KnnClassifier(train, k=3, embedder=embedder, label_of=knn_label(spec))


def save(clf, folder: Path) -> list[str]:
    if isinstance(clf, rag.KnnClassifier):
        return save_knn(clf, folder)
    return save_classifier(clf, folder)


def assert_no_pickle(folder: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == ["classifier.json", "classifier.safetensors"]
    json.loads((folder / "classifier.json").read_text(encoding="utf-8"))
    arrays = safetensors.numpy.load_file(str(folder / "classifier.safetensors"))
    assert arrays and all(np.issubdtype(a.dtype, np.floating) for a in arrays.values())


@pytest.fixture
def no_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading must never unpickle: any pickle or allow_pickle load fails the test."""

    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("a release was loaded with pickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(np, "load", refuse)


@pytest.mark.parametrize("kind", ["tfidf", "probe", "knn"])
def test_two_field_release_answers_exactly_as_the_fitted_classifier(
    kind: str, tmp_path: Path, no_pickle: None
) -> None:
    embedder = FakeEmbedder()
    clf = fitted(kind, SPEC, TRAIN, embedder)
    want = clf.predict(QUERIES)
    folder = tmp_path / "release"
    assert save(clf, folder) == ["classifier.json", "classifier.safetensors"]
    assert_no_pickle(folder)

    loaded = load_classifier(folder, FakeEmbedder())  # a fresh embedder with the same model id
    assert loaded.kind == kind
    assert loaded.predict(QUERIES) == want
    assert loaded.predict([]) == []
    if kind != "knn":
        # the classifiers predict the unseen combinations, rendered in the train answers' format
        assert want[:2] == ["Category: bug\nPriority: low", "Category: feature\nPriority: high"]
        described = loaded.describe()
        assert {k: described[k] for k in clf.describe()} == clf.describe()
        assert loaded.describe()["train_examples"] == len(TRAIN)
    else:
        assert loaded.describe()["k"] == 3
    assert all(PATTERN.fullmatch(a) for a in loaded.predict(QUERIES))


@pytest.mark.parametrize("kind", ["tfidf", "probe", "knn"])
def test_single_field_release(kind: str, tmp_path: Path) -> None:
    clf = fitted(kind, SINGLE, SINGLE_TRAIN, FakeEmbedder())
    save(clf, tmp_path)
    loaded = load_classifier(tmp_path, FakeEmbedder())
    queries = [*SINGLE_QUERIES, *SINGLE_TRAIN[:3]]
    assert loaded.predict(queries) == clf.predict(queries)
    assert loaded.predict(SINGLE_QUERIES) == ["billing", "bug", "feature"]


def test_a_constant_field_and_a_skipped_answer_survive_the_release(tmp_path: Path) -> None:
    train = [
        ticket(f"{w} problem", c, "medium", i)
        for i, (w, c) in enumerate([("bill", "billing"), ("crash", "bug")] * 4)
    ]
    train.append(ex("not a ticket", "billing", 99))  # off the pattern: skipped, and counted
    clf = classical.tfidf_classifier(SPEC, train)
    save_classifier(clf, tmp_path)
    loaded = load_classifier(tmp_path)
    assert loaded.predict(QUERIES) == clf.predict(QUERIES)
    assert loaded.describe() == clf.describe()
    assert loaded.describe()["constant_fields"] == ["priority"]
    assert loaded.describe()["first_skipped"] == "/p/train.jsonl:99"


def test_knn_never_votes_for_the_query_itself(tmp_path: Path) -> None:
    # k=1 and an item whose text repeats a train item's with another answer: its own answer would
    # win with similarity 1 if it voted for itself; it must get its twin's answer instead.
    odd = ticket("invoice  urgently", "feature", "low", 50)
    knn = rag.KnnClassifier([*TRAIN, odd], k=1, embedder=FakeEmbedder(), label_of=knn_label(SPEC))
    save_knn(knn, tmp_path)
    loaded = load_classifier(tmp_path, FakeEmbedder())
    assert loaded.predict([odd]) == knn.predict([odd]) == ["Category: billing\nPriority: high"]


def test_a_release_loads_in_another_process(tmp_path: Path) -> None:
    clf = classical.tfidf_classifier(SPEC, TRAIN)
    save_classifier(clf, tmp_path)
    users = [q.user_text for q in QUERIES]
    code = (
        "import json, sys\n"
        "from tunewise.baselines.classical_io import load_classifier\n"
        "from tunewise.data.schema import Example\n"
        "users = json.loads(sys.argv[2])\n"
        "qs = [Example(messages=[{'role': 'user', 'content': u}]) for u in users]\n"
        "print(json.dumps(load_classifier(sys.argv[1]).predict(qs)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path), json.dumps(users)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout) == clf.predict(QUERIES)


def test_the_real_embedder_round_trips(tmp_path: Path) -> None:
    from tunewise.baselines.embed import Embedder

    embedder = Embedder()
    for kind in ("probe", "knn"):
        clf = fitted(kind, SPEC, TRAIN, embedder)  # type: ignore[arg-type]
        save(clf, tmp_path / kind)
        loaded = load_classifier(tmp_path / kind, Embedder())
        assert loaded.predict(QUERIES) == clf.predict(QUERIES)
        assert (
            json.loads((tmp_path / kind / "classifier.json").read_text())["embedding_model_id"]
            == embedder.model_id
        )


# --- tampered releases ----------------------------------------------------------------------------


def edit_json(folder: Path, change) -> None:
    path = folder / "classifier.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    change(doc)
    path.write_text(json.dumps(doc), encoding="utf-8")


def refused(folder: Path, match: str, embedder: FakeEmbedder | None = None) -> str:
    with pytest.raises(UserError, match=match) as err:
        load_classifier(folder, embedder or FakeEmbedder())
    message = str(err.value)
    assert "\n" not in message  # one line, as the CLI prints it
    return message


@pytest.fixture
def tfidf_release(tmp_path: Path) -> Path:
    save_classifier(classical.tfidf_classifier(SPEC, TRAIN), tmp_path)
    return tmp_path


def test_a_changed_class_list_is_refused(tfidf_release: Path) -> None:
    edit_json(tfidf_release, lambda d: d["classes"]["category"].pop())
    refused(tfidf_release, r"classifier\.safetensors: coef\.category: shape \(3, \d+\) does not")
    edit_json(tfidf_release, lambda d: d["classes"]["category"].extend(["feature", "aaa"]))
    refused(tfidf_release, r"classifier\.json: classes\.category: expected two or more distinct")
    edit_json(tfidf_release, lambda d: d["classes"].pop("category"))
    refused(tfidf_release, r"classifier\.json: classes: with constant, must name each")


def test_a_truncated_or_missing_file_is_refused(tfidf_release: Path, tmp_path: Path) -> None:
    arrays = tfidf_release / "classifier.safetensors"
    data = arrays.read_bytes()
    arrays.write_bytes(data[:-10])
    refused(tfidf_release, r"classifier\.safetensors: arrays_sha256: not the arrays")
    arrays.write_bytes(data)
    path = tfidf_release / "classifier.json"
    text = path.read_text(encoding="utf-8")
    path.write_text(text[: len(text) // 2], encoding="utf-8")
    refused(tfidf_release, r"classifier\.json: not valid JSON")
    path.write_text(text, encoding="utf-8")
    assert load_classifier(tfidf_release).predict(QUERIES[:1])  # whole again: loads
    refused(tmp_path / "nowhere", r"nowhere/classifier\.json: not found")
    edit_json(tfidf_release, lambda d: d.update(format=2))
    refused(tfidf_release, r"classifier\.json: format: 2 is not 1")
    edit_json(tfidf_release, lambda d: d.update(format=1, vectorizers="x"))
    refused(tfidf_release, r"classifier\.json: vectorizers: expected list, got str")
    edit_json(tfidf_release, lambda d: d.update(vectorizers=[]))
    refused(tfidf_release, r"classifier\.json: vectorizers: expected at least one")


def test_tampered_arrays_are_refused(tfidf_release: Path) -> None:
    path = tfidf_release / "classifier.safetensors"
    arrays = safetensors.numpy.load_file(str(path))
    arrays["idf.word"] = arrays["idf.word"][:-1]
    data = safetensors.numpy.save(arrays)
    path.write_bytes(data)
    # re-signed, so only the shape check can catch it
    edit_json(tfidf_release, lambda d: d.update(arrays_sha256=hashlib.sha256(data).hexdigest()))
    refused(tfidf_release, r"classifier\.safetensors: idf\.word: shape \(\d+,\) does not match")


@pytest.mark.parametrize("kind", ["probe", "knn"])
def test_another_embedding_model_is_refused(kind: str, tmp_path: Path) -> None:
    save(fitted(kind, SPEC, TRAIN, FakeEmbedder()), tmp_path)
    message = refused(tmp_path, "embedding_model_id", FakeEmbedder("other-model:1"))
    assert "classifier.json" in message and "'fake-words:32'" in message
    edit_json(tmp_path, lambda d: d.update(embedding_model_id="something-else"))
    refused(tmp_path, r"classifier\.json: embedding_model_id: saved with 'something-else'")


def test_knn_with_mismatched_lists_is_refused(tmp_path: Path) -> None:
    save_knn(rag.KnnClassifier(TRAIN, k=3, embedder=FakeEmbedder()), tmp_path)
    edit_json(tmp_path, lambda d: d["knn"]["answers"].pop())
    refused(tmp_path, r"classifier\.json: knn: expected uids, labels and answers of one same")
    edit_json(tmp_path, lambda d: d["knn"].update(answers=d["knn"]["uids"][:], k=0))
    refused(tmp_path, r"classifier\.json: knn\.k: expected 1 to \d+, got 0")


@pytest.mark.parametrize("kind", ["tfidf", "probe", "knn"])
def test_fit_for_release_fits_as_the_harness_and_save_dispatches(kind: str, tmp_path: Path) -> None:
    clf = classical_io.fit_for_release(kind, SPEC, TRAIN, FakeEmbedder())
    if kind == "knn":
        assert isinstance(clf, rag.KnnClassifier) and clf.k == classical_io.KNN_K
    else:
        assert isinstance(clf, classical.FieldClassifier) and clf.name == kind
    classical_io.save(clf, tmp_path)
    loaded = classical_io.load(tmp_path, FakeEmbedder())
    assert loaded.kind == kind and loaded.predict(QUERIES) == clf.predict(QUERIES)
    with pytest.raises(UserError, match="'prompt' is not a classical classifier"):
        classical_io.fit_for_release("prompt", SPEC, TRAIN)


def test_a_probe_with_no_model_id_is_not_saved(tmp_path: Path) -> None:
    clf = classical.probe_classifier(SPEC, TRAIN, FakeEmbedder().encode)
    assert clf.embedding_model_id == "fake-words:32"  # read off the bound encode's embedder
    clf.embedding_model_id = None
    with pytest.raises(UserError, match="embedding model id is unknown"):
        save_classifier(clf, tmp_path)
    assert not any(tmp_path.iterdir())
    assert classical_io.FORMAT == 1
