"""GPU truth: one command runs every GPU check of this project and leaves the numbers behind.

    python3 scripts/gpu_check.py --plan                                          # each step's limit, per part, and the sums
    PYTHONPATH=. python3 scripts/gpu_check.py --out gpu_results                  # part 1: one 15-minute lease
    PYTHONPATH=. python3 scripts/gpu_check.py --part 2 --out gpu_results         # part 2 (then 3): another lease each
    PYTHONPATH=. python3 scripts/gpu_check.py --only fit-24gb --out gpu_results  # one step
    python scripts/gpu_check.py --smoke --out /tmp/gpu_smoke                    # no GPU: tiny shapes on the CPU
    python scripts/gpu_check.py --merge DIR1 DIR2 ... --out gpu_results         # one summary of several runs

A borrowed GPU comes with 15 minutes in all, its start (~3 minutes) included, and one command may run
10: so the steps are split into parts of at most `DEFAULT_BUDGET` (570) seconds of time limits, each
one command in one lease (`--plan` prints them). Every step is a subprocess (or a few) with a time
limit of its own (LIMITS, an H100/H200-class card, first compiles included): a step starts only if
its whole limit fits what is left of the budget (`--budget`), else it is reported as "not run:
budget", not as a failure; a started step keeps its whole limit, so one slow step can never turn the
later ones into time-outs. Steps usually finish well inside their limits (ESTIMATES), and a run then
goes on into the next part's steps whose whole limits still fit. The summary is written after every
step, so a run killed at its limit still leaves all it measured.

Steps, most important first (part 1: the compiled decode, correctness, the 24 GB fit, torchrun):
  decode-smoke  the compiled decode (torch.compile, CUDA graphs) of a 2-layer model with Qwen2.5-0.5B's
                widths, bf16, in ~20 s: a cache of 307 positions (not a multiple of 8, past one
                256-position window), 6 ragged rows stopping one after another down to one. Target:
                every row as long as forced, no CUDA-graph skips, no recompile in a second rollout.
                Compile counts, times and the rollout's peak memory against the plan are reported.
  cuda-tests    pytest tests/test_gpu.py tests/test_optim.py tests/test_device_mismatch.py (results read
                from pytest's --junitxml): logits and greedy sampling against transformers on the GPU, the
                CUDA attention branches, the pipelined offload against the synchronous CPU path (exact
                resume), train.py steps with offload on and off, offloaded state and LoRA of FSDP-sharded
                models saved and loaded on a CUDA mesh. Target: all pass, none skipped.
  fit-24gb      scripts/bench_step.py: Qwen2.5-3B shape, random bf16 weights, config.yaml's batch
                (16 x 8, 512 new tokens, activation checkpointing), eager decode (a memory check:
                the compile is decode-smoke's), the process capped to 24 GB. Offload on: two full
                steps complete; peak memory as planned (--dry-run), traced (--dry-run --trace) and
                measured (max_memory_allocated, reserved), measured within 15% of the plan. Offload
                off: fails with train.py's one-line out-of-memory message pointing to
                optim.offload=true (exit code 3, no CUDA traceback).
  torchrun      torchrun (one rank per GPU, NCCL, FSDP2; one GPU: one rank, as NCCL refuses two ranks
                on one device) train.py on the Qwen2.5-0.5B shape with optim.offload=true: 2 steps and
                a checkpoint, then --resume for a third. Target: the optimizer state and weights each
                rank loads are the ones it saved (checksums), the save does not copy the offloaded
                state to the GPU, 3 steps logged.
  torchrun-lora the same with LoRA (rank 16).
Part 2 (speed, and LoRA on 7B):
  lora-7b       scripts/bench_step.py: Qwen2.5-7B shape with LoRA (rank 16) under a 24 GB cap, with
                README's smaller batch for it (8 x 8, 4096-token micro-batches), eager decode.
                Target: completes.
  sampler       scripts/bench_sampler.py --compile --bound-rows 64,256: Qwen2.5-1.5B shape, bf16, 8
                prompts x 32 samples, ragged: eager, compiled (CUDA graphs) and transformers.generate
                on the same batch. Targets: >= 3x transformers; a compiled decode step within 2x of its
                memory-bandwidth bound at 64 and 256 rows.
  optimizer     scripts/bench_optim.py --device cuda: the offloaded step, pipelined vs synchronous
                vs torch AdamW on the card. Target: pipelined faster than synchronous.
Part 3:
  fit-7b        scripts/bench_step.py on the largest Qwen2.5 shape whose plan fits an 80 GB card
                and this machine's RAM with offload. Information.
  nf4           scripts/bench_nf4.py: Qwen2.5-0.5B shape, bf16, LoRA rank 16: an eager decode step
                (64 rows) and an update step (4096 tokens, activation checkpointing) with the base in
                4 bits (model.quantize nf4, qwen2/nf4.py) against the bf16 base; the load (quantised
                as read), the weights' bytes, the logits' difference. Information: what the
                dequantisation costs on a GPU.

Everything runs from the repository with what a bare GPU machine has (torch, transformers,
tokenizers, safetensors, pytest, pyyaml, jinja2): random checkpoints are built in a temporary
directory (`--work-dir`), deleted at the end. `--out DIR` receives summary.json, summary.md (the
table printed at the end) and logs/<step>.log (the tail of each step's output); a run adds its steps
to the summary already in DIR. Exit code 0 when no check failed.

`--smoke` runs every step on the CPU with tiny shapes in fp32, without speed targets and without a
budget (the fit-24gb out-of-memory case is simulated with bench_step.py --fake-oom; torchrun runs 2
gloo processes), so that this script and the benchmarks it drives keep working on machines without
a GPU; tests/test_gpu_check.py runs it, checks the budget rule and that every part's limits fit a
lease.
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

STARTED = time.perf_counter()  # the budget counts this command's own start too
ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("grpo") is None:
    # The one script meant for machines where nothing is installed (a borrowed GPU box: no pip): run
    # from a plain checkout, it finds the packages next to it, as its children do (PYTHONPATH below).
    sys.path.insert(0, str(ROOT))

# Most important first; a run starts at the first step of its part (--part) and goes on while the
# next step's whole limit fits what is left of its budget. Each part's limits fit one lease.
PARTS = [["decode-smoke", "cuda-tests", "fit-24gb", "torchrun", "torchrun-lora"],
         ["lora-7b", "sampler", "optimizer"],
         ["fit-7b", "nf4"]]
STEPS = [name for part in PARTS for name in part]
SMOKE_ENV = "GPU_CHECK_SMOKE"  # tests/test_gpu.py runs its tests on the CPU when this is 1

# The lease this is planned for: 15 minutes of a borrowed GPU, of which the machine's start takes ~3
# (measured 1-3 minutes), at most 10 minutes a command. Each part is one command of DEFAULT_BUDGET
# seconds: with the start and a margin for fetching the results it stays within LEASE_S.
LEASE_S, MACHINE_START_S, COMMAND_S = 840, 180, 600
DEFAULT_BUDGET = 570
OWN_S = 15  # this script's own start (torch, nvidia-smi) and end (summary, deleting the checkpoints)
END_S = 5  # of which its end: no step may start that would run into it
PARENT_S = 5  # per step: this script's work between its children (reading results, checksums)

# Each child's time limit on a GPU machine, in seconds (x --timeout-scale): what it may take with a
# cold compile cache, its random checkpoint to build and its first compiles included. A step's limit
# is the sum of its children's plus PARENT_S, and it is never cut once the step has started.
LIMITS = {"decode-smoke": 65, "cuda-tests": 125, "fit-24gb-on": 120, "fit-24gb-off": 50,
          "torchrun-save": 50, "torchrun-resume": 40, "torchrun-lora-save": 40, "torchrun-lora-resume": 35,
          "lora-7b": 150, "sampler": 240, "optimizer": 60, "fit-7b": 240, "nf4": 90}
CHILDREN = {"fit-24gb": ["fit-24gb-on", "fit-24gb-off"], "torchrun": ["torchrun-save", "torchrun-resume"],
            "torchrun-lora": ["torchrun-lora-save", "torchrun-lora-resume"]}
SMOKE_LIMIT = 240  # every child of a --smoke run (tiny shapes on a shared CPU)
# What each step is expected to take on an H100/H200-class card (seconds), first compiles included:
# inductor's cold compile of a 28-36-layer decode step takes 60-90 s in public reports, and the
# compiled decode compiles twice a run (the first step, then the attention window's growth makes it
# dynamic). Guesses until a GPU run measures them (summary.json's `seconds`); shown by --plan next to
# the limits. A step whose estimate is far below its limit is what lets a run reach the next part.
ESTIMATES = {"decode-smoke": 30, "cuda-tests": 80, "fit-24gb": 110, "torchrun": 55, "torchrun-lora": 45,
             "lora-7b": 100, "sampler": 190, "optimizer": 30, "fit-7b": 170, "nf4": 45}
SMOKE_ESTIMATES = {"decode-smoke": 20, "cuda-tests": 25, "fit-24gb": 25, "torchrun": 30, "torchrun-lora": 30,
                   "lora-7b": 15, "sampler": 60, "optimizer": 10, "fit-7b": 15, "nf4": 10}
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


def children(step: str) -> list[str]:
    """The keys of a step's children in LIMITS (one, named as the step, unless CHILDREN says more)."""
    return CHILDREN.get(step, [step])


def child_limits(smoke: bool = False, scale: float = 1.0, overrides: dict[str, float] | None = None) -> dict[str, float]:
    """Every child's time limit: LIMITS (SMOKE_LIMIT with --smoke) x `scale`, then `overrides` (--limit)."""
    limits = {key: (SMOKE_LIMIT if smoke else own) * scale for key, own in LIMITS.items()}
    limits.update(overrides or {})
    return limits


def step_limit(step: str, limits: dict[str, float]) -> float:
    """A step's whole time limit: its children's, and PARENT_S for this script's work between them."""
    return sum(limits[key] for key in children(step)) + PARENT_S


def format_plan(limits: dict[str, float], estimates: dict[str, float], budget: float) -> str:
    """`--plan`: each part's steps with their limits and estimates, and the sums against the budget
    of one command and the lease."""
    lines = [f"gpu_check plan: a step starts only if its whole limit fits what is left of the budget ({budget:.0f} s a "
             "command); a started step keeps its limit.",
             f"A lease: {LEASE_S} s, of which the machine's start ~{MACHINE_START_S} s; one command at most {COMMAND_S} s."]
    for number, part in enumerate(PARTS, 1):
        command = "python3 scripts/gpu_check.py --out gpu_results" + (f" --part {number}" if number > 1 else "")
        lines += ["", f"part {number}: {command}",
                  f"  {'step':14s} {'limit s':>8s} {'estimate s':>11s}  children (limit s)"]
        for name in part:
            kids = ", ".join(f"{k} {limits[k]:.0f}" for k in children(name)) + f", this script {PARENT_S}"
            lines.append(f"  {name:14s} {step_limit(name, limits):8.0f} {estimates[name]:11.0f}  {kids}")
        total = part_seconds(part, limits)
        lines.append(f"  {'sum':14s} {total:8.0f} {sum(estimates[n] for n in part) + OWN_S:11.0f}  with this script's own "
                     f"start and end ({OWN_S} s)")
        lines.append(f"  with the machine's start: {total + MACHINE_START_S:.0f} s of the lease's {LEASE_S} s; "
                     f"{'fits' if total <= budget and total + MACHINE_START_S <= LEASE_S else 'does NOT fit'} one "
                     f"command of {budget:.0f} s")
    lines += ["", "A run goes on into the next part's steps while a step's whole limit fits what is left; those it "
              "reaches need no second lease."]
    return "\n".join(lines)


def part_seconds(part: list[str], limits: dict[str, float]) -> float:
    """The worst case of one command running `part`: its steps' limits and this script's own time."""
    return sum(step_limit(name, limits) for name in part) + OWN_S


@dataclass
class Context:
    smoke: bool
    work: Path  # this step's scratch directory, deleted after it
    cache: Path  # random checkpoints, shared by the steps (lora-7b and fit-7b build the same 7B once)
    limits: dict[str, float]  # each child's time limit (child_limits)
    echo: bool
    log: list[str] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)

    def timeout(self, key: str) -> float:
        """A child's time limit: its own, whole (the step started only because all of its fit)."""
        return self.limits[key]

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


# The decode smoke: rows stop at these steps (one never does), so the live rows fall from 6 (a bucket
# of 8) through 5, 4, 3 and 2 to 1 while the cache fills past its first 256-position window.
SMOKE_DECODE_PROMPTS = [37, 21, 30, 9, 25, 14]  # prompt lengths: 37 + 270 = 307 positions, not a multiple of 8
SMOKE_DECODE_STOPS = [5, 12, 20, 40, 60, None]
SMOKE_DECODE_NEW = 270


def step_decode_smoke(ctx: Context) -> list[Row]:
    args = ["scripts/gpu_check.py", "--child", "decode-smoke", "--device", "cpu" if ctx.smoke else "cuda",
            "--dtype", "float32" if ctx.smoke else "bfloat16"]
    child = run_child(ctx, "decode-smoke", args, ctx.timeout("decode-smoke"))
    r = child.result or {}
    check = (f"decode-smoke: compiled decode, {r.get('shape', '2-layer')} {r.get('dtype', '')}, "
             f"{len(SMOKE_DECODE_PROMPTS)} ragged rows down to 1, {r.get('positions', '?')}-position cache")
    target = ("rows as forced; no recompile in a 2nd rollout (smoke: no CUDA graphs on a CPU)" if ctx.smoke else
              "rows as forced; 0 CUDA-graph skips; no recompile in a 2nd rollout")
    if r.get("status") != "ok":
        return [Row(check, "FAIL", child.why(), target)]
    skips = r["cudagraph_skips"]
    ok = r["lengths_ok"] and r["compiles_second"] == 0 and (ctx.smoke or skips == 0)
    reasons = f" ({'; '.join(r['skip_reasons'])[:200]})" if r.get("skip_reasons") else ""
    figure = (f"{r['compiles_first']} compile(s), {r['compile_s']:.0f} s of a {r['first_s']:.0f} s first rollout; "
              f"second rollout {r['second_s']:.1f} s, {r['compiles_second']} new compile(s); {skips} CUDA-graph skip(s)"
              f"{reasons}; {r.get('recordings', '?')} graph recording(s); row lengths "
              f"{'as forced' if r['lengths_ok'] else 'WRONG: ' + str(r['lengths'])}; {r['agree_rows']}/{r['rows']} rows "
              f"token for token as the eager decode ({r['eager_s']:.1f} s)")
    rows = [Row(check, "PASS" if ok else "FAIL", figure, target)]
    if ctx.smoke:
        rows.append(Row("decode-smoke: rollout peak memory vs plan", "INFO",
                        f"no GPU memory on a CPU (plan {gb(r['plan_gb'])})", "information (GPU only)"))
    else:
        rows.append(Row("decode-smoke: rollout peak GPU memory vs plan", "INFO",
                        f"measured {gb(r['peak_gb'])} allocated, planned {gb(r['plan_gb'])} "
                        f"({r['peak_gb'] / r['plan_gb']:.2f}x; "
                        f"static cache {gb(r['static_gb'])}, inductor's autotuning copy {gb(r['autotune_gb'])}, weights "
                        f"{gb(r['weights_gb'])})", "information: the plan's compiled-decode terms"))
    return rows


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
                                          "tests/test_gpu.py", "tests/test_optim.py", "tests/test_device_mismatch.py"],
                      ctx.timeout("cuda-tests"), env)
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
    return [Row("CUDA tests: test_gpu.py + test_optim.py + test_device_mismatch.py", "PASS" if ok else "FAIL", figure, target)]


# The memory steps decode eagerly: they check memory, and a cold compile of a 36-layer decode step would
# cost them a minute or more (decode-smoke checks the compiled decode, the sampler step its speed).
EAGER = ["--set", "rollout.compile=false"]


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

    on = run_child(ctx, "fit-24gb-offload-on", bench_step_args(ctx, model, *cap, *EAGER, "--offload", "--steps", "2"),
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
    quick = ["--fake-oom"] if ctx.smoke else [*EAGER, "--set", "rollout.max_new_tokens=32"]
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


# LoRA on the 7B shape under a 24 GB cap, with README's smaller batch for it (the default batch plans
# past 24 GB): 8 questions x 8 samples, 4096-token micro-batches.
LORA_7B_SETS = ["--set", "model.lora.rank=16", "--set", "rollout.prompts_per_step=8",
                "--set", "grpo.micro_batch_tokens=4096"]


def step_lora_7b(ctx: Context) -> list[Row]:
    model = "tiny" if ctx.smoke else "Qwen2.5-7B-Instruct"
    sets = ["--set", "model.lora.rank=4"] if ctx.smoke else [*LORA_7B_SETS, *EAGER, "--cap-gb", "24"]
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


STATE_TAG = "GPU_CHECK_STATE "  # the torchrun children's lines (for the log; the check reads their files)


def train_sets(ctx: Context, ranks: int, run: Path, lora: bool) -> list[str]:
    """train.py's settings for the torchrun steps: config.yaml with a random checkpoint (@ckpt@ and the
    data files are filled in by the child that builds them), the offloaded optimizer, a small batch
    (2 questions a rank x 4 samples), 3 steps, nothing saved but what --stop-after and the end save."""
    sets = ["model.path=@ckpt@", "data.train_file=@train@", "data.test_file=@test@",
            f"model.dtype={'float32' if ctx.smoke else 'bfloat16'}", f"model.device={'cpu' if ctx.smoke else 'cuda'}",
            "reward.weights={format: 0.1, correctness: 1.0, bench_spread: 1.0}", "optim.offload=true",
            f"rollout.prompts_per_step={2 * ranks}", "rollout.group_size=4",
            f"rollout.max_new_tokens={8 if ctx.smoke else 32}", "grpo.micro_batch_size=4", "train.steps=3",
            "train.save_every=100", "train.eval_every=0", "train.eval_at_start=false", "train.progress=false",
            f"train.out_dir={run}"]
    if lora:
        sets.append(f"model.lora.rank={4 if ctx.smoke else 16}")
    return [arg for s in sets for arg in ("--set", s)]


def states(folder: Path, event: str) -> dict[int, dict[str, Any]]:
    """What each rank reported (child_train) on `event`, by rank: files, since the ranks' lines share
    one stdout and may be interleaved."""
    found = [json.loads(f.read_text()) for f in sorted(folder.glob(f"{event}-*.json"))] if folder.is_dir() else []
    return {s["rank"]: s for s in found}


def step_torchrun(ctx: Context, lora: bool = False) -> list[Row]:
    """train.py under torchrun with the offloaded optimizer: 2 steps and a checkpoint, then --resume
    for a third; every rank reports (child_train) checksums of its optimizer state and weights when
    it saves and when it loads them, and on a GPU how much GPU memory the save took."""
    import torch

    name = "torchrun-lora" if lora else "torchrun"
    # One rank per GPU. On a machine with one GPU, one rank: NCCL refuses two ranks on one device
    # ("Duplicate GPU detected", ncclInvalidUsage), and one rank still runs FSDP2's sharded path.
    ranks = 2 if ctx.smoke else max(1, torch.cuda.device_count())
    model = "tiny" if ctx.smoke else "Qwen2.5-0.5B-Instruct"
    run = ctx.work / "run"
    reports = ctx.work / "states"
    launcher = ["-m", "torch.distributed.run", f"--nproc_per_node={ranks}", "--standalone", "scripts/gpu_check.py",
                "--child", "train", "--work", str(ctx.cache), "--states", str(reports), "--model", model,
                "--dtype", "float32" if ctx.smoke else "bfloat16", "--device", "cpu" if ctx.smoke else "cuda", "--"]
    first = ["--config", str(ROOT / "config.yaml"), *train_sets(ctx, ranks, run, lora), "--stop-after", "2"]
    save = run_child(ctx, f"{name}-save", launcher + first, ctx.timeout(f"{name}-save"))
    resume = None
    if save.rc == 0:
        resume = run_child(ctx, f"{name}-resume", launcher + ["--resume", str(run)], ctx.timeout(f"{name}-resume"))
    backend = "gloo, CPU" if ctx.smoke else "NCCL"
    what = f"{'tiny' if ctx.smoke else '0.5B'}{' LoRA' if lora else ''}, offload"
    check = f"{name}: {ranks} rank(s) ({backend}, FSDP2), {what}: 2 steps + save, resume, step 3"
    target = "the state each rank loads is the one it saved; 3 steps logged"
    failed = save if resume is None else resume if resume.rc != 0 else None
    if failed is not None:
        return [Row(check, "FAIL", f"{'save' if failed is save else 'resume'}: {failed.why()}", target)]
    saved, loaded = states(reports, "saved-step2"), states(reports, "loaded-step2")
    keys = ("step", "optimizer_sum", "optimizer_abs", "optimizer_numel", "weights_sum", "weights_abs")
    differ = [f"rank {r} {k}: {saved[r][k]} saved, {loaded.get(r, {}).get(k)} loaded"
              for r in saved for k in keys if saved[r][k] != loaded.get(r, {}).get(k)]
    same = len(saved) == len(loaded) == ranks and not differ
    steps = []
    if (run / "metrics.jsonl").is_file():
        steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [r["step"] for r in steps if "reward" in r]
    trained = steps[-1].get("trained_episodes", 0) if steps else 0
    values = sum(s["optimizer_numel"] for s in saved.values())
    figure = (f"steps logged {logged}; loaded == saved on {len(saved) - len({d.split()[1] for d in differ})}/{ranks} "
              f"rank(s) ({values:,} optimizer values and the weights, float64 sums)"
              + (f"; {'; '.join(differ[:2])}" if differ else "") + f"; step 3 trained {trained} episodes")
    rows = [Row(check, "PASS" if same and logged == [1, 2, 3] and trained > 0 else "FAIL", figure, target)]
    if not ctx.smoke:
        # The offloaded state stays in CPU memory when it is saved: what the save added to the GPU's
        # memory, against the state's size (all of it copied to the GPU would add that much).
        grew = max(s["save_gpu_growth_gb"] for s in saved.values())
        state_gb = max(s["optimizer_gb"] for s in saved.values())
        weights_gb = max(s["weights_gb"] for s in saved.values())
        ok = grew <= weights_gb + 0.5 * state_gb
        rows.append(Row(f"{name}: GPU memory the save of step 2 added (rank 0 and the others)", "PASS" if ok else "FAIL",
                        f"+{grew:.2f} GB over what the step held (optimizer state {state_gb:.2f} GB in CPU RAM, "
                        f"weights {weights_gb:.2f} GB)", "less than the weights + half the offloaded state"))
    return rows


def step_torchrun_lora(ctx: Context) -> list[Row]:
    return step_torchrun(ctx, lora=True)


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
    from grpo.plan.memory import GB, peak_gpu, plan_memory

    mc = model_config(name)
    cfg = load_config(ROOT / "config.yaml", [f"model.path=checkpoints/{name}", "optim.offload=true"])
    items = plan_memory(cfg, model_config=mc)
    return peak_gpu(items) / GB, sum(i.cpu for i in items) / GB, mc.num_params / 1e9


def step_fit_7b(ctx: Context) -> list[Row]:
    from grpo.plan.machine import GPU_OVERHEAD_GB, HOST_OVERHEAD_GB, host_ram_gb

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


def step_nf4(ctx: Context) -> list[Row]:
    args = ["scripts/bench_nf4.py", "--cache-dir", str(ctx.cache)]
    args += (["--models", "tiny", "--repeats", "1", "--decode-steps", "2", "--update-tokens", "32"] if ctx.smoke else
             ["--models", "Qwen2.5-0.5B", "--device", "cuda", "--dtype", "bfloat16", "--rows", "64",
              "--update-tokens", "4096", "--decode-steps", "8"])
    child = run_child(ctx, "nf4", args, ctx.timeout("nf4"))
    r = child.result or {}
    name = "tiny" if ctx.smoke else "Qwen2.5-0.5B"
    check = f"nf4: 4-bit base vs {'fp32' if ctx.smoke else 'bf16'} weights, LoRA rank 16, {name} shape, eager decode"
    if name not in r.get("models", {}):
        return [Row(check, "FAIL", child.why(), "information")]
    m = r["models"][name]
    d, u, w = m["decode_ms"], m["update_ms"], m["weight_bytes"]
    figure = (f"decode step ({r['rows']} rows) {d['plain']:.1f} -> {d['nf4']:.1f} ms ({m['decode_ratio']:.2f}x); "
              f"update step ({r['update_tokens']} tokens, checkpointing) {u['plain']:.1f} -> {u['nf4']:.1f} ms "
              f"({m['update_ratio']:.2f}x); weights {w['plain'] / 1e9:.2f} -> {w['nf4'] / 1e9:.2f} GB; load "
              f"{m['load_s']['plain']:.1f} -> {m['load_s']['nf4']:.1f} s (quantised at load); logits differ by "
              f"{m['logits_rel_diff']:.3f} (relative)")
    return [Row(check, "INFO", figure, "information: the dequantisation's cost (docs/qlora.md)")]


STEP_FUNCTIONS: dict[str, Callable[[Context], list[Row]]] = {
    "decode-smoke": step_decode_smoke, "cuda-tests": step_cuda_tests, "fit-24gb": step_fit_24gb,
    "torchrun": step_torchrun, "torchrun-lora": step_torchrun_lora, "lora-7b": step_lora_7b, "sampler": step_sampler,
    "optimizer": step_optimizer, "fit-7b": step_fit_7b, "nf4": step_nf4,
}


# -- the children that live in this file ----------------------------------------------------------------


def child_decode_smoke(device_name: str, dtype_name: str) -> int:
    """`--child decode-smoke`: two compiled rollouts and one eager one of a 2-layer model with
    Qwen2.5-0.5B's widths (the tiny shape on a CPU), rows stopped at SMOKE_DECODE_STOPS by a logits
    hook; the compile counts, CUDA-graph skips (inductor's counter, and its messages) and the first
    rollout's peak memory against the plan's compiled-decode terms."""
    import dataclasses
    import logging

    import torch
    from torch._dynamo.utils import counters

    from _bench_common import DTYPES, model_config, print_result
    from grpo.plan.memory import GB, ROLLOUT, phase_totals, rollout_items
    from qwen2 import GREEDY, Qwen2, generate
    from qwen2 import static_decode

    reasons: list[str] = []

    class Skips(logging.Handler):  # inductor says why it skipped CUDA graphs on this (artifact) logger
        def emit(self, record: logging.LogRecord) -> None:
            if "skip" in record.getMessage().lower():
                reasons.append(record.getMessage().splitlines()[0][:160])

    logging.getLogger("torch._inductor.cudagraph_utils.__cudagraphs").addHandler(Skips())
    device, dtype = torch.device(device_name), DTYPES[dtype_name]
    shape = "tiny" if device.type == "cpu" else "Qwen2.5-0.5B"
    mc = model_config(shape)
    if device.type != "cpu":
        mc = dataclasses.replace(mc, num_hidden_layers=2)  # its kernels, in seconds
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2(mc).to(dtype).eval()
    model.init_weights(std=0.02)
    stop = mc.eos_token_id[0] if isinstance(mc.eos_token_id, list) else mc.eos_token_id
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(10, mc.vocab_size - 10, (n,), generator=g).tolist() for n in SMOKE_DECODE_PROMPTS]
    stop_at = torch.tensor([-1 if s is None else s for s in SMOKE_DECODE_STOPS], device=device)
    expected = [SMOKE_DECODE_NEW if s is None else s + 1 for s in SMOKE_DECODE_STOPS]

    def force(logits, rows, step):  # row b emits the stop token at its step, never before
        hit = stop_at[rows] == step
        logits.masked_fill_(hit[:, None], float("-inf"))
        logits[:, stop] = torch.where(hit, 0.0, float("-inf")).to(logits.dtype)
        return logits

    def rollout(compile: bool):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = generate(model, prompts, SMOKE_DECODE_NEW, GREEDY, stop_token_ids=[stop], compile=compile,
                       logits_hook=force)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out, time.perf_counter() - t0

    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    stats = static_decode.STATS
    compiles, seconds = stats.compiles, stats.seconds
    first, first_s = rollout(True)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    compiles_first, compile_s = stats.compiles - compiles, stats.seconds - seconds
    second, second_s = rollout(True)
    eager, eager_s = rollout(False)
    b = torch.finfo(dtype).bits // 8
    items = rollout_items(mc, len(prompts), 1, max(SMOKE_DECODE_PROMPTS), SMOKE_DECODE_NEW, b, compiled=True)
    named = {i.name.split(" (")[0]: i.gpu for i in items}
    totals = phase_totals(items)
    plan = weights + 2 * mc.max_position_embeddings * mc.head_dim * 4 + max(totals[m] for m in ROLLOUT)
    lengths = [len(t) for t in first.tokens]
    print_result(dict(
        status="ok", shape=f"{shape}{' (2 layers)' if device.type != 'cpu' else ''}", dtype=dtype_name,
        positions=max(SMOKE_DECODE_PROMPTS) + SMOKE_DECODE_NEW, rows=len(prompts), lengths=lengths,
        lengths_ok=lengths == expected and [len(t) for t in second.tokens] == expected == [len(t) for t in eager.tokens],
        compiles_first=compiles_first, compile_s=round(compile_s, 1),
        compiles_second=stats.compiles - compiles - compiles_first,
        first_s=round(first_s, 2), second_s=round(second_s, 2), eager_s=round(eager_s, 2),
        cudagraph_skips=int(counters["inductor"]["cudagraph_skips"]), skip_reasons=reasons[:3],
        recordings=getattr(stats, "recordings", None), agree_rows=sum(a == e for a, e in zip(first.tokens, eager.tokens)),
        peak_gb=round(peak / GB, 3), plan_gb=round(plan / GB, 3), weights_gb=round(weights / GB, 3),
        static_gb=round(named.get("static KV cache of the compiled decode", 0) / GB, 3),
        autotune_gb=round(named.get("autotuning copy of the static K buffer", 0) / GB, 3), torch=torch.__version__))
    return 0


def _checksums(trainer) -> dict[str, Any]:
    """Sums (float64) of this rank's optimizer state and weights (its shards under FSDP): equal when
    a resume loads exactly what was saved."""
    import torch
    from torch.distributed.tensor import DTensor

    def local(t):  # this rank's piece, in host memory (a float64 sum on the host is the same every time)
        return (t.to_local() if isinstance(t, DTensor) else t).detach().cpu()

    out = dict(optimizer_sum=0.0, optimizer_abs=0.0, optimizer_numel=0, optimizer_bytes=0, weights_sum=0.0,
               weights_abs=0.0, weights_bytes=0)
    for _, state in trainer.optimizer.states():
        for t in state.values():
            if isinstance(t, torch.Tensor):
                x = local(t)
                out["optimizer_sum"] += x.sum(dtype=torch.float64).item()
                out["optimizer_abs"] += x.abs().sum(dtype=torch.float64).item()
                out["optimizer_numel"] += x.numel()
                out["optimizer_bytes"] += (t.to_local() if isinstance(t, DTensor) else t).nbytes
    for p in trainer.model.parameters():
        x = local(p)
        out["weights_sum"] += x.sum(dtype=torch.float64).item()
        out["weights_abs"] += x.abs().sum(dtype=torch.float64).item()
        out["weights_bytes"] += (p.to_local() if isinstance(p, DTensor) else p).nbytes
    return out


def child_train(work: Path, reports: Path, model: str, dtype: str, device: str, argv: list[str]) -> int:
    """`--child train`, one rank of torchrun: the random checkpoint, tokenizer and data (built by
    rank 0, bench_step.prepare; @ckpt@, @train@, @test@ in `argv` become their paths), the bench
    reward, then train.py with `argv`; every save and every resume print this rank's checksums
    (a file in `reports`, and a STATE_TAG line) and, on a GPU, the GPU memory the save added."""
    import argparse

    import torch

    from bench_step import bench_spread, prepare
    from data import rewards
    from grpo.machinery.distributed import exit_process
    from grpo.trainer import Trainer

    rank, local = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    marker = work / f"prepared-{model}-{dtype}.json"
    if rank == 0 and not marker.is_file():
        where = torch.device("cuda", local) if device == "cuda" else torch.device(device)
        ckpt, train_file, test_file = prepare(argparse.Namespace(model=model, dtype=dtype), work, where)
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps(dict(ckpt=str(ckpt), train=str(train_file), test=str(test_file))))
        tmp.replace(marker)
    deadline = time.monotonic() + 600
    while not marker.is_file():  # the other ranks wait for rank 0's files
        if time.monotonic() > deadline:
            print("error: rank 0 did not build the checkpoint", file=sys.stderr)
            exit_process(2)
        time.sleep(0.2)
    paths = json.loads(marker.read_text())
    argv = [a.replace("@ckpt@", paths["ckpt"]).replace("@train@", paths["train"]).replace("@test@", paths["test"])
            for a in argv]
    rewards.REWARD_FUNCTIONS["bench_spread"] = bench_spread
    on_gpu = device == "cuda"

    def report(event: str, trainer, **extra) -> None:
        sums = _checksums(trainer)
        line = dict(event=event, rank=rank, step=trainer.step, optimizer_gb=sums["optimizer_bytes"] / 1e9,
                    weights_gb=sums["weights_bytes"] / 1e9, **sums, **extra)
        reports.mkdir(parents=True, exist_ok=True)
        (reports / f"{event}-step{trainer.step}-rank{rank}.json").write_text(json.dumps(line))
        print(STATE_TAG + json.dumps(line), flush=True)

    init, save = Trainer.__init__, Trainer._save

    def traced_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.gpu_check_resumed = self.step > 0
        if self.gpu_check_resumed:  # what was loaded
            report("loaded", self)

    def traced_save(self, *args, **kwargs):
        if self.gpu_check_resumed:  # only the first run's save is compared (its checksums take seconds)
            return save(self, *args, **kwargs)
        if on_gpu:
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        ok = save(self, *args, **kwargs)
        grew = (torch.cuda.max_memory_allocated() - before) / 1e9 if on_gpu else 0.0
        report("saved", self, save_gpu_growth_gb=round(grew, 3))
        return ok

    Trainer.__init__, Trainer._save = traced_init, traced_save
    import train

    exit_process(train.main(argv))
    return 0  # not reached


# -- the summary ----------------------------------------------------------------------------------------


def machine(smoke: bool) -> dict[str, Any]:
    """What ran the checks; the GPU's name from nvidia-smi, so this process never opens a CUDA context."""
    import torch

    from grpo.plan.machine import host_ram_gb

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


def run_child_mode(argv: list[str]) -> int:
    """`gpu_check.py --child NAME ...`: the children that live in this file (not for people)."""
    import argparse as _argparse

    ap = _argparse.ArgumentParser(prog="gpu_check.py --child")
    ap.add_argument("--child", choices=["decode-smoke", "train"], required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--work", default=None)
    ap.add_argument("--states", default=None)
    ap.add_argument("--model", default=None)
    ours, rest = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = ap.parse_args(ours)
    if args.child == "decode-smoke":
        return child_decode_smoke(args.device, args.dtype)
    return child_train(Path(args.work), Path(args.states), args.model, args.dtype, args.device, rest)


def main(argv: list[str] | None = None, started: float | None = None) -> int:
    """`started`: when the budget's clock starts (the command's own start, STARTED, when run as a
    script; this call's start when called in-process, as the tests do)."""
    started = time.perf_counter() if started is None else started
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return run_child_mode(argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu_results", help="directory for summary.json, summary.md and logs/")
    ap.add_argument("--plan", action="store_true", help="print each part's steps, limits, estimates and sums; run nothing")
    ap.add_argument("--part", type=int, choices=range(1, len(PARTS) + 1), default=1,
                    help="start at this part's first step (default 1); later parts' steps follow while their limits fit")
    ap.add_argument("--only", action="append", choices=STEPS, metavar="NAME",
                    help=f"run only this step (repeatable): {', '.join(STEPS)}")
    ap.add_argument("--smoke", action="store_true", help="every step with tiny shapes on the CPU, no speed targets")
    ap.add_argument("--merge", nargs="+", metavar="DIR", help="combine the summaries in these directories into --out")
    ap.add_argument("--work-dir", default=None, help="where random checkpoints are built (default: a temporary directory)")
    ap.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every child's time limit")
    ap.add_argument("--quiet", action="store_true", help="do not echo the children's output")
    ap.add_argument("--jobs", type=int, default=1, help="with --smoke: run this many steps at once")
    ap.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                    help=f"the whole command's time, its start included: a step starts only if its whole limit fits "
                         f"what is left (default {DEFAULT_BUDGET}; with --smoke, none)")
    ap.add_argument("--limit", action="append", default=[], metavar="CHILD=SECONDS",
                    help=f"override one child's time limit (e.g. from what a GPU run measured): {', '.join(LIMITS)}")
    ap.add_argument("--estimate", action="append", default=[], metavar="STEP=SECONDS",
                    help="override a step's time estimate (shown by --plan)")
    args = ap.parse_args(argv)
    estimates = dict(SMOKE_ESTIMATES if args.smoke else ESTIMATES)
    for text in args.estimate:
        step, _, seconds = text.partition("=")
        if step not in estimates or not seconds.replace(".", "", 1).isdigit():
            ap.error(f"--estimate expects STEP=SECONDS with STEP one of {', '.join(STEPS)}, got {text!r}")
        estimates[step] = float(seconds)
    overrides = {}
    for text in args.limit:
        key, _, seconds = text.partition("=")
        if key not in LIMITS or not seconds.replace(".", "", 1).isdigit():
            ap.error(f"--limit expects CHILD=SECONDS with CHILD one of {', '.join(LIMITS)}, got {text!r}")
        overrides[key] = float(seconds)
    limits = child_limits(args.smoke, args.timeout_scale, overrides)
    budget = args.budget if args.budget is not None else (float("inf") if args.smoke else DEFAULT_BUDGET)
    if args.plan:
        print(format_plan(limits, estimates, DEFAULT_BUDGET if budget == float("inf") else budget))
        return 0
    # The command's own start counts: the budget is from this process's start to its end.
    deadline = started + budget - END_S
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
    steps = args.only or STEPS[STEPS.index(PARTS[args.part - 1][0]):]
    info = machine(args.smoke)
    summary = load_summary(out)
    if any(s.get("machine", {}).get("mode") != info["mode"] for s in summary["steps"].values()):
        summary = {"steps": {}}  # never mix smoke and GPU results in one summary
    work_root = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="gpu_check-"))
    print(f"gpu_check: {', '.join(steps)} ({info['mode']} mode; {info['gpu']}); budget "
          f"{'none' if budget == float('inf') else f'{budget:.0f} s'}; results in {out}", flush=True)

    def run_step(name: str) -> tuple[str, dict[str, Any], list[str]]:
        cache = work_root / ("checkpoints" if args.jobs == 1 else f"checkpoints-{name}")  # steps at once: no sharing
        ctx = Context(smoke=args.smoke, work=work_root / name, cache=cache, limits=limits,
                      echo=not args.quiet and args.jobs == 1)
        ctx.say(f"== {name} ==")
        t0 = time.perf_counter()
        left, limit = deadline - t0, step_limit(name, limits)
        if limit > left:  # could not be sure to finish: say so, and keep the time for the steps that fit
            row = Row(f"{name}: not run: budget", "SKIP", f"limit {limit:.0f} s, {max(left, 0):.0f} s of the "
                      f"{budget:.0f} s budget left", "run it in another lease: --only, or --part")
            ctx.say(f"SKIP  {row.check}: {row.figure}")
            return name, dict(status="not run: budget", seconds=0.0, date=utc_now(), machine=info, rows=[asdict(row)],
                              results={}, estimate=estimates[name], limit=limit), ctx.log
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
                          rows=[asdict(r) for r in rows], results=ctx.results, estimate=estimates[name],
                          limit=limit), ctx.log

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
    sys.exit(main(started=STARTED))
