"""The same multirun through the other launchers: every job gets its complete run directory."""

import pytest

from bnrepro.run.store import read_metrics, read_summary

GRID = ["-m", "experiment=fig1_mnist", "debug=smoke", "model.norm=bn,none", "seed=0",
        "optim.lr=0.1,0.5", "trainer.threads=1", "hydra.sweep.subdir=job${hydra.job.num}"]


@pytest.mark.parametrize("launcher", [
    ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
     "hydra.launcher.cpus_per_task=1"],
])
def test_tiny_multirun_completes_every_job(launcher, run_train, tmp_path, mirror):
    run_train(*GRID, *launcher, f"hydra.sweep.dir={tmp_path}")
    seen = set()
    for job in range(4):
        run_dir = tmp_path / f"job{job}"
        summary = read_summary(run_dir)
        assert summary is not None, f"{run_dir} has no summary.json"
        assert summary["status"] == "completed" and summary["population_size"] == 1
        assert (run_dir / ".hydra" / "config.yaml").is_file()
        assert [r["step"] for r in read_metrics(run_dir)] == [0, 20, 40]
        seen.add((summary["axes"]["norm"], summary["axes"]["lr"]))
    assert seen == {("bn", 0.1), ("bn", 0.5), ("none", 0.1), ("none", 0.5)}
