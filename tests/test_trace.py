"""`train.py --dry-run --trace`: the real code of a step's peak phases, run on the meta device,
agrees with the planner within 10% (grpo/plan/trace.py, grpo/plan/memory.py)."""

from __future__ import annotations

import dataclasses

import pytest

import train
from grpo.config import load_config
from grpo.plan.memory import plan_memory
from grpo.plan.trace import against_plan, trace_memory
from qwen2 import Qwen2Config

# Qwen2.5-0.5B's layout (24 layers, 896 wide, 14 query / 2 key-value heads) with a smaller
# vocabulary and batch, so a trace takes about a second.
SMALL = dataclasses.replace(Qwen2Config.from_name("Qwen2.5-0.5B"), vocab_size=16384)
BATCH = ["rollout.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=96",
         "data.max_prompt_tokens=64", "grpo.micro_batch_tokens=1024", "grpo.micro_batch_size=4",
         "grpo.logprob_chunk=256", "model.path=checkpoints/Qwen2.5-0.5B-Instruct"]


@pytest.mark.parametrize("sets", [
    ["optim.offload=false"], ["optim.offload=true"], ["model.lora.rank=16"], ["grpo.shared_prefix=false"],
    ["grpo.shared_prefix=false", "optim.offload=true"], ["grpo.beta=0.04"],
    ["model.activation_checkpointing=false", "optim.offload=true"]])
def test_trace_and_plan_agree_within_10_percent(sets):
    cfg = load_config("config.yaml", BATCH + sets)
    for trace, planned in against_plan(trace_memory(cfg, SMALL), plan_memory(cfg, SMALL)):
        assert 0.9 <= trace.peak / planned <= 1.1, (trace.phase, trace.peak / 1e9, planned / 1e9)


def test_dry_run_trace_prints_both(capsys):
    assert train.main(["--dry-run", "--trace", "--card-gb", "80", "--ram-gb", "200", *[a for s in BATCH for a in ("--set", s)]]) == 0
    out = capsys.readouterr().out
    assert "traced on the meta device" in out and all(p in out for p in ("rollout", "update", "optimizer"))
