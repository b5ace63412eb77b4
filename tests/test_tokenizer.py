"""Tokenizer tests: a tiny Qwen2.5-style tokenizer, checked against transformers.AutoTokenizer as the oracle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers_tokenizer import build_tiny_tokenizer

from qwen2.tokenizer import QWEN2_SPLIT_REGEX, QWEN25_ADDED_TOKENS, QWEN25_CHAT_TEMPLATE, Tokenizer

TEXTS = [
    "Natalia sold 48 clips in April, and then she sold half as many clips in May.",
    "12345 + 678 = 13023; 3.14159 * 2 = 6.28318",
    "Café crème, naïve façade, señor — 50% off! ✓ 🚀",
    "你好，世界！这是一个数学问题：3个苹果加5个苹果等于几个？",
    "  leading spaces\n\ttabs\tand\r\nnewlines\n\n\n  trailing   ",
    "It's, we'll, they've, I'M, don't: contractions",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|><|endoftext|>",
    "",
]

SYSTEM = {"role": "system", "content": "You are a careful math tutor."}
USER = {"role": "user", "content": "Natalia sold 48 clips in April. How many in total?"}
ASSISTANT = {"role": "assistant", "content": "She sold 48 + 24 = 72 clips.\n#### 72"}
USER2 = {"role": "user", "content": "And in June? 你好"}
CONVERSATIONS = {
    "user": [USER],
    "system_user": [SYSTEM, USER],
    "system_user_assistant_user": [SYSTEM, USER, ASSISTANT, USER2],
    "user_assistant": [USER, ASSISTANT],
}


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny_tok")
    build_tiny_tokenizer(out)
    return out


@pytest.fixture(scope="module")
def tok(tok_dir) -> Tokenizer:
    return Tokenizer.from_pretrained(tok_dir)


@pytest.fixture(scope="module")
def hf_tok(tok_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tok_dir)


def test_tiny_vocab_is_small_and_added_tokens_come_last(tok):
    n = len(QWEN25_ADDED_TOKENS)
    assert 256 + n < tok.vocab_size <= 512
    ids = [tok.token_to_id(content) for content, _ in QWEN25_ADDED_TOKENS]
    assert ids == list(range(tok.vocab_size - n, tok.vocab_size))  # in Qwen's order, at the end like Qwen


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_split_regex_is_qwens():
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    assert QWEN2_SPLIT_REGEX == PRETOKENIZE_REGEX


def test_digits_are_split_one_per_token(tok):
    ids = tok.encode("2024")
    assert [tok.decode([i]) for i in ids] == ["2", "0", "2", "4"]


def test_special_tokens_are_single_ids(tok):
    for content, _ in QWEN25_ADDED_TOKENS:
        assert tok.encode(content) == [tok.token_to_id(content)]
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>\n")
    assert ids[0] == tok.token_to_id("<|im_start|>")
    assert ids.count(tok.token_to_id("<|im_end|>")) == 1


def test_skip_special_tokens(tok):
    ids = tok.encode("<|im_start|>assistant\n72<|im_end|><tool_call>")
    # <tool_call> is an added token but not "special" in Qwen2.5, so it survives (as in transformers).
    assert tok.decode(ids, skip_special_tokens=True) == "assistant\n72<tool_call>"


def test_eos_pad_and_stop_ids_read_from_files(tok, hf_tok):
    assert tok.eos_token_id == tok.token_to_id("<|im_end|>") == hf_tok.eos_token_id
    assert tok.pad_token_id == tok.token_to_id("<|endoftext|>") == hf_tok.pad_token_id
    assert tok.eos_token_id < 1000  # tiny ids: nothing may assume Qwen's 151645
    assert tok.stop_token_ids == [tok.eos_token_id, tok.pad_token_id]


def test_encode_batch_matches_encode(tok):
    assert tok.encode_batch(TEXTS) == [tok.encode(t) for t in TEXTS]
    assert tok.decode_batch(tok.encode_batch(TEXTS)) == TEXTS


@pytest.mark.parametrize("text", TEXTS)
def test_encode_decode_match_transformers(tok, hf_tok, text):
    ids = tok.encode(text)
    assert ids == hf_tok.encode(text, add_special_tokens=False)
    for skip in (False, True):
        assert tok.decode(ids, skip_special_tokens=skip) == hf_tok.decode(ids, skip_special_tokens=skip)


def test_chat_template_literal(tok):
    # Hand-written expectation: the default system prompt appears when none is given.
    assert tok.apply_chat_template([{"role": "user", "content": "Hi"}]) == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_chat_template_matches_transformers(tok, hf_tok, name, add_generation_prompt):
    messages = CONVERSATIONS[name]
    ours = tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    theirs = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert ours == theirs
    assert tok.encode(ours) == hf_tok.encode(theirs, add_special_tokens=False)


def test_chat_template_with_tools_matches_transformers(tok, hf_tok):
    # Exercises the template's tool branches and our tojson filter (no HTML escaping, non-ASCII kept).
    params = {"type": "object", "properties": {"expr": {"type": "string"}}}
    tools = [{"type": "function",
              "function": {"name": "calc", "description": "Evaluate <expr> & return", "parameters": params}}]
    messages = [
        USER,
        {"role": "assistant", "content": None,
         "tool_calls": [{"type": "function", "function": {"name": "calc", "arguments": {"expr": "48/2 ≈ 24"}}}]},
        {"role": "tool", "content": "24"},
    ]
    ours = tok.apply_chat_template(messages, tools=tools)
    assert ours == hf_tok.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
    assert '"expr": "48/2 ≈ 24"' in ours and "<expr> & return" in ours


def test_tokenizer_config_carries_real_template(tok_dir, tok):
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    assert config["chat_template"] == QWEN25_CHAT_TEMPLATE == tok.chat_template
    assert QWEN25_CHAT_TEMPLATE.startswith("{%- if tools %}")
    assert "You are Qwen, created by Alibaba Cloud. You are a helpful assistant." in QWEN25_CHAT_TEMPLATE
    assert config["tokenizer_class"] == "Qwen2Tokenizer"
    assert config["eos_token"] == "<|im_end|>" and config["pad_token"] == "<|endoftext|>"
    assert config["added_tokens_decoder"][str(tok.eos_token_id)]["content"] == "<|im_end|>"


def test_save_pretrained_round_trip(tok, tmp_path):
    tok.save_pretrained(tmp_path / "copy")
    again = Tokenizer.from_pretrained(tmp_path / "copy")
    assert [again.encode(t) for t in TEXTS] == [tok.encode(t) for t in TEXTS]
    assert again.vocab_size == tok.vocab_size
    assert (again.eos_token_id, again.pad_token_id) == (tok.eos_token_id, tok.pad_token_id)
    messages = CONVERSATIONS["system_user_assistant_user"]
    assert again.apply_chat_template(messages) == tok.apply_chat_template(messages)


def test_special_tokens_as_dicts_and_generation_config_fallback(tok_dir, tmp_path):
    shutil.copy(tok_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    ref = Tokenizer.from_pretrained(tok_dir)
    im_end, eot = ref.eos_token_id, ref.pad_token_id

    config["eos_token"] = {"content": "<|im_end|>", "lstrip": False, "normalized": False}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert Tokenizer.from_pretrained(tmp_path).eos_token_id == im_end

    # No eos/pad in tokenizer_config.json: fall back to generation_config.json (Qwen2.5-Instruct lists two eos ids).
    del config["eos_token"], config["pad_token"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [im_end, eot], "pad_token_id": eot}))
    t = Tokenizer.from_pretrained(tmp_path)
    assert (t.eos_token_id, t.pad_token_id, t.stop_token_ids) == (im_end, eot, [im_end, eot])


def test_error_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model directory .*nope not found: run python download\.py"):
        Tokenizer.from_pretrained(tmp_path / "nope")


def test_error_missing_tokenizer_json(tok_dir, tmp_path):
    shutil.copy(tok_dir / "tokenizer_config.json", tmp_path / "tokenizer_config.json")
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json not found: .*re-run python download\.py"):
        Tokenizer.from_pretrained(tmp_path)


def test_error_missing_chat_template(tok_dir, tmp_path):
    shutil.copy(tok_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    t = Tokenizer.from_pretrained(tmp_path)
    assert t.decode(t.encode("48 clips")) == "48 clips"  # plain text still works
    with pytest.raises(ValueError, match=r"tokenizer_config\.json has no chat_template.*-Instruct checkpoint"):
        t.apply_chat_template([USER])


def test_error_eos_not_in_vocab(tok_dir, tmp_path):
    shutil.copy(tok_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    with pytest.raises(ValueError, match=r"eos_token '</s>' .* not in tokenizer\.json's vocabulary"):
        Tokenizer.from_pretrained(tmp_path)


def test_chat_template_jinja_file_takes_priority(tok_dir, tmp_path):
    # Newer transformers save the template as chat_template.jinja; like transformers, it wins over the config field.
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tok_dir / name, tmp_path / name)
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}")
    assert Tokenizer.from_pretrained(tmp_path).apply_chat_template([USER2]) == "[user] And in June? 你好\n"
