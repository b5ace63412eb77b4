"""Qwen2 / Qwen2.5 in plain PyTorch, top to bottom: RMSNorm, RoPE, attention masks of padded rows,
KV cache, attention, MLP, block, model (the config is in config.py; rows packed as
[prompt | c_1 | c_2 | ...] for training are laid out in shared_prefix.py).

A decoder-only transformer. Each of the L blocks does
    x = x + Attention(RMSNorm(x))      # tokens look at earlier tokens
    x = x + MLP(RMSNorm(x))            # each token is transformed on its own
and a final RMSNorm + linear "LM head" turns every position into logits over the vocabulary.
Qwen2 specifics: grouped-query attention (few key/value heads shared by many query heads) with a
bias on q/k/v, rotary position embeddings in the "rotate half" layout, SwiGLU MLP, RMSNorm computed
in fp32, and (for the small models) an LM head tied to the token embedding.

Parameter names are exactly Hugging Face's (`model.layers.0.self_attn.q_proj.weight`, ...), so an
official checkpoint loads with a plain `load_state_dict` (see weights.py).

Padding convention: batches are left-padded (qwen2.sampler.pad_batch), `attention_mask` is 1 on
real tokens, and positions count real tokens only (as transformers' `generate` does). `forward`
returns logits; log-probs, losses and activation checkpointing belong to the trainer (grpo/).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import attention
from .config import Qwen2Config
from .shared_prefix import PrefixBlocks, shared_prefix_layout

__all__ = ["Qwen2Config", "RMSNorm", "KVCache", "Attention", "MLP", "Block", "Qwen2Model", "Qwen2"]


class RMSNorm(nn.Module):
    """x / rms(x) * weight, with the statistics in fp32 even for bf16 activations."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_cos_sin(position_ids: Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos/sin tables for rotary embeddings at the given positions, each (B, T, head_dim).

    Pair i of a head rotates by angle position * theta^(-2i/head_dim): low dimensions spin fast,
    high ones slowly. Computed in fp32 (positions up to 32k lose precision in bf16), then cast.
    """
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=position_ids.device).float() / head_dim)
    angles = position_ids.float()[..., None] * inv_freq  # (B, T, D/2)
    angles = torch.cat([angles, angles], dim=-1)  # (B, T, D): "rotate half" layout, as in HF
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each (x_i, x_{i+D/2}) pair of x (B, H, T, D) by its position's angle."""
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


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


def padding_positions(attention_mask: Tensor, seen: Tensor | int = 0) -> Tensor:
    """Position ids (B, T): the number of real tokens before each one (+ `seen` earlier ones).

    Pads get a clamped, meaningless position; their outputs are never used.
    """
    return (seen + attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class KVCache:
    """Keys/values of every layer for a batch being decoded, and the bookkeeping that goes with them.

    Shape (layers, B, kv_heads, max_len, head_dim), preallocated. All rows share one write
    position `length` (prompts are left-padded); `key_mask` remembers which cached positions hold
    real tokens and `num_real` how many real tokens each row has seen (the next position id).
    A forward pass over T new tokens uses it in three steps:
        positions, mask = cache.begin(attention_mask)   # where the new tokens sit, what they see
        k, v = cache.update(layer, k, v)                 # once per layer: append, read all so far
        cache.advance(attention_mask)                    # after the last layer: T tokens are in
    """

    def __init__(self, config: Qwen2Config, batch_size: int, max_len: int, *, dtype: torch.dtype, device: torch.device | str):
        shape = (config.num_hidden_layers, batch_size, config.num_key_value_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.key_mask = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)
        self.num_real = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def begin(self, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Record which of the T new tokens (B, T) are real; return their position ids (B, T) and
        the attention mask (B, 1, T, length + T) over everything cached so far plus themselves."""
        T = attention_mask.shape[1]
        if self.length + T > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {self.length} used, {T} more requested")
        self.key_mask[:, self.length:self.length + T] = attention_mask
        positions = padding_positions(attention_mask, self.num_real[:, None])
        return positions, causal_padding_mask(self.key_mask[:, :self.length + T], self.length, T)

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write this step's k/v (B, Hkv, T, D) of one layer; return all cached k/v so far."""
        end = self.length + k.shape[2]
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, attention_mask: Tensor) -> None:
        """The new tokens are in every layer: move the write position past them."""
        self.length += attention_mask.shape[1]
        self.num_real += attention_mask.sum(-1)

    def select(self, rows: Tensor) -> None:
        """Keep only `rows` (a LongTensor of batch indices, repeats allowed), in that order.

        Used to drop finished rows and to fan one prefilled prompt out to G samples.
        """
        # Copy only the filled part into a fresh buffer, so memory follows the live rows. The rest
        # stays uninitialised: positions past `length` are written before they are ever read.
        k, v = self.k, self.v
        self.k = torch.empty((k.shape[0], len(rows), *k.shape[2:]), dtype=k.dtype, device=k.device)
        self.v = torch.empty_like(self.k)
        self.k[:, :, :, :self.length] = k[:, rows, :, :self.length]
        self.v[:, :, :, :self.length] = v[:, rows, :, :self.length]
        self.key_mask = self.key_mask[rows]
        self.num_real = self.num_real[rows]


class Attention(nn.Module):
    """Grouped-query self-attention: H query heads share Hkv key/value heads (H/Hkv each)."""

    def __init__(self, config: Qwen2Config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        C, q_dim, kv_dim = config.hidden_size, self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        self.q_proj = nn.Linear(C, q_dim, bias=True)
        self.k_proj = nn.Linear(C, kv_dim, bias=True)
        self.v_proj = nn.Linear(C, kv_dim, bias=True)
        self.o_proj = nn.Linear(q_dim, C, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | PrefixBlocks | None,
                cache: KVCache | None) -> Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # (B, Hkv, S, D), S = cached + T
        if isinstance(mask, PrefixBlocks):  # rows packed as [prompt | c_1 | c_2 | ...]: attention in blocks
            y = mask.attend(q, k, v)
        else:  # mask None means plain causal attention over x itself (no padding, no cache)
            y = attention(q, k, v, mask)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, H*D)
        return self.o_proj(y)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: Qwen2Config):
        super().__init__()
        C, Fdim = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(C, Fdim, bias=False)
        self.up_proj = nn.Linear(C, Fdim, bias=False)
        self.down_proj = nn.Linear(Fdim, C, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """Pre-norm transformer block with residual connections."""

    def __init__(self, config: Qwen2Config, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | PrefixBlocks | None,
                cache: KVCache | None) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen2Model(nn.Module):
    """Embedding + blocks + final norm: token ids (B, T) -> hidden states (B, T, C)."""

    def __init__(self, config: Qwen2Config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, cache: KVCache | None = None,
                segment_ids: Tensor | None = None) -> Tensor:
        """`attention_mask` (left-padded rows, optionally with a KV cache) or `segment_ids` (rows packed
        as [prompt | c_1 | c_2 | ...], see shared_prefix_layout) says how tokens see each other."""
        positions, mask = self.layout(input_ids, attention_mask, cache, segment_ids)
        x = self.embed_tokens(input_ids)  # (B, T, C)
        cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta, x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin, mask, cache)
        if cache is not None:
            cache.advance(attention_mask if attention_mask is not None else torch.ones_like(input_ids))
        return self.norm(x)

    @staticmethod
    def layout(input_ids: Tensor, attention_mask: Tensor | None, cache: KVCache | None,
               segment_ids: Tensor | None) -> tuple[Tensor, Tensor | PrefixBlocks | None]:
        """Position ids (B, T) and attention mask (None = plain causal: SDPA's fast path; packed
        rows: their attention blocks, qwen2/shared_prefix.py)."""
        if segment_ids is not None:
            return shared_prefix_layout(segment_ids)
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        if cache is not None:
            return cache.begin(mask)
        return padding_positions(mask), None if bool(mask.all()) else causal_padding_mask(mask, 0, input_ids.shape[1])


class Qwen2(nn.Module):
    """Qwen2ForCausalLM: hidden states -> logits over the vocabulary."""

    def __init__(self, config: Qwen2Config):
        super().__init__()
        self.config = config
        self.model = Qwen2Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, cache: KVCache | None = None,
                logits_to_keep: int = 0, segment_ids: Tensor | None = None,
                head: Callable[[Tensor], Any] | None = None) -> Any:
        """Logits (B, T, vocab); with logits_to_keep=n only for the last n positions (B, n, vocab).
        `head(hidden)` replaces the LM head (the trainer's chunked log-probs use self.lm_head there:
        calling it inside this forward lets a sharded model gather its weights, grpo/distributed.py)."""
        h = self.model(input_ids, attention_mask, cache, segment_ids)
        if head is not None:
            return head(h)
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        return self.lm_head(h)

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        p = self.lm_head.weight
        return KVCache(self.config, batch_size, max_len, dtype=p.dtype, device=p.device)

    def init_weights(self, std: float = 0.02, generator: torch.Generator | None = None) -> None:
        """Random init (normal for linears/embedding, ones for norms), for tests and tiny models."""
        for name, p in self.named_parameters():
            with torch.no_grad():
                if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                    p.fill_(1.0)
                elif name.endswith(".bias"):
                    p.zero_()
                else:
                    p.normal_(0.0, std, generator=generator)
