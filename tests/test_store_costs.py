"""bnrepro.bench.store_costs: the share of an experiment's process time that is not training,
each population counted once, unfinished and damaged runs left out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bnrepro.bench.store_costs import main, store_costs


def summary(run: Path, wall: float | None, train: float | None, population: int) -> None:
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps(
        {"status": "completed" if train is not None else "running", "wall_time_s": wall,
         "train_time_s": train, "population_size": population}))


def test_a_population_counts_once_and_unfinished_runs_not_at_all(tmp_path, capsys):
    fig2 = tmp_path / "fig2_cifar10-jpeg"
    for seed in range(3):  # one process of 3 members: 100 s, 80 of them training
        summary(fig2 / f"seed={seed}", 100.0, 80.0, 3)
    summary(fig2 / "solo", 50.0, 25.0, 1)
    summary(fig2 / "still-running", None, None, 1)
    (fig2 / "killed").mkdir()
    (fig2 / "killed" / "summary.json").write_text('{"wall_time_s": 1')
    (tmp_path / "logs").mkdir()
    [cost] = store_costs(tmp_path)
    assert (cost.experiment, cost.runs) == ("fig2_cifar10-jpeg", 4)
    assert cost.wall_s == pytest.approx(150.0) and cost.train_s == pytest.approx(105.0)
    assert cost.not_training == pytest.approx(0.3)  # members counted 3 times: 24%
    main([str(tmp_path), "--json", str(tmp_path / "costs.json")])
    assert "fig2_cifar10-jpeg: 4 runs, 150 s of process wall time, 30% not training" in \
        capsys.readouterr().out
    assert json.loads((tmp_path / "costs.json").read_text())[0]["not_training"] == 0.3


def test_a_folder_that_is_not_a_run_store_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="is not a run store"):
        main([str(tmp_path / "nothing")])
