"""wandb as a sink: it receives what the run store records, and never stops training.

Offline unless configured otherwise (WANDB_MODE, or logger.mode). Any wandb failure (not
logged in, unreachable, disk full) turns into one warning and the sink goes quiet; the local
run store is unaffected.

One run directory is one wandb run, across restarts. Its wandb id is a hash of the directory's
absolute path (`wandb_run_id`), so a resumed run logs to the run it started, not to a second
run of the same name. A restart from a checkpoint at step s passes `resume_step=s`: the local
store keeps the rows with step <= s, and wandb is told the same with
`wandb.init(id=..., resume_from=f"{id}?_step={s}")`, a rewind; any other start uses
`resume="allow"` (continue the run if it exists, else create it). wandb forbids passing both
(wandb/sdk/wandb_settings.py, `validate_mutual_exclusion_of_branching_args`). What the rewind
does in wandb 0.31 (Python side in the wheel; the wandb-core side read in its Go source,
core/internal/runbranch/rewind.go and runupserter/runupserter.go, whose functions the wheel's
compiled wandb-core carries):

- Online: wandb-core asks the server to rewind the run (`RewindBranch.UpdateForRewind`), which
  drops its rows after step s; this process logs from step s+1. If wandb.init raises instead
  (no such run on the server, say, because the first process could not reach it), we warn
  once and continue the run with `resume="allow"`: the interrupted process's rows after s
  stay, and the re-logged steps up to its last one are dropped by wandb's handler (a step
  below the run's current step is ignored).
- Offline: nothing is asked. wandb-core starts this process at step s+1 ("when offline, we
  assume the run exists", `UpdateForRewind`; `run.starting_step == s + 1`) and the rewind
  point goes into the new offline-run-*/run-<id>.wandb as the Run record's `branch_point`
  (wandb/sdk/interface/interface.py `_make_run`). `wandb sync` uploads the offline folders of
  one run id one after another in order of start time (wandb/cli/cli.py `sync`); the resumed
  folder's branch point makes wandb-core rewind the server's run to step s (runupserter
  `InitRun`) before that folder's rows are uploaded, so the synced run holds what the local
  store holds. Syncing a resumed folder before (or without) its run's first folder fails for
  that folder: there is no run to rewind. The local store is the record either way.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

# Metrics whose wandb summary is their best value, not their last: what dashboards compare.
# Named one by one: wandb-core (0.31) applies a glob's step axis to every matching key, but a
# glob's summary ("test/acc*") to none, so each key needs its own definition. Keys a run never
# logs cost nothing (the definition stays unused).
MAX_SUMMARY_METRICS = ("train/acc", "val/acc", "test/acc",
                       "test/acc_batch", "test/acc_running")  # the last two: batch-size runs
MIN_SUMMARY_METRICS = ("train/loss", "val/loss", "test/loss")
STEP_METRIC = "step"  # the trainer's step, in every logged row


def wandb_config(cfg: DictConfig, axes: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a run sends as its wandb config: the whole resolved config, nested as in
    config.yaml, plus `axes` (the run's sweep axes, see bnrepro.train.axes) with
    `norm_activation`, one label for the (norm, activation) pair.

    Nested, not flattened: the wandb app shows and filters nested keys as `model.norm`, and
    wandb-workspaces addresses `Config("model.norm")` as the nested key (`model.value.norm`);
    a flat key "model.norm" would be stored as `model.norm.value`, which no `Config(...)` of
    the workspace (bnrepro.analysis.wandb_workspace) would find. `axes.norm_activation` exists
    because a wandb chart groups its runs by one key, and Fig. 1's question is norm x activation.
    """
    config = OmegaConf.to_container(cfg, resolve=True)
    if axes is not None:
        labels = dict(axes)
        if "norm" in axes and "activation" in axes:
            labels["norm_activation"] = f"{axes['norm']}-{axes['activation']}"
        config["axes"] = labels
    return config


def wandb_run_id(run_dir: str | Path) -> str:
    """The wandb run id of a run directory, the same for every (re)start of that directory.

    A hash of the resolved absolute path: wandb ids allow at most 64 characters of
    [A-Za-z0-9_-], and a directory name (Hydra's `lr=0.1,seed=0`) would not fit either rule.
    """
    digest = hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()
    return f"bnrepro-{digest[:24]}"


class NullSink:
    def log(self, metrics: dict[str, Any], step: int) -> None:
        pass

    def finish(self, summary: dict[str, Any] | None = None) -> None:
        pass


class WandbSink(NullSink):
    def __init__(self, logger_cfg: DictConfig, cfg: DictConfig, run_dir: Path, name: str,
                 group: str | None, tags: list[str], resume_step: int | None = None,
                 axes: dict[str, Any] | None = None):
        """`resume_step`: the checkpoint step this process continues from (None: a fresh start);
        `axes`: the run's sweep axes, sent in its wandb config (see `wandb_config`)."""
        self.run = None
        self.run_id = wandb_run_id(run_dir)
        try:
            import wandb

            def init(**branch: Any) -> Any:
                return wandb.init(
                    project=logger_cfg.project, entity=logger_cfg.get("entity"),
                    mode=logger_cfg.mode, dir=str(run_dir), id=self.run_id, name=name,
                    group=group, tags=[*tags, *logger_cfg.get("tags", [])],
                    job_type=logger_cfg.get("job_type"),
                    config=wandb_config(cfg, axes),
                    reinit="create_new",  # one wandb run per job, also when a process holds many
                    settings=wandb.Settings(silent=True, console="off"), **branch)

            if resume_step is None:
                self.run = init(resume="allow")
            else:
                # wandb forbids resume together with resume_from: the rewind alone continues
                # the run, and only a refused rewind falls back to continuing it as it is.
                try:
                    self.run = init(resume_from=f"{self.run_id}?_step={int(resume_step)}")
                except Exception as err:
                    self.run = init(resume="allow")  # raises on to the warning below if broken
                    warnings.warn(
                        f"wandb could not rewind run {self.run_id} to step {resume_step} "
                        f"({type(err).__name__}: {err}); continuing it instead, so it keeps the "
                        f"rows the interrupted process logged after step {resume_step}; the "
                        "local run store is unaffected", stacklevel=2)
            self._define_metrics()
        except Exception as err:
            self._warn(err)

    def _define_metrics(self) -> None:
        # Every row carries the trainer's "step" (also passed as wandb's own step): naming it
        # the x-axis makes charts plot against training steps without per-chart settings.
        self.run.define_metric(STEP_METRIC)
        self.run.define_metric("*", step_metric=STEP_METRIC)
        for keys, summary in ((MAX_SUMMARY_METRICS, "max"), (MIN_SUMMARY_METRICS, "min")):
            for key in keys:
                self.run.define_metric(key, step_metric=STEP_METRIC, summary=summary)

    def _warn(self, err: Exception) -> None:
        warnings.warn(f"wandb disabled for this run ({type(err).__name__}: {err}); "
                      "the local run store is unaffected", stacklevel=3)
        self.run = None

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if self.run is not None:
            try:
                self.run.log(metrics, step=step)
            except Exception as err:
                self._warn(err)

    def finish(self, summary: dict[str, Any] | None = None) -> None:
        if self.run is None:
            return
        try:
            for key, value in (summary or {}).items():
                if isinstance(value, (int, float, str, bool)):
                    self.run.summary[key] = value
            self.run.finish()
        except Exception as err:
            self._warn(err)


def make_sink(cfg: DictConfig, run_dir: Path, name: str, group: str | None,
              tags: list[str], resume_step: int | None = None,
              axes: dict[str, Any] | None = None) -> NullSink:
    """`resume_step`: pass the checkpoint step when resuming, so wandb drops what the store
    dropped (see the module docstring); None on a fresh start. `axes`: the run's sweep axes
    (bnrepro.train.axes), added to its wandb config."""
    if cfg.logger.kind == "none":
        return NullSink()
    if cfg.logger.kind == "wandb":
        return WandbSink(cfg.logger, cfg, run_dir, name, group, tags, resume_step=resume_step,
                         axes=axes)
    raise ValueError(f"logger must be 'wandb' or 'none', got {cfg.logger.kind!r}")
