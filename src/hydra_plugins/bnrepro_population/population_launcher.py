"""`hydra/launcher=population`: run a multirun's jobs as vectorised populations.

Jobs whose configs differ only in per-member keys (seed, learning rate, momentum, weight
decay, dropout) share an architecture and are trained together, at most `max_population` per
process-wide batch, by `bnrepro.train.train_population`. Each job still gets its own Hydra
output directory (.hydra/, metrics.jsonl, summary.json) and its own wandb run, exactly as
with the basic launcher. A job with no partner runs alone through the ordinary task function.
"""

from __future__ import annotations

import json
import logging
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
        from bnrepro.train import train_population

        setup_globals()
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        # 1. Let Hydra create every job's directory and config, without training.
        prepared = {}
        for i, overrides in enumerate(job_overrides):
            idx = initial_job_idx + i
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            prepared[i] = self._run(overrides, idx, _prepare_job, configure_logging=False)
        # 2. Group by architecture; cut groups into populations of at most max_population.
        groups: dict[str, list[int]] = {}
        for i, ret in prepared.items():
            groups.setdefault(population_key(ret.return_value[0]), []).append(i)
        batches = [members[s:s + self.max_population] for members in groups.values()
                   for s in range(0, len(members), self.max_population)]
        log.info(f"Launching {len(job_overrides)} jobs as {len(batches)} population(s) "
                 f"of sizes {[len(b) for b in batches]}")
        # 3. Train. A lone job takes the ordinary path; a failure fails its population only.
        results: dict[int, JobReturn] = {}
        for batch in batches:
            if len(batch) == 1:
                i = batch[0]
                results[i] = self._run(job_overrides[i], initial_job_idx + i,
                                       self.task_function)
                continue
            cfgs, dirs = zip(*(prepared[i].return_value for i in batch), strict=True)
            try:
                summaries = train_population(list(cfgs), list(dirs))
                outcomes = [(JobStatus.COMPLETED, s["final_test_acc"]) for s in summaries]
            except Exception as err:
                log.error(f"population of {len(batch)} failed: {type(err).__name__}: {err}")
                outcomes = [(JobStatus.FAILED, err)] * len(batch)
            for i, (status, value) in zip(batch, outcomes, strict=True):
                results[i] = prepared[i]
                results[i].status, results[i].return_value = status, value
        return [results[i] for i in range(len(job_overrides))]
