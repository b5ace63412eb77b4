"""Qwen2 model configuration: a small dataclass read from a Hugging Face `config.json`.

Only the fields the architecture needs are kept; everything else in the JSON is ignored.
Both the classic form (`rope_theta`, `torch_dtype`) and the transformers-5 form
(`rope_parameters: {rope_theta: ...}`, `dtype`) are read. `from_name` gives the real shapes of
the Qwen2.5 and Qwen3 families so benchmarks and memory planning need no download.

Qwen3 (dense; `model_type: qwen3`) is the same model with three config differences: `qk_norm`
(an RMSNorm over head_dim on each head's query and key, before RoPE), `attention_bias` false (no
bias on q/k/v; Qwen2's is always there) and an explicit `head_dim` that need not be
hidden_size / num_attention_heads (Qwen3-0.6B: 16 heads of 128 on a hidden size of 1024).

Simplifications: no rope scaling (YaRN) and no sliding-window attention; every Qwen2.5 and Qwen3
checkpoint ships with both off, and a config that turns them on is rejected with a clear error.
Qwen3's mixture-of-experts models (`qwen3_moe`) are another architecture and are refused.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError, MissingInput


@dataclass
class Qwen2Config:
    vocab_size: int = 151936
    hidden_size: int = 896
    intermediate_size: int = 4864
    num_hidden_layers: int = 24
    num_attention_heads: int = 14
    num_key_value_heads: int = 2
    head_dim: int = 0  # 0 = derived: hidden_size // num_attention_heads
    max_position_embeddings: int = 32768
    rope_theta: float = 1000000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    torch_dtype: str = "bfloat16"  # dtype the checkpoint is stored in
    bos_token_id: int | None = 151643
    eos_token_id: int | list[int] | None = 151645
    attention_bias: bool = True  # a bias on q/k/v: Qwen2 always, Qwen3 not (see o_proj_bias)
    model_type: str = "qwen2"  # "qwen2" (Qwen2, Qwen2.5) or "qwen3" (Qwen3 dense): see qk_norm

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise InputError(f"model_type {self.model_type!r} is not supported: {' or '.join(map(repr, MODEL_TYPES))}")
        if self.model_type == "qwen2" and not self.attention_bias:
            raise InputError("attention_bias=False is a Qwen3 setting: Qwen2's q/k/v always have a bias")
        if self.head_dim == 0:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise InputError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )

    @property
    def qk_norm(self) -> bool:
        """Qwen3: each head's query and key go through an RMSNorm over head_dim before RoPE."""
        return self.model_type == "qwen3"

    @property
    def o_proj_bias(self) -> bool:
        """transformers' Qwen3 puts attention_bias on o_proj too (no released Qwen3 turns it on);
        Qwen2's o_proj never has a bias."""
        return self.model_type == "qwen3" and self.attention_bias

    @property
    def num_params(self) -> int:
        """Parameter count (tied embeddings counted once)."""
        C, F, D = self.hidden_size, self.intermediate_size, self.head_dim
        q, kv = self.num_attention_heads * D, self.num_key_value_heads * D
        attn = C * q + 2 * C * kv + q * C
        attn += (q + 2 * kv) * self.attention_bias + C * self.o_proj_bias + 2 * D * self.qk_norm
        block = attn + 3 * C * F + 2 * C
        head = 0 if self.tie_word_embeddings else self.vocab_size * C
        return self.vocab_size * C + self.num_hidden_layers * block + C + head

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "Qwen2Config":
        raw = dict(raw)
        model_type = raw.get("model_type")
        if model_type not in MODEL_TYPES:
            raise InputError(f"config.json has model_type={model_type!r}, not 'qwen2' or 'qwen3': this is not a "
                             "Qwen2/Qwen2.5 or dense Qwen3 checkpoint")
        if model_type == "qwen2":
            raw["attention_bias"] = True  # transformers' Qwen2 has no such setting: q/k/v always carry a bias
        else:  # what transformers' Qwen3Config assumes for a key a config.json leaves out
            for key, value in QWEN3_DEFAULTS.items():
                raw.setdefault(key, value)
        # transformers 5 moved rope_theta into rope_parameters and renamed torch_dtype to dtype.
        rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            raise InputError(f"rope scaling {rope!r} is not supported (only the default RoPE of Qwen2.5 and Qwen3)")
        if "rope_theta" in rope:
            raw.setdefault("rope_theta", rope["rope_theta"])
        if "dtype" in raw:
            raw.setdefault("torch_dtype", raw["dtype"])
        if raw.get("use_sliding_window") or any(t != "full_attention" for t in raw.get("layer_types") or ()):
            raise InputError("sliding-window attention (use_sliding_window=true) is not supported (Qwen2.5 and Qwen3 "
                             "checkpoints ship with it off)")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names and v is not None})

    @classmethod
    def from_json(cls, path: str | Path) -> "Qwen2Config":
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise MissingInput(f"{path} not found: run python download.py, or point to a Hugging Face checkpoint directory")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{path} is not valid JSON ({e}): re-run python download.py") from None
        return cls.from_dict(raw)

    def to_dict(self) -> dict[str, Any]:
        """The Hugging Face `config.json` form, loadable by transformers' Qwen2ForCausalLM or
        Qwen3ForCausalLM (by model_type)."""
        d = dataclasses.asdict(self)
        if self.model_type == "qwen2":
            del d["attention_bias"]  # not a Qwen2 setting (always true)
        d.update(
            architectures=["Qwen3ForCausalLM" if self.model_type == "qwen3" else "Qwen2ForCausalLM"],
            hidden_act="silu",
            attention_dropout=0.0,
            use_sliding_window=False,
            sliding_window=None,
            max_window_layers=self.num_hidden_layers,
            rope_scaling=None,
            use_cache=True,
        )
        return d

    @classmethod
    def from_name(cls, name: str) -> "Qwen2Config":
        """Real shapes of a Qwen2.5 or Qwen3 checkpoint, e.g. "Qwen2.5-3B-Instruct", "Qwen/Qwen2.5-0.5B",
        "Qwen3-4B" or "Qwen3-8B-Base"."""
        key = name.split("/")[-1].removesuffix("-Instruct")
        base = key.startswith("Qwen3-") and key.endswith("-Base")
        key = key.removesuffix("-Base") if base else key
        if key not in PRESETS:
            valid = ", ".join(sorted(PRESETS))
            raise InputError(f"unknown model name {name!r}; known: {valid} (Qwen2.5 optionally with -Instruct, "
                             "Qwen3 with -Base)")
        # Qwen3's pretrained (-Base) checkpoints: a 32k context and <|endoftext|> as their end of text.
        return cls(**{**PRESETS[key], **(dict(max_position_embeddings=32768, eos_token_id=151643) if base else {})})


MODEL_TYPES = ("qwen2", "qwen3")
# transformers' Qwen3Config defaults for keys a config.json may leave out (every Qwen3 checkpoint states them).
QWEN3_DEFAULTS = dict(head_dim=128, attention_bias=False, tie_word_embeddings=False)


def _preset(C: int, F: int, L: int, H: int, KV: int, tied: bool, vocab: int = 151936, **kw: Any) -> dict[str, Any]:
    return dict(hidden_size=C, intermediate_size=F, num_hidden_layers=L, num_attention_heads=H,
                num_key_value_heads=KV, tie_word_embeddings=tied, vocab_size=vocab, **kw)


def _qwen3(C: int, F: int, L: int, H: int, tied: bool, **kw: Any) -> dict[str, Any]:
    """Every dense Qwen3: 8 KV heads of 128, no q/k/v bias, 40k positions, rope_theta 1e6, eps 1e-6."""
    kw = {"max_position_embeddings": 40960, **kw}
    return _preset(C, F, L, H, 8, tied, head_dim=128, attention_bias=False, model_type="qwen3", **kw)


# From the config.json files of the Qwen/Qwen2.5-* repositories on the Hugging Face Hub.
PRESETS: dict[str, dict[str, Any]] = {
    "Qwen2.5-0.5B": _preset(896, 4864, 24, 14, 2, True),
    "Qwen2.5-1.5B": _preset(1536, 8960, 28, 12, 2, True),
    "Qwen2.5-3B": _preset(2048, 11008, 36, 16, 2, True),
    "Qwen2.5-7B": _preset(3584, 18944, 28, 28, 4, False, vocab=152064),
    "Qwen2.5-14B": _preset(5120, 13824, 48, 40, 8, False, vocab=152064),
    "Qwen2.5-Math-1.5B": _preset(1536, 8960, 28, 12, 2, True, rope_theta=10000.0, max_position_embeddings=4096),
    # From the config.json files of the Qwen/Qwen3-* repositories (the post-trained, thinking ones).
    "Qwen3-0.6B": _qwen3(1024, 3072, 28, 16, True),
    "Qwen3-1.7B": _qwen3(2048, 6144, 28, 16, True),
    "Qwen3-4B": _qwen3(2560, 9728, 36, 32, True),
    "Qwen3-8B": _qwen3(4096, 12288, 36, 32, False),
    "Qwen3-14B": _qwen3(5120, 17408, 40, 40, False),
    # The July 2025 4B updates: the same shapes, a 256k context and rope_theta 5e6.
    "Qwen3-4B-Instruct-2507": _qwen3(2560, 9728, 36, 32, True, max_position_embeddings=262144, rope_theta=5e6),
    "Qwen3-4B-Thinking-2507": _qwen3(2560, 9728, 36, 32, True, max_position_embeddings=262144, rope_theta=5e6),
}
