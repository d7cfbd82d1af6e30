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
    """Writes one run's directory. `keep_until_step` resumes it: logged rows up to that step
    are kept (later ones, logged after the checkpoint, are dropped) and new rows appended."""

    def __init__(self, run_dir: str | Path, cfg: DictConfig | None = None,
                 keep_until_step: int | None = None):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        config_file = self.dir / ".hydra" / "config.yaml"
        if cfg is not None and not config_file.exists():
            atomic_write_text(config_file, OmegaConf.to_yaml(cfg, resolve=True))
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


def read_summary(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def read_config(run_dir: str | Path) -> DictConfig:
    """The run's resolved config: `config.yaml` in the run dir, else Hydra's `.hydra/config.yaml`
    (older stores keep it only there). Raises FileNotFoundError if neither exists."""
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    return OmegaConf.load(path if path.is_file() else run_dir / ".hydra" / "config.yaml")
