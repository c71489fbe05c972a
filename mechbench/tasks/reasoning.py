"""Reasoning transcripts (prompt ⊕ response) for the ``distance`` analysis (WAAD / FAI).

Two sources: the built-in arithmetic word problems (``data/arithmetic.jsonl``, twelve short
problems written for mechbench, ``{id, question}`` per line), which the analysis answers with the
model's own greedy output, or a user's transcript file (``.jsonl`` of ``{id?, prompt, response}``).
Models without a tokenizer (the toy models) take :class:`Transcript` objects built from token ids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from mechbench.core.hooked import HookedModel
from mechbench.errors import CapabilityError, DatasetError
from mechbench.tasks.files import read_source
from mechbench.tasks.niah import Template, uses_chat_template

BUILTIN = "builtin"
#: Appended to every built-in problem (chat turn or plain prompt).
INSTRUCTION = "Solve the problem step by step, then give the final answer."


@dataclass(frozen=True)
class Problem:
    """One word problem: the model is asked to answer ``question``."""

    id: str
    question: str


@dataclass(frozen=True)
class Transcript:
    """A prompt and a response as token ids; the analysis reads the response rows of their concatenation."""

    id: str
    prompt_ids: Tensor
    response_ids: Tensor


def _read_jsonl(source: str, fields: tuple[str, ...], what: str) -> list[dict[str, Any]]:
    """Records of a ``.jsonl`` file (or the built-in problems) with non-empty string ``fields``."""
    text, path = read_source(source, BUILTIN, "arithmetic.jsonl",
                             f"{what} file {source!r} not found or not .jsonl; give an existing .jsonl file of "
                             f"{{{', '.join(fields)}}} lines", suffixes=(".jsonl",))
    where = "the built-in arithmetic problems" if path is None else str(path)
    records: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            values = [record[field] for field in fields]
        except (ValueError, KeyError, TypeError):
            raise DatasetError(f"{where} line {number} is not a JSON object with string fields "
                               f"{', '.join(repr(f) for f in fields)}") from None
        if not all(isinstance(v, str) and v.strip() for v in values):
            raise DatasetError(f"{where} line {number} has an empty or non-string {' / '.join(fields)}; fill it")
        record.setdefault("id", f"{what}-{len(records)}")
        record["id"] = str(record["id"])
        records.append(record)
    if not records:
        raise DatasetError(f"{where} is empty; give at least one {{{', '.join(fields)}}} line")
    if len({r["id"] for r in records}) != len(records):
        raise DatasetError(f"{where} has duplicate ids; give every line a unique 'id'")
    return records


def load_problems(source: str = BUILTIN, limit: int | None = None) -> list[Problem]:
    """Word problems from ``"builtin"`` or a ``.jsonl`` of ``{id, question}`` lines (first ``limit``)."""
    records = _read_jsonl(source, ("question",), "problem")[:limit]
    return [Problem(id=r["id"], question=r["question"]) for r in records]


def load_transcripts(source: str, limit: int | None = None) -> list[tuple[str, str, str]]:
    """``(id, prompt, response)`` texts from a ``.jsonl`` of ``{id?, prompt, response}`` lines (first ``limit``)."""
    if source == BUILTIN:
        raise DatasetError("there is no built-in transcript file; give a .jsonl of {id, prompt, response} lines "
                           "or leave `transcripts` unset to answer the built-in problems")
    records = _read_jsonl(source, ("prompt", "response"), "transcript")[:limit]
    return [(r["id"], r["prompt"], r["response"]) for r in records]


def tokenize_transcript(model: HookedModel, transcript_id: str, prompt: str, response: str,
                        prepend_bos: bool | None = None) -> Transcript:
    """Tokenise prompt and response separately (the prompt under the ``prepend_bos`` rule of
    :meth:`HookedModel.tokenize`, the response without special tokens) and keep both id sequences.

    Separate tokenisation keeps the prompt/response boundary on a token boundary; it can differ from
    tokenising the joined text at the seam.
    """
    prompt_ids, _ = model.tokenize(prompt, prepend_bos)
    response_ids, _ = model.tokenize(response, prepend_bos=False)
    return Transcript(id=transcript_id, prompt_ids=prompt_ids, response_ids=response_ids)


def problem_prompt(model: HookedModel, problem: Problem, template: Template = "auto") -> Tensor:
    """Prompt ids for a problem: one chat user turn with the generation prompt when the template
    resolves to chat (its special tokens come from the template), else ``Question: ...\\nAnswer:``."""
    if model.tokenizer is None:
        raise CapabilityError(f"model {model.name} has no tokenizer; word problems need text (give Transcript "
                              "objects of token ids instead)")
    content = f"{problem.question}\n{INSTRUCTION}"
    if uses_chat_template(model, template):
        text = model.tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                   add_generation_prompt=True)
        ids, _ = model.tokenize(text, prepend_bos=False)
        return ids
    ids, _ = model.tokenize(f"Question: {content}\nAnswer:")
    return ids


def token_pieces(model: HookedModel, ids: Tensor) -> list[str]:
    """Text of each token (its id as a string when the model has no tokenizer)."""
    if model.tokenizer is None:
        return [str(int(i)) for i in ids]
    return [model.tokenizer.decode([int(i)]) for i in ids]
