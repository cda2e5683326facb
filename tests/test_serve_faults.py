"""Server faults from the hostile-input probe (#26): a registry name that arrives after a
path-loaded adapter of that name, adapter folders that are wrong in ways PEFT does not catch, a
registry index damaged under a running server, OpenAI parameters the server does not implement."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from _serve_helpers import running
from _ship_helpers import make_run
from tunewise.registry.store import Registry
from tunewise.serve.app import ServeSettings, create_app

ADMIN_KEY = "admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def world(tiny_model_dir, tmp_path_factory):
    """An Engine on the tiny base, a good adapter under an adapter root, and a spare run."""
    from tunewise.runtime.engine import Engine
    from tunewise.runtime.models import resolve

    tmp = tmp_path_factory.mktemp("faults")
    root = tmp / "adapters"
    good = make_run(tiny_model_dir, root / "good", seed=2)
    spare = make_run(tiny_model_dir, tmp / "spare-run", seed=3)
    engine = Engine(resolve(str(tiny_model_dir)), max_loaded_adapters=4, batch_size=4)
    return {"tmp": tmp, "root": root, "good": good, "spare": spare, "engine": engine}


def _app(world, registry: Registry | None):
    settings = ServeSettings(admin_key=ADMIN_KEY, adapter_roots=[world["root"]])
    return create_app(world["engine"], settings=settings, registry=registry)


@pytest.fixture(scope="module")
def server(world):
    with running(_app(world, None)) as url:
        yield url


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def load(url: str, name: str, path: Path) -> httpx.Response:
    body = {"name": name, "path": str(path)}
    return httpx.post(f"{url}/admin/adapters/load", json=body, headers=ADMIN, timeout=60)


def chat(url: str, model: str, **extra) -> httpx.Response:
    body = {"model": model, "messages": HI, "max_tokens": 2, **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)


def error_of(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and "\n" not in err["message"]
    if code is not None:
        assert err["code"] == code, err
    return err


# --------------------------------------------------------------------------- finding 3


def _registry_with_later(world, tmp: Path) -> Registry:
    reg = Registry(tmp / "registry")
    reg.add(world["spare"], name="other")  # the registry has data before "later" arrives
    return reg


def _give_registry_the_name(reg: Registry, world) -> None:
    reg.add(world["spare"], name="later")
    reg.promote("later", 1, force=True, reason="test")


def test_refresh_drops_a_path_loaded_adapter_whose_name_the_registry_took(world, tmp_path):
    reg = _registry_with_later(world, tmp_path)
    with running(_app(world, reg)) as url:
        assert load(url, "later", world["good"]).status_code == 200
        assert chat(url, "later").headers["X-Tunewise-Model"] == "later"
        _give_registry_the_name(reg, world)
        r = httpx.post(f"{url}/admin/adapters/refresh", headers=ADMIN, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["dropped"] == ["later"]
        assert r.json()["changed"]["later"] == {"from": "later", "to": "later:1"}
        answer = chat(url, "later")
        assert answer.status_code == 200 and answer.headers["X-Tunewise-Model"] == "later:1"
        assert "later" not in world["engine"].adapters()


def test_a_request_goes_to_the_registry_once_it_owns_a_path_loaded_name(world, tmp_path):
    reg = _registry_with_later(world, tmp_path)
    with running(_app(world, reg)) as url:
        assert load(url, "later", world["good"]).status_code == 200
        _give_registry_the_name(reg, world)
        answer = chat(url, "later")  # no refresh: the name is checked when it is resolved
        assert answer.status_code == 200 and answer.headers["X-Tunewise-Model"] == "later:1"
        ids = [m["id"] for m in httpx.get(f"{url}/v1/models", timeout=30).json()["data"]]
        assert ids.count("later") == 1
        assert "later" not in world["engine"].adapters()


# --------------------------------------------------------------------------- finding 8


@pytest.mark.parametrize(
    "config, field",
    [
        ([], "adapter_config.json"),
        ({"r": "abc"}, "r"),
        ({"target_modules": 5}, "target_modules"),
        ({"lora_alpha": [1]}, "lora_alpha"),
        ({"peft_type": "IA3"}, "peft_type"),
        ({"init_lora_weights": "pissa"}, "init_lora_weights"),  # would rewrite the shared base
        ({"r": 10**9}, "r"),  # PEFT would allocate it before finding the weights are rank 4
    ],
)
def test_a_malformed_adapter_config_is_422_naming_the_field(server, world, config, field):
    folder = _copy(world["good"], world["root"] / f"cfg-{abs(hash(json.dumps(config)))}")
    path = folder / "adapter_config.json"
    if isinstance(config, dict):
        config = {**json.loads(path.read_text()), **config}
    path.write_text(json.dumps(config))
    err = error_of(load(server, "badcfg", folder), 422)
    assert "adapter_config.json" in err["message"] and field in err["message"], err
    assert "badcfg" not in world["engine"].adapters()


def _rewrite_weights(folder: Path, change) -> None:
    from safetensors.torch import load_file, save_file

    path = folder / "adapter_model.safetensors"
    tensors = load_file(path)
    save_file(change(tensors), path)


def test_an_adapter_whose_tensors_match_no_module_is_422(server, world):
    folder = _copy(world["good"], world["root"] / "nomatch")
    _rewrite_weights(
        folder, lambda ts: {k.replace("self_attn", "no_such_block"): v for k, v in ts.items()}
    )
    err = error_of(load(server, "nomatch", folder), 422)
    assert "no module" in err["message"] and "adapter_model.safetensors" in err["message"]
    assert "nomatch" not in world["engine"].adapters()


def test_an_adapter_with_non_finite_weights_is_422(server, world):
    folder = _copy(world["good"], world["root"] / "nan")

    def poison(ts):
        first = sorted(ts)[0]
        ts[first][0, 0] = float("nan")
        return ts

    _rewrite_weights(folder, poison)
    err = error_of(load(server, "nan", folder), 422)
    assert "non-finite" in err["message"] and "adapter_model.safetensors" in err["message"]
    assert "nan" not in world["engine"].adapters()


def test_an_adapter_trained_on_another_base_is_409(server, world):
    folder = _copy(world["good"], world["root"] / "otherbase")
    run = json.loads((folder / "run.json").read_text())
    run["base_model"]["weight_hash"] = "0" * 64
    (folder / "run.json").write_text(json.dumps(run))
    error_of(load(server, "otherbase", folder), 409, "base_mismatch")
    assert "otherbase" not in world["engine"].adapters()


def test_a_file_linked_out_of_the_adapter_roots_is_403(server, world):
    folder = _copy(world["good"], world["root"] / "passwd")
    (folder / "context.json").symlink_to("/etc/passwd")
    error_of(load(server, "passwd", folder), 403, "outside_adapter_roots")
    assert "passwd" not in world["engine"].adapters()


# --------------------------------------------------------------------------- finding 9


@pytest.mark.parametrize("damage", [b"", b"garbage! " * 512])
def test_a_damaged_index_under_a_running_server_is_503_naming_the_repair(world, tmp_path, damage):
    reg = Registry(tmp_path / "registry")
    reg.add(world["spare"], name="tt")
    with running(_app(world, reg)) as url:
        reg.db_path.write_bytes(damage)
        for name in ("registry.sqlite-wal", "registry.sqlite-shm"):
            (reg.root / name).unlink(missing_ok=True)
        for r in (httpx.get(f"{url}/v1/models", timeout=30), chat(url, "tt"), chat(url, "tt:1")):
            err = error_of(r, 503, "registry_index_damaged")
            assert "registry rebuild" in err["message"], err
        assert chat(url, "base").status_code == 200  # the base model needs no registry


# --------------------------------------------------------------------------- finding 13


@pytest.mark.parametrize(
    "param, refused, accepted",
    [
        ("logprobs", True, False),
        ("top_logprobs", 3, 0),
        ("response_format", {"type": "json_object"}, {"type": "text"}),
        ("response_format", {"type": "json_schema", "json_schema": {}}, None),
        # tools and tool_choice are served now (tests/test_serve_tools.py); their legacy forms
        # are still refused
        ("functions", [{"name": "f"}], []),
        ("function_call", {"name": "f"}, "auto"),
    ],
)
def test_parameters_the_server_does_not_implement_are_refused(server, param, refused, accepted):
    """Refused in one line naming the parameter; the values that ask for nothing still pass."""
    err = error_of(chat(server, "base", **{param: refused}), 422, "unsupported_parameter")
    assert err["param"] == param and param in err["message"]
    r = chat(server, "base", **{param: accepted})
    assert r.status_code == 200, r.text
