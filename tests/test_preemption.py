"""Preemption (grpo/machinery/interrupt.py): a job scheduler's signal stops a run like Ctrl-C, with
the last completed step saved and exit code 75, in one process and on every torchrun rank together;
workers whose torchrun launcher was SIGKILLed stop instead of training on as orphans."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import train
from grpo.machinery import interrupt as interrupt_module
from grpo.machinery.checkpoint import latest_checkpoint
from grpo.machinery.interrupt import EX_INTERRUPTED, EX_PREEMPTED, PREEMPTED_FILE, Interrupt, Stopped
from test_distributed import ENV, torchrun_cmd, weights
from tiny_run import metrics, without_times, write_config

ROOT = Path(__file__).resolve().parents[1]
STEPS = 8
TRAIN = {"steps": STEPS, "eval_every": 0, "save_every": 100}
# The runs to signal: tests/dist_worker.py train (train.py with a reward a random model varies on), its
# steps from the third on begun 0.3 s late (tiny steps take 0.06 s), so the signal sent once two
# steps are logged lands long before the run could end.
SLOWED = [sys.executable, __file__, "train"]


def start(cmd: list[str], out: Path) -> subprocess.Popen:
    """Files, not pipes: an orphaned worker must not keep the test waiting on a pipe."""
    return subprocess.Popen(cmd, cwd=ROOT, stdout=open(out.with_suffix(".out"), "w"),
                            stderr=open(out.with_suffix(".err"), "w"), env=ENV)


def after_steps(run: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until `n` steps of `run` are logged."""
    log = run / "metrics.jsonl"
    deadline = time.time() + timeout
    while not (log.is_file() and log.read_text().count("\n") >= n):
        assert proc.poll() is None and time.time() < deadline, "the run did not get going"
        time.sleep(0.05)


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert (wa[name] - wb[name]).abs().max() <= 1e-6, name


def saved_step(run: Path) -> int:
    ckpt = latest_checkpoint(run)
    return json.loads((ckpt / "trainer_state.json").read_text())["step"]


def assert_stopped_at_the_last_logged_step(run: Path, err: str, launcher: str) -> int:
    step = saved_step(run)
    assert 2 <= step < STEPS
    assert max(r["step"] for r in metrics(run)) == step  # the last completed step: nothing later was logged
    assert err.count(f"continue with: {launcher} train.py --resume {run}") == 1, err[-3000:]
    marker = json.loads((run / PREEMPTED_FILE).read_text())
    assert marker["step"] == step and marker["exit_code"] == EX_PREEMPTED
    return step


def test_sigterm_saves_the_last_completed_step_exits_75_and_resumes_exactly(tmp_path, tiny_model):
    full = write_config(tmp_path, tiny_model, out="full", train=TRAIN)
    cut = write_config(tmp_path, tiny_model, out="cut", train=TRAIN)
    proc = start([*SLOWED, "--config", str(cut)], tmp_path / "cut")
    after_steps(tmp_path / "cut", 2, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == EX_PREEMPTED
    err = (tmp_path / "cut.err").read_text()
    assert "Traceback" not in err and "SIGTERM: saving the checkpoint of step" in (tmp_path / "cut.out").read_text()
    assert_stopped_at_the_last_logged_step(tmp_path / "cut", err, "python")
    assert train.main(["--config", str(full)]) == 0
    assert train.main(["--resume", str(tmp_path / "cut")]) == 0
    assert not (tmp_path / "cut" / PREEMPTED_FILE).exists()
    a, b = without_times(metrics(tmp_path / "full")), without_times(metrics(tmp_path / "cut"))
    assert a == b and any(r["trained_episodes"] for r in a)
    assert_same_weights(latest_checkpoint(tmp_path / "cut"), latest_checkpoint(tmp_path / "full"))


def test_sigusr1_stops_a_run_whose_stop_signals_name_it(tmp_path, tiny_model):
    cfg = write_config(tmp_path, tiny_model, train=TRAIN | {"stop_signals": ["SIGUSR1"]})
    proc = start([*SLOWED, "--config", str(cfg)], tmp_path / "run")
    after_steps(tmp_path / "run", 2, proc)
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=60) == EX_PREEMPTED
    assert_stopped_at_the_last_logged_step(tmp_path / "run", (tmp_path / "run.err").read_text(), "python")


class Ranks:
    """A stand-in for Dist under torchrun: rank 0 of several, whose sums are the values given."""
    launched, main = True, True

    def sum(self, values):
        return list(values)


class One(Ranks):
    launched = False


@pytest.fixture
def interrupts():
    """Interrupt(dist, signals, grace), each restored after the test, and a clock to move."""
    made, clock = [], SimpleNamespace(now=100.0)

    def make(dist, signals=("SIGTERM",), grace=60.0):
        made.append(Interrupt(dist, list(signals), grace))
        return made[-1]

    make.clock = clock
    with pytest.MonkeyPatch.context() as m:
        m.setattr(interrupt_module, "time", SimpleNamespace(monotonic=lambda: clock.now))
        m.delenv("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", raising=False)
        m.delenv("PET_SHUTDOWN_TIMEOUT", raising=False)
        try:
            yield make
        finally:
            for interrupt in reversed(made):
                interrupt.restore()


def test_the_configured_signals_are_the_ones_handled_and_restored():
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)}
    stop = Interrupt(One(), ["SIGUSR2"])
    try:
        assert signal.getsignal(signal.SIGTERM) is before[signal.SIGTERM]  # not named: left as it was
        assert signal.getsignal(signal.SIGUSR1) is before[signal.SIGUSR1]
        assert signal.getsignal(signal.SIGUSR2) == stop._handle == signal.getsignal(signal.SIGINT)
        with pytest.raises(Stopped) as e:  # one process, no update yet: the step is abandoned at once
            os.kill(os.getpid(), signal.SIGUSR2)
            time.sleep(1)
        assert e.value.code == EX_PREEMPTED and e.value.reason == "SIGUSR2"
    finally:
        stop.restore()
    assert {s: signal.getsignal(s) for s in before} == before


def test_one_process_finishes_a_step_past_its_first_update_and_holds_signals_during_saves(interrupts):
    stop = interrupts(One())
    stop.first_update()
    stop._handle(signal.SIGINT, None)  # held: the update has begun
    with pytest.raises(Stopped) as e:
        stop.at_boundary()
    assert e.value.code == EX_INTERRUPTED and e.value.reason == "Ctrl-C"
    with stop.saving():  # the stop's own save: a second signal does not cut it short
        stop._handle(signal.SIGTERM, None)
    other = interrupts(One())
    with pytest.raises(Stopped) as e:
        with other.saving():  # a periodic save: the signal is acted on once it is written
            other._handle(signal.SIGTERM, None)
            written = True
    assert written and e.value.code == EX_PREEMPTED


def test_ranks_finish_a_step_that_fits_the_grace_period_and_abandon_one_that_does_not(interrupts):
    """Under torchrun no signal raises where it lands: the ranks decide from summed votes, at the
    step's first update (abandon if finishing would overrun the grace) and at its end (stop)."""
    clock = interrupts.clock
    first = interrupts(Ranks())
    assert first.grace == 30.0  # torchrun SIGKILLs its workers 30 s after forwarding a signal
    first._handle(signal.SIGTERM, None)  # during the rollout: noted, not raised
    with pytest.raises(Stopped) as e:  # no step measured yet: abandoning is the safe side
        first.abandon_if(first.first_update())
    assert e.value.code == EX_PREEMPTED

    stop = interrupts(Ranks())
    for _ in range(2):  # two steps: 4 s from the first update to the end, then a 3 s save
        stop.abandon_if(stop.first_update())
        clock.now += 4
        stop.at_boundary()
    with stop.saving():
        clock.now += 3
    stop._handle(signal.SIGTERM, None)
    clock.now += 20  # the rest of the rollout: 20 + 4 + 3 s < 30 s
    stop.abandon_if(stop.first_update())  # fits: the step completes ...
    with pytest.raises(Stopped):
        stop.at_boundary()  # ... and every rank stops at its end

    late = interrupts(Ranks())
    late._tails.append(4.0)
    late._handle(signal.SIGTERM, None)
    clock.now += 27  # 27 + 4 s > 30 s
    votes = late.first_update()
    assert votes[0] == 1
    with pytest.raises(Stopped):
        late.abandon_if(votes)

    quiet = interrupts(Ranks())  # got no signal itself: the summed votes of the others decide alike
    quiet.abandon_if([0.0, 0.0, 0.0, 1.0])  # asked elsewhere, but in time: finish
    with pytest.raises(Stopped):
        quiet.abandon_if([1.0, 0.0, 0.0, 1.0])
    quiet.at_boundary()  # nothing asked of anyone: go on
    interrupt_module._PARENT, parent = -1, interrupt_module._PARENT
    try:
        with pytest.raises(Stopped) as e:  # an orphan: its launcher is gone
            quiet.at_boundary()
    finally:
        interrupt_module._PARENT = parent
    assert e.value.code == EX_PREEMPTED and e.value.reason == "the torchrun launcher died"


def test_sigterm_to_torchrun_stops_every_rank_at_the_same_saved_step_and_resume_is_exact(tmp_path, tiny_model):
    """torchrun forwards SIGTERM to both workers: they agree at a step boundary, save it together and
    exit 75 (torchrun itself exits 1, so rank 0 also writes preempted.json); the resumed run equals
    an uninterrupted 2-rank run."""
    full = write_config(tmp_path, tiny_model, out="full", train=TRAIN)
    cut = write_config(tmp_path, tiny_model, out="cut", train=TRAIN)
    proc = start(torchrun_cmd(*SLOWED[1:], "--config", str(cut)), tmp_path / "cut")
    after_steps(tmp_path / "cut", 2, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 1  # torchrun's own exit code after a signal
    err = (tmp_path / "cut.err").read_text()
    step = assert_stopped_at_the_last_logged_step(tmp_path / "cut", err, "torchrun --nproc_per_node=2")
    ckpt = latest_checkpoint(tmp_path / "cut")
    assert len(list((ckpt / "optimizer").glob("*.distcp"))) == 2  # both ranks wrote their shards of that step
    assert f"SIGTERM: saving the checkpoint of step {step}" in (tmp_path / "cut.out").read_text()
    for cmd in (["--config", str(full)], ["--resume", str(tmp_path / "cut")]):
        res = subprocess.run(torchrun_cmd("tests/dist_worker.py", "train", *cmd), cwd=ROOT, capture_output=True,
                             text=True, timeout=240, env=ENV)
        assert res.returncode == 0, res.stderr[-3000:]
    a, b = without_times(metrics(tmp_path / "full")), without_times(metrics(tmp_path / "cut"))
    assert a == b and any(r["trained_episodes"] for r in a)
    assert_same_weights(latest_checkpoint(tmp_path / "cut"), latest_checkpoint(tmp_path / "full"))


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc (Linux)")
def test_workers_whose_launcher_is_killed_stop_at_the_next_step(tmp_path, tiny_model):
    cfg = write_config(tmp_path, tiny_model, train=TRAIN | {"steps": 1000})
    pids = tmp_path / "run.pids"
    proc = start(torchrun_cmd(*SLOWED[1:], str(pids), "--config", str(cfg)), tmp_path / "run")
    after_steps(tmp_path / "run", 2, proc)
    workers = [int((pids / f"rank{r}").read_text()) for r in range(2)]
    proc.kill()  # SIGKILL: torchrun can forward nothing; its workers live in sessions of their own
    proc.wait()
    deadline = time.time() + 30
    while any(map(alive, workers)) and time.time() < deadline:
        time.sleep(0.1)
    still = [pid for pid in workers if alive(pid)]
    for pid in still:
        os.kill(pid, signal.SIGKILL)
    assert not still, "orphaned workers kept training"
    # They agreed (both saw their launcher die) and saved the last completed step together.
    assert saved_step(tmp_path / "run") == max(r["step"] for r in metrics(tmp_path / "run"))
    assert "the torchrun launcher died" in (tmp_path / "run.out").read_text()


if __name__ == "__main__":  # SLOWED
    import runpy

    from grpo.trainer import Trainer

    train_step = Trainer.train_step

    def slowed(self):
        time.sleep(0.3 if self.step >= 2 else 0)
        return train_step(self)

    Trainer.train_step = slowed
    sys.argv = [str(ROOT / "tests" / "dist_worker.py"), *sys.argv[1:]]
    runpy.run_path(sys.argv[0], run_name="__main__")
