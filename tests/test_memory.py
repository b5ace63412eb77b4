"""The --dry-run memory planner counts the bytes that training really allocates."""

from __future__ import annotations

import pytest
import torch

from grpo.config import load_config
from grpo.memory import activation_bytes, format_plan, peak_gpu, plan_memory
from grpo.optim import OffloadAdamW
from grpo.runtime import enable_activation_checkpointing
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_activation_estimate_tracks_what_autograd_saves(dtype):
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


def test_several_ranks_shard_the_state_and_split_the_rows():
    cfg = load_config(None, ["optim.offload=true"])
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
    plain, tools = load_config(None, []), load_config(None, ["rollout.tools=[calculator]", "rollout.max_tool_calls=2"])
    kv = {name: {i.name.split(" (")[0]: i for i in plan_memory(c, shape)}["rollout KV cache"].gpu
          for name, c in (("plain", plain), ("tools", tools))}
    seq = plain.data.max_prompt_tokens + plain.rollout.max_new_tokens
    assert kv["tools"] / kv["plain"] == pytest.approx((seq + 2 * TOOL_TURN_TOKENS) / seq, rel=1e-6)
