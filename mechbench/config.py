"""Experiment configs: YAML files validated by pydantic, with one-line errors naming the field.

A config names the model, the seed, the store and, under ``analyses``, one block per analysis
whose schema is the analysis's own pydantic model (see :mod:`mechbench.analyses`). YAML is read
with ``yaml.safe_load`` only: a config can never execute code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mechbench.errors import ConfigError


class StrictModel(BaseModel):
    """Base for every config block: unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class RunConfig(StrictModel):
    """Top level of a config file."""

    model: str = Field("smollm2-135m", description="registry name, Hugging Face name or local directory")
    seed: int = Field(0, description="seed for every random choice (datasets, sampling)")
    store: str = Field("mechbench-results", description="result store directory")
    device: str = Field("cpu", description="torch device")
    dtype: Literal["float32", "float64", "bfloat16", "float16"] = "float32"
    allow_pickle_weights: bool = Field(False, description="load a model whose weights are only pickle files "
                                       "(pytorch_model.bin, *.pt): only for files you trust")
    analyses: dict[str, Any] = Field(default_factory=dict, description="analysis name -> its options")

    @field_validator("analyses", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value


def format_validation_error(error: ValidationError, where: str, prefix: str = "") -> str:
    """One line: every failing field path (after ``prefix``) with pydantic's reason and the input."""
    parts = []
    for item in error.errors():
        field = prefix + (".".join(str(p) for p in item["loc"]) or "(top level)")
        got = item.get("input")
        shown = "" if item["type"] == "missing" else f" (got {got!r})"
        parts.append(f"{field}: {item['msg']}{shown}")
    return f"invalid config {where}: " + "; ".join(parts)


def parse_config(data: Any, where: str = "<dict>") -> tuple[RunConfig, dict[str, StrictModel]]:
    """Validate a config mapping: the top level and each analysis block against its own schema."""
    from mechbench.analyses import ANALYSES, unknown_analysis_message

    if not isinstance(data, dict):
        raise ConfigError(f"invalid config {where}: the top level must be a mapping of keys "
                          f"({', '.join(RunConfig.model_fields)}), got {type(data).__name__}")
    try:
        run = RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where)) from None
    blocks: dict[str, StrictModel] = {}
    for name, options in run.analyses.items():
        if name not in ANALYSES:
            raise ConfigError(f"invalid config {where}: analyses.{name}: {unknown_analysis_message(name)}")
        try:
            blocks[name] = ANALYSES[name].config_model.model_validate(options or {})
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, where, prefix=f"analyses.{name}.")) from None
    return run, blocks


def load_config(path: str | Path) -> tuple[RunConfig, dict[str, StrictModel]]:
    """Read and validate a YAML config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; pass --config with an existing YAML file "
                          "(see configs/default.yaml)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config {path} is not valid YAML{at}: {problem}; fix the syntax") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config {path} is not UTF-8 text; save it as UTF-8 YAML") from None
    return parse_config({} if data is None else data, str(path))
