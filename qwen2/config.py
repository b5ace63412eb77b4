"""Qwen2 model configuration: a small dataclass read from a Hugging Face `config.json`.

Only the fields the architecture needs are kept; everything else in the JSON is ignored.
Both the classic form (`rope_theta`, `torch_dtype`) and the transformers-5 form
(`rope_parameters: {rope_theta: ...}`, `dtype`) are read. `from_name` gives the real shapes of
the Qwen2.5 family so benchmarks and memory planning need no download.

Simplifications: no rope scaling (YaRN) and no sliding-window attention; every Qwen2.5 checkpoint
ships with both off, and a config that turns them on is rejected with a clear error.
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

    def __post_init__(self) -> None:
        if self.head_dim == 0:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise InputError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )

    @property
    def num_params(self) -> int:
        """Parameter count (tied embeddings counted once)."""
        C, F, D = self.hidden_size, self.intermediate_size, self.head_dim
        q, kv = self.num_attention_heads * D, self.num_key_value_heads * D
        attn = (C * q + q) + 2 * (C * kv + kv) + q * C
        block = attn + 3 * C * F + 2 * C
        head = 0 if self.tie_word_embeddings else self.vocab_size * C
        return self.vocab_size * C + self.num_hidden_layers * block + C + head

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "Qwen2Config":
        raw = dict(raw)
        model_type = raw.get("model_type")
        if model_type != "qwen2":
            raise InputError(f"config.json has model_type={model_type!r}, not 'qwen2': this is not a Qwen2/Qwen2.5 checkpoint")
        # transformers 5 moved rope_theta into rope_parameters and renamed torch_dtype to dtype.
        rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            raise InputError(f"rope scaling {rope!r} is not supported (only the default RoPE of Qwen2.5)")
        if "rope_theta" in rope:
            raw.setdefault("rope_theta", rope["rope_theta"])
        if "dtype" in raw:
            raw.setdefault("torch_dtype", raw["dtype"])
        if raw.get("use_sliding_window"):
            raise InputError("use_sliding_window=true is not supported (Qwen2.5 checkpoints ship with it off)")
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
        """The Hugging Face `config.json` form, loadable by transformers' Qwen2ForCausalLM."""
        d = dataclasses.asdict(self)
        d.update(
            model_type="qwen2",
            architectures=["Qwen2ForCausalLM"],
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
        """Real shapes of a Qwen2.5 checkpoint, e.g. "Qwen2.5-3B-Instruct" or "Qwen/Qwen2.5-0.5B"."""
        key = name.split("/")[-1].removesuffix("-Instruct")
        if key not in PRESETS:
            valid = ", ".join(sorted(PRESETS))
            raise InputError(f"unknown model name {name!r}; known: {valid} (optionally with -Instruct)")
        return cls(**PRESETS[key])


def _preset(C: int, F: int, L: int, H: int, KV: int, tied: bool, vocab: int = 151936, **kw: Any) -> dict[str, Any]:
    return dict(hidden_size=C, intermediate_size=F, num_hidden_layers=L, num_attention_heads=H,
                num_key_value_heads=KV, tie_word_embeddings=tied, vocab_size=vocab, **kw)


# From the config.json files of the Qwen/Qwen2.5-* repositories on the Hugging Face Hub.
PRESETS: dict[str, dict[str, Any]] = {
    "Qwen2.5-0.5B": _preset(896, 4864, 24, 14, 2, True),
    "Qwen2.5-1.5B": _preset(1536, 8960, 28, 12, 2, True),
    "Qwen2.5-3B": _preset(2048, 11008, 36, 16, 2, True),
    "Qwen2.5-7B": _preset(3584, 18944, 28, 28, 4, False, vocab=152064),
    "Qwen2.5-14B": _preset(5120, 13824, 48, 40, 8, False, vocab=152064),
    "Qwen2.5-Math-1.5B": _preset(1536, 8960, 28, 12, 2, True, rope_theta=10000.0, max_position_embeddings=4096),
}
