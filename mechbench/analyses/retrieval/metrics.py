"""Pure metric functions of the retrieval analysis (Wu et al. 2024): ROUGE-1 recall, copy-paste events and
retrieval scores, the outcome of one trial and the random heads of the masking check."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import torch
from torch import Tensor

from mechbench.core.decoding import Decoding
from mechbench.core.porter import porter_stem
from mechbench.errors import ConfigError, DatasetError
from mechbench.stats import ranked_heads
from mechbench.tasks.niah import NiahTrial

#: Reference success threshold on ROUGE-1 recall (``score > 50`` on a 0..100 scale).
ROUGE_THRESHOLD = 0.5


def rouge1_recall(reference: str, prediction: str, stem: bool = True) -> float:
    """ROUGE-1 recall: share of the reference's words (with multiplicity) that the prediction contains.

    Tokenisation as ``rouge_score`` (the package the reference calls with ``use_stemmer=True``):
    lower-case, non-alphanumerics to spaces, split, and Porter-stem every word longer than 3
    characters. rouge_score's stemmer is NLTK's ``PorterStemmer`` in ``NLTK_EXTENSIONS`` mode,
    reimplemented in :func:`mechbench.core.porter.porter_stem` and checked against NLTK on 170,944
    words (0 differences; ``benchmarks/make_porter_fixture.py``). ``stem=False`` compares the words
    unstemmed. Returns 0 for an empty reference.
    """
    ref = Counter(_rouge_words(reference, stem))
    if not ref:
        return 0.0
    pred = Counter(_rouge_words(prediction, stem))
    return sum(min(n, pred[w]) for w, n in ref.items()) / sum(ref.values())


def _rouge_words(text: str, stem: bool) -> list[str]:
    words = re.sub(r"[^a-z0-9]+", " ", text.lower()).split()
    if not stem:
        return words
    return [porter_stem(word) if len(word) > 3 else word for word in words]


def check_span(span: tuple[int, int], prompt_length: int) -> None:
    """Raise DatasetError unless ``span`` is a non-empty token range inside the prompt."""
    start, end = span
    if not 0 <= start < end <= prompt_length:
        raise DatasetError(f"answer span [{start}, {end}) is not a non-empty range inside the {prompt_length}-token "
                           "prompt; the answer must be found in the tokenized prompt")


def copy_events(argmax_keys: Tensor, generated: Tensor, prompt_ids: Tensor, span: tuple[int, int]) -> Tensor:
    """Copy-paste events ``[step, layer, head]`` (bool) of Wu et al. 2024.

    ``argmax_keys``: ``[step, layer, head]`` argmax-attended key position of the last query at each
    decode step; ``generated``: ``[step]`` token emitted at that step; ``span``: ``[start, end)``
    token positions of the needle's answer in ``prompt_ids``. Event: ``start <= j < end`` and
    ``prompt_ids[j] == generated[step]`` (``retrieval_calculate``, top-1).
    """
    check_span(span, prompt_ids.numel())
    start, end = span
    in_span = (argmax_keys >= start) & (argmax_keys < end)
    attended = prompt_ids.to(argmax_keys.device)[argmax_keys.clamp(0, prompt_ids.numel() - 1)]
    return in_span & (attended == generated.to(argmax_keys.device)[:, None, None])


def trial_head_scores(argmax_keys: Tensor, generated: Tensor, prompt_ids: Tensor, span: tuple[int, int]) -> Tensor:
    """Per-trial score ``r[l, h] = (#copy events of head l.h) / (end - start)``, float64 ``[layer, head]``."""
    events = copy_events(argmax_keys, generated, prompt_ids, span)
    return events.sum(0).double() / (span[1] - span[0])


def retrieval_scores(trial_scores: Tensor, counted: Tensor) -> Tensor:
    """Retrieval score per head: mean of ``trial_scores[n, l, h]`` over the trials with ``counted[n]``.

    Uncounted trials (ROUGE-1 recall <= 0.5) are excluded, as in the reference. NaN everywhere when
    no trial counts. Returns ``[layer, head]`` float64.
    """
    kept = trial_scores[counted.bool()].double()
    if kept.shape[0] == 0:
        return torch.full(trial_scores.shape[1:], float("nan"), dtype=torch.float64)
    return kept.mean(0)


@dataclass(frozen=True)
class TrialResult:
    """Outcome of one needle-in-a-haystack trial."""

    trial: NiahTrial
    response: str
    rouge_recall: float
    head_scores: Tensor  # [layer, head] per-trial score r
    decoding: Decoding

    @property
    def success(self) -> bool:
        """The reference's criterion: ROUGE-1 recall of the answer in the response > 0.5."""
        return self.rouge_recall > ROUGE_THRESHOLD


def random_heads(scores: Tensor, k: int, exclude_top: int, generator: torch.Generator | None = None,
                 ) -> list[tuple[int, int]]:
    """``k`` heads drawn without replacement from those outside the top ``exclude_top`` by score.

    The reference masks ``|K|`` random heads "not among the top-100" (``--mask_top`` with ``K < 0``).
    """
    pool = ranked_heads(scores)[exclude_top:]
    if len(pool) < k:
        raise ConfigError(f"retrieval.masking: only {len(pool)} heads lie outside the top {exclude_top}, fewer than "
                          f"k={k}; lower masking.exclude_top or the largest masking.top_k")
    picks = torch.randperm(len(pool), generator=generator)[:k].tolist()
    return sorted(pool[i] for i in picks)
