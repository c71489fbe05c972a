"""Pure metric functions of the speech analysis (Papi et al. 2025): cross-attention levels, saliency of the log-mel
input, pooling, correlations and the word error rate."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor

from mechbench.core.pooling import pool_to_length
from mechbench.errors import DatasetError
from mechbench.stats import pearson, spearman

SaliencyMethod = Literal["gradient", "occlusion"]
Pooling = Literal["max", "mean"]
LogProbs = Callable[[Tensor], Tensor]


# ---------------------------------------------------------------------------- cross-attention
def cross_attention_levels(attention: Tensor) -> dict[str, Tensor]:
    """Aggregation levels of cross-attention ``[layer, head, I, T']`` (Papi et al. 2025): ``head`` (as is),
    ``layer`` ``[layer, I, T']`` (mean over heads) and ``all`` ``[I, T']`` (mean over layers and heads)."""
    layer = attention.mean(1)
    return {"head": attention, "layer": layer, "all": layer.mean(0)}


# ---------------------------------------------------------------------------- saliency
def gradient_saliency(logprobs: LogProbs, features: Tensor) -> Tensor:
    """``|d log p(y_i | X) / dX|`` for every generated token ``i`` (Simonyan et al. 2014): ``[I, F, T]``.

    ``logprobs`` maps a batch of log-mel inputs ``[N, F, T]`` to ``[N, I]``; one forward pass, then one
    backward pass per token through the retained graph.
    """
    leaf = features.detach().clone()[None].requires_grad_(True)
    values = logprobs(leaf)[0]
    grads = [torch.autograd.grad(value, leaf, retain_graph=i + 1 < len(values))[0][0]
             for i, value in enumerate(values)]
    return torch.stack(grads).abs().detach()


def patch_mask(n_mel: int, n_frames: int, patch_bins: int, patch_frames: int) -> Tensor:
    """Feature ids of a grid of ``patch_bins x patch_frames`` time-frequency patches over ``[n_mel, n_frames]``
    (edge patches are smaller): ``[n_mel, n_frames]`` with ids ``0..n_patches-1``."""
    bins = torch.arange(n_mel) // patch_bins
    frames = torch.arange(n_frames) // patch_frames
    return bins[:, None] * (int(frames.max()) + 1) + frames[None, :]


def occlusion_saliency(logprobs: LogProbs, features: Tensor, replacement: float, n_frames: int, patch_bins: int,
                       patch_frames: int, perturbations_per_eval: int = 1) -> Tensor:
    """Occlusion ``log p(y_i | X) - log p(y_i | X with patch P set to replacement)`` (Zeiler & Fergus 2014) for
    every token ``i``, every position of patch ``P`` carrying its patch's effect: ``[I, F, T]``.

    Only the first ``n_frames`` mel frames are occluded (the audio; later frames are 0). captum's
    ``FeatureAblation`` runs over a batch of one input with a ``[I]``-valued output, so one pass of the
    patches gives every token's effect.
    """
    from captum.attr import FeatureAblation

    fixed = features[:, n_frames:]

    def forward(part: Tensor) -> Tensor:
        return logprobs(torch.cat([part, fixed.expand(part.shape[0], -1, -1)], -1))

    mask = patch_mask(features.shape[0], n_frames, patch_bins, patch_frames)[None]
    with torch.no_grad():
        effects = FeatureAblation(forward).attribute(features[None, :, :n_frames], baselines=replacement,
                                                     feature_mask=mask,
                                                     perturbations_per_eval=perturbations_per_eval)
    out = torch.zeros(effects.shape[0], *features.shape, dtype=effects.dtype)
    out[..., :n_frames] = effects.detach().cpu()
    return out


def pool_saliency(saliency: Tensor, n_frames: int, how: Pooling = "max") -> Tensor:
    """2-D pooling of a spectrogram map ``[..., F, T]`` to ``[..., n_frames]``: over all frequency bins, then
    time by :func:`~mechbench.analyses.attribution.pool_to_length` (``T = 2 n_frames``: pairs of mel frames
    per encoder frame). Papi et al. found max pooling best; ``mean`` is average pooling."""
    over_frequency = saliency.amax(-2) if how == "max" else saliency.mean(-2)
    return pool_to_length(over_frequency, n_frames, how)


def occlusion_replacement(features: Tensor, n_mel_frames: int, how: str) -> float:
    """The log-mel value an occluded patch takes: the floor (the minimum; Whisper clamps log-mel at max - 8, so
    silence and padding sit there), 0, or the mean of the audio frames."""
    if how == "floor":
        return float(features.min())
    return 0.0 if how == "zero" else float(features[:, :n_mel_frames].mean())


# ---------------------------------------------------------------------------- agreement
def map_correlations(attention: Tensor, saliency: Tensor) -> dict[str, Tensor]:
    """Pearson and Spearman r between attention maps ``[..., I, T']`` and a saliency map ``[I, T']``:
    ``pearson`` / ``spearman`` of the flattened ``I x T'`` maps (Papi et al.'s global correlation) ``[...]``,
    ``pearson_token`` / ``spearman_token`` per token over ``T'`` ``[..., I]``."""
    flat_attention, flat_saliency = attention.flatten(-2), saliency.flatten(-2)
    return {"pearson": pearson(flat_attention, flat_saliency), "spearman": spearman(flat_attention, flat_saliency),
            "pearson_token": pearson(attention, saliency), "spearman_token": spearman(attention, saliency)}


def normalize_words(text: str) -> list[str]:
    """Lowercase words without punctuation (apostrophes inside words kept): the WER's units."""
    return re.sub(r"[^\w\s']|(?<!\w)'|'(?!\w)", " ", text.lower()).split()


def word_errors(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Word-level Levenshtein distance: the fewest substitutions, deletions and insertions turning
    ``reference`` into ``hypothesis``."""
    previous = list(range(len(hypothesis) + 1))
    for i, word in enumerate(reference, start=1):
        current = [i]
        for j, other in enumerate(hypothesis, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != other)))
        previous = current
    return previous[-1]


def word_error_rate(reference: str, hypothesis: str) -> float:
    """``WER = (S + D + I) / N`` over normalised words (:func:`normalize_words`), ``N`` the reference's words."""
    words = normalize_words(reference)
    if not words:
        raise DatasetError(f"reference {reference!r} has no words; give the text that was said")
    return word_errors(words, normalize_words(hypothesis)) / len(words)
