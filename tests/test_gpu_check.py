"""scripts/gpu_check.py --smoke: every GPU check runs end to end on the CPU with tiny shapes, so the
script and the benchmarks it drives cannot rot while no GPU is around."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from gpu_check import STEPS, main

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_runs_every_step_and_writes_the_summary(tmp_path):
    out = tmp_path / "results"
    # Two steps at a time: this machine has two cores (OMP_NUM_THREADS=1 comes from conftest).
    res = subprocess.run([sys.executable, "scripts/gpu_check.py", "--smoke", "--jobs", "2", "--quiet", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["steps"]) == sorted(STEPS)
    for name, step in summary["steps"].items():
        assert step["status"] == "pass" and step["machine"]["mode"] == "smoke", (name, step["rows"])
        assert step["rows"] and all(r["result"] in ("PASS", "INFO") for r in step["rows"]), (name, step["rows"])
        assert (out / "logs" / f"{name}.log").is_file()
    results = {k: v for step in summary["steps"].values() for k, v in step["results"].items()}
    assert results["fit-24gb-offload-on"]["status"] == "ok" and results["fit-24gb-offload-off"]["status"] == "oom"
    assert results["sampler"]["speedup_wall"] > 0 and "hidden_share" in results["optimizer"]
    # The GPU run's sampler paths: the compiled decode against transformers, and the step against its bound.
    assert results["sampler"]["speedup_compiled_wall"] > 0 and set(results["sampler"]["step_over_bound"]) == {"4", "8"}
    table = (out / "summary.md").read_text()
    for name in STEPS:
        assert f"| {name} | " in table
    assert "| cuda-tests | " in res.stdout  # the table is printed too
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == sorted(
        ["summary.json", "summary.md", *(f"{n}.log" for n in STEPS)])

    # Runs of single steps (--only) add to a summary; --merge combines directories.
    merged = tmp_path / "merged"
    assert main(["--merge", str(out), "--out", str(merged)]) == 0
    assert json.loads((merged / "summary.json").read_text())["steps"].keys() == summary["steps"].keys()


def test_without_a_gpu_the_full_check_refuses_in_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        return  # on a GPU machine the check would run for real
    res = subprocess.run([sys.executable, "scripts/gpu_check.py", "--out", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "--smoke" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "summary.json").exists()


def test_a_step_estimated_past_the_budget_is_not_run_and_is_no_failure(tmp_path):
    out = tmp_path / "budget"
    code = main(["--smoke", "--quiet", "--only", "optimizer", "--only", "fit-7b", "--estimate", "fit-7b=100000",
                 "--budget", "300", "--out", str(out)])
    assert code == 0
    steps = json.loads((out / "summary.json").read_text())["steps"]
    assert steps["optimizer"]["status"] == "pass"
    assert steps["fit-7b"]["status"] == "not run: budget" and steps["fit-7b"]["rows"][0]["result"] == "SKIP"
    assert "not run: budget" in (out / "summary.md").read_text()
