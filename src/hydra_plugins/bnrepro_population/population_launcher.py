"""`hydra/launcher=population`: run a multirun's jobs as vectorised populations.

Jobs whose configs differ only in per-member keys (seed, learning rate, momentum, weight
decay, dropout) share an architecture and are trained together, at most `max_population` per
process-wide batch, by `bnrepro.train.train_population`. Each job still gets its own Hydra
output directory (.hydra/, metrics.jsonl, summary.json) and its own wandb run, exactly as
with the basic launcher.

Every job is checked before any trains (its config values, the checkpoint in its directory,
no other process training in it): a bad job fails alone with one `error:` line, and the
others train. Hydra then reports the failed jobs when the sweep ends.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


def population_key(cfg: DictConfig) -> str:
    """What members of one population must share: the config minus the per-member keys."""
    from bnrepro.config import resolved_without
    from bnrepro.train import MEMBER_KEYS

    return json.dumps(resolved_without(cfg, MEMBER_KEYS), sort_keys=True, default=str)


def _prepare_job(cfg: DictConfig) -> tuple[DictConfig, Path]:
    """A task that trains nothing: Hydra has made the job's directory and .hydra/ files."""
    return cfg, Path(HydraConfig.get().runtime.output_dir)


class PopulationLauncher(Launcher):
    def __init__(self, max_population: int = 64) -> None:
        if max_population < 1:
            raise ValueError(f"hydra.launcher.max_population must be >= 1, got {max_population}")
        self.max_population = max_population
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def _run(self, overrides: Sequence[str], idx: int, task: TaskFunction,
             configure_logging: bool = True) -> JobReturn:
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config,
                                                                          list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = sweep_config.hydra.job.num = idx
        return run_job(hydra_context=self.hydra_context, task_function=task,
                       config=sweep_config, job_dir_key="hydra.sweep.dir",
                       job_subdir_key="hydra.sweep.subdir", configure_logging=configure_logging)

    def launch(self, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> Sequence[JobReturn]:
        from bnrepro import runlock
        from bnrepro.train import JOB_ERRORS, prepare

        setup_globals()
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        # 1. Let Hydra create every job's directory and config, without training.
        prepared = {}
        for i, overrides in enumerate(job_overrides):
            idx = initial_job_idx + i
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            prepared[i] = self._run(overrides, idx, _prepare_job, configure_logging=False)
        # 2. Check every job before training any; hold the good ones' directories meanwhile.
        results: dict[int, JobReturn] = {}
        held = []
        for i, ret in prepared.items():
            cfg, run_dir = ret.return_value
            try:
                runlock.acquire(run_dir)
            except JOB_ERRORS as err:
                results[i] = self._failed(ret, err)
                continue
            held.append(run_dir)
            try:
                prepare(cfg, run_dir)
            except JOB_ERRORS as err:
                results[i] = self._failed(ret, err)
        try:
            return self._train_checked(job_overrides, prepared, results)
        finally:
            for run_dir in held:
                runlock.release(run_dir)

    @staticmethod
    def _failed(ret: JobReturn, err: Exception) -> JobReturn:
        print(f"error: {err}", file=sys.stderr)
        ret.status, ret.return_value = JobStatus.FAILED, err
        return ret

    def _train_checked(self, job_overrides: Sequence[Sequence[str]],
                       prepared: dict[int, JobReturn], results: dict[int, JobReturn]
                       ) -> Sequence[JobReturn]:
        from bnrepro.train import train_population

        # 3. Group by architecture; cut groups into populations of at most max_population.
        groups: dict[str, list[int]] = {}
        for i, ret in prepared.items():
            if i not in results:
                groups.setdefault(population_key(ret.return_value[0]), []).append(i)
        batches = [members[s:s + self.max_population] for members in groups.values()
                   for s in range(0, len(members), self.max_population)]
        log.info(f"Launching {len(job_overrides)} jobs as {len(batches)} population(s) "
                 f"of sizes {[len(b) for b in batches]}")
        # 4. Train; a failure fails its own population only.
        for batch in batches:
            cfgs, dirs = zip(*(prepared[i].return_value for i in batch), strict=True)
            try:
                summaries = train_population(list(cfgs), list(dirs))
                outcomes = [(JobStatus.COMPLETED, s["best_val_acc"]) for s in summaries]
            except Exception as err:
                log.error(f"population of {len(batch)} failed: {type(err).__name__}: {err}")
                outcomes = [(JobStatus.FAILED, err)] * len(batch)
            for i, (status, value) in zip(batch, outcomes, strict=True):
                results[i] = prepared[i]
                results[i].status, results[i].return_value = status, value
        return [results[i] for i in range(len(job_overrides))]
