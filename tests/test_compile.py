"""The compiled static-shape decode (qwen2/static_decode.py) against the eager sampler and
transformers, with the CPU compiler: same greedy tokens on a ragged batch with stop tokens, the same
seeded samples, one compile for the whole run (not per rollout), one static cache whose buffers keep
their addresses from rollout to rollout, and no host read between compactions.

One compile of the tiny model takes ~25-40 s on this CPU; every test here reuses it (one model for
the module, and the compiled step is built once per process). The window grows in steps of 16
positions here (256 by default), so that the CPU runs go through several windows as a GPU's do."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from conftest import UNTIED, hf_model, save_hf
from host_reads import HostReads
from qwen2 import GREEDY, SamplingParams, generate, load_model
from qwen2 import static_decode
from qwen2.static_decode import STATS, bucket
from test_sampler import STOP, hf_greedy, ragged_prompts

STEP = 16  # WINDOW_STEP for this module
ROWS, LENGTH = 24, 64  # the largest rollout here: 24 rows (a bucket), prompt + completion <= 64 positions


@pytest.fixture(scope="module", autouse=True)
def small_windows():
    saved, static_decode.WINDOW_STEP = static_decode.WINDOW_STEP, STEP
    yield
    static_decode.WINDOW_STEP = saved


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    hf = hf_model(seed=7, **UNTIED)
    with torch.no_grad():
        hf.lm_head.weight[STOP] *= 3.0  # rows end at different steps
    ours = load_model(save_hf(hf, tmp_path_factory.mktemp("ckpt") / "m"))
    static_decode.reserve(ours, ROWS, LENGTH)  # as a trainer would: no rollout here grows it
    return hf, ours


def test_buckets():
    assert [bucket(n) for n in (1, 2, 3, 5, 8, 9, 16, 17, 250)] == [2, 2, 4, 8, 8, 16, 16, 24, 256]


def test_compiled_greedy_equals_eager_and_transformers_on_a_ragged_batch_with_stops(models):
    hf, ours = models
    prompts = ragged_prompts(ours.config.vocab_size, [3, 11, 7, 1, 15, 9, 4, 6, 12], seed=1)
    rows = [p for p in prompts for _ in range(2)]  # 18 rows: bucket 24, shrinking as rows stop
    eager = generate(ours, rows, 24, GREEDY, stop_token_ids=[STOP], compact_every=2)
    compiled = generate(ours, rows, 24, GREEDY, stop_token_ids=[STOP], compact_every=2, compile=True)
    assert compiled.tokens == eager.tokens == hf_greedy(hf, rows, 24, STOP)
    assert compiled.finished == eager.finished
    assert len({len(t) for t in eager.tokens}) > 2 and any(eager.finished)  # ragged: compactions happened


def test_compiled_sampling_draws_the_eager_tokens_for_the_same_seed(models):
    _, ours = models
    prompts = ragged_prompts(ours.config.vocab_size, [5, 8, 2], seed=3)
    rows = [p for p in prompts for _ in range(4)]
    kw = dict(stop_token_ids=[STOP], compact_every=3, return_logprobs=True)
    sampling = SamplingParams(temperature=0.9, top_p=0.95)
    eager = generate(ours, rows, 20, sampling, generator=torch.Generator().manual_seed(11), **kw)
    compiled = generate(ours, rows, 20, sampling, generator=torch.Generator().manual_seed(11), compile=True, **kw)
    # Fused kernels may round the last bits differently, so log-probs agree to 1e-5, not exactly; a
    # token drawn at an exact tie could then differ (none does here).
    assert compiled.tokens == eager.tokens
    for a, b in zip(eager.logprobs, compiled.logprobs):
        assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5


def test_rollouts_compile_once_for_the_run_and_reuse_one_static_cache(models):
    # Several rollouts as a training run makes them: the same rows again, fewer rows, completions of a
    # length that is no multiple of 8 (so no window ends on a bucket of positions), a lone row left to
    # decode at the end (the smallest bucket), and windows that grow within each rollout. The first
    # one compiles what it must (at most the first graph and the one that makes the window dynamic);
    # after it, no rollout compiles, allocates, or moves the cache's buffers: on a GPU no CUDA graph is
    # recorded twice.
    _, ours = models
    V = ours.config.vocab_size
    long_tail = ragged_prompts(V, [4, 9], seed=28)
    rollouts = [
        ([p for p in ragged_prompts(V, [3, 11, 7, 1, 15, 9], seed=2) for _ in range(3)], 37),  # 18 rows: bucket 24
        ([p for p in ragged_prompts(V, [3, 11, 7, 1, 15, 9], seed=1) for _ in range(3)], 37),  # the same shapes again
        ([p for p in ragged_prompts(V, [6, 2, 13], seed=2) for _ in range(2)], 29),  # 6 rows: bucket 8
        ([long_tail[0]] * 2 + [long_tail[1]], 45),  # 3 rows: bucket 4, then 2 with one live row (45 tokens)
    ]
    first = None
    for i, (rows, new) in enumerate(rollouts):
        eager = generate(ours, rows, new, GREEDY, stop_token_ids=[STOP], compact_every=2)
        before = STATS.compiles
        compiled = generate(ours, rows, new, GREEDY, stop_token_ids=[STOP], compact_every=2, compile=True)
        assert compiled.tokens == eager.tokens, i
        cache = static_decode._STATE[ours]
        now = (STATS.compiles, STATS.allocations, cache.k.data_ptr(), cache.v.data_ptr(),
               cache.key_mask.data_ptr(), cache.num_real.data_ptr(), cache.pos.data_ptr())
        if first is None:
            assert STATS.compiles - before <= 2, STATS
            first = now
        assert now == first, (i, STATS)  # no compile, no allocation, the same buffers
    assert (cache.capacity_rows, cache.capacity_len) == (ROWS, LENGTH + static_decode.SPARE)
    assert STATS.compiles <= 2, STATS  # for the whole module: the first graph, then the dynamic window
    assert STATS.recordings == 0  # no CUDA graphs on the CPU
    lengths = [len(t) for t in eager.tokens]
    assert max(lengths) > STEP and sorted(lengths)[-2] < max(lengths) - 2  # one row decoded on alone


def test_the_step_reads_nothing_back_between_compactions(models):
    _, ours = models
    prompts = ragged_prompts(ours.config.vocab_size, [6, 3], seed=5)
    rows = [p for p in prompts for _ in range(3)]
    generate(ours, rows, 16, GREEDY, stop_token_ids=[STOP], compile=True)  # compiled by now in any case
    compiles = STATS.compiles
    with HostReads() as reads:
        generate(ours, rows, 16, GREEDY, stop_token_ids=[STOP], compact_every=4, compile=True)
    assert STATS.compiles == compiles  # a new rollout (other rows, other buckets) is no recompile
    # One read per compaction (every 4 tokens: at most 3 in 16), then the outputs once at the end.
    assert reads.where.get("aten.nonzero.default", 0) <= 3 and reads.count <= 3 + 2, reads.where


def test_the_static_cache_zeroes_what_the_eager_cache_or_an_earlier_rollout_left(models):
    # The eager cache never reads past its length, so select() leaves those positions as garbage, and
    # the static cache holds an earlier rollout's keys there; the static step attends over the whole
    # window (masked), and a masked NaN still poisons the output.
    from qwen2.kv_cache import KVCache
    from qwen2.static_decode import StaticCache

    _, ours = models
    c = ours.config
    cache = KVCache(c, 2, 16, dtype=torch.float32, device="cpu")
    cache.length = 5
    cache.k[:, :, :, 5:] = float("nan")
    cache.v[:, :, :, 5:] = float("nan")
    static = StaticCache(c.num_hidden_layers, c.num_key_value_heads, c.head_dim, 8, 24,
                         dtype=torch.float32, device="cpu")
    static.k.fill_(float("nan"))  # an earlier rollout's (here: NaN) keys
    static.v.fill_(float("nan"))
    static.load(cache, torch.tensor([1, 0, 0, 0]))
    assert torch.isfinite(static.k[:, :4]).all() and torch.isfinite(static.v[:, :4]).all()
    assert torch.equal(static.k[:, :4, :, :5], cache.k[:, [1, 0, 0, 0], :, :5])
    assert static.rows == 4 and int(static.pos) == 5 and not static.key_mask[:4, 5:].any()


def test_the_static_cache_grows_to_the_largest_rollout_and_holds_no_model():
    from qwen2 import Qwen2, Qwen2Config

    config = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=64, max_position_embeddings=256)
    model = Qwen2(config)
    allocations = STATS.allocations
    cache = static_decode.static_cache(model, 3, 20)
    assert (cache.capacity_rows, cache.capacity_len) == (4, 32 + static_decode.SPARE)
    assert static_decode.static_cache(model, 2, 30) is cache  # fits: the same buffers
    bigger = static_decode.static_cache(model, 9, 10)  # more rows: the larger of each size
    assert (bigger.capacity_rows, bigger.capacity_len) == (16, 32 + static_decode.SPARE)
    longer = static_decode.static_cache(model, 2, 40)
    assert (longer.capacity_rows, longer.capacity_len) == (16, 48 + static_decode.SPARE)
    assert STATS.allocations == allocations + 3
    static_decode.compiled_step(model)  # the compiled step and the cache do not keep the model alive
    ref = weakref.ref(model)
    del model, cache, bigger, longer
    gc.collect()
    assert ref() is None and not any(m is None for m in static_decode._STATE.keys())
