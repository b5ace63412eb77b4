"""The offline tiny recipe, shortened (`scripts/tiny_recipe.py --quick`, ~60-130 s on one CPU core).

Tokenizer -> random 0.26M-parameter Qwen2 -> SFT warm start (stopped at ~30% greedy accuracy) ->
80 GRPO steps of 12 questions x 8 samples through the real train.py -> held-out evaluation before
and after. The main assertion is on the held-out mean@8 accuracy (8 samples per question at the
rollout temperature, seeded): the expected reward of the sampling policy on questions never
trained on, which is what GRPO maximises, measured on 1600 completions. Greedy accuracy (200
answers, each an argmax that flips or not) is noisier, so it is only asked not to fall by more
than a few answers.

Margin: seeds 0-5 of this quick recipe (2026-11-23, AMD EPYC, torch 2.13 CPU; shared-prefix update)
gained +9.6 to +17.4 points of held-out sampled accuracy and +1.0 to +21.5 of greedy accuracy
(docs/tiny_recipe.md); the test asks for +5 sampled and greedy no more than 3 points lower, so it
holds with room on other CPUs, whose floating-point rounding sends the run down a different (but
equally seeded) path.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import tiny_recipe

ROOT = Path(__file__).resolve().parents[1]

MARGIN = 0.05  # held-out sampled accuracy GRPO must add over the SFT start (seeds 0-5 added 0.096-0.174)
GREEDY_SLACK = 0.03  # greedy accuracy may drop by 6 of 200 answers at most (seeds 0-5: +0.010 to +0.215)


def test_quick_recipe_raises_held_out_accuracy(tmp_path, capsys):
    out = tmp_path / "tiny"
    threads = torch.get_num_threads()
    try:
        results = tiny_recipe.main(["--quick", "--out", str(out), "--seed", "0", "--threads", "1", "--no-plot"])
    finally:
        torch.set_num_threads(threads)
    before, after = results["before"], results["after"]
    print(tiny_recipe.format_table(results))

    # GRPO learned: the policy's expected accuracy on unseen questions rose by a clear margin.
    assert after["sampled"]["accuracy"] >= before["sampled"]["accuracy"] + MARGIN, results
    # ... without breaking the format or the greedy answers it started from.
    assert after["format"] >= 0.9 and after["accuracy"] >= before["accuracy"] - GREEDY_SLACK, results

    # The recipe went through the real pipeline and left its artifacts where the README says.
    assert json.loads((out / "results.json").read_text())["gain_points"] == results["gain_points"]
    metrics = [json.loads(line) for line in (out / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert sum("reward" in m for m in metrics) == results["grpo_steps"] == 80
    assert (out / "grpo" / "checkpoints" / "step_000080" / "model" / "model.safetensors").is_file()
    assert before["questions"] == 200 and before["sampled"]["n"] == 200 * 8

    # A second call finds every stage done and only reprints the results.
    again = tiny_recipe.main(["--quick", "--out", str(out), "--seed", "0", "--threads", "1", "--no-plot"])
    torch.set_num_threads(threads)
    assert again["before"] == before and again["after"] == after and again["seconds"] == results["seconds"]
    assert "skipping" in capsys.readouterr().out


def test_recipe_refuses_to_mix_runs(tmp_path):
    out = tmp_path / "tiny"
    out.mkdir()
    (out / "recipe.json").write_text(json.dumps({"seed": 1, "quick": True, "gsm8k_file": "x"}) + "\n")
    with pytest.raises(ValueError, match="other settings.*--fresh"):
        tiny_recipe.main(["--quick", "--out", str(out), "--seed", "0"])


def test_quick_and_full_recipes_default_to_separate_directories():
    assert tiny_recipe.default_out(quick=True) != tiny_recipe.default_out(quick=False) == "runs/tiny"
    assert "runs/tiny/sft" in (ROOT / "configs" / "tiny.yaml").read_text()  # what the full recipe writes


def test_a_new_prompt_template_leaves_the_recipes_tokenizer_alone(monkeypatch):
    """The recipe's published numbers hang on its tokenizer: adding a template (as `math` was) must
    not change the texts the BPE learns from (it did once: every number of the recipe moved)."""
    from data import prompts

    gsm8k = Path(__file__).parent / "fixtures" / "gsm8k" / "train_sample.jsonl"
    before = tiny_recipe.tokenizer_corpus(0, gsm8k)
    monkeypatch.setitem(prompts.TEMPLATES, "another", prompts.PromptTemplate("A new system prompt.", ("a", "b")))
    assert tiny_recipe.tokenizer_corpus(0, gsm8k) == before
