"""The run directory: the local, authoritative record of a run.

    <run_dir>/config.yaml          the resolved config the run trains with (ours; Hydra's own
                                   record is .hydra/, rewritten by every launch)
    <run_dir>/metrics.jsonl        one JSON object per logged step: an evaluation's row
                                   (with the measures of that step, if any), or the row of
                                   a measured step that is not evaluated (measures only)
    <run_dir>/summary.json         status, steps done, validation/test accuracy, wall time, axes
    <run_dir>/checkpoint-<step>.pt the state to resume from (checkpoint.py)
    <run_dir>/.lock                held by the process training in it (runlock.py)

Figure scripts read only these files, so results never depend on a live service.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bnrepro.atomic import atomic_write_json, atomic_write_text
from bnrepro.measures import MEASURES

CONFIG = "config.yaml"


class RunStore:
    """Writes one run's directory. `keep_until_step` resumes it: logged rows up to that step
    are kept (later ones, logged after the checkpoint, are dropped) and new rows appended."""

    def __init__(self, run_dir: str | Path, cfg: DictConfig | None = None,
                 keep_until_step: int | None = None):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        if cfg is not None:
            atomic_write_text(self.dir / CONFIG, OmegaConf.to_yaml(cfg, resolve=True))
        self.metrics_path = self.dir / "metrics.jsonl"
        if keep_until_step is None:
            self.metrics_path.write_text("")
        else:
            kept = [r for r in read_metrics(self.dir) if r["step"] <= keep_until_step]
            atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
        self._metrics = open(self.metrics_path, "a")  # noqa: SIM115 (open for the run's life)

    def log(self, metrics: dict[str, Any]) -> None:
        # NaN/inf are not JSON: store them as null so every line stays parseable.
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in metrics.items()}
        self._metrics.write(json.dumps(clean) + "\n")
        self._metrics.flush()

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self.dir / "summary.json", summary)

    def close(self) -> None:
        self._metrics.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every complete line of metrics.jsonl (a line cut off by a kill is skipped)."""
    rows = []
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return rows
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def is_evaluation(row: dict[str, Any]) -> bool:
    """Whether a metrics.jsonl row was logged by an evaluation (of train.py, or the deep
    linear net's loss rows), not by measures alone at a step that is not evaluated: a
    measures-only row holds nothing but `step` and keys under a measure's name
    (bnrepro.measures: ics/..., landscape/...)."""
    return any(key != "step" and key.split("/")[0] not in MEASURES for key in row)


def evaluation_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The evaluations among `rows`: what accuracy curves, selection and probes read."""
    return [row for row in rows if is_evaluation(row)]


def read_summary(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def read_config(run_dir: str | Path) -> DictConfig:
    """The run's resolved config: ours, else (runs of older versions) Hydra's record."""
    ours = Path(run_dir) / CONFIG
    return OmegaConf.load(ours if ours.is_file() else Path(run_dir) / ".hydra" / "config.yaml")
