"""The run directory: the local, authoritative record of a run.

    <run_dir>/.hydra/config.yaml   the composed config (written by Hydra, or by us)
    <run_dir>/metrics.jsonl        one JSON object per logged step
    <run_dir>/summary.json         status, steps done, final/best test accuracy, wall time, axes

Figure scripts read only these files, so results never depend on a live service.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bnrepro.atomic import atomic_write_json, atomic_write_text


class RunStore:
    def __init__(self, run_dir: str | Path, cfg: DictConfig | None = None):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        config_file = self.dir / ".hydra" / "config.yaml"
        if cfg is not None and not config_file.exists():
            atomic_write_text(config_file, OmegaConf.to_yaml(cfg, resolve=True))
        self.metrics_path = self.dir / "metrics.jsonl"
        self._metrics = open(self.metrics_path, "w")  # noqa: SIM115 (open for the run's life)

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
    with open(Path(run_dir) / "metrics.jsonl") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def read_summary(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def read_config(run_dir: str | Path) -> DictConfig:
    return OmegaConf.load(Path(run_dir) / ".hydra" / "config.yaml")
