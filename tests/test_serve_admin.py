"""Admin routes, separated from clients (#14): their own key, off by default, and a `load` that
cannot hijack a registry name or read adapters from outside the configured roots."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from _serve_helpers import running
from _ship_helpers import make_run
from tunewise.registry.store import Registry
from tunewise.serve.app import ServeSettings, create_app

CLIENT_KEY = "client-key"
ADMIN_KEY = "admin-key"
CLIENT = {"Authorization": f"Bearer {CLIENT_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
ADMIN_ROUTES = [
    ("GET", "/admin/adapters"),
    ("POST", "/admin/adapters/load"),
    ("POST", "/admin/adapters/unload"),
    ("POST", "/admin/adapters/refresh"),
]


@pytest.fixture(scope="module")
def world(tiny_model_dir, tmp_path_factory):
    """A registry owning `tt` (promoted), an adapter root with good and bad adapter folders, and
    folders outside the root."""
    from tunewise.runtime.engine import Engine
    from tunewise.runtime.models import resolve

    tmp = tmp_path_factory.mktemp("admin")
    reg = Registry(tmp / "registry")
    reg.add(make_run(tiny_model_dir, tmp / "tt-run", seed=1), name="tt")
    reg.promote("tt", 1, force=True, reason="test")
    root = tmp / "adapters"
    good = make_run(tiny_model_dir, root / "good", seed=2)
    outside = make_run(tiny_model_dir, tmp / "outside", seed=3)
    engine = Engine(resolve(str(tiny_model_dir)), max_loaded_adapters=4, batch_size=4)
    return {
        "tmp": tmp,
        "registry": reg,
        "root": root,
        "good": good,
        "outside": outside,
        "engine": engine,
    }


def _copy_adapter(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file():
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _settings(world, **kw) -> ServeSettings:
    base = {"api_key": CLIENT_KEY, "admin_key": ADMIN_KEY, "adapter_roots": [world["root"]]}
    return ServeSettings(**{**base, **kw})


@pytest.fixture(scope="module")
def server(world):
    app = create_app(world["engine"], settings=_settings(world), registry=world["registry"])
    with running(app) as url:
        yield url


def load(url: str, name: str, path: Path | str, headers=ADMIN) -> httpx.Response:
    body = {"name": name, "path": str(path)}
    return httpx.post(f"{url}/admin/adapters/load", json=body, headers=headers, timeout=60)


def assert_openai_error(r: httpx.Response, status: int, code: str | None = None) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code is not None:
        assert err["code"] == code, err


def test_a_client_key_never_opens_admin_routes(server):
    for method, path in ADMIN_ROUTES:
        for headers in ({}, CLIENT, {"Authorization": "Bearer wrong"}):
            r = httpx.request(method, server + path, headers=headers, json={}, timeout=30)
            assert_openai_error(r, 401, "invalid_admin_key")
        r = httpx.request(method, server + path, headers=ADMIN, json={}, timeout=60)
        assert r.status_code in (200, 422), (method, path, r.text)
    # and the admin key is not a client key either: each opens its own routes
    r = httpx.get(f"{server}/v1/models", headers=ADMIN, timeout=30)
    assert_openai_error(r, 401, "invalid_api_key")
    assert httpx.get(f"{server}/v1/models", headers=CLIENT, timeout=30).status_code == 200


def test_admin_routes_are_off_without_an_admin_key(world):
    settings = _settings(world, admin_key=None)
    with running(create_app(world["engine"], settings=settings, registry=None)) as url:
        for method, path in ADMIN_ROUTES:
            for headers in ({}, CLIENT):
                r = httpx.request(method, url + path, headers=headers, json={}, timeout=30)
                assert_openai_error(r, 403, "admin_disabled")
        assert httpx.get(f"{url}/v1/models", headers=CLIENT, timeout=30).status_code == 200


def test_allow_admin_opens_admin_on_loopback_without_a_key(world):
    settings = _settings(world, admin_key=None, allow_admin=True)
    with running(create_app(world["engine"], settings=settings, registry=None)) as url:
        r = httpx.get(f"{url}/admin/adapters", timeout=30)
        assert r.status_code == 200, r.text
        assert_openai_error(httpx.get(f"{url}/v1/models", timeout=30), 401)  # clients: unchanged


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--host", "0.0.0.0", "--allow-admin"], "--allow-admin"),
        (["--api-key", "same", "--admin-key", "same"], "--admin-key"),
        (["--adapter-root", "/no/such/folder"], "--adapter-root"),
    ],
)
def test_serve_refuses_unsafe_admin_options_before_loading_anything(args, needle):
    from tunewise.cli import app

    r = CliRunner().invoke(app, ["serve", "--base", "/no/such/model", *args])
    assert r.exit_code == 2, r.output
    assert needle in r.output and "Traceback" not in r.output


def test_the_admin_key_comes_from_the_environment(world, monkeypatch):
    from tunewise.cli import app

    monkeypatch.setenv("TUNEWISE_ADMIN_KEY", "same")
    r = CliRunner().invoke(app, ["serve", "--base", "/no/such/model", "--api-key", "same"])
    assert r.exit_code == 2 and "--admin-key" in r.output


def test_load_refuses_a_name_the_registry_owns(server, world):
    before = httpx.post(
        f"{server}/v1/chat/completions",
        json={"model": "tt", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        headers=CLIENT,
        timeout=60,
    )
    assert before.json()["system_fingerprint"] == "tt:1"
    for name in ("tt", "base"):
        assert_openai_error(load(server, name, world["good"]), 409, "name_taken")
    after = httpx.post(
        f"{server}/v1/chat/completions",
        json={"model": "tt", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        headers=CLIENT,
        timeout=60,
    )
    assert after.json()["system_fingerprint"] == "tt:1"  # still the registry's version
    assert "tt" not in world["engine"].adapters()


def test_load_takes_a_run_directory_under_an_adapter_root(server, world):
    r = load(server, "good", world["good"])
    assert r.status_code == 200, r.text
    assert r.json()["loaded"] == "good" and "good" in world["engine"].adapters()
    ids = [m["id"] for m in httpx.get(f"{server}/v1/models", headers=CLIENT).json()["data"]]
    assert "good" in ids


def test_load_refuses_paths_outside_the_roots_even_through_symlinks(server, world):
    root, outside = world["root"], world["outside"]
    link = root / "link-to-outside"
    link.symlink_to(outside, target_is_directory=True)
    dotdot = root / ".." / "outside"
    for path in (outside, link, dotdot, "/", "/etc"):
        assert_openai_error(load(server, "x", path), 403, "outside_adapter_roots")
    # a folder under the root whose weights file is a link to a file outside it
    mixed = _copy_adapter(world["good"], root / "mixed")
    (mixed / "adapter_model.safetensors").unlink()
    (mixed / "adapter_model.safetensors").symlink_to(outside / "adapter_model.safetensors")
    assert_openai_error(load(server, "x", mixed), 403, "outside_adapter_roots")
    assert "x" not in world["engine"].adapters()


@pytest.mark.parametrize("missing", ["run.json", "adapter_model.safetensors"])
def test_load_needs_run_json_and_safetensors(server, world, missing):
    folder = _copy_adapter(world["good"], world["root"] / f"no-{missing}")
    (folder / missing).unlink()
    r = load(server, "x", folder)
    assert_openai_error(r, 422, "not_a_run")
    assert missing in r.json()["error"]["message"]


def test_load_with_no_adapter_root_is_refused(world):
    settings = _settings(world, adapter_roots=[])
    with running(create_app(world["engine"], settings=settings, registry=None)) as url:
        assert_openai_error(load(url, "good", world["good"]), 403, "path_loading_disabled")
        # loading by registry spec does not read paths: still allowed (here: no registry, 404)
        r = httpx.post(f"{url}/admin/adapters/load", json={"model": "tt"}, headers=ADMIN)
        assert_openai_error(r, 404, "model_not_found")


def test_garbage_or_symlinked_weights_are_503_not_500(server, world):
    root = world["root"]
    garbage = _copy_adapter(world["good"], root / "garbage")
    (garbage / "adapter_model.safetensors").write_bytes(os.urandom(4096))
    text = _copy_adapter(world["good"], root / "text")
    (text / "adapter_model.safetensors").unlink()
    (text / "adapter_model.safetensors").symlink_to(text / "run.json")
    header = _copy_adapter(world["good"], root / "huge-header")
    (header / "adapter_model.safetensors").write_bytes((10**12).to_bytes(8, "little") + b"{}")
    for folder in (garbage, text, header):
        r = load(server, "bad", folder)
        assert_openai_error(r, 503, "corrupted_adapter")
        assert r.json()["error"]["type"] == "server_error"
        assert "adapter_model.safetensors" in r.json()["error"]["message"]
    assert "bad" not in world["engine"].adapters()
    assert httpx.get(f"{server}/health").status_code == 200


def test_models_never_lists_a_name_twice(server, world, tiny_model_dir):
    assert load(server, "later", world["good"]).status_code == 200
    # the registry gets the same name after the adapter was loaded by path
    world["registry"].add(make_run(tiny_model_dir, world["tmp"] / "later-run"), name="later")
    ids = [m["id"] for m in httpx.get(f"{server}/v1/models", headers=CLIENT).json()["data"]]
    assert len(ids) == len(set(ids)), ids
    assert "later" in ids and "tt" in ids and "tt@production" in ids


def test_registry_version_with_garbage_weights_is_503_for_clients(world, tiny_model_dir):
    """A version registered with damaged weights (its hashes match: the damage came first)."""
    run = make_run(tiny_model_dir, world["tmp"] / "damaged-run", seed=5)
    (run / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    world["registry"].add(run, name="damaged")
    app = create_app(world["engine"], settings=_settings(world), registry=world["registry"])
    with running(app) as url:
        body = {"model": "damaged", "messages": [{"role": "user", "content": "hi"}]}
        r = httpx.post(f"{url}/v1/chat/completions", json=body, headers=CLIENT, timeout=60)
        assert_openai_error(r, 503, "corrupted_adapter")
        assert "damaged" not in json.dumps(world["engine"].loaded_adapters())
