"""Config validation: good configs parse; bad ones give one line naming the field and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from mechbench.config import load_config, parse_config
from mechbench.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_validate(name):
    run, blocks = load_config(ROOT / "configs" / name)
    assert run.model and blocks


def test_default_config_values():
    run, blocks = load_config(ROOT / "configs" / "default.yaml")
    assert run.model == "smollm2-135m" and run.seed == 0
    assert blocks["sinks"].max_tokens == 64 and blocks["sinks"].epsilon == 0.3


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "expected"), [
    ("model: [unclosed", r"not valid YAML at line \d+, column \d+"),
    ("modle: smollm2-135m\n", r"modle: Extra inputs are not permitted"),
    ("dtype: float8\n", r"dtype: Input should be 'float32', 'float64', 'bfloat16' or 'float16' \(got 'float8'\)"),
    ("seed: many\n", r"seed: Input should be a valid integer"),
    ("analyses:\n  sinks:\n    epsilon: 3\n", r"analyses\.sinks\.epsilon: Input should be less than 1 \(got 3\)"),
    ("analyses:\n  sinks:\n    max_tokens: 0\n", r"analyses\.sinks\.max_tokens: Input should be greater than 0"),
    ("analyses:\n  sinks:\n    window: 3\n", r"analyses\.sinks\.window: Extra inputs are not permitted"),
    ("analyses:\n  sink:\n",
     r"unknown analysis 'sink'; available: attribution, circuits, head_roles, patterns, retrieval, sinks, speech, "
     r"tappa, waad_fai"),
    ("- a\n- b\n", r"top level must be a mapping"),
    ("!!python/object/apply:os.system ['echo pwned']\n",
     r"uses the YAML tag !!python/object/apply:os.system .*remove the tag"),
])
def test_bad_configs_give_one_line(tmp_path, text, expected):
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(write(tmp_path, text))
    assert "\n" not in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")


def test_parse_config_from_a_dict():
    run, blocks = parse_config({"model": "toy-planted", "analyses": {"sinks": {"max_tokens": 16}}})
    assert run.model == "toy-planted" and blocks["sinks"].max_tokens == 16
