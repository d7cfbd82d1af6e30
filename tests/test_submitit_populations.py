"""Populations as submitit jobs (`hydra/launcher=population_local`, the path SLURM takes): one
job per population, the same metrics as in-process, a preempted job requeued and resumed.

Only submitit's local executor is tested: there is no SLURM cluster here."""

import json
import os
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from submitit.local.local import LocalJobEnvironment

from bnrepro.config import CONF_DIR, register_resolvers
from bnrepro.run.store import read_summary
from tests.test_resume import start, wait_for, without_timing

# Both populations run at once as two processes on this 2-core machine: one thread each.
# Both launchers get the same thread count, so the arithmetic, hence metrics.jsonl, is the same.
SWEEP = ["-m", "experiment=fig1_mnist", "debug=smoke", "model.norm=bn,none", "seed=0,1",
         "trainer.threads=1"]
LOCAL = "hydra/launcher=population_local"
# Fig. 1's net with dropout (its RNG must resume too), checkpointed every 100 of 400 steps:
# long enough to be caught between its first checkpoint and its end, short enough to be cheap.
PREEMPTED = ["experiment=fig1_mnist", "model.norm=bn", "model.dropout=0.2",
             "trainer.max_steps=400", "trainer.eval_every=100", "trainer.checkpoint_every=100",
             "trainer.population_batches=4", "probe.num_examples=200", "trainer.progress=false"]


def submitit_jobs(sweep_dir: Path) -> list[Path]:
    """The job folders under the sweep's submitit folder (submitit also leaves an empty `%j`)."""
    return sorted(p.parent for p in (sweep_dir / ".submitit").glob("*/*_submitted.pkl"))


def assert_same_runs(runs: list[Path], reference: list[Path]) -> None:
    for a, b in zip(runs, reference, strict=True):
        assert (a / "metrics.jsonl").read_text() == (b / "metrics.jsonl").read_text(), a
        assert without_timing(read_summary(a)) == without_timing(read_summary(b)), a


def test_each_population_is_one_submitit_job_with_the_in_process_metrics(run_train, tmp_path,
                                                                          mirror):
    result = run_train(*SWEEP, LOCAL, f"hydra.sweep.dir={tmp_path / 'submitit'}")
    run_train(*SWEEP, "hydra/launcher=population", f"hydra.sweep.dir={tmp_path / 'inprocess'}")
    run_dirs = sorted(p.parent for p in (tmp_path / "submitit").glob("*/summary.json"))
    assert len(run_dirs) == 4
    for run_dir in run_dirs:
        summary = read_summary(run_dir)
        assert summary["status"] == "completed" and summary["population_size"] == 2
        assert (run_dir / ".hydra" / "config.yaml").is_file()
    jobs = submitit_jobs(tmp_path / "submitit")
    assert len(jobs) == 2  # one per population, not one per run
    assert not (tmp_path / "inprocess" / ".submitit").exists()  # the default submits nothing
    for job in jobs:  # the launcher names each job's logs
        assert (job / f"{job.name}_0_result.pkl").is_file()
        assert str(job / f"{job.name}_0_log.out") in result.stdout + result.stderr
    assert_same_runs(run_dirs, [tmp_path / "inprocess" / d.name for d in run_dirs])


def test_a_preempted_job_is_requeued_and_ends_as_an_uninterrupted_run(run_train, tmp_path,
                                                                      mirror):
    """One population of two members, trained as a submitit job and sent the signal submitit
    handles as preemption or timeout (USR2, unless SUBMITIT_PREEMPT_SIGNAL says otherwise;
    SLURM sends it before the time limit, the local executor at timeout_min) after its first
    checkpoint: submitit calls PopulationJob.checkpoint() and requeues the job, which resumes
    both members from their checkpoints."""
    args = {name: ["-m", *PREEMPTED, "seed=0,1", f"hydra.sweep.dir={tmp_path / name}",
                   "hydra.sweep.subdir=s${seed}"] for name in ("requeued", "clean")}
    dirs = {name: [tmp_path / name / f"s{s}" for s in (0, 1)] for name in args}
    launcher = start([*args["requeued"], LOCAL])
    wait_for(launcher, dirs["requeued"][-1], step=100, checkpointed=True)
    # The process training the population holds its run directories, and says so in .lock.
    task = json.loads((dirs["requeued"][0] / ".lock").read_text())["pid"]
    assert task != launcher.pid
    os.kill(task, LocalJobEnvironment._usr_sig())
    _, stderr = launcher.communicate(timeout=600)
    assert launcher.returncode == 0, stderr[-3000:]

    [job] = submitit_jobs(tmp_path / "requeued")
    log = (job / f"{job.name}_0_log.out").read_text() + (job / f"{job.name}_0_log.err").read_text()
    assert "Caught signal SIGUSR2" in log and f"Requeued job {job.name}" in log, log
    assert log.count("Starting with JobEnvironment") == 2, log  # the same job ran twice
    for run_dir in dirs["requeued"]:
        assert read_summary(run_dir)["resumed_from_step"] in (100, 200, 300)
    run_train(*args["clean"], "hydra/launcher=population")  # never interrupted, in-process
    assert_same_runs(dirs["requeued"], dirs["clean"])


def test_a_bad_job_and_a_failed_population_fail_alone(run_train, tmp_path, mirror):
    """`tpu` is refused by the launcher's check (one `error:` line); `cuda` passes it but its
    population's job fails (no usable CUDA in the job: device.py refuses it): both fail
    their own jobs only, the cpu job completes, and the sweep exits non-zero."""
    result = run_train("-m", "experiment=fig1_mnist", "debug=smoke", "model.norm=bn", "seed=0",
                       "trainer.threads=1", "trainer.device=cpu,cuda,tpu", LOCAL,
                       f"hydra.sweep.dir={tmp_path}",
                       "hydra.sweep.subdir=${trainer.device}", check=False)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "trainer.device='tpu'" in errors[0], result.stderr
    assert "population of submitit job" in result.stdout + result.stderr  # logged, with why
    assert read_summary(tmp_path / "cpu")["status"] == "completed"
    for device in ("cuda", "tpu"):  # cuda refused before its first summary
        assert read_summary(tmp_path / device) is None
    assert len(submitit_jobs(tmp_path)) == 2


def test_population_slurm_knobs_reach_the_sbatch_script(tmp_path, monkeypatch):
    """No cluster here: a stand-in `srun` lets submitit build (not submit) the SLURM job."""
    (tmp_path / "srun").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True, overrides=[
            "experiment=fig1_mnist", "hydra/launcher=population_slurm",
            "hydra.launcher.partition=gpu", "hydra.launcher.max_num_timeout=5",
            "+hydra.launcher.additional_parameters.account=proj"])
    executor = instantiate(cfg.hydra.launcher).submitit_executor()._executor
    assert executor.max_num_timeout == 5
    script = executor._make_submission_file_text("python -m x", "uid")
    for line in ("--partition=gpu", "--time=240", "--gpus-per-node=1", "--cpus-per-task=8",
                 "--mem=32GB", "--account=proj", "--signal=USR2@120",
                 "--job-name=bnrepro_fig1_mnist"):
        assert f"#SBATCH {line}" in script, (line, script)
    assert "/runs/fig1_mnist/.submitit/%j/%j_0_log.out" in script  # the sweep's .submitit/
