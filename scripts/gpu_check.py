"""GPU truth: one command runs every GPU check of this project and leaves the numbers behind.

    PYTHONPATH=. python3 scripts/gpu_check.py --out gpu_results                  # every step that fits 480 s
    PYTHONPATH=. python3 scripts/gpu_check.py --budget 900 --out gpu_results     # more time: more steps
    PYTHONPATH=. python3 scripts/gpu_check.py --only fit-24gb --out gpu_results  # one step
    python scripts/gpu_check.py --smoke --out /tmp/gpu_smoke                    # no GPU: tiny shapes on the CPU
    python scripts/gpu_check.py --merge DIR1 DIR2 ... --out gpu_results         # one summary of several runs

A borrowed GPU comes with ~15 minutes in all, its start included, and one command may run 10: so the
steps run in order of importance within one time budget (`--budget`, default 480 s). Before each
step its estimate (ESTIMATES, an H100/H200-class card; `--estimate STEP=S` overrides one) is
compared with what is left: a step that cannot finish is reported as "not run: budget", not as a
failure, and every child's time limit is cut to the budget's end. The summary is written after
every step, so a run killed at its limit still leaves all it measured.

Steps (each a subprocess with a time limit, so an out-of-memory error or a crash in one cannot
take the others down, and a memory cap holds for one process only), most important first:
  cuda-tests  pytest tests/test_gpu.py tests/test_optim.py (results read from pytest's --junitxml):
              logits and greedy sampling against transformers on the GPU, the CUDA attention
              branches, the pipelined offload against the synchronous CPU path (exact resume),
              train.py steps with offload on and off. Target: all pass, none skipped.
  fit-24gb    scripts/bench_step.py: Qwen2.5-3B shape, random bf16 weights, config.yaml's batch
              (16 x 8, 512 new tokens, activation checkpointing), the process capped to 24 GB.
              Offload on: two full steps complete; peak memory as planned (--dry-run), traced
              (--dry-run --trace) and measured (max_memory_allocated, reserved), measured within 15%
              of the plan. Offload off: fails with train.py's one-line out-of-memory message pointing
              to optim.offload=true (exit code 3, no CUDA traceback).
  sampler     scripts/bench_sampler.py --compile --bound-rows 64,256: Qwen2.5-1.5B shape, bf16, 8
              prompts x 32 samples, ragged: eager, compiled (CUDA graphs) and transformers.generate
              on the same batch. Targets: >= 3x transformers; a compiled decode step within 2x of its
              memory-bandwidth bound at 64 and 256 rows.
  optimizer   scripts/bench_optim.py --device cuda: the offloaded step, pipelined vs synchronous
              vs torch AdamW on the card. Target: pipelined faster than synchronous.
  lora-7b     scripts/bench_step.py: Qwen2.5-7B shape with LoRA (rank 16) under a 24 GB cap, with
              README's smaller batch for it (8 x 8, 4096-token micro-batches). Target: completes.
  torchrun    torchrun --nproc_per_node=<every GPU> scripts/bench_step.py: Qwen2.5-0.5B shape,
              NCCL, FSDP2, 2 full steps. Target: completes (with one GPU: the 1-rank smoke).
  fit-7b      scripts/bench_step.py on the largest Qwen2.5 shape whose plan fits an 80 GB card
              and this machine's RAM with offload. Information.

Everything runs from the repository with what a bare GPU machine has (torch, transformers,
tokenizers, safetensors, pytest, pyyaml, jinja2): random checkpoints are built in a temporary
directory (`--work-dir`), deleted after each step. `--out DIR` receives summary.json, summary.md
(the table printed at the end) and logs/<step>.log (the tail of each step's output); a run with
`--only` adds its steps to the summary already in DIR. Exit code 0 when no check failed.

`--smoke` runs every step on the CPU with tiny shapes in fp32, without speed targets (the
fit-24gb out-of-memory case is simulated with bench_step.py --fake-oom), so that this script and
the benchmarks it drives keep working on machines without a GPU; tests/test_gpu_check.py runs it,
and checks the budget: a step estimated past it is not run.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("grpo") is None:
    # The one script meant for machines where nothing is installed (a borrowed GPU box: no pip): run
    # from a plain checkout, it finds the packages next to it, as its children do (PYTHONPATH below).
    sys.path.insert(0, str(ROOT))

# Most important first: with a budget too small for all, the later ones are the ones not run.
STEPS = ["cuda-tests", "fit-24gb", "sampler", "optimizer", "lora-7b", "torchrun", "fit-7b"]
SMOKE_ENV = "GPU_CHECK_SMOKE"  # tests/test_gpu.py runs its tests on the CPU when this is 1

# Seconds each child may run on a GPU machine (x --timeout-scale), and never past the budget.
TIMEOUTS = {"cuda-tests": 150, "fit-24gb-on": 180, "fit-24gb-off": 90, "sampler": 240, "optimizer": 90,
            "lora-7b": 180, "torchrun": 120, "fit-7b": 240}
SMOKE_TIMEOUT = 240
# What each step is expected to take on an H100/H200-class card (seconds, random checkpoints built on
# the GPU and first compiles included), so that one command of --budget seconds (default 480: one
# borrowed 15-minute lease leaves ~8 minutes after the machine's start) runs the steps it can finish
# and reports the rest as "not run: budget". Guesses until a GPU run measures them: with these, the
# first five (460 s) fit the default budget, torchrun and fit-7b take a second command
# (`--only torchrun --only fit-7b`); `--estimate STEP=S` overrides one with what a run measured.
ESTIMATES = {"cuda-tests": 70, "fit-24gb": 140, "sampler": 120, "optimizer": 30, "lora-7b": 100, "torchrun": 45,
             "fit-7b": 100}
SMOKE_ESTIMATES = {"cuda-tests": 25, "fit-24gb": 25, "sampler": 60, "optimizer": 10, "lora-7b": 15, "torchrun": 20,
                   "fit-7b": 15}
# The smoke runs' tiny GRPO batch: 2 questions x 4 samples, 8 new tokens.
SMOKE_SETS = ["--set", "rollout.prompts_per_step=2", "--set", "rollout.group_size=4",
              "--set", "rollout.max_new_tokens=8", "--set", "grpo.micro_batch_size=4"]
FIT_7B_CANDIDATES = ["Qwen2.5-14B", "Qwen2.5-7B-Instruct", "Qwen2.5-3B-Instruct", "Qwen2.5-1.5B-Instruct",
                     "Qwen2.5-0.5B-Instruct"]
PLAN_TOLERANCE = 0.15


@dataclass
class Row:
    check: str
    result: str  # PASS, FAIL (a target missed or a crash), INFO (a figure without a target)
    figure: str
    target: str


@dataclass
class Child:
    rc: int | None
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool
    result: dict[str, Any] | None  # the child's `RESULT {json}` line

    def why(self) -> str:
        """A short reason why a child gave no result."""
        if self.timed_out:
            return f"timed out after {self.seconds:.0f} s"
        lines = [line for line in (self.stderr or self.stdout).splitlines() if line.strip()]
        return f"exit code {self.rc}: {lines[-1][:200] if lines else 'no output'}"


@dataclass
class Context:
    smoke: bool
    work: Path  # this step's scratch directory, deleted after it
    cache: Path  # random checkpoints, shared by the steps (lora-7b and fit-7b build the same 7B once)
    timeout_scale: float
    echo: bool
    deadline: float = float("inf")  # time.perf_counter() by which the whole run must end (--budget)
    log: list[str] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)

    def timeout(self, key: str) -> float:
        """A child's time limit: its own, cut to what is left of the budget."""
        own = (SMOKE_TIMEOUT if self.smoke else TIMEOUTS[key]) * self.timeout_scale
        return max(1.0, min(own, self.deadline - time.perf_counter()))

    def say(self, line: str) -> None:
        self.log.append(line)
        print(line, flush=True)


# -- children ---------------------------------------------------------------------------------------


def run_child(ctx: Context, name: str, args: list[str], timeout: float, env: dict[str, str] | None = None) -> Child:
    """Run `python args...` from the repository root, echo and keep its output, kill it (and its
    process group) after `timeout` seconds; parse its last `RESULT {json}` line."""
    cmd = [sys.executable, *args]
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), full_env.get("PYTHONPATH")) if p)
    if ctx.smoke:
        full_env.setdefault("OMP_NUM_THREADS", "1")  # tiny shapes: one thread is fastest
    full_env.update(env or {})
    ctx.say(f"$ {' '.join(args)}   [{name}, limit {timeout:.0f} s]")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            errors="replace", bufsize=1, start_new_session=True)
    out: list[str] = []
    err: list[str] = []

    def pump(stream, sink: list[str], tag: str) -> None:
        for line in stream:
            sink.append(line)
            if ctx.echo:
                print(f"  {tag}| {line}", end="", flush=True)

    threads = [threading.Thread(target=pump, args=(proc.stdout, out, "out"), daemon=True),
               threading.Thread(target=pump, args=(proc.stderr, err, "err"), daemon=True)]
    for t in threads:
        t.start()
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    for t in threads:
        t.join(timeout=10)
    seconds = time.perf_counter() - t0
    stdout, stderr = "".join(out), "".join(err)
    result = None
    for line in reversed(stdout.splitlines()):
        if line.startswith("RESULT "):
            try:
                result = json.loads(line[len("RESULT "):])
            except json.JSONDecodeError:
                pass
            break
    child = Child(None if timed_out else proc.returncode, stdout, stderr, seconds, timed_out, result)
    ctx.log += [f"--- {name}: exit {child.rc}, {seconds:.1f} s{' (timed out)' if timed_out else ''}",
                "--- stdout", stdout, "--- stderr", stderr]
    if result is not None:
        ctx.results[name] = result
    print(f"  [{name}: exit {child.rc}, {seconds:.1f} s{', timed out' if timed_out else ''}]", flush=True)
    return child


def gb(x: float | None) -> str:
    return "?" if x is None else f"{x:.1f} GB"


PHASES = ["generate", "reward", "logprobs", "update", "optimizer"]  # in the order a step runs them


def phases(step: dict[str, Any]) -> str:
    """'61.0 s (generate 20.3, reward 0.1, update 31.0, optimizer 9.6)' from a bench_step step record."""
    parts = [f"{k} {step[f'time_{k}']:.1f}" for k in PHASES if f"time_{k}" in step]
    return f"{step['time_step']:.1f} s ({', '.join(parts)})"


# -- the steps ----------------------------------------------------------------------------------------


def pytest_counts(junit: Path) -> tuple[dict[str, int], list[str]]:
    """Counts of passed/failed/errors/skipped tests from pytest's own --junitxml report, and the
    reasons tests were skipped."""
    import xml.etree.ElementTree as ET

    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    reasons = []
    if not junit.is_file():
        return counts, reasons
    for case in ET.parse(junit).getroot().iter("testcase"):
        kinds = [child.tag for child in case]
        if "failure" in kinds:
            counts["failed"] += 1
        elif "error" in kinds:
            counts["errors"] += 1
        elif "skipped" in kinds:
            counts["skipped"] += 1
            reasons.append(case.find("skipped").get("message", ""))
        else:
            counts["passed"] += 1
    return counts, reasons


def step_cuda_tests(ctx: Context) -> list[Row]:
    env = {SMOKE_ENV: "1"} if ctx.smoke else {}
    ctx.work.mkdir(parents=True, exist_ok=True)
    junit = ctx.work / "cuda-tests.xml"
    child = run_child(ctx, "cuda-tests", ["-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", f"--junitxml={junit}",
                                          "tests/test_gpu.py", "tests/test_optim.py"], ctx.timeout("cuda-tests"), env)
    counts, reasons = pytest_counts(junit)
    needs_cuda = sum("needs CUDA" in r for r in reasons)
    figure = ", ".join(f"{n} {what}" for what, n in counts.items() if n) or child.why()
    if needs_cuda:
        figure += f" ({needs_cuda} need CUDA)"
    figure += f" in {child.seconds:.0f} s"
    ran = sum(counts.values()) > 0
    if ctx.smoke:  # test_gpu.py runs on the CPU; test_optim.py's CUDA tests are skipped
        ok, target = child.rc == 0 and ran, "all pass (smoke: test_gpu.py on the CPU)"
    else:
        ok, target = child.rc == 0 and ran and not needs_cuda, "all pass, none skipped"
    return [Row("CUDA tests: tests/test_gpu.py + tests/test_optim.py", "PASS" if ok else "FAIL", figure, target)]


def bench_step_args(ctx: Context, model: str, *extra: str) -> list[str]:
    args = ["scripts/bench_step.py", "--model", model, "--cache-dir", str(ctx.cache)]
    if ctx.smoke:
        return args + ["--device", "cpu", "--dtype", "float32", *SMOKE_SETS, *extra]
    return args + ["--device", "cuda", "--dtype", "bfloat16", *extra]


def step_fit_24gb(ctx: Context) -> list[Row]:
    model = "tiny" if ctx.smoke else "Qwen2.5-3B-Instruct"
    name = "tiny" if ctx.smoke else "3B"
    cap = [] if ctx.smoke else ["--cap-gb", "24"]
    rows = []

    on = run_child(ctx, "fit-24gb-offload-on", bench_step_args(ctx, model, *cap, "--offload", "--steps", "2"),
                   ctx.timeout("fit-24gb-on"))
    r = on.result or {}
    where = "on the CPU (smoke)" if ctx.smoke else "under a 24 GB cap"
    if r.get("status") == "ok":
        last = r["steps"][-1]
        rows.append(Row(f"fit-24gb: {name} full step {where}, offload on", "PASS",
                        f"{len(r['steps'])} steps; steady step {phases(last)}; "
                        f"{last['generated_tokens']} tokens generated, {last['trained_episodes']}/{r['rows']} episodes trained",
                        "completes: rollout + update + optimizer"))
        if ctx.smoke:
            rows.append(Row("fit-24gb: peak GPU memory: plan, trace, measured", "INFO",
                            f"no GPU memory on a CPU (plan {gb(r['plan_gb'])}, trace {gb(r.get('trace_gb'))}; "
                            f"RSS {gb(r['ram_peak_gb'])})", f"within {PLAN_TOLERANCE:.0%} of plan (GPU only)"))
        else:
            ratio = r["plan_ratio"]
            rows.append(Row("fit-24gb: peak GPU memory: plan, trace, measured",
                            "PASS" if abs(ratio - 1) <= PLAN_TOLERANCE else "FAIL",
                            f"plan {gb(r['plan_gb'])}, trace {gb(r.get('trace_gb'))}, measured {gb(r['peak_gb'])} "
                            f"allocated ({gb(r['reserved_gb'])} reserved) = {ratio:.2f}x the plan; CPU RSS "
                            f"{gb(r['ram_peak_gb'])} vs {gb(r['plan_cpu_gb'])} planned",
                            f"within {PLAN_TOLERANCE:.0%} of plan"))
    else:
        why = f"out of memory: {r.get('message', '')[:160]}" if r.get("status") == "oom" else on.why()
        rows.append(Row(f"fit-24gb: {name} full step {where}, offload on", "FAIL", why,
                        "completes: rollout + update + optimizer"))

    # Offload off runs out of memory when the optimizer creates its 37 GB of state, after a rollout and an
    # update: a short eager rollout gets there in seconds (the message, not the rollout, is checked here).
    quick = ["--fake-oom"] if ctx.smoke else ["--set", "rollout.compile=false", "--set", "rollout.max_new_tokens=32"]
    off = run_child(ctx, "fit-24gb-offload-off", bench_step_args(ctx, model, *cap, "--steps", "1", *quick),
                    ctx.timeout("fit-24gb-off"))
    r = off.result or {}
    errors = [line for line in off.stderr.splitlines() if line.startswith("error: ")]
    one_line = (off.rc == 3 and r.get("status") == "oom" and len(errors) == 1
                and errors[0].startswith("error: out of GPU memory") and "--set optim.offload=true" in errors[0]
                and "Traceback" not in off.stderr and "CUDA out of memory" not in off.stderr)
    if r.get("status") == "ok":
        figure = f"completed: peak {gb(r.get('peak_gb'))}, the cap did not bind"
    elif errors:
        figure = f"exit {off.rc}: {errors[-1][:150]}{'...' if len(errors[-1]) > 150 else ''}"
    else:
        figure = off.why()
    if ctx.smoke:
        figure = "(simulated with --fake-oom) " + figure
    rows.append(Row(f"fit-24gb: {name} {where}, offload off", "PASS" if one_line else "FAIL", figure,
                    "fails with the one-line OOM message pointing to optim.offload=true"))
    return rows


# LoRA on the 7B shape under a 24 GB cap, with README's smaller batch for it (the default plans to
# 22.0 GB, too close to 24): 8 questions x 8 samples, 4096-token micro-batches.
LORA_7B_SETS = ["--set", "model.lora.rank=16", "--set", "rollout.prompts_per_step=8",
                "--set", "grpo.micro_batch_tokens=4096"]


def step_lora_7b(ctx: Context) -> list[Row]:
    model = "tiny" if ctx.smoke else "Qwen2.5-7B-Instruct"
    sets = ["--set", "model.lora.rank=4"] if ctx.smoke else [*LORA_7B_SETS, "--cap-gb", "24"]
    child = run_child(ctx, "lora-7b", bench_step_args(ctx, model, *sets, "--steps", "2"), ctx.timeout("lora-7b"))
    r = child.result or {}
    check = f"lora-7b: {'tiny' if ctx.smoke else '7B'} LoRA full step {'on the CPU' if ctx.smoke else 'under a 24 GB cap'}"
    if r.get("status") != "ok":
        why = f"out of memory: {r.get('message', '')[:160]}" if r.get("status") == "oom" else child.why()
        return [Row(check, "FAIL", why, "completes: rollout + update + optimizer")]
    last = r["steps"][-1]
    memory = "" if ctx.smoke else (f"; plan {gb(r['plan_gb'])}, trace {gb(r.get('trace_gb'))}, measured "
                                   f"{gb(r['peak_gb'])} ({gb(r['reserved_gb'])} reserved)")
    return [Row(check, "PASS", f"{len(r['steps'])} steps; steady step {phases(last)}{memory}",
                "completes: rollout + update + optimizer")]


def step_torchrun(ctx: Context) -> list[Row]:
    """The multi-GPU path (grpo/distributed.py) on every GPU here; smoke: 2 CPU processes with gloo."""
    import torch

    ranks = 2 if ctx.smoke else max(1, torch.cuda.device_count())
    model = "tiny" if ctx.smoke else "Qwen2.5-0.5B-Instruct"
    sets = [] if ctx.smoke else ["--set", f"rollout.prompts_per_step={4 * ranks}", "--set", "rollout.max_new_tokens=256"]
    launcher = ["-m", "torch.distributed.run", f"--nproc_per_node={ranks}", "--standalone"]
    child = run_child(ctx, "torchrun", launcher + bench_step_args(ctx, model, *sets, "--steps", "2"), ctx.timeout("torchrun"))
    r = child.result or {}
    backend = "gloo, CPU" if ctx.smoke else "NCCL"
    check = f"torchrun: {ranks} rank(s) ({backend}, FSDP2), {'tiny' if ctx.smoke else '0.5B'} full steps"
    if r.get("status") != "ok" or r.get("ranks") != ranks:
        return [Row(check, "FAIL", child.why() if r.get("status") != "ok" else f"ran with {r.get('ranks')} rank(s)",
                    "completes: rollout + update + optimizer")]
    last = r["steps"][-1]
    memory = "" if ctx.smoke else f"; rank 0 peak {gb(r['peak_gb'])} vs {gb(r['plan_gb'])} planned"
    return [Row(check, "PASS", f"{len(r['steps'])} steps; steady step {phases(last)}{memory}",
                "completes: rollout + update + optimizer")]


def step_sampler(ctx: Context) -> list[Row]:
    args = ["scripts/bench_sampler.py", "--cache-dir", str(ctx.cache)]
    if ctx.smoke:
        args += ["--model", "tiny", "--prompts", "2", "--samples", "4", "--prompt-len", "8", "16", "--gen-len", "4", "8",
                 "--fixed-tokens", "3", "--fixed-repeats", "1", "--square-size", "256", "--threads", "1",
                 "--compile", "--bound-rows", "4,8"]  # the GPU run's paths too (a CPU compile, ~20 s)
    else:
        args += ["--device", "cuda", "--dtype", "bfloat16", "--model", "Qwen2.5-1.5B", "--samples", "32", "--repeats", "2",
                 "--compile", "--bound-rows", "64,256", "--fixed-tokens", "64", "--fixed-repeats", "1"]
    child = run_child(ctx, "sampler", args, ctx.timeout("sampler"))
    r = child.result
    check = "sampler: ours vs transformers.generate" + ("" if ctx.smoke else " (1.5B bf16, 256 ragged rows)")
    target = "none (smoke)" if ctx.smoke else ">= 3x (wall time)"
    if not r or "speedup_wall" not in r:
        return [Row(check, "FAIL", child.why(), target)]
    x = r["speedup_wall"]
    figure = (f"{x:.2f}x (ours {r['ours_wall_s']:.2f} s, transformers {r['hf_wall_s']:.2f} s; repeats "
              f"{', '.join(f'{v:.2f}' for v in r['speedups_wall'])}; {r['rows']} rows, {r['useful_tokens']} tokens)")
    if "speedup_compiled_wall" in r:  # the target is the compiled decode's, what rollouts use on a GPU
        rows = [Row(check.replace("ours", "ours, eager"), "INFO", figure, "information (target: the compiled row)")]
    else:
        rows = [Row(check, "INFO" if ctx.smoke else ("PASS" if x >= 3 else "FAIL"), figure, target)]
    if "speedup_compiled_wall" in r:
        y = r["speedup_compiled_wall"]
        rows.append(Row("sampler: compiled decode vs transformers.generate",
                        "INFO" if ctx.smoke else ("PASS" if y >= 3 else "FAIL"),
                        f"{y:.2f}x (compiled / eager {r['compiled_over_eager']:.2f}x; first run with its compile "
                        f"{r['compile_s']:.0f} s; {r.get('compiles')} compile(s), {r.get('cudagraph_skips')} CUDA-graph "
                        "skips)", "none (smoke)" if ctx.smoke else ">= 3x (wall time)"))
    for n, ratio in (r.get("step_over_bound") or {}).items():
        rows.append(Row(f"sampler: compiled decode step at {n} rows vs memory-bandwidth bound",
                        "INFO" if ctx.smoke else ("PASS" if ratio <= 2 else "FAIL"),
                        f"{ratio:.2f}x the bound ({r['bandwidth_gbs']:.0f} GB/s)", "none (smoke)" if ctx.smoke else "<= 2x"))
    if "roofline_wall" in r:
        rows.append(Row("sampler: fixed-length decode vs same-shape GEMM roofline", "INFO",
                        f"{r['roofline_wall']:.0%} of the roofline (wall time)", "information"))
    return rows


def step_optimizer(ctx: Context) -> list[Row]:
    args = ["scripts/bench_optim.py"]
    args += ["--device", "cpu", "--model", "tiny", "--as-gpu", "--steps", "2"] if ctx.smoke else ["--device", "cuda"]
    child = run_child(ctx, "optimizer", args, ctx.timeout("optimizer"))
    r = child.result
    check = f"optimizer: offloaded AdamW step{'' if ctx.smoke else ' (Qwen2.5-0.5B shapes, bf16)'}"
    target = "none (smoke)" if ctx.smoke else "pipelined faster than synchronous offload"
    if not r or "hidden_share" not in r:
        return [Row(check, "FAIL", child.why(), target)]
    ms = r["ms"]
    figure = (f"pipelined {ms['pipelined']:.1f} ms, synchronous {ms['synchronous']:.1f} ms "
              f"({r['speedup_vs_sync']:.2f}x), torch AdamW on the card {ms['torch_fused']:.1f} ms, "
              f"OffloadAdamW offload=False {ms['offload_false']:.1f} ms")
    ok = ms["pipelined"] < ms["synchronous"]
    return [Row(check, "INFO" if ctx.smoke else ("PASS" if ok else "FAIL"), figure, target),
            Row("optimizer: copy time hidden by the pipeline", "INFO",
                f"{r['hidden_share']:.0%} of {ms['copies']:.1f} ms of transfers (CPU work alone {ms['cpu_update']:.1f} ms)",
                "information")]


def plan_for(name: str) -> tuple[float, float, float]:
    """(GPU peak GB, CPU RAM GB, billions of parameters) that train.py --dry-run plans for `name`
    with config.yaml and optim.offload=true."""
    from _bench_common import model_config
    from grpo.config import load_config
    from grpo.memory import GB, peak_gpu, plan_memory

    mc = model_config(name)
    cfg = load_config(ROOT / "config.yaml", [f"model.path=checkpoints/{name}", "optim.offload=true"])
    items = plan_memory(cfg, model_config=mc)
    return peak_gpu(items) / GB, sum(i.cpu for i in items) / GB, mc.num_params / 1e9


def step_fit_7b(ctx: Context) -> list[Row]:
    from grpo.memory import GPU_OVERHEAD_GB, HOST_OVERHEAD_GB, host_ram_gb

    card, ram = 80.0, host_ram_gb()
    candidates = ["tiny"] if ctx.smoke else FIT_7B_CANDIDATES
    notes, admitted = [], []
    for name in candidates:
        gpu, cpu, billions = plan_for(name)
        if gpu + GPU_OVERHEAD_GB > card:
            notes.append(f"{name} not tried (plan {gpu:.0f} GB of GPU > {card:.0f})")
        elif cpu + HOST_OVERHEAD_GB > ram:
            notes.append(f"{name} not tried (plan {cpu + HOST_OVERHEAD_GB:.0f} GB of RAM > {ram:.0f})")
        else:
            admitted.append((name, gpu, cpu, billions))
    deadline = time.perf_counter() + ctx.timeout("fit-7b")
    done = None
    for name, gpu, cpu, billions in admitted:
        left = deadline - time.perf_counter()
        if left < 60:
            notes.append(f"{name}: no time left")
            break
        extra = ["--steps", "1"] if ctx.smoke else ["--cap-gb", f"{card:g}", "--offload", "--steps", "2"]
        if ctx.smoke:
            extra.append("--offload")
        child = run_child(ctx, f"fit-7b-{name}", bench_step_args(ctx, name, *extra), left)
        shutil.rmtree(ctx.cache, ignore_errors=True)  # the last step: free the disk (15 GB for 7B)
        r = child.result or {}
        if r.get("status") == "ok":
            done = (name, r)
            break
        why = "out of memory" if r.get("status") == "oom" else child.why()
        notes.append(f"{name} failed ({why})")
    check = f"fit-7b: largest shape with a full step on an {card:.0f} GB card, offload on"
    if done is None:
        return [Row(check, "FAIL", "none completed; " + "; ".join(notes), "information")]
    name, r = done
    last = r["steps"][-1]
    peak = "" if ctx.smoke else (f"peak {gb(r['peak_gb'])} allocated, {gb(r['reserved_gb'])} reserved (plan "
                                 f"{gb(r['plan_gb'])}, trace {gb(r.get('trace_gb'))}; {r['plan_ratio']:.2f}x the plan), ")
    figure = (f"{name} ({r['params_b']:.2f}B): {peak}steady step {phases(last)}, CPU RSS {gb(r['ram_peak_gb'])} "
              f"(plan {gb(r['plan_cpu_gb'])})" + ("; " + "; ".join(notes) if notes else ""))
    return [Row(check, "INFO", figure, "information")]


STEP_FUNCTIONS: dict[str, Callable[[Context], list[Row]]] = {
    "cuda-tests": step_cuda_tests, "fit-24gb": step_fit_24gb, "sampler": step_sampler,
    "optimizer": step_optimizer, "fit-7b": step_fit_7b, "lora-7b": step_lora_7b, "torchrun": step_torchrun,
}


# -- the summary ----------------------------------------------------------------------------------------


def machine(smoke: bool) -> dict[str, Any]:
    """What ran the checks; the GPU's name from nvidia-smi, so this process never opens a CUDA context."""
    import torch

    from grpo.memory import host_ram_gb

    info = dict(host=platform.node(), python=platform.python_version(), torch=torch.__version__,
                cpus=os.cpu_count(), ram_gb=round(host_ram_gb(), 1), mode="smoke" if smoke else "gpu")
    try:
        from importlib.metadata import version
        info["transformers"] = version("transformers")
    except Exception:  # not installed, or no metadata
        info["transformers"] = None
    gpu = None
    if not smoke and shutil.which("nvidia-smi"):
        try:
            gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            pass
    info["gpu"] = gpu or ("none (smoke run on the CPU)" if smoke else "unknown")
    return info


def render_markdown(summary: dict[str, Any]) -> str:
    lines = ["# GPU check", "", "Written by `scripts/gpu_check.py`; each step's time, date and machine below the table.", "",
             "| step | check | result | figure | target |", "|---|---|---|---|---|"]
    for name in STEPS:
        step = summary["steps"].get(name)
        if step is None:
            continue
        for row in step["rows"]:
            cells = [name, row["check"], f"**{row['result']}**" if row["result"] == "FAIL" else row["result"],
                     row["figure"], row["target"]]
            lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    lines.append("")

    def describe(m: dict[str, Any]) -> str:
        return (f"{m['gpu']}, torch {m['torch']}, transformers {m['transformers']}, Python {m['python']}, "
                f"{m['cpus']} CPUs, {m['ram_gb']} GB RAM ({m['mode']} mode)")

    ran = [(name, summary["steps"][name]) for name in STEPS if name in summary["steps"]]
    machines = {describe(step["machine"]) for _, step in ran}
    for name, step in ran:
        where = "" if len(machines) == 1 else f"; {describe(step['machine'])}"
        lines.append(f"- {name}: {step['status']} in {step['seconds']:.0f} s, {step['date']}{where}")
    if len(machines) == 1:
        lines += ["", f"Machine: {machines.pop()}."]
    return "\n".join(lines) + "\n"


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def write_summary(out: Path, summary: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("summary.json", json.dumps(summary, indent=1, sort_keys=True) + "\n"),
                       ("summary.md", render_markdown(summary))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out / name)


def load_summary(path: Path) -> dict[str, Any]:
    file = path / "summary.json"
    if file.is_file():
        return json.loads(file.read_text())
    return {"steps": {}}


def write_log(out: Path, name: str, log: list[str], limit: int = 100_000) -> None:
    text = "\n".join(log)
    if len(text) > limit:  # keep --out small: the tail holds the results and the errors
        text = f"[... {len(text) - limit} characters cut ...]\n" + text[-limit:]
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "logs" / f"{name}.log").write_text(text + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu_results", help="directory for summary.json, summary.md and logs/")
    ap.add_argument("--only", action="append", choices=STEPS, metavar="NAME",
                    help=f"run only this step (repeatable): {', '.join(STEPS)}")
    ap.add_argument("--smoke", action="store_true", help="every step with tiny shapes on the CPU, no speed targets")
    ap.add_argument("--merge", nargs="+", metavar="DIR", help="combine the summaries in these directories into --out")
    ap.add_argument("--work-dir", default=None, help="where random checkpoints are built (default: a temporary directory)")
    ap.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every step's time limit")
    ap.add_argument("--quiet", action="store_true", help="do not echo the children's output")
    ap.add_argument("--jobs", type=int, default=1, help="with --smoke: run this many steps at once")
    ap.add_argument("--budget", type=float, default=480, metavar="SECONDS",
                    help="the whole run's time: a step whose estimate does not fit what is left is not run (default 480)")
    ap.add_argument("--estimate", action="append", default=[], metavar="STEP=SECONDS",
                    help="override a step's time estimate (e.g. from an earlier run's summary)")
    args = ap.parse_args(argv)
    estimates = dict(SMOKE_ESTIMATES if args.smoke else ESTIMATES)
    for text in args.estimate:
        step, _, seconds = text.partition("=")
        if step not in estimates or not seconds.replace(".", "", 1).isdigit():
            ap.error(f"--estimate expects STEP=SECONDS with STEP one of {', '.join(STEPS)}, got {text!r}")
        estimates[step] = float(seconds)
    deadline = time.perf_counter() + args.budget
    out = Path(args.out)
    if args.jobs > 1 and not args.smoke:
        ap.error("--jobs is for --smoke only: on a GPU the steps run one at a time (memory caps, timings)")

    if args.merge:
        summary = {"steps": {}}
        for d in args.merge:
            summary["steps"].update(load_summary(Path(d))["steps"])
        write_summary(out, summary)
        print(render_markdown(summary), end="")
        return 0 if all(s["status"] != "fail" for s in summary["steps"].values()) else 1

    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("error: torch sees no CUDA GPU here; on a machine without one, run python scripts/gpu_check.py --smoke "
              "(tiny shapes on the CPU)", file=sys.stderr)
        return 2
    steps = args.only or STEPS
    info = machine(args.smoke)
    summary = load_summary(out)
    if any(s.get("machine", {}).get("mode") != info["mode"] for s in summary["steps"].values()):
        summary = {"steps": {}}  # never mix smoke and GPU results in one summary
    work_root = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="gpu_check-"))
    print(f"gpu_check: {', '.join(steps)} ({info['mode']} mode; {info['gpu']}); budget {args.budget:.0f} s; "
          f"results in {out}", flush=True)

    def run_step(name: str) -> tuple[str, dict[str, Any], list[str]]:
        cache = work_root / ("checkpoints" if args.jobs == 1 else f"checkpoints-{name}")  # steps at once: no sharing
        ctx = Context(smoke=args.smoke, work=work_root / name, cache=cache, timeout_scale=args.timeout_scale,
                      echo=not args.quiet and args.jobs == 1, deadline=deadline)
        ctx.say(f"== {name} ==")
        t0 = time.perf_counter()
        left = deadline - t0
        if estimates[name] > left:  # would not finish: say so instead of being killed half-way
            row = Row(f"{name}: not run: budget", "SKIP", f"estimated {estimates[name]:.0f} s, {max(left, 0):.0f} s "
                      f"of the {args.budget:.0f} s budget left", "run it with a larger --budget or --only")
            ctx.say(f"SKIP  {row.check}: {row.figure}")
            return name, dict(status="not run: budget", seconds=0.0, date=utc_now(), machine=info, rows=[asdict(row)],
                              results={}, estimate=estimates[name]), ctx.log
        try:
            rows = STEP_FUNCTIONS[name](ctx)
        except Exception as e:  # a bug in this script must not cost the other steps
            import traceback

            ctx.log.append(traceback.format_exc())
            rows = [Row(f"{name}: gpu_check itself", "FAIL", f"{type(e).__name__}: {e}", "no error")]
        finally:
            shutil.rmtree(ctx.work, ignore_errors=True)
        for r in rows:
            ctx.say(f"{r.result:4s}  {r.check}: {r.figure}  [target: {r.target}]")
        status = "fail" if any(r.result == "FAIL" for r in rows) else "pass"
        return name, dict(status=status, seconds=round(time.perf_counter() - t0, 1), date=utc_now(), machine=info,
                          rows=[asdict(r) for r in rows], results=ctx.results, estimate=estimates[name]), ctx.log

    try:
        # One step at a time on a GPU (memory caps, timings); --jobs lets smoke runs share the CPU's cores.
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for name, entry, log in (pool.map(run_step, steps) if args.jobs > 1 else map(run_step, steps)):
                summary["steps"][name] = entry
                write_log(out, name, log)
                write_summary(out, summary)  # after every step: a later crash or kill keeps what is done
    finally:
        if not args.work_dir:
            shutil.rmtree(work_root, ignore_errors=True)
    print("\n" + render_markdown(summary), end="", flush=True)
    return 0 if all(summary["steps"][n]["status"] != "fail" for n in steps) else 1  # "not run: budget" is no failure


if __name__ == "__main__":
    sys.exit(main())
