"""Needle-in-a-haystack trials for retrieval-head detection (Wu et al. 2024, arXiv 2404.15574).

Protocol of the reference code ``nightdessert/Retrieval_Head`` ``retrieval_head_detection.py``
(``generate_context``, ``insert_needle``, ``evaluate_and_log``), in character space:

* grid: context lengths ``round(linspace(s, e, n))`` tokens, depths ``round(linspace(0, 100, k))`` percent;
* the haystack text is repeated until it is long enough (``read_context_files``), then trimmed to
  ``context_length - buffer - len(needle)`` tokens (``final_context_length_buffer = 200`` reserves room
  for the template, question and answer);
* the needle goes after the last sentence end ('.') before ``depth`` percent of the trimmed haystack's
  tokens, or at the very end for depth 100;
* base prompt: ``context + "Based on the content of the book, Question: {q}\\nAnswer:"``; chat prompt
  (models whose tokenizer has a chat template): one user turn
  ``"<book>{context}</book>\\nBased on the content of the book, Question: {q}\\nAnswer:"`` with
  ``add_generation_prompt=True``.

The answer's token span comes from its exact character offsets in the prompt. The reference instead
takes the first window of ``len(answer tokens)`` prompt tokens whose token-id *set* overlaps the answer's
by more than 90 % (``find_needle_idx``); both locate the same tokens when the answer occurs verbatim,
which is required here (a needle whose answer is not a verbatim substring is rejected).

The built-in haystack (``data/haystack.txt``, about 2,700 words of prose about an invented harbour
town) and needles (``data/needles.jsonl``) were written for mechbench.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from torch import Tensor

from mechbench.core.hooked import HookedModel
from mechbench.core.limits import check_context
from mechbench.errors import CapabilityError, DatasetError
from mechbench.tasks.files import read_source

BUILTIN = "builtin"
#: Tokens reserved for the template, question and answer (reference ``final_context_length_buffer``).
ANSWER_BUFFER = 200
Template = Literal["auto", "base", "chat"]


@dataclass(frozen=True)
class Needle:
    """A fact to hide, the question that asks for it, and the answer: a verbatim substring of the needle."""

    id: str
    needle: str
    question: str
    answer: str

    def __post_init__(self) -> None:
        for field in ("needle", "question", "answer"):
            if not getattr(self, field).strip():
                raise DatasetError(f"needle {self.id!r} has an empty {field!r}; fill it in")
        if self.answer not in self.needle:
            raise DatasetError(f"needle {self.id!r}: answer {self.answer!r} is not found in the needle text; "
                               "copy the answer verbatim from the needle")


@dataclass(frozen=True)
class NiahTrial:
    """One tokenised trial: the prompt ids and the token span ``[start, end)`` of the needle's answer."""

    id: str
    needle_id: str
    context_length: int
    depth: int
    prompt_ids: Tensor
    answer_span: tuple[int, int]
    answer: str
    prompt: str | None = None


def grid(s: int, e: int, n: int, k: int) -> tuple[list[int], list[int]]:
    """Reference grid: lengths ``round(linspace(s, e, n))``, depths ``round(linspace(0, 100, k))``."""
    lengths = np.round(np.linspace(s, e, num=n, endpoint=True)).astype(int).tolist()
    depths = np.round(np.linspace(0, 100, num=k, endpoint=True)).astype(int).tolist()
    return lengths, depths


def load_needles(source: str = BUILTIN) -> list[Needle]:
    """Needles from ``"builtin"`` or a ``.jsonl`` file of ``{"needle", "question", "answer"[, "id"]}`` lines."""
    text, path = read_source(source, BUILTIN, "needles.jsonl", f"needle file {source!r} not found; give 'builtin' "
                             "or a .jsonl file of {needle, question, answer} objects")
    lines, where = text.splitlines(), "the built-in needles" if path is None else str(path)
    needles: list[Needle] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            needles.append(Needle(id=str(record.get("id", f"needle-{len(needles)}")), needle=record["needle"],
                                  question=record["question"], answer=record["answer"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise DatasetError(f"{where} line {number} is not a JSON object with string 'needle', 'question' and "
                               "'answer' fields") from None
    if not needles:
        raise DatasetError(f"{where} has no needles; add at least one {{needle, question, answer}} line")
    if len({n.id for n in needles}) != len(needles):
        raise DatasetError(f"{where} has duplicate needle ids; give every needle a unique 'id'")
    return needles


def load_haystack(source: str = BUILTIN) -> str:
    """The haystack text: ``"builtin"`` or a plain-text file."""
    text, _ = read_source(source, BUILTIN, "haystack.txt",
                          f"haystack file {source!r} not found; give 'builtin' or a plain-text file")
    if "." not in text or not text.strip():
        raise DatasetError(f"haystack {source!r} is empty or has no sentence ends ('.'); give prose")
    return text


def uses_chat_template(model: HookedModel, template: Template) -> bool:
    """Whether ``template`` resolves to the chat prompt (``auto``: when the tokenizer has a chat template)."""
    if template == "auto":
        return bool(getattr(_tokenizer(model), "chat_template", None))
    if template == "chat" and not getattr(_tokenizer(model), "chat_template", None):
        raise CapabilityError(f"model {model.name} has no chat template; use template 'base' or 'auto'")
    return template == "chat"


def build_trial(model: HookedModel, needle: Needle, haystack: str, context_length: int, depth: int, *,
                buffer: int = ANSWER_BUFFER, template: Template = "auto", max_new_tokens: int = 50) -> NiahTrial:
    """Hide ``needle`` at ``depth`` percent of a ``context_length``-token context and tokenise the prompt.

    Raises DatasetError when the depth is outside 0..100 (deeper than the context), when the context
    has no room for the haystack, when the needle, or the prompt plus ``max_new_tokens``, exceeds the
    model's window, or when the answer's tokens in the prompt do not read as the answer
    (:func:`answer_span`); CapabilityError for a tokenizer without character offsets (a slow one).
    """
    if not 0 <= depth <= 100:
        raise DatasetError(f"needle depth {depth}% is deeper than the context; depths are percentages 0..100")
    tokenizer = _tokenizer(model)
    model.require_offsets()
    needle_text = needle.needle.strip()
    n_needle = len(tokenizer(" " + needle_text, add_special_tokens=False)["input_ids"])
    n_ctx = model.architecture.n_ctx
    check_context(n_needle, n_ctx, model.name, f"needle {needle.id!r} has {n_needle} tokens",
                  "shorten the needle")
    keep = context_length - buffer - n_needle
    if keep < 1:
        raise DatasetError(f"context length {context_length} has no room for the haystack (needle {needle.id!r} "
                           f"is {n_needle} tokens, answer buffer {buffer}); use context lengths above "
                           f"{buffer + n_needle}")
    hay, offsets = _haystack_tokens(tokenizer, haystack, keep)
    trimmed = hay[:offsets[keep - 1][1]]
    if depth == 100:
        cut = len(trimmed)
    else:
        point = int(keep * depth / 100)
        cut = trimmed.rfind(".", 0, offsets[point][0] if point > 0 else 0) + 1
    head, tail = trimmed[:cut], trimmed[cut:]
    head += " " if head else ""
    context = head + needle_text + (" " if tail and not tail[0].isspace() else "") + tail
    answer_start = len(head) + needle_text.index(needle.answer)
    question = f"Based on the content of the book, Question: {needle.question}\nAnswer:"
    chat = uses_chat_template(model, template)
    if chat:
        content = f"<book>{context}</book>\n{question}"
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                               add_generation_prompt=True)
        if content not in prompt:
            raise DatasetError(f"the chat template of {model.name} rewrites the user text, so the answer is not "
                               "found in the tokenized prompt; use template 'base'")
        answer_start += prompt.index(content) + len("<book>")
    else:
        prompt = context + question
    prepend_bos = False if chat else None  # the chat template writes its own special tokens
    prompt_ids, _ = model.tokenize(prompt, prepend_bos=prepend_bos)
    check_context(prompt_ids.numel() + max_new_tokens, n_ctx, model.name,
                  f"the prompt for context length {context_length} has {prompt_ids.numel()} tokens + "
                  f"{max_new_tokens} new tokens", "lower the largest context length")
    span = answer_span(model, needle, prompt, answer_start, prompt_ids, prepend_bos)
    return NiahTrial(id=f"{needle.id}-len{context_length}-depth{depth}", needle_id=needle.id,
                     context_length=context_length, depth=depth, prompt_ids=prompt_ids, answer_span=span,
                     answer=needle.answer, prompt=prompt)


def answer_span(model: HookedModel, needle: Needle, prompt: str, start: int, prompt_ids: Tensor,
                prepend_bos: bool | None) -> tuple[int, int]:
    """Token span of the answer at character ``start`` of ``prompt``; its tokens must read as the answer
    (up to whitespace and case, which some tokenizers' decoding changes), else a copy of them would not
    be a copy of the answer."""
    try:
        first, last = model.token_span(prompt, start, start + len(needle.answer), prepend_bos=prepend_bos)
    except DatasetError:
        raise DatasetError(f"needle {needle.id!r}: answer {needle.answer!r} is not found in the tokenized prompt "
                           "(no token covers it); give an answer with visible characters") from None
    found = model.tokenizer.decode(prompt_ids[first:last].tolist())
    if "".join(found.split()).casefold() != "".join(needle.answer.split()).casefold():
        raise DatasetError(f"needle {needle.id!r}: answer {needle.answer!r} does not fall on token boundaries of the "
                           f"prompt (its tokens read {found!r}); make the answer whole words of the needle, "
                           "without a leading or trailing space")
    return first, last


def build_trials(model: HookedModel, needles: list[Needle], haystack: str, lengths: list[int], depths: list[int],
                 **options: Any) -> list[NiahTrial]:
    """Every (needle, context length, depth) trial, in that nesting order (options as :func:`build_trial`)."""
    return [build_trial(model, needle, haystack, length, depth, **options)
            for needle in needles for length in lengths for depth in depths]


def stop_ids(model: HookedModel) -> set[int]:
    """Token ids that end a decode: a single-token newline (reference: ``<0x0A>``) and end of sequence.

    The reference stops on newline only; stopping at EOS as well is a mechbench choice (a chat model
    otherwise keeps generating after its end-of-turn token).
    """
    tokenizer = _tokenizer(model)
    ids = {int(i) for i in (tokenizer.eos_token_id,) if i is not None}
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    if len(newline) == 1:
        ids.add(int(newline[0]))
    return ids


def _tokenizer(model: HookedModel) -> Any:
    if model.tokenizer is None:
        raise CapabilityError(f"model {model.name} has no tokenizer; needle-in-a-haystack prompts need text "
                              "(build a NiahTrial from token ids instead)")
    return model.tokenizer


def _haystack_tokens(tokenizer: Any, haystack: str, n_tokens: int) -> tuple[str, list[tuple[int, int]]]:
    """The haystack repeated until it has at least ``n_tokens`` tokens, with per-token character offsets."""
    text = haystack.strip()
    while True:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if len(encoded["input_ids"]) >= n_tokens:
            return text, [(int(a), int(b)) for a, b in encoded["offset_mapping"]]
        text = text + "\n\n" + haystack.strip()

