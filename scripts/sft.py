"""Supervised fine-tuning (SFT): teach a Qwen2.5 or Qwen3 checkpoint the <think>...</think><answer>...</answer>
format.

    python scripts/sft.py --model checkpoints/Qwen2.5-Math-1.5B --data datasets/gsm8k/train.jsonl \\
        --out checkpoints/Qwen2.5-Math-1.5B-sft --steps 200 --lr 1e-5 --batch-size 32 --dtype bfloat16
    python scripts/sft.py --model checkpoints/Qwen3-1.7B-Base ...     # a Qwen3 base model, the same way
    python scripts/sft.py --model runs/tiny/init --data runs/tiny/data/train.jsonl --out runs/tiny/sft \\
        --eval-file runs/tiny/data/test.jsonl      # what scripts/tiny_recipe.py runs

GRPO only learns from completions it samples, so a model that never writes the reward's format (a
base model, or the tiny random model of the offline recipe) gets no signal. A short SFT "warm start"
fixes that. Each GSM8K-format JSONL problem becomes one example:

    prompt      the chat prompt exactly as the trainer builds it (data.prompts.build_messages +
                the checkpoint's own chat template, via grpo.rollout.encode_prompt)
    completion  <think>{solution, calculator annotations <<..>> stripped}</think>
                <answer>{gold number}</answer><|im_end|>

and the loss is teacher-forced cross-entropy on the completion tokens only (the prompt is context).

With --tools calculator the prompt offers the calculator (as rollout.tools does) and the completion
calls it, in the checkpoint's own format, once per calculation of the solution (data.gsm8k.calculations),
each call a turn of its own, before the final turn above:

    <tool_call>\n{"name": "calculator", "arguments": {"expression": "7 * 8"}}\n</tool_call><|im_end|>
    [the template's tool turn: <tool_response>\n56\n</tool_response>, the next assistant header]
    <think>7 * 8 = 56</think>\n<answer>56</answer><|im_end|>

The tool's tokens are context, exactly as in a rollout: they get no loss (an action mask, as the
trainer's `Episode.action_mask`).
Batches have the trainer's layout (left-padded prompt | completion | right padding) and the
log-probs come from the trainer's own `grpo.logprobs.token_logprobs`; the optimizer is the trainer's
`OffloadAdamW` with linear warmup and cosine decay. The result is saved as a Hugging Face checkpoint
(weights + tokenizer) that train.py reads as model.path.

The turn ends with <|im_end|> (ChatML's end of turn). Base models (Qwen2.5-Math-1.5B, Qwen3-*-Base) declare
<|endoftext|> as their eos, so the saved tokenizer_config.json sets eos_token to <|im_end|>, as
Qwen's own -Instruct releases do; the sampler then stops where the SFT data stopped.

The checkpoint is written to <out>.tmp and renamed when complete.

Simplifications: full fine-tuning (no LoRA), one device, no packing (each row is one example, padded),
a number of steps instead of epochs, no validation loss (an optional greedy accuracy on --eval-file
at the end instead). --stop-at-accuracy ends SFT early on purpose, once greedy accuracy on training
questions reaches a target: a warm start for GRPO should know the format and some answers, not all.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch

from data.gsm8k import Problem, calculations, load_gsm8k, strip_calculator_annotations
from data.prompts import TEMPLATES, build_messages, template_tags
from data.rewards import GSM8K_WEIGHTS, Rewards
from data.synthetic import format_completion
from grpo.evaluate import evaluate
from grpo.logprobs import token_logprobs
from grpo.optim.adamw import OffloadAdamW
from grpo.rollout import encode_prompt
from grpo.machinery.runtime import DTYPES, enable_activation_checkpointing, resolve_device
from grpo.schedule import DataOrder, lr_factor
from grpo.tools import TOOLS, call_text, continuation, run_tool_call, tool_specs
from qwen2 import Qwen2, Tokenizer, load_model, pad_batch, save_model
from qwen2.errors import InputError, run_command

ROOT = Path(__file__).resolve().parents[1]

END_OF_TURN = "<|im_end|>"


def sft_target(problem: Problem, template: str = "think") -> str:
    """The completion to imitate: '<think>{solution}</think>\\n<answer>{answer}</answer>'.

    GSM8K solutions carry calculator calls (`48/2 = <<48/2=24>>24`); they are stripped so the
    model learns plain prose. Synthetic problems have none, so this is `format_completion` as is.
    """
    solution = strip_calculator_annotations(problem.solution).strip()
    return format_completion(Problem(problem.question, problem.answer, solution), template_tags(template))


def end_token_id(tokenizer: Tokenizer) -> int:
    """<|im_end|> when the vocabulary has it (every Qwen2.5 tokenizer does), else the eos token."""
    end = tokenizer.token_to_id(END_OF_TURN)
    if end is None:
        end = tokenizer.eos_token_id
    if end is None:
        raise InputError(f"{tokenizer.name}: the tokenizer has neither {END_OF_TURN} nor an eos token to end the answer with")
    return end


Example = tuple[list[int], list[int], list[int]]  # prompt ids, completion ids, action mask (1 = trained on)


def tool_turns(tokenizer: Tokenizer, problem: Problem, template: str, tools: list[str],
               max_calls: int) -> tuple[list[int], list[int]]:
    """The calculator turns before the final answer: each call (a model turn, trained on) and the
    template's rendering of its answer (context, not trained on): (tokens, action mask)."""
    end, specs = end_token_id(tokenizer), tool_specs(tools)
    messages = build_messages(problem.question, template)
    tokens, action = [], []
    for expression in calculations(problem.solution)[:max_calls]:
        call = call_text("calculator", {"expression": expression})
        turn = tokenizer.encode(call) + [end]
        answer = tokenizer.encode(continuation(tokenizer, messages, run_tool_call(call), specs))
        tokens += turn + answer
        action += [1] * len(turn) + [0] * len(answer)
    return tokens, action


def encode_examples(tokenizer: Tokenizer, problems: list[Problem], template: str, max_len: int,
                    tools: list[str] = (), max_calls: int = 4) -> tuple[list[Example], int]:
    """(prompt ids, completion ids + end token, action mask) per problem; with `tools` the completion
    first calls them (tool_turns). Examples longer than max_len are dropped."""
    end = end_token_id(tokenizer)
    completions = tokenizer.encode_batch([sft_target(p, template) for p in problems])
    examples, dropped = [], 0
    for p, completion in zip(problems, completions):
        prompt = encode_prompt(tokenizer, p.question, template, tools)
        calls, action = tool_turns(tokenizer, p, template, list(tools), max_calls) if tools else ([], [])
        completion = calls + completion + [end]
        action = action + [1] * (len(completion) - len(action))
        if len(prompt) + len(completion) > max_len:
            dropped += 1
            continue
        examples.append((prompt, completion, action))
    return examples, dropped


def sft_step(model: Qwen2, batch: list[Example], pad_id: int, micro_batch_size: int,
             device: torch.device) -> tuple[float, int]:
    """Forward + backward of one batch (gradients accumulate over micro-batches); returns (loss, tokens).

    The loss is the mean negative log-likelihood over all trained-on completion tokens of the batch,
    so the micro-batch split does not change it (each part is divided by the batch's token count).
    """
    num_tokens = sum(sum(a) for _, _, a in batch)
    total = 0.0
    for start in range(0, len(batch), micro_batch_size):
        prompts, completions, actions = zip(*batch[start:start + micro_batch_size])
        ids, attn = pad_batch(prompts, pad_id, completions, device=device)  # the trainer's batch layout
        P = max(len(p) for p in prompts)  # the column of the first completion token
        action = torch.zeros_like(attn[:, P:], dtype=torch.float32)
        for i, a in enumerate(actions):
            action[i, :len(a)] = torch.tensor(a, dtype=torch.float32)
        mask = attn[:, P:].float() * action  # padding and tool tokens: no loss
        logp = token_logprobs(model, ids, attn, P)  # (B, C) log-probs of the completion tokens
        loss = -(logp * mask).sum() / num_tokens
        loss.backward()
        total += loss.item()
    return total, num_tokens


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="Hugging Face Qwen2.5 or Qwen3 checkpoint directory (weights + tokenizer)")
    ap.add_argument("--data", required=True, help="GSM8K-format JSONL: {question, answer: 'solution #### number'}")
    ap.add_argument("--out", required=True, help="directory for the fine-tuned checkpoint")
    ap.add_argument("--steps", type=int, default=200, help="optimizer steps (default 200)")
    ap.add_argument("--lr", type=float, default=1e-5, help="peak learning rate (default 1e-5; tiny random models want ~1e-3)")
    ap.add_argument("--batch-size", type=int, default=32, help="examples per optimizer step (default 32)")
    ap.add_argument("--micro-batch-size", type=int, default=0, help="examples per forward/backward (default: the whole batch)")
    ap.add_argument("--warmup-steps", type=int, default=10)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1, help="cosine decay from lr down to lr * this")
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--template", default="think", choices=sorted(TEMPLATES), help="prompt template (default think)")
    ap.add_argument("--max-len", type=int, default=1024, help="longer examples (prompt + completion tokens) are skipped")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N problems of --data (0 = all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"],
                    help="auto = the checkpoint's stored dtype, bfloat16 for one stored in float16 (no loss scaling here: "
                         "float16 gradients would underflow)")
    ap.add_argument("--activation-checkpointing", action="store_true", help="recompute blocks in backward (less memory)")
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--stop-at-accuracy", type=float, default=None, metavar="A",
                    help="stop before --steps once greedy accuracy on --check-size training questions reaches A "
                         "(e.g. 0.3): a deliberately partial warm start that leaves GRPO room to improve")
    ap.add_argument("--check-every", type=int, default=25, help="steps between --stop-at-accuracy checks")
    ap.add_argument("--check-size", type=int, default=128, help="training questions per --stop-at-accuracy check")
    ap.add_argument("--tools", nargs="*", default=[], choices=sorted(TOOLS),
                    help="offer these tools in the prompt and call them in the examples (rollout.tools)")
    ap.add_argument("--max-tool-calls", type=int, default=4, help="calls per example at most (rollout.max_tool_calls)")
    ap.add_argument("--eval-file", help="GSM8K-format JSONL: greedy accuracy on it after training")
    ap.add_argument("--eval-size", type=int, default=200, help="questions of --eval-file to evaluate (default 200)")
    ap.add_argument("--max-new-tokens", type=int, default=256, help="generation budget of the --eval-file evaluation")
    args = ap.parse_args(argv)
    for name in ("steps", "batch_size", "max_len", "log_every", "eval_size", "max_new_tokens", "check_every", "check_size",
                 "max_tool_calls"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.lr <= 0:
        ap.error("--lr must be > 0")
    if args.stop_at_accuracy is not None and not 0 < args.stop_at_accuracy <= 1:
        ap.error("--stop-at-accuracy must be in (0, 1]")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run SFT; returns a summary dict (final loss, seconds, and eval results when --eval-file is given)."""
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    dtype = None if args.dtype == "auto" else DTYPES[args.dtype]
    out = Path(args.out)
    if out.resolve() == Path(args.model).resolve():
        raise InputError(f"--out {out} is the --model directory: write the fine-tuned model somewhere else")
    if out.exists() and any(out.iterdir()):
        raise InputError(f"--out {out} already exists and is not empty: pick another directory, or delete it first")

    problems = load_gsm8k(args.data)
    if args.limit:
        problems = problems[:args.limit]
    model = load_model(args.model, device=device, dtype=dtype)
    if next(model.parameters()).dtype == torch.float16:  # trained without loss scaling, small float16 gradients underflow to 0
        model.to(torch.bfloat16)
        print(f"note: {args.model} is stored in float16; training it in bfloat16 (same range as float32)", file=sys.stderr)
    tokenizer = Tokenizer.from_pretrained(args.model)
    examples, dropped = encode_examples(tokenizer, problems, args.template, args.max_len, args.tools,
                                        args.max_tool_calls)
    if dropped:
        print(f"skipping {dropped} of {len(problems)} examples longer than --max-len {args.max_len}")
    if not examples:
        raise InputError(f"no example of {args.data} fits --max-len {args.max_len}: raise it")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"SFT {args.model} ({n_params / 1e6:.2f}M params) on {len(examples)} examples of {args.data}: "
          f"{args.steps} steps x {args.batch_size}, lr {args.lr:g}, {device}", flush=True)

    if args.activation_checkpointing:
        enable_activation_checkpointing(model)
    optimizer = OffloadAdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.99))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, args.warmup_steps, args.steps, args.min_lr_ratio))
    order = DataOrder(len(examples), args.seed)  # a fresh seeded shuffle every epoch
    micro = args.micro_batch_size or args.batch_size
    # Everything is written into <out>.tmp and renamed at the end: an interrupted SFT leaves no
    # half-trained model behind under the name train.py would read.
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    log_path = tmp / "sft_log.jsonl"

    # The --stop-at-accuracy check reads training questions: it measures how far SFT got, and leaves
    # the held-out file untouched for the before/after comparison.
    check_set = problems[:args.check_size]

    model.train()
    t_start = time.perf_counter()
    window_loss, window_tokens, t_window = 0.0, 0, time.perf_counter()
    loss = float("nan")
    for step in range(1, args.steps + 1):
        batch = [examples[i] for i in order.take(args.batch_size)]
        loss, tokens = sft_step(model, batch, tokenizer.pad_token_id, micro, device)
        if not math.isfinite(loss):
            raise InputError(f"SFT loss is {loss} at step {step}: lower --lr")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        window_loss, window_tokens = window_loss + loss, window_tokens + tokens
        with open(log_path, "a") as f:
            f.write(json.dumps({"step": step, "loss": loss, "grad_norm": grad_norm, "lr": lr}) + "\n")
        if step % args.log_every == 0 or step == args.steps:
            n = (step - 1) % args.log_every + 1
            dt = time.perf_counter() - t_window
            print(f"sft step {step}/{args.steps} | loss {window_loss / n:.4f} | gnorm {grad_norm:.2f} | lr {lr:.2e} "
                  f"| {window_tokens / dt:.0f} target tok/s", flush=True)
            window_loss, window_tokens, t_window = 0.0, 0, time.perf_counter()
        if args.stop_at_accuracy is not None and step % args.check_every == 0 and step < args.steps:
            model.eval()
            check, _ = evaluate(model, tokenizer, check_set, max_new_tokens=args.max_new_tokens,
                                template=args.template, rewards=Rewards(GSM8K_WEIGHTS), batch_size=128,
                                tools=args.tools, max_tool_calls=args.max_tool_calls)
            model.train()
            with open(log_path, "a") as f:
                f.write(json.dumps({"step": step, "check_accuracy": check["accuracy"]}) + "\n")
            if check["accuracy"] >= args.stop_at_accuracy:
                print(f"sft step {step}: greedy accuracy {check['accuracy']:.3f} on {check['n']} training questions "
                      f">= {args.stop_at_accuracy}: stopping here", flush=True)
                break
    model.eval()
    summary: dict = {"steps": step, "final_loss": loss, "seconds": time.perf_counter() - t_start,
                     "examples": len(examples)}

    end = tokenizer.id_to_token(end_token_id(tokenizer))
    if tokenizer.eos_token_id != end_token_id(tokenizer):
        print(f"setting eos_token to {end} in {out}/tokenizer_config.json: the SFT answers end with it")
        tokenizer.config["eos_token"] = end
    save_model(model, tmp)
    tokenizer.save_pretrained(tmp)
    if out.exists():
        out.rmdir()  # empty (checked above)
    tmp.rename(out)
    print(f"saved {out} ({summary['seconds']:.0f}s)")

    if args.eval_file:
        tokenizer = Tokenizer.from_pretrained(out)  # what train.py will load, eos included
        test = load_gsm8k(args.eval_file)[:args.eval_size]
        result, _ = evaluate(model, tokenizer, test, max_new_tokens=args.max_new_tokens, template=args.template,
                             rewards=Rewards(GSM8K_WEIGHTS), batch_size=128,
                             tools=args.tools, max_tool_calls=args.max_tool_calls)
        print(f"held-out greedy accuracy {result['accuracy']:.3f} on {result['n']} questions of {args.eval_file} "
              f"(mean reward {result['reward']:.3f}, truncated {result['truncated']:.2f})")
        summary["eval"] = result
    return summary


if __name__ == "__main__":
    sys.exit(run_command(main))
