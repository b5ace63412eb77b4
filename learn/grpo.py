"""GRPO in one file: sample G answers per question, score them, push up the better ones.

    python learn/grpo.py              # trains a tiny random Qwen2 to add digits, ~20 s on one CPU core
    python learn/grpo.py --steps 20   # a shorter run

One GRPO step (`grpo_step`):
  1. sample   G completions of each of N prompts with the current model (learn/sampler.py)
  2. score    each completion with a rule: a regular expression reads the answer, no reward model
  3. compare  within its group: A_i = (r_i - mean(r)) / (std(r) + eps), the group is the baseline
  4. update   raise the log-probability of every token of an answer with A > 0, lower it for A < 0,
              through PPO's clipped ratio (DAPO's settings), then one AdamW step

The task is built here so that it learns in seconds from a random model with no warm start: the
prompt is "3+4=", a good answer is "7" then the stop token. A random 14-token model answers in the
digits-only format (reward 0.1) some of the time and right (1.1) almost never; GRPO first learns the
format, then which digit. What it shows: the loop optimises the reward it is given. What it does not
show: reasoning, or anything about GSM8K (scripts/tiny_recipe.py is the project's CPU-sized proof
on word problems, with a supervised warm start first, and train.py the real thing).

What this file leaves out, and where the trainer does it:
  * the loss's variants: other aggregations, GSPO's sequence ratio, CISPO, a KL term to a reference
    model (beta > 0), top-entropy token masks (grpo/loss.py); other advantage scalings
    (grpo/advantages.py); mu > 1 update passes, learning-rate schedule (grpo/trainer.py, schedule.py)
  * memory: log-probs without the full (B, T, V) logits (grpo/logprobs.py), micro-batches with
    exact gradient accumulation and packed [prompt | c_1 | ... | c_G] rows (grpo/batch.py),
    activation checkpointing, offloaded AdamW (grpo/optim/), several GPUs (grpo/machinery/distributed.py)
  * chat prompts, GSM8K, the reward functions (data/), checkpoints and exact resume, logs,
    evaluation, the guard against non-finite steps (grpo/machinery/: checkpoint.py, run_log.py,
    divergence.py)
"""

from __future__ import annotations

import argparse
import random
import re
import time

import torch
import torch.nn.functional as F
from torch import Tensor

from model import Config, Qwen2, random_model
from sampler import generate

# --- the task: "a+b=" -> the sum, scored by a regex --------------------------------------------

VOCAB = ["<pad>", "<eos>", *"0123456789+="]  # a character-level tokenizer: one token per character
PAD, EOS = 0, 1


def encode(text: str) -> list[int]:
    return [VOCAB.index(c) for c in text]


def decode(ids: list[int]) -> str:
    return "".join(VOCAB[i] for i in ids if i != PAD)


# The format: the whole completion is a number, then the stop token. (Without the stop in the
# pattern, the model soon learnt to answer 4+5= with "009": three digits and never stopping.)
ANSWER = re.compile(r"(\d+)<eos>")


def reward(completion: str, answer: int) -> float:
    """0.1 for the format, + 1.0 when the number is right: the shape of the project's GSM8K reward
    (data/rewards.py: format 0.1 + correctness 1.0, there <think>...</think><answer>N</answer>)."""
    m = ANSWER.fullmatch(completion)
    return 0.0 if m is None else 0.1 + 1.0 * (int(m.group(1)) == answer)


# 55 questions: every a + b with a sum of one digit.
QUESTIONS = [(f"{a}+{b}=", a + b) for a in range(10) for b in range(10) if a + b <= 9]

# --- the maths: advantages, log-probs, the clipped loss ---------------------------------------


def group_advantages(rewards: Tensor, G: int, eps: float = 1e-4) -> Tensor:
    """A_i = (r_i - mean of its group) / (std of its group + eps), for rewards laid out group by group.

    No value network: the other answers to the same question are the baseline. The std is the
    unbiased one (/ (G - 1)), as in TRL. A group whose answers all scored the same has nothing to
    compare (A ~ 0): grpo_step drops it."""
    r = rewards.view(-1, G)  # (groups, G)
    return ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + eps)).view(-1)


def make_batch(prompts: list[list[int]], completions: list[list[int]]) -> tuple[Tensor, Tensor, Tensor]:
    """Rows [left-padded prompt | completion | right padding]: ids, attention mask (B, P + C), and the
    loss mask (B, C), 1 on every completion token (the stop token too: the model learns to stop)."""
    P, C = max(map(len, prompts)), max(map(len, completions))
    ids = torch.full((len(prompts), P + C), PAD)
    attn, loss_mask = torch.zeros_like(ids), torch.zeros(len(prompts), C)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids[i, P - len(p):P + len(c)] = torch.tensor(p + c)  # every completion starts in column P
        attn[i, P - len(p):P + len(c)] = 1
        loss_mask[i, :len(c)] = 1
    return ids, attn, loss_mask


def completion_logprobs(model: Qwen2, ids: Tensor, attn: Tensor, C: int, temperature: float = 1.0) -> Tensor:
    """log pi(token | everything before it) of the last C columns (the completions), (B, C).

    Column t's logits predict the token in column t + 1, so the C completion tokens are predicted
    by the C columns before them. Divided by the sampling temperature: the ratio below must compare
    the distribution the answers were actually drawn from."""
    logits = model(ids, attn)[:, -C - 1:-1].float() / temperature  # (B, C, V)
    return F.log_softmax(logits, dim=-1).gather(-1, ids[:, -C:, None])[..., 0]  # (B, C)


def clipped_loss(logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor,
                 eps_low: float = 0.2, eps_high: float = 0.28) -> Tensor:
    """DAPO's token-level clipped objective, as a loss to minimise (beta = 0: no KL term).

        ratio_t = pi(tok_t) / pi_old(tok_t)           pi_old: the policy that sampled (no gradient)
        loss_t  = -min(ratio_t A, clip(ratio_t, 1 - eps_low, 1 + eps_high) A)
        loss    = sum of loss_t over all completion tokens / their number   ("token_mean")

    d ratio / d theta = ratio * d log pi / d theta, so at ratio 1 this is the policy gradient
    A * d log pi. The min stops a token once its ratio has moved past the clip edge in the direction
    its advantage pushes (gradient 0): one batch cannot move the policy far. eps_high > eps_low
    ("clip-higher") leaves more room to raise unlikely good tokens. The token mean weighs every token
    alike, so long answers are not under-weighted (GRPO's first version averaged per answer first)."""
    mask = mask.bool()
    ratio = torch.exp(torch.where(mask, logp - old_logp, 0.0))  # padding: ratio 1, never exp(garbage)
    A = adv[:, None]  # (B, 1): every token of an answer shares its advantage
    per_token = -torch.minimum(ratio * A, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * A)  # (B, C)
    return (per_token * mask).sum() / mask.sum()


def grpo_loss(model: Qwen2, prompts: list[list[int]], completions: list[list[int]], adv: Tensor,
              old_logp: Tensor | None = None, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """The loss of a batch of episodes, and pi_old's log-probs. old_logp None: the model still has the
    weights that sampled (the first update after sampling), so pi_old is its own detached log-probs."""
    ids, attn, mask = make_batch(prompts, completions)
    logp = completion_logprobs(model, ids, attn, mask.shape[1], temperature)
    old = logp.detach() if old_logp is None else old_logp
    return clipped_loss(logp, old, adv, mask), old


# --- one step, and the loop --------------------------------------------------------------------


def grpo_step(model: Qwen2, opt: torch.optim.Optimizer, questions: list[tuple[str, int]], G: int,
              gen: torch.Generator, temperature: float = 1.0, max_new_tokens: int = 3) -> dict:
    # 1. sample G completions per question (the model's current weights; no gradient)
    prompts = [encode(q) for q, _ in questions]
    model.eval()
    completions = generate(model, prompts, max_new_tokens, G=G, temperature=temperature,
                           stop_ids=(EOS,), pad_id=PAD, generator=gen)
    # 2. score: one number per completion, from its text alone
    answers = [ans for _, ans in questions for _ in range(G)]
    rewards = torch.tensor([reward(decode(c), ans) for c, ans in zip(completions, answers)])
    # 3. group-normalised advantages. A group whose answers all scored alike has A = 0: it teaches
    #    nothing, and is dropped (kept, it would only add tokens to the loss's denominator).
    adv = group_advantages(rewards, G)
    spread = rewards.view(-1, G).amax(1) > rewards.view(-1, G).amin(1)  # (N,)
    keep = [i for i in range(len(completions)) if spread[i // G]]
    stats = {"reward": rewards.mean().item(), "correct": (rewards > 1).float().mean().item(),
             "length": sum(map(len, completions)) / len(completions), "groups": int(spread.sum())}
    if keep:
        # 4. one update on these episodes: loss, gradients, clip their norm, AdamW
        model.train()
        loss, _ = grpo_loss(model, [prompts[i // G] for i in keep], [completions[i] for i in keep], adv[keep],
                            temperature=temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        stats["loss"] = loss.item()
    return stats


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description="GRPO on a tiny random Qwen2 that learns to add digits")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--questions", type=int, default=16, help="N questions per step")
    ap.add_argument("--group", type=int, default=16, help="G samples per question")
    ap.add_argument("--lr", type=float, default=7e-4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # a model this small gains nothing from more threads
    cfg = Config(vocab_size=len(VOCAB), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0)
    model = random_model(cfg, seed=args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    gen, order = torch.Generator().manual_seed(args.seed), random.Random(args.seed)
    print(f"{sum(p.numel() for p in model.parameters()):,} parameters; {len(QUESTIONS)} questions; "
          f"{args.questions} x {args.group} answers a step")
    t0, history, shown = time.time(), [], 0
    for step in range(1, args.steps + 1):
        stats = grpo_step(model, opt, order.sample(QUESTIONS, args.questions), args.group, gen)
        history.append(stats)
        if step % 50 == 0 or step == 1 or step == args.steps:
            last, shown = history[shown:], len(history)  # the steps since the last line
            mean = {k: sum(s[k] for s in last) / len(last) for k in ("reward", "correct", "length")}
            print(f"step {step:4d}  reward {mean['reward']:.3f}  correct {mean['correct']:.0%}  "
                  f"length {mean['length']:.1f}  groups with spread {stats['groups']:2d}  {time.time() - t0:5.1f}s")
    model.eval()
    greedy = generate(model, [encode(q) for q, _ in QUESTIONS], 3, temperature=0, stop_ids=(EOS,))
    wrong = [f"{q}{decode(c)}" for c, (q, a) in zip(greedy, QUESTIONS) if reward(decode(c), a) <= 1]
    print(f"greedy answers: {len(QUESTIONS) - len(wrong)}/{len(QUESTIONS)} right; wrong: {', '.join(wrong) or 'none'}")
    return history


if __name__ == "__main__":
    main()
