"""Constrained label scoring through the real engine: each prompt runs once, labels are suffixes.

Every forward the model runs is recorded at its token embedding (the one module every forward
passes through with the raw ids), so the test sees what ran, not what the code meant to run.
"""

from __future__ import annotations

import re

import pytest
import torch

from tunewise.data.labels import LabelSpec
from tunewise.eval.constrained import ConstrainedLabeler, null_messages
from tunewise.runtime import models
from tunewise.runtime.engine import Engine

PATTERN = re.compile(r"^Category: (?P<category>[a-z_]+)\nPriority: (?P<priority>[a-z]+)$")
LABELS = {"category": ["billing", "bug", "shipping"], "priority": ["high", "low"]}
SYSTEM = "Triage the ticket. Reply exactly: Category: <category>\nPriority: <priority>"


def msgs(ticket: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ticket}]


@pytest.fixture
def recorded_forwards():
    """(batch, width) of the input ids of every model forward while the fixture is active."""
    shapes: list[tuple[int, int]] = []

    def hook(module, args):
        if isinstance(module, torch.nn.Embedding) and args and args[0].dim() == 2:
            shapes.append(tuple(args[0].shape))

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    yield shapes
    handle.remove()


def test_each_prompt_runs_once_and_every_label_is_scored_as_a_continuation(
    tiny_model_dir, recorded_forwards
):
    engine = Engine(models.resolve(str(tiny_model_dir)), batch_size=16)
    spec = LabelSpec(pattern=PATTERN, fields=["category", "priority"], labels=LABELS)
    labeler = ConstrainedLabeler(spec, ["Category: bug\nPriority: low"])  # calibrated (PMI)
    assert labeler.mode == "joint" and labeler.n_combinations == 6
    prompts = [msgs("my invoice is wrong"), msgs("the app crashes when I open the settings")]
    length = {
        "prompt0": len(engine.encode([engine.render(prompts[0])])[0]),
        "prompt1": len(engine.encode([engine.render(prompts[1])])[0]),
        "null": len(engine.encode([engine.render(null_messages(prompts[0]))])[0]),
    }
    answers = [labeler.template.render(c) for c in labeler._combos()]
    longest_answer = max(len(engine.encode([a + engine.end_of_turn])[0]) for a in answers)
    assert longest_answer < min(length.values())  # a prompt pass and a label pass look different

    chosen = labeler.choose_many(engine, prompts)

    assert all(spec.complies(answer) for answer, _ in chosen)
    prompt_passes = [s for s in recorded_forwards if s[1] > longest_answer]
    label_passes = [s for s in recorded_forwards if s[1] <= longest_answer]
    # each prompt once at batch 1, and the null prompt of the calibration once for both (its
    # user turn is "N/A" whatever the ticket, so the second prompt reuses its scores)
    assert prompt_passes == [(1, length["prompt0"]), (1, length["null"]), (1, length["prompt1"])]
    # all 6 answers in one batch after each of those 3 prompt passes, never re-reading a prompt
    assert label_passes == [(6, longest_answer)] * 3
