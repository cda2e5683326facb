"""Numbers in project.yaml (#26 finding 11): NaN, inf and absurdly large values are refused when
the file loads, in one line naming the field, never later as an OverflowError after the model
has loaded or silently as a learning rate of inf."""

from __future__ import annotations

import typing

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from typer.testing import CliRunner

from tunewise.config import MAX_MAGNITUDE, ProjectConfig, load_project
from tunewise.errors import UserError


def _number_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, type]]:
    """Every int or float field of ``model`` and its sections, as (dotted path, type); lists and
    mappings of numbers (gate.guards) are tested apart."""
    found = []
    for name, info in model.model_fields.items():
        if info.exclude or typing.get_origin(info.annotation) in (list, dict):
            continue
        kinds = typing.get_args(info.annotation) or (info.annotation,)
        section = next((k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)), None)
        if section is not None:
            found += _number_fields(section, f"{prefix}{name}.")
            continue
        for kind in (float, int):
            if kind in kinds:
                found.append((f"{prefix}{name}", kind))
                break
    return found


NUMBER_FIELDS = _number_fields(ProjectConfig)
assert {"train.epochs", "train.lr", "train.weight_decay", "gate.cost.gpu_hours_per_day"} <= {
    p for p, _ in NUMBER_FIELDS
}
# A section whose presence needs other fields: a value for one of its numbers comes with those.
REQUIRED_BESIDE = {
    "gate.cost": {
        "requests_per_day": 1,
        "tokens_per_request": 1,
        "api_price_per_mtok": 1,
        "gpu_price_per_hour": 1,
    }
}


def _project(tmp_path, field: str, value) -> list[str]:
    """A valid project.yaml in ``tmp_path``, and the --set override that puts ``value`` in."""
    (tmp_path / "project.yaml").write_text(
        yaml.safe_dump({"name": "nums", "data": {"train": "train.jsonl"}})
    )
    section, _, key = field.rpartition(".")
    sets = [f"{section}.{k}={v}" for k, v in REQUIRED_BESIDE.get(section, {}).items() if k != key]
    return [*sets, f"{field}={value}"]


def _refused(tmp_path, field: str, text: str) -> str:
    with pytest.raises(UserError) as err:
        load_project(tmp_path / "project.yaml", _project(tmp_path, field, text))
    message = str(err.value)
    assert field in message and "\n" not in message, message
    return message


BAD_TEXT = st.sampled_from([".inf", "-.inf", ".nan", "1e400", "-1e400", "inf", "nan"])


FIXTURE_OK = [HealthCheck.function_scoped_fixture]  # one project.yaml, rewritten per example


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURE_OK)
@given(spec=st.sampled_from(NUMBER_FIELDS), text=BAD_TEXT)
def test_non_finite_numbers_are_refused_naming_the_field(tmp_path, spec, text):
    _refused(tmp_path, spec[0], text)


HUGE = st.one_of(
    st.integers(min_value=MAX_MAGNITUDE + 1, max_value=10**600),
    st.integers(min_value=-(10**600), max_value=-MAX_MAGNITUDE - 1),
    st.floats(min_value=MAX_MAGNITUDE * 1.001, max_value=1e308),
    st.floats(min_value=-1e308, max_value=-MAX_MAGNITUDE * 1.001),
)


@settings(max_examples=80, deadline=None, suppress_health_check=FIXTURE_OK)
@given(spec=st.sampled_from(NUMBER_FIELDS), value=HUGE)
def test_huge_numbers_are_refused_naming_the_field(tmp_path, spec, value):
    field, kind = spec
    if kind is int and isinstance(value, float):
        value = int(value)
    _refused(tmp_path, field, repr(value) if isinstance(value, float) else str(value))


def test_a_guard_of_inf_is_refused_and_ordinary_numbers_still_load(tmp_path):
    message = _refused(tmp_path, "gate.guards", "{accuracy: .inf}")
    assert "finite" in message
    sets = [*_project(tmp_path, "train.lr", "1e-4"), "train.epochs=3", "data.split.seed=42"]
    cfg = load_project(tmp_path / "project.yaml", sets)
    assert cfg.train.lr == 1e-4 and cfg.train.epochs == 3 and cfg.data.split.seed == 42


def test_set_epochs_1e400_stops_the_cli_in_one_line(tmp_path):
    from tunewise.cli import app

    _project(tmp_path, "train.epochs", "1")
    r = CliRunner().invoke(app, ["run", str(tmp_path), "--set", "train.epochs=1e400", "--dry-run"])
    assert r.exit_code == 2, r.output
    assert "train.epochs" in r.output and "finite" in r.output
    assert "Traceback" not in r.output and not isinstance(r.exception, OverflowError)
