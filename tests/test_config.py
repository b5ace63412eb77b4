"""config.yaml and --set: typed values, and bad input as one line that says where and what to do."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from grpo.config import ConfigError, load_config, parse_override

ROOT = Path(__file__).resolve().parents[1]


def one_line_error(path: Path, text: str) -> str:
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_yaml_syntax_error_names_file_line_column_and_the_line(tmp_path):
    message = one_line_error(tmp_path / "c.yaml", "rollout:\n  group_size: [1, 2\n  top_k: 3\n")
    assert message.startswith(f"{tmp_path / 'c.yaml'}:3:")
    assert "expected ',' or ']'" in message and "starts at line 2, column 15" in message
    assert "the line: 'top_k: 3'" in message


def test_bad_indentation_is_located(tmp_path):
    message = one_line_error(tmp_path / "c.yaml", "model:\n  path: x\n dtype: float32\n")
    assert message.startswith(f"{tmp_path / 'c.yaml'}:3:2: not valid YAML") and "'dtype: float32'" in message


def test_empty_config_file_is_refused(tmp_path):
    message = one_line_error(tmp_path / "empty.yaml", "# only a comment\n")
    assert "empty.yaml is empty" in message and "every default" in message


@pytest.mark.parametrize("typed", ["{format:0.1,correctness:1.0}", "{format: 0.1, correctness: 1.0}",
                                   "{format:0.1, correctness: 1}"])
def test_reward_weights_without_spaces_read_as_meant(typed):
    assert parse_override(f"reward.weights={typed}") == (["reward", "weights"], {"format": 0.1, "correctness": 1.0})
    cfg = load_config(ROOT / "config.yaml", [f"reward.weights={typed}"])
    assert cfg.reward.weights == {"format": 0.1, "correctness": 1.0}


def test_bad_set_value_is_one_line():
    with pytest.raises(ConfigError, match=r"^--set value:1:\d+: not valid YAML: .*the line: '\{format: \[0\.1\}'$"):
        parse_override("reward.weights={format: [0.1}")


def test_sampling_parameters_are_checked():
    with pytest.raises(ConfigError, match=re.escape("rollout.top_k must be in [0, ")):
        load_config(ROOT / "config.yaml", ["rollout.top_k=-1"])
    assert load_config(ROOT / "config.yaml", ["rollout.top_k=5", "rollout.top_p=0.9"]).rollout.sampling.top_k == 5


@pytest.mark.parametrize("override,message", [
    ("grpo.delta=1.2", "grpo.delta must be > 1 + grpo.epsilon_high = 1.28"),
    ("grpo.scale_rewards=std", "grpo.scale_rewards must be one of group, batch, none"),
    ("grpo.loss=gspo", "grpo.loss must be one of ppo_clip, cispo"),
    ("grpo.ratio_level=episode", "grpo.ratio_level must be one of token, sequence"),
    ("grpo.top_entropy_quantile=0", "grpo.top_entropy_quantile must be in (0, 1]"),
    ("grpo.old_logprobs=vllm", "grpo.old_logprobs must be one of recompute, sampler"),
    ("reward.overlong={max_tokens: 10, buffer: 20}", "reward.overlong needs 0 <= buffer <= max_tokens"),
    ("reward.overlong.max_tokens=10", "reward.overlong.buffer must be > 0 when max_tokens is set"),
])
def test_variant_settings_are_checked_in_one_line(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(ROOT / "config.yaml", [override])


def test_two_sided_clip_needs_ppo_clip():
    with pytest.raises(ConfigError, match="applies to grpo.loss: ppo_clip only"):
        load_config(ROOT / "config.yaml", ["grpo.delta=2", "grpo.loss=cispo"])


def test_scale_by_std_still_works_with_a_note(capsys):
    assert load_config(ROOT / "config.yaml", ["grpo.scale_by_std=false"]).grpo.scale_rewards == "none"
    assert "grpo.scale_by_std is deprecated; read as grpo.scale_rewards=none" in capsys.readouterr().err
    assert load_config(None, [], base={"grpo": {"scale_by_std": True}}).grpo.scale_rewards == "group"  # old checkpoints
    with pytest.raises(ConfigError, match="both given"):
        load_config(None, [], base={"grpo": {"scale_by_std": True, "scale_rewards": "batch"}})


def test_the_command_line_prints_a_bad_setting_as_one_line():
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "train.py", "--dry-run", "--set", "grpo.loss=gspo"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip() == "error: grpo.loss must be one of ppo_clip, cispo, got 'gspo'"


def test_a_text_key_keeps_text_that_yaml_would_read_as_a_mapping():
    """`--set data.user_prompt=Question: {question}` is a prompt, not YAML's {Question: {question: null}}."""
    cfg = load_config(None, ["data.user_prompt=Question: {question}", "data.system_prompt=Reply: [one word]"])
    assert cfg.data.user_prompt == "Question: {question}" and cfg.data.system_prompt == "Reply: [one word]"
    assert load_config(None, ["data.tags=[a, b]"]).data.tags == ["a", "b"]  # lists stay lists where declared
    with pytest.raises(ConfigError, match="optim.lr"):
        load_config(None, ["optim.lr={a: 1}"])  # and mappings stay mappings for every other key
