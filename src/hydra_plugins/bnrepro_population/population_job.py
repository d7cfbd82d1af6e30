"""One population as one submitit job (`hydra.launcher.executor=local|slurm`).

A module of its own so that Hydra's plugin discovery, which imports the launcher module on
every run, does not import submitit too: only a multirun that submits jobs loads this.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import submitit
from omegaconf import DictConfig


class PopulationJob(submitit.helpers.Checkpointable):
    """`bnrepro.train.train_population(cfgs, run_dirs)` in a submitit job; returns the members'
    summaries.

    On preemption or timeout submitit calls `checkpoint()` (inherited: a DelayedSubmission of
    this same object) and requeues the job, which then simply trains again on the same run
    directories: the trainer resumes every member from its last `checkpoint-<step>.pt` and
    skips finished runs, so this object holds no training state of its own. What was trained
    since the last checkpoint is trained again (`trainer.checkpoint_every` bounds it).
    """

    def __init__(self, cfgs: Sequence[DictConfig], run_dirs: Sequence[Path], cwd: Path) -> None:
        # DictConfigs and Paths pickle; the configs arrive resolved (see the launcher).
        self.cfgs = list(cfgs)
        self.run_dirs = [Path(d) for d in run_dirs]
        self.cwd = Path(cwd)

    def __call__(self) -> list[dict]:
        # Relative paths in a config (dataset.root=data) mean what they meant in the launching
        # process, whatever directory the scheduler starts the job in.
        os.chdir(self.cwd)
        from bnrepro.train import train_population

        return train_population(self.cfgs, self.run_dirs)
