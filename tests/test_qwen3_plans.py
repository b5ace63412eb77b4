"""Qwen3 at real sizes without the weights: RoPE computed for the positions used equals a full
table's (Qwen3-4B-2507's 262144 positions), the eager KV cache drops finished rows in place, and the
planned peaks of the README's Qwen3 rows (docs/memory.md) fit the cards they are said to fit."""

from __future__ import annotations

import pytest
import torch

from qwen2 import Qwen2Config
from qwen2.model import Rotary


def full_tables(head_dim: int, theta: float, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of every position, (positions, head_dim) fp32: what Rotary built before it computed only
    the positions a forward reads."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    angles = torch.arange(positions).float()[:, None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


@pytest.mark.parametrize("name", ["Qwen3-4B-Instruct-2507", "Qwen3-0.6B"])
def test_rope_of_the_positions_read_equals_the_full_table(name):
    """Every position up to max_position_embeddings, in fp32 and bf16, in the (B, T) shapes of a
    prefill, a decode step and a training row: bit-equal to reading a table of all positions; and
    nothing of the size of that table is kept (Qwen3-4B-2507's would be 268 MB)."""
    mc = Qwen2Config.from_name(name)
    rotary = Rotary(mc.head_dim, mc.rope_theta, mc.max_position_embeddings)
    cos_table, sin_table = full_tables(mc.head_dim, mc.rope_theta, mc.max_position_embeddings)
    g = torch.Generator().manual_seed(0)
    last = mc.max_position_embeddings - 1
    for shape in [(3, 17), (128, 1), (2, 513)]:
        positions = torch.randint(0, mc.max_position_embeddings, shape, generator=g)
        positions[0, -1] = last  # the last position the model supports, and the first
        positions[-1, 0] = 0
        for dtype in (torch.float32, torch.bfloat16):
            cos, sin = rotary(positions, dtype)
            assert cos.shape == (*shape, mc.head_dim) and cos.dtype == dtype
            assert torch.equal(cos, cos_table[positions].to(dtype))
            assert torch.equal(sin, sin_table[positions].to(dtype))
    kept = sum(t.numel() * t.element_size() for t in rotary._inv_freq.values())
    assert kept == mc.head_dim // 2 * 4


def test_dropping_rows_moves_them_in_place_and_fanning_out_reallocates():
    """KVCache.select with fewer rows (the sampler dropping finished ones, in any order) leaves the
    kept rows' keys, values, mask and positions as a gather of the old rows would, in the same
    buffers; with more rows (one prompt fanned out to G samples) it allocates new ones."""
    from qwen2.kv_cache import KVCache

    mc = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=16, model_type="qwen3", attention_bias=False)
    cache = KVCache(mc, 6, 10, dtype=torch.float32, device="cpu")
    g = torch.Generator().manual_seed(0)
    cache.k.normal_(generator=g)
    cache.v.normal_(generator=g)
    cache.key_mask.copy_(torch.rand(6, 10, generator=g) > 0.3)
    cache.num_real.copy_(torch.arange(6) + 3)
    cache.length = 7
    address = cache.k.data_ptr()
    for rows in (torch.tensor([5, 0, 3, 2]), torch.tensor([1, 1, 0]), torch.tensor([2])):  # shuffled, repeats, one
        before = [t.clone() for t in (cache.k, cache.v, cache.key_mask, cache.num_real)]
        cache.select(rows)
        assert cache.batch_size == len(rows) and cache.k.data_ptr() == address
        assert torch.equal(cache.k[:, :, :, :7], before[0][:, rows, :, :7])
        assert torch.equal(cache.v[:, :, :, :7], before[1][:, rows, :, :7])
        assert torch.equal(cache.key_mask, before[2][rows]) and torch.equal(cache.num_real, before[3][rows])
    before = cache.k.clone()
    cache.select(torch.zeros(4, dtype=torch.long))  # fan-out: 1 row -> 4
    assert cache.batch_size == 4 and cache.k.data_ptr() != address
    assert torch.equal(cache.k[:, :, :, :7], before[:, [0] * 4, :, :7])


@pytest.mark.parametrize("name", ["Qwen3-4B", "Qwen3-0.6B"])
def test_block_activation_estimate_at_real_qwen3_widths(name):
    """What one block keeps for backward at a real Qwen3 shape (2 x 4096 tokens, masked attention as
    on CUDA, on the meta device): the planner's estimate, q/k norms' extra copies included, within 6%."""
    from grpo.plan.memory import block_activation_bytes
    from grpo.plan.trace import DeviceMemory, meta_as_gpu
    from qwen2.layout import Padded
    from qwen2.model import Block

    mc = Qwen2Config.from_name(name)
    with torch.device("meta"):
        block = Block(mc, 0).to(torch.bfloat16)
        x = torch.zeros(2, 4096, mc.hidden_size, dtype=torch.bfloat16, requires_grad=True)
        layout = Padded.of(torch.ones(2, 4096, dtype=torch.long))
    with meta_as_gpu():
        cos, sin = Rotary(mc.head_dim, mc.rope_theta, mc.max_position_embeddings)(layout.positions, torch.bfloat16)
        memory = DeviceMemory()
        memory.add(x, cos, sin, *block.parameters())
        before = memory.current
        with memory:
            y = block(x, cos, sin, layout)
        kept = memory.current - before - y.numel() * 2
    assert block_activation_bytes(mc, 8192, 2) == pytest.approx(kept, rel=0.06)


# The README's Qwen3 settings (docs/memory.md, docs/lora.md): the card each is said to fit.
FITS = [
    ("Qwen3-4B", ["optim.offload=true", "rollout.compile=false", "rollout.prompts_per_step=8"], 24),
    ("Qwen3-8B", ["model.lora.rank=16", "rollout.compile=false", "rollout.prompts_per_step=4",
                  "grpo.micro_batch_tokens=4096"], 24),
    ("Qwen3-14B", ["model.lora.rank=16"], 80),
    ("Qwen3-8B", ["optim.offload=true"], 80),
]


@pytest.mark.parametrize("name,sets,card", FITS, ids=[f"{n}-{c}GB-{s[0]}" for n, s, c in FITS])
def test_the_readme_qwen3_settings_fit_their_card_and_the_defaults_do_not(name, sets, card):
    """Each planned peak, with the CUDA margin, fits its card; the default batch without the
    rollout changes does not (Qwen3's 8 KV heads x 128: the rollout decides), and the eager
    decode's compaction adds one layer's rows, not a second cache."""
    from grpo.config import load_config
    from grpo.plan.machine import plan_fits
    from grpo.plan.memory import phase_totals, plan_memory

    mc = Qwen2Config.from_name(name)
    items = plan_memory(load_config(None, [f"model.path=checkpoints/{name}", *sets]), mc, device="cuda")
    assert plan_fits(items, card_gb=card, ram_gb=1024)[0]
    base = [s for s in sets if s.split("=")[0] in ("optim.offload", "model.lora.rank")]
    if base != sets:
        defaults = plan_memory(load_config(None, [f"model.path=checkpoints/{name}", *base]), mc, device="cuda")
        assert not plan_fits(defaults, card_gb=card, ram_gb=1024)[0]
    if "rollout.compile=false" in sets:
        totals = phase_totals(items)
        kv = next(i.gpu for i in items if i.name.startswith("rollout KV cache"))
        assert totals["cache copy"] - totals["decode"] < kv / mc.num_hidden_layers
