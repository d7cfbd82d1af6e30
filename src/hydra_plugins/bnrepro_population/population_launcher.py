"""`hydra/launcher=population`: run a multirun's jobs as vectorised populations.

Jobs whose configs differ only in per-member keys (seed, learning rate, momentum, weight
decay, dropout) share an architecture and are trained together, at most `max_population` per
process-wide batch, by `bnrepro.train.train_population`. Each job still gets its own Hydra
output directory (.hydra/, metrics.jsonl, summary.json) and its own wandb run, exactly as
with the basic launcher.

Every job is checked before any trains (its config values, the checkpoint in its directory,
no other process training in it): a bad job fails alone with one `error:` line, and the
others train. Hydra then reports the failed jobs when the sweep ends.

Where populations train is `executor`: `inprocess` (default) trains them one after another in
the launching process; `local` and `slurm` submit each population as one submitit job
(`population_job.PopulationJob`) and wait for them all. Preparing, checking and grouping are
the same for every executor; a submitted job takes its run directories' locks itself.
"""

from __future__ import annotations

import copy
import json
import logging
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

if TYPE_CHECKING:
    import submitit

log = logging.getLogger(__name__)

EXECUTORS = ("inprocess", "local", "slurm")
Outcome = tuple[JobStatus, Any]  # a member's JobReturn status and value


def population_key(cfg: DictConfig) -> str:
    """What members of one population must share: the config minus the per-member keys."""
    from bnrepro.config import resolved_without
    from bnrepro.train import MEMBER_KEYS

    return json.dumps(resolved_without(cfg, MEMBER_KEYS), sort_keys=True, default=str)


def _prepare_job(cfg: DictConfig, resolve: bool = False) -> tuple[DictConfig, Path]:
    """A task that trains nothing: Hydra has made the job's directory and .hydra/ files.
    `resolve`: return a resolved copy of the config (for a submitit job), resolved here,
    while this job's HydraConfig is the current one (`${hydra:...}` means this job)."""
    return (_resolved(cfg) if resolve else cfg,
            Path(HydraConfig.get().runtime.output_dir).resolve())


def _outcomes(train: Callable[[], list[dict]], size: int, what: str) -> list[Outcome]:
    """Each member's outcome of one population; a failure fails this population only."""
    try:
        return [(JobStatus.COMPLETED, s["best_val_acc"]) for s in train()]
    except Exception as err:
        log.error(f"{what} of {size} failed: {type(err).__name__}: {err}")
        return [(JobStatus.FAILED, err)] * size


def _resolved(cfg: DictConfig) -> DictConfig:
    """A copy with every interpolation resolved, for another process: the job then trains the
    values this process checked (${oc.env:...} read here), and needs no resolver of ours or
    HydraConfig of its own."""
    cfg = copy.deepcopy(cfg)
    with read_write(cfg):
        OmegaConf.resolve(cfg)
    return cfg


class PopulationLauncher(Launcher):
    def __init__(self, max_population: int = 64, executor: str = "inprocess",
                 submitit_folder: str = ".submitit/%j", timeout_min: int = 60,
                 max_num_timeout: int = 3, cpus_per_task: int | None = None,
                 gpus_per_node: int | None = None, mem_gb: float | None = None,
                 name: str = "bnrepro", partition: str | None = None,
                 signal_delay_s: int = 120, array_parallelism: int = 256,
                 additional_parameters: Any = None) -> None:
        if max_population < 1:
            raise ValueError(f"hydra.launcher.max_population must be >= 1, got {max_population}")
        if executor not in EXECUTORS:
            raise ValueError(f"hydra.launcher.executor={executor!r} is not allowed: choose one "
                             f"of {list(EXECUTORS)}")
        self.max_population, self.executor = max_population, executor
        self.submitit_folder, self.max_num_timeout = submitit_folder, max_num_timeout
        if OmegaConf.is_config(additional_parameters):
            additional_parameters = OmegaConf.to_container(additional_parameters, resolve=True)
        # Names as submitit's AutoExecutor takes them: generic ones apply to every cluster,
        # slurm_* ones to SLURM only (the local executor ignores them). None means unset.
        self.submitit_parameters = dict(
            timeout_min=timeout_min, cpus_per_task=cpus_per_task, gpus_per_node=gpus_per_node,
            mem_gb=mem_gb, name=name, slurm_partition=partition,
            slurm_signal_delay_s=signal_delay_s, slurm_array_parallelism=array_parallelism,
            slurm_additional_parameters=additional_parameters or None)
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
        from bnrepro.run import runlock
        from bnrepro.run.plan import plan_file
        from bnrepro.train import JOB_ERRORS, prepare, train_population

        setup_globals()
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        # 1. Let Hydra create every job's directory and config, without training.
        prepared = {}
        for i, overrides in enumerate(job_overrides):
            idx = initial_job_idx + i
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            task = partial(_prepare_job, resolve=self.executor != "inprocess")
            prepared[i] = self._run(overrides, idx, task, configure_logging=False)
        plan = plan_file()
        if plan is not None:  # BNREPRO_PLAN: say which runs would train, train none
            return self._planned(prepared, plan)
        # 2. Check every job before training any; hold the good ones' directories meanwhile.
        results: dict[int, JobReturn] = {}
        held = []
        try:
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
            batches = self._populations(prepared, results)
            log.info(f"Launching {len(job_overrides)} jobs as {len(batches)} population(s) "
                     f"of sizes {[len(b) for b in batches]}")
            # 3. Train; a failure fails its own population only.
            if self.executor == "inprocess":
                outcomes = [_outcomes(partial(train_population, *self._members(prepared, b)),
                                      len(b), "population") for b in batches]
        finally:
            for run_dir in held:
                runlock.release(run_dir)
        if self.executor != "inprocess":
            # After the release: each job takes its directories' locks in its own process.
            outcomes = self._submit(batches, prepared)
        for batch, batch_outcomes in zip(batches, outcomes, strict=True):
            for i, (status, value) in zip(batch, batch_outcomes, strict=True):
                results[i] = prepared[i]
                results[i].status, results[i].return_value = status, value
        return [results[i] for i in range(len(job_overrides))]

    @staticmethod
    def _planned(prepared: dict[int, JobReturn], plan: Path) -> list[JobReturn]:
        """Append every job's run directory and steps to the plan (bnrepro.run.plan), once
        every job's config is valid: one the trainer would refuse fails the plan, hours before
        its turn to train would have come."""
        from bnrepro.run.plan import add_to_plan, training_step_flops
        from bnrepro.validation import ConfigError, validate

        jobs = [prepared[i] for i in range(len(prepared))]
        invalid = []
        for ret in jobs:
            try:
                validate(ret.return_value[0])
            except ConfigError as err:
                invalid.append(f"error: {ret.return_value[1].name}: {err}")
        if invalid:
            print("\n".join(invalid), file=sys.stderr)
            raise SystemExit(f"error: {len(invalid)} of {len(jobs)} runs have an invalid "
                             "config; nothing was planned")
        cache: dict = {}  # the seeds of one model are counted once
        add_to_plan(plan, [ret.return_value[1] for ret in jobs],
                    [ret.return_value[0].trainer.max_steps for ret in jobs],
                    [training_step_flops(ret.return_value[0], cache) for ret in jobs])
        for ret in jobs:
            ret.status, ret.return_value = JobStatus.COMPLETED, None
        return jobs

    @staticmethod
    def _failed(ret: JobReturn, err: Exception) -> JobReturn:
        print(f"error: {err}", file=sys.stderr)
        ret.status, ret.return_value = JobStatus.FAILED, err
        return ret

    def _populations(self, prepared: dict[int, JobReturn], results: dict[int, JobReturn]
                     ) -> list[list[int]]:
        """The checked jobs grouped by architecture, cut into populations of max_population."""
        groups: dict[str, list[int]] = {}
        for i, ret in prepared.items():
            if i not in results:
                groups.setdefault(population_key(ret.return_value[0]), []).append(i)
        return [members[s:s + self.max_population] for members in groups.values()
                for s in range(0, len(members), self.max_population)]

    @staticmethod
    def _members(prepared: dict[int, JobReturn], batch: list[int]
                 ) -> tuple[list[DictConfig], list[Path]]:
        cfgs, dirs = zip(*(prepared[i].return_value for i in batch), strict=True)
        return list(cfgs), list(dirs)

    def submitit_executor(self) -> submitit.Executor:
        """The submitit executor of `executor` (local or slurm), with this launcher's knobs."""
        import submitit

        executor = submitit.AutoExecutor(
            folder=self.submitit_folder, cluster=self.executor,
            **{f"{self.executor}_max_num_timeout": self.max_num_timeout})
        executor.update_parameters(**self.submitit_parameters)
        gpus = self.submitit_parameters["gpus_per_node"]
        if self.executor == "local" and gpus:
            from bnrepro.device import visible_gpu_ids  # torch: only here

            # The GPUs this process was given (CUDA_VISIBLE_DEVICES), not submitit's default
            # 0..n-1; AutoExecutor takes no visible_gpus, its local executor does.
            if given := visible_gpu_ids():
                executor._executor._internal_update_parameters(gpus_per_node=gpus,
                                                               visible_gpus=given)
        return executor

    def _submit(self, batches: list[list[int]], prepared: dict[int, JobReturn]
                ) -> list[list[Outcome]]:
        """One submitit job per population; wait for them all."""
        if not batches:
            return []
        from hydra_plugins.bnrepro_population.population_job import PopulationJob

        executor = self.submitit_executor()
        populations = []
        for batch in batches:
            cfgs, dirs = self._members(prepared, batch)
            populations.append(PopulationJob(cfgs, dirs, Path.cwd()))  # cfgs: resolved
        # One array on SLURM (array_parallelism caps how many run at once); local: processes.
        jobs = executor.submit_array(populations)
        for n, (batch, job) in enumerate(zip(batches, jobs, strict=True)):
            log.info(f"population {n + 1} of {len(jobs)} ({len(batch)} runs) is submitit job "
                     f"{job.job_id}; its logs: {job.paths.stdout} and {job.paths.stderr}")
        return [_outcomes(job.result, len(batch), f"population of submitit job {job.job_id}")
                for batch, job in zip(batches, jobs, strict=True)]
