"""Clean/corrupt prompt pairs for circuit discovery: IOI, Colored Objects, induction, user files.

A *pair task* is a list of examples ``(clean, corrupt, answer, wrong)``: the metric is the logit
difference ``logit(answer) - logit(wrong)`` at the last position of the prompt, high on the clean
prompt and low (ideally negative) on the corrupt one. Clean and corrupt prompts of one example must
have the same number of tokens, so that every position can be patched from one into the other.

* **IOI** (Wang et al. 2022, arXiv 2211.00593): "When Mary and John went to the store, John gave a
  drink to" → " Mary" (IO) vs " John" (S); the corrupt prompt is the *ABC* prompt, all three name
  slots replaced by three other names (``gen_flipped_prompts`` of the IOI code). Templates alternate
  ABBA and BABA orders.
* **Colored Objects** (BIG-bench ``reasoning_about_colored_objects``, one-shot, as in Merullo et al.
  2024, ``jmerullo/circuit_reuse`` ``cobjs_data.py``): "Q: On the table, I see a red book, a blue
  cup, and a green pen. What color is the cup?\\nA: Blue\\nQ: ... What color is the pen?\\nA:" →
  " Green". The corrupt prompt is a *mindiff* prompt: the same text asking about another object of
  the same list, so the answer changes and nothing else ([INFERRED]: the exact construction of the
  reference's ``cobjs_mindiff_data_42.json`` was not read; this one changes exactly one token). The
  wrong answer is the corrupt prompt's answer.
* **Induction** (token ids, for the toy models without a tokenizer): ``BOS + block + block[:m]``
  → ``block[m]``; the corrupt prompt moves ``block[m-1]`` elsewhere in the first block, so
  induction predicts the token after its new place (the wrong answer).
* **User**: a ``.jsonl`` file of ``{"clean", "corrupt", "answer", "wrong"}`` (and optional ``id``).

Names, colours and objects are filtered to the ones that are a single token (with the leading
space) for the model at hand, so generation is deterministic per (seed, tokenizer).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mechbench.core.hooked import HookedModel
from mechbench.core.limits import check_context
from mechbench.errors import DatasetError
from mechbench.tasks.files import read_source

IOI_TEMPLATES = (
    "Then, {A} and {B} went to the {place}. {S} gave a {object} to",
    "When {A} and {B} got a {object} at the {place}, {S} decided to give it to",
    "After {A} and {B} went to the {place}, {S} gave a {object} to",
    "While {A} and {B} were working at the {place}, {S} gave a {object} to",
    "Then, {A} and {B} had a long argument, and afterwards {S} said to",
    "Friends {A} and {B} found a {object} at the {place}. {S} gave it to",
)
IOI_NAMES = (
    "Mary", "John", "Alice", "Bob", "James", "Michael", "David", "Sarah", "Emma", "Tom", "Paul", "Anna",
    "Mark", "Kate", "Peter", "Laura", "Jack", "Lisa", "Daniel", "Rachel", "George", "Emily", "Steven", "Linda",
    "Robert", "Susan", "William", "Karen", "Richard", "Helen", "Thomas", "Nancy", "Charles", "Amy", "Eric",
    "Jessica", "Brian", "Sam", "Kevin", "Grace",
)
IOI_PLACES = ("store", "garden", "restaurant", "school", "hospital", "office", "station", "house")
IOI_OBJECTS = ("ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack")

#: colours whose article is "a" (so "orange"/"amber" are left out to keep one template).
COLORS = ("red", "blue", "green", "yellow", "black", "white", "brown", "purple", "pink", "grey", "silver", "gold")
COLOR_OBJECTS = ("book", "cup", "pen", "ball", "hat", "key", "box", "lamp", "phone", "bag", "chair", "plate",
                 "shoe", "watch", "clock", "card")
CO_SURFACES = ("table", "desk", "floor", "bed", "shelf")
CO_QUESTION = "Q: On the {surface}, I see {items}. What color is the {query}?\nA:"
CO_TASK_SIZE = 3

BUILTIN_TASKS = ("ioi", "colored_objects", "induction")


@dataclass(frozen=True)
class PairTask:
    """Examples ``(clean, corrupt, answer, wrong)`` as texts (with tokenizers) or token-id lists."""

    name: str
    example_ids: list[str]
    clean: list[str] | list[list[int]]
    corrupt: list[str] | list[list[int]]
    answer: list[str] | list[int]
    wrong: list[str] | list[int]

    def __len__(self) -> int:
        return len(self.example_ids)


@dataclass(frozen=True)
class PairTokens:
    """A pair task tokenised for one model: right-padded ``[n, T]`` clean/corrupt ids, answer and
    wrong token ids ``[n]``, and ``end`` ``[n]``, the last real position (where the metric is read)."""

    name: str
    example_ids: list[str]
    clean: Tensor
    corrupt: Tensor
    answer: Tensor
    wrong: Tensor
    end: Tensor

    def __len__(self) -> int:
        return len(self.example_ids)

    def subset(self, rows: Sequence[int] | slice) -> PairTokens:
        index = torch.arange(len(self))[rows] if isinstance(rows, slice) else torch.as_tensor(list(rows))
        length = int(self.end[index].max()) + 1
        return PairTokens(self.name, [self.example_ids[i] for i in index.tolist()], self.clean[index, :length],
                          self.corrupt[index, :length], self.answer[index], self.wrong[index], self.end[index])


# ---------------------------------------------------------------------------- single tokens
def _encode(model: HookedModel, text: str) -> list[int]:
    return list(model.tokenize(text, prepend_bos=False)[0].tolist())


def single_token_words(model: HookedModel, words: Sequence[str], prefix: str = " ") -> list[str]:
    """The words of ``words`` that ``prefix + word`` tokenises to exactly one token, in order."""
    return [word for word in words if len(_encode(model, prefix + word)) == 1]


def _need(kind: str, kept: Sequence[str], minimum: int, model: HookedModel) -> list[str]:
    if len(kept) < minimum:
        raise DatasetError(f"only {len(kept)} {kind} are single tokens for {model.name} (need {minimum}); "
                           "use a model with a word-level vocabulary or a user task file")
    return list(kept)


# ---------------------------------------------------------------------------- generators
def ioi_task(model: HookedModel, n: int = 32, seed: int = 0) -> PairTask:
    """``n`` IOI prompts with their ABC corruptions; names are single tokens for ``model``."""
    names = _need("IOI names", single_token_words(model, IOI_NAMES), 6, model)
    rng = random.Random(seed)
    ids, clean, corrupt, answer, wrong = [], [], [], [], []
    for i in range(n):
        template = IOI_TEMPLATES[i % len(IOI_TEMPLATES)]
        io, s, a2, b2, c2 = rng.sample(names, 5)
        fill = {"place": rng.choice(IOI_PLACES), "object": rng.choice(IOI_OBJECTS)}
        first, second = (io, s) if i % 2 == 0 else (s, io)  # ABBA / BABA
        clean.append(template.format(A=first, B=second, S=s, **fill))
        corrupt.append(template.format(A=a2, B=b2, S=c2, **fill))
        answer.append(" " + io)
        wrong.append(" " + s)
        ids.append(f"ioi{i}")
    return PairTask("ioi", ids, clean, corrupt, answer, wrong)


def _co_question(surface: str, colors: Sequence[str], objects: Sequence[str], query: int) -> str:
    items = [f"a {c} {o}" for c, o in zip(colors, objects, strict=True)]
    listed = ", ".join(items[:-1]) + ", and " + items[-1]
    return CO_QUESTION.format(surface=surface, items=listed, query=objects[query])


def colored_objects_task(model: HookedModel, n: int = 32, seed: int = 0) -> PairTask:
    """``n`` one-shot Colored Objects prompts with mindiff corruptions (another object is asked about).

    Colours must be single tokens both as `` red`` (in the list) and `` Red`` (the answer); objects
    as `` book``.
    """
    colors = _need("colours", [c for c in single_token_words(model, COLORS)
                               if len(_encode(model, " " + c.capitalize())) == 1], CO_TASK_SIZE + 1, model)
    objects = _need("objects", single_token_words(model, COLOR_OBJECTS), CO_TASK_SIZE + 1, model)
    rng = random.Random(seed)
    ids, clean, corrupt, answer, wrong = [], [], [], [], []
    for i in range(n):
        surface = rng.choice(CO_SURFACES)
        shot_colors, shot_objects = rng.sample(colors, CO_TASK_SIZE), rng.sample(objects, CO_TASK_SIZE)
        shot_query = rng.randrange(CO_TASK_SIZE)
        shot = _co_question(rng.choice(CO_SURFACES), shot_colors, shot_objects, shot_query) + \
            " " + shot_colors[shot_query].capitalize() + "\n"
        cols, objs = rng.sample(colors, CO_TASK_SIZE), rng.sample(objects, CO_TASK_SIZE)
        query, other = rng.sample(range(CO_TASK_SIZE), 2)
        clean.append(shot + _co_question(surface, cols, objs, query))
        corrupt.append(shot + _co_question(surface, cols, objs, other))
        answer.append(" " + cols[query].capitalize())
        wrong.append(" " + cols[other].capitalize())
        ids.append(f"co{i}")
    return PairTask("colored_objects", ids, clean, corrupt, answer, wrong)


def induction_task(vocab_size: int, n: int = 32, block_length: int = 6, seed: int = 0, bos: int = 0,
                   low: int = 1, high: int | None = None) -> PairTask:
    """Token-id induction pairs: clean ``BOS + block + block[:m]`` → ``block[m]`` (the token that
    followed the last token ``block[m-1]`` earlier). The corrupt prompt moves ``block[m-1]`` in the
    first block (swaps it with ``block[j]``), so the earlier occurrence, found through the
    previous-token information the induction head keys on, is followed by another token: the wrong
    answer. The second half is the same in both prompts; only the keys change (K-composition).
    Block tokens are distinct, drawn from ``[low, high)`` (default ``high = vocab_size``)."""
    high = vocab_size if high is None else high
    if high - low < block_length or block_length < 4:
        raise DatasetError(f"induction task: need 4 <= block_length <= {high - low} distinct tokens, "
                           f"got block_length {block_length}")
    generator = torch.Generator().manual_seed(seed)
    ids, clean, corrupt, answer, wrong = [], [], [], [], []
    for i in range(n):
        block = (torch.randperm(high - low, generator=generator)[:block_length] + low).tolist()
        m = int(torch.randint(1, block_length, (), generator=generator))
        choices = [j for j in range(block_length - 1) if j not in (m - 1, m - 2)]
        j = choices[int(torch.randint(len(choices), (), generator=generator))]
        swapped = list(block)
        swapped[m - 1], swapped[j] = swapped[j], swapped[m - 1]
        clean.append([bos, *block, *block[:m]])
        corrupt.append([bos, *swapped, *block[:m]])
        answer.append(block[m])
        wrong.append(swapped[j + 1])
        ids.append(f"ind{i}")
    return PairTask("induction", ids, clean, corrupt, answer, wrong)


def load_pair_file(path: str, limit: int | None = None) -> PairTask:
    """A user task: a ``.jsonl`` of ``{"clean", "corrupt", "answer", "wrong"}`` (optional ``"id"``)."""
    text, source = read_source(path, "", "", f"pair task file {path!r} not found; give a .jsonl of "
                               "{clean, corrupt, answer, wrong} records", suffixes=(".jsonl",))
    ids: list[str] = []
    # the JSON values as given: texts, or token-id lists and ids
    clean: list[Any] = []
    corrupt: list[Any] = []
    answer: list[Any] = []
    wrong: list[Any] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            values = [record[key] for key in ("clean", "corrupt", "answer", "wrong")]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DatasetError(f"{source} line {number}: need a JSON object with clean, corrupt, answer, wrong "
                               f"({type(exc).__name__}: {exc})") from None
        ids.append(str(record.get("id", f"pair{len(ids)}")))
        for column, value in zip((clean, corrupt, answer, wrong), values, strict=True):
            column.append(value)
        if limit is not None and len(ids) >= limit:
            break
    if not ids:
        raise DatasetError(f"{source} has no pairs; add {{clean, corrupt, answer, wrong}} records")
    return PairTask(source.stem if source else "user", ids, clean, corrupt, answer, wrong)


def make_task(model: HookedModel, task: str, n: int = 32, seed: int = 0) -> PairTask:
    """A built-in task by name (``ioi``, ``colored_objects``, ``induction``) or a user ``.jsonl`` path."""
    if task == "ioi":
        return ioi_task(model, n, seed)
    if task == "colored_objects":
        return colored_objects_task(model, n, seed)
    if task == "induction":
        vocab = model.vocab_size
        from mechbench.models.toy import PLANTED_DELIMITER, PLANTED_VOCAB
        high = PLANTED_DELIMITER if vocab == PLANTED_VOCAB else vocab  # keep the planted delimiter out
        return induction_task(vocab, n, block_length=min(8, high - 1), seed=seed, high=high)
    return load_pair_file(task, n)


# ---------------------------------------------------------------------------- tokenisation
#: offending answers named in full by :func:`tokenize_pairs` before "and N more"
SHOWN_ANSWERS = 3


def _answer_ids(model: HookedModel, task: PairTask) -> tuple[list[int], list[int]]:
    """Answer and wrong-answer token ids; one DatasetError naming every answer that is not a single token."""
    ids: dict[str, list[int]] = {"answer": [], "wrong": []}
    bad: list[str] = []
    for i, example in enumerate(task.example_ids):
        for field in ("answer", "wrong"):
            value = getattr(task, field)[i]
            tokens = [value] if isinstance(value, int) else _encode(model, value)
            if len(tokens) != 1:
                bad.append(f"{example} {field} {value!r} ({len(tokens)} tokens)")
            ids[field].append(tokens[0] if tokens else -1)
    if bad:
        more = f" and {len(bad) - SHOWN_ANSWERS} more" if len(bad) > SHOWN_ANSWERS else ""
        raise DatasetError(f"task {task.name!r}: {len(bad)} answers are not single tokens for {model.name}: "
                           f"{'; '.join(bad[:SHOWN_ANSWERS])}{more}; answers must be single tokens (include the "
                           "leading space, e.g. ' Mary')")
    return ids["answer"], ids["wrong"]


def tokenize_pairs(model: HookedModel, task: PairTask, prepend_bos: bool | None = None) -> PairTokens:
    """Tokenise a pair task; every clean/corrupt pair must have the same length, fit the context window
    and hold token ids of the vocabulary, and every answer must be a single token."""
    if len(task) == 0:
        raise DatasetError(f"task {task.name!r} has no examples")
    answers, wrongs = _answer_ids(model, task)
    rows_clean, rows_corrupt = [], []
    for i, example in enumerate(task.example_ids):
        where = f"task {task.name!r} example {example!r}"
        pair = []
        for text in (task.clean[i], task.corrupt[i]):
            ids = list(text) if not isinstance(text, str) else model.tokenize(text, prepend_bos)[0].tolist()
            pair.append(torch.tensor(ids, dtype=torch.long))
        if pair[0].numel() != pair[1].numel():
            raise DatasetError(f"{where}: clean and corrupt prompts have {pair[0].numel()} and {pair[1].numel()} "
                               "tokens; they must align token by token")
        for tokens in (*pair, torch.tensor([answers[i], wrongs[i]])):
            model.check_token_ids(tokens, where)
        check_context(pair[0].numel(), model.architecture.n_ctx, model.name,
                      f"{where} has {pair[0].numel()} tokens", "use shorter prompts")
        rows_clean.append(pair[0])
        rows_corrupt.append(pair[1])
    lengths = torch.tensor([r.numel() for r in rows_clean])
    clean = torch.full((len(task), int(lengths.max())), model.pad_id, dtype=torch.long)
    corrupt = clean.clone()
    for row, (a, b) in enumerate(zip(rows_clean, rows_corrupt, strict=True)):
        clean[row, :a.numel()], corrupt[row, :b.numel()] = a, b
    return PairTokens(task.name, list(task.example_ids), clean, corrupt, torch.tensor(answers),
                      torch.tensor(wrongs), lengths - 1)
