"""How the tokens of one forward pass see each other: the `layout` argument of `Qwen2.forward`.

A layout answers the two questions attention asks about a batch: where each token sits (its
position id, which RoPE turns into a rotation) and which keys each query may look at. The caller
builds the layout; the model only reads it: `forward` runs embed, rope, blocks, norm, and each
attention layer hands its queries, keys and values to `layout.attend(layer, q, k, v)`.

    Causal        rows of real tokens only: plain causal attention (SDPA's fastest path)
    Padded        left-padded rows and their attention mask (prompts of different lengths)
    CachedTokens  new tokens appended to a KV cache, attending to all cached ones (kv_cache.py)
    PrefixBlocks  rows packed as [prompt | c_1 | ... | c_G] for training (shared_prefix.py)

Whatever depends on the data (is there padding at all? how long is each completion?) is decided
when the layout is built, from lengths the caller holds on the host, so a forward pass never reads
a number back from the device: no host syncs, and the same code runs on the meta device, where
the memory tracer of `train.py --dry-run --trace` follows it without allocating anything.

Padding convention: rows are left-padded (qwen2.sampler.pad_batch), the attention mask is 1 on real
tokens, and positions count real tokens only (as transformers' `generate` does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from .attention import attention


class Layout(Protocol):
    """What `Qwen2.forward` needs to know about how its tokens see each other."""

    positions: Tensor  # (B, T) position id of every token

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Attention output (B, H, T, D) of one layer's queries (B, H, T, D) and this pass's keys
        and values (B, Hkv, T, D)."""
        ...


@dataclass
class Causal:
    """Every row is real tokens only: token t sees tokens 0..t of its row."""

    positions: Tensor  # (B, T)

    @classmethod
    def of(cls, input_ids: Tensor) -> Causal:
        B, T = input_ids.shape
        return cls(torch.arange(T, device=input_ids.device).expand(B, T))

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return attention(q, k, v, None)


def padding_positions(attention_mask: Tensor, seen: Tensor | int = 0) -> Tensor:
    """Position ids (B, T): the number of real tokens before each one (+ `seen` earlier ones).

    Pads get a clamped, meaningless position; their outputs are never used.
    """
    return (seen + attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def causal_padding_mask(key_is_real: Tensor, start: int, T: int) -> Tensor:
    """Boolean (B, 1, T, S) attention mask, True = may attend, for T queries at positions start..start+T-1.

    A query sees the real keys at or before its own position (causal, no padding). A left-pad
    query sees no real key at all; letting it see itself keeps SDPA free of NaNs (0/0), which
    would otherwise leak into later layers through 0 * NaN. Its output is never used.
    """
    S = key_is_real.shape[1]
    q_pos = torch.arange(start, start + T, device=key_is_real.device)[:, None]  # (T, 1)
    k_pos = torch.arange(S, device=key_is_real.device)  # (S,)
    mask = (q_pos >= k_pos) & key_is_real[:, None, :]  # (B, T, S)
    return (mask | (q_pos == k_pos))[:, None]


@dataclass
class Padded:
    """Left-padded rows: each real token sees the real tokens at or before it in its row."""

    positions: Tensor  # (B, T)
    mask: Tensor  # (B, 1, T, T), True = may attend
    real: Tensor  # (B, T) True on real tokens

    @classmethod
    def of(cls, attention_mask: Tensor) -> Padded:
        """From an attention mask (B, T), 1 on real tokens."""
        real = attention_mask.bool()
        return cls(padding_positions(real), causal_padding_mask(real, 0, real.shape[1]), real)

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return attention(q, k, v, self.mask)


def rows_layout(attention_mask: Tensor, padded: bool) -> Causal | Padded:
    """The layout of rows with this attention mask; `padded` (known on the host from the lengths)
    False means no row has padding, so plain causal attention, SDPA's fastest path, applies."""
    return Padded.of(attention_mask) if padded else Causal.of(attention_mask)
