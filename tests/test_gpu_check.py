"""scripts/gpu_check.py --smoke: every GPU check runs end to end on the CPU with tiny shapes, so the
script and the benchmarks it drives cannot rot while no GPU is around."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from gpu_check import (COMMAND_S, DEFAULT_BUDGET, LEASE_S, LIMITS, MACHINE_START_S, PARTS, STEPS, child_limits, children,
                       main, part_seconds, step_limit)

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
    # The compiled decode's smoke: rows stopped as forced, no recompile in the second rollout.
    assert results["decode-smoke"]["lengths_ok"] and results["decode-smoke"]["compiles_second"] == 0
    assert results["sampler"]["speedup_wall"] > 0 and "hidden_share" in results["optimizer"]
    # The 4-bit base's cost: both paths timed, the 4-bit weights smaller.
    nf4 = results["nf4"]["models"]["tiny"]
    assert nf4["decode_ratio"] > 0 and nf4["update_ratio"] > 0 and nf4["weight_bytes"]["nf4"] < nf4["weight_bytes"]["plain"]
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


def test_a_step_whose_limit_does_not_fit_what_is_left_is_not_run_and_is_no_failure(tmp_path):
    """A step starts only if its whole limit fits what is left of the budget (a started step is never
    cut short): here the budget holds optimizer's limit but not fit-7b's after it."""
    out = tmp_path / "budget"
    code = main(["--smoke", "--quiet", "--only", "optimizer", "--only", "fit-7b", "--limit", "optimizer=200",
                 "--limit", "fit-7b=100000", "--budget", "300", "--out", str(out)])
    assert code == 0
    steps = json.loads((out / "summary.json").read_text())["steps"]
    assert steps["optimizer"]["status"] == "pass" and steps["optimizer"]["limit"] == 205
    assert steps["fit-7b"]["status"] == "not run: budget" and steps["fit-7b"]["rows"][0]["result"] == "SKIP"
    assert "limit 100005 s" in steps["fit-7b"]["rows"][0]["figure"]
    assert "not run: budget" in (out / "summary.md").read_text()


def test_every_part_fits_one_command_and_one_lease(capsys):
    """The GPU check's parts are each one command of a 15-minute lease: the sum of its steps' whole
    limits (and this script's own start and end) within the default budget, the budget within one
    command, and with the machine's start within the lease. Every step is in exactly one part."""
    limits = child_limits()
    assert len(STEPS) == len(set(STEPS)) and {k for name in STEPS for k in children(name)} == set(LIMITS)
    assert DEFAULT_BUDGET + 30 <= COMMAND_S  # room for python's start and the results' transfer
    for part in PARTS:
        total = part_seconds(part, limits)
        assert total <= DEFAULT_BUDGET and total + MACHINE_START_S <= LEASE_S, (part, total)
    # The first part holds the compiled-decode smoke first, then correctness, the 24 GB fit and torchrun.
    assert PARTS[0][0] == "decode-smoke" and {"cuda-tests", "fit-24gb", "torchrun", "torchrun-lora"} <= set(PARTS[0])
    assert main(["--plan"]) == 0
    plan = capsys.readouterr().out
    for number, part in enumerate(PARTS, 1):
        assert f"part {number}:" in plan
        for name in part:
            assert f"  {name:14s} {step_limit(name, limits):8.0f}" in plan
    assert plan.count("fits one command of 570 s") == len(PARTS) and "does NOT fit" not in plan
