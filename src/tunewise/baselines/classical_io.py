"""Classical references as releasable artefacts: saved to a folder, loaded back in another process.

A fitted ``tfidf`` or ``probe`` :class:`~tunewise.baselines.classical.FieldClassifier`, or a
``knn`` :class:`~tunewise.baselines.rag.KnnClassifier`, is written as two files and nothing else:

* ``classifier.json``: everything that is text or a small number (the kind, the label fields and
  their pattern, constant fields, each field's classes, the answer renderer's state, the tf-idf
  vectorizers' settings and vocabularies, the embedding model id, kNN's k, label keys, uids and
  answers), plus the SHA-256 of the arrays file so a JSON from one save is never paired with the
  arrays of another;
* ``classifier.safetensors``: the float arrays (``coef.<field>``, ``intercept.<field>``,
  ``idf.<vectorizer>``, kNN's ``vectors``).

No pickle anywhere: a release is data, so loading one runs no code from it. Loading rebuilds the
same scikit-learn objects (a ``TfidfVectorizer`` given the saved vocabulary and ``idf_``, a
``LogisticRegression`` given ``classes_``, ``coef_`` and ``intercept_``) and a FAISS flat index
over the saved vectors, so the loaded classifier answers exactly as the fitted one did. Every
problem with the files is a one-line :class:`UserError` naming the file and the field.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import safetensors.numpy
from safetensors import SafetensorError

from tunewise.baselines import classical
from tunewise.baselines.classical import (
    MAX_ITER,
    AnswerRenderer,
    FieldClassifier,
    TfidfFeatures,
)
from tunewise.baselines.embed import Embedder, default_embedder
from tunewise.baselines.rag import KnnClassifier
from tunewise.data.labels import LabelSpec
from tunewise.data.schema import Example
from tunewise.errors import UserError
from tunewise.fsio import atomic_write_bytes, atomic_write_json

FORMAT = 1  # bump on any change a loader of the previous layout would misread
JSON_NAME = "classifier.json"
ARRAYS_NAME = "classifier.safetensors"
FIELD_KINDS = ("tfidf", "probe")
KINDS = (*FIELD_KINDS, "knn")
KNN_K = 10  # the k of eval/harness.py's knn candidate: a release must vote as it was evaluated


def fit_for_release(
    kind: str, spec: LabelSpec, train: Sequence[Example], embedder: Any = None
) -> FieldClassifier | KnnClassifier:
    """Fit ``kind`` on ``train`` exactly as the evaluation harness fits that candidate (same
    features, k, label keys and default embedder), so the release answers as it was scored."""
    if kind == "tfidf":
        return classical.tfidf_classifier(spec, train)
    if kind not in ("probe", "knn"):
        raise UserError(f"{kind!r} is not a classical classifier (one of {', '.join(KINDS)})")
    embedder = embedder if embedder is not None else default_embedder()
    if kind == "probe":
        return classical.probe_classifier(spec, train, embedder.encode)
    return KnnClassifier(
        train, k=KNN_K, embedder=embedder, label_of=lambda t: spec.key(spec.extract(t))
    )


def save(fitted: FieldClassifier | KnnClassifier, folder: Path) -> list[str]:
    """Either kind of fitted classifier: :func:`save_knn` or :func:`save_classifier`."""
    if isinstance(fitted, KnnClassifier):
        return save_knn(fitted, folder)
    return save_classifier(fitted, folder)


# --- saving ---------------------------------------------------------------------------------------


def save_classifier(clf: FieldClassifier, folder: Path) -> list[str]:
    """Write a fitted tfidf or probe classifier into ``folder``; the file names written."""
    if clf.name not in FIELD_KINDS:
        raise UserError(f"{clf.name}: only a tfidf or probe classifier can be saved this way")
    arrays: dict[str, np.ndarray] = {}
    classes: dict[str, list[str]] = {}
    for f, model in clf.models.items():
        classes[f] = [str(c) for c in model.classes_]
        arrays[f"coef.{f}"] = np.asarray(model.coef_)  # dtype kept: predict must not change
        arrays[f"intercept.{f}"] = np.asarray(model.intercept_)
    doc: dict[str, Any] = {
        "format": FORMAT,
        "kind": clf.name,
        "label_spec": _spec_state(clf.spec),
        "constant": dict(clf.constant),
        "classes": classes,
        "renderer": _renderer_state(clf.renderer),
        "train": {k: v for k, v in clf.describe().items() if k not in ("classifier", "fields")},
    }
    if clf.name == "tfidf":
        if not isinstance(clf.featurize, TfidfFeatures):
            raise UserError("tfidf: its features were not fitted by tfidf_features; cannot save")
        doc["vectorizers"] = _vectorizers_state(clf.featurize, arrays)
    else:
        if not clf.embedding_model_id:
            # Without it a loader could not refuse an embedder that maps texts elsewhere.
            raise UserError("probe: the embedding model id is unknown (pass model_id=)")
        doc["embedding_model_id"] = clf.embedding_model_id
    return _write(Path(folder), doc, arrays)


def save_knn(knn: KnnClassifier, folder: Path) -> list[str]:
    """Write a fitted kNN classifier (its train vectors and answers) into ``folder``."""
    model_id = getattr(knn.embedder, "model_id", None)
    if not model_id:
        raise UserError("knn: the embedder has no model_id; cannot save")
    doc = {
        "format": FORMAT,
        "kind": "knn",
        "embedding_model_id": model_id,
        "knn": {
            "k": knn.k,
            "labels": list(knn.labels),
            "uids": list(knn.uids),
            "answers": list(knn.answers),
        },
    }
    vectors = np.asarray(knn.train_vectors(), dtype=np.float32)
    return _write(Path(folder), doc, {"vectors": vectors})


def _write(folder: Path, doc: dict[str, Any], arrays: dict[str, np.ndarray]) -> list[str]:
    data = safetensors.numpy.save({k: np.ascontiguousarray(v) for k, v in arrays.items()})
    doc["arrays_sha256"] = hashlib.sha256(data).hexdigest()
    # Arrays first, JSON last: the JSON names the arrays by hash, so a save interrupted between
    # the two leaves a pair the loader refuses rather than one that answers differently.
    atomic_write_bytes(folder / ARRAYS_NAME, data)
    atomic_write_json(folder / JSON_NAME, doc)
    return [JSON_NAME, ARRAYS_NAME]


def _spec_state(spec: LabelSpec) -> dict[str, Any]:
    pattern = spec.pattern
    return {
        "fields": list(spec.fields),
        "pattern": pattern.pattern if pattern is not None else None,
        "pattern_flags": pattern.flags if pattern is not None else 0,
        "allowed": {f: list(v) for f, v in spec.labels.items()},
    }


def _renderer_state(renderer: AnswerRenderer) -> dict[str, Any]:
    template = None
    if renderer.template is not None:
        text, slots = renderer.template
        template = {"text": text, "spans": {f: list(span) for f, span in slots.items()}}
    # A list of pairs, not an object: label tuples are no JSON keys, and order is kept.
    answers = [[list(key), answer] for key, answer in renderer.by_labels.items()]
    return {"answers": answers, "template": template}


def _vectorizers_state(features: TfidfFeatures, arrays: dict[str, np.ndarray]) -> list[dict]:
    union = features.union
    if union.transformer_weights is not None:
        raise UserError("tfidf: weighted feature unions cannot be saved")
    out = []
    for name, vec in union.transformer_list:
        settings = {}
        for key, value in vec.get_params(deep=False).items():
            if key == "vocabulary":
                continue  # the fitted vocabulary_ is saved instead, as a fixed vocabulary
            if key == "dtype":
                value = np.dtype(value).name
            elif isinstance(value, tuple):
                value = list(value)
            elif callable(value):
                raise UserError(f"tfidf: vectorizer {name!r}: a callable {key} cannot be saved")
            settings[key] = value
        vocab = {term: int(i) for term, i in vec.vocabulary_.items()}
        out.append({"name": name, "settings": settings, "vocabulary": vocab})
        arrays[f"idf.{name}"] = np.asarray(vec.idf_)
    return out


# --- loading --------------------------------------------------------------------------------------


class ReleasedClassifier:
    """A classifier loaded from a release folder: ``predict`` answers as the fitted one did."""

    def __init__(self, kind: str, inner: FieldClassifier | KnnClassifier, folder: Path) -> None:
        self.kind = kind
        self.inner = inner
        self.folder = folder

    def predict(self, queries: Sequence[Example]) -> list[str]:
        return self.inner.predict(queries)

    def describe(self) -> dict[str, Any]:
        if isinstance(self.inner, FieldClassifier):
            out = self.inner.describe()
            if self.inner.embedding_model_id:
                out["embedding"] = self.inner.embedding_model_id
            return out
        return {
            "classifier": "knn",
            "k": self.inner.k,
            "train_examples": len(self.inner.uids),
            "embedding": self.inner.embedder.model_id,
        }


def load_classifier(folder: Path, embedder: Any = None) -> ReleasedClassifier:
    """The classifier saved in ``folder`` by :func:`save_classifier` or :func:`save_knn`.

    ``embedder`` (probe and knn only; default: the process-wide one) must be the embedding model
    the classifier was fitted with: one with another ``model_id`` is refused."""
    folder = Path(folder)
    doc = _Doc.read(folder / JSON_NAME)
    fmt = doc.get("format", int)
    if fmt != FORMAT:
        doc.fail("format", f"{fmt} is not {FORMAT}: saved by another version of tunewise")
    kind = doc.get("kind", str)
    if kind not in KINDS:
        doc.fail("kind", f"{kind!r} is not one of {', '.join(KINDS)}")
    arrays = _read_arrays(folder / ARRAYS_NAME, doc)
    if kind == "tfidf":
        return ReleasedClassifier(kind, _load_fields(doc, arrays, None), folder)
    embedder = embedder if embedder is not None else default_embedder()
    saved_id = doc.get("embedding_model_id", str)
    if saved_id != getattr(embedder, "model_id", None):
        doc.fail(
            "embedding_model_id",
            f"saved with {saved_id!r}, but the embedder is "
            f"{getattr(embedder, 'model_id', None)!r}: its vectors would not match",
        )
    encoder = _Uncached(embedder) if isinstance(embedder, Embedder) else embedder
    inner = _load_knn(doc, arrays, encoder) if kind == "knn" else _load_fields(doc, arrays, encoder)
    return ReleasedClassifier(kind, inner, folder)


def load(folder: Path, embedder: Any = None) -> ReleasedClassifier:
    """:func:`load_classifier` (the name a release reads it by)."""
    return load_classifier(folder, embedder)


_MISSING: Any = object()  # a default that no JSON value can be


class _Doc:
    """The parsed JSON with typed access: every failure names the file and the field."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data

    @classmethod
    def read(cls, path: Path) -> _Doc:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"{path}: not found (not a saved classifier folder?)") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: cannot read: {exc}") from None
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno}") from None
        if not isinstance(data, dict):
            raise UserError(f"{path}: not a JSON object")
        return cls(path, data)

    def fail(self, where: str, message: str) -> NoReturn:
        raise UserError(f"{self.path}: {where}: {message}")

    def get(self, where: str, kind: type | tuple[type, ...]) -> Any:
        """The value at a dotted path (``renderer.template``), checked to be of ``kind``."""
        value: Any = self.data
        for key in where.split("."):
            value = value.get(key, _MISSING) if isinstance(value, dict) else _MISSING
        if value is _MISSING:
            self.fail(where, "missing")
        return self.check(where, value, kind)

    def check(self, where: str, value: Any, kind: type | tuple[type, ...]) -> Any:
        # bool is an int to isinstance, never a count or an index here
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
            names = "/".join(k.__name__ if k is not type(None) else "null" for k in _kinds(kind))
            self.fail(where, f"expected {names}, got {type(value).__name__}")
        return value

    def strings(self, where: str, value: Any = _MISSING, *, null: bool = False) -> list[Any]:
        """A list of strings (or nulls, where ``null``) at ``where`` (or ``value`` given)."""
        items = self.get(where, list) if value is _MISSING else self.check(where, value, list)
        kind = (str, type(None)) if null else str
        for i, item in enumerate(items):
            self.check(f"{where}[{i}]", item, kind)
        return items


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _read_arrays(path: Path, doc: _Doc) -> dict[str, np.ndarray]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: not found (the arrays beside {JSON_NAME})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc}") from None
    if hashlib.sha256(data).hexdigest() != doc.get("arrays_sha256", str):
        raise UserError(f"{path}: arrays_sha256: not the arrays {JSON_NAME} was saved with")
    try:
        arrays = safetensors.numpy.load(data)
    except SafetensorError as exc:
        raise UserError(f"{path}: not a safetensors file: {exc}") from None
    for name, array in arrays.items():
        if not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all():
            raise UserError(f"{path}: {name}: expected finite floats ({array.dtype})")
    return arrays


def _array(arrays: dict[str, np.ndarray], name: str, shape: tuple[int, ...], doc: _Doc) -> Any:
    """The array ``name``, refused unless its shape is what the JSON implies."""
    path = doc.path.with_name(ARRAYS_NAME)
    if name not in arrays:
        raise UserError(f"{path}: {name}: missing")
    got = arrays[name]
    if tuple(got.shape) != shape:
        raise UserError(
            f"{path}: {name}: shape {tuple(got.shape)} does not match {JSON_NAME} (expected "
            f"{shape})"
        )
    return got


def _load_fields(doc: _Doc, arrays: dict[str, np.ndarray], encoder: Any) -> FieldClassifier:
    """A tfidf (``encoder`` None) or probe classifier from the JSON and arrays."""
    kind = doc.get("kind", str)
    spec = _load_spec(doc)
    renderer = _load_renderer(doc, spec)
    constant = doc.get("constant", dict)
    for f, value in constant.items():
        doc.check(f"constant.{f}", value, str)
    classes = doc.get("classes", dict)
    if set(constant) | set(classes) != set(spec.fields) or set(constant) & set(classes):
        doc.fail("classes", f"with constant, must name each of {spec.fields} exactly once")
    if encoder is None:
        featurize, n_features = _load_tfidf(doc, arrays)
    else:
        featurize, n_features = (lambda xs: encoder.encode(list(xs))), None
    models = {f: _load_logreg(doc, arrays, f, n_features) for f in spec.fields if f in classes}
    if len({m.coef_.shape[1] for m in models.values()}) > 1:
        doc.fail("classes", "the fields' models disagree on the number of features")
    train = doc.get("train", dict)
    for key in ("train_examples", "skipped_train_answers"):
        doc.get(f"train.{key}", int)
    doc.check("train.first_skipped", train.get("first_skipped"), (str, type(None)))
    return FieldClassifier.restore(
        kind,
        spec,
        renderer=renderer,
        featurize=featurize,
        models=models,
        constant=constant,
        described=train,
        embedding_model_id=doc.data["embedding_model_id"] if encoder is not None else None,
    )


def _load_spec(doc: _Doc) -> LabelSpec:
    fields = doc.strings("label_spec.fields")
    if not fields or len(set(fields)) != len(fields):
        doc.fail("label_spec.fields", "expected distinct field names")
    source = doc.get("label_spec.pattern", (str, type(None)))
    flags = doc.get("label_spec.pattern_flags", int)
    try:
        pattern = re.compile(source, flags) if source is not None else None
    except (re.error, ValueError) as exc:
        doc.fail("label_spec.pattern", f"invalid regex: {exc}")
    allowed = doc.get("label_spec.allowed", dict)
    labels = {f: doc.strings(f"label_spec.allowed.{f}", v) for f, v in allowed.items()}
    return LabelSpec(pattern=pattern, fields=fields, labels=labels)


def _load_renderer(doc: _Doc, spec: LabelSpec) -> AnswerRenderer:
    by_labels: dict[tuple[str, ...], str] = {}
    for i, pair in enumerate(doc.get("renderer.answers", list)):
        where = f"renderer.answers[{i}]"
        if not isinstance(pair, list) or len(pair) != 2:
            doc.fail(where, "expected [labels, answer]")
        key = doc.strings(f"{where}[0]", pair[0])
        if len(key) != len(spec.fields):
            doc.fail(where, f"expected {len(spec.fields)} labels, one per field")
        by_labels[tuple(key)] = doc.check(f"{where}[1]", pair[1], str)
    raw = doc.get("renderer.template", (dict, type(None)))
    if raw is None:
        return AnswerRenderer.restore(spec, by_labels, None)
    text = doc.get("renderer.template.text", str)
    doc.get("renderer.template.spans", dict)
    slots: dict[str, tuple[int, int]] = {}
    for f in spec.fields:
        span = doc.get(f"renderer.template.spans.{f}", list)
        if len(span) != 2 or not all(type(x) is int and -1 <= x <= len(text) for x in span):
            doc.fail(f"renderer.template.spans.{f}", "expected [start, end] within the text")
        slots[f] = (span[0], span[1])
    return AnswerRenderer.restore(spec, by_labels, (text, slots))


def _load_logreg(doc: _Doc, arrays: dict[str, np.ndarray], f: str, n_features: int | None) -> Any:
    """A LogisticRegression that predicts as the saved one: ``predict`` reads only
    ``classes_``, ``coef_`` and ``intercept_`` (checked against the installed scikit-learn)."""
    # lazy: scikit-learn, ~1 s to import; a tfidf or probe release needs it, a knn one does not
    from sklearn.linear_model import LogisticRegression

    classes = doc.strings(f"classes.{f}")
    if len(classes) < 2 or classes != sorted(set(classes)):
        doc.fail(f"classes.{f}", "expected two or more distinct class names, sorted")
    rows = 1 if len(classes) == 2 else len(classes)  # binary: one row, for classes[1]
    if n_features is None:  # a probe: the embedding width, read from the array itself
        n_features = arrays.get(f"coef.{f}", np.zeros((0, 0))).shape[-1]
    model = LogisticRegression(max_iter=MAX_ITER)
    model.classes_ = np.array(classes)
    model.coef_ = _array(arrays, f"coef.{f}", (rows, n_features), doc)
    model.intercept_ = _array(arrays, f"intercept.{f}", (rows,), doc)
    model.n_features_in_ = n_features  # predict then refuses a query matrix of another width
    return model


def _load_tfidf(doc: _Doc, arrays: dict[str, np.ndarray]) -> tuple[TfidfFeatures, int]:
    """The fitted word and character TF-IDF, rebuilt from settings, vocabulary and ``idf_``."""
    # lazy: scikit-learn, ~1 s to import
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    parts = []
    n_features = 0
    for i, raw in enumerate(doc.get("vectorizers", list)):
        where = f"vectorizers[{i}]"
        raw = doc.check(where, raw, dict)
        name = doc.check(f"{where}.name", raw.get("name"), str)
        settings = dict(doc.check(f"{where}.settings", raw.get("settings"), dict))
        vocab = doc.check(f"{where}.vocabulary", raw.get("vocabulary"), dict)
        try:
            settings["dtype"] = np.dtype(settings.get("dtype", "float64")).type
            if "ngram_range" in settings:
                settings["ngram_range"] = tuple(settings["ngram_range"])
            vec = TfidfVectorizer(**settings, vocabulary=vocab)
            vec.idf_ = _array(arrays, f"idf.{name}", (len(vocab),), doc)
            vec.transform(["a check that the settings and vocabulary work"])
        except (TypeError, ValueError) as exc:  # sklearn's own checks of what the JSON says
            doc.fail(where, f"not a usable TfidfVectorizer: {exc}")
        parts.append((name, vec))
        n_features += len(vocab)
    if not parts:
        doc.fail("vectorizers", "expected at least one vectorizer")
    return TfidfFeatures(FeatureUnion(parts)), n_features


def _load_knn(doc: _Doc, arrays: dict[str, np.ndarray], encoder: Any) -> KnnClassifier:
    uids = doc.strings("knn.uids")
    labels = doc.strings("knn.labels", null=True)
    answers = doc.strings("knn.answers")
    if not uids or not len(uids) == len(labels) == len(answers):
        doc.fail("knn", "expected uids, labels and answers of one same, non-zero length")
    k = doc.get("knn.k", int)
    if not 1 <= k <= len(uids):
        doc.fail("knn.k", f"expected 1 to {len(uids)}, got {k}")
    width = arrays.get("vectors", np.zeros((0, 0))).shape[-1]
    vectors = _array(arrays, "vectors", (len(uids), width), doc).astype(np.float32)
    return KnnClassifier.from_vectors(
        vectors, labels=labels, uids=uids, answers=answers, k=k, embedder=encoder
    )


class _Uncached:
    """The embedder, never reading or writing its on-disk cache: a server's queries must not
    each leave a file of vectors behind (the vectors are the same either way)."""

    def __init__(self, embedder: Embedder) -> None:
        self.inner = embedder
        self.model_id = embedder.model_id

    def encode(self, texts: list[str], **_: Any) -> np.ndarray:
        return self.inner.encode(texts, cache=False)
