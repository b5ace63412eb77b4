"""GSM8K loading on real rows (tests/fixtures/gsm8k, copied from openai/grade-school-math, MIT)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from data.gsm8k import Problem, load_gsm8k, parse_line, split_solution, strip_calculator_annotations

FIXTURES = Path(__file__).parent / "fixtures" / "gsm8k"


def raw_rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / name).read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.mark.parametrize("name", ["train_sample.jsonl", "test_sample.jsonl"])
def test_fixture_rows_load_with_gold_after_hashes(name):
    rows = raw_rows(name)
    problems = load_gsm8k(FIXTURES / name)
    assert len(problems) == len(rows) >= 40
    for row, problem in zip(rows, problems):
        assert isinstance(problem, Problem)
        assert problem.question == row["question"].strip()
        gold_text = row["answer"].split("####")[-1]
        assert problem.answer == gold_text.strip().replace(",", "")
        assert "####" not in problem.solution
        assert row["answer"].startswith(problem.solution)
        assert float(problem.answer) == float(gold_text.replace(",", ""))


def test_fixture_covers_commas_and_negatives():
    rows = raw_rows("train_sample.jsonl") + raw_rows("test_sample.jsonl")
    golds = [r["answer"].split("####")[-1].strip() for r in rows]
    assert any("," in g for g in golds) and any(g.startswith("-") for g in golds)
    problems = load_gsm8k(FIXTURES / "train_sample.jsonl") + load_gsm8k(FIXTURES / "test_sample.jsonl")
    assert all("," not in p.answer for p in problems)
    assert any(p.answer.startswith("-") for p in problems)


def test_license_is_shipped_with_the_fixture():
    assert "MIT License" in (FIXTURES / "LICENSE").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "bad_line, cause",
    [
        ('{"question": "q", "answer": "#### 3"', "not valid JSON"),
        ('{"question": "q", "answer": "#### 3}', "3:29: not valid JSON (Unterminated string); fix"),  # no dangling "at"
        ('["question", "answer"]', "JSON object"),
        ('{"answer": "#### 3"}', "'question'"),
        ('{"question": "q"}', "'answer'"),
        ('{"question": "q", "answer": 3}', "'answer'"),
        ('{"question": "q", "answer": "so the answer is 3"}', "####"),
        ('{"question": "q", "answer": "#### three"}', "not a number"),
    ],
)
def test_malformed_row_gives_one_line_error_with_file_and_line(tmp_path, bad_line, cause):
    good = json.dumps({"question": "What is 1+1?", "answer": "1+1=2\n#### 2"})
    path = tmp_path / "train.jsonl"
    path.write_text(f"{good}\n{good}\n{bad_line}\n", encoding="utf-8")
    with pytest.raises(ValueError) as info:
        load_gsm8k(path)
    message = str(info.value)
    assert message.startswith(f"{path}:3:")
    assert cause in message
    assert "\n" not in message


def test_blank_lines_are_skipped_and_empty_file_is_an_error(tmp_path):
    row = json.dumps({"question": "q", "answer": "#### 1,234"})
    path = tmp_path / "a.jsonl"
    path.write_text(f"\n{row}\n\n{row}\n", encoding="utf-8")
    assert [p.answer for p in load_gsm8k(path)] == ["1234", "1234"]
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no problems"):
        load_gsm8k(path)


def test_missing_file_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"download\.py --dataset gsm8k \("):
        load_gsm8k(tmp_path / "gsm8k" / "train.jsonl")
    with pytest.raises(FileNotFoundError, match=r"--dataset gsm8k_zh"):
        load_gsm8k(tmp_path / "gsm8k_zh" / "train.jsonl")


def test_chinese_row_in_the_same_format_loads(tmp_path):
    row = {
        "question": "娜塔莉亚四月卖了48个夹子，五月卖了一半。她一共卖了多少个？",
        "answer": "五月卖了 48/2 = 24 个。\n一共 48+24 = 72 个。\n#### 72",
    }
    problem = parse_line(json.dumps(row, ensure_ascii=False))
    assert problem.answer == "72" and problem.question == row["question"]
    assert problem.solution.endswith("72 个。")


def test_split_solution_uses_the_last_separator_and_strips_commas():
    solution, gold = split_solution("a #### b\n####  -1,000 ")
    assert (solution, gold) == ("a #### b", "-1000")


def test_strip_calculator_annotations_keeps_the_prose():
    problem = load_gsm8k(FIXTURES / "train_sample.jsonl")[0]
    assert "<<" in problem.solution
    cleaned = strip_calculator_annotations(problem.solution)
    assert "<<" not in cleaned and ">>" not in cleaned
    # The visible result after each annotation survives: "<<48/2=24>>24" -> "24".
    for result in re.findall(r">>([^\s.,]+)", problem.solution):
        assert result in cleaned
    assert strip_calculator_annotations("48/2 = <<48/2=24>>24 clips") == "48/2 = 24 clips"


def test_json_number_answers_read_as_written():
    from data.gsm8k import load_problems

    import tempfile
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "n.jsonl"
        answers = [42, 42.0, 1e16, 0.5, -3.25, 1.5e-7]
        path.write_text("".join(json.dumps({"question": "q", "answer": a}) + "\n" for a in answers))
        got = [p.answer for p in load_problems(path)]
    assert got == ["42", "42", "10000000000000000", "0.5", "-3.25", "0.00000015"]
