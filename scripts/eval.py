"""Evaluate a checkpoint on GSM8K or a math benchmark, batched through our KV-cache sampler: greedy
pass@1 by default, or mean@k and pass@k with k seeded samples per question.

    python scripts/eval.py --model runs/gsm8k/checkpoints/step_000200/model
    python scripts/eval.py --model checkpoints/Qwen2.5-3B-Instruct --limit 200 --out eval.jsonl
    python scripts/eval.py --model ... --samples 8 --temperature 1.0     # mean@8 and pass@8, seeded
    python scripts/eval.py --model checkpoints/Qwen3-1.7B --data datasets/math500/test.jsonl \\
        --samples 4 --sampling qwen3 --max-new-tokens 4096                # MATH-500 the way Qwen3's card asks
    python scripts/eval.py --model runs/tiny/grpo/checkpoints/step_000400/model --data runs/tiny/data/test.jsonl

Writes one JSON line per completion (question, gold answer, completion, correct, reward parts and the
row's own fields such as subject and level) and prints accuracy. The results go next to the model
folder (`<folder>_eval_<data>.jsonl`), never inside it: a checkpoint's model/ folder stays a clean
Hugging Face directory to share.

What is scored, and how: a checkpoint of one of our runs is evaluated on that run's task (its field
names, prompt, reward functions and answer check: data/task.py; its test file unless --data names
another; its rollout.max_new_tokens unless --max-new-tokens) unless --reward or --template choose
another. Otherwise --reward math scores LaTeX answers with data/math_answer.py (format 0.1 + math
1.0, prompt template "math") and --reward gsm8k the GSM8K number (format 0.1 + correctness 1.0,
template "think"); the default, auto, takes gsm8k for GSM8K-format rows (answers "... #### N") and math
for any other set (MATH-500, AMC23, AIME, OlympiadBench as download.py writes them).

With --samples K > 1 each question is sampled K times (seeded by --seed, with --temperature/--top-p/
--top-k as in the rollout, or --sampling qwen3 for Qwen3's card: T 0.6, top-p 0.95, top-k 20): it
prints mean@K (the policy's expected accuracy) and the unbiased pass@k for k = 2, 4, ..., K, each with
a 95% interval over questions (grpo/eval_stats.py: normal, questions as the unit), and the same by
subject and by level when the rows have them (MATH-500, OlympiadBench).
Simplifications: one device, no majority voting.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from data.gsm8k import load_problems
from data.prompts import TEMPLATES, get_template
from data.rewards import GSM8K_WEIGHTS, Rewards, parse_number
from data.task import Task
from grpo.config import Config, load_config
from grpo.eval_stats import breakdown, by_question, format_breakdown, format_report, report
from grpo.evaluate import evaluate
from grpo.machinery.checkpoint import run_of, started_config
from grpo.machinery.runtime import DTYPES, choose_cpu_threads, model_size, resolve_device
from qwen2 import SamplingParams, Tokenizer
from qwen2.lora import load_adapted_model, read_adapter_config
from qwen2.errors import MissingInput, run_command

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_DATA = "datasets/gsm8k/test.jsonl"
MATH_WEIGHTS = {"format": 0.1, "math": 1.0}
REWARDS = {"gsm8k": (GSM8K_WEIGHTS, "think"), "math": (MATH_WEIGHTS, "math")}  # weights, their prompt template
SAMPLING = {"qwen3": (0.6, 0.95, 20)}  # Qwen3's model card (thinking mode): temperature, top-p, top-k
BREAKDOWN_KEYS = ("subject", "level")


def run_config(model: Path) -> Config | None:
    """The config of the run whose checkpoint holds `model` (RUN/checkpoints/step_N/model or adapter/),
    or None for a model folder of its own."""
    run_dir = run_of(model.resolve().parent)
    started = started_config(run_dir) if run_dir is not None else None
    return load_config(base=started) if started is not None else None


def choose_task(args: argparse.Namespace, data: Path, run: Config | None) -> tuple[Task, str]:
    """(the task that prompts and scores, a one-line description of it) for these arguments."""
    if run is not None and args.reward == "auto" and args.template is None:
        task = run.task()
        return task, f"the run's task (reward {_weights(task.rewards.weights)}, correct = {task.rewards.correct})"
    reward = args.reward
    if reward == "auto":  # GSM8K's "... #### N" rows -> its number; anything else (LaTeX, AIME's 024) -> math
        problems = load_problems(data)
        reward = "gsm8k" if all(p.solution and parse_number(p.answer) is not None for p in problems) else "math"
    weights, template = REWARDS[reward]
    prompt = get_template(args.template or template)
    return Task(prompt, Rewards(weights)), f"reward {reward} ({_weights(weights)}), template {args.template or template}"


def _weights(weights: dict[str, float]) -> str:
    return " + ".join(f"{name} {w:g}" for name, w in weights.items())


def print_statistics(results: list[dict], samples: int) -> None:
    """mean@k and pass@k with 95% intervals, then by subject and level where the rows have them."""
    groups = by_question(results, samples)
    per_question = [[r["correct"] for r in g] for g in groups]
    stats = report(per_question)
    q = len(groups)
    print(format_report(stats) + f"  (95% intervals: normal over {q} questions)")
    if samples > 1:  # the report's pass@k at k = samples, as a count of questions
        solved = round(stats[f"pass@{samples}"].value * q)
        print(f"pass@{samples} {solved / q:.4f} ({solved}/{q} questions) | mean@{samples} is the accuracy below")
    for line in format_breakdown(breakdown(per_question, [g[0] for g in groups], BREAKDOWN_KEYS)):
        print(line)


def default_out(model: Path, data: Path) -> Path:
    """`<model folder>_eval_<data name>.jsonl` beside the model folder (step_000200/model_eval_test.jsonl)."""
    return model.parent / f"{model.name}_eval_{data.stem}.jsonl"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="HF-format model directory (a checkpoint's model/ folder), or a "
                                                   "LoRA checkpoint's adapter/ folder (its base is loaded first)")
    ap.add_argument("--data", default=None, help="JSONL with question and answer fields (default: the run's test "
                                                 f"file for a checkpoint of one of our runs, else {DEFAULT_DATA})")
    ap.add_argument("--out", default=None, help="per-question results JSONL (default: <model>_eval_<data name>.jsonl "
                                                "next to the model folder)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N questions")
    ap.add_argument("--template", default=None, choices=sorted(TEMPLATES),
                    help="prompt template (default: the run's, else think for --reward gsm8k and math for math)")
    ap.add_argument("--reward", default="auto", choices=["auto", *REWARDS],
                    help="how answers are scored: gsm8k (the number), math (LaTeX answers, data/math_answer.py); "
                         "auto: the run's task, else gsm8k for '#### N' answers and math for any other")
    ap.add_argument("--max-new-tokens", type=int, default=None,
                    help="completion budget (default: the run's rollout.max_new_tokens for a checkpoint of our runs, else 512)")
    ap.add_argument("--batch-size", type=int, default=64, help="questions per batch")
    ap.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda | cuda:N")
    ap.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                    help="auto = bfloat16 on a GPU, float32 on a CPU (bf16 matmuls are slow on CPUs)")
    ap.add_argument("--samples", type=int, default=1, help="completions per question (> 1 needs --temperature > 0)")
    ap.add_argument("--sampling", choices=sorted(SAMPLING), default=None,
                    help="a model card's settings: qwen3 = temperature 0.6, top-p 0.95, top-k 20 (flags below win)")
    ap.add_argument("--temperature", type=float, default=None, help="0 = greedy (default)")
    ap.add_argument("--top-p", type=float, default=None, help="default 1.0 (off)")
    ap.add_argument("--top-k", type=int, default=None, help="default 0 (off)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (with --temperature > 0)")
    ap.add_argument("--tools", nargs="*", default=[], choices=["calculator"],
                    help="offer these tools through the chat template (rollout.tools); results keep the whole exchange")
    ap.add_argument("--max-tool-calls", type=int, default=4, help="tool calls per completion (with --tools)")
    ap.add_argument("--compile", default="auto", choices=["auto", "true", "false"],
                    help="decode with the compiled static-shape step (auto: on a GPU; ~30 s to compile on a CPU)")
    ap.add_argument("--threads", type=int, default=None, metavar="N",
                    help="torch CPU threads (default: 1 for a CPU run of a model under 100M parameters, else torch's)")
    args = ap.parse_args(argv)
    preset = SAMPLING.get(args.sampling, (0.0, 1.0, 0))
    sampling = SamplingParams(*(given if given is not None else default for given, default in  # checks the ranges
                                zip((args.temperature, args.top_p, args.top_k), preset)))

    run = run_config(Path(args.model))
    data = Path(args.data or (run.data.test_file if run is not None else DEFAULT_DATA))
    if not data.is_file() and args.data is None and run is None:
        raise MissingInput(f"{DEFAULT_DATA} not found: run python download.py, or pass --data FILE "
                                "(the tiny recipe's held-out set is runs/tiny/data/test.jsonl)")
    task, scoring = choose_task(args, data, run)
    problems = task.load(data)[: args.limit]
    device = resolve_device(args.device)
    adapter = (Path(args.model) / "adapter_config.json").is_file()  # then the size is its base model's
    base = read_adapter_config(args.model).get("base_model_name_or_path") if adapter else args.model
    choose_cpu_threads(device, model_size(base) if base else None, args.threads)
    dtype = DTYPES[args.dtype] if args.dtype != "auto" else (torch.float32 if device.type == "cpu" else torch.bfloat16)
    model = load_adapted_model(args.model, device=device, dtype=dtype)  # a model, or a LoRA adapter on its base
    tokenizer = Tokenizer.from_pretrained(args.model)
    t0 = time.perf_counter()
    print(f"{data}: {len(problems)} questions, {scoring}, {args.samples} sample(s) each at temperature "
          f"{sampling.temperature:g}, top-p {sampling.top_p:g}, top-k {sampling.top_k}")
    budget = args.max_new_tokens or (run.rollout.max_new_tokens if run is not None else 512)
    summary, results = evaluate(model, tokenizer, problems, max_new_tokens=budget, template=task.prompt,
                                rewards=task.rewards, batch_size=args.batch_size, progress=True,
                                sampling=sampling, samples=args.samples, seed=args.seed,
                                compile=device.type == "cuda" if args.compile == "auto" else args.compile == "true",
                                tools=args.tools, max_tool_calls=args.max_tool_calls)
    out = Path(args.out) if args.out else default_out(Path(args.model), data)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        for r in results:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print_statistics(results, args.samples)
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
