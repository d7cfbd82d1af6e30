"""scripts/aggregate.py on a real tiny sweep: one CSV row per run, divergence, thresholds, drift,
figures, and unreadable run dirs skipped with a warning."""

import importlib.util
import math
import shutil

import matplotlib.image
import pandas as pd
import pytest

from bnrepro.store import read_metrics, read_summary
from tests.conftest import REPO

THRESHOLDS = (0.3, 0.6, 0.99)  # reached early, maybe reached, never reached in 40 steps


def load_script():
    spec = importlib.util.spec_from_file_location("aggregate", REPO / "scripts" / "aggregate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


aggregate = load_script()


def test_steps_to_threshold_is_the_first_evaluation_that_reaches_it():
    metrics = pd.DataFrame({"step": [0, 20, 40, 60], "test/acc": [0.1, 0.5, 0.4, 0.7]})
    assert aggregate.steps_to_threshold(metrics, 0.45) == 20  # not 60: the first time
    assert aggregate.steps_to_threshold(metrics, 0.5) == 20  # >=
    assert aggregate.steps_to_threshold(metrics, 0.8) is None
    assert aggregate.steps_to_threshold(pd.DataFrame(), 0.5) is None


def test_drift_averages_the_range_of_the_tracked_units_quantiles():
    metrics = pd.DataFrame({"act/h2/q15": [-1.0, -3.0, -2.0], "act/h2/q50": [0.0, 0.0, 1.0],
                            "act/h2/q85": [1.0, 1.0, 1.0], "act/h2/all_q15": [0.0, 9.0, 0.0]})
    assert aggregate.drift(metrics, 2) == pytest.approx((2 + 1 + 0) / 3)  # all_q* is not used
    assert math.isnan(aggregate.drift(metrics, 1))


def test_aggregate_a_real_sweep(run_train, mirror, tmp_path, capsys):
    sweep, out = tmp_path / "sweep", tmp_path / "results"
    run_train("-m", "experiment=fig1_mnist", "debug=smoke", "model.activation=relu",
              "model.norm=bn,none", "optim.lr=0.5,3.0", "seed=0", f"hydra.sweep.dir={sweep}")
    run_dirs = sorted(p.parent for p in sweep.rglob("summary.json"))
    assert len(run_dirs) == 4
    for name, damage in (("broken", lambda d: (d / "summary.json").write_text('{"status": "co')),
                         ("no_metrics", lambda d: (d / "metrics.jsonl").unlink())):
        shutil.copytree(run_dirs[0], sweep / name)
        damage(sweep / name)

    with pytest.warns(UserWarning, match=r"skipped 2 .*broken.*no_metrics"):
        aggregate.main([str(sweep), "--out", str(out), "--thresholds", *map(str, THRESHOLDS)])
    printed = capsys.readouterr().out
    assert "mnist: 4 runs (3 completed, 1 diverged)" in printed, printed

    df = pd.read_csv(out / "sweep_mnist.csv")
    assert sorted(df["run_dir"]) == sorted(map(str, run_dirs))  # one row per readable run
    assert list(df.columns[:6]) == ["dataset", "norm", "activation", "lr", "dropout", "seed"]
    status = df.set_index(["norm", "lr"])["status"]
    assert status[("none", 3.0)] == "diverged" and status[("none", 0.5)] == "completed"
    for _, row in df.iterrows():
        summary, metrics = read_summary(row["run_dir"]), read_metrics(row["run_dir"])
        assert row["status"] == summary["status"] and row["final_test_acc"] == summary[
            "final_test_acc"]
        if row["status"] == "diverged":
            assert row["diverged_at_step"] >= 1
        for t in THRESHOLDS:
            first = next((r["step"] for r in metrics if r["test/acc"] >= t), None)
            value = row[f"steps_to_acc_{t:g}"]
            assert (pd.isna(value) if first is None else value == first), (t, row["run_dir"])
    assert df["steps_to_acc_0.3"].notna().sum() >= 2 and df["steps_to_acc_0.99"].isna().all()

    drifts = [c for c in df.columns if c.startswith("drift_h")]
    assert drifts == ["drift_h1", "drift_h2", "drift_h3"]  # hidden: [100, 100, 100]
    assert (df[drifts] >= 0).all().all()
    assert (df.loc[df["status"] == "completed", drifts] > 0).all().all()  # training moves them

    for figure in ("heatmap", "best_curves"):
        assert (out / f"sweep_mnist_{figure}.pdf").stat().st_size > 0
        image = matplotlib.image.imread(out / f"sweep_mnist_{figure}.png")
        assert image.shape[0] > 300 and image.shape[1] > 300
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary files behind
