"""The compiled static-shape decode (qwen2/static_decode.py) against the eager sampler and
transformers, with the CPU compiler: same greedy tokens on a ragged batch with stop tokens, the same
seeded samples, one compile for every bucket and rollout, and no host read between compactions.

One compile of the tiny model takes ~25-40 s on this CPU; every test here reuses it (one model for
the module, and the compiled step is built once per model and process)."""

from __future__ import annotations

import pytest
import torch

from conftest import UNTIED, hf_model, save_hf
from host_reads import HostReads
from qwen2 import GREEDY, SamplingParams, generate, load_model
from qwen2.static_decode import STATS, bucket
from test_sampler import STOP, hf_greedy, ragged_prompts


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    hf = hf_model(seed=7, **UNTIED)
    with torch.no_grad():
        hf.lm_head.weight[STOP] *= 3.0  # rows end at different steps
    return hf, load_model(save_hf(hf, tmp_path_factory.mktemp("ckpt") / "m"))


def test_buckets():
    assert [bucket(n) for n in (1, 2, 3, 5, 8, 9, 16, 17, 250)] == [1, 2, 4, 8, 8, 16, 16, 24, 256]


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


def test_the_step_is_compiled_once_and_reads_nothing_back_between_compactions(models):
    _, ours = models
    prompts = ragged_prompts(ours.config.vocab_size, [6, 3], seed=5)
    rows = [p for p in prompts for _ in range(3)]
    generate(ours, rows, 16, GREEDY, stop_token_ids=[STOP], compile=True)  # compiled by now in any case
    compiles = STATS.compiles
    with HostReads() as reads:
        generate(ours, rows, 16, GREEDY, stop_token_ids=[STOP], compact_every=4, compile=True)
    assert STATS.compiles == compiles  # a new rollout (other rows, other buckets) is no recompile
    assert STATS.compiles <= 2, STATS  # the first compile, and at most one that makes the shapes dynamic
    # One read per compaction (every 4 tokens: at most 3 in 16), then the outputs once at the end.
    assert reads.where.get("aten.nonzero.default", 0) <= 3 and reads.count <= 3 + 2, reads.where


def test_the_static_cache_zeroes_what_the_eager_cache_left_uninitialised(models):
    # The eager cache never reads past its length, so select() leaves those positions as garbage; the
    # static step attends over the whole window (masked), and a masked NaN still poisons the output.
    from qwen2.kv_cache import KVCache
    from qwen2.static_decode import StaticCache

    _, ours = models
    cache = KVCache(ours.config, 2, 16, dtype=torch.float32, device="cpu")
    cache.length = 5
    cache.k[:, :, :, 5:] = float("nan")
    cache.v[:, :, :, 5:] = float("nan")
    static = StaticCache.from_cache(cache, torch.tensor([1, 0, 0]), window=16)
    assert torch.isfinite(static.k).all() and torch.isfinite(static.v).all()
    assert static.k.shape[1] == 3


def test_a_full_bucket_takes_over_the_eager_cache_and_a_partial_one_is_padded(models):
    # The eager cache is not used after the decoder is built: when its rows already fill a bucket,
    # the static cache keeps its buffers (no second copy of the whole cache on the device).
    from qwen2.kv_cache import KVCache
    from qwen2.static_decode import CompiledDecoder

    _, ours = models
    for rows, shared in ((4, True), (3, False)):
        cache = KVCache(ours.config, rows, 16, dtype=torch.float32, device="cpu")
        cache.length = 5
        decoder = CompiledDecoder(ours, cache, rows, 8)
        assert (decoder.cache.k.data_ptr() == cache.k.data_ptr()) is shared
        assert decoder.cache.k.shape[1] == bucket(rows) == 4
