"""The KV cache of a batch being decoded, and the layout of the tokens appended to it.

Generating token t+1 needs the new token's query against the keys and values of all earlier
tokens, so those are kept in a preallocated cache instead of being recomputed. The cache owns its
bookkeeping: where the next token is written (`length`), which cached positions hold real tokens
(`key_mask`: prompts are left-padded) and how many real tokens each row has seen (`num_real`, the
next position id). A forward pass over new tokens reads like this:

    logits = model(ids, cache.append(attention_mask))   # prefill: the left-padded prompts
    logits = model(tok[:, None], cache.append())        # decode: one real token per row

`append` returns a `CachedTokens` layout (layout.py): each attention layer writes its keys and
values into the cache and attends over everything cached so far; after the last layer the cache
moves its write position past the new tokens.

Simplification: all rows share one write position (left padding keeps them aligned), and the
length grows with every token. Dropping finished rows (`select` with fewer rows) moves the kept
ones to the front of the same buffers, so the memory of a rollout stays that of its first step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .attention import attention
from .config import Qwen2Config
from .layout import causal_padding_mask, padding_positions


class KVCache:
    """Keys/values of every layer, shape (layers, B, kv_heads, max_len, head_dim), preallocated."""

    def __init__(self, config: Qwen2Config, batch_size: int, max_len: int, *, dtype: torch.dtype,
                 device: torch.device | str):
        shape = (config.num_hidden_layers, batch_size, config.num_key_value_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.key_mask = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)
        self.num_real = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def append(self, attention_mask: Tensor | None = None) -> CachedTokens:
        """The layout of T new tokens (attention_mask (B, T), 1 = real; None: one real token per row)."""
        if attention_mask is None:
            attention_mask = torch.ones(self.batch_size, 1, dtype=torch.bool, device=self.key_mask.device)
        real = attention_mask.bool()
        T = real.shape[1]
        self.room(T)  # packs out masked positions when full (pushed turns leave padding), or raises
        self.key_mask[:, self.length:self.length + T] = real
        positions = padding_positions(real, self.num_real[:, None])
        return CachedTokens(self, positions, causal_padding_mask(self.key_mask[:, :self.length + T], self.length, T), real)

    def write(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write this pass's k/v (B, Hkv, T, D) of one layer; return all cached k/v so far."""
        end = self.length + k.shape[2]
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, real: Tensor) -> None:
        """The new tokens (B, T) are in every layer: move the write position past them."""
        self.length += real.shape[1]
        self.num_real += real.sum(-1)

    def room(self, needed: int) -> None:
        """Make room for `needed` more positions: when the cache is full, drop the masked positions
        (the padding that pushed turns leave in other rows) by packing each row's real positions to
        the right, left-padded."""
        if self.length + needed <= self.max_len:
            return
        real = self.key_mask[:, :self.length]
        keep = int(real.sum(1).max())
        if keep + needed > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {keep} real ones and {needed} more do not fit")
        for b in range(self.batch_size):  # host loop over rows: only when the cache is full
            where = real[b].nonzero()[:, 0]
            for buffer in (self.k, self.v):
                buffer[:, b, :, keep - len(where):keep] = buffer[:, b][:, :, where]  # (layers, heads, n, dim)
            self.key_mask[b, :keep] = False
            self.key_mask[b, keep - len(where):keep] = True
        self.key_mask[:, keep:] = False
        self.length = keep

    def select(self, rows: Tensor) -> None:
        """Keep only `rows` (a LongTensor of batch indices, repeats allowed), in that order.

        Used to drop finished rows (fewer rows: in place) and to fan one prefilled prompt out to G
        samples (more rows: new buffers).
        """
        n, length = len(rows), self.length
        k, v = self.k, self.v
        if n > self.batch_size:  # fan-out: new buffers (past `length`, written before they are ever read)
            self.k = torch.empty((k.shape[0], n, *k.shape[2:]), dtype=k.dtype, device=k.device)
            self.v = torch.empty_like(self.k)
        # One layer at a time: that layer's kept rows are gathered (a copy of 1/layers of the cache,
        # the only temporary) and written to the first n rows of the buffers. Dropping rows, those
        # are the same buffers, then viewed as their first n rows: gathering first makes any order
        # safe, and new buffers would hold the old and new caches at once (1.5x the cache, with a
        # whole gathered copy) at the rollout's fullest. The view keeps the batch stride, so
        # attention reads the same strided tensors as from a fresh buffer.
        for layer in range(k.shape[0]):
            self.k[layer, :n, :, :length] = k[layer, rows, :, :length]
            self.v[layer, :n, :, :length] = v[layer, rows, :, :length]
        self.k, self.v = self.k[:, :n], self.v[:, :n]
        self.key_mask = self.key_mask[rows]
        self.num_real = self.num_real[rows]


@dataclass
class CachedTokens:
    """Layout of tokens appended to a KV cache: they see every real cached token and themselves."""

    cache: KVCache
    positions: Tensor  # (B, T)
    mask: Tensor  # (B, 1, T, length + T)
    real: Tensor  # (B, T) which new tokens are real

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        k, v = self.cache.write(layer, k, v)  # (B, Hkv, length + T, D)
        y = attention(q, k, v, self.mask)
        if layer == self.cache.k.shape[0] - 1:  # the last layer has written: the tokens are in
            self.cache.advance(self.real)
        return y
