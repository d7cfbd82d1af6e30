"""wandb as a sink: it receives what the run store records, and never stops training.

Offline unless configured otherwise (WANDB_MODE, or logger.mode). Any wandb failure (not
logged in, unreachable, disk full) turns into one warning and the sink goes quiet; the local
run store is unaffected.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


class NullSink:
    def log(self, metrics: dict[str, Any], step: int) -> None:
        pass

    def finish(self, summary: dict[str, Any] | None = None) -> None:
        pass


class WandbSink(NullSink):
    def __init__(self, logger_cfg: DictConfig, cfg: DictConfig, run_dir: Path, name: str,
                 group: str | None, tags: list[str]):
        self.run = None
        try:
            import wandb

            self.run = wandb.init(
                project=logger_cfg.project, entity=logger_cfg.get("entity"),
                mode=logger_cfg.mode, dir=str(run_dir), name=name, group=group,
                tags=[*tags, *logger_cfg.get("tags", [])], job_type=logger_cfg.get("job_type"),
                config=OmegaConf.to_container(cfg, resolve=True),
                reinit="create_new",  # one wandb run per job, also when a process holds many
                settings=wandb.Settings(silent=True, console="off"),
            )
        except Exception as err:
            self._warn(err)

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
              tags: list[str]) -> NullSink:
    if cfg.logger.kind == "none":
        return NullSink()
    if cfg.logger.kind == "wandb":
        return WandbSink(cfg.logger, cfg, run_dir, name, group, tags)
    raise ValueError(f"logger must be 'wandb' or 'none', got {cfg.logger.kind!r}")
