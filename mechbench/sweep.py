"""Sweeps: the ``sweep`` block of a config expanded into independent shards with stable ids.

A sweep is the product models x analyses x context lengths x task shards. Each cell is one
:class:`Shard`: one model, one analysis with its final options, and the slice ``index`` of
``count`` of the analysis's texts. Expansion is a pure function of the config, so the same config
always gives the same shards, ids and (whichever executor runs them) the same table. The shard id
is readable and stable: ``<model>.<analysis>[.L<length>].s<index>of<count>-<hash>``, the hash
(12 hex digits of SHA-256) covering the model, the analysis, its options and the slice.

Resource hints (:func:`resource_hints`) turn a model's parameter count and a shard's context
length into the CPUs, GPUs and memory a Ray task asks for.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mechbench.analyses import ANALYSES
from mechbench.config import ResourceRequest, RunConfig, StrictModel, SweepConfig, format_validation_error
from mechbench.errors import ConfigError
from mechbench.tasks.texts import load_texts

#: Parameter counts of the registry models (the name of any other model is read for a size such as ``7B``).
KNOWN_PARAMETERS: dict[str, float] = {
    "smollm2-135m": 135e6, "gemma3-270m": 270e6, "minilm-l6": 22e6, "whisper-tiny-en": 39e6,
    "toy-planted": 1e4, "toy-induction": 2e5,
}
#: Parameters assumed for a model whose size neither the registry nor its name tells.
DEFAULT_PARAMETERS = 1e9
#: Context length assumed for a shard whose analysis has no context-length option in the sweep.
DEFAULT_CONTEXT_LENGTH = 512
_SIZE_IN_NAME = re.compile(r"(?<![0-9.])(\d+(?:\.\d+)?)([mMbB])(?![A-Za-z])")
_BYTES_PER_PARAMETER = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2}
_GIB = 2**30


@dataclass(frozen=True)
class Shard:
    """One independent unit of a sweep: a model, an analysis with its options, a slice of its texts."""

    shard_id: str
    model: str
    analysis: str
    options: dict[str, Any]
    index: int
    count: int
    context_length: int | None


@dataclass(frozen=True)
class ResourceHints:
    """What one shard asks Ray for."""

    num_cpus: float
    num_gpus: float
    memory: int  # bytes

    def ray_options(self) -> dict[str, Any]:
        """As keyword arguments of ``ray.remote(...).options``."""
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus, "memory": self.memory}


def _slug(text: str, limit: int = 40) -> str:
    """A path-safe, readable piece of a shard id: the last path component, other characters as ``-``."""
    name = Path(text.rstrip("/")).name or text
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")[:limit] or "model"


def shard_id(model: str, analysis: str, options: dict[str, Any], index: int, count: int,
             context_length: int | None) -> str:
    """The stable id of a shard (see the module docstring)."""
    identity = json.dumps({"model": model, "analysis": analysis, "options": options, "index": index, "count": count},
                          sort_keys=True, default=str)
    digest = hashlib.sha256(identity.encode()).hexdigest()[:12]
    length = "" if context_length is None else f".L{context_length}"
    return f"{_slug(model)}.{analysis}{length}.s{index}of{count}-{digest}"


def _validated(analysis: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` validated against the analysis's schema (a context length may break a bound)."""
    try:
        return ANALYSES[analysis].config_model.model_validate(options).model_dump(mode="json")
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "(sweep)", prefix=f"analyses.{analysis}")) from None


def check_sweep(sweep: SweepConfig, analyses: Sequence[str]) -> None:
    """Refuse shards or context lengths for analyses that are not run or cannot be split that way."""
    sharded = tuple(name for name, spec in ANALYSES.items() if spec.text_sharded)
    with_lengths = tuple(name for name, spec in ANALYSES.items() if spec.context_length_options is not None)
    for field, supported in (("shards", sharded), ("context_lengths", with_lengths)):
        for name in getattr(sweep, field):
            if name not in analyses:
                raise ConfigError(f"sweep.{field}.{name}: analysis {name!r} is not run in this sweep "
                                  f"(analyses: {', '.join(analyses)}); remove the entry or add the analysis")
            if name not in supported:
                raise ConfigError(f"sweep.{field}.{name}: {name} cannot be split by {field.replace('_', ' ')}; "
                                  f"analyses that can: {', '.join(supported)}")


def expand_sweep(config: RunConfig, analyses: dict[str, StrictModel]) -> list[Shard]:
    """Every shard of the sweep, in a fixed order (model, analysis, length, index); a pure function."""
    sweep = config.sweep or SweepConfig(models=[config.model])
    check_sweep(sweep, list(analyses))
    shards = []
    for model in sweep.models:
        for analysis, options in analyses.items():
            count = sweep.shards.get(analysis, 1)
            lengths: list[int | None] = [*sweep.context_lengths.get(analysis, [])] or [None]
            for length in lengths:
                final = options.model_dump(mode="json")
                if length is not None:
                    length_options = ANALYSES[analysis].context_length_options
                    assert length_options is not None  # check_sweep refused lengths for analyses without
                    final = _validated(analysis, {**final, **length_options(length)})
                shards += [Shard(shard_id(model, analysis, final, index, count, length), model, analysis, final,
                                 index, count, length) for index in range(count)]
    ids = [s.shard_id for s in shards]
    if len(set(ids)) != len(ids):
        raise ConfigError("sweep.models names a model twice (two shards would share an id); list each model once")
    return shards


def check_shard_datasets(shards: Sequence[Shard]) -> None:
    """Fail before any model is loaded when an analysis has fewer texts than task shards."""
    for shard in shards:
        if shard.count > 1 and shard.index == 0:
            ids, _ = load_texts(shard.options["texts"], shard.options.get("limit"))
            if len(ids) < shard.count:
                raise ConfigError(f"sweep.shards.{shard.analysis}: {shard.count} shards, but texts "
                                  f"{shard.options['texts']!r} has only {len(ids)}; lower the number of shards")


def shard_slice(n_items: int, index: int, count: int) -> slice:
    """Contiguous slice ``index`` of ``count`` near-equal parts of ``n_items`` (earlier parts one longer)."""
    size, extra = divmod(n_items, count)
    start = index * size + min(index, extra)
    return slice(start, start + size + (index < extra))


def parameter_count(model: str) -> float:
    """Parameters of ``model``: the registry's count, else a size in its name (``Llama-2-7b``), else 1e9."""
    if model in KNOWN_PARAMETERS:
        return KNOWN_PARAMETERS[model]
    sizes = _SIZE_IN_NAME.findall(Path(model.rstrip("/")).name)
    if sizes:
        number, unit = sizes[-1]
        return float(number) * (1e9 if unit.lower() == "b" else 1e6)
    return DEFAULT_PARAMETERS


def resource_hints(parameters: float, context_length: int, dtype: str = "float32", device: str = "cpu",
                   n_heads: int = 32) -> ResourceHints:
    """Resources of one shard: ``memory = 1 GiB + 2 P b + 4 H L^2`` bytes, rounded up to a GiB.

    ``P`` parameters of ``b`` bytes each (weights, plus as much again for gradients or copies during
    loading), ``H`` heads of one layer's float32 attention pattern over ``L`` tokens (the recorder
    holds one layer at a time), and 1 GiB for the interpreter, torch and the tokenizer. One CPU core;
    one GPU on a ``cuda`` device, else none.
    """
    weights = 2 * parameters * _BYTES_PER_PARAMETER[dtype]
    patterns = 4 * n_heads * context_length**2
    memory = math.ceil((_GIB + weights + patterns) / _GIB) * _GIB
    return ResourceHints(num_cpus=1.0, num_gpus=1.0 if device.startswith("cuda") else 0.0, memory=memory)


def shard_resources(shard: Shard, config: RunConfig) -> ResourceHints:
    """The hints of :func:`resource_hints` for a shard, with the config's ``sweep.resources`` overrides."""
    hints = resource_hints(parameter_count(shard.model), shard.context_length or DEFAULT_CONTEXT_LENGTH,
                           config.dtype, config.device)
    given = config.sweep.resources if config.sweep else ResourceRequest()
    return ResourceHints(num_cpus=given.num_cpus if given.num_cpus is not None else hints.num_cpus,
                         num_gpus=given.num_gpus if given.num_gpus is not None else hints.num_gpus,
                         memory=int(given.memory_gb * _GIB) if given.memory_gb is not None else hints.memory)
