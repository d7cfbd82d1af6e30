"""A run killed mid-way and rerun in the same directory ends exactly as one never killed; a
finished run is never retrained; a directory is trained by one process at a time."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bnrepro.optim import PopulationSGD
from bnrepro.run import checkpoint
from bnrepro.run.store import read_metrics, read_summary
from tests.conftest import REPO

TIMING_KEYS = ("wall_time_s", "train_time_s", "resumed_from_step")
# Fig. 1's net with dropout (its RNG must resume too), sized so a run takes seconds.
RUN = ["experiment=fig1_mnist", "model.dropout=0.2", "trainer.max_steps=1000",
       "trainer.eval_every=125", "trainer.checkpoint_every=250", "trainer.population_batches=10",
       "probe.num_examples=200", "trainer.progress=false"]
SMOKE = ["experiment=fig1_mnist", "debug=smoke"]


def without_timing(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in TIMING_KEYS}


def start(args: list[str], cwd: Path = REPO) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "offline"}
    return subprocess.Popen([sys.executable, "-m", "bnrepro.train", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for(proc: subprocess.Popen, run_dir: Path, step: int, checkpointed: bool) -> None:
    """Until run_dir has logged `step` (and holds a checkpoint, if asked)."""
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        rows = read_metrics(run_dir)
        if rows and rows[-1]["step"] >= step and (checkpoint.steps(run_dir) or not checkpointed):
            return
        time.sleep(0.05)
    raise AssertionError("the run finished (or hung) before it could be caught; lengthen it")


def kill_at(args: list[str], run_dir: Path, step: int, checkpointed: bool = True) -> None:
    """Run `python -m bnrepro.train args` and SIGKILL it once run_dir has logged `step`."""
    proc = start(args)
    wait_for(proc, run_dir, step, checkpointed)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert read_summary(run_dir)["status"] == "running"  # a kill leaves no final summary


def mtimes(run_dir: Path) -> dict[str, int]:
    """Modification times of the files a rerun must not rewrite."""
    return {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()
            if p.is_file() and p.name not in (".lock", "train.log")}


def assert_same_runs(killed: list[Path], clean: list[Path]) -> None:
    for a, b in zip(killed, clean, strict=True):
        assert (a / "metrics.jsonl").read_text() == (b / "metrics.jsonl").read_text(), a
        assert without_timing(read_summary(a)) == without_timing(read_summary(b)), a


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
    kill_at(args["killed"], dirs["killed"][-1], step=375)
    assert (dirs["killed"][0] / ".lock").exists()  # the dead process's lock must not block
    run_train(*args["killed"])
    run_train(*args["clean"])
    assert_same_runs(dirs["killed"], dirs["clean"])
    assert read_summary(dirs["killed"][0])["resumed_from_step"] in (250, 500, 750)


def test_a_member_that_diverged_before_the_checkpoint_resumes_frozen(run_train, tmp_path,
                                                                      mirror):
    """Seen: lr 0.1 and 1e6 in one population, killed after the step-500 checkpoint. The
    diverged member's summary stayed `running, steps_done 0`, and the survivor resumed as a
    population of 1, so it no longer matched an uninterrupted run."""
    args = {name: ["-m", *RUN, "model.norm=none", "model.activation=relu",
                   "optim.lr=0.1,1e6", "seed=0", f"hydra.sweep.dir={tmp_path / name}",
                   "hydra.sweep.subdir=lr${optim.lr}"] for name in ("killed", "clean")}
    dirs = {name: [tmp_path / name / f"lr{lr}" for lr in (0.1, 1000000.0)] for name in args}
    kill_at(args["killed"], dirs["killed"][0], step=375)
    run_train(*args["killed"])
    run_train(*args["clean"])
    assert read_summary(dirs["clean"][1])["status"] == "diverged"
    assert read_summary(dirs["killed"][0])["population_size"] == 2
    assert_same_runs(dirs["killed"], dirs["clean"])


def test_rerunning_a_finished_run_rewrites_nothing(run_train, tmp_path, mirror):
    # checkpoint_every=0 too: the final checkpoint must still mark the run finished
    args = [*SMOKE, "trainer.checkpoint_every=0", f"hydra.run.dir={tmp_path}"]
    run_train(*args)
    before = mtimes(tmp_path)
    assert any(name.startswith("checkpoint-") for name in before)
    run_train(*args)
    assert mtimes(tmp_path) == before  # not retrained, not even rewritten


def test_a_stale_summary_of_a_finished_run_is_restored(run_train, tmp_path, mirror):
    """A kill between the final checkpoint and the final summary.json (or a member skipped as
    finished) must not leave summary.json at `running` forever."""
    args = [*SMOKE, f"hydra.run.dir={tmp_path}"]
    run_train(*args)
    final = read_summary(tmp_path)
    for stale in ('{"status": "running", "steps_done": 0}', '{"status": "runn'):
        (tmp_path / "summary.json").write_text(stale)
        run_train(*args)
        assert read_summary(tmp_path) == final


def test_resume_false_discards_the_old_checkpoint(run_train, tmp_path, mirror):
    """Overwriting a finished run with trainer.resume=false, then killing it before its first
    checkpoint: the rerun must train from scratch, not skip the run as the old one's
    finished checkpoint would say."""
    run_dir = tmp_path / "run"
    long_run = [*RUN, "trainer.checkpoint_every=5000", f"hydra.run.dir={run_dir}"]
    run_train(*SMOKE, f"hydra.run.dir={run_dir}")
    kill_at([*long_run, "trainer.resume=false"], run_dir, step=250, checkpointed=False)
    assert checkpoint.steps(run_dir) == []
    run_train(*long_run)
    run_train(*long_run, f"hydra.run.dir={tmp_path / 'clean'}")
    assert_same_runs([run_dir], [tmp_path / "clean"])


def test_resuming_with_another_config_is_refused(run_train, tmp_path, mirror):
    run_train(*SMOKE, f"hydra.run.dir={tmp_path}")
    before = mtimes(tmp_path)
    result = run_train(*SMOKE, "optim.lr=0.3", f"hydra.run.dir={tmp_path}", check=False)
    assert result.returncode == 2
    assert "optim.lr: 0.1 -> 0.3" in result.stderr and "trainer.resume=false" in result.stderr
    assert mtimes(tmp_path) == before  # the finished run is untouched


def test_a_second_process_on_a_busy_run_dir_refuses_and_damages_nothing(run_train, tmp_path,
                                                                         mirror):
    """Seen: the same command started again while the first still ran interleaved both runs'
    rows in one metrics.jsonl."""
    # long enough that the second process starts (about 3 s of imports) before the first ends
    args = [*RUN, "trainer.max_steps=5000", "trainer.eval_every=500",
            f"hydra.run.dir={tmp_path / 'run'}"]
    first = start(args)
    wait_for(first, tmp_path / "run", step=0, checkpointed=False)
    second = run_train(*args, check=False)
    assert first.wait() == 0
    assert second.returncode == 2
    assert f"pid\": {first.pid}" in second.stderr and "in use by" in second.stderr
    run_train(*args[:-1], f"hydra.run.dir={tmp_path / 'clean'}")
    assert_same_runs([tmp_path / "run"], [tmp_path / "clean"])


def test_the_same_command_finds_the_same_directory(tmp_path, mirror):
    """Without hydra.run.dir, a run's directory is named by its overrides: rerunning the
    command skips the finished run; fresh=true asks for a new directory."""
    args = [*SMOKE, "seed=3", f"dataset.root={REPO / 'data'}", "trainer.progress=false"]
    for _ in range(2):
        assert start(args, cwd=tmp_path).wait() == 0
    run_dirs = [p.parent for p in (tmp_path / "runs").rglob("summary.json")]
    assert [d.relative_to(tmp_path) for d in run_dirs] == [
        Path("runs/fig1_mnist/debug=smoke,seed=3")]
    before = mtimes(run_dirs[0])
    assert start([*args, "fresh=true"], cwd=tmp_path).wait() == 0
    assert mtimes(run_dirs[0]) == before
    assert len(list((tmp_path / "runs").rglob("summary.json"))) == 2


def test_schedules_and_augmentation_resume_as_if_never_stopped(tmp_path, mirror, monkeypatch):
    """A population whose members decay their rates differently and crop/flip differently,
    stopped after its step-20 checkpoint and rerun, ends byte-identical to a run never
    stopped. Catches augmentation streams missing from checkpoints and a schedule that
    restarts (or is shifted) on resume."""
    from bnrepro.config import compose_config
    from bnrepro.train import train_population

    cfgs = [compose_config(["experiment=fig1_mnist", "debug=smoke", "model.norm=bn",
                            "optim.momentum=0.9", f"optim.lr_decay={decay}",
                            "optim.lr_decay_steps=10", f"optim.weight_decay={wd}",
                            f"augment.crop_padding={pad}", "augment.flip=true", f"seed={seed}",
                            "trainer.max_steps=60", "trainer.eval_every=10",
                            "trainer.checkpoint_every=20", "trainer.progress=false"])
            for decay, wd, pad, seed in [(0.5, 1e-3, 2, 0), (0.8, 0.0, 1, 1)]]
    real_step = PopulationSGD.set_step

    def stopping(self, step):
        if step == 35:
            raise RuntimeError("stopped for the test")
        real_step(self, step)

    stopped = [tmp_path / f"stopped{k}" for k in range(2)]
    with monkeypatch.context() as patch:
        patch.setattr(PopulationSGD, "set_step", stopping)
        with pytest.raises(RuntimeError, match="stopped for the test"):
            train_population(cfgs, stopped)
    assert checkpoint.steps(stopped[0]) == [20]
    train_population(cfgs, stopped)
    clean = [tmp_path / f"clean{k}" for k in range(2)]
    train_population(cfgs, clean)
    assert read_summary(stopped[0])["resumed_from_step"] == 20
    assert_same_runs(stopped, clean)


def test_a_stream_saved_on_another_kind_of_device_is_refused_with_what_to_do(run_train,
                                                                            tmp_path, mirror):
    """Dropout draws on the training device (seeding.on_device): a checkpoint whose dropout
    stream is a GPU's (Philox: 16 bytes of state, where the CPU's Mersenne Twister has 5,056)
    cannot continue on the CPU. The rerun says so in one line and leaves the run as it was."""
    import torch

    run_dir = tmp_path / "run"
    args = [*SMOKE, "model.dropout=0.2", f"hydra.run.dir={run_dir}"]
    run_train(*args)
    file = checkpoint.path(run_dir, checkpoint.steps(run_dir)[0])
    saved = torch.load(file, weights_only=True)
    saved["finished"] = False  # so that the rerun resumes it
    saved["state"]["streams"]["dropout"]["rng"] = torch.zeros(16, dtype=torch.uint8)  # CUDA's
    torch.save(saved, file)
    before = mtimes(run_dir)
    result = run_train(*args, check=False)
    assert result.returncode == 2
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "another kind of device" in error[0], result.stderr
    assert "trainer.device" in error[0] and "trainer.resume=false" in error[0]
    assert mtimes(run_dir) == before
