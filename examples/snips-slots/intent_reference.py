#!/usr/bin/env python
"""The classical references on SNIPS's intent field: TF-IDF + logistic regression and the
embedding probe, fitted on the ladder's train split, scored on its validation split.

Usage: python examples/snips-slots/intent_reference.py examples/snips-slots/.tunewise/splits

The slots need sequence labelling, which these references do not do: they cover the intent only.
"""

import re
import sys
from pathlib import Path

from tunewise.baselines import classical
from tunewise.baselines.embed import default_embedder
from tunewise.data.labels import LabelSpec
from tunewise.data.schema import load_examples

splits = Path(sys.argv[1])
train, val = load_examples(splits / "train.jsonl"), load_examples(splits / "val.jsonl")
spec = LabelSpec(pattern=re.compile(r'"intent": "(?P<intent>\w+)"'), fields=["intent"])
for name, clf in (
    ("tfidf", classical.tfidf_classifier(spec, train)),
    ("probe", classical.probe_classifier(spec, train, default_embedder().encode)),
):
    pred = clf.predict_fields(val)
    gold = [spec.extract(ex.target)["intent"] for ex in val]
    acc = sum(p["intent"] == g for p, g in zip(pred, gold, strict=True)) / len(val)
    print(
        f"{name}: intent accuracy {acc:.3f} on {len(val)} validation queries ({len(train)} train)"
    )
