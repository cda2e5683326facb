"""A rung of the ladder as a releasable artefact: the prompt, few-shot, RAG and the classifiers
without an LLM, written to a folder the registry versions and the server answers from.

The article's advice is usually "the prompt is enough" or "few-shot is enough", and on label
tasks a TF-IDF classifier or an embedding probe often beats every LLM rung. A decision the user
cannot ship is half a decision, so each of these is a folder like a training run's:

* ``release.json``: the kind, the system prompt, the decoding settings it was evaluated with
  (``max_new_tokens``, greedy), the base model (name, path, weight hash) for the LLM kinds, the
  embedding model for the ones that retrieve or embed, the project config and the data hashes;
* ``context.json`` (``fewshot``, ``rag``): the retrieval spec and its pool, the very file a
  context-trained fine-tune keeps (:mod:`tunewise.baselines.context`), so the server retrieves
  exactly as the evaluator did;
* ``classifier.json`` + ``classifier.safetensors`` (``knn``, ``tfidf``, ``probe``): the fitted
  classifier without pickle (:mod:`tunewise.baselines.classical_io`).

The evaluator, the champion check and the server all answer through :class:`RungRelease`, so
"served equals evaluated" holds by construction and is tested per kind.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from tunewise.baselines import classical_io
from tunewise.baselines import prompt as prompt_mod
from tunewise.baselines.context import CONTEXT_FILE, ContextBuilder
from tunewise.candidates import NO_LLM
from tunewise.config import ProjectConfig, dump_project
from tunewise.data.schema import Example
from tunewise.errors import UserError
from tunewise.fsio import (
    atomic_write_json,
    read_json_object,
    replace_dir,
    sha256_json,
    staging_dir,
)
from tunewise.rungs import RUNGS

RELEASE_FILE: Final = "release.json"
FORMAT: Final = 1
LLM_KINDS: Final = RUNGS  # prompt, fewshot, rag: the base model with a prompt builder
CLASSIFIER_KINDS: Final = NO_LLM  # knn, tfidf, probe: no language model at all
RELEASE_KINDS: Final = (*LLM_KINDS, *CLASSIFIER_KINDS)

Messages = list[dict[str, str]]


def is_release(folder: Path) -> bool:
    """Whether ``folder`` holds a rung release (else it may be a training run)."""
    return (Path(folder) / RELEASE_FILE).is_file()


def release_key(cfg: ProjectConfig, kind: str, data_hashes: dict[str, Any]) -> str:
    """What a release of ``kind`` depends on, hashed: a changed prompt, retrieval setting or
    training file gives another folder (and so a challenger, not the same version again)."""
    full = dump_project(cfg)
    inputs: dict[str, Any] = {
        "kind": kind,
        "task": full["task"],
        "model": full["model"],
        "split": full["data"],
    }
    if kind in ("fewshot", "rag"):
        inputs["retrieval"] = full["eval"][kind]
        inputs["split_seed"] = full["data"]["split"]["seed"]
    inputs["data"] = data_hashes
    return sha256_json(inputs)[:10]


def write_release(
    folder: Path,
    kind: str,
    cfg: ProjectConfig,
    train: Sequence[Example],
    *,
    base: dict[str, Any] | None,
    max_new_tokens: int | None,
    data_hashes: dict[str, Any],
    fitted: Any | None = None,
) -> Path:
    """Write the release of ``kind`` into ``folder`` (replaced whole, never half-written).

    ``base`` is the base model's ``{"name", "path", "weight_hash"}`` (LLM kinds), ``fitted`` the
    classifier the evaluation scored (classifier kinds: saved as it is, not fitted again).
    """
    if kind not in RELEASE_KINDS:
        raise UserError(f"{kind!r} cannot be released: releasable kinds are {RELEASE_KINDS}")
    if kind in LLM_KINDS and not (base and base.get("weight_hash")):
        raise UserError(f"a {kind} release needs the base model's weight hash")
    if kind in CLASSIFIER_KINDS and fitted is None:
        raise UserError(f"a {kind} release needs the fitted classifier")
    meta: dict[str, Any] = {
        "format": FORMAT,
        "kind": kind,
        "system_prompt": cfg.task.system_prompt,
        "max_new_tokens": max_new_tokens,
        "temperature": 0.0,
        "base_model": dict(base) if kind in LLM_KINDS and base else None,
        "config": dump_project(cfg),
        "data_hashes": data_hashes,
        "status": "completed",
    }
    with staging_dir(folder) as tmp:
        if kind in ("fewshot", "rag"):
            builder = ContextBuilder.from_config(cfg, kind, train)
            builder.save(tmp / CONTEXT_FILE)
            meta["embedding"] = builder._embedding_id()
        elif kind in CLASSIFIER_KINDS:
            classical_io.save(fitted, tmp)
            # tfidf embeds nothing; probe keeps its model id, knn its embedder's
            embedder = getattr(fitted, "embedder", None)
            meta["embedding"] = getattr(fitted, "embedding_model_id", None) or getattr(
                embedder, "model_id", None
            )
        atomic_write_json(tmp / RELEASE_FILE, meta)
        replace_dir(tmp, folder)
    return Path(folder)


def read_meta(folder: Path) -> dict[str, Any]:
    """``release.json``, checked: one line naming the file and field when it is not usable."""
    path = Path(folder) / RELEASE_FILE
    raw = read_json_object(path, "release file")
    if raw.get("format") != FORMAT:
        raise UserError(f"{path}: format: {raw.get('format')!r}, expected {FORMAT}")
    if raw.get("kind") not in RELEASE_KINDS:
        raise UserError(f"{path}: kind: {raw.get('kind')!r} is not one of {RELEASE_KINDS}")
    if not isinstance(raw.get("system_prompt", ""), str):
        raise UserError(f"{path}: system_prompt: expected a string")
    base = raw.get("base_model")
    if raw["kind"] in LLM_KINDS and not (isinstance(base, dict) and base.get("weight_hash")):
        raise UserError(f"{path}: base_model.weight_hash: missing")
    mnt = raw.get("max_new_tokens")
    if mnt is not None and (not isinstance(mnt, int) or isinstance(mnt, bool) or mnt < 1):
        raise UserError(f"{path}: max_new_tokens: expected a positive integer, got {mnt!r}")
    return raw


@dataclass
class RungRelease:
    """A loaded release: builds the prompt (LLM kinds) or answers (classifiers) for queries."""

    kind: str
    folder: Path
    system_prompt: str
    max_new_tokens: int | None
    base_weight_hash: str | None
    context: ContextBuilder | None = None
    classifier: Any | None = None

    @classmethod
    def load(cls, folder: Path, *, embedder: Any | None = None) -> RungRelease:
        """The release in ``folder`` (its files already hash-verified by the registry)."""
        meta = read_meta(folder)
        kind = meta["kind"]
        release = cls(
            kind=kind,
            folder=Path(folder),
            system_prompt=meta.get("system_prompt", ""),
            max_new_tokens=meta.get("max_new_tokens"),
            base_weight_hash=(meta.get("base_model") or {}).get("weight_hash"),
        )
        if kind in ("fewshot", "rag"):
            release.context = ContextBuilder.load(Path(folder) / CONTEXT_FILE)
        elif kind in CLASSIFIER_KINDS:
            release.classifier = classical_io.load(Path(folder), embedder=embedder)
        return release

    @property
    def uses_llm(self) -> bool:
        return self.kind in LLM_KINDS

    def warm(self) -> RungRelease:
        """Build the retrieval index now (the server's first request should not pay for it)."""
        if self.context is not None:
            self.context.warm()
        return self

    def prompts(
        self, queries: Sequence[Example], *, cache_queries: bool = True
    ) -> tuple[list[Messages], dict[str, Any], list[dict[str, Any]] | None]:
        """The prompt per query, as the evaluator's rung of the same kind builds it."""
        if not self.uses_llm:
            raise UserError(f"a {self.kind} release answers without a prompt")
        if self.context is not None:
            return self.context.prompts(queries, cache_queries=cache_queries)
        msgs = [prompt_mod.base_messages(q, self.system_prompt) for q in queries]
        return msgs, {"prompt_version": prompt_mod.system_prompt_hash(self.system_prompt)}, None

    def answers(self, queries: Sequence[Example]) -> list[str]:
        """The classifier's answer text per query (classifier kinds)."""
        if self.classifier is None:
            raise UserError(f"a {self.kind} release answers through the language model")
        return list(self.classifier.predict(list(queries)))


def query_of(messages: Messages) -> Example:
    """A request's turns as the query an evaluated item is: an empty answer turn closes it."""
    return Example(messages=[*messages, {"role": "assistant", "content": ""}])
