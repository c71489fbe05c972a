"""Prompts with a target continuation, and grounded QA with cited passages (for ``attribution``).

Two shipped sets, written for mechbench and deterministic:

* ``data/attribution_prompts.jsonl``: ten short prompts ``{id, prompt, target, foil}`` (a fact, a
  name to repeat, agreement, ...); ``foil`` is the alternative a logit difference compares with.
* ``data/grounding.jsonl``: twelve items ``{id, passages, question, answer, cited}``: three
  one-sentence knowledge passages about invented entities (so the answer cannot come from
  pretraining), a question, and an answer that occurs verbatim in passage ``cited`` and in no
  other; the cited passage rotates over positions 0, 1, 2 so position is not a confound.

A grounded item becomes the prompt ``Passage 1: p1 \\n Passage 2: p2 ... \\n\\nQuestion: q\\nAnswer:``
with the answer as target; :func:`grounding_prompt` returns the character span of each passage's
text, which the analysis maps to token positions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mechbench.errors import DatasetError
from mechbench.tasks.files import read_source

BUILTIN = "builtin"


@dataclass(frozen=True)
class TargetPrompt:
    """A prompt and the continuation whose (log-)probability is attributed; ``foil`` for logit differences."""

    id: str
    prompt: str
    target: str | None = None
    foil: str | None = None


@dataclass(frozen=True)
class GroundedItem:
    """Knowledge passages, a question, and an answer drawn from passage ``cited``."""

    id: str
    passages: tuple[str, ...]
    question: str
    answer: str
    cited: int


def _records(source: str, data_file: str, what: str, fields: str) -> list[tuple[int, dict[str, Any], str]]:
    text, path = read_source(source, BUILTIN, data_file, f"{what} file {source!r} not found or not .jsonl; give "
                             f"'builtin' or an existing .jsonl file of {{{fields}}} lines", suffixes=(".jsonl",))
    where = f"the built-in {what} set" if path is None else str(path)
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            raise DatasetError(f"{where} line {number} is not a JSON object of {{{fields}}}")
        record["id"] = str(record.get("id", f"{what}-{len(records)}"))
        records.append((number, record, where))
    if not records:
        raise DatasetError(f"{where} is empty; give at least one {{{fields}}} line")
    if len({r["id"] for _, r, _ in records}) != len(records):
        raise DatasetError(f"{where} has duplicate ids; give every line a unique 'id'")
    return records


def _text(record: dict[str, Any], field: str, number: int, where: str, required: bool = True) -> str | None:
    value = record.get(field)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise DatasetError(f"{where} line {number}: '{field}' must be a non-empty string")
    return value


def load_target_prompts(source: str = BUILTIN, limit: int | None = None) -> list[TargetPrompt]:
    """Prompts from ``"builtin"`` or a ``.jsonl`` of ``{id?, prompt, target?, foil?}`` lines (first ``limit``)."""
    prompts = []
    for number, record, where in _records(source, "attribution_prompts.jsonl", "prompt", "id, prompt, target, foil"):
        prompts.append(TargetPrompt(record["id"], _text(record, "prompt", number, where),
                                    _text(record, "target", number, where, required=False),
                                    _text(record, "foil", number, where, required=False)))
    return prompts[:limit]


def load_grounded(source: str = BUILTIN, limit: int | None = None) -> list[GroundedItem]:
    """Grounded QA items from ``"builtin"`` or a ``.jsonl`` of ``{id?, passages, question, answer, cited}``."""
    items = []
    fields = "id, passages, question, answer, cited"
    for number, record, where in _records(source, "grounding.jsonl", "grounding", fields):
        passages = record.get("passages")
        if (not isinstance(passages, list) or len(passages) < 2
                or not all(isinstance(p, str) and p.strip() for p in passages)):
            raise DatasetError(f"{where} line {number}: 'passages' must be a list of at least two non-empty strings")
        cited = record.get("cited")
        if not isinstance(cited, int) or not 0 <= cited < len(passages):
            raise DatasetError(f"{where} line {number}: 'cited' must be the index (0..{len(passages) - 1}) of the "
                               "passage the answer comes from")
        items.append(GroundedItem(record["id"], tuple(passages), _text(record, "question", number, where),
                                  _text(record, "answer", number, where), cited))
    return items[:limit]


def grounding_prompt(item: GroundedItem) -> tuple[str, list[tuple[int, int]]]:
    """The prompt text of a grounded item and the character span ``[start, end)`` of each passage in it."""
    text, spans = "", []
    for index, passage in enumerate(item.passages, start=1):
        text += f"Passage {index}: "
        spans.append((len(text), len(text) + len(passage)))
        text += passage + "\n"
    return text + f"\nQuestion: {item.question}\nAnswer:", spans
