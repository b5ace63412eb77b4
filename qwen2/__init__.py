"""Qwen2.5 from scratch: model, config, checkpoint loading, tokenizer and sampler."""

from .config import Qwen2Config
from .model import KVCache, Qwen2
from .sampler import GREEDY, GenerationOutput, SamplingParams, generate, pad_batch
from .tokenizer import Tokenizer
from .weights import CheckpointError, load_model, save_model

__all__ = ["Qwen2Config", "Qwen2", "KVCache", "pad_batch", "load_model", "save_model", "CheckpointError", "generate",
           "GenerationOutput", "SamplingParams", "GREEDY", "Tokenizer"]
