"""Experiment configs: YAML files validated by pydantic, with one-line errors naming the field.

A config names the model, the seed, the store and, under ``analyses``, one block per analysis
whose schema is the analysis's own pydantic model (see :mod:`mechbench.analyses`). YAML is read
with PyYAML's safe loader only: a config can never execute code, and a tag such as
``!!python/object`` is refused. Whatever a file holds, loading it gives a config or a one-line
ConfigError, never another exception.
"""

from __future__ import annotations

import re
import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, ValidationError, field_validator

from mechbench.errors import ConfigError, has_control_characters, one_line

#: A seed: any integer ``torch.manual_seed`` takes, so a config cannot pass validation and fail after the model load.
Seed = Annotated[int, Field(ge=-(2**63), lt=2**64)]


class StrictModel(BaseModel):
    """Base for every config block: unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ResourceRequest(StrictModel):
    """Ray resources of one shard; each field given here replaces the estimate of :mod:`mechbench.sweep`."""

    num_cpus: float | None = Field(None, gt=0, description="CPU cores per shard")
    num_gpus: float | None = Field(None, ge=0, description="GPUs per shard (fractions share a GPU)")
    memory_gb: float | None = Field(None, gt=0, description="memory per shard in GiB (Ray schedules on it)")


class SweepConfig(StrictModel):
    """The ``sweep`` block: models x analyses x task shards x context lengths, each cell one shard."""

    models: list[str] = Field(min_length=1, description="registry names, Hugging Face names or directories")
    shards: dict[str, PositiveInt] = Field(default_factory=dict, description="analysis -> number of task "
                                           "shards its texts are split into (default 1)")
    context_lengths: dict[str, list[PositiveInt]] = Field(
        default_factory=dict, description="analysis -> context lengths in tokens, one shard set per length")
    resources: ResourceRequest = Field(default_factory=ResourceRequest, description="per-shard resource "
                                       "overrides (default: estimated from model size and context length)")
    max_retries: NonNegativeInt = Field(3, description="times Ray reruns a shard whose worker died")


class RunConfig(StrictModel):
    """Top level of a config file."""

    model: str = Field("smollm2-135m", description="registry name, Hugging Face name or local directory")
    seed: Seed = Field(0, description="seed for every random choice (datasets, sampling), -2**63 .. 2**64-1")
    store: str = Field("mechbench-results", description="result store directory, or an fsspec URL (file://, "
                       "s3://, memory://) that sweeps write to")
    device: str = Field("cpu", description="torch device")
    dtype: Literal["float32", "float64", "bfloat16", "float16"] = "float32"
    allow_pickle_weights: bool = Field(False, description="load a model whose weights are only pickle files "
                                       "(pytorch_model.bin, *.pt): only for files you trust")
    analyses: dict[str, Any] = Field(default_factory=dict, description="analysis name -> its options")
    sweep: SweepConfig | None = Field(None, description="run the analyses over several models, task shards and "
                                      "context lengths (see docs/sweeps.md)")

    @field_validator("analyses", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value


class _ShortRepr(reprlib.Repr):
    """``repr`` cut to a glance: long strings and containers elided, deep nesting and huge integers summarised."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxdict, self.maxlist, self.maxstring, self.maxother = 2, 4, 4, 60, 60

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 200:  # repr() of a number with over 4300 digits even raises
            return f"<a {x.bit_length()}-bit integer>"
        return super().repr_int(x, level)


def _shown(value: Any, limit: int = 120) -> str:
    """A short, one-line ``repr`` of a config value for an error message (at most ``limit`` characters)."""
    text = one_line(_ShortRepr().repr(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_validation_error(error: ValidationError, where: str, prefix: str = "") -> str:
    """One line: every failing field path (under ``prefix``, e.g. ``analyses.sinks``) with pydantic's reason
    and the input."""
    parts = []
    for item in error.errors():
        path = [prefix] if prefix else []
        path += [p if isinstance(p, str) else _shown(p) for p in item["loc"]]
        field = ".".join(path) or "(top level)"
        got = "" if item["type"] == "missing" else f" (got {_shown(item.get('input'))})"
        parts.append(f"{field}: {item['msg']}{got}")
    return one_line(f"invalid config {where}: " + "; ".join(parts))


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
        canonical = ANALYSES.canonical(name)
        if canonical in blocks:
            raise ConfigError(f"invalid config {where}: analyses.{name}: {name!r} and {canonical!r} name the same "
                              "analysis; keep one block")
        try:
            blocks[canonical] = ANALYSES[name].config_model.model_validate({} if options is None else options)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, where, prefix=f"analyses.{name}")) from None
    return run, blocks


def with_overrides(run: RunConfig, overrides: dict[str, Any], where: str = "(command-line options)") -> RunConfig:
    """``run`` with some top-level values replaced (``--model``, ``--seed``, ...), validated like a config file."""
    try:
        return RunConfig.model_validate({**run.model_dump(), **overrides})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where)) from None


def load_config(path: str | Path) -> tuple[RunConfig, dict[str, StrictModel]]:
    """Read and validate a YAML config file."""
    if has_control_characters(path):
        raise ConfigError(f"the config path {str(path)!r} holds a control character (NUL, newline, ...); rename "
                          "the file or pass --config with a plain path")
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; pass --config with an existing YAML file "
                          "(see configs/default.yaml)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config {path} is not UTF-8 text; save it as UTF-8 YAML") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config {path} ({one_line(exc.strerror or exc)}); make it a file you can "
                          "read") from None
    data = _parse_yaml(text, path)
    return parse_config({} if data is None else data, str(path))


_UNKNOWN_TAG = re.compile(r"could not determine a constructor for the tag '([^']*)'")


def _parse_yaml(text: str, path: Path) -> Any:
    """The one YAML document in ``text`` (None if empty); every failure is a one-line ConfigError naming the
    problem and the fix."""
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = one_line(getattr(exc, "problem", None) or str(exc).splitlines()[0])
        tag = _UNKNOWN_TAG.fullmatch(problem)
        if tag:
            name = tag.group(1).replace("tag:yaml.org,2002:", "!!")
            raise ConfigError(f"config {path} uses the YAML tag {name}{at}; configs are plain data (mappings, "
                              "lists, strings, numbers, booleans): remove the tag") from None
        raise ConfigError(f"config {path} is not valid YAML{at}: {problem}; fix the syntax") from None
    except RecursionError:
        raise ConfigError(f"config {path} is nested too deeply for the YAML reader; flatten it") from None
    except (ValueError, TypeError, KeyError, OverflowError) as exc:  # a tagged or huge scalar, e.g. `!!int x`
        reason = one_line(exc).split("; ")[0]  # what follows is advice for programmers (sys.set_int_max_...)
        raise ConfigError(f"config {path} has a value YAML cannot convert ({reason}); fix the value, or quote it "
                          "to make it a string") from None
    if len(documents) > 1:
        raise ConfigError(f"config {path} holds {len(documents)} YAML documents; a config is one document: remove "
                          "the `---` separators or split it into several files")
    return documents[0] if documents else None
