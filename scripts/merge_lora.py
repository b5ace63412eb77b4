"""Merge a LoRA adapter into its base model and write a full Hugging Face model directory.

    python scripts/merge_lora.py runs/gsm8k-lora/checkpoints/step_000200/adapter checkpoints/Qwen2.5-7B-grpo
    python scripts/merge_lora.py ADAPTER_DIR OUT_DIR --base checkpoints/Qwen2.5-7B-Instruct

The adapter is a PEFT directory (adapter_config.json + adapter_model.safetensors), as train.py saves
with model.lora.rank > 0; the base is `--base`, else the directory its adapter_config.json names.
Each adapted weight becomes W + (alpha / r) B A (computed in fp32, stored in the base's dtype); the
result (config, safetensors, tokenizer) loads with transformers' AutoModelForCausalLM, vLLM or
scripts/eval.py like any checkpoint. Simplification: the merge runs on the CPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qwen2 import Tokenizer, load_model, save_model
from qwen2.lora import load_adapter, merge_lora, read_adapter_config
from qwen2.errors import InputError, MissingInput, run_command

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("adapter", help="PEFT LoRA adapter directory (a LoRA checkpoint's adapter/ folder)")
    ap.add_argument("out", help="directory for the merged Hugging Face model")
    ap.add_argument("--base", default=None, help="base model directory (default: the adapter's base_model_name_or_path)")
    args = ap.parse_args(argv)
    adapter, out = Path(args.adapter), Path(args.out)
    config = read_adapter_config(adapter)  # one-line error when it is not an adapter
    base = Path(args.base or config.get("base_model_name_or_path") or "")
    if not (base / "config.json").is_file():
        raise MissingInput(f"base model {base} not found: pass --base DIR (the model the adapter was trained on)")
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out} already exists and is not empty: pick another directory")
    model = load_model(base)
    load_adapter(model, adapter)  # one-line error when the shapes do not fit this base
    merge_lora(model)
    save_model(model, out)
    tokenizer_dir = adapter if (adapter / "tokenizer.json").is_file() else base
    Tokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    print(f"merged {adapter} (rank {config['r']}) into {base} -> {out}")
    return out


if __name__ == "__main__":
    sys.exit(run_command(main))
