"""The README's config reference and the config `shipml init` writes keep up with the config
model: every key there, and every example valid."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from shipml.config import DataConfig, ProjectConfig, TrainingConfig, parse_config
from shipml.data.infer import infer_schema
from shipml.scaffold import render_config

README = Path(__file__).resolve().parents[1] / "README.md"


def _reference_block() -> str:
    text = README.read_text()
    section = text.split("## Config reference", 1)[1]
    return section.split("```yaml", 1)[1].split("```", 1)[0]


def _commented_keys(block: str) -> set[str]:
    """Keys shown only as comments (`# url: ...`): alternatives to a key set above them."""
    return set(re.findall(r"^\s*#\s*([a-z_]+):", block, flags=re.MULTILINE))


def _section_model(annotation: typing.Any) -> type[BaseModel] | None:
    if typing.get_origin(annotation) is dict:  # free-form keys (monitoring.columns)
        return None
    for candidate in typing.get_args(annotation) or (annotation,):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _missing(model: type[BaseModel], raw: dict, commented: set[str], prefix: str = "") -> list[str]:
    missing = []
    for name, field in model.model_fields.items():
        if name not in raw:
            if name not in commented:
                missing.append(prefix + name)
            continue
        section = _section_model(field.annotation)
        if section is not None and isinstance(raw[name], dict):
            missing += _missing(section, raw[name], commented, f"{prefix}{name}.")
    return missing


def test_the_readme_config_reference_names_every_key_and_is_valid() -> None:
    block = _reference_block()
    raw = yaml.safe_load(block)
    assert _missing(ProjectConfig, raw, _commented_keys(block)) == []
    config = parse_config(raw, README)
    # The values shown are the defaults, but for the example's own names and lists.
    assert config.training == TrainingConfig(metric="roc_auc")
    assert config.deploy == type(config.deploy)()
    assert config.serving == type(config.serving)()
    assert config.monitoring == type(config.monitoring)()


@pytest.mark.parametrize("task_frame", ["classification", "regression"])
def test_the_config_init_writes_is_valid_and_shows_every_training_key(task_frame: str) -> None:
    import pandas as pd

    frame = pd.DataFrame(
        {
            "x": [float(i % 17) for i in range(200)],
            "plan": ["basic", "pro"] * 100,
            "y": (["yes", "no"] * 100)
            if task_frame == "classification"
            else [i * 0.5 for i in range(200)],
        }
    )
    schema = infer_schema(frame, "y")
    metric = "roc_auc" if task_frame == "classification" else "rmse"
    text = render_config(
        "demo", DataConfig(path="data.csv"), "data.csv", len(frame), schema, metric
    )
    config = parse_config(yaml.safe_load(text), Path("shipml.yaml"))
    assert config.target == "y"
    training = text.split("\ntraining:\n", 1)[1].split("\n\n", 1)[0]
    shown = set(re.findall(r"^\s*#?\s*([a-z_]+):", training, flags=re.MULTILINE))
    assert set(TrainingConfig.model_fields) - shown == set()
