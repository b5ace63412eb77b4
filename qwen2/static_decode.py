"""The decode step with shapes that do not change from one token to the next, so that it can be
compiled once (`torch.compile`) and, on a GPU, replayed as CUDA graphs: what changes for
compilation, and why, in one place. `generate(..., compile=True)` uses it; everything else
(prefill, sampling, stop checks, compaction) is the eager sampler's own code (sampler.py).

Why: at GRPO batch sizes a decode step of a 0.5B-7B model is bound by launching ~20 small kernels
per layer and by Python, not by the GPU's arithmetic. A compiled graph fuses the kernels, and a CUDA
graph replays a whole step with one launch, but both need every tensor shape (and, for CUDA
graphs, every address) to stay the same between calls. The eager decode step (kv_cache.py) changes
three of them at every token; this module fixes each:

  eager (kv_cache.py)                           static (here)
  the cache grows: keys [0, length + 1)         keys over a fixed window of the cache: positions
                                                [0, window), the ones not written yet masked out
  the write position is a Python int           the write position is a tensor (`pos`), updated in place
  finished rows leave at once (select:          the live rows are padded up to a bucket size (1, 2, 4,
  new buffers, a new batch size)                8, then every 8): the shape changes only when the
                                                bucket shrinks, a few times per rollout
RoPE was already read from tables built once (model.py). The window is the whole cache on the CPU;
on a GPU it grows in steps of `WINDOW_STEP` positions, so early tokens do not read the whole cache.

The cache rows beyond the live ones (bucket padding) decode harmless copies; the sampler ignores
them and draws random numbers for the live rows only, so a seed gives the same tokens as the eager
path. Compiled kernels may round differently in the last bits (fused reductions), so logits agree
to ~1e-6, not bit for bit (tests/test_compile.py), and a sampled token at an exact tie may differ.

Simplifications: one shared write position for all rows (as in the eager cache); the compiled
function is built once per model and process (`compiled_step`) with dynamic shapes, so a new
bucket or window is not a recompile (on a GPU, a new CUDA graph capture). The static cache is
allocated per rollout (it takes over the eager cache's buffers when the rows are already a bucket)
and freed after it, so the update phase gets that memory back; the price is that each rollout
records its CUDA graphs anew (new buffer addresses), once per bucket and window it meets, where
gpt-fast and vLLM keep one cache for the life of the process and capture once. (torch 2.11 keeps
the old recordings and tries them before recording anew, a pointer check each: not yet measured on
a GPU over a long run.)
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .attention import attention
from .kv_cache import KVCache

WINDOW_STEP = 256  # on a GPU the attention window grows in steps of this many positions


def bucket(n: int) -> int:
    """The padded row count for n live rows: 1, 2, 4, 8, then the next multiple of 8 (as vLLM's
    CUDA-graph batch sizes)."""
    if n <= 8:
        return 1 << max(0, (n - 1).bit_length())
    return -(-n // 8) * 8


@dataclass
class StaticCache:
    """A KV cache whose shapes stay fixed while its bucket of rows does: (layers, rows, kv_heads,
    max_len, head_dim), the write position `pos` and each row's next position id `num_real` as
    tensors, `key_mask` marking real cached positions. Built from the prefilled eager cache."""

    k: Tensor
    v: Tensor
    key_mask: Tensor  # (rows, max_len)
    num_real: Tensor  # (rows,)
    pos: Tensor  # () the next write position, shared by all rows
    window: int  # attention reads positions [0, window)

    @classmethod
    def from_cache(cls, cache: KVCache, rows: Tensor | None, window: int) -> StaticCache:
        """The prefilled eager cache, its `rows` (repeats allowed) in that order; `rows=None` takes
        over the cache's own buffers (all its rows, already a bucket), which the eager cache must
        not be used after: no second copy of the whole cache on the device."""
        pos = torch.tensor(cache.length, device=cache.k.device)
        if rows is None:
            static = cls(cache.k, cache.v, cache.key_mask, cache.num_real, pos, window)
        else:
            static = cls(cache.k[:, rows].contiguous(), cache.v[:, rows].contiguous(),
                         cache.key_mask[rows].contiguous(), cache.num_real[rows].contiguous(), pos, window)
        # The eager cache leaves positions past its length uninitialised (it never reads them); the
        # static step reads the whole window, masked. A masked position still multiplies its value by
        # a zero weight, and 0 * NaN is NaN: whatever garbage sits there must be zeros.
        static.k[:, :, :, cache.length:] = 0
        static.v[:, :, :, cache.length:] = 0
        _static(static.k, static.v, static.key_mask, static.num_real, static.pos)
        return static

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def select(self, rows: Tensor) -> None:
        """Keep `rows` in that order (the live rows, padded to a bucket). In the same bucket the rows
        move within the same buffers, whose addresses a CUDA graph has recorded; a smaller bucket
        gets new, smaller buffers (and, on a GPU, its own graph)."""
        if len(rows) == self.k.shape[1]:
            for buffer in (self.k, self.v):
                buffer.copy_(buffer[:, rows])
            self.key_mask.copy_(self.key_mask[rows])
            self.num_real.copy_(self.num_real[rows])
        else:
            self.k, self.v = self.k[:, rows].contiguous(), self.v[:, rows].contiguous()
            self.key_mask, self.num_real = self.key_mask[rows].contiguous(), self.num_real[rows].contiguous()
            _static(self.k, self.v, self.key_mask, self.num_real)


def _static(*tensors: Tensor) -> None:
    """Tell the compiler these buffers keep their address from call to call: a CUDA graph then
    reads and writes them in place instead of copying them in and out at every replay."""
    for t in tensors:
        if t.device.type == "cuda":
            torch._dynamo.mark_static_address(t)


@dataclass
class StaticStep:
    """The layout (layout.py) of one decoded token per row of a StaticCache."""

    cache: StaticCache
    positions: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.positions = self.cache.num_real[:, None]  # (rows, 1): the new token's position id

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        c = self.cache
        at = c.pos.view(1)
        c.k[layer].index_copy_(2, at, k)  # write at the position held in a tensor: no host int
        c.v[layer].index_copy_(2, at, v)
        keys = c.key_mask[:, None, None, :c.window]  # (rows, 1, 1, window): real and already written
        return attention(q, c.k[layer, :, :, :c.window], c.v[layer, :, :, :c.window], keys)


def decode_step(model: torch.nn.Module, tok: Tensor, cache: StaticCache) -> Tensor:
    """Logits (rows, V) of the next token after `tok` (rows,) for every row; writes the cache.
    The eager sampler's `decode_one_token`, with the static layout: this is what gets compiled."""
    cache.key_mask.index_fill_(1, cache.pos.view(1), True)  # the new token is real
    logits = model(tok[:, None], StaticStep(cache), logits_to_keep=1)[:, -1]
    cache.pos.add_(1)
    cache.num_real.add_(1)
    return logits


@dataclass
class CompileStats:
    """How the compiled decode step has been built so far in this process."""

    compiles: int = 0  # graphs compiled (the first call, then each recompile)
    seconds: float = 0.0  # time of the calls that compiled


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
STATS = CompileStats()


def compiled_step(model: torch.nn.Module):
    """The compiled `decode_step` for `model`, built once per model and process and then reused
    by every rollout and evaluation. On a GPU mode "reduce-overhead" adds CUDA graphs."""
    if model not in _COMPILED:
        mode = "reduce-overhead" if next(model.parameters()).device.type == "cuda" else None
        compiled = torch.compile(decode_step, dynamic=True, mode=mode)

        def step(tok: Tensor, cache: StaticCache) -> Tensor:
            before, t0 = _frames(), time.perf_counter()
            out = compiled(model, tok, cache)
            if _frames() != before:
                STATS.compiles += _frames() - before
                STATS.seconds += time.perf_counter() - t0
            return out

        _COMPILED[model] = step
    return _COMPILED[model]


def _frames() -> int:
    """Frames dynamo has compiled in this process (a recompile counts again)."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def window_for(cache: StaticCache, length: int) -> int:
    """The attention window for a cache holding `length` positions: the whole cache on the CPU, the
    next multiple of WINDOW_STEP on a GPU (fewer keys read early in a long rollout). `length` is
    counted on the host: no device read."""
    if cache.k.device.type != "cuda":
        return cache.max_len
    return min(cache.max_len, -(-length // WINDOW_STEP) * WINDOW_STEP)


class CompiledDecoder:
    """The compiled decode loop's state (the eager one is sampler.EagerDecoder): the live rows padded
    to a bucket in a StaticCache, and the compiled step."""

    def __init__(self, model: torch.nn.Module, cache: KVCache, n: int, length: int):
        self.n = n  # live rows; the cache holds bucket(n) rows, the live ones first
        # The eager cache is not used after this: when its rows are already a bucket, take its buffers.
        rows = None if bucket(n) == n == cache.k.shape[1] else padded(torch.arange(n, device=cache.k.device))
        self.cache = StaticCache.from_cache(cache, rows, cache.max_len)
        self.cache.window = window_for(self.cache, length)
        self.step_fn = compiled_step(model)

    def step(self, tok: Tensor, length: int) -> Tensor:
        """Logits (n, V) for the live rows; `length` = positions the cache holds after this step."""
        if length > self.cache.window:
            self.cache.window = window_for(self.cache, length)
        rows = self.cache.k.shape[1]
        if rows > self.n:  # the bucket's padding rows decode a copy of the last live row's token
            tok = torch.cat([tok, tok[-1:].expand(rows - self.n)])
        return self.step_fn(tok, self.cache)[:self.n]

    def keep(self, rows: Tensor) -> None:
        """Keep the live rows `rows` (indices into the current live rows), padded to their bucket."""
        self.n = len(rows)
        self.cache.select(padded(rows))


def padded(rows: Tensor) -> Tensor:
    """`rows` followed by copies of its last entry, up to bucket(len(rows))."""
    extra = bucket(len(rows)) - len(rows)
    return torch.cat([rows, rows[-1:].expand(extra)]) if extra else rows
