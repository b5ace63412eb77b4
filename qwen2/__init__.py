"""Qwen2.5 (and dense Qwen3) from scratch: model, config, checkpoint loading, tokenizer and sampler."""

from .config import Qwen2Config
from .kv_cache import KVCache
from .layout import Causal, Padded
from .model import Qwen2
from .sampler import GREEDY, GenerationOutput, SamplingParams, generate, pad_batch
from .tokenizer import Tokenizer
from .weights import CheckpointError, load_model, save_model

__all__ = ["Qwen2Config", "Qwen2", "KVCache", "Causal", "Padded", "pad_batch", "load_model", "save_model", "CheckpointError", "generate",
           "GenerationOutput", "SamplingParams", "GREEDY", "Tokenizer"]
