"""Tool calls in rollouts, in Qwen2.5's own format: the model calls a calculator mid-answer.

Qwen2.5-Instruct was trained on the tool-call format its chat template renders: the tools are
offered in the system prompt (`apply_chat_template(..., tools=[...])`), the model ends a turn with

    <tool_call>
    {"name": "calculator", "arguments": {"expression": "48 / 2"}}
    </tool_call><|im_end|>

and the result comes back as a `tool` message, which the template renders as a user turn holding
`<tool_response>24</tool_response>`, followed by the header of the next assistant turn. A rollout
(qwen2/sampler.py, `on_stop`) does exactly that per row: when a row stops, `ToolRunner.on_stop`
looks at the turn it just finished; if the turn ends with a tool call, it runs the tool and returns
the tokens of the template's own rendering of the answer and the next assistant header, which the
sampler pushes into that row's KV cache before the row decodes on; otherwise the row is done.

A row ends at a final answer (a turn without a tool call), at a call beyond `max_calls` (not run),
or when its own tokens reach max_new_tokens. The budget counts the model's tokens only: it bounds
what the model generates and what the loss trains on, the same with tools as without; the tools'
tokens are bounded on their own (each answered turn is at most TOOL_TURN_TOKENS tokens: an answer
is ASCII, cut to MAX_RESPONSE_CHARS characters, and cut further if its tokens still do not fit), and
the KV cache keeps room for them (`token_budget`, the same bound the memory planner uses). A call
in the model's last budgeted token is answered, but the row ends unfinished (truncated): it has no
budget left to use the answer. The tools' tokens are context, not actions: the trainer gives them
no log-probs, no loss and no entropy (`Episode.action_mask`).

Errors the model makes (a malformed call, an unknown tool, bad arithmetic) are answered as text it
sees ("error: ..."), never raised. Simplification: one call per turn (the template also renders
parallel calls; a turn with several gets an error answer asking for one at a time).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from data.calculator import calculate
from qwen2 import Tokenizer
from qwen2.errors import InputError

CALCULATOR = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression exactly: numbers, + - * / ** ( ), % (percent) and decimals.",
        "parameters": {"type": "object",
                       "properties": {"expression": {"type": "string", "description": "for example (48 / 2) * 3"}},
                       "required": ["expression"]},
    },
}
TOOLS = {"calculator": CALCULATOR}
MAX_RESPONSE_CHARS = 100
TOOL_TURN_TOKENS = MAX_RESPONSE_CHARS + 40  # the longest answer at a token a character, and the template around it
_CALL = re.compile(r"<tool_call>(.*?)</tool_call>\s*$", re.DOTALL)
MAX_CALL_CHARS = 2000  # a longer "call" is answered with an error without being parsed


def tool_specs(names: list[str]) -> list[dict[str, Any]] | None:
    """The schemas to offer through the chat template (None: no tools)."""
    return [TOOLS[n] for n in names] or None


def call_text(name: str, arguments: dict[str, Any]) -> str:
    """A tool call as the model writes it in Qwen2.5's format (what `run_tool_call` reads back)."""
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


def run_tool_call(text: str) -> str | None:
    """The tool's answer to the call that ends `text` (a finished assistant turn), or None when the
    turn does not end with a tool call. Never raises: a bad call is answered with an error text."""
    tail = text[-MAX_CALL_CHARS:].rstrip()
    if not tail.endswith("</tool_call>"):  # the turn ends otherwise: a final answer
        return None
    match = _CALL.search(tail)
    if match is None:
        return "error: a tool call is <tool_call>{\"name\": ..., \"arguments\": {...}}</tool_call>"
    if "<tool_call>" in match.group(1):  # Qwen2.5's template allows parallel calls; one at a time here
        return "error: one tool call per turn; make the next call after this one's answer"
    try:
        call = json.loads(match.group(1))
        name, arguments = call["name"], call.get("arguments", {})
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):  # RecursionError: deeply nested JSON
        return "error: the tool call is not valid JSON with a \"name\" and \"arguments\""
    if name != "calculator":
        return f"error: unknown tool {ascii(str(name)[:40])}; the tool is calculator"
    if not isinstance(arguments, dict) or not isinstance(arguments.get("expression"), str):
        return "error: calculator takes {\"expression\": \"...\"}"
    return calculate(arguments["expression"])[:MAX_RESPONSE_CHARS]


@dataclass
class ToolRunner:
    """The `on_stop` callback of one rollout: runs the rows' tool calls and renders the answers."""

    tokenizer: Tokenizer
    messages: list[list[dict[str, Any]]]  # each row's prompt messages (system + user)
    tools: list[dict[str, Any]]
    max_calls: int
    chat_kwargs: dict[str, Any] = field(default_factory=dict)  # the template's variables (enable_thinking)
    calls: dict[int, int] = field(default_factory=dict)  # row -> calls run
    errors: dict[int, int] = field(default_factory=dict)  # row -> calls answered with an error

    def token_budget(self) -> int:
        """KV-cache positions the tools' tokens of one row can take: max_calls answered turns of at
        most TOOL_TURN_TOKENS each (what generate's `room` keeps)."""
        return self.max_calls * TOOL_TURN_TOKENS

    def on_stop(self, row: int, turn: list[int]) -> list[int] | None:
        """Tokens to continue row `row` with after its finished turn `turn` (model tokens, the stop
        token last): the tool's answer and the next assistant header; None: the row is done."""
        if turn[-1] != self.tokenizer.eos_token_id or self.calls.get(row, 0) >= self.max_calls:
            return None  # not a turn's end (<|im_end|>), or no calls left: the row is done, a call is not run
        answer = run_tool_call(self.tokenizer.decode(turn[:-1]))  # without the stop token
        if answer is None:  # a final answer, not a call
            return None
        self.calls[row] = self.calls.get(row, 0) + 1
        if answer.startswith("error:"):
            self.errors[row] = self.errors.get(row, 0) + 1
        return self.answered_turn(row, answer)

    def answered_turn(self, row: int, answer: str) -> list[int]:
        """The tokens of the template's turn that brings `answer` back to row `row`, at most
        TOOL_TURN_TOKENS of them: the answer is made ASCII and cut until its turn fits."""
        answer = answer.encode("ascii", "replace").decode()[:MAX_RESPONSE_CHARS]
        while True:
            tokens = self.tokenizer.encode(continuation(self.tokenizer, self.messages[row], answer, self.tools,
                                                        **self.chat_kwargs))
            if len(tokens) <= TOOL_TURN_TOKENS or not answer:
                return tokens
            answer = answer[:max(0, len(answer) - (len(tokens) - TOOL_TURN_TOKENS))]


def continuation(tokenizer: Tokenizer, messages: list[dict[str, Any]], answer: str,
                 tools: list[dict[str, Any]] | None, **chat_kwargs: Any) -> str:
    """What the chat template puts after an assistant turn that called a tool (after its stop
    token): the rest of the turn's end, the tool's answer as a `tool` message, and the next
    assistant header. Rendered by the checkpoint's own template, so the model sees its own format.
    Read from the whole rendered exchange, after the turn: templates may render a turn differently
    when it is the last message (Qwen3 pre-fills an empty <think> block there), which the text after
    it does not depend on."""
    marker = "\x00TURN\x00"  # stands for the turn's text, so that the template's text around it is found
    turn_end = tokenizer.decode([tokenizer.eos_token_id])
    assistant = {"role": "assistant", "content": marker}
    full = tokenizer.apply_chat_template([*messages, assistant, {"role": "tool", "content": answer}],
                                         add_generation_prompt=True, tools=tools, **chat_kwargs)
    at = full.find(marker) + len(marker)
    if at < len(marker) or not full[at:].startswith(turn_end) or answer not in full[at:]:
        raise InputError(f"{tokenizer.name}: its chat template does not render a tool message after an assistant "
                         "turn; rollout.tools needs a template with tool calls (Qwen2.5-Instruct's or Qwen3's)")
    return full[at + len(turn_end):]
