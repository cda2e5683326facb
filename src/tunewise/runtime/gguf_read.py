"""Loading GGUF files through transformers without parsing them twice.

transformers' GGUF loader for llama / mistral / qwen2 (``load_gguf_checkpoint``) builds a
``gguf.GGUFReader``, which decodes the whole vocabulary and merges element by element (seconds
for a 49k-token vocabulary), once for the config, once for the tokenizer and again for the
tensors; and its name mapping calls ``gguf.get_tensor_name_map`` for every submodule (about 1,200
times for a 30-layer model, each building the same map). :func:`parse_once` memoizes both for
the length of a load. Used by the embedded model's first conversion
(:mod:`tunewise.runtime.models`) and by reading an export back (:mod:`tunewise.export.gguf`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# The patch below is process-wide, so one load at a time; re-entrant, so that a caller may hold
# one parse across several loads of the same file (a model and its tokenizer).
_PARSE_ONCE = threading.RLock()
_parsing_once = False  # whether an outer parse_once (this thread: it holds the lock) is active


@contextmanager
def parse_once() -> Iterator[None]:
    """Memoize, for the duration of the block, the two pure steps transformers repeats (see
    the module docstring).

    transformers imports both from ``gguf`` at call time, so a cached reader per file
    (read-only) and a cached map per (arch, layers) take effect; its loader runs unchanged.
    Should transformers bind them elsewhere, this costs nothing and saves nothing.
    """
    global _parsing_once
    import gguf  # lazy: gguf, ~0.1 s to import

    with _PARSE_ONCE:
        if _parsing_once:  # nested: the outer caches serve
            yield
            return
        reader_cls, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
        readers: dict[tuple[str, str], Any] = {}
        maps: dict[tuple[Any, int], Any] = {}

        def reader(path: str | os.PathLike[str], mode: str = "r") -> Any:
            key = (os.path.realpath(path), mode)
            if key not in readers:
                readers[key] = reader_cls(path, mode)
            return readers[key]

        def tensor_name_map(arch: Any, n_blocks: int) -> Any:
            if (arch, n_blocks) not in maps:
                maps[arch, n_blocks] = name_map(arch, n_blocks)
            return maps[arch, n_blocks]

        gguf.GGUFReader, gguf.get_tensor_name_map = reader, tensor_name_map
        _parsing_once = True
        try:
            yield
        finally:
            gguf.GGUFReader, gguf.get_tensor_name_map = reader_cls, name_map
            _parsing_once = False
