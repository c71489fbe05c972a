"""TAPPA's pure metrics: q-similarity, the RoPE band view, pattern types, KV budgets and pruning scores.

Tensors in, tensors (or plain numbers) out. The blockwise accumulators behind :func:`pattern_scores` and
:func:`rope_band_advantage` live here too: those functions are the accumulators fed one block, and the
reducers (:mod:`mechbench.analyses.tappa.reducers`) feed them a fused view's row blocks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from mechbench.core.lags import column_sums, lag_sums

Mode = Literal["cosine", "dot", "pearson", "euclidean", "l1", "rbf", "angular", "kl"]
MODES: tuple[str, ...] = ("cosine", "dot", "pearson", "euclidean", "l1", "rbf", "angular", "kl")
#: Modes that are distances (lower = more similar); the others are similarities.
DISTANCE_MODES = ("euclidean", "l1", "angular", "kl")
PATTERN_TYPES = ("vertical", "diagonal", "periodic")
EPS = 1e-8


# ---------------------------------------------------------------------------- q-similarity
def _pairwise(a: Tensor, b: Tensor, mode: str, rbf_sigma: float, kl_eps: float) -> Tensor:
    """``sim(a_i, b_j)`` as ``[..., i, j]`` for the reference's modes (float64 inputs)."""
    if mode == "cosine" or mode == "angular":
        an = a / a.norm(dim=-1, keepdim=True).clamp_min(EPS)
        bn = b / b.norm(dim=-1, keepdim=True).clamp_min(EPS)
        cos = an @ bn.transpose(-1, -2)
        return cos if mode == "cosine" else torch.acos(cos.clamp(-1.0, 1.0)) / math.pi
    if mode == "dot":
        return a @ b.transpose(-1, -2)
    if mode == "pearson":
        return _pairwise(a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True), "cosine", rbf_sigma, kl_eps)
    if mode in ("euclidean", "rbf"):
        squared = (a.pow(2).sum(-1)[..., :, None] + b.pow(2).sum(-1)[..., None, :]
                   - 2 * a @ b.transpose(-1, -2)).clamp_min(0.0)
        return squared.sqrt() if mode == "euclidean" else torch.exp(-squared / (2 * rbf_sigma**2))
    if mode == "l1":
        return torch.cdist(a, b, p=1)
    if mode == "kl":
        pa, pb = (_kl_probs(x, kl_eps) for x in (a, b))
        la, lb = pa.log(), pb.log()
        # 1/2 sum_d (P_i - P_j)(log P_i - log P_j), expanded so no [i, j, d] tensor is built
        return 0.5 * ((pa * la).sum(-1)[..., :, None] + (pb * lb).sum(-1)[..., None, :]
                      - pa @ lb.transpose(-1, -2) - la @ pb.transpose(-1, -2))
    raise ValueError(f"unknown similarity mode {mode!r}; one of: {', '.join(MODES)}")


def _kl_probs(x: Tensor, kl_eps: float) -> Tensor:
    probs = x.softmax(-1).clamp_min(kl_eps)
    return probs / probs.sum(-1, keepdim=True)


def similarity_matrix(q: Tensor, mode: Mode = "cosine", rbf_sigma: float = 1.0, kl_eps: float = 1e-8) -> Tensor:
    """The explicit ``[..., T, T]`` matrix ``sim(q_i, q_j)`` of the reference (``compute_q_sim_torch``).

    ``q``: ``[..., T, D]``. Modes as the reference: ``cosine`` (``q / max(||q||, 1e-8)``), ``dot``,
    ``euclidean``, ``l1``, ``rbf`` (``exp(-||q_i - q_j||^2 / 2 sigma^2)``), ``angular``
    (``acos(cos) / pi``), ``kl`` (symmetric KL of ``softmax(q)``) and ``pearson``, which here is the
    Pearson correlation (cosine of mean-centred vectors); the reference divides it further by ``D``.
    Quadratic in ``T``: for the mean use :func:`q_similarity`.
    """
    q = q.double()
    return _pairwise(q, q, mode, rbf_sigma, kl_eps)


def q_similarity(q: Tensor, mode: Mode = "cosine", rbf_sigma: float = 1.0, kl_eps: float = 1e-8,
                 chunk_size: int = 256) -> Tensor:
    """Mean off-diagonal pairwise similarity of a query window (TAPPA ``q_sim``), per leading index.

    ``q``: ``[..., T, D]`` (e.g. ``[head, T, d_head]``); returns ``[...]`` float64::

        q_sim = 1 / (T (T - 1)) * sum_{i != j} sim(q_i, q_j)

    ``cosine`` / ``dot`` / ``pearson`` use the closed form ``||sum_i v_i||^2 - sum_i ||v_i||^2`` with
    ``v`` the normalised (raw, centred-normalised) vectors: memory ``O(T D)``. The other modes sum
    the matrix in blocks of ``chunk_size`` rows: memory ``O(chunk_size T)``, never ``T x T``.
    ``T <= 1`` gives 0, as the reference. Distances (``euclidean``, ``l1``, ``angular``, ``kl``) are
    lower for more similar queries.
    """
    if mode not in MODES:
        raise ValueError(f"unknown similarity mode {mode!r}; one of: {', '.join(MODES)}")
    q = q.double()
    n = q.shape[-2]
    if n <= 1:
        return torch.zeros(q.shape[:-2], dtype=torch.float64, device=q.device)
    pairs = n * (n - 1)
    if mode in ("cosine", "dot", "pearson"):
        v = q - q.mean(-1, keepdim=True) if mode == "pearson" else q
        if mode != "dot":
            v = v / v.norm(dim=-1, keepdim=True).clamp_min(EPS)
        total = v.sum(-2).pow(2).sum(-1)
        diagonal = v.pow(2).sum((-1, -2))
        return (total - diagonal) / pairs
    total = torch.zeros(q.shape[:-2], dtype=torch.float64, device=q.device)
    for start in range(0, n, chunk_size):
        block = _pairwise(q[..., start:start + chunk_size, :], q, mode, rbf_sigma, kl_eps)
        rows = block.shape[-2]
        own = block[..., torch.arange(rows), torch.arange(start, start + rows)]
        total += block.sum((-1, -2)) - own.sum(-1)
    return total / pairs


def window_bounds(length: int, size: int = 1024, stride: int = 256) -> list[tuple[int, int]]:
    """Windows ``[start, end)`` of the pruning variant: ``start = 0, stride, 2 stride, ... < length``,
    ``end = min(start + size, length)`` (as ``Prune/prune/model_utils.py``, tails included). Windows
    shorter than 2 tokens have no pair and are left out."""
    if size < 1 or stride < 1:
        raise ValueError(f"window size and stride must be >= 1, got {size}, {stride}")
    return [(start, min(start + size, length)) for start in range(0, length, stride)
            if min(start + size, length) - start >= 2]


# ---------------------------------------------------------------------------- RoPE
def rope_pairs(rotary_dim: int, adjacent_pairs: bool = False) -> tuple[Tensor, Tensor]:
    """The two channel indices of each rotary frequency ``i = 0 .. rotary_dim/2 - 1``: ``(i, i + d/2)``
    (Llama / GPT-NeoX "rotate half", TransformerLens default) or ``(2i, 2i + 1)`` (adjacent pairs)."""
    half = torch.arange(rotary_dim // 2)
    return (2 * half, 2 * half + 1) if adjacent_pairs else (half, half + rotary_dim // 2)


def rope_frequencies(rotary_dim: int, base: float) -> Tensor:
    """Angular frequency ``theta_i = base^(-2i / rotary_dim)`` of pair ``i`` (radians per token), float64."""
    return float(base) ** (-torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)


def apply_rope(x: Tensor, positions: Tensor, base: float, rotary_dim: int | None = None,
               adjacent_pairs: bool = False) -> Tensor:
    """Rotate ``x`` ``[..., pos, d]`` by RoPE at ``positions`` ``[pos]`` (Su et al. 2021): pair ``i`` turns by
    ``positions * theta_i``; channels past ``rotary_dim`` pass through. Plain RoPE (no scaling)."""
    rotary_dim = x.shape[-1] if rotary_dim is None else rotary_dim
    first, second = rope_pairs(rotary_dim, adjacent_pairs)
    angle = positions.double()[:, None] * rope_frequencies(rotary_dim, base)[None, :]
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    a, b = x[..., first], x[..., second]
    out = x.clone()
    out[..., first] = a * cos - b * sin
    out[..., second] = a * sin + b * cos
    return out


def band_slices(n_pairs: int, n_bands: int) -> list[Tensor]:
    """Split frequency pairs ``0 .. n_pairs-1`` (highest frequency first) into ``n_bands`` contiguous bands."""
    if not 1 <= n_bands <= n_pairs:
        raise ValueError(f"n_bands must be in 1..{n_pairs} (rotary frequency pairs), got {n_bands}")
    return list(torch.arange(n_pairs).tensor_split(n_bands))


def band_channels(d_head: int, n_bands: int, rotary_dim: int | None = None,
                  adjacent_pairs: bool = False) -> list[Tensor]:
    """The channels of each rotary band (band 0 = highest frequencies), plus, when ``rotary_dim < d_head``,
    a last band of the position-free channels."""
    rotary_dim = d_head if rotary_dim is None else rotary_dim
    first, second = rope_pairs(rotary_dim, adjacent_pairs)
    channels = [torch.cat([first[band], second[band]]) for band in band_slices(rotary_dim // 2, n_bands)]
    if rotary_dim < d_head:
        channels.append(torch.arange(rotary_dim, d_head))
    return channels


def _mean_key_term(rot_q: Tensor, rot_k: Tensor, chunk: int = 256) -> Tensor:
    """``sum_{t >= 1} q_t * mean_{j<=t} k_j`` per channel ``[..., d]`` (float64), in chunks of rows so that no
    float64 copy of the whole ``[..., T, d]`` is made."""
    total = torch.zeros(*rot_q.shape[:-2], rot_q.shape[-1], dtype=torch.float64, device=rot_q.device)
    running = torch.zeros_like(total)  # sum_{j < chunk start} k_j
    for start in range(0, rot_q.shape[-2], chunk):
        stop = min(start + chunk, rot_q.shape[-2])
        prefix = rot_k[..., start:stop, :].double().cumsum(-2) + running[..., None, :]
        running = prefix[..., -1, :]
        visible = torch.arange(start + 1, stop + 1, dtype=torch.float64, device=rot_q.device)[:, None]
        term = rot_q[..., start:stop, :].double() * prefix / visible
        total += term[..., max(0, 1 - start):, :].sum(-2)  # row 0 is not scored
    return total


class BandAccumulator:
    """Running sums of :func:`rope_band_advantage` over blocks of pattern rows of one example.

    ``c_b`` is bilinear in ``q`` and ``k``, so per row ``t``::

        sum_j (A[t, j] - [j <= t] / (t + 1)) c_b[t, j] = q_{t,b} . (sum_j A[t, j] k_j - mean_{j<=t} k_j)_b / sqrt(d)

    and a block of rows costs one ``[r, T] x [T, d]`` product (none when ``A K`` is given) and no ``[r, T]``
    tensor per band. The sums are kept per channel (``sum_t q_tc (A K)_tc``) and split into bands at the end; the
    mean-key term, which does not depend on ``A``, is summed once. ``rot_q``, ``rot_k``: post-RoPE ``[..., T, d]``.
    """

    def __init__(self, rot_q: Tensor, rot_k: Tensor, n_bands: int, rotary_dim: int | None = None,
                 adjacent_pairs: bool = False) -> None:
        self.query, self.key = rot_q, rot_k.float()
        self.n, d = rot_q.shape[-2:]
        self.scale = math.sqrt(d)
        channels = band_channels(d, n_bands, rotary_dim, adjacent_pairs)
        self.bands = torch.zeros(d, len(channels), dtype=torch.float64, device=self.key.device)  # channel -> band
        for band, chosen in enumerate(channels):
            self.bands[chosen.to(self.bands.device), band] = 1.0
        self.baseline = _mean_key_term(rot_q, rot_k)
        self.attended = torch.zeros(*rot_q.shape[:-2], d, dtype=torch.float64, device=self.key.device)

    def add(self, rows: Tensor, first: int, attended: Tensor | None = None) -> None:
        """Add pattern rows ``[..., r, W]`` whose first row is query ``first`` (row 0 is not scored; every row
        ``t >= 1`` is added once before :meth:`advantage`); ``W <= T`` when the keys past ``W`` get no attention
        from these rows. ``attended``: ``rows @ keys`` when the caller has it."""
        skip = max(0, 1 - first)
        attended = rows.float() @ self.key[..., :rows.shape[-1], :] if attended is None else attended
        attended, first = attended[..., skip:, :], first + skip
        query = self.query[..., first:first + attended.shape[-2], :].double()
        self.attended += (query * attended).sum(-2)

    def advantage(self) -> Tensor:
        """``adv_b`` ``[..., bands]`` float64 on the CPU: the mean over rows ``t >= 1`` (0 for one token)."""
        if self.n <= 1:
            return torch.zeros(*self.attended.shape[:-1], self.bands.shape[-1], dtype=torch.float64)
        return ((self.attended - self.baseline) @ self.bands / (self.scale * (self.n - 1))).cpu()


def rope_band_advantage(rot_q: Tensor, rot_k: Tensor, pattern: Tensor, n_bands: int = 4,
                        rotary_dim: int | None = None, adjacent_pairs: bool = False) -> Tensor:
    """How much each rotary frequency band lifts the keys a head attends to [INFERRED measure].

    ``rot_q``, ``rot_k``: post-RoPE ``[head, T, d]`` (KV heads repeated); ``pattern``: ``[head, T, T]``
    causal. The logit ``a[t, j] = q_t . k_j / sqrt(d) = sum_b c_b[t, j]`` splits exactly into bands ``b``
    of frequency pairs (band 0 = highest frequencies; channels past ``rotary_dim``, if any, form a
    last, position-free band). Per band, the attention-weighted advantage over the mean visible key::

        adv_b = mean_{t >= 1} ( sum_{j<=t} A[t, j] c_b[t, j]  -  mean_{j<=t} c_b[t, j] )

    is additive: ``sum_b adv_b`` is the same quantity for the whole logit. Returns ``[head, bands]``
    float64. Bands with a large positive ``adv_b`` are the ones that make the head's pattern.
    Computed by :class:`BandAccumulator`, as the blockwise reducer does.
    """
    bands = BandAccumulator(rot_q, rot_k, n_bands, rotary_dim, adjacent_pairs)
    bands.add(pattern, 0)
    return bands.advantage()


# ---------------------------------------------------------------------------- pattern types
@dataclass(frozen=True)
class PatternCriteria:
    """[INFERRED] parameters of :func:`pattern_scores` / :func:`classify_patterns` (the paper gives none)."""

    local_window: int = 3
    n_columns: int = 2
    max_period: int = 32
    mass_threshold: float = 0.5
    diffuse_threshold: float = 0.8


class PatternAccumulator:
    """Running sums over the scored rows of one example's causal pattern, from which :func:`pattern_scores`
    follow exactly; rows arrive in blocks (any order, each row once), so no ``[..., T, T]`` tensor is needed.

    Per scored row ``t`` (``w < t < T``) it adds the lag profile ``A[t, t - delta]``, the far mass per key column
    (``A[t, j]``, ``t - j > w``) and the normalised entropy ``H(A[t]) / log(t + 1)``: float32 entries summed in
    float32 within a block (:mod:`mechbench.core.lags`) and in float64 across blocks (the scores to float32
    rounding, 1e-6 relative). ``lead`` is the
    shape before the two pattern axes (e.g. ``(head,)``), ``n`` the number of positions ``T``.
    """

    def __init__(self, n: int, lead: tuple[int, ...], criteria: PatternCriteria = PatternCriteria(),
                 device: torch.device | str = "cpu") -> None:
        self.n, self.lead, self.criteria = n, lead, criteria
        self.first_row = criteria.local_window + 1
        self.lag_sums = torch.zeros(*lead, n, dtype=torch.float64, device=device)
        self.far_column_sums = torch.zeros(*lead, n, dtype=torch.float64, device=device)
        self.entropy_sum = torch.zeros(lead, dtype=torch.float64, device=device)

    def add(self, rows: Tensor, first: int, entropies: Tensor | None = None) -> None:
        """Add causal pattern rows ``[..., r, W]`` whose first row is query ``first``; rows ``t <= w`` are not
        scored; ``W <= T`` when the keys past ``W`` get no attention from these rows. ``entropies`` ``[..., r]``:
        the rows' entropies when the caller has them cheaper (a fused view's
        :meth:`~mechbench.core.fused.AttentionView.row_entropies`); else they are summed from the entries."""
        skip = max(0, self.first_row - first)
        rows, first = rows[..., skip:, :], first + skip
        if rows.shape[-2] == 0:
            return
        t = torch.arange(first, first + rows.shape[-2], device=rows.device)
        width = rows.shape[-1]  # a causal block may stop at its last row's key: the lags and keys past it are 0
        self.lag_sums[..., :width] += lag_sums(rows, first)
        self.far_column_sums[..., :width] += column_sums(rows, first, min_lag=self.criteria.local_window + 1)
        if entropies is None:
            entropies = -torch.special.xlogy(rows, rows).sum(-1, dtype=torch.float64)
        else:
            entropies = entropies[..., skip:]
        self.entropy_sum += (entropies / (t + 1).double().log()).sum(-1)

    def scores(self, columns: Callable[[Tensor], Tensor]) -> dict[str, Tensor]:
        """The scores of :func:`pattern_scores` (``{name: [*lead]}`` float64 on the CPU).

        ``columns(keys)`` gives the pattern's columns ``A[..., :, keys]`` ``[..., T, len(keys)]``: the vertical
        columns' far mass is taken out of the lag profile once the columns are known.
        """
        w, n = self.criteria.local_window, self.n
        if n <= w + 1:
            nan = torch.full(self.lead, float("nan"), dtype=torch.float64)
            return {"vertical": nan, "diagonal": nan, "periodic": nan, "diffuse": nan, "period": nan.clone()}
        n_rows = n - w - 1
        mean_lag = self.lag_sums / n_rows
        diagonal = torch.maximum(mean_lag[..., : w + 1].sum(-1), mean_lag[..., w + 1:].max(-1).values)

        keys = torch.arange(n, device=self.lag_sums.device)
        seen = (n - w - 1 - keys).clamp(min=1)  # rows t > max(w, j + w) that see key j from beyond the window
        top = (self.far_column_sums / seen).topk(min(self.criteria.n_columns, n), dim=-1).indices  # [..., k]
        vertical = self.far_column_sums.gather(-1, top).sum(-1) / n_rows

        far_lags = self.lag_sums.clone()
        far_lags[..., : w + 1] = 0.0
        rest = far_lags - self._far_lags_on(top, columns)
        # the difference is exact but for float64 rounding of the sums (<= n eps of the lag's far mass):
        # within it the top columns hold all the lag's far mass, and the direct sum is 0
        rest = rest.masked_fill(rest <= n * torch.finfo(torch.float64).eps * far_lags, 0.0) / n_rows
        periodic, period = _best_period(rest, w, self.criteria.max_period)
        diffuse = self.entropy_sum / n_rows
        return {name: value.cpu() for name, value in (("vertical", vertical), ("diagonal", diagonal),
                                                      ("periodic", periodic), ("diffuse", diffuse),
                                                      ("period", period))}

    def _far_lags_on(self, top: Tensor, columns: Callable[[Tensor], Tensor]) -> Tensor:
        """Sum over the rows of the far mass on the ``top`` columns ``[..., k]``, by lag ``t - j``: ``[..., T]``."""
        union, position = top.flatten().unique(return_inverse=True)
        values = columns(union).double()  # [..., T, u]
        index = position.reshape(top.shape)[..., None, :].expand(*self.lead, self.n, top.shape[-1])
        on_top = values.gather(-1, index)  # [..., T, k]: A[t, top_i]
        lag = torch.arange(self.n, device=top.device)[:, None] - top[..., None, :]  # [..., T, k]
        far = lag > self.criteria.local_window
        out = torch.zeros(*self.lead, self.n, dtype=torch.float64, device=top.device)
        return out.scatter_add(-1, lag.clamp(min=0).flatten(-2), (on_top * far).flatten(-2))


def _best_period(rest: Tensor, w: int, max_period: int) -> tuple[Tensor, Tensor]:
    """``(score, p)`` of the best period ``p in w+1 .. max_period``: the mean mass ``rest`` at lags ``p, 2p, ...``
    minus that at its strongest multiple; score 0 and ``p`` NaN when no period scores above 0."""
    n = rest.shape[-1]
    best = torch.zeros(rest.shape[:-1], dtype=torch.float64)
    period = torch.full(rest.shape[:-1], float("nan"), dtype=torch.float64)
    rest = rest.cpu()
    for p in range(w + 1, min(max_period, n - 1) + 1):
        multiples = torch.arange(p, n, p)
        if multiples.numel() < 2:
            continue
        at = rest[..., multiples]
        score = at.sum(-1) - at.max(-1).values
        better = score > best
        best = torch.where(better, score, best)
        period = torch.where(better, torch.tensor(float(p), dtype=torch.float64), period)
    return best, period


def pattern_scores(pattern: Tensor, criteria: PatternCriteria = PatternCriteria()) -> dict[str, Tensor]:
    """Scores of one example's causal pattern ``[..., T, T]`` for the TAPPA pattern types [INFERRED].

    Rows ``t`` with ``w < t < T`` are scored (``w = local_window``; earlier rows cannot tell a local
    from a global head), each is a share of the row's attention, averaged over the rows:

    * ``diagonal`` (sequential): the larger of the mass at lags ``0..w`` and the mean mass at the
      single strongest lag ``> w`` (an offset stripe);
    * ``vertical`` (re-access): mass, at lags ``> w``, on the ``n_columns`` key positions that receive
      the most such attention (mean over the rows that see them from beyond the window);
    * ``periodic`` (seasonal): for a period ``p`` in ``w+1 .. max_period``, the mean mass at lags
      ``p, 2p, 3p, ...`` (``> w``, off the vertical columns) minus that at its strongest single multiple
      (so one offset stripe is not periodic); the best ``p`` (returned as ``period``);
    * ``diffuse``: row entropy divided by ``log(t + 1)`` (1 = uniform over the visible keys).

    Returns ``{name: [...]}`` (float64; NaN when ``T <= w + 1``). See :func:`classify_patterns`.
    Each is a sum over rows, accumulated by :class:`PatternAccumulator` (here in one block; the
    reducer feeds it the row blocks of an :class:`~mechbench.core.fused.AttentionView`).
    """
    accumulator = PatternAccumulator(pattern.shape[-1], tuple(pattern.shape[:-2]), criteria, pattern.device)
    accumulator.add(pattern, 0)
    return accumulator.scores(lambda keys: pattern[..., keys.to(pattern.device)])


def classify_patterns(scores: dict[str, Tensor], criteria: PatternCriteria = PatternCriteria()) -> list[str]:
    """[INFERRED] label per head (flattened ``scores`` entries): the largest of vertical / diagonal /
    periodic when it reaches ``mass_threshold``; else ``diffuse`` when the normalised entropy reaches
    ``diffuse_threshold``; else ``mixed``. NaN scores give ``unknown``."""
    stacked = torch.stack([scores[name].reshape(-1) for name in PATTERN_TYPES], -1)
    diffuse = scores["diffuse"].reshape(-1)
    labels = []
    for row, entropy in zip(stacked, diffuse, strict=True):
        if torch.isnan(row).any():
            labels.append("unknown")
        elif float(row.max()) >= criteria.mass_threshold:
            labels.append(PATTERN_TYPES[int(row.argmax())])
        elif float(entropy) >= criteria.diffuse_threshold:
            labels.append("diffuse")
        else:
            labels.append("mixed")
    return labels


def predictability(scores: dict[str, Tensor]) -> Tensor:
    """[INFERRED] continuous pattern predictability: ``max(vertical, diagonal, periodic)``."""
    return torch.stack([scores[name] for name in PATTERN_TYPES], -1).max(-1).values


# ---------------------------------------------------------------------------- downstream: KV budgets
def layer_budgets(q_sim: Tensor, mean_budget: int, min_budget: int = 1, max_budget: int | None = None) -> Tensor:
    """TAPPA layer KV budgets: ``budget_l ∝ 1 - q_sim_l``, summing to ``mean_budget x L``.

    (``KVCache/cake/cake_cache.py`` with ``alpha = inf``: ``pref = 1 - q_sim``,
    ``budget = pref / sum pref x total``.) Preferences are clamped at ``1e-6``; budgets are clipped to
    ``[min_budget, max_budget]`` with the excess re-shared among the other layers, then rounded to
    integers by largest remainder (the sum is kept when the bounds allow it) [INFERRED: the
    reference's own clipping, ``adjust_budgets``, is not in the released code]. Returns ``[L]`` long.
    """
    n = q_sim.numel()
    total = float(mean_budget * n)
    upper = float("inf") if max_budget is None else float(max_budget)
    if min_budget * n > total or upper * n < total:
        raise ValueError(f"mean budget {mean_budget} is outside [{min_budget}, {max_budget}]")
    pref = (1.0 - q_sim.double()).clamp_min(1e-6)
    budgets = pref / pref.sum() * total
    fixed = torch.zeros(n, dtype=torch.bool)
    for _ in range(n):
        clipped = budgets.clamp(min_budget, upper)
        newly = (clipped != budgets) & ~fixed
        if not newly.any():
            break
        fixed |= newly
        free = ~fixed
        remaining = total - clipped[fixed].sum()
        budgets = clipped.clone()
        if free.any():
            budgets[free] = pref[free] / pref[free].sum() * remaining
    floor = budgets.floor()
    short = round(total - float(floor.sum()))
    order = (budgets - floor).argsort(descending=True, stable=True)
    floor[order[:max(short, 0)]] += 1
    return floor.long()


def eviction_keep(pattern: Tensor, prompt_length: int, budget: int, window: int = 32, kernel: int = 5,
                  gamma: float = 200.0, group_size: int = 1) -> Tensor:
    """Keys of the prompt kept in one layer's compressed cache (SnapKV / CAKE scoring as in TAPPA's
    ``llama_attn_forward_tappa``): bool ``[head, prompt_length]``.

    ``pattern``: ``[head, T, T]`` with ``T >= prompt_length``. The last ``window`` prompt tokens are
    always kept; every older key gets ``mean + gamma * var`` of the attention it receives from the
    window's queries, average-pooled along keys (``kernel``, zero padding), averaged over each group
    of ``group_size`` query heads (GQA: one cache per KV head); the top ``budget - window`` are kept.
    """
    heads = pattern.shape[0]
    keep = torch.zeros(heads, prompt_length, dtype=torch.bool)
    if budget >= prompt_length:
        return keep | True
    window = min(window, prompt_length)
    keep[:, prompt_length - window:] = True
    older = prompt_length - window
    n_old = budget - window
    if n_old <= 0 or older <= 0:
        return keep
    rows = pattern[:, prompt_length - window:prompt_length, :older].double().cpu()
    score = rows.mean(-2) + gamma * rows.var(-2, unbiased=True) if window > 1 else rows.mean(-2)
    score = F.avg_pool1d(score[:, None, :], kernel_size=kernel, padding=kernel // 2, stride=1,
                         count_include_pad=True)[:, 0, :older]
    score = score.reshape(heads // group_size, group_size, older).mean(1).repeat_interleave(group_size, 0)
    chosen = score.topk(min(n_old, older), dim=-1).indices
    keep[torch.arange(heads)[:, None], chosen] = True
    return keep


# ---------------------------------------------------------------------------- downstream: pruning
def block_influence(h_in: Tensor, h_out: Tensor) -> Tensor:
    """ShortGPT Block Influence per token: ``1 - cos(h_in, h_out)`` over the last axis (NaN cosines,
    e.g. a zero vector, count as 0.5, as ``Prune/prune/metrics.py``). Float64."""
    cos = (h_in.double() * h_out.double()).sum(-1) / (h_in.double().norm(dim=-1) * h_out.double().norm(dim=-1))
    return 1.0 - cos.nan_to_num(nan=0.5)


def min_max(values: Tensor) -> Tensor:
    """``(v - min) / (max - min)``; all zeros when constant (``Prune/prune/orders.py::normalize_scores``)."""
    values = values.double()
    low, high = values.min(), values.max()
    return torch.zeros_like(values) if high == low else (values - low) / (high - low)


def tappa_prune_scores(bi: Tensor, q_sim: Tensor, beta: float) -> tuple[Tensor, list[int]]:
    """``score_l = BI_norm_l + beta (1 - q_norm_l)`` and the pruning order (lowest score first, ties by
    layer index), as ``build_tappa_scores``. ``beta = 0`` is Block Influence alone (ShortGPT)."""
    score = min_max(bi) + beta * (1.0 - min_max(q_sim))
    order = sorted(range(score.numel()), key=lambda layer: (float(score[layer]), layer))
    return score, order
