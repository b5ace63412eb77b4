"""Build a tiny Qwen2.5-style tokenizer for tests (pytest-free; import it from any test).

    from helpers_tokenizer import build_tiny_tokenizer
    tok = build_tiny_tokenizer(tmp_path / "tok")   # ~0.1 s, vocab 512, Qwen special tokens + chat template
"""

from __future__ import annotations

import random
from pathlib import Path

from qwen2.bpe_trainer import train_bpe_tokenizer
from qwen2.tokenizer import Tokenizer

_NAMES = ["Natalia", "Weng", "Betty", "Julie", "James", "Maria", "Tom", "Ken", "Alexis", "Mark"]
_ITEMS = ["clips", "apples", "books", "pages", "eggs", "marbles", "cookies", "dollars", "tickets", "pencils"]
_EXTRA = [
    "Let's think step by step.",
    "The answer is #### 42",
    "Café crème, naïve façade, señor — 50% off!",
    "你好，世界！这是一个数学问题。",
    "def f(x):\n    return x * 2\n",
]


def sample_texts(n: int = 400, seed: int = 0) -> list[str]:
    """Deterministic GSM8K-like lines with numbers, plus a few unicode/code lines."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
        a, b = rng.randint(1, 999), rng.randint(1, 99)
        lines.append(
            f"{name} has {a} {item}. She buys {b} more {item} and gives away {a // 3}. "
            f"How many {item} does {name} have now? {a} + {b} - {a // 3} = {a + b - a // 3}. #### {a + b - a // 3}"
        )
    return lines + _EXTRA * 3


def build_tiny_tokenizer(out_dir: str | Path, vocab_size: int = 512, n_texts: int = 400, seed: int = 0) -> Tokenizer:
    """Train and save a tiny tokenizer into out_dir (tokenizer.json + tokenizer_config.json); return it."""
    return train_bpe_tokenizer(sample_texts(n_texts, seed), out_dir, vocab_size=vocab_size)
