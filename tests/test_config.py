"""shipml.yaml validation: unknown keys and wrong types name the key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipml.config import load_config, parse_config
from shipml.errors import ConfigError

BASE = {"name": "churn", "data": {"path": "d.csv"}, "target": "y"}


def _err(raw: object) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, Path("shipml.yaml"))
    return info.value.message


def test_minimal_config_gets_defaults() -> None:
    config = parse_config(dict(BASE), Path("shipml.yaml"))
    assert config.split.test_size == 0.2 and config.split.seed == 42
    assert config.training.models == "auto" and config.training.cv == 5
    assert config.tracking_uri is None


def test_unknown_nested_key_names_the_path() -> None:
    assert "unknown key 'features.derivd'" in _err({**BASE, "features": {"derivd": {}}})


def test_wrong_type_names_path_and_value() -> None:
    message = _err({**BASE, "training": {"time_budget_s": "long"}})
    assert "training.time_budget_s" in message and "'long'" in message


def test_missing_required_key() -> None:
    raw = dict(BASE)
    del raw["target"]
    assert "required key 'target'" in _err(raw)


def test_data_source_needs_one_kind() -> None:
    assert "not both" in _err({**BASE, "data": {"path": "a.csv", "url": "sqlite://", "query": "x"}})
    assert "query" in _err({**BASE, "data": {"url": "sqlite:///x.db"}})


def test_metric_must_fit_task() -> None:
    message = _err({**BASE, "task": "regression", "training": {"metric": "roc_auc"}})
    assert "does not fit task 'regression'" in message
    assert "unknown metric 'auc'" in _err({**BASE, "training": {"metric": "auc"}})


def test_not_a_mapping_and_missing_file(tmp_path: Path) -> None:
    assert "expected a mapping" in _err(["a", "b"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_logged_config_has_no_passwords() -> None:
    from shipml.training.train import redact_secrets

    raw = {**BASE, "data": {"url": "postgresql://ann:s3cret@db.example/prod", "query": "SELECT 1"}}
    config = parse_config(raw, Path("shipml.yaml"))
    text = "data:\n  url: postgresql://ann:s3cret@db.example/prod\n  query: SELECT 1\n"
    redacted = redact_secrets(text, config)
    assert "s3cret" not in redacted and "ann" in redacted and "db.example/prod" in redacted


def test_a_key_given_twice_is_refused_naming_it_and_its_lines(tmp_path: Path) -> None:
    path = tmp_path / "shipml.yaml"
    path.write_text(
        "name: churn\ndata: {path: d.csv}\ntarget: y\n"
        "serving:\n  max_body_bytes: 2048\n  log_predictions: true\n  max_body_bytes: 4096\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "key 'max_body_bytes' is given twice: at line 5 and line 7" in info.value.message
    # A merge (<<) brings keys in that the mapping may override, as YAML has it.
    path.write_text(
        "name: churn\ndata: {path: d.csv}\ntarget: y\ntask: classification\n"
        "monitoring:\n  <<: {window: 50}\n  window: 60\n"
    )
    assert load_config(path).monitoring.window == 60


def test_serving_guards_have_defaults_and_refuse_nonsense() -> None:
    serving = parse_config(dict(BASE), Path("shipml.yaml")).serving
    assert serving.max_string_length == 1000
    assert serving.input_bounds.enabled and serving.input_bounds.margin == 10.0
    assert serving.rate_limits.predict is None
    feedback = serving.rate_limits.feedback
    assert feedback is not None and (feedback.per_second, feedback.bucket) == (50.0, 200)
    assert serving.log_retention_days == 30 and serving.log_max_bytes == 1024**3
    assert serving.predict_token is None and serving.feedback_token is None
    for field in ("max_string_length", "input_bounds", "log_rotate_bytes", "rate_limits"):
        assert type(serving).model_fields[field].description
    bounds = {"input_bounds": {"columns": {"amount": {"min": 5, "max": 1}}}}
    assert "min (5.0) is above max (1.0)" in _err({**BASE, "serving": bounds})
    limits = {"rate_limits": {"feedback": {"per_second": 0}}}
    assert "serving.rate_limits.feedback.per_second" in _err({**BASE, "serving": limits})
