"""Prompt templates: how a GSM8K question becomes chat messages.

A template is plain data: a system prompt that asks for reasoning inside one
tag pair and the final number inside another, plus the names of those tags
so `data.rewards` can check the same format the prompt asked for:

    build_messages("Tom has 3 apples...", "think")
    -> [{"role": "system", "content": "...<think>...<answer>..."},
        {"role": "user", "content": "Tom has 3 apples..."}]

The messages are then rendered with the model's chat template by the
tokenizer code. Your own task brings its own template through the config
(data.system_prompt, data.tags, data.user_prompt: `custom_template`), used
by training, evaluation and resume alike. `enable_thinking` is handed to the
chat template (Qwen3's switch; None = the template's default, which for
Qwen3 is thinking on).
Simplification: one system prompt per template, no few-shot examples.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PromptTemplate:
    """A system prompt plus the (reasoning tag, answer tag) it asks for."""

    system: str
    tags: tuple[str, str]
    user: str = "{question}"  # the user's turn; "{question}" stands for the question
    enable_thinking: bool | None = None  # Qwen3's chat-template switch; None: not passed (template default)

    def chat_kwargs(self) -> dict:
        """Extra variables for the chat template (only those set)."""
        return {} if self.enable_thinking is None else {"enable_thinking": self.enable_thinking}


THINK_SYSTEM = (
    "You are a helpful assistant that solves math word problems. "
    "First think step by step inside <think> </think> tags, then write only the "
    "final number inside <answer> </answer> tags, like this:\n"
    "<think>\n...\n</think>\n<answer>\n42\n</answer>"
)

REASONING_SYSTEM = (
    "Respond in the following format:\n"
    "<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>\n"
    "Put your step-by-step reasoning in <reasoning> and only the final number in <answer>."
)

CHINESE_SYSTEM = (
    "你是一个擅长解答数学应用题的助手。"
    "请先在 <think> </think> 标签内一步一步地推理，"
    "然后在 <answer> </answer> 标签内只写出最终的数字答案，格式如下：\n"
    "<think>\n...\n</think>\n<answer>\n42\n</answer>"
)

MATH_SYSTEM = (
    "You are a helpful assistant that solves competition math problems. "
    "First think step by step inside <think> </think> tags, then give the final answer in LaTeX as "
    "\\boxed{...} inside <answer> </answer> tags, like this:\n"
    "<think>\n...\n</think>\n<answer>\n\\boxed{\\frac{1}{2}}\n</answer>"
)

TEMPLATES: dict[str, PromptTemplate] = {
    "think": PromptTemplate(system=THINK_SYSTEM, tags=("think", "answer")),
    "reasoning": PromptTemplate(system=REASONING_SYSTEM, tags=("reasoning", "answer")),
    "chinese": PromptTemplate(system=CHINESE_SYSTEM, tags=("think", "answer")),
    "math": PromptTemplate(system=MATH_SYSTEM, tags=("think", "answer")),  # LaTeX answers, data/math_answer.py
}


def custom_template(name: str, system: str | None = None, tags: list[str] | None = None,
                    user: str = "{question}", enable_thinking: bool | None = None) -> PromptTemplate:
    """Template `name` with the config's own system prompt, tags, user turn and thinking switch."""
    base = get_template(name)
    return PromptTemplate(system=base.system if system is None else system,
                          tags=base.tags if tags is None else (tags[0], tags[1]), user=user,
                          enable_thinking=enable_thinking)


def get_template(template: str | PromptTemplate) -> PromptTemplate:
    """Look a template up by name (a PromptTemplate is itself), with a one-line error listing valid names."""
    if isinstance(template, PromptTemplate):
        return template
    if template not in TEMPLATES:
        raise ValueError(f"unknown prompt template {template!r}: choose one of {', '.join(TEMPLATES)}")
    return TEMPLATES[template]


def template_tags(template: str | PromptTemplate) -> tuple[str, str]:
    """The (reasoning, answer) tag names the rewards must look for with `template`."""
    return get_template(template).tags


def build_messages(question: str, template: str | PromptTemplate = "think") -> list[dict]:
    """Turn a question into [system, user] chat messages for `template` (no system message when its
    system prompt is empty)."""
    t = get_template(template)
    user = {"role": "user", "content": t.user.replace("{question}", question)}  # not str.format: braces in
    return [{"role": "system", "content": t.system}, user] if t.system else [user]  # questions stay as written
