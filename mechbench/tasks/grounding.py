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

from dataclasses import dataclass

from mechbench.errors import DatasetError
from mechbench.tasks.files import jsonl_records, text_field

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


def load_target_prompts(source: str = BUILTIN, limit: int | None = None) -> list[TargetPrompt]:
    """Prompts from ``"builtin"`` or a ``.jsonl`` of ``{id?, prompt, target?, foil?}`` lines (first ``limit``)."""
    prompts = []
    fields = "id, prompt, target, foil"
    for number, record, where in jsonl_records(source, BUILTIN, "attribution_prompts.jsonl", "prompt", fields):
        prompts.append(TargetPrompt(record["id"], text_field(record, "prompt", number, where),
                                    text_field(record, "target", number, where, required=False),
                                    text_field(record, "foil", number, where, required=False)))
    return prompts[:limit]


def load_grounded(source: str = BUILTIN, limit: int | None = None) -> list[GroundedItem]:
    """Grounded QA items from ``"builtin"`` or a ``.jsonl`` of ``{id?, passages, question, answer, cited}``."""
    items = []
    fields = "id, passages, question, answer, cited"
    for number, record, where in jsonl_records(source, BUILTIN, "grounding.jsonl", "grounding", fields):
        passages = record.get("passages")
        if (not isinstance(passages, list) or len(passages) < 2
                or not all(isinstance(p, str) and p.strip() for p in passages)):
            raise DatasetError(f"{where} line {number}: 'passages' must be a list of at least two non-empty strings")
        cited = record.get("cited")
        if not isinstance(cited, int) or not 0 <= cited < len(passages):
            raise DatasetError(f"{where} line {number}: 'cited' must be the index (0..{len(passages) - 1}) of the "
                               "passage the answer comes from")
        items.append(GroundedItem(record["id"], tuple(passages), text_field(record, "question", number, where),
                                  text_field(record, "answer", number, where), cited))
    return items[:limit]


def grounding_prompt(item: GroundedItem) -> tuple[str, list[tuple[int, int]]]:
    """The prompt text of a grounded item and the character span ``[start, end)`` of each passage in it."""
    text, spans = "", []
    for index, passage in enumerate(item.passages, start=1):
        text += f"Passage {index}: "
        spans.append((len(text), len(text) + len(passage)))
        text += passage + "\n"
    return text + f"\nQuestion: {item.question}\nAnswer:", spans
