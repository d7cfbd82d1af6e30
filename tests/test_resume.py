"""A run killed mid-way and rerun in the same directory ends exactly as one never killed."""

import signal
import subprocess
import sys
import time

import pytest

from bnrepro.store import read_metrics, read_summary
from tests.conftest import REPO

TIMING_KEYS = ("wall_time_s", "train_time_s", "resumed_from_step")
RUN = ["experiment=fig1_mnist", "model.dropout=0.2", "trainer.max_steps=2000",
       "trainer.eval_every=250", "trainer.checkpoint_every=500", "trainer.progress=false"]


def without_timing(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in TIMING_KEYS}


def kill_when_checkpointed(cmd: list[str], run_dir, after_step: int) -> None:
    """Start cmd, SIGKILL it once run_dir has a checkpoint and has logged `after_step`."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        rows = read_metrics(run_dir)
        if (run_dir / "checkpoint.pt").exists() and rows and rows[-1]["step"] >= after_step:
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the run finished before it could be killed; lengthen it"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert read_summary(run_dir)["status"] == "running"  # a kill leaves no final summary


@pytest.mark.parametrize("launcher", ["single", "population"])
def test_sigkill_then_rerun_is_bit_identical(launcher, run_train, tmp_path, mirror):
    if launcher == "single":
        args = {name: [*RUN, f"hydra.run.dir={tmp_path / name}"] for name in ("killed", "clean")}
        dirs = {name: [tmp_path / name] for name in args}
    else:  # two seeds trained as one population, each member with its own checkpoint
        args = {name: ["-m", *RUN, "model.norm=bn", "seed=0,1", "hydra/launcher=population",
                       f"hydra.sweep.dir={tmp_path / name}", "hydra.sweep.subdir=s${seed}"]
                for name in ("killed", "clean")}
        dirs = {name: [tmp_path / name / f"s{s}" for s in (0, 1)] for name in args}
    kill_when_checkpointed([sys.executable, "-m", "bnrepro.train", *args["killed"]],
                           dirs["killed"][-1], after_step=750)
    run_train(*args["killed"])
    run_train(*args["clean"])
    for killed, clean in zip(dirs["killed"], dirs["clean"], strict=True):
        assert (killed / "metrics.jsonl").read_text() == (clean / "metrics.jsonl").read_text()
        resumed, uninterrupted = read_summary(killed), read_summary(clean)
        assert resumed["resumed_from_step"] in (500, 1000, 1500)
        assert without_timing(resumed) == without_timing(uninterrupted)


def test_rerunning_a_finished_run_trains_nothing(run_train, tmp_path, mirror):
    args = ["experiment=fig1_mnist", "debug=smoke", f"hydra.run.dir={tmp_path}"]
    run_train(*args)
    first = (tmp_path / "metrics.jsonl").read_text()
    run_train(*args)
    assert (tmp_path / "metrics.jsonl").read_text() == first
    assert read_summary(tmp_path)["status"] == "completed"


def test_resuming_with_another_config_is_refused(run_train, tmp_path, mirror):
    run_train("experiment=fig1_mnist", "debug=smoke", f"hydra.run.dir={tmp_path}")
    result = run_train("experiment=fig1_mnist", "debug=smoke", "optim.lr=0.3",
                       f"hydra.run.dir={tmp_path}", check=False)
    assert result.returncode == 2
    assert "optim.lr: 0.1 -> 0.3" in result.stderr and "trainer.resume=false" in result.stderr
    assert read_summary(tmp_path)["status"] == "completed"  # the finished run is untouched
