"""Qwen3's thinking switch (data.enable_thinking) and our <think>/<answer> prompt: the switch reaches the
checkpoint's own chat template, the rewards read the assistant's whole turn (the template's pre-fill,
then the completion), and a run with the switch off trains, saves it and resumes with it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import train
from data.gsm8k import Problem
from data.prompts import custom_template
from data.rewards import GSM8K_WEIGHTS, Rewards
from grpo.config import load_config
from grpo.rollout import encode_prompt, prefill, prompt_text, score_groups
from qwen2 import GenerationOutput, Tokenizer
from test_tokenizer import _real_tokenizer_files
from tiny_run import build_tiny_model, metrics, write_config

EMPTY_THINK = "<think>\n\n</think>\n\n"  # what Qwen3's template pre-fills with enable_thinking false


@pytest.fixture(scope="module")
def qwen3_tok(tmp_path_factory) -> Tokenizer:
    out = tmp_path_factory.mktemp("qwen3_tok")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(_real_tokenizer_files() / name, out / name)
    return Tokenizer.from_pretrained(out)


def test_the_switch_reaches_the_template_and_its_prefill_is_known(qwen3_tok):
    default, off, on = (custom_template("think", enable_thinking=v) for v in (None, False, True))
    assert prompt_text(qwen3_tok, "q", default).endswith("<|im_start|>assistant\n") and prefill(qwen3_tok, default) == ""
    assert prompt_text(qwen3_tok, "q", off).endswith("<|im_start|>assistant\n" + EMPTY_THINK)
    assert prefill(qwen3_tok, off) == EMPTY_THINK
    assert prefill(qwen3_tok, on) == ""  # thinking on (Qwen3's default): the model writes its own <think>
    assert encode_prompt(qwen3_tok, "q", off)[-len(qwen3_tok.encode(EMPTY_THINK)):] == qwen3_tok.encode(EMPTY_THINK)


@pytest.mark.parametrize("thinking, completion, format_ok", [
    (None, "<think>\n48 + 24 = 72\n</think>\n\n<answer>\n72\n</answer>", True),  # Qwen3 thinks in our tags
    (None, "<answer>\n72\n</answer>", False),  # no reasoning block at all
    (False, "<answer>\n72\n</answer>", True),  # the template wrote the (empty) reasoning block
    (False, "<think>\nagain\n</think>\n<answer>\n72\n</answer>", False),  # a second block: not the format
])
def test_rewards_read_the_whole_assistant_turn(qwen3_tok, thinking, completion, format_ok):
    template = custom_template("think", enable_thinking=thinking)
    problem = Problem("What is 48 + 24?", "72", "")
    prompt = encode_prompt(qwen3_tok, problem.question, template)
    out = GenerationOutput(tokens=[qwen3_tok.encode(completion) + [qwen3_tok.eos_token_id]], finished=[True])
    (episode,) = score_groups(qwen3_tok, [problem], [prompt], out, template=template, rewards=Rewards(GSM8K_WEIGHTS))
    assert episode.score.correct  # the answer is read after the reasoning either way
    assert episode.score.parts["format"] == (0.1 if format_ok else 0.0)
    assert episode.text == completion  # the episode keeps what the model wrote


def test_a_run_with_thinking_off_trains_and_resumes_with_it(tmp_path, capsys):
    model = build_tiny_model(tmp_path / "tiny_qwen3", model_type="qwen3", head_dim=16)
    config_file = model / "tokenizer_config.json"  # Qwen3's own chat template on the tiny checkpoint
    tiny = json.loads(config_file.read_text())
    tiny["chat_template"] = json.loads((_real_tokenizer_files() / "tokenizer_config.json").read_text())["chat_template"]
    config_file.write_text(json.dumps(tiny))
    config = write_config(tmp_path, model, data={"enable_thinking": False},
                          rollout={"prompts_per_step": 2, "group_size": 2, "max_new_tokens": 4},
                          train={"steps": 2, "eval_every": 0, "save_every": 1})
    assert train.main(["--config", str(config), "--stop-after", "1"]) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["data"]["enable_thinking"] is False
    assert train.main(["--resume", str(tmp_path / "run")]) == 0
    assert [r["step"] for r in metrics(tmp_path / "run") if "reward" in r] == [1, 2]
    cfg = load_config(base=saved)
    tok = Tokenizer.from_pretrained(model)
    assert prefill(tok, cfg.data.prompt) == EMPTY_THINK
    capsys.readouterr()


@pytest.mark.parametrize("thinking", [None, False])
def test_a_tool_answer_continues_the_turn_in_qwen3s_own_format(qwen3_tok, thinking):
    from grpo.tools import CALCULATOR, continuation

    template = custom_template("think", enable_thinking=thinking)
    messages = [{"role": "user", "content": "What is 6 * 7?"}]
    text = continuation(qwen3_tok, messages, "42", [CALCULATOR], **template.chat_kwargs())
    assert "<tool_response>\n42\n</tool_response>" in text
    assert text.endswith("<|im_start|>assistant\n" + ("" if thinking is None else EMPTY_THINK))


def test_with_tools_the_final_turn_is_read_after_the_prefill_too(qwen3_tok):
    template = custom_template("think", enable_thinking=False)
    problem = Problem("What is 2 + 2?", "4", "")
    tokens = qwen3_tok.encode("<answer>\n4\n</answer>") + [qwen3_tok.eos_token_id]
    out = GenerationOutput(tokens=[tokens], finished=[True], action_mask=[[1] * len(tokens)])  # no call made
    (episode,) = score_groups(qwen3_tok, [problem], [encode_prompt(qwen3_tok, problem.question, template)], out,
                              template=template, rewards=Rewards(GSM8K_WEIGHTS))
    assert episode.score.parts == {"format": 0.1, "correctness": 1.0}
