"""Load and save Hugging Face format Qwen2 / Qwen2.5 and dense Qwen3 checkpoints (config.json + safetensors).

Loading builds the model on the meta device (no memory), checks every tensor name and shape from
the safetensors headers before reading any data, then fills the model shard by shard with
`load_state_dict(assign=True)`, so at no point are two copies of the weights held.

Saving writes `config.json` and `model.safetensors`, or `model-0000i-of-0000n.safetensors` shards
plus `model.safetensors.index.json` above `max_shard_size`: the layout transformers reads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import Qwen2Config
from .errors import InputError, MissingInput
from .model import Qwen2
from .nf4 import NF4Linear, is_quantized, quantizable
from .nf4 import quantize as quantize_nf4

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class CheckpointError(InputError):
    """A checkpoint directory that cannot be loaded; the message says why and what to do."""


def _checkpoint_files(path: Path) -> list[Path]:
    index = path / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index} is damaged ({e}): re-run python download.py") from None
        files = [path / name for name in sorted(set(weight_map.values()))]
        for f in files:
            if not f.is_file():
                raise CheckpointError(f"shard {f.name} is listed in {INDEX_FILE} but missing from {path}: re-run python download.py")
        return files
    if (path / SINGLE_FILE).is_file():
        return [path / SINGLE_FILE]
    raise CheckpointError(f"no {SINGLE_FILE} or {INDEX_FILE} in {path}: run python download.py (only safetensors checkpoints are supported)")


def _read_header(file: Path) -> dict[str, torch.Size]:
    """Tensor name -> shape from a safetensors header, checking the file holds all the bytes it declares."""
    try:
        with open(file, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n > file.stat().st_size - 8:
                raise ValueError(f"header length {n} exceeds the file size")
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        end = max((t["data_offsets"][1] for t in header.values()), default=0)
    except (ValueError, KeyError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file} is not a valid safetensors file ({e}): delete it and re-run python download.py") from None
    if file.stat().st_size < 8 + n + end:
        raise CheckpointError(f"{file} is truncated ({file.stat().st_size} bytes, header needs {8 + n + end}): delete it and re-run python download.py")
    return {name: torch.Size(t["shape"]) for name, t in header.items()}


def check_weight_files(path: str | os.PathLike, files: list[Path] | None = None) -> None:
    """A one-line CheckpointError when a model directory lacks a file or holds a damaged or truncated
    one. Reads headers only, so it is cheap for any model size. `files`: the safetensors files to
    check instead of a model's (a LoRA adapter directory: qwen2/lora.py `check_adapter_files`)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is missing")
    if files is None:
        Qwen2Config.from_json(path / "config.json")
        files = _checkpoint_files(path)
    for f in files:
        _read_header(f)
    tokenizer = path / "tokenizer.json"
    if tokenizer.is_file():
        try:
            json.loads(tokenizer.read_text(encoding="utf-8"))
        except ValueError as e:
            raise CheckpointError(f"{tokenizer} is damaged ({e})") from None


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
               quantize: str = "none") -> Qwen2:
    """Load a Hugging Face Qwen2 or Qwen3 checkpoint directory. dtype=None keeps the stored dtype.
    quantize="nf4": every block projection is quantised (qwen2/nf4.py) as it is read, on `device`,
    so only one of them is ever there in full precision: a 14B loads into 8 GB instead of 29 GB."""
    if quantize not in ("none", "nf4"):
        raise ValueError(f"quantize must be none or nf4, got {quantize!r}")
    path = Path(path)
    if not path.is_dir():
        raise MissingInput(f"model directory {path} not found: run python download.py "
                                f"(python scripts/tiny_recipe.py for the offline tiny model), or pass a Hugging Face checkpoint directory")
    config = Qwen2Config.from_json(path / "config.json")
    files = _checkpoint_files(path)

    with torch.device("meta"):
        model = Qwen2(config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight")  # the head *is* the embedding; tied checkpoints omit it

    # Check names and shapes of everything before reading a single weight.
    found: dict[str, torch.Size] = {}
    for f in files:
        found.update(_read_header(f))
    if config.tie_word_embeddings:
        found.pop("lm_head.weight", None)  # some exporters write the tied copy anyway
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks tensor {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "") + ": is it a complete Qwen2/Qwen3 checkpoint matching its config.json?")
    if unexpected:
        raise CheckpointError(f"checkpoint {path} has unexpected tensor {unexpected[0]}" + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else "") + ": is it a Qwen2/Qwen3 checkpoint matching its config.json?")
    for name, shape in expected.items():
        if found[name] != shape:
            raise CheckpointError(f"tensor {name} has shape {tuple(found[name])} in the checkpoint but the config needs {tuple(shape)}: config.json and weights do not match")

    to_quantize = {f"{n}.weight" for n, m in model.named_modules() if quantizable(n, m) and quantize == "nf4"}
    quantized: dict[str, dict[str, torch.Tensor]] = {}  # weight name -> its NF4 codes and scales
    for f in files:
        try:
            with safe_open(f, framework="pt", device="cpu") as st:
                shard = {}
                for name in st.keys():
                    if name in to_quantize:  # this weight alone in full precision on the device, then 4 bits
                        quantized[name] = quantize_nf4(st.get_tensor(name).to(device=device, dtype=dtype or None))
                    elif name in expected:
                        shard[name] = st.get_tensor(name).to(device=device, dtype=dtype or None)
        except SafetensorError as e:
            raise CheckpointError(f"{f} is corrupt ({e}): delete it and re-run python download.py") from None
        model.load_state_dict(shard, strict=False, assign=True)
        del shard
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    for name, q in quantized.items():  # each projection (its weight still on meta) becomes its NF4Linear
        parent, _, child = name.removesuffix(".weight").rpartition(".")
        linear = model.get_submodule(name.removesuffix(".weight"))
        setattr(model.get_submodule(parent), child, NF4Linear(linear.in_features, linear.out_features, linear.bias, q))
    if dtype is not None:
        model.config.torch_dtype = str(dtype).removeprefix("torch.")
    return model


def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    s = size.strip().upper()
    for unit, mult in sorted(units.items(), key=lambda u: -len(u[0])):
        if s.endswith(unit):
            return int(float(s[: -len(unit)]) * mult)
    return int(s)


def save_model(model: Qwen2, path: str | os.PathLike, max_shard_size: int | str = "5GB",
               state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Write `model` as a Hugging Face checkpoint directory (config.json + safetensors).
    `state_dict` replaces model.state_dict() (a sharded model's weights, gathered). A model with a
    4-bit base is refused: its codes are no Hugging Face weights, and dequantised they would be a
    lossy copy of the base; save its LoRA adapter instead (for the unquantised base)."""
    if is_quantized(model):
        raise InputError("a model with a 4-bit (NF4) base cannot be saved as a full model: save its LoRA adapter "
                         "(qwen2.lora.save_adapter) and merge that into the unquantised base with scripts/merge_lora.py")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in (state_dict or model.state_dict()).items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight")
    config = model.config.to_dict()
    config["torch_dtype"] = str(next(iter(state.values())).dtype).removeprefix("torch.")
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    limit = _parse_size(max_shard_size)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    # Remove files of an earlier save with another layout, which would confuse loaders.
    for old in list(path.glob("model*.safetensors")) + [path / INDEX_FILE]:
        old.unlink(missing_ok=True)
    if len(shards) == 1:
        save_file(shards[0], path / SINGLE_FILE, metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, path / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
