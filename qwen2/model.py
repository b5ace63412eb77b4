"""Qwen2 / Qwen2.5 in plain PyTorch, top to bottom: RMSNorm, RoPE, attention, MLP, block, model
(the config is in config.py; how tokens see each other, the `layout` argument, in layout.py).

A decoder-only transformer. Each of the L blocks does
    x = x + Attention(RMSNorm(x))      # tokens look at earlier tokens
    x = x + MLP(RMSNorm(x))            # each token is transformed on its own
and a final RMSNorm + linear "LM head" turns every position into logits over the vocabulary.
Qwen2 specifics: grouped-query attention (few key/value heads shared by many query heads) with a
bias on q/k/v, rotary position embeddings in the "rotate half" layout, SwiGLU MLP, RMSNorm computed
in fp32, and (for the small models) an LM head tied to the token embedding.
Qwen3 (dense), by config: per-head query/key RMSNorm before RoPE, no q/k/v bias, its own head_dim.

Parameter names are exactly Hugging Face's (`model.layers.0.self_attn.q_proj.weight`, ...), so an
official checkpoint loads with a plain `load_state_dict` (see weights.py).

`forward(input_ids, layout)` reads embed, rope, blocks, norm. The layout (layout.py) says where each
token sits and what it may attend to: plain causal rows (the default), left-padded rows, tokens
appended to a KV cache (kv_cache.py), or rows packed as [prompt | c_1 | c_2 | ...] (shared_prefix.py);
the caller builds it. `forward` returns logits and `hidden_states` the final-normed hidden states;
log-probs, losses and activation checkpointing belong to the trainer (grpo/).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import Qwen2Config
from .kv_cache import KVCache
from .layout import Causal, Layout

__all__ = ["Qwen2Config", "RMSNorm", "Rotary", "Attention", "MLP", "Block", "Qwen2Model", "Qwen2"]


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


class Rotary:
    """Rotary position embeddings: cos/sin of each position's angles, computed for the positions read.

    Pair i of a head rotates by angle position * theta^(-2i/head_dim): low dimensions spin fast,
    high ones slowly. The angles are computed in fp32 (positions up to 32k lose precision in bf16),
    then their cos/sin cast to the activations' dtype. Only the frequencies theta^(-2i/head_dim)
    (head_dim / 2 numbers) are kept, built on first use on each device, so a model built on the meta
    device and then loaded (weights.py), moved or sharded needs nothing re-initialised.
    Why not a table of every position: max_position_embeddings is 262144 for Qwen3-4B-2507, and
    fp32 cos and sin tables of 262144 x 128 are 268 MB per device, of which a GRPO step reads a few
    thousand rows. position * frequency is the same fp32 product either way, so the values are
    those a full table holds (tests/test_qwen3_plans.py), for every layout: padded, KV cache,
    compiled static decode (where the few elementwise ops fuse into the step), shared prefix.
    """

    def __init__(self, head_dim: int, theta: float, max_positions: int):
        self.head_dim, self.theta, self.max_positions = head_dim, theta, max_positions
        self._inv_freq: dict[torch.device, Tensor] = {}

    def inv_freq(self, device: torch.device) -> Tensor:
        """theta^(-2i/head_dim) for i < head_dim / 2, fp32 (head_dim / 2,)."""
        if device not in self._inv_freq:
            self._inv_freq[device] = 1.0 / self.theta ** (
                torch.arange(0, self.head_dim, 2, device=device).float() / self.head_dim)
        return self._inv_freq[device]

    def __call__(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos/sin at `positions` (B, T), each (B, T, head_dim) in `dtype`."""
        angles = positions.float()[..., None] * self.inv_freq(positions.device)  # (B, T, D/2), fp32
        angles = torch.cat([angles, angles], dim=-1)  # (B, T, D): "rotate half" layout, as in HF
        return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each (x_i, x_{i+D/2}) pair of x (B, H, T, D) by its position's angle."""
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


class Attention(nn.Module):
    """Grouped-query self-attention: H query heads share Hkv key/value heads (H/Hkv each).

    Every layout (plain, padded, KV cache, compiled decode, shared prefix) goes through this forward:
    projections, Qwen3's q/k norms and RoPE happen here; only `layout.attend` differs."""

    def __init__(self, config: Qwen2Config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        C, q_dim, kv_dim = config.hidden_size, self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        self.q_proj = nn.Linear(C, q_dim, bias=config.attention_bias)
        self.k_proj = nn.Linear(C, kv_dim, bias=config.attention_bias)
        self.v_proj = nn.Linear(C, kv_dim, bias=config.attention_bias)
        self.o_proj = nn.Linear(q_dim, C, bias=config.o_proj_bias)
        self.qk_norm = config.qk_norm
        if self.qk_norm:  # Qwen3: one RMSNorm (weight of head_dim) shared by all query heads, one by all key heads
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, layout: Layout) -> Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim)  # (B, T, H, D)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, Hkv, D)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, Hkv, D)
        if self.qk_norm:  # Qwen3: each head's query and key to unit RMS over head_dim, before RoPE
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = layout.attend(self.layer_idx, q, k, v)  # (B, H, T, D): which keys each query sees is the layout's
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


# The linear layers of a block, by their Hugging Face names (Attention's four, MLP's three): what LoRA
# may adapt (qwen2/lora.py) and what a 4-bit base stores quantised (qwen2/nf4.py).
BLOCK_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class Block(nn.Module):
    """Pre-norm transformer block with residual connections."""

    def __init__(self, config: Qwen2Config, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, layout: Layout) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, layout)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen2Model(nn.Module):
    """Embedding + blocks + final norm: token ids (B, T) -> hidden states (B, T, C)."""

    def __init__(self, config: Qwen2Config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = Rotary(config.head_dim, config.rope_theta, config.max_position_embeddings)

    def forward(self, input_ids: Tensor, layout: Layout | None = None) -> Tensor:
        """`layout` says how the tokens see each other (None: plain causal rows, no padding)."""
        layout = layout if layout is not None else Causal.of(input_ids)
        x = self.embed_tokens(input_ids)  # (B, T, C)
        cos, sin = self.rotary(layout.positions, x.dtype)  # (B, T, D) each
        for block in self.layers:
            x = block(x, cos, sin, layout)
        return self.norm(x)


class Qwen2(nn.Module):
    """Qwen2ForCausalLM (or Qwen3ForCausalLM, by config.model_type): hidden states -> logits over the vocabulary."""

    def __init__(self, config: Qwen2Config):
        super().__init__()
        self.config = config
        self.model = Qwen2Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: Tensor, layout: Layout | None = None, logits_to_keep: int = 0) -> Tensor:
        """Logits (B, T, vocab); with logits_to_keep=n only for the last n positions (B, n, vocab)."""
        h = self.model(input_ids, layout)
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        return self.lm_head(h)

    def hidden_states(self, input_ids: Tensor, layout: Layout | None = None) -> Tensor:
        """The final-normed hidden states (B, T, C), for callers that apply `lm_head` themselves (the
        trainer's chunked log-probs, grpo/logprobs.py, which never holds a micro-batch's full logits)."""
        return self.model(input_ids, layout)

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
