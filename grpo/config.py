"""Training configuration: `config.yaml` -> typed dataclasses, with `--set section.key=value` overrides.

Every section is a dataclass whose defaults are the recipe for Qwen2.5-3B-Instruct on GSM8K.
Unknown keys and values of the wrong type are rejected with the list of valid choices, so a typo
never silently falls back to a default.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qwen2 import SamplingParams
from qwen2.errors import InputError


@dataclass
class LoraConfig:
    # LoRA (qwen2/lora.py): rank 0 = off (full fine-tuning). Only the adapters train; the frozen base
    # doubles as the KL reference, and checkpoints are PEFT adapter directories.
    rank: int = 0
    alpha: float = 32.0  # the adapters' term is scaled by alpha / rank
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                        "up_proj", "down_proj"])


@dataclass
class ModelConfig:
    path: str = "checkpoints/Qwen2.5-3B-Instruct"  # HF-format directory written by download.py
    dtype: str = "bfloat16"  # bfloat16 | float16 | float32 (training and sampling dtype of the weights)
    device: str = "auto"  # auto = cuda when available, else cpu
    activation_checkpointing: bool = True  # recompute each block in backward: far less activation memory
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class DataConfig:
    train_file: str = "datasets/gsm8k/train.jsonl"  # GSM8K-format JSONL (question, answer ending "#### N")
    test_file: str = "datasets/gsm8k/test.jsonl"  # held out: the eval questions come from here
    template: str = "think"  # prompt format: think | reasoning | chinese (see data/prompts.py)
    max_prompt_tokens: int = 320  # longer prompts are skipped; GSM8K chat prompts are ~150-250 tokens


@dataclass
class RolloutConfig:
    # 16 questions x 8 samples = 128 episodes a step: enough groups for a stable gradient while one
    # step's generation stays around a minute on a 24-80 GB card.
    prompts_per_step: int = 16
    group_size: int = 8  # G samples per question; advantages are relative within the group
    # GSM8K solutions of a 3B instruct model run 150-300 tokens; 512 leaves room and keeps the
    # KV cache of 128 rows small. Rows that hit the budget count as truncated.
    max_new_tokens: int = 512
    temperature: float = 1.0  # the loss scores tokens at this same temperature
    top_p: float = 1.0
    top_k: int = 0
    # DAPO dynamic sampling: groups whose samples all got the same reward carry no signal; sample more
    # questions (up to max_extra_rounds more rounds of prompts_per_step) until the step has
    # prompts_per_step groups with spread, and train on exactly those.
    dynamic_sampling: bool = False
    max_extra_rounds: int = 2

    @property
    def sampling(self) -> SamplingParams:
        """The sampling distribution of the rollout, also used for sampled evaluation."""
        return SamplingParams(self.temperature, self.top_p, self.top_k)


@dataclass
class OverlongConfig:
    # DAPO's soft overlong punishment, a reward part of its own: 0 up to max_tokens - buffer
    # completion tokens, then linearly down to -1 at max_tokens, -1 beyond. max_tokens 0 = off.
    max_tokens: int = 0
    buffer: int = 0


@dataclass
class RewardConfig:
    # Weighted reward functions from data/rewards.py; each part is logged on its own.
    weights: dict[str, float] = field(default_factory=lambda: {"format": 0.1, "correctness": 1.0})
    overlong: OverlongConfig = field(default_factory=OverlongConfig)


@dataclass
class GRPOConfig:
    epsilon_low: float = 0.2  # PPO clip below 1
    epsilon_high: float = 0.28  # DAPO clip-higher: more room for low-probability tokens to grow
    aggregation: str = "token_mean"  # token_mean (DAPO) | seq_mean_token_mean (GRPO) | seq_mean_token_sum_norm (Dr. GRPO)
    beta: float = 0.0  # k3 KL weight to the frozen initial model; 0 = no reference model (DAPO)
    # Advantages are reward - group mean, divided by the std of the group (GRPO), of the whole batch,
    # or not at all (Dr. GRPO). Replaces the boolean scale_by_std (true = group, false = none).
    scale_rewards: str = "group"  # group | batch | none
    loss: str = "ppo_clip"  # ppo_clip | cispo (MiniMax-M1: clipped ratio as a stop-gradient weight)
    ratio_level: str = "token"  # token | sequence (GSPO: one ratio per episode, with its own clip range)
    sequence_epsilon_low: float = 3e-4  # GSPO's clip range, used with ratio_level: sequence
    sequence_epsilon_high: float = 4e-4
    delta: float | None = None  # two-sided clipping: for A < 0 the ratio is capped at delta (> 1 + epsilon_high)
    top_entropy_quantile: float = 1.0  # only this top fraction of tokens by (sampling) entropy get gradient
    # pi_old of the PPO ratio (mu > 1) is always the trainer's own log-probs, taken from the first
    # update pass (it runs on the weights that sampled). "sampler" also treats the sampler as the
    # behaviour policy: every token's loss is weighted by min(pi_old / pi_sampler, tis_cap), a
    # truncated importance-sampling correction of their numeric mismatch (bf16, other batch shapes).
    old_logprobs: str = "recompute"  # recompute | sampler
    tis_cap: float = 2.0
    updates_per_batch: int = 1  # mu: optimizer updates on each rollout batch (PPO epochs)
    # Each group as one row [prompt | c_1 | ... | c_G]: the prompt is computed once per group, not G
    # times, and there is no padding inside a row (grpo/batch.py). False: one padded row per episode.
    shared_prefix: bool = True
    micro_batch_tokens: int = 8192  # shared_prefix: tokens per forward/backward (rows x longest row)
    micro_batch_size: int = 8  # shared_prefix false: episodes per forward/backward
    skip_truncated: bool = False  # overlong filtering: drop episodes that hit max_new_tokens
    logprob_chunk: int = 1024  # completion tokens per chunk when turning hidden states into log-probs


@dataclass
class OptimConfig:
    lr: float = 1e-6
    weight_decay: float = 0.0
    beta1: float = 0.9  # Adam's first-moment decay
    beta2: float = 0.99  # Adam's second-moment decay (torch's default is 0.999)
    eps: float = 1e-8  # added to sqrt(second moment)
    offload: bool = False  # the 24 GB switch: fp32 master weights and Adam moments in CPU memory
    grad_clip: float = 1.0
    warmup_steps: int = 10
    min_lr_ratio: float = 0.8  # cosine decays from lr to lr * min_lr_ratio (not to zero)


@dataclass
class TrainConfig:
    steps: int = 200  # training steps (each: rollout + update + optimizer step); the LR schedule spans them
    seed: int = 0  # model init (LoRA), data order and sampling: the same seed repeats a run on one machine
    out_dir: str = "runs/gsm8k"  # metrics.jsonl, samples.jsonl, config.json and checkpoints/
    eval_every: int = 25  # greedy pass@1 on a fixed test subset (0 = never)
    eval_size: int = 200  # the first N questions of data.test_file
    eval_at_start: bool = True  # with eval_every > 0, also evaluate before the first step: the curve's baseline
    save_every: int = 25  # checkpoint every N steps (and at the last step)
    keep_checkpoints: int = 2  # keep the last K checkpoints
    # Steps whose loss or gradient norm is not finite are not applied (logged as skipped_nonfinite);
    # after this many in a row the run stops: it has diverged (too high a learning rate, an overflow).
    max_nonfinite_steps: int = 3
    samples_per_step: int = 4  # completions written to samples.jsonl each step
    progress: bool = True  # tqdm bars for rollout and update
    tensorboard: bool = False  # log to TensorBoard when installed
    wandb: bool = False  # log to Weights & Biases when installed


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


class ConfigError(InputError):
    """A bad configuration key or value; the message lists the valid choices."""


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotated type, allowing int -> float."""
    origin = typing.get_origin(tp)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return [_coerce(v, typing.get_args(tp)[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        ktp, vtp = typing.get_args(tp)
        return {_coerce(k, ktp, where): _coerce(v, vtp, f"{where}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where} = {value!r} has the wrong type (expected {tp})")
    if tp is type(None):
        if value is None:
            return None
    elif tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{where} = {value!r} has the wrong type (expected {getattr(tp, '__name__', tp)})")


def _build(cls: type, raw: dict[str, Any], where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            raise ConfigError(f"unknown config key {path!r}; valid keys{' in ' + where if where else ''}: {', '.join(names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value or {}, path)
        else:
            kwargs[key] = _coerce(value, tp, path)
    return cls(**kwargs)


def _validate(cfg: Config) -> None:
    from data.rewards import REWARD_FUNCTIONS
    from grpo.advantages import SCALE_REWARDS
    from grpo.loss import AGGREGATIONS, OBJECTIVES, RATIO_LEVELS

    checks = [
        (cfg.model.dtype in ("bfloat16", "float32", "float16"), "model.dtype must be bfloat16, float32 or float16"),
        (cfg.grpo.aggregation in AGGREGATIONS, f"grpo.aggregation must be one of {', '.join(AGGREGATIONS)}"),
        (cfg.rollout.group_size >= 2, "rollout.group_size must be >= 2 (advantages compare samples of a group)"),
        (cfg.rollout.prompts_per_step >= 1, "rollout.prompts_per_step must be >= 1"),
        (cfg.rollout.max_new_tokens >= 1, "rollout.max_new_tokens must be >= 1"),
        (cfg.rollout.temperature > 0, "rollout.temperature must be > 0 for training (the loss needs a sampling distribution)"),
        (0 < cfg.rollout.top_p <= 1, "rollout.top_p must be in (0, 1]"),
        (cfg.rollout.top_k >= 0, "rollout.top_k must be >= 0 (0 = off)"),
        (cfg.grpo.micro_batch_size >= 1, "grpo.micro_batch_size must be >= 1"),
        (cfg.grpo.micro_batch_tokens >= 1, "grpo.micro_batch_tokens must be >= 1"),
        (cfg.grpo.logprob_chunk >= 1, "grpo.logprob_chunk must be >= 1"),
        (cfg.grpo.updates_per_batch >= 1, "grpo.updates_per_batch must be >= 1"),
        (cfg.optim.lr > 0, "optim.lr must be > 0"),
        (0 <= cfg.optim.min_lr_ratio <= 1, "optim.min_lr_ratio must be in [0, 1]"),
        (cfg.train.steps >= 1, "train.steps must be >= 1"),
        (cfg.train.keep_checkpoints >= 1, "train.keep_checkpoints must be >= 1"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    g, overlong = cfg.grpo, cfg.reward.overlong
    variants = [
        (g.scale_rewards in SCALE_REWARDS, f"grpo.scale_rewards must be one of {', '.join(SCALE_REWARDS)}"),
        (g.loss in OBJECTIVES, f"grpo.loss must be one of {', '.join(OBJECTIVES)}"),
        (g.ratio_level in RATIO_LEVELS, f"grpo.ratio_level must be one of {', '.join(RATIO_LEVELS)}"),
        (g.old_logprobs in ("recompute", "sampler"), "grpo.old_logprobs must be recompute or sampler"),
        (g.delta is None or g.delta > 1 + g.epsilon_high,
         f"grpo.delta must be > 1 + grpo.epsilon_high = {1 + g.epsilon_high:g} (it caps the ratio of A < 0 tokens)"),
        (g.delta is None or g.loss == "ppo_clip", "grpo.delta (two-sided clipping) applies to grpo.loss: ppo_clip only"),
        (0 < g.top_entropy_quantile <= 1, "grpo.top_entropy_quantile must be in (0, 1] (1 = every token)"),
        (g.tis_cap >= 1, "grpo.tis_cap must be >= 1"),
        (cfg.rollout.max_extra_rounds >= 0, "rollout.max_extra_rounds must be >= 0"),
        (overlong.max_tokens >= 0 and 0 <= overlong.buffer <= overlong.max_tokens,
         "reward.overlong needs 0 <= buffer <= max_tokens (max_tokens 0 = off)"),
        (overlong.max_tokens == 0 or overlong.buffer > 0, "reward.overlong.buffer must be > 0 when max_tokens is set"),
    ]
    lora = cfg.model.lora
    if lora.rank:
        from qwen2.lora import TARGETS

        unknown = sorted(set(lora.targets) - set(TARGETS))
        variants += [
            (not unknown and bool(lora.targets), f"unknown model.lora.targets {', '.join(unknown) or '(none)'}; "
                                                 f"valid: {', '.join(TARGETS)}"),
            (lora.alpha > 0 and 0 <= lora.dropout < 1, "model.lora needs alpha > 0 and 0 <= dropout < 1"),
            (lora.dropout == 0 or g.updates_per_batch == 1,
             "model.lora.dropout > 0 cannot serve grpo.updates_per_batch > 1: pi_old comes from the first training "
             "pass, which dropout would perturb; set model.lora.dropout=0"),
        ]
    variants.append((lora.rank >= 0, "model.lora.rank must be >= 0 (0 = off, full fine-tuning)"))
    for ok, msg in variants:
        if not ok:
            raise ConfigError(msg)
    for name in cfg.reward.weights:
        if name not in REWARD_FUNCTIONS:
            raise ConfigError(f"unknown reward {name!r} in reward.weights; valid: {', '.join(REWARD_FUNCTIONS)}")


def _yaml_error(e: yaml.YAMLError, source: str, text: str) -> ConfigError:
    """One line: where (file:line:column), what YAML expected, and the offending line."""
    mark, context_mark = getattr(e, "problem_mark", None), getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    if mark is None:
        return ConfigError(f"{source} is not valid YAML: {problem}")
    context = getattr(e, "context", None)
    if context and context_mark is not None:  # e.g. where an unclosed '[' was opened
        context = f"{context} that starts at line {context_mark.line + 1}, column {context_mark.column + 1}"
    lines = text.splitlines()
    line = lines[mark.line].strip() if mark.line < len(lines) else "(end of file)"
    return ConfigError(f"{source}:{mark.line + 1}:{mark.column + 1}: not valid YAML: {problem}"
                       f"{f' ({context})' if context else ''}; the line: {line!r}")


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise _yaml_error(e, source, text) from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """'optim.lr=3e-6' -> (['optim', 'lr'], 3e-06); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set expects section.key=value, got {text!r}")
    key, value = text.split("=", 1)
    parsed = _parse_yaml(value, "--set value") if value.strip() else ""
    # YAML needs a space after ':' in a mapping, so {format:0.1,correctness:1.0} (as people type it
    # on a command line) reads as keys "format:0.1" with no values. Read it the way it was meant.
    if isinstance(parsed, dict) and any(isinstance(k, str) and ":" in k and v is None for k, v in parsed.items()):
        parsed = _parse_yaml(re.sub(r":(?=\S)", ": ", value), "--set value")
    # YAML 1.1 reads 3e-6 as a string; accept it as the number it obviously is.
    if isinstance(parsed, str):
        try:
            parsed = float(parsed) if any(c in parsed for c in ".eE") else parsed
        except ValueError:
            pass
    return key.strip().split("."), parsed


def load_config(path: str | Path | None = None, overrides: list[str] = (), base: dict[str, Any] | None = None) -> Config:
    """Read a YAML file (or `base`, a saved config dict, or the defaults) and apply `section.key=value` overrides."""
    raw: dict[str, Any] = copy.deepcopy(base) if base is not None else {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found (pass --config with an existing YAML file)")
        raw = _parse_yaml(path.read_text(), str(path))
        if raw is None:
            raise ConfigError(f"{path} is empty: that would silently mean every default (Qwen2.5-3B-Instruct on "
                              "GSM8K); write the settings you want into it (see config.yaml), or pass another --config")
    _migrate(raw)  # the file's (or the saved run's) renamed keys first, so that --set can override them
    for text in overrides:
        keys, value = parse_override(text)
        if keys == ["grpo", "scale_by_std"]:
            keys, value = ["grpo", "scale_rewards"], _scale_rewards_from(value)
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text}: {k} is not a section")
        node[keys[-1]] = value
    cfg = _build(Config, raw, "")
    _validate(cfg)
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
