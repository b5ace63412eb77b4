"""config.yaml and --set: typed values, and bad input as one line that says where and what to do."""

from __future__ import annotations

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
    with pytest.raises(ConfigError, match="rollout.top_k must be >= 0"):
        load_config(ROOT / "config.yaml", ["rollout.top_k=-1"])
    assert load_config(ROOT / "config.yaml", ["rollout.top_k=5", "rollout.top_p=0.9"]).rollout.sampling.top_k == 5
