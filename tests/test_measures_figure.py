"""bnrepro.analysis.measures_figure.median_per_seed on a real run store's format: a landscape
point that was not finite (the store writes null) is the roughest point, not a missing one.
Dropping it (pandas' median skips NaN) made a run whose loss blew up at half its steps look
as smooth as its finite half."""

from __future__ import annotations

import json
import math

import yaml

from bnrepro.analysis.measures_figure import median_per_seed
from bnrepro.run.runs import find_runs

KEY = "landscape/beta"


def write_run(root, name: str, rows: list[dict]) -> None:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"name": "dln", "seed": 0}))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "summary.json").write_text(json.dumps({"status": "completed"}))


def test_non_finite_points_count_as_worst_and_unmeasured_steps_do_not_count(tmp_path):
    evaluation = {"train/loss": 1.0}
    write_run(tmp_path, "rough", [
        {"step": 0, **evaluation, KEY: 1.0},
        {"step": 10, KEY: None},  # measured, not finite
        {"step": 20, KEY: None},
        {"step": 25, "ics/h2/cos": 0.5},  # another measure's step: no beta measured here
        {"step": 30, **evaluation, KEY: 2.0}])
    write_run(tmp_path, "smooth", [{"step": s, **evaluation, KEY: v}
                                   for s, v in ((0, 3.0), (10, 4.0), (20, 5.0))])
    runs = {r.dir.name: r for r in find_runs([tmp_path])}
    assert runs["rough"].measured(KEY) == [1.0, None, None, 2.0]
    assert median_per_seed([runs["rough"]], KEY) == [math.inf]  # 1, 2, inf, inf
    assert median_per_seed([runs["smooth"]], KEY) == [4.0]
    assert median_per_seed([runs["rough"]], "ics/h2/cos", worst=-1.0) == [0.5]
    assert median_per_seed([runs["smooth"]], "ics/h2/cos") == []
