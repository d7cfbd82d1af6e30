"""A tier's plan, its progress line, and `python -m bnrepro.reproduce` killed and rerun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bnrepro.experiments import EXPERIMENTS
from bnrepro.models.deep_linear import DeepLinearNet
from bnrepro.reproduce import RATE_MIN_S, RateMeter, has_profile, parts_of
from bnrepro.run.ledger import read as read_ledger
from bnrepro.run.plan import (
    PLAN_ENV,
    Progress,
    add_to_plan,
    progress,
    progress_line,
    read_plan,
    read_step_flops,
)
from tests.conftest import REPO, compose_dln


def test_plan_mode_lists_every_job_with_its_steps_and_trains_none(run_train, tmp_path, mirror):
    plan = tmp_path / "plan.jsonl"
    sweep = tmp_path / "sweep"
    run_train("-m", "experiment=fig1_mnist", "seed=0,1", "trainer.max_steps=123",
              "trainer.eval_every=123",
              f"hydra.sweep.dir={sweep}", env={PLAN_ENV: str(plan)})
    planned = read_plan(plan)
    run_dirs = {p.parent.parent for p in sweep.rglob(".hydra/config.yaml")}
    assert set(planned) == {d.resolve() for d in run_dirs} and len(planned) == 4
    assert set(planned.values()) == {123}
    trained = [p.name for d in run_dirs for p in d.iterdir()
               if p.name in ("summary.json", "metrics.jsonl") or p.suffix == ".pt"]
    assert trained == []


def test_a_plan_weighs_each_run_by_the_flops_of_one_members_step_at_its_batch(run_train,
                                                                              tmp_path, mirror):
    plan = tmp_path / "plan.jsonl"
    runs = {}
    for name, args in {"pair": ["seed=0,1"], "solo": ["seed=0"],
                       "double": ["seed=0", "trainer.batch_size=120"]}.items():
        run_train("-m", "experiment=fig1_mnist", "model.norm=bn", *args,
                  f"hydra.sweep.dir={tmp_path / name}", env={PLAN_ENV: str(plan)})
        runs[name] = [d for d in read_plan(plan) if d.is_relative_to(tmp_path / name)]
    flops = read_step_flops(plan)
    pair, solo, double = ([flops[d] for d in runs[k]] for k in ("pair", "solo", "double"))
    # one member's step, not its population's: two seeds trained together each weigh as one
    assert len(pair) == 2 and pair[0] == pair[1] == solo[0] > 0
    assert double[0] == pytest.approx(2 * solo[0], rel=1e-6)  # batch 120 against fig1's 60
    p = progress(read_plan(plan), flops)
    assert p.steps_total == 4 * 50_000  # fig1's steps, each run
    assert p.flops_total == pytest.approx(50_000 * (3 * solo[0] + double[0]))


def test_a_plan_with_a_run_the_trainer_would_refuse_fails_and_plans_nothing(run_train,
                                                                           tmp_path, mirror):
    plan = tmp_path / "plan.jsonl"
    result = run_train("-m", "experiment=fig1_mnist", "model.norm=bn", "seed=0",
                       "trainer.eval_every=500", "trainer.test_every=750",
                       f"hydra.sweep.dir={tmp_path / 'sweep'}", env={PLAN_ENV: str(plan)},
                       check=False)
    assert result.returncode != 0
    assert "trainer.test_every=750 is not allowed" in result.stderr
    assert "nothing was planned" in result.stderr
    assert not plan.exists() or read_plan(plan) == {}


def test_the_deep_linear_net_plans_every_member_and_trains_none(tmp_path):
    plan, out = tmp_path / "plan.jsonl", tmp_path / "dln"
    subprocess.run([sys.executable, "-m", "bnrepro.train_dln", f"out_dir={out}", "steps=77",
                    "norms=[none,bn]", "lrs=[1e-6,1e-7]", "seeds=[0,1,2]"], cwd=REPO, check=True,
                   env={**os.environ, PLAN_ENV: str(plan)}, capture_output=True)
    planned = read_plan(plan)
    assert len(planned) == 2 * 2 * 3 and set(planned.values()) == {77}
    assert all(d.parent == out.resolve() for d in planned)
    # its step's FLOPs: the net's own, counted, within what the first layer's missing input
    # gradient leaves out
    cfg = compose_dln([])
    net = DeepLinearNet([0], cfg.dim, cfg.depth, "none", cfg.model)
    with FlopCounterMode(display=False) as counter:
        net(torch.randn(cfg.samples, cfg.dim)).sum().backward()
    counted = set(read_step_flops(plan).values())
    assert len(counted) == 1 and counted.pop() == pytest.approx(counter.get_total_flops(),
                                                                rel=0.05)
    assert not out.exists() or not list(out.rglob("*.json*"))  # nothing trained


def _run(root: Path, name: str, status: str | None, steps: list[int] | None,
         cut_last_row: bool = False) -> Path:
    d = root / name
    d.mkdir(parents=True)
    if status is not None:
        (d / "summary.json").write_text(json.dumps({"status": status}))
    if steps is not None:
        rows = "".join(json.dumps({"step": s, "val/acc": 0.5}) + "\n" for s in steps)
        (d / "metrics.jsonl").write_text(rows + ('{"step": 9' if cut_last_row else ""))
    return d


def test_progress_counts_finished_runs_whole_and_running_ones_to_their_last_row(tmp_path):
    runs = {_run(tmp_path, "done", "completed", [0, 50, 100]): 100,
            _run(tmp_path, "diverged", "diverged", [0, 10]): 100,   # will train no more
            _run(tmp_path, "killed", "interrupted", [0, 20, 30], cut_last_row=True): 100,
            _run(tmp_path, "running", "running", [0, 40]): 60,
            _run(tmp_path, "planned", None, None): 80}
    plan = tmp_path / "plan.jsonl"
    add_to_plan(plan, list(runs), list(runs.values()))
    add_to_plan(plan, [tmp_path / "done"], [100])  # planned twice: counted once
    assert read_plan(plan) == {d.resolve(): n for d, n in runs.items()}
    p = progress(read_plan(plan))
    assert p == Progress(steps_done=100 + 100 + 30 + 40 + 0, steps_total=440,
                         runs_done=2, runs_total=5)
    assert p.steps_left == 440 - 270


def test_progress_weighs_steps_by_their_flops_and_the_eta_follows_the_flops_left(tmp_path):
    big = _run(tmp_path, "big", "running", [0, 50])     # 50 of 100 steps, 1 GFLOP each
    small = _run(tmp_path, "small", None, None)          # 0 of 1,000 steps, 1 MFLOP each
    plan = tmp_path / "plan.jsonl"
    add_to_plan(plan, [big, small], [100, 1000], [1e9, 1e6])
    p = progress(read_plan(plan), read_step_flops(plan))
    assert (p.steps_done, p.steps_total) == (50, 1100)
    assert (p.flops_done, p.flops_total) == (50e9, 100e9 + 1e9)
    line = progress_line(p, rate=p.work_done / 3600, part="fig2")  # 50 GFLOP in an hour
    # what is left is 51 GFLOP, not 1,050 model-steps at 50 an hour
    assert "ETA 1 h 01 min" in line and "GFLOP/s" in line
    add_to_plan(plan, [tmp_path / "uncounted"], [10])
    assert read_step_flops(plan) is None  # one run without a count: model-steps, unweighted


def test_rate_is_measured_over_at_least_a_minute_of_this_invocation():
    meter = RateMeter()
    assert meter.add(1000, now=0.0) is None  # steps done before this invocation: not a rate
    assert meter.add(1300, now=RATE_MIN_S / 2) is None  # too short to measure
    assert meter.add(1000 + 600 * 3, now=600.0) == pytest.approx(3.0)
    assert meter.add(1000 + 600 * 3, now=700.0) == pytest.approx(1800 / 700)


def test_progress_line_says_done_left_and_an_eta_from_the_rate():
    p = Progress(steps_done=1_000, steps_total=73_000, runs_done=3, runs_total=40)
    line = progress_line(p, rate=10.0, part="fig2")
    assert "1,000 of 73,000 model-steps" in line and "72,000 left" in line
    assert "3 of 40 runs finished" in line and "now: fig2" in line
    assert "ETA 2 h 00 min" in line  # 72,000 steps at 10 per second
    assert "ETA after the first minute" in progress_line(p, rate=None, part="fig2")


def test_the_long_tier_is_the_experiments_with_a_long_profile():
    tier = parts_of("long", None)
    assert tier == [n for n, e in EXPERIMENTS.items() if e.in_reproduce and has_profile(e, "long")]
    for name in tier:
        assert any((REPO / "conf" / "profile" / "long" / Path(c).name).is_file()
                   for c in EXPERIMENTS[name].configs)
    assert parts_of("cpu", None) == [n for n, e in EXPERIMENTS.items() if e.in_reproduce]
    with pytest.raises(SystemExit, match="not an experiment of the long tier"):
        parts_of("long", ["no-such-experiment"])


# A tiny tier: Fig. 1's two populations (one seed each) for 300 steps, checkpointed every 50.
TINY = ("seed=0 trainer.max_steps=300 trainer.eval_every=50 trainer.checkpoint_every=50 "
        "trainer.progress=false dataset.root=data")


def _reproduce(root: Path) -> subprocess.Popen:
    args = ["--scale", "cpu", "--parts", "fig1", "--every", "1", "--no-report", "--make",
            f"RUNS={root / 'runs'}", f"RESULTS={root / 'results'}", f"TRAIN_ARGS={TINY}"]
    env = {**os.environ, "WANDB_MODE": "offline"}
    return subprocess.Popen([sys.executable, "-m", "bnrepro.reproduce", *args], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _results(root: Path) -> dict[str, object]:
    """Every result file but the PDFs (they carry their creation time) and the wall-time
    ledger's sum (it is a time: test_a_reproduce_killed_midway... checks it)."""
    files = sorted(p for p in (root / "results").iterdir()
                   if p.suffix != ".pdf" and p.name != "reproduce_time.json")
    assert files, f"no results in {root / 'results'}"
    return {p.name: p.read_bytes() for p in files}


@pytest.mark.slow
def test_a_reproduce_killed_midway_ends_with_the_results_of_an_uninterrupted_one(tmp_path,
                                                                                  mirror):
    whole = _reproduce(tmp_path / "whole")
    out, _ = whole.communicate(timeout=600)
    assert whole.returncode == 0, out

    killed_root = tmp_path / "killed"
    killed = _reproduce(killed_root)
    deadline = time.time() + 300
    while not list((killed_root / "runs").rglob("checkpoint-000000100.pt")):
        assert killed.poll() is None and time.time() < deadline, "no checkpoint to resume from"
        time.sleep(0.2)
    os.killpg(killed.pid, signal.SIGKILL)  # the orchestrator, make and the trainers at once
    killed.wait()
    summaries = [json.loads(p.read_text()) for p in (killed_root / "runs").rglob("summary.json")]
    assert summaries and any(s["status"] != "completed" for s in summaries), \
        "the kill came after training had ended: nothing was interrupted"

    rerun = _reproduce(killed_root)
    out, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, out
    assert "model-steps done" in out
    assert _results(killed_root) == _results(tmp_path / "whole")
    # Both invocations' wall time counts: the killed one up to its last progress line
    entries = read_ledger(killed_root / "runs" / "logs" / "time.json")
    assert [e["status"] for e in entries] == ["running", "done"]
    assert entries[0]["seconds"] > 0 and entries[0]["parts"].get("fig1", 0) > 0
    spent = json.loads((killed_root / "results" / "reproduce_time.json").read_text())
    assert spent["invocations"] == 2
    assert spent["seconds"] == pytest.approx(sum(e["seconds"] for e in entries), abs=0.2)
    assert "the tier so far" in out and "over 2 invocations" in out


@pytest.mark.slow
def test_sigterm_to_the_orchestrator_stops_the_trainers_under_it_too(tmp_path, mirror):
    from bnrepro.reproduce import descendants

    proc = _reproduce(tmp_path)
    deadline = time.time() + 300
    while not any("bnrepro.train" in _cmdline(p) for p in descendants(proc.pid)):
        assert proc.poll() is None and time.time() < deadline, "no trainer started"
        time.sleep(0.2)
    below = descendants(proc.pid)
    proc.send_signal(signal.SIGTERM)  # the orchestrator alone, as `kill PID` does
    proc.communicate(timeout=60)
    time.sleep(2)
    alive = [p for p in below if Path(f"/proc/{p}").exists() and _cmdline(p)]
    assert alive == [], f"left running: {[_cmdline(p) for p in alive]}"
    [entry] = read_ledger(tmp_path / "runs" / "logs" / "time.json")
    assert entry["status"] == "stopped" and entry["seconds"] > 0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_a_damaged_time_ledger_stops_reproduce_with_one_line_before_anything_runs(tmp_path):
    logs = tmp_path / "runs" / "logs"
    logs.mkdir(parents=True)
    (logs / "time.json").write_text("{cut sh")
    done = subprocess.run([sys.executable, "-m", "bnrepro.reproduce", "--scale", "cpu",
                           "--parts", "fig1", "--no-report", "--make",
                           f"RUNS={tmp_path / 'runs'}", f"RESULTS={tmp_path / 'results'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "error:" in done.stderr and "not a time ledger" in done.stderr
    assert not (logs / "plan.jsonl").exists()
