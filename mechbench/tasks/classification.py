"""Zero-shot classification tasks: prompts, label words, and label-token accuracy.

Scoring follows ACT's evaluation (``GATECH-EIC/ACT`` ``main.py``): the prediction is the label
whose first token has the highest log-probability at the prompt's last position.

The built-in ``sentiment`` set ships with mechbench (``mechbench/data/sentiment.jsonl``): 40
pairs of short product/place/film reviews written for the package, each pair on the same topic,
one positive and one negative, so topic words cannot give the answer away.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from mechbench.core.hooked import HookedModel
from mechbench.core.interventions import PatternEdit, batch_logits
from mechbench.errors import DatasetError
from mechbench.tasks.files import read_source

BUILTIN_SENTIMENT = "sentiment"
SENTIMENT_TEMPLATE = "Review: {text}\nSentiment:"
SENTIMENT_LABELS = ("negative", "positive")


@dataclass(frozen=True)
class ClassificationTask:
    """Prompts with a gold label index into ``labels`` (the words the model must choose between)."""

    example_ids: list[str]
    prompts: list[str]
    gold: list[int]
    labels: tuple[str, ...]

    def subset(self, indices: list[int]) -> ClassificationTask:
        return ClassificationTask([self.example_ids[i] for i in indices], [self.prompts[i] for i in indices],
                                  [self.gold[i] for i in indices], self.labels)

    def split(self, n_first: int) -> tuple[ClassificationTask, ClassificationTask]:
        """First ``n_first`` examples (e.g. the calibration set) and the rest (held-out evaluation)."""
        if not 0 < n_first < len(self.prompts):
            raise DatasetError(f"cannot split {len(self.prompts)} examples into {n_first} + the rest; "
                               f"choose a calibration size between 1 and {len(self.prompts) - 1}")
        return self.subset(list(range(n_first))), self.subset(list(range(n_first, len(self.prompts))))


def load_classification(source: str = BUILTIN_SENTIMENT, template: str = SENTIMENT_TEMPLATE,
                        labels: tuple[str, ...] = SENTIMENT_LABELS) -> ClassificationTask:
    """Load ``"sentiment"`` or a ``.jsonl`` file of ``{"id", "text", "label"}`` records.

    Each prompt is ``template.format(text=...)``; every ``label`` must be one of ``labels``.
    """
    text, path = read_source(source, BUILTIN_SENTIMENT, "sentiment.jsonl",
                             f"classification set {source!r} not found; give 'sentiment' or a .jsonl file")
    lines, where = text.splitlines(), "the built-in sentiment set" if path is None else str(path)
    if "{text}" not in template:
        raise DatasetError(f"prompt template {template!r} has no {{text}} placeholder; add one")
    ids: list[str] = []
    prompts: list[str] = []
    gold: list[int] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            text, label = record["text"], record["label"]
        except (ValueError, KeyError, TypeError):
            raise DatasetError(f"{where} line {number} is not a JSON object with 'text' and 'label'") from None
        if label not in labels:
            raise DatasetError(f"{where} line {number} has label {label!r}; allowed labels: {', '.join(labels)}")
        ids.append(str(record.get("id", f"item-{len(ids)}")))
        prompts.append(template.format(text=text))
        gold.append(labels.index(label))
    if not prompts:
        raise DatasetError(f"classification set {source!r} is empty; give at least one labelled example")
    return ClassificationTask(ids, prompts, gold, tuple(labels))


def label_token_ids(model: HookedModel, labels: tuple[str, ...]) -> list[int]:
    """First token id of each label as it follows the prompt (``" " + label``); they must differ."""
    ids = [int(model.tokenize(" " + label, prepend_bos=False)[0][0]) for label in labels]
    if len(set(ids)) != len(ids):
        raise DatasetError(f"labels {labels} share a first token for {model.name}; choose labels that start "
                           "with different tokens")
    return ids


def label_logprobs(model: HookedModel, task: ClassificationTask, batch_size: int = 16,
                   edits: Mapping[int, PatternEdit] | None = None, prepend_bos: bool | None = None) -> Tensor:
    """``[example, label]`` log-probabilities of each label's first token at the last prompt position."""
    dataset = model.tokenize_dataset(task.prompts, prepend_bos=prepend_bos, example_ids=task.example_ids)
    label_ids = torch.tensor(label_token_ids(model, task.labels))
    out = torch.empty(len(task.prompts), len(task.labels), dtype=torch.float64)
    for batch, logits in batch_logits(model, dataset, batch_size, edits):
        last = logits[torch.arange(len(batch.indices)), batch.lengths.to(logits.device) - 1]
        out[batch.indices] = last.double().log_softmax(-1)[:, label_ids].cpu()
    return out


def accuracy(logprobs: Tensor, gold: list[int]) -> float:
    """Share of examples whose highest-scoring label is the gold one."""
    return float((logprobs.argmax(-1) == torch.tensor(gold)).double().mean())
