"""Fused attention kernel and the views of a layer's pattern: exact per-head patterns on demand.

The TransformerBridge computes attention eagerly so that ``hook_pattern`` can fire: a full
``[batch, head, L, L]`` matrix per layer, 3x slower than the fused kernel at 2k tokens and 4x the
memory (issue 10). The fused path (:mod:`mechbench.core.fused`) instead runs each layer's own Hugging
Face attention module with a fused kernel that also returns the softmax normaliser
``lse[t] = log sum_j exp(s[t, j])`` per query, and hands the layer's post-RoPE queries and keys plus
``lse`` to a consumer as a :class:`FusedAttention`. Any entry of the pattern is then exact and cheap::

    A[t, j] = exp(s[t, j] - lse[t]),   s[t, j] = scale * q_t . k_j + mask[t, j]

so a metric reads row blocks (:meth:`AttentionView.blocks`, bounded memory), a few columns
(:meth:`AttentionView.columns`, ``O(L d)``) or the last row of a decoding step, and never the
whole ``layers x heads x L x L`` tensor. The result equals the eager ``hook_pattern`` to float32
rounding (tests: ``tests/test_fused.py``).

This module holds the kernel (:func:`attention_with_logsumexp`) and the views (:class:`AttentionView`,
:class:`FusedAttention`, :class:`StreamedAttention`, :class:`DenseAttention`); :mod:`mechbench.core.fused`
drives a model's attention modules with them and re-exports every name here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

#: Bytes one block of pattern rows may take (float32): bounds the memory of every blockwise metric.
DEFAULT_BLOCK_BYTES = 8 * 1024**2  # measured at 2k: 8 MB blocks 0-10 % faster than 16 MB, 2 MB and smaller slower

LayerConsumer = Callable[["FusedAttention"], None]
#: How a pass reads attention: ``auto`` = fused where the model supports it, else eager.
AttentionPath = Literal["auto", "fused", "eager"]


class BlockBuffer:
    """The float32 memory that row blocks of fused views are written into, grown on demand and reused.

    A pass over a long input computes hundreds of row blocks of up to ``block_bytes`` each; a fresh allocation
    per block is fresh pages from the OS every time (a page fault per 4 KiB: about 930,000 faults and 3 s of
    system time in a 2k-token TAPPA pass on SmolLM2). The views of one fused forward pass share one buffer."""

    def __init__(self) -> None:
        self._data: Tensor | None = None

    def take(self, numel: int, capacity: int, device: torch.device) -> Tensor:
        """``numel`` floats of the buffer (the same memory as the last block's); when it must grow, it grows to
        ``capacity`` (the largest block the view can ask for) at once."""
        if self._data is None or self._data.numel() < numel or self._data.device != device:
            self._data = torch.empty(max(numel, capacity), dtype=torch.float32, device=device)
        return self._data[:numel]


class AttentionView:
    """One layer's attention pattern for one batch, read by row blocks, columns or whole.

    ``query`` ``[batch, head, n_queries, d_head]`` and ``key`` ``[batch, head, n_keys, d_head]`` are the
    layer's post-RoPE queries and keys (KV heads repeated to query heads), None where the path that
    made the view did not record them. Subclasses give :meth:`rows` and :meth:`columns`.
    """

    layer: int
    query: Tensor | None
    key: Tensor | None
    batch_size: int
    n_heads: int
    n_queries: int
    n_keys: int
    block_bytes: int

    def rows(self, start: int, stop: int, trim: bool = False) -> Tensor:
        """Pattern rows ``A[..., start:stop, :]`` ``[batch, head, stop - start, n_keys]`` (float32).

        ``trim=True`` may return fewer key columns (a prefix): the keys past it get no attention from
        these rows (a causal row block stops at its last row's key), and no zeros are written for them.
        """
        raise NotImplementedError

    def columns(self, keys: Tensor) -> Tensor:
        """Pattern columns ``A[..., :, keys]`` ``[batch, head, n_queries, len(keys)]``."""
        raise NotImplementedError

    def block_rows(self) -> int:
        """Rows per block so that one block of every batch row and head fits in ``block_bytes``."""
        per_row = 4 * self.batch_size * self.n_heads * self.n_keys
        return max(1, min(self.n_queries, self.block_bytes // max(per_row, 1)))

    def blocks(self, start: int = 0, stop: int | None = None, trim: bool = False) -> Iterator[tuple[int, Tensor]]:
        """``(first row, rows)`` for consecutive row blocks covering queries ``[start, stop)`` (``trim``: as
        :meth:`rows`). A fused view writes its blocks into one reused buffer (:class:`BlockBuffer`): a block
        is valid until the next one is computed (copy it to keep it); :meth:`rows` returns fresh memory."""
        stop = self.n_queries if stop is None else stop
        size = self.block_rows()
        for first in range(start, stop, size):
            yield first, self._block(first, min(stop, first + size), trim)

    def _block(self, start: int, stop: int, trim: bool) -> Tensor:
        """The rows :meth:`blocks` yields (a view may write them into reused memory)."""
        return self.rows(start, stop, trim)

    def pattern(self) -> Tensor:
        """The whole ``[batch, head, n_queries, n_keys]`` pattern (short inputs and tests only)."""
        return self.rows(0, self.n_queries)

    def attended_rows(self, rows: Tensor, first: int, batch_row: int) -> Tensor:
        """``A K``: the attention-weighted keys ``[head, r, d]`` (float32) of pattern rows ``[head, r, W]`` of batch row
        ``batch_row`` whose first row is query ``first``."""
        if self.key is None:
            raise TypeError(f"layer {self.layer}: this attention view did not record the keys that A K needs")
        return rows @ self.key[batch_row, :, :rows.shape[-1]].float()

    def row_entropies(self, rows: Tensor, first: int, batch_row: int, attended: Tensor | None = None) -> Tensor:
        """Entropy ``H_t = -sum_j A[t, j] log A[t, j]`` of pattern rows ``[head, r, W]`` of batch row ``batch_row``
        whose first row is query ``first``: float64 ``[head, r]``. ``attended`` = ``rows @ keys`` ``[head, r, d]``
        when the caller has it (the fused view uses it; here the entries' own logarithms are summed)."""
        return -torch.special.xlogy(rows, rows).sum(-1, dtype=torch.float64)


class FusedAttention(AttentionView):
    """A layer's attention as the fused kernel saw it: any pattern entry rebuilt from ``q``, ``k`` and ``lse``.

    ``logsumexp`` ``[batch, head, n_queries]`` is the log of each row's softmax normaliser; ``mask`` an
    additive float mask broadcastable to ``[batch, head, n_queries, n_keys]`` or None; ``causal`` means
    query ``i`` sees keys ``<= i + n_keys - n_queries`` (bottom-right alignment, as in KV-cache decoding).
    """

    query: Tensor
    key: Tensor

    def __init__(self, layer: int, query: Tensor, key: Tensor, logsumexp: Tensor, scale: float,
                 mask: Tensor | None, causal: bool, block_bytes: int = DEFAULT_BLOCK_BYTES,
                 buffer: BlockBuffer | None = None) -> None:
        self.layer, self.query, self.key, self._lse = layer, query, key, logsumexp
        self.scale, self.mask, self.causal, self.block_bytes = scale, mask, causal, block_bytes
        self.buffer = BlockBuffer() if buffer is None else buffer
        self._bias: bool | None = None
        self.batch_size, self.n_heads, self.n_queries = query.shape[:3]
        self.n_keys = key.shape[-2]

    @property
    def logsumexp(self) -> Tensor:
        """``lse`` of every query row ``[batch, head, n_queries]``."""
        return self._normalisers(0, self.n_queries)

    def _normalisers(self, start: int, stop: int) -> Tensor:
        """``lse`` of query rows ``[start, stop)``."""
        return self._lse[..., start:stop]

    @property
    def query_offset(self) -> int:
        """Absolute position of query 0 among the keys (``n_keys - n_queries``)."""
        return self.n_keys - self.n_queries

    def scores(self, start: int, stop: int, key_stop: int | None = None, shift: Tensor | None = None,
               buffer: BlockBuffer | None = None) -> Tensor:
        """Scaled, masked logits of query rows ``[start, stop)`` over keys ``[0, key_stop)`` (float32), minus
        ``shift`` ``[batch, head, stop - start]`` per row when given; ``-inf`` where a causal row cannot see.

        One tensor (fresh, or ``buffer``'s memory): a single product (with the shift folded in), the mask added in
        place, and the causal ``-inf`` written only over the keys past the block's first row (the earlier ones
        every row sees)."""
        key_stop = self.n_keys if key_stop is None else key_stop
        n_rows = stop - start
        query = (self.query[..., start:stop, :].float() * self.scale).reshape(-1, n_rows, self.query.shape[-1])
        key = self.key[..., :key_stop, :].float().reshape(query.shape[0], key_stop, -1).transpose(1, 2)
        out = None if buffer is None else buffer.take(query.shape[0] * n_rows * key_stop, self.block_rows() * (
            query.shape[0] * self.n_keys), query.device).view(query.shape[0], n_rows, key_stop)
        if shift is None:
            logits = torch.bmm(query, key, out=out)
        else:
            logits = torch.baddbmm(shift.float().reshape(query.shape[0], n_rows, 1).neg(), query, key, out=out)
        logits = logits.view(*self.query.shape[:2], n_rows, key_stop)
        if self.mask is not None:
            logits += self.mask[..., start:stop, :key_stop]
        first_hidden = start + self.query_offset + 1  # row i cannot see keys >= first_hidden + i
        if self.causal and first_hidden < key_stop:
            hidden = torch.ones(n_rows, key_stop - first_hidden, dtype=torch.bool, device=logits.device).triu()
            logits[..., first_hidden:].masked_fill_(hidden, float("-inf"))
        return logits

    def _key_stop(self, stop: int) -> int:
        """Keys ``[0, key_stop)`` the rows before ``stop`` can see (a causal row sees none past its own)."""
        return min(self.n_keys, stop + self.query_offset) if self.causal else self.n_keys

    def _widened(self, block: Tensor, trim: bool) -> Tensor:
        """A block of rows over its visible keys, zero-padded to every key unless ``trim``."""
        return block if trim or block.shape[-1] == self.n_keys else F.pad(block, (0, self.n_keys - block.shape[-1]))

    def rows(self, start: int, stop: int, trim: bool = False) -> Tensor:
        return self._rebuilt(start, stop, trim, None)

    def _block(self, start: int, stop: int, trim: bool) -> Tensor:
        return self._rebuilt(start, stop, trim, self.buffer)

    def _rebuilt(self, start: int, stop: int, trim: bool, buffer: BlockBuffer | None) -> Tensor:
        """Rows ``exp(s - lse)``; keys a causal row cannot see are not computed, only zero-padded (unless trim)."""
        block = self.scores(start, stop, self._key_stop(stop), self._normalisers(start, stop), buffer).exp_()
        return self._widened(block, trim)

    def row_entropies(self, rows: Tensor, first: int, batch_row: int, attended: Tensor | None = None) -> Tensor:
        """From ``log A[t, j] = s[t, j] - lse_t`` and ``sum_j A[t, j] = 1``: ``H_t = lse_t - scale q_t . (A K)_t``
        (minus ``sum_j A[t, j] mask[t, j]`` where the mask has finite biases), so no logarithm of an entry is taken
        and no entry is read: one ``[r, W] x [W, d]`` product, none when ``attended = A K`` is given."""
        stop, width = first + rows.shape[-2], rows.shape[-1]
        if attended is None:
            attended = self.attended_rows(rows, first, batch_row)
        query = self.query[batch_row, :, first:stop].double() * self.scale
        entropy = self._normalisers(first, stop)[batch_row].double() - (query * attended).sum(-1)
        if self._has_bias and self.mask is not None:  # (a bias implies a mask)
            mask = self.mask[min(batch_row, self.mask.shape[0] - 1), :, first:stop, :width]
            entropy -= (rows * torch.where(rows > 0, mask, 0.0)).sum(-1, dtype=torch.float64)
        return entropy

    @property
    def _has_bias(self) -> bool:
        """Whether the additive mask holds finite values other than 0 (biases, not just allowed/blocked keys)."""
        if self._bias is None:
            self._bias = self.mask is not None and bool((self.mask.isfinite() & (self.mask != 0)).any())
        return self._bias

    def columns(self, keys: Tensor) -> Tensor:
        keys = keys.to(self.key.device)
        logits = self.query.float() @ self.key[..., keys, :].float().transpose(-1, -2) * self.scale
        if self.mask is not None:
            logits = logits + self.mask[..., keys]
        if self.causal:
            rows = torch.arange(self.n_queries, device=logits.device)[:, None] + self.query_offset
            logits = logits.masked_fill(keys[None, :] > rows, float("-inf"))
        return torch.exp(logits - self.logsumexp[..., None].float())


@dataclass(frozen=True)
class Streaming:
    """A reader that goes through (nearly) every pattern row asks for a streamed pass (:class:`StreamedAttention`);
    ``attended_keys``: it also reads ``A K`` per row (:meth:`AttentionView.attended_rows`)."""

    attended_keys: bool = False


class StreamedAttention(FusedAttention):
    """Fused attention computed from the row blocks its reader asks for, in one pass over ``q k^T``.

    A reader of every row would otherwise pay twice for the logits: once in the fused kernel (output and
    ``lse``) and once to rebuild the rows. Here a row block is computed once, whole, and serves both: its logits
    ``s`` give ``A = softmax(s)`` (torch's row-wise kernel, in place), the row maxima of ``s`` and of ``A``
    (``max_j A = 1 / z``) give ``lse = m + log z``, and the block's share of the layer's output is ``A V``
    (``A [V | K]`` with ``attended_keys``, so ``A K`` costs no second product). Rows the reader skips, and ``lse``
    when a method needs all of it (:meth:`columns`), are computed on demand; :meth:`finish` completes the output.
    """

    def __init__(self, layer: int, query: Tensor, key: Tensor, value: Tensor, scale: float, mask: Tensor | None,
                 causal: bool, block_bytes: int = DEFAULT_BLOCK_BYTES, attended_keys: bool = False,
                 buffer: BlockBuffer | None = None) -> None:
        lse = torch.full(query.shape[:3], float("nan"), dtype=torch.float32, device=query.device)
        super().__init__(layer, query, key, lse, scale, mask, causal, block_bytes, buffer)
        self.values = torch.cat([value, key], dim=-1) if attended_keys else value
        self.output = torch.empty((*query.shape[:3], self.values.shape[-1]), dtype=torch.float32, device=query.device)
        self.d_value = value.shape[-1]
        self._done = torch.zeros(self.n_queries, dtype=torch.bool)

    def _normalisers(self, start: int, stop: int) -> Tensor:
        self._complete(start, stop, None)  # rows no reader asked for yet (fresh memory: a reader may hold a block)
        return self._lse[..., start:stop]

    def _compute(self, start: int, stop: int, buffer: BlockBuffer | None) -> Tensor:
        """Rows ``[start, stop)``: their pattern (trimmed to the keys they see; in ``buffer``'s memory if given),
        ``lse`` and output share."""
        key_stop = self._key_stop(stop)
        block = self.scores(start, stop, key_stop, buffer=buffer)
        top = block.amax(-1, keepdim=True)
        torch.ops.aten._softmax.out(block, -1, False, out=block)  # in place, one cache-resident sweep per row
        # at a row's argmax A = exp(0) / z, so lse = m + log z = m - log max_j A
        self._lse[..., start:stop] = (top - block.amax(-1, keepdim=True).log()).squeeze(-1)
        self.output[..., start:stop, :] = block @ self.values[..., :key_stop, :].float()
        self._done[start:stop] = True
        return block

    def _rebuilt(self, start: int, stop: int, trim: bool, buffer: BlockBuffer | None) -> Tensor:
        if bool(self._done[start:stop].all()):  # computed before: rebuilt from lse like any fused row
            return super()._rebuilt(start, stop, trim, buffer)
        return self._widened(self._compute(start, stop, buffer), trim)

    def attended_rows(self, rows: Tensor, first: int, batch_row: int) -> Tensor:
        stop = first + rows.shape[-2]
        if self.values.shape[-1] > self.d_value and bool(self._done[first:stop].all()):
            return self.output[batch_row, :, first:stop, self.d_value:].float()
        return super().attended_rows(rows, first, batch_row)

    def _complete(self, start: int = 0, stop: int | None = None, buffer: BlockBuffer | None = None) -> None:
        """Compute the rows in ``[start, stop)`` that are not yet, in blocks (written into ``buffer`` if given)."""
        missing = (~self._done[start:stop]).nonzero().flatten().add(start).tolist()
        while missing:
            first = missing[0]
            last = min(first + self.block_rows(), missing[-1] + 1)
            self._compute(first, last, buffer)
            missing = [row for row in missing if row >= last]

    def finish(self) -> Tensor:
        """The layer's attention output ``[batch, head, n_queries, d]`` (the query's dtype), every row computed (the
        reader is done: the rest go through the block buffer)."""
        self._complete(buffer=self.buffer)
        return self.output[..., : self.d_value].to(self.query.dtype)


class DenseAttention(AttentionView):
    """A layer's attention from a materialised pattern (the eager ``hook_pattern`` path)."""

    def __init__(self, layer: int, pattern: Tensor, query: Tensor | None = None, key: Tensor | None = None,
                 block_bytes: int = DEFAULT_BLOCK_BYTES) -> None:
        self.layer, self.dense, self.query, self.key, self.block_bytes = layer, pattern, query, key, block_bytes
        self.batch_size, self.n_heads, self.n_queries, self.n_keys = pattern.shape

    def rows(self, start: int, stop: int, trim: bool = False) -> Tensor:
        return self.dense[..., start:stop, :].float()

    def columns(self, keys: Tensor) -> Tensor:
        return self.dense[..., keys.to(self.dense.device)].float()

    def block_rows(self) -> int:
        return self.n_queries  # already in memory: one block


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A boolean keep-mask (True = attend) as an additive float mask; float masks pass through."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))
    return mask.to(dtype)


def attention_with_logsumexp(query: Tensor, key: Tensor, value: Tensor, scale: float, causal: bool,
                             mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """``softmax(scale q k^T + mask) v`` and the row log-normalisers, from one fused kernel on CPU.

    ``query``/``key``/``value`` ``[batch, head, L, d]`` (KV already repeated). Returns
    ``(output [batch, head, n_queries, d], logsumexp [batch, head, n_queries] float32)``. Off CPU the
    output comes from ``scaled_dot_product_attention`` and ``lse`` from a blockwise pass over ``q k^T``.
    """
    if query.device.type == "cpu":
        output, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, 0.0, causal, attn_mask=mask, scale=scale)
        return output, lse
    output = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, is_causal=causal, scale=scale)
    probe = FusedAttention(-1, query, key, torch.zeros(query.shape[:-1], device=query.device), scale, mask, causal)
    lse = torch.cat([probe.scores(first, min(probe.n_queries, first + probe.block_rows())).logsumexp(-1)
                     for first in range(0, probe.n_queries, probe.block_rows())], dim=-1)
    return output, lse
