"""The models a run trains and scores with: the policy, its tokenizer and, for the KL term, the
frozen reference, loaded the way the config and the checkpoint say.

    model, ref_model, tokenizer = load_policy(cfg, ckpt, dist)

The policy comes from the checkpoint being resumed (`ckpt/model`), else from `model.path`; with
LoRA it is always the base of `model.path` plus the adapters (from `ckpt/adapter`, or new ones with
B = 0, so training starts from the base exactly). (train.py checks the memory plan against the
machine before this runs: grpo/plan/report.py check_fits, a run that cannot fit is one line, not an
out-of-memory error minutes later.) The reference exists only for grpo.beta > 0 without LoRA (with
LoRA the base, adapters off, is the reference). Activation checkpointing and, under torchrun,
FSDP2 sharding are applied here. With model.quantize nf4 the base's block projections are quantised
to 4 bits as they load (qwen2/nf4.py); one process only (`refuse_sharded_nf4`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from qwen2 import Qwen2, Tokenizer, load_model
from qwen2.errors import InputError, MissingInput
from qwen2.lora import add_lora, load_adapter

from .config import Config
from .machinery.distributed import Dist, shard
from .machinery.runtime import cpu_warning, enable_activation_checkpointing


def policy_dir(cfg: Config, ckpt: Path | None) -> Path:
    """The model directory the policy loads from: the checkpoint's model/, else model.path (with LoRA
    always model.path, the adapters' base). One line when it is missing or the wrong kind."""
    lora = cfg.model.lora
    if ckpt and (ckpt / "adapter").is_dir() != bool(lora.rank):
        raise InputError(f"{ckpt} was trained {'with' if lora.rank == 0 else 'without'} LoRA: resume it with "
                         "its own model.lora settings")
    model_dir = ckpt / "model" if ckpt and not lora.rank else Path(cfg.model.path)
    if not model_dir.is_dir():
        raise MissingInput(f"model.path {model_dir} not found: run python download.py, or point "
                           "--set model.path=DIR at a Hugging Face Qwen2 checkpoint directory "
                           "(python scripts/tiny_recipe.py builds an offline tiny one)")
    return model_dir


def refuse_sharded_nf4(cfg: Config, ranks: int) -> None:
    """One line for a 4-bit base under torchrun: FSDP2 would have to shard and all-gather the codes
    and scales of NF4Linear (torchao's NF4Tensor does it with a tensor subclass), not done here."""
    if cfg.model.quantize != "none" and ranks > 1:
        raise InputError(f"model.quantize={cfg.model.quantize} runs in one process: sharding 4-bit weights with FSDP2 "
                         "is not supported; run train.py without torchrun, or set model.quantize=none")


def load_policy(cfg: Config, ckpt: Path | None, dist: Dist) -> tuple[Qwen2, Qwen2 | None, Tokenizer]:
    """(policy, reference or None, tokenizer), on `dist.device` (sharded under torchrun)."""
    lora, dtype = cfg.model.lora, getattr(torch, cfg.model.dtype)
    refuse_sharded_nf4(cfg, dist.world)
    model_dir = policy_dir(cfg, ckpt)
    load_to = "cpu" if dist.launched else dist.device  # torchrun: each rank shards the CPU copy onto its device
    model = load_model(model_dir, device=load_to, dtype=dtype, quantize=cfg.model.quantize)
    if ckpt and lora.rank:
        load_adapter(model, ckpt / "adapter")
    elif lora.rank:  # B = 0: training starts from the base model exactly
        # A is drawn where the weights are: on the CPU under torchrun (sharded onto the GPUs later),
        # where a generator of this rank's GPU would be refused. So N ranks on GPUs start from other
        # adapters than one process on a GPU (the CPU's and CUDA's random streams differ), and from
        # the same ones as a CPU run with the same seed.
        weights_on = next(model.parameters()).device
        add_lora(model, lora.rank, lora.alpha, lora.targets, lora.dropout,
                 generator=torch.Generator(device=weights_on).manual_seed(cfg.train.seed))
    warning = cpu_warning(dist.device, dtype, model.config.num_params)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    tokenizer = Tokenizer.from_pretrained(model_dir)
    ref_model = None
    if cfg.grpo.beta > 0 and not lora.rank:  # frozen initial policy for the KL term (LoRA: adapters off)
        ref_model = load_model(cfg.model.path, device=load_to, dtype=dtype).requires_grad_(False)
    if cfg.model.activation_checkpointing:
        enable_activation_checkpointing(model)
    if dist.launched:
        for m in (model, ref_model):
            if m is not None:
                shard(m, dist)
    return model, ref_model, tokenizer
