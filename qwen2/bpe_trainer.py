"""Train a tiny Qwen2.5-shaped byte-level BPE tokenizer, for offline tests and the tiny recipe.

Nothing at runtime trains a tokenizer: training and evaluation read a checkpoint's
``tokenizer.json`` with ``qwen2.tokenizer.Tokenizer``. This module only builds a
*small* tokenizer of the same shape, so the tests and ``scripts/tiny_recipe.py``
run the whole pipeline without downloading Qwen's 151,643-token vocabulary (like
nanochat, which keeps ``train_from_iterator`` apart from its runtime tokenizer).

Same as Qwen2.5: the NFC normalizer, Qwen2's split regex, the byte-level mapping
(all 256 bytes in the alphabet, so no unknown tokens), the 22 added tokens in
Qwen's order with Qwen's "special" flags, and a tokenizer_config.json with
Qwen2.5-Instruct's real chat template, eos ``<|im_end|>`` and pad
``<|endoftext|>``. The result loads with ``Tokenizer.from_pretrained`` and with
``transformers.AutoTokenizer``.

Simplified: the merges are learnt from the texts given (``tokenizers``'
``BpeTrainer``, pairs seen at least twice), not Qwen's, so the ids differ from
Qwen's and the added tokens get *small* ids at the end of the small vocabulary --
which is why nothing in this project may hard-code Qwen's 151645. A tiny corpus
can run out of merges before ``vocab_size``. No slow-tokenizer files
(vocab.json, merges.txt), no generation_config.json, and none of Qwen3's extra
added tokens (``<tool_response>``, ``<think>``, ...).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers

from .tokenizer import Tokenizer

# Qwen2.5-Instruct's chat template, byte for byte the ``chat_template`` field of
# Qwen/Qwen2.5-0.5B-Instruct's tokenizer_config.json (revision 7ae5576, trailing
# newline included; tests pin its sha256). The other Qwen2.5-Instruct sizes ship
# the same template. Raw string: the ``\n`` inside Jinja string literals must
# stay backslash-n; Jinja itself turns them into newlines when rendering.
QWEN25_CHAT_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

# Qwen2.5's added tokens in id order, with their "special" flag. Special tokens
# are dropped by decode(skip_special_tokens=True); the tool/FIM markers are
# added tokens too (never split) but count as ordinary text when decoding.
QWEN25_ADDED_TOKENS: list[tuple[str, bool]] = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
]

# Qwen2's pre-tokenization regex (from its tokenizer.json): contractions, letter
# runs, *single* digits (so "123" is always 1,2,3 -- handy for arithmetic),
# punctuation runs, newlines, and whitespace.
QWEN2_SPLIT_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
    r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def _qwen2_pipeline(bpe: models.BPE) -> tokenizers.Tokenizer:
    """A tokenizers.Tokenizer wired exactly like Qwen2's tokenizer.json, around the given BPE model."""
    tok = tokenizers.Tokenizer(bpe)
    tok.normalizer = normalizers.NFC()
    byte_level = dict(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            # 1) split text into words/digits/punctuation with Qwen's regex ...
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
            # 2) ... then map every UTF-8 byte to a printable character, so the
            # 256 byte symbols cover any text: no unknown tokens, ever.
            pre_tokenizers.ByteLevel(**byte_level),
        ]
    )
    tok.post_processor = processors.ByteLevel(**byte_level)
    # The decoder maps the byte symbols back to UTF-8. (Its Python binding ignores
    # options, so tokenizer.json lists the defaults; they don't change decoding.)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_bpe_tokenizer(
    texts: Iterable[str],
    out_dir: str | Path,
    vocab_size: int = 1024,
    model_max_length: int = 131072,
) -> Tokenizer:
    """Train a small Qwen2.5-style byte-level BPE on texts; write tokenizer.json + tokenizer_config.json to out_dir.

    vocab_size counts everything (256 byte symbols + merges + the 22 Qwen
    added tokens); a tiny corpus may run out of merges first and give fewer.
    The added tokens come last, like in Qwen, so their ids are small here.
    The config carries Qwen2.5-Instruct's real chat template, eos <|im_end|>
    and pad <|endoftext|>, and loads with transformers' AutoTokenizer too.
    """
    n_added = len(QWEN25_ADDED_TOKENS)
    if vocab_size < 256 + n_added:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: pass at least {256 + n_added} (256 bytes + {n_added} added tokens)"
        )
    tok = _qwen2_pipeline(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - n_added,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, even unseen ones
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens([AddedToken(content, special=special, normalized=False) for content, special in QWEN25_ADDED_TOKENS])

    # Mirror Qwen2.5-Instruct's tokenizer_config.json, with our ids.
    added_tokens_decoder = {
        str(tok.token_to_id(content)): {
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": special,
        }
        for content, special in QWEN25_ADDED_TOKENS
    }
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added_tokens_decoder,
        "additional_special_tokens": [c for c, special in QWEN25_ADDED_TOKENS if special and c != "<|endoftext|>"],
        "bos_token": None,
        "chat_template": QWEN25_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": model_max_length,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    Tokenizer(tok, config, name=str(out_dir)).save_pretrained(out_dir)
    return Tokenizer.from_pretrained(out_dir)
