"""Training configuration: `config.yaml` -> typed dataclasses, with `--set section.key=value` overrides.

Every section is a dataclass whose defaults are the recipe for Qwen2.5-3B-Instruct on GSM8K. Each
key is declared with its default and its valid range (`key(default, check)`, grpo/machinery/typed_yaml.py):
unknown keys, values of the wrong type and values out of range are rejected with one line naming
the key, the value and what is valid, so a typo never silently falls back to a default and a
meaningless value (nan, a negative clip range, 0 for a period) never reaches training. Rules that
tie several keys together are each section's `check()`. Sizes that only the machine bounds (a KV
cache larger than its memory) are checked when training starts, by the planner (grpo/plan/report.py check_fits).
"""

from __future__ import annotations

import copy
import dataclasses
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from data.prompts import TEMPLATES, PromptTemplate, custom_template
from data.reward_functions import load_reward_functions
from data.rewards import REWARD_FUNCTIONS, Rewards
from data.task import Task
from qwen2 import SamplingParams
from qwen2.lora import TARGETS

from .advantages import SCALE_REWARDS
from .loss import AGGREGATIONS, OBJECTIVES, RATIO_LEVELS, PolicyLoss
from .tools import TOOLS
from .machinery.interrupt import STOP_SIGNALS
from .machinery.typed_yaml import (Check, ConfigError, above, at_least, between, build, key, non_empty, one_of, parse_override,
                         parse_yaml, subset_of)

__all__ = ["Config", "ConfigError", "load_config", "parse_override"]

BIG = 10**9  # an upper bound for counts that only guards against typos such as 10^12 steps
DEVICE = r"auto|cpu|mps|cuda(:\d+)?"


@dataclass
class LoraConfig:
    # LoRA (qwen2/lora.py): rank 0 = off (full fine-tuning). Only the adapters train; the frozen base
    # doubles as the KL reference, and checkpoints are PEFT adapter directories.
    rank: int = key(0, at_least(0, 4096))
    alpha: float = key(32.0, above(0, 10**4))  # the adapters' term is scaled by alpha / rank
    dropout: float = key(0.0, between(0, 1, hi_open=True))
    targets: list[str] = key(check=subset_of(lambda: TARGETS), factory=lambda: list(TARGETS))


@dataclass
class ModelConfig:
    path: str = key("checkpoints/Qwen2.5-3B-Instruct", non_empty())  # HF-format directory written by download.py
    # bfloat16 | float32 (training and sampling dtype of the weights). float16 is refused: it needs loss
    # scaling, which this trainer does not do (scripts/eval.py --dtype float16 is fine: inference only).
    dtype: str = key("bfloat16", Check(lambda d: d in ("bfloat16", "float32"), lambda d: "bfloat16 or float32" + (
        " (float16 trains only with loss scaling, which this trainer does not do: small gradients would underflow "
        "to 0 unnoticed; use bfloat16, which has float32's range)" if d == "float16" else "")))
    device: str = key("auto", Check(lambda d: re.fullmatch(DEVICE, d) is not None, "auto, cpu, mps, cuda or cuda:N"))
    activation_checkpointing: bool = True  # recompute each block in backward: far less activation memory
    # nf4: the frozen base's block projections stored in 4 bits (QLoRA, qwen2/nf4.py), dequantised in
    # each forward; needs LoRA (only the adapters train). Embeddings, norms, LM head keep model.dtype.
    quantize: str = key("none", one_of("none", "nf4"))
    lora: LoraConfig = field(default_factory=LoraConfig)


TAG = r"[^<>/\s]+"  # a bare tag name: "think", not "<think>"


@dataclass
class DataConfig:
    train_file: str = key("datasets/gsm8k/train.jsonl", non_empty())  # JSONL: GSM8K's (question, answer "#### N") or your own
    test_file: str = key("datasets/gsm8k/test.jsonl", non_empty())  # held out: the eval questions come from here
    # The fields of a row holding the question and the gold answer. An answer with "####" is split
    # GSM8K's way; any other is the gold answer as written. The other fields go to the reward functions.
    question_key: str = key("question", non_empty())
    answer_key: str = key("answer", non_empty())
    template: str = key("think", one_of(*TEMPLATES))  # prompt format: think | reasoning | chinese | ... (data/prompts.py)
    # Your own prompt, over the template's: its system prompt ("" = none of ours: the chat template's default), the two tags
    # it asks for (reasoning, answer: what the format rewards check), and the user's turn.
    system_prompt: str | None = None
    tags: list[str] | None = key(None, Check(lambda t: len(t) == 2 and all(re.fullmatch(TAG, x) for x in t),
                                             "two bare tag names, e.g. [think, answer]"))
    user_prompt: str = key("{question}", Check(lambda u: "{question}" in u, "text holding {question}"))
    # Qwen3's chat-template switch (null: the template's default, thinking on). With thinking, the
    # model's own <think> block is the reasoning the "think" prompt asks for; false pre-fills an empty
    # one, and the rewards read the whole assistant turn, pre-fill included (docs/own_task.md).
    enable_thinking: bool | None = None
    max_prompt_tokens: int = key(320, at_least(1, 10**6))  # longer prompts are skipped; GSM8K's are ~150-250

    @property
    def prompt(self) -> PromptTemplate:
        """The prompt these settings ask for: the template with your own parts over it."""
        return custom_template(self.template, self.system_prompt, self.tags, self.user_prompt, self.enable_thinking)


@dataclass
class RolloutConfig:
    # 16 questions x 8 samples = 128 episodes a step: enough groups for a stable gradient while one
    # step's generation stays around a minute on a 24-80 GB card.
    prompts_per_step: int = key(16, at_least(1, 10**6))
    # G samples per question; advantages are relative within the group, so a group needs two
    group_size: int = key(8, at_least(2, 10**5))
    # GSM8K solutions of a 3B instruct model run 150-300 tokens; 512 leaves room and keeps the
    # KV cache of 128 rows small. Rows that hit the budget count as truncated. (The model's
    # max_position_embeddings bounds prompt + completion; checked when training starts.)
    max_new_tokens: int = key(512, at_least(1, 10**6))
    # The loss scores tokens at this same temperature, so 0 (greedy) cannot train; below 0.01 the
    # scaled logits leave the range where sampling and log-probs are meaningful.
    temperature: float = key(1.0, at_least(0.01, 10))
    top_p: float = key(1.0, above(0, 1))
    top_k: int = key(0, at_least(0, 10**7))  # 0 = off
    # DAPO dynamic sampling: groups whose samples all got the same reward carry no signal; sample more
    # questions (up to max_extra_rounds more rounds of prompts_per_step) until the step has
    # prompts_per_step groups with spread, and train on exactly those.
    dynamic_sampling: bool = False
    max_extra_rounds: int = key(2, at_least(0, 100))
    # Decode with the static-shape step compiled once (torch.compile; CUDA graphs on a GPU), for
    # rollouts and evaluation: qwen2/static_decode.py. auto = on for one process on a GPU, off on the
    # CPU (where the same matmuls bound both paths and the compile costs ~30 s).
    compile: bool | str = key("auto", Check(lambda v: v in ("auto", True, False), "auto, true or false"))
    # Tools the model may call mid-answer, offered through the chat template in Qwen2.5's tool-call
    # format (grpo/tools.py): [] = none, [calculator]. With tools, rollouts decode eagerly.
    tools: list[str] = key(check=subset_of(lambda: TOOLS, allow_empty=True), factory=list)
    max_tool_calls: int = key(4, at_least(1, 64))  # per episode; a call beyond it ends the episode

    def compiled(self, device: torch.device, launched: bool = False) -> bool:
        """Whether rollouts decode with the compiled step on `device` (auto: a GPU, one process)."""
        return device.type == "cuda" and not launched if self.compile == "auto" else bool(self.compile)

    @property
    def sampling(self) -> SamplingParams:
        """The sampling distribution of the rollout, also used for sampled evaluation."""
        return SamplingParams(self.temperature, self.top_p, self.top_k)


@dataclass
class OverlongConfig:
    # DAPO's soft overlong punishment, a reward part of its own: 0 up to max_tokens - buffer
    # completion tokens, then linearly down to -1 at max_tokens, -1 beyond. max_tokens 0 = off.
    max_tokens: int = key(0, at_least(0, 10**6))
    buffer: int = key(0, at_least(0, 10**6))

    def check(self) -> None:
        if self.buffer > self.max_tokens:
            raise ConfigError("reward.overlong needs 0 <= buffer <= max_tokens (max_tokens 0 = off)")
        if self.max_tokens and not self.buffer:
            raise ConfigError("reward.overlong.buffer must be > 0 when max_tokens is set")


# Keys of samples.jsonl and the evaluation's results, and the trainer's own reward part: a reward
# function of these names would collide with them.
RESERVED_NAMES = ("question", "answer", "completion", "correct", "reward", "length", "finished", "step",
                  "overlong", "tool_calls", "tool_errors")


@dataclass
class RewardConfig:
    # Your own reward functions by name: path/to/file.py:function or package.module:function
    # (data/reward_functions.py), weighted below like the built-ins.
    functions: dict[str, str] = key(check=Check(lambda f: all(isinstance(v, str) and ":" in v for v in f.values()),
                                                "name: path/to/file.py:function or package.module:function"),
                                    factory=dict)
    # Weighted reward functions (data/rewards.py's built-ins and yours); each part is logged on its own.
    weights: dict[str, float] = key(check=Check(bool, "a non-empty mapping of reward names to weights"),
                                    factory=lambda: {"format": 0.1, "correctness": 1.0})
    # The function that decides "correct" (acc, eval_accuracy): a value >= 1 is right. auto =
    # correctness or math, whichever is weighted, else the first weighted function of your own.
    correct: str = key("auto", non_empty())
    overlong: OverlongConfig = field(default_factory=OverlongConfig)

    def check(self) -> None:
        names = [*REWARD_FUNCTIONS, *self.functions]
        unknown = sorted(set(self.weights) - set(names))
        if unknown:
            raise ConfigError(f"reward.weights names {', '.join(unknown)}: valid are {', '.join(names)} (add your own "
                              "with reward.functions)")
        if self.correct not in ("auto", *names):
            raise ConfigError(f"reward.correct = {self.correct!r}: valid are auto, {', '.join(names)}")
        taken = sorted(set(self.functions) & set(REWARD_FUNCTIONS))
        if taken:
            raise ConfigError(f"reward.functions.{taken[0]}: {taken[0]!r} is a built-in reward's name; "
                              "give your function another name")
        reserved = sorted(set(self.functions) & set(RESERVED_NAMES))
        if reserved:
            raise ConfigError(f"reward.functions.{reserved[0]}: {reserved[0]!r} names something the logs already "
                              f"hold ({', '.join(RESERVED_NAMES)}); give your function another name")

    def rewards(self) -> Rewards:
        """The weighted functions, yours imported (data/reward_functions.py)."""
        return Rewards(self.weights, load_reward_functions(self.functions), self.correct)


@dataclass
class GRPOConfig:
    epsilon_low: float = key(0.2, between(0, 1, hi_open=True))  # PPO clip below 1: the ratio's floor 1 - eps > 0
    epsilon_high: float = key(0.28, at_least(0, 100))  # DAPO clip-higher: more room for low-probability tokens to grow
    # token_mean (DAPO) | seq_mean_token_mean (GRPO) | seq_mean_token_sum_norm (Dr. GRPO)
    aggregation: str = key("token_mean", one_of(*AGGREGATIONS))
    beta: float = key(0.0, at_least(0, 1000))  # k3 KL weight to the frozen initial model; 0 = no reference model (DAPO)
    # Advantages are reward - group mean, divided by the std of the group (GRPO), of the whole batch,
    # or not at all (Dr. GRPO). Replaces the boolean scale_by_std (true = group, false = none).
    scale_rewards: str = key("group", one_of(*SCALE_REWARDS))
    loss: str = key("ppo_clip", one_of(*OBJECTIVES))  # ppo_clip | cispo (MiniMax-M1: clipped ratio as a stop-gradient weight)
    ratio_level: str = key("token", one_of(*RATIO_LEVELS))  # token | sequence (GSPO: one ratio per episode)
    sequence_epsilon_low: float = key(3e-4, between(0, 1, hi_open=True))  # GSPO's clip range (ratio_level: sequence)
    sequence_epsilon_high: float = key(4e-4, at_least(0, 100))
    delta: float | None = key(None, above(1))  # two-sided clipping: for A < 0 the ratio is capped at delta (> 1 + epsilon_high)
    top_entropy_quantile: float = key(1.0, above(0, 1))  # only this top fraction of tokens by (sampling) entropy get gradient
    # pi_old of the PPO ratio (mu > 1) is always the trainer's own log-probs, taken from the first
    # update pass (it runs on the weights that sampled). "sampler" also treats the sampler as the
    # behaviour policy: every token's loss is weighted by min(pi_old / pi_sampler, tis_cap), a
    # truncated importance-sampling correction of their numeric mismatch (bf16, other batch shapes).
    old_logprobs: str = key("recompute", one_of("recompute", "sampler"))
    tis_cap: float = key(2.0, at_least(1, 10**6))
    updates_per_batch: int = key(1, at_least(1, 64))  # mu: optimizer updates on each rollout batch (PPO epochs)
    # Each group as one row [prompt | c_1 | ... | c_G]: the prompt is computed once per group, not G
    # times, and there is no padding inside a row (grpo/batch.py). False: one padded row per episode.
    shared_prefix: bool = True
    micro_batch_tokens: int = key(8192, at_least(1, BIG))  # shared_prefix: tokens per forward/backward (rows x longest row)
    micro_batch_size: int = key(8, at_least(1, BIG))  # shared_prefix false: episodes per forward/backward
    skip_truncated: bool = False  # overlong filtering: drop episodes that hit max_new_tokens
    logprob_chunk: int = key(1024, at_least(1, BIG))  # completion tokens per chunk when turning hidden states into log-probs

    def check(self) -> None:
        if self.delta is not None and self.delta <= 1 + self.epsilon_high:
            raise ConfigError(f"grpo.delta must be > 1 + grpo.epsilon_high = {1 + self.epsilon_high:g} "
                              "(it caps the ratio of A < 0 tokens)")
        if self.delta is not None and self.loss != "ppo_clip":
            raise ConfigError("grpo.delta (two-sided clipping) applies to grpo.loss: ppo_clip only")


@dataclass
class OptimConfig:
    lr: float = key(1e-6, above(0))
    weight_decay: float = key(0.0, at_least(0, 10))  # decoupled: each step scales weights by 1 - lr * weight_decay
    beta1: float = key(0.9, between(0, 1, hi_open=True))  # Adam's first-moment decay
    beta2: float = key(0.99, between(0, 1, hi_open=True))  # Adam's second-moment decay (torch's default is 0.999)
    eps: float = key(1e-8, above(0, 1))  # added to sqrt(second moment)
    offload: bool = False  # the 24 GB switch: fp32 master weights and Adam moments in CPU memory
    grad_clip: float = key(1.0, above(0))  # max gradient norm
    warmup_steps: int = key(10, at_least(0, BIG))
    min_lr_ratio: float = key(0.8, between(0, 1))  # cosine decays from lr to lr * min_lr_ratio (not to zero)


@dataclass
class StuckConfig:
    # Warnings when the last steps show the run cannot learn (grpo/stuck.py, docs/logs.md): one line per
    # cause, at most once every `every` steps, also marked in metrics.jsonl (stuck_<cause>: 1). A
    # threshold of 1 (0 for entropy and flat_range) turns that one cause off; enabled: false, all.
    enabled: bool = True
    window: int = key(5, at_least(1, 10**4))  # steps each cause is judged over: one odd step is not a stuck run
    every: int = key(25, at_least(1, BIG))  # steps between two warnings of one cause (the default save_every)
    # Share of completions that hit rollout.max_new_tokens. Above half, most answers are cut off before
    # they are given: they all score alike (TRL #5697, #6263).
    truncated: float = key(0.5, between(0, 1))
    # Share of groups whose G samples all got one reward (advantage 0, no gradient). The tiny recipe, still
    # learning at step 350, has 10 of 16 (docs/logs.md); above 3 in 4 a step trains on under a quarter.
    no_spread: float = key(0.75, between(0, 1))
    # Nats per sampled token. At 0.05 only ~1% of a token's probability is off its top choice, so the G
    # samples of a short answer are nearly the same text (the tiny recipe: ~0.12 early, ~0.02 after the
    # collapse docs/tiny_recipe.md describes).
    entropy: float = key(0.05, at_least(0, 100))
    # The step's mean reward staying within flat_range for flat_steps steps: with 128 episodes a step, one
    # episode more right moves the mean by 1/128 = 0.008, so a range below 0.01 over 20 steps is a reward
    # that does not move at all (a constant reward, or no group ever with spread).
    flat_steps: int = key(20, at_least(2, 10**4))
    flat_range: float = key(0.01, at_least(0, 10**6))


@dataclass
class TrainConfig:
    steps: int = key(200, at_least(1, BIG))  # training steps (each: rollout + update + optimizer step); the LR schedule spans them
    seed: int = key(0, at_least(0, 2**62))  # model init (LoRA), data order and sampling: the same seed repeats a run on one machine
    out_dir: str = key("runs/gsm8k", non_empty())  # metrics.jsonl, samples.jsonl, config.json and checkpoints/
    eval_every: int = key(25, at_least(0, BIG))  # accuracy on a fixed test subset (0 = never); greedy pass@1 by default
    eval_size: int = key(200, at_least(1, BIG))  # the first N questions of data.test_file
    eval_at_start: bool = True  # with eval_every > 0, also evaluate before the first step: the curve's baseline
    # Sampled evaluation, mean@k (verl's val_kwargs): eval_samples completions per question at this
    # temperature / top_p / top_k, eval_accuracy is their mean (with pass@k). temperature 0 = greedy, one
    # sample. Qwen3's cards advise T 0.6, top_p 0.95, top_k 20 and warn against greedy decoding.
    eval_samples: int = key(1, at_least(1, 1024))
    eval_temperature: float = key(0.0, Check(lambda t: t == 0 or 0.01 <= t <= 10, "0 (greedy) or 0.01 to 10"))
    eval_top_p: float = key(1.0, above(0, 1))
    eval_top_k: int = key(0, at_least(0, 10**7))  # 0 = off

    @property
    def eval_sampling(self) -> SamplingParams:
        """How evaluation decodes: greedy, or sampled with the eval_* settings."""
        return SamplingParams(self.eval_temperature, self.eval_top_p, self.eval_top_k)
    save_every: int = key(25, at_least(1, BIG))  # checkpoint every N steps (and at the last step)
    keep_checkpoints: int = key(2, at_least(1, 10**4))  # keep the last K checkpoints
    samples_per_step: int = key(4, at_least(0, 10**6))  # completions written to samples.jsonl each step
    # Steps whose loss or gradient norm is not finite are not applied (logged as skipped_nonfinite);
    # after this many in a row the run stops: it has diverged (too high a learning rate, an overflow).
    max_nonfinite_steps: int = key(3, at_least(1, 10**6))
    # Signals that stop the run like Ctrl-C, for a job scheduler (SLURM: --signal=USR1@120 ahead of the
    # time limit, which like scancel sends SIGTERM): the last completed step is saved, exit code 75
    # (grpo/machinery/interrupt.py, docs/preemption.md). [] = none: such a signal ends the run at once.
    stop_signals: list[str] = key(check=subset_of(lambda: STOP_SIGNALS, allow_empty=True),
                                  factory=lambda: ["SIGTERM", "SIGUSR1"])
    # The scheduler's seconds from its signal to SIGKILL. Under torchrun (at most its shutdown timeout)
    # a step that would not finish and save within them is abandoned at its first update instead.
    grace_seconds: float = key(60.0, at_least(0, 10**6))
    progress: bool = True  # tqdm bars for rollout and update
    tensorboard: bool = False  # log to TensorBoard when installed
    wandb: bool = False  # log to Weights & Biases when installed
    stuck: StuckConfig = field(default_factory=StuckConfig)  # warnings when the run cannot learn (grpo/stuck.py)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def policy_loss(self) -> PolicyLoss:
        """The loss these settings choose (grpo/loss.py), decided once for the run."""
        g = self.grpo
        sequence = g.ratio_level == "sequence"  # GSPO clips its sequence ratio with its own, much smaller range
        return PolicyLoss(eps_low=g.sequence_epsilon_low if sequence else g.epsilon_low,
                          eps_high=g.sequence_epsilon_high if sequence else g.epsilon_high,
                          aggregation=g.aggregation, beta=g.beta, objective=g.loss, ratio_level=g.ratio_level,
                          delta=g.delta, max_tokens=self.rollout.max_new_tokens)

    def task(self) -> Task:
        """What the run trains on: rows, prompt and rewards (data/task.py); imports your reward functions."""
        return Task(self.data.prompt, self.reward.rewards(), self.data.question_key, self.data.answer_key)

    def check(self) -> None:
        """The rules that tie several keys together (each key's own range is checked as it is read)."""
        self.grpo.check()
        self.reward.check()
        if self.data.question_key == self.data.answer_key:
            raise ConfigError(f"data.question_key and data.answer_key are both {self.data.answer_key!r}: the question "
                              "would hold its own answer; name two different fields")
        if self.data.tags is not None and self.data.tags[0] == self.data.tags[1]:
            raise ConfigError(f"data.tags = {self.data.tags}: the reasoning and answer tags must differ")
        if self.train.eval_samples > 1 and self.train.eval_temperature == 0:
            raise ConfigError("train.eval_samples > 1 needs train.eval_temperature > 0: greedy decoding gives one "
                              "answer per question (Qwen3's cards advise 0.6, with eval_top_p 0.95, eval_top_k 20)")
        self.reward.overlong.check()
        if self.model.lora.rank and self.model.lora.dropout > 0 and self.grpo.updates_per_batch > 1:
            raise ConfigError("model.lora.dropout > 0 cannot serve grpo.updates_per_batch > 1: pi_old comes from the "
                              "first training pass, which dropout would perturb; set model.lora.dropout=0")
        if not any(self.reward.weights.values()):
            raise ConfigError("reward.weights are all 0: give at least one reward function a weight")
        if self.model.quantize != "none" and not self.model.lora.rank:
            raise ConfigError(f"model.quantize={self.model.quantize} keeps the base frozen in 4 bits: it trains only "
                              "LoRA adapters; set model.lora.rank (e.g. 16) or model.quantize=none")


def load_config(path: str | Path | None = None, overrides: list[str] = (), base: dict[str, Any] | None = None) -> Config:
    """Read a YAML file (or `base`, a saved config dict, or the defaults) and apply `section.key=value` overrides."""
    raw: dict[str, Any] = copy.deepcopy(base) if base is not None else {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found (pass --config with an existing YAML file)")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path} is not UTF-8 text (byte {e.start}): save it as UTF-8") from None
        raw = parse_yaml(text, str(path))
        if raw is None:
            raise ConfigError(f"{path} is empty: that would silently mean every default (Qwen2.5-3B-Instruct on "
                              "GSM8K); write the settings you want into it (see config.yaml), or pass another --config")
    _migrate(raw)  # the file's (or the saved run's) renamed keys first, so that --set can override them
    for text in overrides:
        keys, value = parse_override(text, Config)
        if keys == ["grpo", "scale_by_std"]:
            keys, value = ["grpo", "scale_rewards"], _scale_rewards_from(value)
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text}: {k} is not a section")
        node[keys[-1]] = value
    cfg = build(Config, raw, "")
    cfg.check()
    return cfg


def _migrate(raw: dict[str, Any]) -> None:
    """Keys that were renamed keep working, with a note (configs and checkpoints of older runs)."""
    grpo = raw.get("grpo")
    if isinstance(grpo, dict) and "scale_by_std" in grpo:
        if "scale_rewards" in grpo:
            raise ConfigError("grpo.scale_by_std and grpo.scale_rewards both given: keep grpo.scale_rewards only")
        grpo["scale_rewards"] = _scale_rewards_from(grpo.pop("scale_by_std"))


def _scale_rewards_from(scale_by_std: Any) -> str:
    """The deprecated boolean grpo.scale_by_std as grpo.scale_rewards: true = group, false = none."""
    if not isinstance(scale_by_std, bool):
        raise ConfigError(f"grpo.scale_by_std = {scale_by_std!r} has the wrong type (expected bool)")
    value = "group" if scale_by_std else "none"
    print(f"note: grpo.scale_by_std is deprecated; read as grpo.scale_rewards={value}", file=sys.stderr)
    return value
