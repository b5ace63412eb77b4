"""Qwen2.5 in one file: the model top to bottom, and loading a real checkpoint.

    python learn/model.py                     # a tiny random model: save, load, check padding
    python learn/model.py CHECKPOINT_DIR      # a real one (config.json + *.safetensors), e.g.
                                              # checkpoints/Qwen2.5-0.5B-Instruct from download.py

A decoder-only transformer. Token ids become vectors (an embedding), L identical blocks refine
them, and a last linear layer (the "LM head") turns each position's vector into logits over the
vocabulary: the model's guess for the *next* token. Each block is

    x = x + Attention(RMSNorm(x))      # tokens read earlier tokens
    x = x + MLP(RMSNorm(x))            # each token is transformed on its own

What Qwen2.5 picks among the variants: RMSNorm, rotary position embeddings (RoPE), grouped-query
attention (few key/value heads shared by many query heads) with a bias on q/k/v, a SwiGLU MLP, and
for the small models an LM head tied to the embedding. Parameter names are exactly Hugging Face's
(`model.layers.0.self_attn.q_proj.weight`), so a checkpoint loads with a plain `load_state_dict`.
Qwen3 adds one thing to this file: an RMSNorm over head_dim on q and on k (q_norm, k_norm) before
RoPE; it drops the q/k/v bias and reads head_dim from the config instead of hidden / heads.

What this file leaves out, and where the trainer does it:
  * fast attention: here the scores are a plain (T x S) matrix; qwen2/attention.py calls PyTorch's
    fused kernel (SDPA) and shares key/value heads without copying them
  * packed training rows [prompt | c_1 | ... | c_G], one prompt for its G completions:
    qwen2/shared_prefix.py, qwen2/layout.py (here: one left-padded row per sequence)
  * frequencies computed once (qwen2/model.py `Rotary`); a preallocated KV cache (qwen2/kv_cache.py)
  * careful loading: names and shapes checked before reading, sharded saving (qwen2/weights.py);
    LoRA (qwen2/lora.py); activation checkpointing and FSDP (grpo/machinery/runtime.py, distributed.py)
  * config checks (rope scaling, sliding window: qwen2/config.py); the tokenizer (qwen2/tokenizer.py)
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn


@dataclass
class Config:
    """The numbers in a checkpoint's config.json that the architecture needs (Qwen2.5-0.5B's here)."""

    vocab_size: int = 151936
    hidden_size: int = 896  # C: the width of every token's vector
    intermediate_size: int = 4864  # F: the MLP's inner width
    num_hidden_layers: int = 24  # L
    num_attention_heads: int = 14  # H query heads ...
    num_key_value_heads: int = 2  # ... sharing Hkv key/value heads (grouped-query attention)
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True  # the LM head reuses the embedding matrix

    @property
    def head_dim(self) -> int:  # D
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_json(cls, path: Path) -> Config:
        raw = json.loads(Path(path).read_text())
        if "rope_theta" not in raw:  # transformers 5 moved it into "rope_parameters"
            raw["rope_theta"] = raw.get("rope_parameters", {}).get("rope_theta", cls.rope_theta)
        return cls(**{f.name: raw[f.name] for f in fields(cls) if raw.get(f.name) is not None})


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * w: LayerNorm without the mean and the bias."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x = x.float()  # the statistics in fp32, even for bf16 activations
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope(x: Tensor, positions: Tensor, theta: float) -> Tensor:
    """Rotary position embedding of x (B, heads, T, D) at `positions` (B, T).

    Dimensions i and i + D/2 form a pair (the "rotate half" layout of Hugging Face's Qwen2), and
    pair i turns by the angle  position * theta^(-2i/D):  low pairs spin fast, high ones slowly.
    Rotating q and k by their own positions makes q . k depend on how far apart they are only.
    """
    D = x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, D, 2, device=x.device).float() / D)  # (D/2,)
    angles = positions.float()[..., None] * inv_freq  # (B, T, D/2), in fp32: bf16 positions lose digits
    angles = torch.cat([angles, angles], dim=-1)[:, None]  # (B, 1, T, D): both halves of a pair, all heads
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    # The 2-D rotation of each pair (x1, x2):  (x1 cos - x2 sin,  x2 cos + x1 sin)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def causal_padding_mask(key_is_real: Tensor, T: int) -> Tensor:
    """Which keys each of the last T queries may attend to: (B, 1, T, S) bool, from (B, S) 1 = real token.

    Query i of the T new tokens sits at column past + i (past = S - T keys were cached before). It
    sees key j when j <= past + i (causal: nothing from the future) and key j is a real token (not
    left padding). A padding query would then see nothing at all, and softmax over only -inf is
    0/0 = NaN, which later layers would spread through 0 * NaN; so every query also sees itself.
    Padding outputs are never used.
    """
    S = key_is_real.shape[1]
    q_col = torch.arange(S - T, S, device=key_is_real.device)[:, None]  # (T, 1)
    k_col = torch.arange(S, device=key_is_real.device)[None, :]  # (1, S)
    allowed = (k_col <= q_col) & key_is_real[:, None, :].bool()  # (B, T, S): causal and not padding
    return (allowed | (k_col == q_col))[:, None]  # (B, 1, T, S): the same for every head


class Attention(nn.Module):
    """Grouped-query self-attention: H query heads, Hkv key/value heads, each read by H / Hkv queries."""

    def __init__(self, cfg: Config, layer: int):
        super().__init__()
        self.layer, self.cfg = layer, cfg
        C, D, H, Hkv = cfg.hidden_size, cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
        self.q_proj = nn.Linear(C, H * D, bias=True)  # Qwen2 has a bias on q, k, v (Qwen3 does not)
        self.k_proj = nn.Linear(C, Hkv * D, bias=True)
        self.v_proj = nn.Linear(C, Hkv * D, bias=True)
        self.o_proj = nn.Linear(H * D, C, bias=False)

    def forward(self, x: Tensor, positions: Tensor, mask: Tensor, cache=None) -> Tensor:
        B, T, _ = x.shape
        D, H, Hkv = self.cfg.head_dim, self.cfg.num_attention_heads, self.cfg.num_key_value_heads
        q = self.q_proj(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.v_proj(x).view(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)
        # (Qwen3: q, k = q_norm(q), k_norm(k) here, an RMSNorm over D.)
        q, k = rope(q, positions, self.cfg.rope_theta), rope(k, positions, self.cfg.rope_theta)
        if cache is not None:  # decoding: keep these keys/values, attend to all of them (learn/sampler.py)
            k, v = cache.update(self.layer, k, v)  # (B, Hkv, S, D), S = cached + T
        # Grouped-query: query head h reads key/value head h // (H / Hkv). Repeat them to line up.
        k, v = k.repeat_interleave(H // Hkv, dim=1), v.repeat_interleave(H // Hkv, dim=1)  # (B, H, S, D)
        # softmax(q k^T / sqrt(D)) v, with the forbidden keys at -inf before the softmax (weight 0).
        scores = q @ k.transpose(-2, -1) / math.sqrt(D)  # (B, H, T, S)
        scores = scores.masked_fill(~mask, float("-inf"))
        y = scores.float().softmax(dim=-1).to(v.dtype) @ v  # (B, H, T, D)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, H * D))  # heads side by side, mixed: (B, T, C)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)). The gate decides, per inner unit, how much of up(x) passes."""

    def __init__(self, cfg: Config):
        super().__init__()
        C, Fdim = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = nn.Linear(C, Fdim, bias=False)
        self.up_proj = nn.Linear(C, Fdim, bias=False)
        self.down_proj = nn.Linear(Fdim, C, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # silu(z) = z * sigmoid(z)


class Block(nn.Module):
    """Pre-norm residual block: each half adds its output to the stream x."""

    def __init__(self, cfg: Config, layer: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: Tensor, positions: Tensor, mask: Tensor, cache=None) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), positions, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Body(nn.Module):
    """Embedding, blocks, final norm: Hugging Face calls it `model`, hence the names `model.layers.0...`."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Qwen2(nn.Module):
    """Qwen2ForCausalLM: token ids (B, T) -> next-token logits (B, T, vocab)."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.model = Body(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:  # logits = h . embedding of each token: one matrix, read both ways
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, cache=None) -> Tensor:
        """Logits (B, T, V) of T new tokens per row.

        attention_mask (B, S): 1 on real tokens, 0 on left padding, over the cached tokens and these
        T (S = cached + T; None: all real). `cache` (learn/sampler.py) keeps keys/values for decoding.
        """
        B, T = input_ids.shape
        past = cache.length if cache is not None else 0  # tokens already in the cache
        if attention_mask is None:
            attention_mask = torch.ones(B, past + T, dtype=torch.long, device=input_ids.device)
        # A token's position is the number of real tokens before it, so left padding shifts nothing:
        # a prompt gets the same positions alone or padded in a batch.
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]  # (B, T)
        mask = causal_padding_mask(attention_mask, T)  # (B, 1, T, S): who sees whom
        x = self.model.embed_tokens(input_ids)  # (B, T, C)
        for block in self.model.layers:
            x = block(x, positions, mask, cache)
        return self.lm_head(self.model.norm(x))  # (B, T, V)


def random_model(cfg: Config, seed: int = 0, std: float = 0.02) -> Qwen2:
    """A randomly initialised model (what training from scratch starts from)."""
    torch.manual_seed(seed)
    model = Qwen2(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:  # weight matrices and the embedding; norms stay 1, biases 0
                p.normal_(0.0, std)
            elif name.endswith("bias"):
                p.zero_()
    return model


def save(model: Qwen2, path: str | Path) -> None:
    """A Hugging Face checkpoint directory: config.json + model.safetensors (the tied head once)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.cfg.tie_word_embeddings:
        state.pop("lm_head.weight")
    (path / "config.json").write_text(json.dumps({"model_type": "qwen2", **asdict(model.cfg)}, indent=2))
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})


def load(path: str | Path, dtype: torch.dtype | None = None) -> Qwen2:
    """A Hugging Face Qwen2 checkpoint directory: config.json and model.safetensors, or the shards
    model-0000i-of-0000n.safetensors of a big one. dtype None keeps the stored one (bf16 for Qwen)."""
    path = Path(path)
    cfg = Config.from_json(path / "config.json")
    with torch.device("meta"):  # shapes only, no memory and no random init: the weights come next
        model = Qwen2(cfg)
    state = {}
    for file in sorted(path.glob("model*.safetensors")):
        state.update(load_file(file))  # tensor name -> tensor, names as in our modules
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # some exporters write the tied copy too
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)  # assign: take these tensors
    missing = [m for m in missing if not (cfg.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"{path}: missing tensors {missing[:3]}, unexpected {unexpected[:3]}")
    if cfg.tie_word_embeddings:  # assign replaced the embedding's tensor: tie the head to it again
        model.lm_head.weight = model.model.embed_tokens.weight
    return (model if dtype is None else model.to(dtype)).eval()


def main(argv: list[str]) -> None:
    torch.manual_seed(0)
    if argv:  # a real checkpoint: the most likely next tokens after a text
        from tokenizers import Tokenizer

        model = load(argv[0], torch.float32)
        tok = Tokenizer.from_file(str(Path(argv[0]) / "tokenizer.json"))
        text = argv[1] if len(argv) > 1 else "The capital of France is"
        logits = model(torch.tensor([tok.encode(text).ids]))[0, -1]
        top = logits.softmax(-1).topk(5)
        print(f"{text!r} ->", ", ".join(f"{tok.decode([int(i)])!r} {p:.2f}" for p, i in zip(top.values, top.indices)))
        return
    cfg = Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0)
    model = random_model(cfg).eval()
    print(f"a random Qwen2: {sum(p.numel() for p in model.parameters()):,} parameters, {cfg}")
    with tempfile.TemporaryDirectory() as tmp:  # save and load it as a Hugging Face checkpoint
        save(model, tmp)
        loaded = load(tmp)
    a, b = torch.randint(0, 256, (7,)), torch.randint(0, 256, (4,))
    alone = [model(a[None])[0], model(b[None])[0]]  # (T, V) each, the original model
    ids = torch.stack([a, torch.cat([torch.zeros(3, dtype=torch.long), b])])  # b left-padded to 7
    mask = torch.tensor([[1] * 7, [0] * 3 + [1] * 4])
    batch = loaded(ids, mask)  # (2, 7, V), the loaded one
    same = max((alone[0] - batch[0]).abs().max(), (alone[1] - batch[1, 3:]).abs().max())
    print(f"saved, loaded, run on a left-padded batch (logits {tuple(batch.shape)}): "
          f"max |logit difference| to each row alone {same:.1e}")


if __name__ == "__main__":
    with torch.no_grad():
        main(sys.argv[1:])
