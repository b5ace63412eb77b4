"""Evaluate a checkpoint on GSM8K, batched through our KV-cache sampler: greedy pass@1 by default.

    python scripts/eval.py --model runs/gsm8k/checkpoints/step_000200/model
    python scripts/eval.py --model checkpoints/Qwen2.5-3B-Instruct --limit 200 --out eval.jsonl
    python scripts/eval.py --model ... --samples 8 --temperature 1.0     # mean@8 and pass@8, seeded
    python scripts/eval.py --model runs/tiny/grpo/checkpoints/step_000400/model --data runs/tiny/data/test.jsonl

Writes one JSON line per completion (question, gold answer, completion, correct, reward parts) and
prints accuracy. The results go next to the model folder (`<folder>_eval_<data>.jsonl`), never
inside it: a checkpoint's model/ folder stays a clean Hugging Face directory to share. With
--samples K > 1 each question is sampled K times (seeded by --seed, with --temperature/--top-p/
--top-k as in the rollout): accuracy is then mean@K (the policy's expected accuracy) and pass@K
(share of questions with at least one right answer) is printed too.
Simplifications: one device, no majority voting.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from data.gsm8k import load_gsm8k
from data.prompts import TEMPLATES
from data.rewards import GSM8K_WEIGHTS, Rewards
from grpo.evaluate import evaluate
from grpo.machinery.runtime import DTYPES, choose_cpu_threads, model_size, resolve_device
from qwen2 import SamplingParams, Tokenizer
from qwen2.lora import load_adapted_model, read_adapter_config
from qwen2.errors import MissingInput, run_command

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_DATA = "datasets/gsm8k/test.jsonl"


def default_out(model: Path, data: Path) -> Path:
    """`<model folder>_eval_<data name>.jsonl` beside the model folder (step_000200/model_eval_test.jsonl)."""
    return model.parent / f"{model.name}_eval_{data.stem}.jsonl"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="HF-format model directory (a checkpoint's model/ folder), or a "
                                                   "LoRA checkpoint's adapter/ folder (its base is loaded first)")
    ap.add_argument("--data", default=DEFAULT_DATA, help=f"GSM8K-format JSONL (default: {DEFAULT_DATA})")
    ap.add_argument("--out", default=None, help="per-question results JSONL (default: <model>_eval_<data name>.jsonl "
                                                "next to the model folder)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N questions")
    ap.add_argument("--template", default="think", choices=sorted(TEMPLATES), help="prompt template (default think)")
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=64, help="questions per batch")
    ap.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda | cuda:N")
    ap.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                    help="auto = bfloat16 on a GPU, float32 on a CPU (bf16 matmuls are slow on CPUs)")
    ap.add_argument("--samples", type=int, default=1, help="completions per question (> 1 needs --temperature > 0)")
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (with --temperature > 0)")
    ap.add_argument("--tools", nargs="*", default=[], choices=["calculator"],
                    help="offer these tools through the chat template (rollout.tools); results keep the whole exchange")
    ap.add_argument("--max-tool-calls", type=int, default=4, help="tool calls per completion (with --tools)")
    ap.add_argument("--compile", default="auto", choices=["auto", "true", "false"],
                    help="decode with the compiled static-shape step (auto: on a GPU; ~30 s to compile on a CPU)")
    ap.add_argument("--threads", type=int, default=None, metavar="N",
                    help="torch CPU threads (default: 1 for a CPU run of a model under 100M parameters, else torch's)")
    args = ap.parse_args(argv)
    sampling = SamplingParams(args.temperature, args.top_p, args.top_k)  # checks the ranges

    data = Path(args.data)
    if not data.is_file() and args.data == DEFAULT_DATA:
        raise MissingInput(f"{DEFAULT_DATA} not found: run python download.py, or pass --data FILE "
                                "(the tiny recipe's held-out set is runs/tiny/data/test.jsonl)")
    problems = load_gsm8k(data)[: args.limit]
    device = resolve_device(args.device)
    adapter = (Path(args.model) / "adapter_config.json").is_file()  # then the size is its base model's
    base = read_adapter_config(args.model).get("base_model_name_or_path") if adapter else args.model
    choose_cpu_threads(device, model_size(base) if base else None, args.threads)
    dtype = DTYPES[args.dtype] if args.dtype != "auto" else (torch.float32 if device.type == "cpu" else torch.bfloat16)
    model = load_adapted_model(args.model, device=device, dtype=dtype)  # a model, or a LoRA adapter on its base
    tokenizer = Tokenizer.from_pretrained(args.model)
    t0 = time.perf_counter()
    summary, results = evaluate(model, tokenizer, problems, max_new_tokens=args.max_new_tokens, template=args.template,
                                rewards=Rewards(GSM8K_WEIGHTS), batch_size=args.batch_size, progress=True,
                                sampling=sampling, samples=args.samples, seed=args.seed,
                                compile=device.type == "cuda" if args.compile == "auto" else args.compile == "true",
                                tools=args.tools, max_tool_calls=args.max_tool_calls)
    out = Path(args.out) if args.out else default_out(Path(args.model), data)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        for r in results:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    if args.samples > 1:
        k = args.samples
        solved = sum(any(r["correct"] for r in results[i:i + k]) for i in range(0, len(results), k))
        print(f"pass@{k} {solved / summary['questions']:.4f} ({solved}/{summary['questions']} questions) | "
              f"mean@{k} is the accuracy below")
    if args.tools:
        print(f"tool calls {summary['tool_calls']:.2f} per completion")
    print(f"accuracy {summary['accuracy']:.4f} ({sum(r['correct'] for r in results)}/{summary['n']}) | "
          f"reward {summary['reward']:.3f} | mean length {summary['length']:.0f} | truncated {summary['truncated']:.3f} | "
          f"{time.perf_counter() - t0:.0f}s -> {out}")
    return 0


def run(argv: list[str] | None = None) -> int:
    """main() with bad input turned into one line on stderr and exit status 2."""
    return run_command(lambda: main(argv))


if __name__ == "__main__":
    sys.exit(run())
