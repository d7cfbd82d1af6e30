"""Reproduce one tier, experiment after experiment, with one progress line; resumable.

    python -m bnrepro.reproduce --scale long        # `make reproduce-long`
    python -m bnrepro.reproduce --scale long --parts fig2 depth
    python -m bnrepro.reproduce --scale cpu --parts sweep-mnist --make RUNS=/tmp/r/runs \\
        RESULTS=/tmp/r/results TRAIN_ARGS="trainer.max_steps=300"

The parts are the experiments of bnrepro.experiments.EXPERIMENTS that `make reproduce`
includes and that have a profile at this tier (conf/profile/<scale>/<config>.yaml; at the cpu
tier, every one). Each part is its own `make <part> SCALE=<scale>` (the same targets a user
runs by hand), logged to <runs>/logs/<part>.log, one after another on the machine's threads.

1. Plan: each part's training commands run with PLAN=<runs>/logs/plan.jsonl and append the
   runs they would train, with their steps (bnrepro.run.plan), training nothing.
2. Train and analyse each part. Every `--every` seconds one line says how many model-steps
   are done and left, how many runs finished, and an ETA from the rate measured in this
   invocation, each run's steps weighted by their FLOPs (bnrepro.run.plan: still a guide).
3. The report (bnrepro.report) over every tier's results.

The wall time of every invocation is kept, per part, in <runs>/logs/time.json
(bnrepro.run.ledger: rewritten with each progress line, so a kill loses at most one interval),
and their sum in <results>/reproduce_time.json: the tier's measured wall time, which the report
states and the last line prints.

Finished runs are not retrained (a run directory that holds a finished run resumes as done),
so after a kill or the end of a working session the same command continues where it stopped,
losing at most one checkpoint interval per run. A part that fails is reported with the end of
its log; the others still run, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from bnrepro.atomic import atomic_write_json
from bnrepro.config import CONF_DIR
from bnrepro.experiments import EXPERIMENTS, Experiment
from bnrepro.run import ledger, machine
from bnrepro.run.plan import Progress, progress, progress_line, read_plan, read_step_flops

CONF = CONF_DIR
ROOT = CONF_DIR.parent  # the checkout: its Makefile
SCALES = ("cpu", "long", "paper")
RATE_WINDOW_S = 15 * 60  # the ETA's rate: model-steps over (at most) the last 15 minutes
RATE_MIN_S = 60  # ... and over at least one minute


def has_profile(experiment: Experiment, scale: str) -> bool:
    """Whether `experiment` has a profile at `scale` (the cpu one is its own config)."""
    return scale == "cpu" or any(
        (CONF / "profile" / scale / Path(c).name).is_file() for c in experiment.configs)


def parts_of(scale: str, chosen: list[str] | None) -> list[str]:
    """The experiments this tier reproduces, in the registry's order (or `chosen`, checked)."""
    tier = [name for name, e in EXPERIMENTS.items() if e.in_reproduce and has_profile(e, scale)]
    if not chosen:
        return tier
    unknown = [p for p in chosen if p not in tier]
    if unknown:
        raise SystemExit(f"error: {', '.join(unknown)}: not an experiment of the {scale} tier; "
                         f"its experiments are: {', '.join(tier)}")
    return chosen


def make_var(make_args: list[str], name: str, default: str) -> str:
    """The value of `name` among the VAR=value arguments passed on to make, else `default`."""
    for arg in make_args:
        key, _, value = arg.partition("=")
        if key == name:
            return value
    return default


class RateMeter:
    """Work (FLOPs, or model-steps) per second over a sliding window of this invocation's
    samples."""

    def __init__(self) -> None:
        self.samples: collections.deque[tuple[float, float]] = collections.deque()

    def add(self, done: float, now: float | None = None) -> float | None:
        now = time.monotonic() if now is None else now
        self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[1][0] >= RATE_WINDOW_S:
            self.samples.popleft()
        t0, s0 = self.samples[0]
        if now - t0 < RATE_MIN_S or done <= s0:
            return None
        return (done - s0) / (now - t0)


class ProgressPrinter(threading.Thread):
    """Prints the progress line every `every` seconds until stopped, and charges the time
    since the last line to the part under way (`keeper`, when given)."""

    def __init__(self, plan: Path, every: float, keeper: TimeKeeper | None = None) -> None:
        super().__init__(daemon=True)
        self.plan, self.flops, self.every = read_plan(plan), read_step_flops(plan), every
        self.meter, self.part, self.keeper = RateMeter(), "planning", keeper
        self.done = threading.Event()

    def line(self) -> str:
        p: Progress = progress(self.plan, self.flops)
        return progress_line(p, self.meter.add(p.work_done), self.part)

    def run(self) -> None:
        while not self.done.wait(self.every):
            print(f"  progress: {self.line()}", flush=True)
            if self.keeper is not None:
                self.keeper.tick(self.part)


class TimeKeeper:
    """The tier's wall time (bnrepro.run.ledger): this invocation's entry in the run store's
    <runs>/logs/time.json, and the sum of every invocation copied to
    <results>/reproduce_time.json, where the report reads it."""

    def __init__(self, logs: Path, results: Path, scale: str) -> None:
        self.ledger = ledger.Ledger(logs / "time.json", this_machine())
        self.results, self.scale = results, scale

    def tick(self, part: str) -> None:
        self.ledger.tick(part)
        self._publish()

    def close(self, part: str, status: str) -> ledger.TierTime:
        self.ledger.close(part, status)
        return self._publish()

    def _publish(self) -> ledger.TierTime:
        spent = self.ledger.total()
        atomic_write_json(self.results / "reproduce_time.json",
                          {"scale": self.scale, **spent.as_dict()})
        return spent


def this_machine() -> str:
    """The CPU (and GPU, where torch sees one) that an invocation ran on."""
    import torch

    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{machine.cpu_model()}, {os.cpu_count()} cores{gpu}"


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, children first (Linux /proc; [] where there is none)."""
    found = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            kids = [int(k) for k in children.read_text().split()]
        except OSError:
            continue  # the task ended meanwhile
        for kid in kids:
            found += [kid, *descendants(kid)]
    return found


def stop_descendants(signum: int, _frame: object) -> None:
    """Pass `signum` on to every process below this one (a trainer stopped this way loses at most
    one checkpoint interval), then exit as killed by it."""
    for pid in descendants(os.getpid()):
        with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
            os.kill(pid, signum)
    sys.exit(128 + signum)


def run_make(target: str, make_args: list[str], log: Path) -> int:
    """`make <target> ARGS` with its output in `log`; its exit status."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        return subprocess.call(["make", "--no-print-directory", target, *make_args],
                               stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)


def tail(log: Path, lines: int = 20) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def plan(parts: list[str], make_args: list[str], logs: Path) -> Path:
    """Every part's runs and steps, in <logs>/plan.jsonl (rewritten each time)."""
    plan_path = logs / "plan.jsonl"
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_text("")
    for part in parts:
        log = logs / f"plan-{part}.log"
        if run_make(part, [*make_args, f"PLAN={plan_path.resolve()}"], log):
            raise SystemExit(f"error: planning {part} failed; the end of {log}:\n{tail(log)}")
    return plan_path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", choices=SCALES, default="long")
    ap.add_argument("--parts", nargs="+", help="only these experiments (default: the tier's)")
    ap.add_argument("--every", type=float, default=60.0, help="seconds between progress lines")
    ap.add_argument("--make", nargs="*", default=[], metavar="VAR=VALUE",
                    help="variables passed on to make (RUNS, RESULTS, TRAIN_ARGS, ...)")
    ap.add_argument("--no-report", action="store_true", help="skip the report at the end")
    args = ap.parse_args(argv)
    parts = parts_of(args.scale, args.parts)
    make_args = [f"SCALE={args.scale}", *args.make]
    tier_dir = "" if args.scale == "cpu" else f"/{args.scale}"
    # make runs in the checkout: relative folders are the checkout's
    runs = ROOT / make_var(make_args, "RUNS", f"runs{tier_dir}")
    results = ROOT / make_var(make_args, "RESULTS", f"results{tier_dir}")
    logs = runs / "logs"
    # SIGTERM (the end of a session, `kill`) reaches the make this runs and the trainers under
    # it: make alone would die and leave its children training (tests/test_reproduce.py).
    signal.signal(signal.SIGTERM, stop_descendants)

    start = time.time()
    print(f"reproduce {args.scale}: {', '.join(parts)}, then the report (logs: {logs}/)",
          flush=True)
    logs.mkdir(parents=True, exist_ok=True)
    try:
        keeper = TimeKeeper(logs, results, args.scale)
    except ValueError as err:  # a damaged ledger: nothing has started yet
        raise SystemExit(f"error: {err}") from None
    part, failed, status = "planning", [], "stopped"  # stopped: killed, or an error
    try:
        printer = ProgressPrinter(plan(parts, make_args, logs), args.every, keeper)
        keeper.tick(part)
        print(f"  plan: {printer.line()}", flush=True)
        printer.start()
        try:
            for part in parts:
                printer.part = part
                t0, log = time.time(), logs / f"{part}.log"
                print(f"  {part} started (log: {log})", flush=True)
                if run_make(part, make_args, log):
                    failed.append(part)
                    print(f"error: {part} failed; the end of {log}:\n{tail(log)}", flush=True)
                else:
                    print(f"  {part} done in {time.time() - t0:.0f} s", flush=True)
                keeper.tick(part)
        finally:
            printer.done.set()
        print(f"  progress: {printer.line()}", flush=True)
        part = "report"
        if not args.no_report:
            report_root = results if args.scale == "cpu" else results.parent
            subprocess.call([sys.executable, "-m", "bnrepro.report", "--results",
                             str(report_root)], cwd=ROOT)
        status = "done" if not failed else f"finished with errors in {', '.join(failed)}"
    finally:
        spent = keeper.close(part, status)
    print(f"reproduce {args.scale}: {status} in {time.time() - start:.0f} s; the tier so far: "
          f"{ledger.duration(spent.seconds)} over {spent.invocations} invocation"
          f"{'s' if spent.invocations != 1 else ''} ({logs / 'time.json'})", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
