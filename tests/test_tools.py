"""Tool calls in rollouts: the calculator's parser, the tool-call protocol, a scripted round trip
through the real chat template and the KV cache, and the trainer's treatment of tool tokens."""

from __future__ import annotations

import json
import time

import pytest
import torch

from data.calculator import MAX_CHARS, calculate
from grpo.rollout import encode_prompt, final_turn, sample_groups, score_groups
from grpo.tools import CALCULATOR, ToolRunner, call_text, continuation, run_tool_call
from data.gsm8k import Problem
from data.prompts import build_messages
from data.rewards import Rewards
from qwen2 import GREEDY, generate, load_model

# --- the calculator ----------------------------------------------------------------------------------


@pytest.mark.parametrize("expression, value", [
    ("(48 / 2) * 3", "72"), ("12.5% * 80", "10"), ("2 ** 10", "1024"), ("-2 ** 2", "-4"), ("2 ** -2", "0.25"),
    ("1,200 + 3.5", "1203.5"), ("7 / 3", "2.333333"), ("0.1 + 0.2", "0.3"), ("((1 + 2) * (3 - 4))", "-3"),
    ("-1 / 3", "-0.333333"), ("2 / 3", "0.666667"), ("-1 / 10000000", "0"), ("12345678901234567.25", "12345678901234567.25"),
])
def test_calculator_values(expression, value):
    assert calculate(expression) == value


@pytest.mark.parametrize("expression, error", [
    ("1 / 0", "division by zero"), ("0 ** -1", "division by zero"), ("x + 1", "unexpected 'x'"),
    ("abs(-2)", "unexpected 'a'"), ("(2).real", "unexpected 'r'"), ("__import__('os')", "unexpected '_'"),
    ("9 ** 99", "exponent is larger"), ("10 ** 40", "more than 30 digits"), ("2 ** 0.5", "whole-number exponents"),
    ("(1 + 2", "ends too early"), ("1 +", "ends too early"), ("3.5.2", "is not a number"), ("", "is empty"),
    ("(" * 40 + "1" + ")" * 40, "nested deeper"), ("1 2", "unexpected '2'"),
    ("²", "unexpected '²'"), ("①+1", "unexpected '①'"), ("٣ + 1", "unexpected '٣'"),  # digits, but not ASCII ones
])
def test_calculator_refuses_with_an_error_text_never_an_exception(expression, error):
    answer = calculate(expression)
    assert answer.startswith("error: ") and error in answer, answer


def test_calculator_refuses_a_megabyte_in_linear_time():
    for text in ("1+" * 500_000 + "1", "(" * 1_000_000, "9" * 1_000_000, "x" * 1_000_000):
        t0 = time.perf_counter()
        assert calculate(text) == f"error: the expression is longer than {MAX_CHARS} characters"
        assert time.perf_counter() - t0 < 0.5
    # Just under the limit, the worst cases still answer at once (no exponential backtracking or blowup).
    for text in ("9" * 150 + "*" + "9" * 40, "-" * 31 + "1", "2**60" + "*2**60" * 20):
        t0 = time.perf_counter()
        assert calculate(text[:MAX_CHARS]) and time.perf_counter() - t0 < 0.5


# --- the tool-call protocol --------------------------------------------------------------------------


def call(expression, name="calculator") -> str:
    return f'<think>x</think>\n<tool_call>\n{json.dumps({"name": name, "arguments": {"expression": expression}})}\n</tool_call>'


def test_tool_calls_are_parsed_and_bad_ones_answered():
    assert run_tool_call(call("6 * 7")) == "42"
    assert run_tool_call("<think>6 * 7 = 42</think><answer>42</answer>") is None  # no call: a final answer
    assert run_tool_call(call("6 * 7") + " and then <answer>42</answer>") is None  # the turn does not end with it
    assert run_tool_call(call("6 * 7", name="python")).startswith("error: unknown tool")
    assert run_tool_call("<tool_call>{not json}</tool_call>").startswith("error: the tool call is not valid JSON")
    assert run_tool_call('<tool_call>{"name": "calculator", "arguments": 5}</tool_call>').startswith("error: calculator takes")
    assert run_tool_call(call("1/0")) == "error: division by zero"
    assert run_tool_call(call("1 + 1") + "\n" + call("2 + 2")).startswith("error: one tool call per turn")
    deep = '<tool_call>{"name": ' + "[" * 1950 + "</tool_call>"  # json.loads raises RecursionError
    assert len(deep) < 2000 and run_tool_call(deep).startswith("error: the tool call is not valid JSON")


# --- a scripted round trip ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def policy(tiny_model):
    model = load_model(tiny_model)
    from qwen2 import Tokenizer

    return model, Tokenizer.from_pretrained(tiny_model)


def scripted(tokenizer, script: list[int]):
    """A logits hook that makes every row emit `script` token by token (the column is the step)."""
    def hook(logits, rows, t):
        logits = torch.full_like(logits, -1e9)
        if t < len(script):
            logits[:, script[t]] = 0.0
        else:
            logits[:, tokenizer.eos_token_id] = 0.0
        return logits
    return hook


@pytest.mark.parametrize("compact_every", [1, 3])
def test_a_tool_round_trip_is_the_templates_own_token_sequence(policy, compact_every):
    """Turn 1 calls the calculator; its answer and the next assistant header come from the chat
    template; turn 2 answers. The completion is exactly what the template renders for the whole
    conversation, and the tool's tokens are marked as context. With compact_every 3 the stop is
    still seen at once (stops are looked at every token when rows can go on): no token is wasted."""
    model, tok = policy
    question = "Tom has 6 boxes with 7 pens in each box. How many pens does Tom have?"
    messages = build_messages(question, "think")
    turn1 = tok.encode(call("6 * 7")) + [tok.eos_token_id]
    turn2 = tok.encode("<think>6 * 7 = 42</think> <answer>42</answer>") + [tok.eos_token_id]
    problems = [Problem(question, "42", "")]
    runner = ToolRunner(tok, [messages], [CALCULATOR], max_calls=2)
    prompt = encode_prompt(tok, question, "think", ["calculator"])
    script = turn1 + turn2  # by output column: turn 2 starts right after turn 1's stop
    out = generate(model, [prompt], 200, GREEDY, stop_token_ids=tok.stop_token_ids, compact_every=compact_every,
                   on_stop=runner.on_stop, room=runner.token_budget(), logits_hook=scripted(tok, script),
                   return_entropies=True)
    assert runner.calls == {0: 1} and out.finished == [True]
    rendered = tok.apply_chat_template(messages + [{"role": "assistant", "content": tok.decode(turn1[:-1])},
                                                   {"role": "tool", "content": "42"},
                                                   {"role": "assistant", "content": tok.decode(turn2[:-1])}],
                                       add_generation_prompt=False, tools=[CALCULATOR])
    expected = tok.encode(rendered)[len(prompt):]
    assert out.tokens[0] == expected[:len(out.tokens[0])] and expected[len(out.tokens[0]):] == tok.encode("\n")
    pushed = tok.encode(continuation(tok, messages, "42", [CALCULATOR]))
    assert out.action_mask[0] == [1] * len(turn1) + [0] * len(pushed) + [1] * len(turn2)
    assert len(out.entropies[0]) == len(out.tokens[0])
    # The reward reads the final turn; the episode keeps the whole exchange.
    (episode,) = score_groups(tok, problems, [prompt], out, template="think",
                              rewards=Rewards({"correctness": 1.0}), runner=runner)
    assert episode.score.correct and episode.tool_calls == 1 and "<tool_response>" in episode.text
    assert final_turn(episode.completion_ids, episode.action_mask) == turn2


@pytest.mark.parametrize("compact_every", [1, 4])
def test_after_a_tool_answer_the_cache_continues_as_a_fresh_prompt_would(policy, compact_every):
    """The row that called decodes on (greedily, unforced) exactly as the model does from a prompt
    holding the whole exchange so far: the pushed tokens and the positions are right."""
    model, tok = policy
    question = "How many pens?"
    messages = build_messages(question, "think")
    turn1 = tok.encode(call("3 + 4")) + [tok.eos_token_id]
    prompt = encode_prompt(tok, question, "think", ["calculator"])
    runner = ToolRunner(tok, [messages] * 2, [CALCULATOR], max_calls=1)

    def hook(logits, rows, t):  # row 0 calls the tool; row 1 (another prompt length) decodes freely
        if t < len(turn1):
            logits = logits.clone()
            forced = (rows == 0)
            logits[forced] = -1e9
            logits[forced, turn1[t]] = 0.0
        return logits

    other = encode_prompt(tok, "A longer question about pens and boxes?", "think", ["calculator"])
    out = generate(model, [prompt, other], 120, GREEDY, stop_token_ids=tok.stop_token_ids, compact_every=compact_every,
                   on_stop=runner.on_stop, room=runner.token_budget(), logits_hook=hook)
    assert runner.calls == {0: 1}
    pushed = tok.encode(continuation(tok, messages, "7", [CALCULATOR]))
    after = out.tokens[0][len(turn1) + len(pushed):]
    fresh = generate(model, [prompt + turn1 + pushed], len(after), GREEDY, stop_token_ids=tok.stop_token_ids)
    assert after and after == fresh.tokens[0]
    alone = generate(model, [other], 120, GREEDY, stop_token_ids=tok.stop_token_ids, compact_every=compact_every)
    assert out.tokens[1] == alone.tokens[0]  # the other row did not notice


def test_a_call_beyond_max_tool_calls_ends_the_episode(policy):
    model, tok = policy
    messages = build_messages("q", "think")
    turn = tok.encode(call("1 + 1")) + [tok.eos_token_id]
    runner = ToolRunner(tok, [messages], [CALCULATOR], max_calls=1)
    pushed = tok.encode(continuation(tok, messages, "2", [CALCULATOR]))
    script = turn + turn  # it calls again after the answer
    out = generate(model, [encode_prompt(tok, "q", "think", ["calculator"])], 200, GREEDY,
                   stop_token_ids=tok.stop_token_ids, compact_every=1, on_stop=runner.on_stop,
                   room=runner.token_budget(), logits_hook=scripted(tok, script))
    assert runner.calls == {0: 1} and out.finished == [True]
    assert out.tokens[0] == turn + pushed + turn


def test_tools_off_the_sampler_is_unchanged(policy):
    model, tok = policy
    prompt = encode_prompt(tok, "How many pens?", "think")
    rows, out, runner = sample_groups(model, tok, [Problem("How many pens?", "1", "")], 3, max_new_tokens=12,
                                      template="think", sampling=GREEDY)
    assert runner is None and out.action_mask is None and rows == [prompt] * 3
    assert out.tokens == generate(model, [prompt] * 3, 12, GREEDY, stop_token_ids=tok.stop_token_ids,
                                  pad_token_id=tok.pad_token_id).tokens


def test_training_with_the_calculator_runs_end_to_end(tmp_path, tiny_model):
    import train
    from tiny_run import metrics, write_config

    cfg = write_config(tmp_path, tiny_model, rollout={"tools": ["calculator"], "max_tool_calls": 2},
                       train={"steps": 2, "eval_every": 2})
    assert train.main(["--config", str(cfg)]) == 0
    rows = [r for r in metrics(tmp_path / "run") if "reward" in r]
    assert len(rows) == 2 and all("tool_calls" in r and "tool_errors" in r for r in rows)
    evals = [r for r in metrics(tmp_path / "run") if "eval_accuracy" in r]
    assert [r["step"] for r in evals] == [0, 2] and all("eval_tool_calls" in r for r in evals)  # offered there too


def test_sft_examples_with_the_calculator_are_the_rollouts_tokens_and_train_the_model_turns_only(policy):
    """scripts/sft.py --tools: the example is the token sequence a rollout produces when the model
    writes the call and then the answer (the tool's part rendered by the same template code), and
    its loss is the mean negative log-likelihood of the model's tokens only."""
    import sft
    from grpo.logprobs import token_logprobs
    from grpo.tools import call_text
    from qwen2 import pad_batch

    model, tok = policy
    problem = Problem("Tom has 6 boxes with 7 pens in each box. How many pens does Tom have?", "42", "6 * 7 = 42")
    ((prompt, completion, action),), dropped = sft.encode_examples(tok, [problem], "think", 4096, ["calculator"])
    assert dropped == 0 and prompt == encode_prompt(tok, problem.question, "think", ["calculator"])
    turn1 = tok.encode(call_text("calculator", {"expression": "6 * 7"})) + [tok.eos_token_id]
    pushed = tok.encode(continuation(tok, build_messages(problem.question, "think"), "42", [CALCULATOR]))
    turn2 = tok.encode(sft.sft_target(problem)) + [tok.eos_token_id]
    assert completion == turn1 + pushed + turn2
    assert action == [1] * len(turn1) + [0] * len(pushed) + [1] * len(turn2)
    ((_, plain, plain_action),), _ = sft.encode_examples(tok, [problem], "think", 4096)
    assert plain == turn2 and plain_action == [1] * len(turn2)

    loss, tokens = sft.sft_step(model, [(prompt, completion, action)], tok.pad_token_id, 1, torch.device("cpu"))
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        ids, attn = pad_batch([prompt], tok.pad_token_id, [completion])
        logp = token_logprobs(model, ids, attn, len(prompt))[0]
    assert tokens == sum(action)
    assert loss == pytest.approx(-(logp * torch.tensor(action)).sum().item() / sum(action), rel=1e-5)


def test_an_answered_turn_stays_within_its_token_bound(policy):
    # A long unknown-tool name of rare characters is several tokens a character: the answer is made
    # ASCII and cut until its turn fits the bound that the cache room and the planner count.
    from grpo.tools import TOOL_TURN_TOKENS

    _, tok = policy
    runner = ToolRunner(tok, [build_messages("q", "think")], [CALCULATOR], max_calls=2)
    for name in ("ꙮ" * 300, "x" * 300):
        turn = tok.encode(call("1", name=name)) + [tok.eos_token_id]
        more = runner.on_stop(0, turn)
        assert more and len(more) <= TOOL_TURN_TOKENS and tok.decode(more).isascii()
    assert runner.token_budget() == 2 * TOOL_TURN_TOKENS and runner.errors == {0: 2}


def test_a_call_that_ends_without_the_turn_end_token_is_not_run(policy):
    _, tok = policy
    runner = ToolRunner(tok, [build_messages("q", "think")], [CALCULATOR], max_calls=2)
    eot = tok.token_to_id("<|endoftext|>")
    assert eot in tok.stop_token_ids and eot != tok.eos_token_id
    assert runner.on_stop(0, tok.encode(call("3 + 4")) + [eot]) is None and runner.calls == {}


@pytest.mark.parametrize("compact_every", [1, 8])
def test_the_model_gets_its_whole_budget_and_a_call_in_its_last_token_ends_unfinished(policy, compact_every):
    model, tok = policy
    messages = build_messages("q", "think")
    prompt = encode_prompt(tok, "q", "think", ["calculator"])
    turn = tok.encode(call("3 + 4")) + [tok.eos_token_id]
    filler = tok.encode("a")
    pushed = tok.encode(continuation(tok, messages, "7", [CALCULATOR]))
    kw = dict(stop_token_ids=tok.stop_token_ids, compact_every=compact_every)
    # A call, then text until the budget ends: every one of the M columns is a model token.
    M = len(turn) + 13
    runner = ToolRunner(tok, [messages], [CALCULATOR], max_calls=1)
    out = generate(model, [prompt], M, GREEDY, on_stop=runner.on_stop, room=runner.token_budget(),
                   logits_hook=scripted(tok, turn + filler * 20), **kw)
    assert runner.calls == {0: 1} and out.finished == [False]
    assert sum(out.action_mask[0]) == M and out.tokens[0][:len(turn) + len(pushed)] == turn + pushed
    # A call in the last column is answered, but no budget is left to use it: unfinished (truncated).
    runner = ToolRunner(tok, [messages], [CALCULATOR], max_calls=1)
    out = generate(model, [prompt], len(turn), GREEDY, on_stop=runner.on_stop, room=runner.token_budget(),
                   logits_hook=scripted(tok, turn), **kw)
    assert runner.calls == {0: 1} and out.finished == [False] and out.tokens[0] == turn + pushed


def test_many_rows_calling_at_different_steps_fit_the_cache(policy):
    # Every push moves the one shared write position: the cache is packed when full, so rows x calls
    # pushes fit in the room kept for one row's calls.
    model, tok = policy
    messages = build_messages("q", "think")
    prompt = encode_prompt(tok, "q", "think", ["calculator"])
    turn = tok.encode(call_text("calculator", {"expression": "3 + 4"})) + [tok.eos_token_id]
    filler = tok.encode("a")[0]
    N, M = 4, 120

    def hook(logits, rows, t):
        logits = torch.full_like(logits, -1e9)
        for b, r in enumerate(rows.tolist()):
            s = t - r  # row r calls from column r on
            logits[b, turn[s] if 0 <= s < len(turn) else filler] = 0.0
        return logits

    runner = ToolRunner(tok, [messages] * N, [CALCULATOR], max_calls=1)
    out = generate(model, [prompt] * N, M, GREEDY, stop_token_ids=tok.stop_token_ids, compact_every=1,
                   on_stop=runner.on_stop, room=runner.token_budget(), logits_hook=hook)
    assert runner.calls == {r: 1 for r in range(N)} and all(sum(a) == M for a in out.action_mask)


def test_the_model_positions_count_the_room_for_pushed_turns(policy):
    from qwen2.errors import InputError

    model, tok = policy
    limit = model.config.max_position_embeddings
    with pytest.raises(InputError, match="for pushed turns exceeds the model's"):
        generate(model, [[1] * 10], limit - 20, GREEDY, on_stop=lambda r, t: None, room=30)
