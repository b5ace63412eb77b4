"""Qwen2.5 tokenizer: text <-> token ids, and chat messages -> prompt text.

A Hugging Face checkpoint directory describes its tokenizer in two files:

* ``tokenizer.json`` -- the whole byte-level BPE pipeline (NFC normalizer, Qwen's
  split regex, byte->unicode mapping, merges, vocabulary, added tokens). We hand
  it to the Rust ``tokenizers`` library, which runs it exactly and fast.
* ``tokenizer_config.json`` -- which added tokens are the end-of-sequence and
  padding tokens, and the Jinja ``chat_template`` that turns a list of
  ``{"role": ..., "content": ...}`` messages into the prompt string the model
  was trained on (ChatML for Qwen: ``<|im_start|>user\\n...<|im_end|>\\n``).

``Tokenizer`` reads both and renders the checkpoint's own template with Jinja,
the same way ``transformers`` does, so prompts are byte-identical.

``train_bpe_tokenizer`` builds a *small* tokenizer of the same shape (same
pre-tokenizer, same special tokens, Qwen2.5-Instruct's real chat template) for
offline tests and the tiny recipe. Its special-token ids are small (they sit at
the end of a small vocabulary), which is why nothing in this project may
hard-code Qwen's 151645: ids are always read from the files.

Simplified compared to ``transformers``: no slow (pure-Python) tokenizer, no
padding/truncation/tensor outputs (callers pad with ``pad_token_id``), no
``{% generation %}`` tag (assistant masks), no ``continue_final_message``, and
special-token strings typed inside message text are *not* escaped (they become
control tokens, which is also ``transformers``' default).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers

# Qwen2.5-Instruct's chat template, copied exactly from the ``chat_template``
# field of Qwen/Qwen2.5-0.5B-Instruct's tokenizer_config.json (the same for all
# Qwen2.5-Instruct sizes). Raw string: the ``\n`` inside Jinja string literals
# must stay backslash-n; Jinja itself turns them into newlines when rendering.
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
{%- endif %}"""

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

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # newer checkpoints keep the template here


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}): re-download the checkpoint (python download.py)") from None


def _token_content(value: Any) -> str | None:
    """tokenizer_config.json stores a token as "<|im_end|>" or {"content": "<|im_end|>", ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def _as_id_list(value: Any) -> list[int]:
    """generation_config.json's eos_token_id may be one int or a list of ints."""
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys: bool = False):
    # Same as transformers: plain json.dumps. Jinja's built-in tojson would
    # HTML-escape '<', '>', '&' and '\'' -- a different prompt than training.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str):
    import jinja2

    raise jinja2.exceptions.TemplateError(message)


def _compile_chat_template(source: str):
    # Imported lazily: only chat prompts need jinja2.
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    # A chat template is code from the internet, so it runs sandboxed. The
    # options match transformers exactly: trim_blocks drops the newline after a
    # {% tag %}, lstrip_blocks drops spaces before it -- without them, every
    # indentation space in Qwen's template would leak into the prompt.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


class Tokenizer:
    """A Hugging Face ``tokenizer.json`` plus the special tokens and chat template of its checkpoint."""

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        config: dict | None = None,
        generation_config: dict | None = None,
        chat_template: str | None = None,
        name: str = "tokenizer",
    ):
        self._tok = tokenizer
        self.config = dict(config or {})
        self.generation_config = dict(generation_config or {})
        self.name = name  # where it came from, for error messages
        if chat_template is None:
            chat_template = self.config.get("chat_template")
        if isinstance(chat_template, list):  # old multi-template format: [{"name": ..., "template": ...}]
            chat_template = {t["name"]: t["template"] for t in chat_template}.get("default")
        self.chat_template: str | None = chat_template
        self._compiled_template = None

        gen_eos = _as_id_list(self.generation_config.get("eos_token_id"))
        eos = _token_content(self.config.get("eos_token"))
        # eos: the token that ends the assistant's turn (<|im_end|> for Instruct models).
        self.eos_token_id: int | None = self._lookup(eos, "eos_token") if eos else (gen_eos[0] if gen_eos else None)
        # pad: fills batches to equal length (Qwen: <|endoftext|>). In -Instruct
        # models it differs from eos <|im_end|>, so padding never looks like a
        # finished answer; still, always mask padded positions out.
        pad = _token_content(self.config.get("pad_token"))
        gen_pad = self.generation_config.get("pad_token_id")
        if pad:
            self.pad_token_id: int | None = self._lookup(pad, "pad_token")
        elif gen_pad is not None:
            self.pad_token_id = int(gen_pad)
        else:
            self.pad_token_id = self.token_to_id("<|endoftext|>")
            if self.pad_token_id is None:
                self.pad_token_id = self.eos_token_id

    def _lookup(self, token: str, field: str) -> int:
        token_id = self._tok.token_to_id(token)
        if token_id is None:
            raise ValueError(
                f"{self.name}: {field} {token!r} from {TOKENIZER_CONFIG_FILE} is not in {TOKENIZER_FILE}'s vocabulary: "
                "the two files come from different checkpoints; re-download them (python download.py)"
            )
        return token_id

    @classmethod
    def from_pretrained(cls, model_dir: str | Path) -> Tokenizer:
        """Load from a Hugging Face checkpoint directory (needs tokenizer.json; tokenizer_config.json for chat)."""
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise FileNotFoundError(
                f"model directory {model_dir} not found: run python download.py "
                "(or pass the path of a Hugging Face checkpoint directory)"
            )
        tok_path = model_dir / TOKENIZER_FILE
        if not tok_path.is_file():
            raise FileNotFoundError(
                f"{tok_path} not found: the tokenizer is read from the fast-tokenizer file {TOKENIZER_FILE}; "
                f"re-run python download.py, or copy {TOKENIZER_FILE} from the Hugging Face checkpoint into {model_dir}"
            )
        tok = tokenizers.Tokenizer.from_file(str(tok_path))
        cfg_path = model_dir / TOKENIZER_CONFIG_FILE
        config = _read_json(cfg_path) if cfg_path.is_file() else {}
        gen_path = model_dir / GENERATION_CONFIG_FILE
        generation_config = _read_json(gen_path) if gen_path.is_file() else {}
        jinja_path = model_dir / CHAT_TEMPLATE_FILE
        chat_template = jinja_path.read_text(encoding="utf-8") if jinja_path.is_file() else None
        return cls(tok, config, generation_config, chat_template, name=str(model_dir))

    # --- ids -----------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of token ids, added tokens included (the model's embedding may be larger, never smaller)."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def stop_token_ids(self) -> list[int]:
        """Ids that end generation: eos, generation_config's eos ids, and <|endoftext|> (deduplicated, in order)."""
        candidates = [self.eos_token_id, *_as_id_list(self.generation_config.get("eos_token_id"))]
        candidates.append(self.token_to_id("<|endoftext|>"))
        return list(dict.fromkeys(i for i in candidates if i is not None))

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)

    # --- text <-> ids --------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Text -> ids. Control-token strings in the text (e.g. "<|im_end|>") become single ids.

        Qwen adds no BOS token, so add_special_tokens only matters for other tokenizers.
        """
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
        """Like encode on each text, but the Rust library spreads the batch over CPU threads."""
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Ids -> text. skip_special_tokens drops <|im_start|>, <|im_end|>, <|endoftext|>, ..."""
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def decode_batch(self, batch: Sequence[Sequence[int]], skip_special_tokens: bool = False) -> list[str]:
        return self._tok.decode_batch([list(ids) for ids in batch], skip_special_tokens=skip_special_tokens)

    # --- chat ----------------------------------------------------------------

    def apply_chat_template(
        self,
        messages: Sequence[dict],
        add_generation_prompt: bool = True,
        tools: list[dict] | None = None,
        **kwargs: Any,
    ) -> str:
        """Render messages with the checkpoint's own chat template; returns the prompt *text* (encode it yourself).

        add_generation_prompt=True appends the header of the assistant's turn
        ("<|im_start|>assistant\\n" for Qwen), so the model writes the answer next.
        """
        if not self.chat_template:
            raise ValueError(
                f"{self.name}: {TOKENIZER_CONFIG_FILE} has no chat_template, so messages can't be rendered: "
                "use an -Instruct checkpoint, or encode plain text with encode()"
            )
        if not messages:
            raise ValueError("messages is empty: pass at least one {'role': ..., 'content': ...} dict")
        if self._compiled_template is None:
            self._compiled_template = _compile_chat_template(self.chat_template)
        # Like transformers: drop None values (templates test for a missing key,
        # not for None), and copy so the template can't touch the caller's dicts.
        messages = [{k: v for k, v in m.items() if v is not None} for m in messages]
        # Templates may also read the named special tokens (e.g. {{ eos_token }}).
        special = {
            key: _token_content(self.config.get(key))
            for key in ("bos_token", "eos_token", "unk_token", "pad_token")
            if _token_content(self.config.get(key)) is not None
        }
        return self._compiled_template.render(
            messages=messages,
            tools=tools,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **{**special, **kwargs},
        )

    # --- saving --------------------------------------------------------------

    def save_pretrained(self, out_dir: str | Path) -> None:
        """Write tokenizer.json and tokenizer_config.json (chat template included) so a checkpoint is self-contained."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(out_dir / TOKENIZER_FILE))
        config = dict(self.config)
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        text = json.dumps(config, indent=2, ensure_ascii=False) + "\n"
        (out_dir / TOKENIZER_CONFIG_FILE).write_text(text, encoding="utf-8")

    def __repr__(self) -> str:
        ids = f"vocab_size={self.vocab_size}, eos={self.eos_token_id}, pad={self.pad_token_id}"
        return f"Tokenizer({self.name!r}, {ids})"


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
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.post_processor = processors.ByteLevel(**byte_level)
    tok.decoder = decoders.ByteLevel(**byte_level)
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
