"""Find and read finished runs under run-store directories (for figures and tables)."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from bnrepro.measures import MEASURES
from bnrepro.run.store import evaluation_rows, read_config, read_metrics, read_summary


@dataclass
class Run:
    dir: Path
    config: DictConfig
    summary: dict
    metrics: pd.DataFrame  # one row per evaluation (with that step's measures, if any)
    # Every row that holds a measure (bnrepro.measures): measured steps, evaluated or not.
    measures: pd.DataFrame = field(default_factory=pd.DataFrame)
    # The same rows as logged: a measure that came out non-finite is None there (the store's
    # null), while in `measures` it is NaN like a step that did not measure it at all.
    measure_rows: list[dict] = field(default_factory=list)

    def measured(self, key: str) -> list[float | None]:
        """`key` at every step that measured it, in step order; None where it was not finite
        (a diverged loss along the gradient, say): the roughest points, not absent ones."""
        return [row[key] for row in self.measure_rows if key in row]


def find_runs(roots: Iterable[str | Path], statuses: tuple[str, ...] = ("completed",),
              keep_empty: bool = False) -> list[Run]:
    """Every run directory below `roots` whose summary status is in `statuses`.

    Runs that are missing files or have another status are skipped with one warning that
    names them, so a figure never silently mixes in a half-finished run. A run with no logged
    evaluation is skipped too, unless `keep_empty` (a run that diverged at its very first
    evaluation has none, and a figure may need to count it as a failure).
    """
    runs, skipped = [], []
    for root in roots:
        for summary_file in sorted(Path(root).rglob("summary.json")):
            run_dir = summary_file.parent
            try:
                summary = read_summary(run_dir)
                config = read_config(run_dir)
                rows = read_metrics(run_dir)
                metrics = pd.DataFrame(evaluation_rows(rows))
                measure_rows = [r for r in rows if any(
                    key.split("/")[0] in MEASURES for key in r)]
                measures = pd.DataFrame(measure_rows)
            except (OSError, ValueError) as err:
                skipped.append(f"{run_dir} ({type(err).__name__})")
                continue
            if summary.get("status") not in statuses or (metrics.empty and not keep_empty):
                skipped.append(f"{run_dir} (status {summary.get('status')})")
                continue
            runs.append(Run(run_dir, config, summary, metrics, measures, measure_rows))
    if skipped:
        warnings.warn(f"skipped {len(skipped)} run(s): " + "; ".join(skipped), stacklevel=2)
    return runs
