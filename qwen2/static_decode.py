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
  finished rows leave at once (select:          the live rows are padded up to a bucket size (2, 4, 8,
  new buffers, a new batch size)                then every 8) and moved to the front of the same
                                                buffers: the shape changes only when the bucket
                                                shrinks, a few times per rollout
RoPE needs no state: cos/sin are computed from the positions (model.py). The window grows in steps
of `WINDOW_STEP` positions, so early tokens do not read the whole cache.

One cache for the process, and what it costs. A CUDA graph records the addresses of the buffers it
reads and writes: a buffer at a new address is a new recording (and torch counts re-recordings
against `cudagraph_unexpected_rerecord_limit`, past which it silently stops using graphs). So the
static cache is allocated once per model and process (`static_cache`; `_STATE` holds it, keyed
weakly by the model) and every rollout reuses it: `capacity_rows` rows (a bucket) of `capacity_len`
positions (whole WINDOW_STEPs, plus SPARE positions no window reaches). A rollout fans the distinct
prompts' prefilled cache out into its first bucket(rows) rows (no second copy of the rows' cache),
and compaction moves the surviving rows to the front of the same buffers. The cache grows, to the
larger of the old and the new size in each dimension, only when a rollout needs more: new buffers,
so every graph records anew, and the first growth also recompiles once (the sizes then become
dynamic); `reserve` sizes it for the largest rollout up front. Each (bucket, window) graph is thus
recorded once per run, as gpt-fast and vLLM do (one KV cache for the life of the process).
The price is memory: the cache (K and V: 2 x layers x kv_heads x head_dim x capacity_rows x
capacity_len elements) stays allocated through the update phase, where the eager path's is freed
after each rollout; grpo/plan/memory.py counts it in every phase. `release` frees it when the memory
matters more than the recordings: the next rollout then allocates it anew and records every graph
again (the old behaviour, one rollout's worth of recordings at a time).

Compilation: `decode_step` is compiled once per process with static shapes by default
(`dynamic=None`) and the row count marked dynamic (`maybe_mark_dynamic`), so a new bucket is not a
recompile; the window is an int, made dynamic by the one recompile that first sees it change. Not
`dynamic=True`: that also turns every float the step reads (each RMSNorm's eps, the embedding's
norm_type: 2 x layers + 2 of them) into a 0-d float64 CPU tensor input, and inductor then skips
CUDA graphs ("cpu device") or splits the graph; here they are constants. Buckets start at 2 rows:
the compiler specializes sizes 0 and 1, so a bucket of one row would be a compile of its own. A
window never spans the whole cache (SPARE) for the same reason: a slice over a whole dimension is
contiguous, the others are not. `STATS` counts compiles, cache allocations and (on a GPU) CUDA-graph
recordings in this process: a count that rises from rollout to rollout is a regression.

The cache rows beyond the live ones (bucket padding) decode harmless copies; the sampler ignores
them and draws random numbers for the live rows only, so a seed gives the same tokens as the eager
path. Compiled kernels may round differently in the last bits (fused reductions), so logits agree
to ~1e-6, not bit for bit (tests/test_compile.py), and a sampled token at an exact tie may differ.

Simplification: one shared write position for all rows (as in the eager cache).
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .attention import attention
from .kv_cache import KVCache

WINDOW_STEP = 256  # the attention window grows in steps of this many positions
# Positions the cache holds past its last window, never read: a window is then never the whole cache,
# whose slice would be contiguous where the others are not, a graph of its own (a recompile).
SPARE = 8


def bucket(n: int) -> int:
    """The padded row count for n live rows: 2, 4, 8, then the next multiple of 8 (as vLLM's
    CUDA-graph batch sizes, less the 1: a dimension of size 1 is a compile of its own)."""
    if n <= 8:
        return max(2, 1 << (n - 1).bit_length())
    return -(-n // 8) * 8


def round_up(n: int, step: int) -> int:
    return -(-n // step) * step


class StaticCache:
    """A KV cache of fixed buffers: keys and values (layers, capacity_rows, kv_heads, capacity_len,
    head_dim), `key_mask` (capacity_rows, capacity_len) marking real cached positions, each row's
    next position id `num_real` and the write position `pos` as tensors. A rollout uses the first
    `rows` rows (a bucket) and the positions [0, window) of it; the buffers never move."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, rows: int, length: int, *,
                 dtype: torch.dtype, device: torch.device | str):
        shape = (layers, rows, kv_heads, length, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.key_mask = torch.zeros(rows, length, dtype=torch.bool, device=device)
        self.num_real = torch.zeros(rows, dtype=torch.long, device=device)
        self.pos = torch.zeros((), dtype=torch.long, device=device)
        self.rows = rows  # rows in use: the current bucket
        self.window = 0  # attention reads positions [0, window): set per rollout (window_for)
        self.length = 0  # positions written, counted on the host
        for t in (self.k, self.v, self.key_mask, self.num_real, self.pos):
            if t.device.type == "cuda":  # a CUDA graph reads and writes them in place: no copy in and out
                torch._dynamo.mark_static_address(t)
        STATS.allocations += 1

    @property
    def capacity_rows(self) -> int:
        return self.k.shape[1]

    @property
    def capacity_len(self) -> int:
        return self.k.shape[3]

    def fits(self, rows: int, length: int, dtype: torch.dtype, device: torch.device) -> bool:
        return (rows <= self.capacity_rows and length <= self.capacity_len - SPARE and self.k.dtype == dtype
                and self.k.device == torch.device(device))

    def load(self, cache: KVCache, rows: Tensor) -> None:
        """Start a rollout from the prefilled eager cache: its `rows` (repeats allowed; a bucket of
        them) in that order. Positions past the prompts are zeroed: the step reads the whole window,
        masked, and a masked position still multiplies its value by a zero weight (0 * NaN is NaN),
        so whatever sits there (an earlier rollout's keys, in principle anything) must be finite."""
        n, length = len(rows), cache.length
        if length > self.capacity_len - SPARE or n > self.capacity_rows:
            raise ValueError(f"{n} rows x {length} positions do not fit the static cache "
                             f"({self.capacity_rows} x {self.capacity_len})")
        for layer in range(self.k.shape[0]):  # one layer at a time: the gathered rows' copy stays small
            self.k[layer, :n, :, :length] = cache.k[layer, rows, :, :length]
            self.v[layer, :n, :, :length] = cache.v[layer, rows, :, :length]
        self.k[:, :n, :, length:] = 0
        self.v[:, :n, :, length:] = 0
        self.key_mask[:n] = False
        self.key_mask[:n, :length] = cache.key_mask[rows, :length]
        self.num_real[:n] = cache.num_real[rows]
        self.pos.fill_(length)
        self.rows, self.length = n, length

    def select(self, rows: Tensor) -> None:
        """Keep `rows` (indices into the rows in use, a bucket of them) in that order, moved to the
        front of the same buffers, whose addresses the CUDA graphs have recorded. Only the written
        positions move: past them every row in use is still zero since `load`."""
        n, length = len(rows), self.length
        for layer in range(self.k.shape[0]):
            self.k[layer, :n, :, :length] = self.k[layer, rows, :, :length]  # gathered first: a copy
            self.v[layer, :n, :, :length] = self.v[layer, rows, :, :length]
        self.key_mask[:n] = self.key_mask[rows]
        self.num_real[:n] = self.num_real[rows]
        self.rows = n


@dataclass
class StaticStep:
    """The layout (layout.py) of one decoded token for each of the first `rows` rows of a StaticCache."""

    cache: StaticCache
    rows: int  # the bucket: a dynamic size when compiled (the tokens' count)
    positions: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.positions = self.cache.num_real[:self.rows, None]  # (rows, 1): the new token's position id

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        c, n, w = self.cache, self.rows, self.cache.window
        # Write this token's keys and values (rows, kv_heads, 1, head_dim) at the position held in a
        # tensor (no host int), by indexing the whole buffer: the compiler then writes them in place.
        # (An in-place write into a view, c.k[layer, :n], is compiled as a new copy of the whole
        # buffer, copied back at the end of the step: twice the cache's memory traffic per token.)
        at = (torch.tensor(layer, device=q.device), torch.arange(n, device=q.device)[:, None],
              torch.arange(k.shape[1], device=q.device)[None, :], c.pos)
        c.k.index_put_(at, k[:, :, 0])
        c.v.index_put_(at, v[:, :, 0])
        keys = c.key_mask[:n, None, None, :w]  # (rows, 1, 1, window): real and already written
        return attention(q, c.k[layer, :n, :, :w], c.v[layer, :n, :, :w], keys)


def decode_step(model: torch.nn.Module, tok: Tensor, cache: StaticCache) -> Tensor:
    """Logits (rows, V) of the next token after `tok` (rows,) for each of the cache's first rows;
    writes the cache. The eager sampler's `decode_one_token`, with the static layout: this is what
    gets compiled."""
    n = tok.shape[0]
    cache.key_mask.index_put_((torch.arange(n, device=tok.device), cache.pos), torch.tensor(True, device=tok.device))
    logits = model(tok[:, None], StaticStep(cache, n), logits_to_keep=1)[:, -1]
    cache.pos.add_(1)
    cache.num_real.add_(1)  # every row's: those past the bucket are not read
    return logits


@dataclass
class CompileStats:
    """How the compiled decode has been built so far in this process. Each should stop rising after
    the first rollouts (a few compiles, one allocation, one recording per bucket and window)."""

    compiles: int = 0  # graphs compiled (the first call, then each recompile)
    seconds: float = 0.0  # time of the calls that compiled
    allocations: int = 0  # static caches allocated: each one new buffer addresses (on a GPU, every graph anew)
    recordings: int = 0  # CUDA graphs recorded (0 on the CPU)


STATS = CompileStats()
_STATE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its StaticCache (no reference back)
_COMPILED: dict[str | None, object] = {}  # mode -> torch.compile(decode_step): shared by every model


def _count_recordings() -> None:
    """Count CUDA-graph recordings (inductor's cudagraph trees announce each one to dynamo's callback
    handler); where this torch has no such hook, `recordings` stays 0."""
    try:
        from torch._dynamo.callback import CallbackTrigger, callback_handler
    except ImportError:
        return
    recording = getattr(CallbackTrigger, "CUDAGRAPH_RECORDING", None)
    if recording is None:
        return

    def on_start(args) -> None:
        if getattr(args, "callback_trigger", None) == recording:
            STATS.recordings += 1

    callback_handler.register_start_callback(on_start)


def _compiled(device: torch.device):
    """The compiled `decode_step`, built once per process (and mode): on a GPU mode "reduce-overhead"
    adds CUDA graphs. It holds no model; the model is an argument, its parameters graph inputs."""
    mode = "reduce-overhead" if device.type == "cuda" else None
    if mode not in _COMPILED:
        if not _COMPILED:
            _count_recordings()
        _COMPILED[mode] = torch.compile(decode_step, dynamic=None, mode=mode)
    return _COMPILED[mode]


def compiled_step(model: torch.nn.Module):
    """The compiled step for `model`: step(tok, cache) -> logits, counting compiles in STATS. The row
    count (the tokens' size) is marked dynamic at every call: a new bucket is no recompile."""
    compiled = _compiled(next(model.parameters()).device)
    model_ref = weakref.ref(model)  # the step must not keep the model alive

    def step(tok: Tensor, cache: StaticCache) -> Tensor:
        torch._dynamo.maybe_mark_dynamic(tok, 0)
        before, t0 = _frames(), time.perf_counter()
        out = compiled(model_ref(), tok, cache)
        if _frames() != before:
            STATS.compiles += _frames() - before
            STATS.seconds += time.perf_counter() - t0
        return out

    return step


def _frames() -> int:
    """Frames dynamo has compiled in this process (a recompile counts again)."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def static_cache(model: torch.nn.Module, rows: int, length: int) -> StaticCache:
    """`model`'s static cache, with room for `rows` rows of `length` positions: the one already
    allocated in this process if it fits, else a larger one (the larger of the two in each size),
    which replaces it."""
    p = model.lm_head.weight
    old = _STATE.get(model)
    if old is not None and old.fits(rows, length, p.dtype, p.device):
        return old
    if old is not None and old.k.dtype == p.dtype and old.k.device == p.device:
        rows, length = max(rows, old.capacity_rows), max(length, old.capacity_len - SPARE)
    _STATE.pop(model, None)
    del old  # freed before the larger one is allocated
    c = model.config
    cache = StaticCache(c.num_hidden_layers, c.num_key_value_heads, c.head_dim, bucket(rows),
                        round_up(length, WINDOW_STEP) + SPARE, dtype=p.dtype, device=p.device)
    _STATE[model] = cache
    return cache


def reserve(model: torch.nn.Module, rows: int, length: int) -> StaticCache:
    """Allocate `model`'s static cache for the largest rollout up front (rows, prompt + completion
    positions), so that no later rollout grows it."""
    return static_cache(model, rows, length)


def release(model: torch.nn.Module) -> None:
    """Free `model`'s static cache (e.g. when the update phase needs the memory); the next compiled
    rollout allocates it anew and, on a GPU, records every graph again."""
    _STATE.pop(model, None)


def window_for(cache: StaticCache, length: int) -> int:
    """The attention window for a cache holding `length` positions: the next multiple of
    WINDOW_STEP (fewer keys read early in a long rollout), at most the cache less its SPARE
    positions. `length` is counted on the host: no device read."""
    return min(cache.capacity_len - SPARE, round_up(max(length, 1), WINDOW_STEP))


class CompiledDecoder:
    """The compiled decode loop's state (the eager one is sampler.EagerDecoder): the live rows padded
    to a bucket at the front of the model's StaticCache, and the compiled step."""

    def __init__(self, model: torch.nn.Module, prefilled: KVCache, rows: Tensor, max_len: int, length: int):
        """`prefilled`: the distinct prompts' cache; `rows` (N,): the prompt of each output row;
        `max_len`: the positions the rollout needs; `length`: those for its first window."""
        self.n = len(rows)  # live rows; the cache uses bucket(n) rows, the live ones first
        self.cache = static_cache(model, bucket(self.n), max_len)
        self.cache.load(prefilled, padded(rows))
        self.cache.window = window_for(self.cache, length)
        self.step_fn = compiled_step(model)

    def step(self, tok: Tensor, length: int) -> Tensor:
        """Logits (n, V) for the live rows; `length` = positions the cache holds after this step."""
        c = self.cache
        if length > c.window:
            c.window = window_for(c, length)
        if c.rows > self.n:  # the bucket's padding rows decode a copy of the last live row's token
            tok = torch.cat([tok, tok[-1:].expand(c.rows - self.n)])
        logits = self.step_fn(tok, c)
        c.length = length
        return logits[:self.n]

    def keep(self, rows: Tensor) -> None:
        """Keep the live rows `rows` (indices into the current live rows), padded to their bucket."""
        self.n = len(rows)
        self.cache.select(padded(rows))


def padded(rows: Tensor) -> Tensor:
    """`rows` followed by copies of its last entry, up to bucket(len(rows))."""
    extra = bucket(len(rows)) - len(rows)
    return torch.cat([rows, rows[-1:].expand(extra)]) if extra else rows
