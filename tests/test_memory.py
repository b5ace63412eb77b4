"""The --dry-run memory planner counts the bytes that training really allocates."""

from __future__ import annotations

import pytest
import torch

from grpo.config import load_config
from grpo.plan.advice import advise, with_sets
from grpo.plan.machine import plan_fits
from grpo.plan.memory import activation_bytes, peak_gpu, peak_phase, phase_totals, plan_memory
from grpo.plan.report import PLAN_NOTE, format_plan, out_of_memory_message
from grpo.optim.adamw import OffloadAdamW
from grpo.machinery.runtime import enable_activation_checkpointing
from qwen2 import Padded, Qwen2, Qwen2Config
from qwen2.lora import add_lora

TINY = Qwen2Config(vocab_size=500, hidden_size=128, intermediate_size=352, num_hidden_layers=3,
                   num_attention_heads=4, num_key_value_heads=2)


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize("offload", [False, True])
def test_plan_equals_real_tensor_bytes(offload):
    cfg = load_config(None, [f"optim.offload={str(offload).lower()}", "model.dtype=bfloat16",
                             "rollout.prompts_per_step=3", "rollout.group_size=4", "rollout.max_new_tokens=40",
                             "data.max_prompt_tokens=24"])
    plan = {i.name.split(" (")[0]: i for i in plan_memory(cfg, TINY, device="cpu")}
    model = Qwen2(TINY).to(torch.bfloat16)
    model.init_weights()
    assert plan["weights"].gpu == tensor_bytes(model.parameters())

    model(torch.randint(0, 500, (2, 8))).float().logsumexp(-1).sum().backward()
    assert plan["gradients"].gpu == tensor_bytes(p.grad for p in model.parameters())

    opt = OffloadAdamW(model.parameters(), lr=1e-3, offload=offload)
    opt.step()
    state = [opt.state[p] for p in model.parameters()]
    master, moments = plan["fp32 master weights"], plan["Adam moments"]
    assert master.gpu + master.cpu == tensor_bytes(s["master"] for s in state)
    assert moments.gpu + moments.cpu == tensor_bytes([s["exp_avg"] for s in state] + [s["exp_avg_sq"] for s in state])
    assert all(s["exp_avg"].device.type == "cpu" for s in state)  # (on this CPU machine both are "cpu")

    cache = model.new_cache(3 * 4, 24 + 40)
    kv = plan["rollout KV cache"]
    assert kv.gpu == tensor_bytes([cache.k, cache.v, cache.key_mask, cache.num_real])


@pytest.mark.parametrize("offload", [False, True])
def test_lora_plan_equals_real_tensor_bytes(offload):
    """With LoRA only the adapters have gradients and optimizer state; the base is weights only."""
    cfg = load_config(None, [f"optim.offload={str(offload).lower()}", "model.dtype=bfloat16", "model.lora.rank=4",
                             "model.lora.targets=[q_proj, v_proj, down_proj]"])
    plan = {i.name.split(" (")[0]: i for i in plan_memory(cfg, TINY, device="cpu")}
    model = Qwen2(TINY).to(torch.bfloat16)
    model.init_weights()
    add_lora(model, 4, 8.0, ["q_proj", "v_proj", "down_proj"])
    adapters = [p for p in model.parameters() if p.requires_grad]
    assert plan["weights"].gpu + plan["LoRA adapters"].gpu == tensor_bytes(model.parameters())
    assert plan["LoRA adapters"].gpu == tensor_bytes(adapters) > 0 and "reference model" not in plan
    model(torch.randint(0, 500, (2, 8))).float().logsumexp(-1).sum().backward()
    assert plan["gradients"].gpu == tensor_bytes(p.grad for p in model.parameters() if p.grad is not None)
    opt = OffloadAdamW(adapters, lr=1e-3, offload=offload)
    opt.step()
    state = [opt.state[p] for p in adapters]
    master, moments = plan["fp32 master weights"], plan["Adam moments"]
    assert master.gpu + master.cpu == tensor_bytes(s["master"] for s in state)
    assert moments.gpu + moments.cpu == tensor_bytes([s["exp_avg"] for s in state] + [s["exp_avg_sq"] for s in state])


# A Qwen3 shape whose query side (6 heads x 32) is wider than hidden, with q/k norms.
TINY_QWEN3 = Qwen2Config(vocab_size=500, hidden_size=128, intermediate_size=352, num_hidden_layers=3,
                         num_attention_heads=6, num_key_value_heads=2, head_dim=32, model_type="qwen3",
                         attention_bias=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("TINY", [TINY, TINY_QWEN3], ids=["qwen2", "qwen3"])
def test_activation_estimate_tracks_what_autograd_saves(dtype, TINY):
    ids = torch.randint(0, 500, (2, 64))
    mask = torch.ones_like(ids)
    mask[1, :10] = 0
    measured = {}
    for ckpt in (False, True):
        model = Qwen2(TINY).to(dtype)
        if ckpt:
            enable_activation_checkpointing(model)
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        saved = {}

        def pack(t):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in params:
                saved[ptr] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.model(ids, Padded.of(mask))
        measured[ckpt] = sum(saved.values())
    b = torch.finfo(dtype).bits // 8
    full = activation_bytes(TINY, ids.numel(), b, checkpointing=False)
    assert 0.8 <= full / measured[False] <= 1.25
    # With checkpointing only the block inputs stay (plus small masks/positions); the plan adds the
    # one block being recomputed in backward on top.
    inputs = TINY.num_hidden_layers * ids.numel() * TINY.hidden_size * b
    assert inputs <= measured[True] <= 3 * inputs
    assert activation_bytes(TINY, ids.numel(), b, checkpointing=True) >= measured[True]
    assert measured[True] < measured[False] / 5


def test_real_shapes_fit_a_24gb_card_only_with_offload():
    on_cfg, off_cfg = load_config(None, ["optim.offload=true"]), load_config(None, [])
    shape = Qwen2Config.from_name("Qwen2.5-3B-Instruct")
    on = format_plan(plan_memory(on_cfg, shape), on_cfg, card_gb=24, ram_gb=64)
    off = format_plan(plan_memory(off_cfg, shape), off_cfg, card_gb=24, ram_gb=64)
    assert "GPU: fits a card of 24 GB" in on and "CPU RAM: fits 64.0 GB" in on and "Try" not in on
    assert "GPU: does NOT fit a card of 24 GB" in off and "--set optim.offload=true" in off


def test_offload_on_a_machine_with_too_little_ram_says_so():
    cfg = load_config(None, ["optim.offload=true"])
    plan = format_plan(plan_memory(cfg, Qwen2Config.from_name("Qwen2.5-3B-Instruct")), cfg, card_gb=24, ram_gb=24)
    assert "GPU: fits a card of 24 GB" in plan
    assert "CPU RAM: does NOT fit 24.0 GB (--ram-gb): needs 39.5 GB + ~3 GB for the process" in plan
    assert "a machine with at least 43 GB of RAM" in plan


def test_ram_that_is_short_does_not_make_every_card_change_look_unfit():
    """Qwen3-4B with offload on a 24 GB card and a 25 GB machine: the RAM is short whatever the batch,
    which is its own line; the card's advice still finds the setting that fits the card (it said
    "no change above fits 24 GB: a larger card" before)."""
    cfg = load_config(None, ["model.path=checkpoints/Qwen3-4B", "optim.offload=true"])
    plan = format_plan(plan_memory(cfg, Qwen2Config.from_name("Qwen3-4B")), cfg, card_gb=24, ram_gb=25)
    assert "CPU RAM: does NOT fit" in plan and "a machine with at least 54 GB of RAM" in plan
    first = plan.split("Try, in order (each change re-planned):\n")[1].splitlines()[0]
    assert first.startswith("  --set rollout.compile=false --set rollout.prompts_per_step=8 (together)")
    assert first.endswith(": fits") and "no change above fits" not in plan


def test_several_ranks_shard_the_state_and_split_the_rows():
    cfg = load_config(None, ["optim.offload=true", "rollout.compile=false"])  # both plans with the eager cache
    shape = Qwen2Config.from_name("Qwen2.5-7B-Instruct")
    one = {i.name.split(" (")[0]: i for i in plan_memory(cfg, shape)}
    two = {i.name.split(" (")[0]: i for i in plan_memory(cfg, shape, ranks=2)}
    assert two["weights"].gpu * 2 == pytest.approx(one["weights"].gpu, rel=1e-6)
    assert two["gradients"].gpu * 2 == pytest.approx(one["gradients"].gpu, rel=1e-6)
    assert two["Adam moments"].cpu * 2 == pytest.approx(one["Adam moments"].cpu, rel=1e-6)
    assert two["weights gathered for sampling"].gpu + two["weights"].gpu == one["weights"].gpu  # full for sampling
    assert two["rollout KV cache"].gpu * 2 == pytest.approx(one["rollout KV cache"].gpu, rel=1e-3)
    assert peak_gpu(list(two.values())) < peak_gpu(list(one.values()))


def test_dry_run_exit_code_says_whether_the_plan_fits(capsys):
    import train

    assert train.main(["--dry-run", "--card-gb", "24", "--ram-gb", "24"]) == 1  # 3B without offload: no
    assert "does NOT fit" in capsys.readouterr().out
    assert train.main(["--dry-run", "--set", "optim.offload=true", "--card-gb", "80", "--ram-gb", "200"]) == 0


def test_lora_under_fsdp_plans_each_rank_its_share():
    """--dry-run --ranks N with LoRA: the adapters, their gradients and optimizer state are sharded
    like the base weights; sampling gathers the full base."""
    cfg = load_config(None, ["model.lora.rank=16", "model.dtype=bfloat16"])
    one = {i.name.split(" (")[0]: i for i in plan_memory(cfg, Qwen2Config.from_name("Qwen2.5-7B-Instruct"))}
    two = {i.name.split(" (")[0]: i for i in plan_memory(cfg, Qwen2Config.from_name("Qwen2.5-7B-Instruct"), ranks=2)}
    for name in ("LoRA adapters", "gradients", "Adam moments", "weights"):
        assert two[name].gpu == pytest.approx(one[name].gpu / 2, rel=1e-3), name
    assert "weights gathered for sampling" in two


def test_with_tools_the_plan_leaves_room_for_their_answers():
    """max_new_tokens counts the model's tokens only; the tools' turns come on top, in the KV cache
    and in the update's rows."""
    from grpo.tools import TOOL_TURN_TOKENS

    shape = Qwen2Config.from_name("Qwen2.5-3B-Instruct")
    # (Rollouts with tools decode eagerly: the plain one too here, so that both have the eager cache.)
    plain = load_config(None, ["rollout.compile=false"])
    tools = load_config(None, ["rollout.tools=[calculator]", "rollout.max_tool_calls=2"])
    kv = {name: {i.name.split(" (")[0]: i for i in plan_memory(c, shape)}["rollout KV cache"].gpu
          for name, c in (("plain", plain), ("tools", tools))}
    seq = plain.data.max_prompt_tokens + plain.rollout.max_new_tokens
    assert kv["tools"] / kv["plain"] == pytest.approx((seq + 2 * TOOL_TURN_TOKENS) / seq, rel=1e-6)


def named(items) -> dict:
    return {i.name.split(" (")[0]: i for i in items}


SMALL_ROLLOUT = ["model.dtype=bfloat16", "rollout.prompts_per_step=3", "rollout.group_size=4",
                 "rollout.max_new_tokens=40", "data.max_prompt_tokens=24"]


def test_planned_compaction_copy_is_what_dropping_a_row_allocates():
    """The eager cache's compaction (KVCache.select, as the sampler drops finished rows) moves the
    surviving rows to the front of the same buffers, one layer's gathered rows at a time: the plan's
    "cache copy" moment counts that copy, traced at the dispatcher on the meta device, and no new
    cache (the old compaction allocated 1.5x the cache)."""
    from grpo.plan.trace import DeviceMemory
    from qwen2.kv_cache import KVCache

    cfg = load_config(None, SMALL_ROLLOUT + ["rollout.compile=false"])
    plan = named(plan_memory(cfg, TINY, device="cuda"))
    cache = KVCache(TINY, 12, 24 + 40, dtype=torch.bfloat16, device="meta")
    cache.length = cache.max_len - 1  # late in the rollout: almost every position is copied
    memory = DeviceMemory()
    memory.add(cache.k, cache.v, cache.key_mask, cache.num_real)
    before = memory.current
    with memory:
        cache.select(torch.arange(11, device="meta"))
    assert memory.peak - before == pytest.approx(plan["compaction's copy of the cache"].gpu, rel=0.03)
    assert memory.peak - before < plan["rollout KV cache"].gpu / TINY.num_hidden_layers
    assert plan["rollout KV cache"].phases == ("prefill", "decode", "cache copy")


def test_the_compiled_decode_keeps_its_static_cache_through_the_update():
    """With the compiled decode (a GPU's default for one process) the static cache the process keeps is
    planned at every moment, at the size static_decode allocates; the eager cache only in the rollout."""
    from qwen2 import static_decode

    compiled = named(plan_memory(load_config(None, SMALL_ROLLOUT), TINY, device="cuda"))
    eager = named(plan_memory(load_config(None, SMALL_ROLLOUT + ["rollout.compile=false"]), TINY, device="cuda"))
    static = compiled["static KV cache of the compiled decode"]
    with torch.device("meta"):
        model = Qwen2(TINY).to(torch.bfloat16)
    made = static_decode.static_cache(model, 12, 24 + 40)
    assert static.gpu == tensor_bytes([made.k, made.v, made.key_mask, made.num_real, made.pos])
    assert {"backward", "optimizer"} <= set(static.phases) and "rollout KV cache" not in compiled
    assert "optimizer" not in eager["rollout KV cache"].phases and "static KV cache of the compiled decode" not in eager
    # Under torchrun (several ranks) rollout.compile: auto decodes eagerly: planned so.
    assert "rollout KV cache" in named(plan_memory(load_config(None, SMALL_ROLLOUT), TINY, device="cuda", ranks=2))


def test_gradients_are_planned_in_the_forward_of_the_second_micro_batch():
    one = load_config(None, ["rollout.prompts_per_step=1", "rollout.group_size=2", "rollout.max_new_tokens=64"])
    several = load_config(None, [])  # 16 groups of 8 x 512 tokens: one group per 8192-token micro-batch
    shape = Qwen2Config.from_name("Qwen2.5-0.5B-Instruct")
    assert "logprobs" not in named(plan_memory(one, shape))["gradients"].phases
    assert "logprobs" in named(plan_memory(several, shape))["gradients"].phases


def test_advice_for_7b_lora_follows_the_peak_and_fits():
    """Issue #31: Qwen2.5-7B LoRA rank 16 at the default batch does not fit 24 GB. What helps is what
    lowers its peak moment: the first advice must lower it and fit (a combination when no single
    change does), and a change that barely moves the peak (optimizer offload, ~0.5 GB of adapter
    state) must not come first."""
    cfg = load_config(None, ["model.path=checkpoints/Qwen2.5-7B-Instruct", "model.lora.rank=16"])
    shape = Qwen2Config.from_name("Qwen2.5-7B-Instruct")
    items = plan_memory(cfg, shape)
    assert plan_fits(items, card_gb=24, ram_gb=64) == (False, True)
    at = peak_phase(items)
    advice = advise(cfg, shape, card_gb=24, ram_gb=64)
    first = advice[0]
    assert first.fits and first.sets[0][0] != "optim.offload"
    assert first.after[at] < first.before[at]
    changed = plan_memory(with_sets(cfg, first.sets), shape)
    assert all(plan_fits(changed, card_gb=24, ram_gb=64)) and peak_gpu(changed) == first.peak
    for a in advice:  # every entry lowers the peak; the ones that fit come first
        assert a.peak < peak_gpu(items)
    assert [a.fits for a in advice] == sorted((a.fits for a in advice), reverse=True)
    text = format_plan(items, cfg, card_gb=24, ram_gb=64)
    lines = text.splitlines()
    tried = lines.index("Try, in order (each change re-planned):")
    assert lines[tried + 1].strip().startswith(first.command()) and lines[tried + 1].endswith(": fits")


def test_advice_names_only_knobs_that_lower_the_peak_moment():
    """A rollout-bound plan (eager decode: the prefill moment, its cache and the prompts' own) is not
    told to shrink the update's micro-batches or log-prob chunks, which lower other moments only."""
    cfg = load_config(None, ["model.path=checkpoints/Qwen2.5-7B-Instruct", "model.lora.rank=16", "rollout.compile=false"])
    shape = Qwen2Config.from_name("Qwen2.5-7B-Instruct")
    items = plan_memory(cfg, shape)
    assert peak_phase(items) in ("prefill", "decode", "cache copy")
    keys = {a.sets[0][0] for a in advise(cfg, shape, card_gb=24, ram_gb=64) if len(a.sets) == 1}
    assert "rollout.prompts_per_step" in keys
    assert not keys & {"grpo.logprob_chunk", "grpo.micro_batch_tokens"}
    # Full fine-tuning of 3B without offload: the optimizer state is most of it, so offload comes first.
    full = load_config(None, [])
    shape = Qwen2Config.from_name("Qwen2.5-3B-Instruct")
    assert advise(full, shape, card_gb=24, ram_gb=64)[0].sets == [("optim.offload", True)]


def test_the_gpu_peak_row_holds_no_cpu_figure_and_the_output_says_it_is_a_plan():
    cfg = load_config(None, ["optim.offload=true"])
    items = plan_memory(cfg, Qwen2Config.from_name("Qwen2.5-3B-Instruct"))
    text = format_plan(items, cfg, card_gb=24, ram_gb=64)
    peak_row = next(line for line in text.splitlines() if line.strip().startswith("GPU peak"))
    ram_row = next(line for line in text.splitlines() if line.strip().startswith("CPU RAM") and "GB" not in line)
    assert len([w for w in peak_row.split() if w.replace(".", "", 1).isdigit()]) == 1
    assert float(ram_row.split()[-1]) == pytest.approx(sum(i.cpu for i in items) / 1e9, abs=0.01)
    assert "not a measurement on a GPU" in text and text.splitlines()[-1] == PLAN_NOTE.format(
        " on a GPU", ", and scripts/gpu_check.py measures on a GPU")


def test_a_cpu_run_is_planned_in_ram_without_a_card():
    cfg = load_config(None, ["model.device=cpu"])
    items = plan_memory(cfg, Qwen2Config.from_name("Qwen2.5-0.5B-Instruct"))
    assert all(i.device == "cpu" for i in items)
    assert plan_fits(items, card_gb=1, ram_gb=64) == (True, True)  # no card to fit
    text = format_plan(items, cfg, card_gb=1, ram_gb=64)
    assert "card" not in text and "GPU" not in text and "RAM GB" in text and "CPU RAM: fits 64.0 GB" in text
    # RAM is the limit: counted once (the state is not in both columns), and too little of it is said so.
    need = max(phase_totals(items, ram=True).values()) / 1e9
    assert f"needs {need:.1f} GB" in text
    small = format_plan(items, cfg, ram_gb=need)
    assert "CPU RAM: does NOT fit" in small and "--set optim.offload" not in small and "card" not in small


def test_out_of_memory_message_names_the_cap_in_force(monkeypatch):
    """bench_step.py --cap-gb (a per-process memory fraction) emulates a 24 GB card on a larger one:
    the message must name the 24 GB the process may use, not the card's 80."""
    import grpo.plan.report as memory

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: 23.6e9)
    monkeypatch.setattr(memory, "usable_gpu_bytes", lambda device=None: (int(24e9), int(80e9)))
    cfg = load_config(None, ["model.path=checkpoints/Qwen2.5-3B-Instruct"])
    message = out_of_memory_message(cfg, 0)
    assert "peak 23.6 GB allocated of the 24.0 GB this process may use, a cap on the card's 80.0 GB" in message
    assert message.index("--set optim.offload=true") < message.index("rollout.prompts_per_step")  # biggest drop first
    assert len(message.splitlines()) == 1
