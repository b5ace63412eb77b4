"""Qwen2.5 tokenizer at runtime: text <-> token ids, and chat messages -> prompt text.

A Hugging Face checkpoint directory describes its tokenizer in two files:

* ``tokenizer.json`` -- the whole byte-level BPE pipeline (NFC normalizer, Qwen's
  split regex, byte->unicode mapping, merges, vocabulary, added tokens). We hand
  it to the Rust ``tokenizers`` library, which runs it exactly and fast.
* ``tokenizer_config.json`` -- which added tokens are the end-of-sequence and
  padding tokens, and the Jinja ``chat_template`` that turns a list of
  ``{"role": ..., "content": ...}`` messages into the prompt string the model
  was trained on (ChatML for Qwen: ``<|im_start|>user\\n...<|im_end|>\\n``).

``Tokenizer`` reads both (plus ``chat_template.jinja`` and
``generation_config.json`` when present) and renders the checkpoint's own
template with Jinja, the same way ``transformers`` does, so prompts are
byte-identical. Special-token ids are always read from these files, never
hard-coded: the tiny tokenizer that ``qwen2/bpe_trainer.py`` trains for offline
tests has small ones. This module only *reads* tokenizers; it never trains one.

Simplified compared to ``transformers``: no slow (pure-Python) tokenizer, no
padding/truncation/tensor outputs (callers pad with ``pad_token_id``), no
``{% generation %}`` tag (assistant masks), no ``continue_final_message``, and
special-token strings typed inside message text are *not* escaped (they become
control tokens, which is also ``transformers``' default).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import tokenizers

from .errors import InputError, MissingInput

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # newer checkpoints keep the template here


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path} is not UTF-8 text (byte {e.start}): re-download the checkpoint (python download.py)") from None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON ({e}): re-download the checkpoint (python download.py)") from None


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


# Names a message's reasoning (the text inside <think>...</think>) goes by: Qwen3's
# template reads "reasoning_content", gpt-oss's "thinking", some APIs return "reasoning".
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _with_reasoning_aliases(message: dict) -> dict:
    """Like transformers: fill "reasoning_content" (and "thinking", if absent) from whichever reasoning field is set."""
    reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
    if reasoning is None:
        return message
    return {"thinking": reasoning, **message, "reasoning_content": reasoning}


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
            raise InputError(
                f"{self.name}: {field} {token!r} from {TOKENIZER_CONFIG_FILE} is not in {TOKENIZER_FILE}'s vocabulary: "
                "the two files come from different checkpoints; re-download them (python download.py)"
            )
        return token_id

    @classmethod
    def from_pretrained(cls, model_dir: str | Path) -> Tokenizer:
        """Load from a Hugging Face checkpoint directory (needs tokenizer.json; tokenizer_config.json for chat)."""
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise MissingInput(
                f"model directory {model_dir} not found: run python download.py "
                "(or pass the path of a Hugging Face checkpoint directory)"
            )
        tok_path = model_dir / TOKENIZER_FILE
        if not tok_path.is_file():
            raise MissingInput(
                f"{tok_path} not found: the tokenizer is read from the fast-tokenizer file {TOKENIZER_FILE}; "
                f"re-run python download.py, or copy {TOKENIZER_FILE} from the Hugging Face checkpoint into {model_dir}"
            )
        try:
            tok = tokenizers.Tokenizer.from_file(str(tok_path))
        except Exception as e:  # the Rust library's own exception type: a damaged or foreign file
            raise InputError(f"{tok_path} cannot be read as a tokenizer ({str(e).splitlines()[0][:200]}): "
                             "re-download the checkpoint (python download.py)") from None
        cfg_path = model_dir / TOKENIZER_CONFIG_FILE
        config = _read_json(cfg_path) if cfg_path.is_file() else {}
        gen_path = model_dir / GENERATION_CONFIG_FILE
        generation_config = _read_json(gen_path) if gen_path.is_file() else {}
        jinja_path = model_dir / CHAT_TEMPLATE_FILE
        chat_template = _read_text(jinja_path) if jinja_path.is_file() else None
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
            raise InputError(
                f"{self.name}: {TOKENIZER_CONFIG_FILE} has no chat_template, so messages can't be rendered: "
                "use an -Instruct checkpoint, or encode plain text with encode()"
            )
        if not messages:
            raise ValueError("messages is empty: pass at least one {'role': ..., 'content': ...} dict")
        if self._compiled_template is None:
            self._compiled_template = _compile_chat_template(self.chat_template)
        # Like transformers: drop None values (templates test for a missing key,
        # not for None), and copy so the template can't touch the caller's dicts.
        messages = [_with_reasoning_aliases({k: v for k, v in m.items() if v is not None}) for m in messages]
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
