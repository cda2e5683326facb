"""parse_once: one parse of a GGUF file per load, and gguf left as it was afterwards."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from tunewise.runtime.gguf_read import parse_once


def _tiny_gguf(path: Path) -> Path:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_token_list(["a", "b", "c"])
    writer.add_tensor("token_embd.weight", np.zeros((3, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_file_is_parsed_once_inside_and_anew_outside(tmp_path: Path) -> None:
    path = _tiny_gguf(tmp_path / "m.gguf")
    other = _tiny_gguf(tmp_path / "n.gguf")
    original = gguf.GGUFReader
    with parse_once():
        first = gguf.GGUFReader(path)
        assert gguf.GGUFReader(str(path)) is first  # the same file: the same parse
        assert gguf.GGUFReader(other) is not first
        with parse_once():  # nested: the outer memo serves
            assert gguf.GGUFReader(path) is first
        assert gguf.GGUFReader(path) is first  # the inner exit did not undo the outer
        maps = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2) is maps
    assert gguf.GGUFReader is original
    assert gguf.GGUFReader(path) is not gguf.GGUFReader(path)
    assert first.fields["tokenizer.ggml.tokens"].data  # a real parse


def test_gguf_is_restored_when_the_load_fails(tmp_path: Path) -> None:
    original, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    with pytest.raises(RuntimeError), parse_once():
        raise RuntimeError("load failed")
    assert gguf.GGUFReader is original and gguf.get_tensor_name_map is name_map
