"""LoRA (Hu et al. 2021): small trainable low-rank adapters beside frozen weights, in PEFT's format.

A chosen linear layer y = x W^T (+ b) gets two small matrices, A (r x in) and B (out x r):

    y = x W^T (+ b) + (alpha / r) * dropout(x) A^T B^T

B starts at zero, so the adapted model starts exactly as the base model; only A and B are trained,
r * (in + out) numbers per layer instead of in * out (for Qwen2.5-7B at r = 16 on every projection:
40M instead of 7.6B). Switching the adapters off gives the base model back, so the KL reference
costs no second copy of the weights; merging folds (alpha / r) B A into W for deployment.

The adapters hang on the existing nn.Linear modules (`q_proj.lora_A`, `q_proj.lora_B`) and a
forward hook adds their term: the base parameter names stay Hugging Face's and qwen2/model.py knows
nothing of LoRA. They are saved as a PEFT adapter directory (adapter_config.json,
adapter_model.safetensors) with PEFT's tensor names, e.g.
`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`, which PEFT and vLLM load.
Qwen3 has the same seven projections (its q_norm and k_norm are no targets, and stay frozen).

On a 4-bit base (qwen2/nf4.py, model.quantize nf4: QLoRA) the adapters hang on the NF4Linear that
replaced each projection under its name, in the dtype it dequantises to; the saved adapter is the
same PEFT directory, for the unquantised base. Merging into 4 bits is refused (merge_lora).

Simplifications: linear layers only (no embedding or LM-head adapters), one adapter at a time, no
rsLoRA or DoRA; adapters in the model's dtype (OffloadAdamW keeps fp32 masters of them). The
sampler runs the adapters unmerged: merging into bf16 weights and back is not exact, and the two
extra rank-r matmuls per layer are cheap next to the base ones.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .errors import InputError

from .model import BLOCK_LINEARS, Qwen2
from .nf4 import NF4Linear
from .weights import check_weight_files, load_model

TARGETS = BLOCK_LINEARS  # every projection of a block may carry an adapter (model.lora.targets)
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # PEFT's name for the wrapped Qwen2ForCausalLM


def _lora_term(module: nn.Linear, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
    """Forward hook: add (alpha / r) * B(A(dropout(x))) to the base layer's output."""
    if not module.lora_enabled:
        return output
    return output + module.lora_B(module.lora_A(module.lora_dropout(inputs[0]))) * module.lora_scaling


def add_lora(model: Qwen2, rank: int, alpha: float, targets: Sequence[str] = TARGETS, dropout: float = 0.0,
             generator: torch.Generator | None = None) -> None:
    """Freeze every weight of `model` and give each `targets` projection of every block an adapter."""
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown or not targets:
        raise ValueError(f"unknown LoRA target {', '.join(unknown) or '(none given)'}: valid are {', '.join(TARGETS)}")
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    model.requires_grad_(False)
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] not in targets or not isinstance(module, (nn.Linear, NF4Linear)):
            continue
        w = module if isinstance(module, NF4Linear) else module.weight  # a 4-bit base: the dtype it dequantises to
        module.lora_A = nn.Linear(module.in_features, rank, bias=False, device=w.device, dtype=w.dtype)
        module.lora_B = nn.Linear(rank, module.out_features, bias=False, device=w.device, dtype=w.dtype)
        with torch.no_grad():  # PEFT's initialisation: A as nn.Linear's default, B zero
            bound = 1 / math.sqrt(module.in_features)  # kaiming_uniform_(a=sqrt(5)) of an (r, in) weight
            module.lora_A.weight.uniform_(-bound, bound, generator=generator)
            module.lora_B.weight.zero_()
        module.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        module.lora_scaling, module.lora_enabled = alpha / rank, True
        module.lora_hook = module.register_forward_hook(_lora_term)
    model.lora_config = {"r": rank, "lora_alpha": alpha, "lora_dropout": dropout, "target_modules": sorted(targets)}


def lora_layers(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if hasattr(m, "lora_A")]


def has_lora(model: nn.Module) -> bool:
    return bool(lora_layers(model))


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """The base model, for as long as the block runs (the KL reference of beta > 0)."""
    layers = lora_layers(model)
    for m in layers:
        m.lora_enabled = False
    try:
        yield
    finally:
        for m in layers:
            m.lora_enabled = True


@torch.no_grad()
def merge_lora(model: Qwen2) -> None:
    """Fold every adapter into its weight, W += (alpha / r) B A (computed in fp32), and remove the adapters.
    Refused on a 4-bit base (qwen2/nf4.py): W + (alpha / r) B A re-quantised would lose most of the
    update, which is far smaller than the NF4 steps; merge the saved adapter into the unquantised base."""
    if any(isinstance(m, NF4Linear) for m in lora_layers(model)):
        raise InputError("cannot merge LoRA into a 4-bit (NF4) base: re-quantising W + BA would lose the update; "
                         "merge the saved adapter into the unquantised base: python scripts/merge_lora.py ADAPTER OUT")
    for m in lora_layers(model):
        delta = m.lora_B.weight.float() @ m.lora_A.weight.float() * m.lora_scaling
        m.weight.copy_((m.weight.float() + delta).to(m.weight.dtype))
        m.lora_hook.remove()
        for attr in ("lora_A", "lora_B", "lora_dropout", "lora_scaling", "lora_enabled", "lora_hook"):
            delattr(m, attr)
    model.__dict__.pop("lora_config", None)


def adapter_state_dict(model: nn.Module, state_dict: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """The adapter weights under PEFT's names (`base_model.model.<name>.lora_A.weight`), from
    `state_dict` (a sharded model's, gathered) or the model's own."""
    return {PEFT_PREFIX + name: t.detach().contiguous() for name, t in (state_dict or model.state_dict()).items()
            if ".lora_A." in name or ".lora_B." in name}


def save_adapter(model: Qwen2, path: str | os.PathLike, base_model: str,
                 state_dict: dict[str, Tensor] | None = None) -> None:
    """Write a PEFT adapter directory for `model`'s adapters; `base_model` is the base's directory.
    `state_dict` replaces model.state_dict() (a sharded model's weights, gathered)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": str(base_model),
              **model.lora_config, "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
              "init_lora_weights": True, "modules_to_save": None, "use_rslora": False, "use_dora": False}
    (path / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    save_file(adapter_state_dict(model, state_dict), path / ADAPTER_WEIGHTS, metadata={"format": "pt"})


def read_adapter_config(path: str | os.PathLike) -> dict:
    """adapter_config.json of a PEFT LoRA directory, with a one-line error for anything else."""
    file = Path(path) / ADAPTER_CONFIG
    if not file.is_file() or not (Path(path) / ADAPTER_WEIGHTS).is_file():
        raise InputError(f"{path} is not a LoRA adapter directory: it needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise InputError(f"{file} is damaged, not UTF-8 JSON ({e})") from None
    kind = config.get("peft_type") if isinstance(config, dict) else type(config).__name__
    if kind != "LORA":
        raise InputError(f"{file} is not a LoRA adapter config (peft_type {kind!r})")
    r, alpha = config.get("r"), config.get("lora_alpha", 8)
    if not (isinstance(r, int) and 0 < r <= 65536 and isinstance(alpha, (int, float)) and 0 < alpha < 1e6
            and isinstance(config.get("base_model_name_or_path") or "", str)):
        raise InputError(f"{file} is damaged: r={r!r}, lora_alpha={alpha!r} (need a rank in [1, 65536] and an alpha "
                         "in (0, 1e6)), base_model_name_or_path must be a path")
    return config


def check_adapter_files(path: str | os.PathLike) -> None:
    """weights.check_weight_files for an adapter directory: a one-line error for a damaged
    adapter_config.json, a missing or truncated adapter_model.safetensors or tokenizer.json."""
    read_adapter_config(path)
    check_weight_files(path, files=[Path(path) / ADAPTER_WEIGHTS])


def load_adapter(model: Qwen2, path: str | os.PathLike) -> None:
    """Add the adapters saved in `path` to `model` (which must be their base model's shape)."""
    config = read_adapter_config(path)
    add_lora(model, config["r"], config.get("lora_alpha", 8), config.get("target_modules") or TARGETS,
             config.get("lora_dropout", 0.0))
    weights = load_file(Path(path) / ADAPTER_WEIGHTS)
    expected = adapter_state_dict(model)
    if set(weights) != set(expected):
        missing, extra = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
        raise InputError(f"{path} does not fit this base model: {len(missing)} adapter tensors missing "
                         f"({(missing or extra)[:1]}), {len(extra)} unexpected")
    own = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in weights.items():
            target = own[name.removeprefix(PEFT_PREFIX)]
            if target.shape != tensor.shape:
                raise InputError(f"{path} does not fit this base model: {name} is {tuple(tensor.shape)}, "
                                 f"the base needs {tuple(target.shape)}")
            target.copy_(tensor)


def load_adapted_model(path: str | os.PathLike, base: str | os.PathLike | None = None, *,
                       device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> Qwen2:
    """A model directory as it is, or an adapter directory on its base (`base`, else the directory its
    adapter_config.json names)."""
    if not (Path(path) / ADAPTER_CONFIG).is_file():
        return load_model(path, device=device, dtype=dtype)
    base = base or read_adapter_config(path)["base_model_name_or_path"]
    model = load_model(base, device=device, dtype=dtype)
    load_adapter(model, path)
    return model
