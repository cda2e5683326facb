"""Which LoRA adapters sit on one base model in memory, and which one is switched on.

An :class:`AdapterPool` owns the adapters of one base model: the registered ones (name -> files,
reloadable at any time), the resident ones (at most ``max_loaded``, least recently used out), the
pins of generations in flight, and the PEFT wrapper they live in. A pinned adapter is never
evicted: when every resident adapter is pinned, a new one is loaded over the bound, and the pool
shrinks back to it as the pins are released. The base model itself is adapter ``None``: adapters
disabled.

Everything above is guarded by one private lock, taken by each public method. A model call holds
it too, through :meth:`AdapterPool.activated`, because PEFT's "active adapter" is global state of
the wrapped model: switching it while another thread's forward step runs would mix adapters.
Methods named ``*_locked`` run with the lock already held and are only called from this class.

Mixed batches: :meth:`AdapterPool.activated_rows` runs rows of several adapters (and the base) in
one forward through PEFT's ``adapter_names=`` (one name per row, ``"__base__"`` for the base).
Each adapter's LoRA term goes to its own rows only, so a row gets what it would get alone. In
plain LoRA layers, :mod:`tunewise.runtime.lora_gather` computes every row's term at once from the
adapters' stacked weights, instead of PEFT's loop over the adapters (installed at each load).
Not every adapter can take part (:meth:`AdapterPool.mixable`, decided when it is loaded); the
engine runs the others in batches of their own, as before.
"""

from __future__ import annotations

import json
import math
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError, safe_open

from tunewise.errors import UserError
from tunewise.fsio import read_json_object, sha256_file, sha256_json
from tunewise.rundir import ADAPTER_CONFIG, ADAPTER_WEIGHTS, RunDir

if TYPE_CHECKING:
    from tunewise.runtime.models import ModelRef


class CorruptedAdapterError(UserError):
    """An adapter whose weights file is not a readable safetensors file (the server says 503)."""


class BaseMismatchError(UserError):
    """An adapter trained on another base model (the server says 409, like a registry version's)."""


def adapter_digest(path: Path) -> str:
    """What an adapter's answers depend on: its weights file and its config.

    The weights alone were the key, but ``adapter_config.json`` scales them (``lora_alpha``,
    ``use_rslora``) and says where they go: an edited config under the same folder was kept
    loaded as it was, and the generation and prefix caches answered from the old scale.
    """
    return sha256_json([sha256_file(path / ADAPTER_WEIGHTS), sha256_file(path / ADAPTER_CONFIG)])


@dataclass(frozen=True)
class Adapter:
    name: str
    path: Path
    sha256: str  # of its weights and config (adapter_digest): part of the cache keys
    slot: str  # PEFT adapter name (module-dict key: no dots, no '@' or ':')


class AdapterPool:
    """LoRA adapters on one base model, LRU-bounded and pinned while in use (module docstring)."""

    def __init__(self, base: Any, base_ref: ModelRef, *, max_loaded: int) -> None:
        if max_loaded < 1:
            raise UserError("max_loaded_adapters must be at least 1")
        self.base_ref = base_ref
        self.max_loaded = max_loaded
        self._base = base
        self._peft: Any = None  # PeftModel wrapping _base once the first adapter is loaded
        self._lock = threading.Lock()
        self._registered: dict[str, Adapter] = {}
        self._loaded: OrderedDict[str, Adapter] = OrderedDict()  # LRU order, most recent last
        self._pins: dict[str, int] = {}
        self._slots = 0
        self._mixable: dict[str, bool] = {}  # name -> may share a forward (set at each load)
        self._active: str | None = None  # slot active in the PEFT model; None = none yet
        # What the PEFT model's layers do: "on" (the active adapter), "off" (the bare base),
        # "mixed" (LoRA per row, saved modules off); None: unknown, after a load.
        self._layers: str | None = "on"

    # ------------------------------------------------------------------ queries
    @property
    def model(self) -> Any:
        """The module that runs: the PEFT wrapper once adapters exist, else the base model."""
        return self._peft if self._peft is not None else self._base

    def names(self) -> list[str]:
        """Every registered adapter (resident now or reloadable on demand)."""
        with self._lock:
            return list(self._registered)

    def loaded(self) -> list[str]:
        """Adapters resident in memory, least recently used first."""
        with self._lock:
            return list(self._loaded)

    def get(self, name: str) -> Adapter:
        """The registered adapter ``name``; an unknown name is a UserError."""
        with self._lock:
            return self._get_locked(name)

    def mixable(self, name: str | None) -> bool:
        """Whether ``name``'s rows may share a forward with other adapters' (the base: always).

        False for an adapter not loaded since it was registered (its fate is unknown), so the
        caller falls back to a batch of its own, which is always right.
        """
        if name is None:
            return True
        with self._lock:
            return self._mixable.get(name, False)

    def sha256(self, name: str | None) -> str:
        """The adapter's :func:`adapter_digest` (a cache key's adapter part); "" for the base."""
        return "" if name is None else self.get(name).sha256

    # ------------------------------------------------------------------ registration
    def register(self, name: str, path: Path, *, base_hash: str | None = None) -> None:
        """Load the PEFT adapter in ``path`` as ``name`` (replacing a different one of that name).

        Refuses (UserError) an adapter whose training run recorded a different base model weight
        hash: ``base_hash`` when given (the registry knows it), else ``path/run.json``.
        """
        path = Path(path)
        self._check_files(name, path, base_hash)
        digest = adapter_digest(path)
        with self._lock:
            old = self._registered.get(name)
            if old is not None and old.sha256 == digest and old.path == path:
                if name in self._loaded:
                    self._loaded.move_to_end(name)
                return
            if old is not None:
                self._drop_locked(name)
            self._slots += 1
            entry = Adapter(name=name, path=path, sha256=digest, slot=f"tw{self._slots}")
            self._registered[name] = entry
            try:
                self._ensure_loaded_locked(entry)
            except Exception:
                self._registered.pop(name, None)
                raise

    def unregister(self, name: str) -> None:
        """Forget an adapter entirely (memory and registration)."""
        with self._lock:
            if name not in self._registered:
                raise UserError(f"unknown adapter '{name}'")
            self._drop_locked(name)

    def _check_files(self, name: str, path: Path, base_hash: str | None) -> None:
        run = RunDir(path)
        if not run.adapter_config.is_file():
            raise UserError(f"{path}: not a LoRA adapter directory (no {ADAPTER_CONFIG})")
        if not run.adapter_weights.is_file():
            raise UserError(f"{path}: no {ADAPTER_WEIGHTS} (only safetensors adapters are loaded)")
        config = _check_adapter_config(run.adapter_config)
        _check_safetensors(run.adapter_weights)
        expected = base_hash or run.base_hash()
        if expected is None:
            warnings.warn(
                f"{path}: no run.json with a base weight hash; cannot verify the base model",
                stacklevel=4,  # the caller of Engine.load_adapter
            )
        elif expected != self.base_ref.weight_hash:
            raise BaseMismatchError(
                f"adapter '{name}' ({path}) was trained on base {expected[:12]}, but the loaded "
                f"base '{self.base_ref.name}' is {self.base_ref.weight_hash[:12]}: "
                "refusing to mix them"
            )
        modules = {n for n, _ in self._base.named_modules()}
        rank = _check_tensors(run.adapter_weights, modules, self.base_ref.name)
        _check_ranks(run.adapter_config, config, rank)

    # ------------------------------------------------------------------ use
    @contextmanager
    def pinned(self, name: str | None) -> Iterator[None]:
        """Keep ``name`` resident (the LRU never evicts it) while a generation uses it."""
        if name is None:
            yield
            return
        with self._lock:
            entry = self._get_locked(name)
            self._pins[name] = self._pins.get(name, 0) + 1
            try:
                self._ensure_loaded_locked(entry)
            except BaseException:
                self._unpin_locked(name)
                raise
        try:
            yield
        finally:
            with self._lock:
                self._unpin_locked(name)

    @contextmanager
    def pinned_all(self, names: Iterable[str | None]) -> Iterator[None]:
        """:meth:`pinned` for every adapter of a mixed batch, for the whole batch."""
        with ExitStack() as stack:
            for name in dict.fromkeys(names):
                stack.enter_context(self.pinned(name))
            yield

    @contextmanager
    def activated_rows(self, names: Sequence[str | None]) -> Iterator[tuple[Any, list[str] | None]]:
        """The model for a batch whose rows run ``names`` (None: the base), held for one model
        call, and the ``adapter_names`` to pass it: None when one adapter serves every row (the
        plain switch of :meth:`activated`), else one PEFT slot per row.

        The caller has pinned every adapter in ``names`` (:meth:`pinned_all`) and checked that
        each is :meth:`mixable`.
        """
        with self._lock:
            if len(set(names)) == 1:
                yield self._switch_locked(names[0]), None
            else:
                yield self._switch_mixed_locked(names)

    @contextmanager
    def activated(self, name: str | None) -> Iterator[Any]:
        """The model with ``name`` switched on (None: adapters off), held for one model call.

        The pool stays locked until the block ends: no other thread can switch adapters, load or
        evict one while the caller's forward step runs.
        """
        with self._lock:
            yield self._switch_locked(name)

    # ------------------------------------------------------------------ internals (lock held)
    def _get_locked(self, name: str) -> Adapter:
        entry = self._registered.get(name)
        if entry is None:
            raise UserError(
                f"unknown adapter '{name}'; loaded: {', '.join(self._registered) or 'none'}"
            )
        return entry

    def _unpin_locked(self, name: str) -> None:
        self._pins[name] -= 1
        if not self._pins[name]:
            del self._pins[name]
            self._trim_locked(room=0)  # pins may have held the pool over its bound

    def _trim_locked(self, *, room: int) -> None:
        """Evict least recently used, unpinned adapters until ``room`` more fit the bound."""
        while len(self._loaded) > self.max_loaded - room:
            victim = next((a for a in self._loaded.values() if not self._pins.get(a.name)), None)
            if victim is None:  # everything resident is in use right now: exceed the bound briefly
                return
            self._evict_locked(victim)

    def _drop_locked(self, name: str) -> None:
        entry = self._registered.pop(name)
        self._mixable.pop(name, None)
        if name in self._loaded:
            self._evict_locked(entry)

    def _evict_locked(self, entry: Adapter) -> None:
        del self._loaded[entry.name]
        if self._active == entry.slot:
            self._active = None
        self._peft.delete_adapter(entry.slot)
        from tunewise.runtime import lora_gather  # lazy: pulls torch and peft

        lora_gather.drop(self._peft, entry.slot)  # its stacked copy goes now, not at next use

    def _ensure_loaded_locked(self, entry: Adapter) -> None:
        if entry.name in self._loaded:
            self._loaded.move_to_end(entry.name)
            return
        self._trim_locked(room=1)
        try:
            if self._peft is None:
                from peft import PeftModel  # lazy: peft pulls torch and transformers

                self._peft = PeftModel.from_pretrained(
                    self._base, str(entry.path), adapter_name=entry.slot
                )
                self._peft.eval()
            else:
                self._peft.load_adapter(str(entry.path), adapter_name=entry.slot)
        except SafetensorError as exc:  # the file changed after _check_safetensors read it
            raise CorruptedAdapterError(f"adapter '{entry.name}' ({entry.path}): {exc}") from None
        except (ValueError, KeyError, RuntimeError, OSError) as exc:
            raise UserError(
                f"adapter '{entry.name}' ({entry.path}) does not fit base "
                f"'{self.base_ref.name}': {exc}"
            ) from exc
        self._active = None  # PEFT may have switched the active adapter while loading
        self._layers = None  # and the layers it just made are on, whatever the others are
        self._loaded[entry.name] = entry
        self._mixable[entry.name] = _can_mix(self._peft, entry.slot)
        from tunewise.runtime import lora_gather  # lazy: pulls torch and peft

        lora_gather.install(self._peft)  # the load may have wrapped new layers

    def _switch_locked(self, name: str | None) -> Any:
        """Switch ``name`` on (None: adapters off) and return the module to run."""
        if self._peft is None:
            if name is not None:
                raise UserError(f"unknown adapter '{name}'")
            return self._base
        if name is None:
            return self._switch_off_locked()
        entry = self._registered.get(name)
        if entry is None:
            raise UserError(f"adapter '{name}' was unloaded while in use")
        self._ensure_loaded_locked(entry)
        if self._active != entry.slot:
            self._peft.set_adapter(entry.slot, inference_mode=True)
            self._active = entry.slot
        self._set_layers_locked("on")
        return self._peft

    def _switch_mixed_locked(self, names: Sequence[str | None]) -> tuple[Any, list[str]]:
        """Layers "mixed", and PEFT's active adapter one of this batch's; the PEFT row names.

        PEFT's mixed forward ignores the active adapter in LoRA layers, but the wrapper looks its
        config up (a deleted slot there is a KeyError, see :meth:`_switch_off_locked`), so it is
        pointed at a resident adapter of the batch, switched only when it is not one already.
        """
        slots: dict[str | None, str] = {None: "__base__"}
        for name in dict.fromkeys(n for n in names if n is not None):
            entry = self._registered.get(name)
            if entry is None:
                raise UserError(f"adapter '{name}' was unloaded while in use")
            self._ensure_loaded_locked(entry)  # pinned: a no-op unless unloaded and re-registered
            slots[name] = entry.slot
        if self._active not in slots.values():
            first = next(s for n, s in slots.items() if n is not None)
            self._peft.set_adapter(first, inference_mode=True)
            self._active = first
        self._set_layers_locked("mixed")
        return self._peft, [slots[n] for n in names]

    def _switch_off_locked(self) -> Any:
        """Adapters off: the base model's answer.

        PEFT's wrapper keeps its own "active adapter" name, which its forward looks up in its
        configs even with adapters disabled. ``delete_adapter`` only renames it when exactly one
        adapter stays active in the layers, so evicting the last resident adapter (then loading
        another, which does not switch) leaves it naming the deleted slot: a KeyError on the next
        base step. Point it at a resident slot first; with none resident, the injected LoRA layers
        hold no adapter and pass the base through, so the bare base model runs.
        """
        if not self._loaded:
            return self._base
        if self._active is None:  # unknown after a load or an eviction
            slot = next(reversed(self._loaded.values())).slot  # most recently used
            self._peft.set_adapter(slot, inference_mode=True)  # leaves the layers' on/off alone
            self._active = slot
        self._set_layers_locked("off")
        return self._peft

    def _set_layers_locked(self, state: str) -> None:
        """Switch the PEFT layers "on", "off" or to "mixed" (see ``_layers``).

        "mixed" also turns off every wrapper of ``modules_to_save`` or trainable tokens. Only
        adapters that cannot mix have them, so no row of a mixed batch needs one; but PEFT hands
        ``adapter_names`` to them too, and a wrapper asked for an adapter it does not hold fails
        (a KeyError, or a TypeError on a norm layer) instead of passing the base through.
        """
        if self._layers == state:
            return
        if state == "off":
            self._peft.base_model.disable_adapter_layers()
        else:
            self._peft.base_model.enable_adapter_layers()
        if state == "mixed":
            from peft.utils import AuxiliaryTrainingWrapper  # lazy: peft pulls torch

            for module in self._peft.modules():
                if isinstance(module, AuxiliaryTrainingWrapper):
                    module.enable_adapters(False)
        self._layers = state


def _can_mix(peft: Any, slot: str) -> bool:
    """Whether PEFT can run adapter ``slot`` in a mixed batch (``adapter_names=``), as of 0.21.

    No, where PEFT refuses it or where we cannot vouch for the rows' answers:

    * a layer's own check refuses ``adapter_names`` for it: DoRA, a merged adapter, LoRA on
      ``nn.MultiheadAttention`` or on bare parameters (``target_parameters``, MoE experts);
    * a LoRA variant (DoRA, aLoRA, ...): each has its own sub-batch code, unchecked here;
    * ``modules_to_save`` or ``trainable_token_indices``: PEFT's wrappers of those modules look
      up every row's adapter in their own copies (a KeyError for an adapter without one).

    Different ranks, alphas and target modules mix fine: each adapter's LoRA term is computed on
    its own rows, and a layer without the adapter leaves its rows alone. 4-bit (bitsandbytes)
    layers have a mixed path of their own. A full fine-tune has no adapters: nothing to mix.
    """
    from peft.tuners.lora import LoraLayer  # lazy: peft pulls torch and transformers

    config = peft.peft_config.get(slot)
    if config is None or getattr(config, "modules_to_save", None):
        return False
    if getattr(config, "trainable_token_indices", None):
        return False
    for module in peft.modules():
        if not isinstance(module, LoraLayer):
            continue
        if slot not in module.lora_A and slot not in module.lora_embedding_A:
            continue
        if slot in getattr(module, "lora_variant", {}):
            return False
        try:  # PEFT's own per-layer check (a list of one row stands in for the input)
            module._check_forward_args([None], adapter_names=[slot])
        except (ValueError, TypeError):
            return False
    return True


def _check_safetensors(weights: Path) -> None:
    """Refuse a weights file whose safetensors header does not parse, before PEFT reads it.

    Reading the header costs one small read; PEFT would otherwise fail inside its loader with a
    SafetensorError that says nothing about which file was damaged.
    """
    try:
        with safe_open(str(weights), framework="pt") as f:
            f.keys()
    except (SafetensorError, OSError) as exc:
        raise CorruptedAdapterError(f"{weights}: not a readable safetensors file ({exc})") from None


# ---------------------------------------------------------------------------- adapter files


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_names(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


# The adapter_config.json fields PEFT acts on, each with the test its value must pass and what
# that is in words. PEFT checks none of their types: a string rank or a number for the module
# list is a TypeError deep inside layer construction.
_CONFIG_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "peft_type": (lambda v: v == "LORA", '"LORA" (only LoRA adapters are served)'),
    "r": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "lora_alpha": (_is_number, "a finite number"),
    "lora_dropout": (lambda v: _is_number(v) and 0 <= v <= 1, "a number from 0 to 1"),
    "target_modules": (_optional(lambda v: isinstance(v, str) or _is_names(v)), "module names"),
    "exclude_modules": (_optional(lambda v: isinstance(v, str) or _is_names(v)), "module names"),
    "modules_to_save": (_optional(_is_names), "a list of module names"),
    "layers_to_transform": (
        _optional(lambda v: _is_int(v) or (isinstance(v, list) and all(map(_is_int, v)))),
        "a layer index or a list of them",
    ),
    "layers_pattern": (_optional(lambda v: isinstance(v, str) or _is_names(v)), "module names"),
    "rank_pattern": (
        lambda v: isinstance(v, dict) and all(_is_int(r) and r >= 1 for r in v.values()),
        "a mapping of module names to positive integers",
    ),
    "alpha_pattern": (
        lambda v: isinstance(v, dict) and all(map(_is_number, v.values())),
        "a mapping of module names to numbers",
    ),
    "bias": (lambda v: v in ("none", "all", "lora_only"), '"none", "all" or "lora_only"'),
    # PiSSA, OLoRA, LoftQ, CorDA, ... initialise by rewriting the base layer's weights, even when
    # the adapter's own weights are loaded over them next: on the one shared base, that would
    # change every other adapter's answers and the base model's.
    "init_lora_weights": (
        lambda v: isinstance(v, bool) or v == "gaussian",
        'true, false or "gaussian" (other methods rewrite the shared base weights)',
    ),
    **{
        flag: (lambda v: isinstance(v, bool), "true or false")
        for flag in ("fan_in_fan_out", "use_rslora", "use_dora", "lora_bias", "inference_mode")
    },
    # Megatron layers are imported by the module name the file gives: never from a client's file.
    "megatron_config": (lambda v: v is None, "null (Megatron adapters are not served)"),
}


def _check_adapter_config(path: Path) -> dict[str, Any]:
    """The ``adapter_config.json``, refused (UserError naming the field) where PEFT would choke."""
    raw = read_json_object(path, "adapter config")
    if "peft_type" not in raw:
        raise UserError(f"{path}: peft_type: missing (a PEFT adapter config names its type)")
    for key, (check, want) in _CONFIG_FIELDS.items():
        if key in raw and not check(raw[key]):
            shown = json.dumps(raw[key])
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise UserError(f"{path}: {key}: expected {want}, got {shown}")
    return raw


def _module_of(key: str) -> str:
    """The base-model module a PEFT tensor name belongs to.

    ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`` -> ``model.layers.0.
    self_attn.q_proj``: PEFT's prefix off, and everything from the adapter's own part on.
    """
    parts = key.removeprefix("base_model.model.").split(".")
    for i, part in enumerate(parts):
        if part.startswith("lora_") or part in ("modules_to_save", "trainable_tokens_delta"):
            return ".".join(parts[:i])
    return ".".join(parts[:-1])  # a whole saved weight (an embedding or head kept with it)


def _check_tensors(weights: Path, modules: set[str], base_name: str) -> int | None:
    """Refuse weights that PEFT loads without a word but that cannot answer as trained; returns
    the largest LoRA rank in them (None without LoRA matrices).

    PEFT loads a file whose tensors name no module of the base (they are silently left out, so
    the adapter answers like the base) and one holding NaN or inf (the model then answers
    nothing). Each tensor is read once; adapters are small beside their base.
    """
    import torch  # lazy: the pool's importers do not all need torch

    first = None
    matched = False
    rank = None
    try:
        with safe_open(str(weights), framework="pt") as f:
            names = f.keys()  # a safe_open handle is not iterable
            for key in names:
                first = first or key
                tensor = f.get_tensor(key)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    raise UserError(
                        f"{weights}: tensor {key!r} holds non-finite values (NaN or inf); "
                        "refusing an adapter that cannot answer"
                    )
                matched = matched or _module_of(key) in modules
                if ".lora_A." in key or ".lora_embedding_A." in key:  # (r, in_features)
                    rank = max(rank or 0, int(tensor.shape[0]))
    except (SafetensorError, OSError) as exc:
        raise CorruptedAdapterError(f"{weights}: not a readable safetensors file ({exc})") from None
    if not matched:
        raise UserError(
            f"{weights}: its tensors match no module of base '{base_name}' (first: {first!r}); "
            "loaded, it would answer like the base"
        )
    return rank


def _check_ranks(path: Path, config: dict[str, Any], rank: int | None) -> None:
    """Refuse a config rank above every rank in the weights.

    PEFT builds each layer at the config's rank before it reads a weight, so ``"r": 1000000000``
    would not fail on the mismatch: it would first take the server's memory. With a
    ``rank_pattern`` the default ``r`` may be used by no layer, so only the pattern is checked.
    """
    if rank is None:
        return
    pattern = config.get("rank_pattern") or {}
    asked = {f"rank_pattern.{k}": v for k, v in pattern.items()} or {"r": config.get("r", 8)}
    for key, r in asked.items():
        if r > rank:
            raise UserError(f"{path}: {key}: {r} is above the largest rank in the weights ({rank})")
